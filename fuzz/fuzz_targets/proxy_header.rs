//! The PROXY protocol parser on arbitrary bytes. A header it accepts must be exactly the bytes
//! it consumed (every shorter prefix is "need more"), must survive flexgate re-encoding it in
//! either version (that is what the server is sent), and the socket driver must agree with the
//! sans-IO parser on the header and on how many bytes it took.
#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use flexgate::proxy_protocol::{Header, Version, encode, parse, read_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, used))) = parse(data) else { return };
    assert!(used <= data.len(), "consumed {used} of {} bytes", data.len());
    for end in 0..used {
        assert!(
            matches!(parse(&data[..end]), Ok(None)),
            "a {end}-byte prefix of a {used}-byte header is not incomplete"
        );
    }

    let (source, destination) = match header {
        Header::Proxied { source, destination } => (Some(source), Some(destination)),
        Header::Local => (None, None),
    };
    for version in [Version::V1, Version::V2] {
        let again = encode(version, source, destination);
        match parse(&again) {
            Ok(Some((h, n))) => {
                assert_eq!(h, header, "{version:?} re-encoding changed the header");
                assert_eq!(n, again.len(), "{version:?} re-encoding left bytes over");
            }
            other => panic!("{version:?} re-encoding of {header:?} does not parse: {other:?}"),
        }
    }

    // A slice is always ready, so one poll runs the driver to the end.
    let mut rest = data;
    let read = match pin!(read_header(&mut rest)).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("an in-memory read never waits"),
    };
    assert_eq!(read.ok(), Some(header));
    assert_eq!(rest.len(), data.len() - used, "the driver read past the header");
});
