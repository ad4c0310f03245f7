//! Headers as HAProxy and AWS NLB send them, every split point, and what must fail (and how
//! early). `read_header` runs over in-memory slices, and over pipes that stay open after the
//! header, which is how a MySQL client behaves: it sends its header and waits for our greeting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ppp::PartialResult;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::time::timeout;

use super::*;

/// What a MySQL client sends after the header, once greeted: the start of an SSLRequest.
const MYSQL_TAIL: &[u8] = b"\x20\x00\x00\x01\x85\xae\xff\x19";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn v2_header(ver_cmd: u8, fam_proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or_else(|e| panic!("{e}"));
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[ver_cmd, fam_proto]);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// 192.0.2.1:56324 → 198.51.100.2:3306 as v2 INET address bytes.
const INET: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x0c, 0xea];

fn inet6() -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap_or_else(|e| panic!("{e}")).octets());
    a.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap_or_else(|e| panic!("{e}")).octets());
    a.extend_from_slice(&[0xdc, 0x04, 0x0c, 0xea]);
    a
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(value.len()).unwrap_or_else(|e| panic!("{e}"));
    [&[kind][..], &len.to_be_bytes(), value].concat()
}

fn client_v4() -> Header {
    Header::Proxied { source: sa("192.0.2.1:56324"), destination: sa("198.51.100.2:3306") }
}

fn client_v6() -> Header {
    Header::Proxied { source: sa("[2001:db8::1]:56324"), destination: sa("[2001:db8::2]:3306") }
}

/// Valid headers, each with what it means.
fn samples() -> Vec<(&'static str, Vec<u8>, Header)> {
    let with_tlvs = [
        &INET[..],
        &tlv(0x01, b"mysql"),                      // ALPN
        &tlv(0xea, b"\x01vpce-08d2bf15fac5001c9"), // AWS: VPC endpoint ID
        &tlv(0x03, &[0x12, 0x34, 0x56, 0x78]),     // CRC32C (not checked)
        &tlv(0x04, &[0; 3]),                       // NOOP
    ]
    .concat();
    let large = [&INET[..], &tlv(0x04, &[0; 1000])].concat(); // past the stack buffer
    let mapped_v6 = [
        &Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets()[..],
        &Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped().octets(),
        &[0xdc, 0x04, 0x0c, 0xea],
    ]
    .concat();
    vec![
        ("v1 TCP4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 3306\r\n".to_vec(), client_v4()),
        ("v1 TCP6", b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 3306\r\n".to_vec(), client_v6()),
        ("v1 TCP6 v4-mapped", b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.2 56324 3306\r\n".to_vec(), client_v4()),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
        (
            "v1 UNKNOWN, the specification's 107-byte worst case",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            Header::Local,
        ),
        ("v1 UNKNOWN, six fields (ppp rejects it)", b"PROXY UNKNOWN a b c d e f\r\n".to_vec(), Header::Local),
        ("v2 PROXY INET", v2_header(0x21, 0x11, &INET), client_v4()),
        ("v2 PROXY INET6", v2_header(0x21, 0x21, &inet6()), client_v6()),
        ("v2 PROXY INET6 v4-mapped", v2_header(0x21, 0x21, &mapped_v6), client_v4()),
        ("v2 PROXY INET with TLVs", v2_header(0x21, 0x11, &with_tlvs), client_v4()),
        ("v2 PROXY INET with 1000 bytes of TLV", v2_header(0x21, 0x11, &large), client_v4()),
        ("v2 LOCAL", v2_header(0x20, 0x00, &[]), Header::Local),
        ("v2 LOCAL with INET addresses", v2_header(0x20, 0x11, &INET), Header::Local),
        ("v2 PROXY UNSPEC", v2_header(0x21, 0x00, &[]), Header::Local),
        ("v2 PROXY INET, protocol UNSPEC", v2_header(0x21, 0x10, &INET), Header::Local),
        ("v2 PROXY UNIX stream", v2_header(0x21, 0x31, &[0; 216]), Header::Local),
    ]
}

/// `parse`, with an error turned into a test failure.
fn parsed(bytes: &[u8]) -> Option<(Header, usize)> {
    parse(bytes).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)))
}

/// Runs `read_header` over a slice. A slice is always ready, so one poll finishes it.
fn read_now(bytes: &[u8]) -> (Result<Header, HeaderError>, &[u8]) {
    let mut rest = bytes;
    let result = match pin!(read_header(&mut rest)).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("an in-memory read never waits"),
    };
    (result, rest)
}

