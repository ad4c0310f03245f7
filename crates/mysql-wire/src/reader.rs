//! nom building blocks shared by the packet parsers, with nom's errors folded into [`WireError`].

use nom::{
    IResult, Parser,
    bytes::complete::{tag, take, take_till},
    number::complete::{le_u8, le_u16, le_u24, le_u32, le_u64},
    sequence::terminated,
};

use crate::WireError;

/// A NUL-terminated string, without its NUL.
pub(crate) fn cstr(i: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_till(|b| b == 0), tag(&[0u8][..])).parse(i)
}

/// MySQL's length-encoded integer. 0xfb (NULL) and 0xff (ERR marker) are not integers.
pub(crate) fn lenenc_int(i: &[u8]) -> IResult<&[u8], u64> {
    let (i, first) = le_u8(i)?;
    match first {
        0..=0xfa => Ok((i, u64::from(first))),
        0xfc => le_u16.map(u64::from).parse(i),
        0xfd => le_u24.map(u64::from).parse(i),
        0xfe => le_u64(i),
        _ => Err(nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify))),
    }
}

/// A length-encoded byte string. The length is checked against the input before anything is taken.
pub(crate) fn lenenc_bytes(i: &[u8]) -> IResult<&[u8], &[u8]> {
    let (i, n) = lenenc_int(i)?;
    let n =
        usize::try_from(n).map_err(|_| nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::TooLarge)))?;
    take(n).parse(i)
}

pub(crate) fn u8_(i: &[u8]) -> IResult<&[u8], u8> {
    le_u8(i)
}
pub(crate) fn u16_(i: &[u8]) -> IResult<&[u8], u16> {
    le_u16(i)
}
pub(crate) fn u32_(i: &[u8]) -> IResult<&[u8], u32> {
    le_u32(i)
}
pub(crate) fn bytes(n: usize) -> impl Fn(&[u8]) -> IResult<&[u8], &[u8]> {
    move |i| take(n).parse(i)
}

/// Runs one field parser and names the field if it fails.
pub(crate) fn field<'a, O>(
    packet: &'static str,
    name: &'static str,
    i: &'a [u8],
    parser: impl Fn(&'a [u8]) -> IResult<&'a [u8], O>,
) -> Result<(&'a [u8], O), WireError> {
    parser(i).map_err(|_| WireError::Malformed { packet, field: name })
}

/// Every packet ends exactly where its last field ends.
pub(crate) fn end(packet: &'static str, rest: &[u8]) -> Result<(), WireError> {
    if rest.is_empty() { Ok(()) } else { Err(WireError::TrailingBytes { packet, extra: rest.len() }) }
}

pub(crate) fn write_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub(crate) fn write_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lenenc_round_trips(n in any::<u64>()) {
            let mut out = Vec::new();
            write_lenenc_int(&mut out, n);
            let (rest, back) = lenenc_int(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(rest.is_empty());
            prop_assert_eq!(back, n);
        }
    }

    #[test]
    fn lenenc_rejects_markers() {
        assert!(lenenc_int(&[0xfb]).is_err());
        assert!(lenenc_int(&[0xff]).is_err());
        assert!(lenenc_int(&[0xfc, 1]).is_err());
    }

    #[test]
    fn lenenc_bytes_never_reads_past_input() {
        assert!(lenenc_bytes(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(lenenc_bytes(&[2, b'a', b'b', b'c']).ok(), Some((&b"c"[..], &b"ab"[..])));
    }
}
