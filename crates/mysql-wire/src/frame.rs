//! Packet framing: a 3-byte little-endian length and a 1-byte sequence id before every payload.

use crate::WireError;

/// Length of the packet header.
pub const HEADER_LEN: usize = 4;
/// Largest payload a single packet can carry; a payload of exactly this length continues in
/// the next packet.
pub const MAX_PAYLOAD_LEN: usize = 0xff_ffff;

/// A decoded packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    /// Sequence id.
    pub seq: u8,
}

impl Header {
    /// Decodes a header. Infallible: every 4-byte value is a syntactically valid header; limits
    /// are the caller's business (see [`Header::check`]).
    pub fn parse(h: [u8; HEADER_LEN]) -> Self {
        Self { len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16, seq: h[3] }
    }

    /// Refuses a header whose payload exceeds `max`, before anything is allocated for it.
    pub fn check(self, max: usize) -> Result<Self, WireError> {
        if self.len > max { Err(WireError::TooLarge { len: self.len, max }) } else { Ok(self) }
    }
}

/// One whole packet at the front of a buffer, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The decoded header.
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
    /// Bytes of the buffer the packet used (header included).
    pub used: usize,
}

/// Splits one whole packet off the front of `buf`.
///
/// `Ok(None)` means "read more, then call again". The announced length is checked against
/// `max` before the payload is awaited, so a peer cannot make the caller buffer more than `max`.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<Frame<'_>>, WireError> {
    let Some((hdr, rest)) = buf.split_first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let header = Header::parse(*hdr).check(max)?;
    Ok(rest.get(..header.len).map(|payload| Frame { header, payload, used: HEADER_LEN + header.len }))
}

/// Appends a header for a payload of `len` bytes.
///
/// # Panics
/// Never for the packets this crate builds; a payload above [`MAX_PAYLOAD_LEN`] would have to be
/// split by the caller, and is truncated into the length field here, so callers keep to the limit.
pub fn write_header(out: &mut Vec<u8>, len: usize, seq: u8) {
    debug_assert!(len <= MAX_PAYLOAD_LEN);
    let l = (len.min(MAX_PAYLOAD_LEN) as u32).to_le_bytes();
    out.extend_from_slice(&[l[0], l[1], l[2], seq]);
}

/// Appends a whole packet (header and payload).
pub fn write_packet(out: &mut Vec<u8>, seq: u8, payload: &[u8]) {
    write_header(out, payload.len(), seq);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn needs_more_until_complete() {
        let mut pkt = Vec::new();
        write_packet(&mut pkt, 3, b"hello");
        for cut in 0..pkt.len() {
            assert_eq!(frame(&pkt[..cut], 64), Ok(None), "prefix of {cut} bytes");
        }
        assert_eq!(frame(&pkt, 64), Ok(Some(Frame { header: Header { len: 5, seq: 3 }, payload: b"hello", used: 9 })));
    }

    #[test]
    fn refuses_oversized_before_payload_arrives() {
        assert_eq!(frame(&[0xff, 0xff, 0xff, 0], 1024), Err(WireError::TooLarge { len: MAX_PAYLOAD_LEN, max: 1024 }));
    }

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..300), seq in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = Vec::new();
            write_packet(&mut buf, seq, &payload);
            buf.extend_from_slice(&tail);
            let f = frame(&buf, 300).map_err(|e| TestCaseError::fail(e.to_string()))?.ok_or_else(|| TestCaseError::fail("incomplete"))?;
            prop_assert_eq!(f.header, Header { len: payload.len(), seq });
            prop_assert_eq!(f.payload, &payload[..]);
            prop_assert_eq!(f.used, payload.len() + HEADER_LEN);
        }
    }
}