/// The variant, to compare errors (io::Error has no PartialEq).
fn kind(e: &HeaderError) -> &'static str {
    match e {
        HeaderError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        HeaderError::Io(_) => "io",
        HeaderError::NotProxy => "not-proxy",
        HeaderError::TooLong { .. } => "too-long",
        HeaderError::Invalid(_) => "invalid",
        HeaderError::Unsupported { .. } => "unsupported",
    }
}

fn parse_kind(bytes: &[u8]) -> &'static str {
    match parse(bytes) {
        Ok(Some(_)) => "header",
        Ok(None) => "incomplete",
        Err(e) => kind(&e),
    }
}

#[test]
fn every_sample_parses_to_its_meaning_and_length() {
    for (name, bytes, want) in samples() {
        assert_eq!(parsed(&bytes), Some((want, bytes.len())), "{name}");
        let followed = [&bytes[..], MYSQL_TAIL].concat();
        assert_eq!(parsed(&followed), Some((want, bytes.len())), "{name}, followed by MySQL bytes");
    }
}

#[test]
fn every_proper_prefix_is_incomplete() {
    for (name, bytes, _) in samples() {
        for end in 0..bytes.len() {
            assert_eq!(parsed(&bytes[..end]), None, "{name}, first {end} bytes");
        }
    }
}

#[test]
fn read_header_leaves_the_bytes_after_the_header_unread() {
    for (name, bytes, want) in samples() {
        let input = [&bytes[..], MYSQL_TAIL].concat();
        let (got, rest) = read_now(&input);
        assert_eq!(got.unwrap_or_else(|e| panic!("{name}: {e}")), want, "{name}");
        assert_eq!(rest, MYSQL_TAIL, "{name}");
    }
}

/// The MySQL case: the client sends its header and then nothing until greeted. Any read past
/// the header would hang; the paused clock turns a hang into an instant timeout.
#[tokio::test(start_paused = true)]
async fn read_header_returns_while_the_client_waits_for_the_greeting() {
    for (name, bytes, want) in samples() {
        let (mut client, mut server) = duplex(4096);
        client.write_all(&bytes).await.unwrap_or_else(|e| panic!("{e}"));
        let got = timeout(Duration::from_secs(5), read_header(&mut server)).await;
        let got = got.unwrap_or_else(|_| panic!("{name}: read past the header"));
        assert_eq!(got.unwrap_or_else(|e| panic!("{name}: {e}")), want, "{name}");
        // What the client sends next reaches the session whole.
        client.write_all(MYSQL_TAIL).await.unwrap_or_else(|e| panic!("{e}"));
        let mut next = [0; MYSQL_TAIL.len()];
        server.read_exact(&mut next).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next, MYSQL_TAIL, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn read_header_takes_a_header_that_trickles_in_a_byte_at_a_time() {
    for (name, bytes, want) in samples() {
        let (mut client, mut server) = duplex(1);
        let writer = tokio::spawn(async move {
            for b in bytes {
                client.write_all(&[b]).await.unwrap_or_else(|e| panic!("{e}"));
                tokio::task::yield_now().await;
            }
            client // kept open: no EOF to lean on
        });
        let got = timeout(Duration::from_secs(5), read_header(&mut server)).await;
        let got = got.unwrap_or_else(|_| panic!("{name}: read past the header"));
        assert_eq!(got.unwrap_or_else(|e| panic!("{name}: {e}")), want, "{name}");
        drop(writer.await.unwrap_or_else(|e| panic!("{e}")));
    }
}

#[test]
fn a_closed_connection_mid_header_is_an_io_error() {
    for (name, bytes, _) in samples() {
        let (got, _) = read_now(&bytes[..bytes.len() - 1]);
        let got = got.err().unwrap_or_else(|| panic!("{name}: parsed without its last byte"));
        assert_eq!(kind(&got), "eof", "{name}: {got}");
    }
}

#[test]
fn bytes_that_are_not_a_header_fail_at_once() {
    let cases: [(&str, &[u8]); 9] = [
        ("MySQL SSLRequest", MYSQL_TAIL),
        ("MySQL HandshakeResponse", b"\x5d\x00\x00\x01\x85\xa6\xff\x01\x00\x00\x00\x01\x21"),
        ("a lone byte", b"J"),
        ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: db\r\n\r\n"),
        ("lower-case v1", b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n"),
        ("PROXY without its space", b"PROXY\r\nfoo"),
        ("v1 misspelt", b"PROXZ TCP4 192.0.2.1 198.51.100.2 1 2\r\n"),
        ("v2 signature wrong in its last bytes", b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c"),
    ];
    for (name, bytes) in cases {
        assert_eq!(parse_kind(bytes), "not-proxy", "{name}");
        if bytes.len() < FIRST_READ {
            continue; // the driver's first read is 8 bytes; the parser alone already said no
        }
        let (got, rest) = read_now(bytes);
        assert_eq!(got.as_ref().err().map(kind), Some("not-proxy"), "{name}");
        // Decided on the first 8 bytes (16 for a v2 signature broken after its 8th byte).
        assert!(bytes.len() - rest.len() <= V2_FIXED_LEN, "{name}: read {} bytes", bytes.len() - rest.len());
    }
}

#[tokio::test(start_paused = true)]
async fn a_non_header_is_refused_without_waiting_for_more() {
    let (mut client, mut server) = duplex(64);
    client.write_all(MYSQL_TAIL).await.unwrap_or_else(|e| panic!("{e}"));
    let got = timeout(Duration::from_secs(5), read_header(&mut server)).await;
    let got = got.unwrap_or_else(|_| panic!("waited for more than 8 bytes"));
    let err = got.err().unwrap_or_else(|| panic!("accepted MySQL bytes"));
    assert_eq!(kind(&err), "not-proxy");
    assert_eq!(err.to_string(), "expected a PROXY protocol v1 or v2 header from this trusted peer");
}

#[tokio::test(start_paused = true)]
async fn an_oversized_v2_length_is_refused_before_its_payload() {
    let fixed = [&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat();
    match parse(&fixed) {
        Err(HeaderError::TooLong { limit }) => assert_eq!(limit, 16 + MAX_V2_PAYLOAD),
        other => panic!("{other:?}"),
    }
    // Only the fixed 16 bytes are sent and the pipe stays open: the answer must not wait.
    let (mut client, mut server) = duplex(64);
    client.write_all(&fixed).await.unwrap_or_else(|e| panic!("{e}"));
    let got = timeout(Duration::from_secs(5), read_header(&mut server)).await;
    let got = got.unwrap_or_else(|_| panic!("waited for the announced payload"));
    assert_eq!(got.as_ref().err().map(kind), Some("too-long"));
}

#[test]
fn a_v2_payload_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
    let fill = |n: usize| [&INET[..], &tlv(0x04, &vec![0; n - INET.len() - 3])].concat();
    let at_limit = v2_header(0x21, 0x11, &fill(MAX_V2_PAYLOAD));
    assert_eq!(read_now(&at_limit).0.ok(), Some(client_v4()));
    let over = v2_header(0x21, 0x11, &fill(MAX_V2_PAYLOAD + 1));
    assert_eq!(parse_kind(&over), "too-long");
    let (got, rest) = read_now(&over);
    assert_eq!(got.as_ref().err().map(kind), Some("too-long"));
    assert_eq!(over.len() - rest.len(), V2_FIXED_LEN, "read past the fixed part");
}

#[test]
fn a_v1_line_without_crlf_within_107_bytes_is_refused() {
    let line = [&b"PROXY UNKNOWN "[..], &[b'x'; 200]].concat();
    match parse(&line) {
        Err(HeaderError::TooLong { limit }) => assert_eq!(limit, MAX_V1_LEN),
        other => panic!("{other:?}"),
    }
    let (got, rest) = read_now(&line);
    assert_eq!(got.as_ref().err().map(kind), Some("too-long"));
    assert_eq!(line.len() - rest.len(), MAX_V1_LEN - 1, "a CRLF could no longer fit");
    // One byte over the worst case: the CR would sit where the LF must.
    let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655356\r\n";
    assert_eq!(long.len(), MAX_V1_LEN + 1);
    assert_eq!(parse_kind(long), "too-long");
}

#[test]
fn malformed_v1_lines_are_refused() {
    let cases: [(&str, &[u8]); 12] = [
        ("unknown protocol, seen at 8 bytes", b"PROXY FO"),
        ("UDP4", b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n"),
        ("UNKNOWN run into a word", b"PROXY UNKNOWNX\r\n"),
        ("a bare LF, seen before any CR", b"PROXY TCP4 192.0.2.1\n"),
        ("CR without LF", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX"),
        ("IPv6 under TCP4", b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n"),
        ("port out of range", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n"),
        ("port with a leading zero", b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n"),
        ("a missing port", b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n"),
        ("a trailing space", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n"),
        ("a sixth field", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n"),
        ("no protocol", b"PROXY \r\n"),
    ];
    for (name, bytes) in cases {
        assert_eq!(parse_kind(bytes), "invalid", "{name}");
        assert_eq!(read_now(bytes).0.as_ref().err().map(kind), Some("invalid"), "{name}");
    }
}

/// Why completeness is decided by the CRLF and not by ppp: on this valid prefix (the last port
/// is still to come) ppp answers with a final error, and on this complete UNKNOWN line it asks
/// for more bytes forever.
#[test]
fn ppp_alone_would_misjudge_these_lines() {
    let prefix: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 ";
    let ppp = ppp::v1::Header::try_from(prefix);
    assert!(ppp.is_err() && ppp.is_complete(), "ppp changed: {ppp:?}");
    assert_eq!(parsed(prefix), None);

    let unknown: &[u8] = b"PROXY UNKNOWN a b c d e f\r\n";
    let ppp = ppp::v1::Header::try_from(unknown);
    assert!(ppp.is_incomplete(), "ppp changed: {ppp:?}");
    assert_eq!(parsed(unknown), Some((Header::Local, unknown.len())));
}

#[test]
fn malformed_or_unsupported_v2_headers_are_refused() {
    let past_end = [&INET[..], &[0x04, 0x00, 0x09, 0, 0]].concat();
    let leftover = [&INET[..], &[0x04, 0x00]].concat();
    let cases: [(&str, Vec<u8>, &str); 9] = [
        ("version 1 in a v2 signature", v2_header(0x11, 0x11, &INET), "unsupported"),
        ("version 3", v2_header(0x31, 0x11, &INET), "unsupported"),
        ("command 2", v2_header(0x22, 0x11, &INET), "unsupported"),
        ("UDP over IPv4", v2_header(0x21, 0x12, &INET), "unsupported"),
        ("address family 4", v2_header(0x21, 0x41, &INET), "invalid"),
        ("protocol 3", v2_header(0x21, 0x13, &INET), "invalid"),
        ("INET addresses cut short", v2_header(0x21, 0x11, &INET[..8]), "invalid"),
        ("a TLV running past the payload", v2_header(0x21, 0x11, &past_end), "invalid"),
        ("two bytes that are not a TLV", v2_header(0x21, 0x11, &leftover), "invalid"),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(parse_kind(&bytes), want, "{name}");
        assert_eq!(read_now(&bytes).0.as_ref().err().map(kind), Some(want), "{name}");
    }
    // The fixed part alone is enough to refuse a bad version, before any payload.
    assert_eq!(parse_kind(&v2_header(0x11, 0x11, &INET)[..V2_FIXED_LEN]), "unsupported");
    match parse(&v2_header(0x21, 0x12, &INET)) {
        Err(e) => {
            assert_eq!(e.to_string(), "unsupported PROXY protocol v2 header: datagram (UDP) transport (byte 0x12)")
        }
        Ok(h) => panic!("{h:?}"),
    }
}

#[test]
fn looks_like_header_table() {
    let cases: [(&[u8], bool); 14] = [
        (b"", false),
        (b"PRO", false),
        (b"PROX", true),
        (b"PROXY", true),
        (b"PROXY ", true),
        (b"PROXY TCP4 192.0.2.1", true),
        (b"PROXYX", false),
        (b"prox", false),
        (b"\r\n\r", false),
        (b"\r\n\r\n", true),
        (b"\r\n\r\n\0\r\nQUIT\n\x21\x11", true),
        (b"\r\n\r\nX", false),
        (MYSQL_TAIL, false),
        (b"\x16\x03\x01\x02", false),
    ];
    for (prefix, want) in cases {
        assert_eq!(looks_like_header(prefix), want, "{:?}", String::from_utf8_lossy(prefix));
    }
}

#[test]
fn version_spellings_round_trip() {
    for v in [Version::V1, Version::V2] {
        assert_eq!(Version::parse(v.as_str()), Some(v));
    }
    assert_eq!(Version::parse("V1"), None);
    assert_eq!(Version::parse("2"), None);
}

#[test]
fn encode_writes_what_haproxy_writes() {
    let (v4s, v4d, v6d) = (sa("192.0.2.1:56324"), sa("198.51.100.2:3306"), sa("[2001:db8::2]:3306"));
    let cases = [
        (Version::V1, Some(v4s), Some(v4d), b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 3306\r\n".to_vec()),
        (Version::V1, Some(v4s), Some(v6d), b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 3306\r\n".to_vec()),
        (
            Version::V1,
            Some(sa("[::ffff:192.0.2.1]:56324")),
            Some(sa("[::ffff:198.51.100.2]:3306")),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 3306\r\n".to_vec(),
        ),
        (Version::V1, None, Some(v4d), b"PROXY UNKNOWN\r\n".to_vec()),
        (Version::V2, Some(v4s), Some(v4d), v2_header(0x21, 0x11, &INET)),
        (Version::V2, Some(sa("[2001:db8::1]:56324")), Some(v6d), v2_header(0x21, 0x21, &inet6())),
        (Version::V2, Some(v4s), None, v2_header(0x20, 0x00, &[])),
        (Version::V2, None, None, v2_header(0x20, 0x00, &[])),
    ];
    for (version, source, destination, want) in cases {
        let got = encode(version, source, destination);
        assert_eq!(got, want, "{version:?} {source:?} {destination:?}: {:?}", String::from_utf8_lossy(&got));
    }
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
        any::<Ipv4Addr>().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ]
}

fn any_version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

/// Byte strings that get past the first check often: a header (or a piece of one), then noise.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let starts: Vec<Vec<u8>> = samples().into_iter().map(|(_, b, _)| b).collect();
    (proptest::sample::select(starts), 0usize..120, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
        |(start, cut, noise)| {
            let cut = cut.min(start.len());
            [&start[..cut], &noise].concat()
        },
    )
}

proptest! {
    #[test]
    fn encode_then_parse_round_trips(
        version in any_version(),
        (sip, sport, dip, dport) in (any_ip(), any::<u16>(), any_ip(), any::<u16>()),
    ) {
        let (source, destination) = (SocketAddr::new(sip, sport), SocketAddr::new(dip, dport));
        let bytes = encode(version, Some(source), Some(destination));
        let want = Header::Proxied {
            source: SocketAddr::new(sip.to_canonical(), sport),
            destination: SocketAddr::new(dip.to_canonical(), dport),
        };
        prop_assert_eq!(parse(&bytes).ok(), Some(Some((want, bytes.len()))));
        let input = [&bytes[..], MYSQL_TAIL].concat();
        let (got, rest) = read_now(&input);
        prop_assert_eq!(got.ok(), Some(want));
        prop_assert_eq!(rest, MYSQL_TAIL);
    }

    #[test]
    fn a_missing_address_encodes_as_local(version in any_version(), ip in any_ip(), port in any::<u16>()) {
        let a = SocketAddr::new(ip, port);
        for (s, d) in [(None, Some(a)), (Some(a), None), (None, None)] {
            let bytes = encode(version, s, d);
            prop_assert_eq!(parse(&bytes).ok(), Some(Some((Header::Local, bytes.len()))));
        }
    }

    /// The driver and the sans-IO parser are one parser: same header, same bytes consumed,
    /// same error; and where the parser wants more, the driver hits the end of input.
    #[test]
    fn read_header_agrees_with_parse(bytes in prop_oneof![header_like_bytes(), proptest::collection::vec(any::<u8>(), 0..64)]) {
        let (got, rest) = read_now(&bytes);
        match parse(&bytes) {
            Ok(Some((header, used))) => {
                prop_assert_eq!(got.ok(), Some(header));
                prop_assert_eq!(rest, &bytes[used..]);
            }
            Ok(None) => prop_assert_eq!(got.err().as_ref().map(kind), Some("eof")),
            // The driver asks for the first 8 bytes, then v2's next 8, in one read each: input
            // that ends inside those reads is EOF to it, however early the parser saw a fault.
            Err(e) => {
                let got = got.err().as_ref().map(kind);
                prop_assert!(
                    got == Some(kind(&e)) || (bytes.len() < V2_FIXED_LEN && got == Some("eof")),
                    "parse: {}, read_header: {:?}", e, got
                );
            }
        }
    }
}
