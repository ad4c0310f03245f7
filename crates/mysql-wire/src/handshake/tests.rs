use super::*;
use proptest::prelude::*;

/// A MariaDB 10.11 greeting as captured on the wire (payload only).
const MARIADB_GREETING: &[u8] = b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\0\x03\0\0\0\
!aB3$cD4\0\xfe\xff\x2d\x02\0\xff\x81\x15\0\0\0\0\0\0\x1d\0\0\0\
eF5%gH6^iJ7&\0mysql_native_password\0";

#[test]
fn parses_mariadb_greeting() {
    let g = Greeting::parse(MARIADB_GREETING).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.server_version, b"5.5.5-10.11.6-MariaDB-0+deb12u1");
    assert_eq!(g.connection_id, 3);
    assert!(g.capabilities.contains(Capabilities::SSL));
    assert!(g.capabilities.has_mariadb_extension());
    assert_eq!(g.mariadb_capabilities, MariaDbCapabilities(0x1d));
    assert_eq!(g.auth_plugin, Some(&b"mysql_native_password"[..]));
    assert_eq!(g.nonce(), b"!aB3$cD4eF5%gH6^iJ7&");
    let mut out = Vec::new();
    g.write(&mut out);
    assert_eq!(out, MARIADB_GREETING);
}

#[test]
fn every_truncation_of_the_greeting_is_an_error() {
    // The plugin name may lack its NUL (MySQL 5.5 did that), so only cuts before it must fail.
    let plugin_at = MARIADB_GREETING.len() - b"mysql_native_password\0".len();
    for cut in 0..plugin_at {
        assert!(Greeting::parse(&MARIADB_GREETING[..cut]).is_err(), "prefix of {cut} bytes parsed");
    }
}

#[test]
fn ssl_request_is_told_apart_by_length() {
    let req = SslRequest {
        capabilities: Capabilities(0x0000_0200 | 0x0800 | 0x8000),
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities(0),
    };
    let mut out = Vec::new();
    req.write(&mut out);
    assert_eq!(out.len(), SSL_REQUEST_LEN);
    assert_eq!(parse_client_first(&out), Ok(ClientFirst::SslRequest(req)));
    // Without CLIENT_SSL a 32-byte packet is neither.
    out[1] &= !0x08;
    assert!(parse_client_first(&out).is_err());
}

#[test]
fn pre_41_clients_are_refused() {
    let mut out = Vec::new();
    SslRequest {
        capabilities: Capabilities(0x0800),
        max_packet_size: 0,
        charset: 8,
        mariadb_capabilities: MariaDbCapabilities(0),
    }
    .write(&mut out);
    assert!(matches!(parse_client_first(&out), Err(WireError::Unsupported(_))));
}

#[test]
fn response_debug_hides_auth_data() {
    let r = HandshakeResponse {
        capabilities: Capabilities(0x0000_0200 | 0x8000),
        max_packet_size: 0,
        charset: 8,
        mariadb_capabilities: MariaDbCapabilities(0),
        username: b"app",
        auth_response: b"hunter2-secret",
        database: None,
        auth_plugin: None,
        connect_attrs: None,
    };
    let dbg = format!("{r:?}");
    assert!(dbg.contains("app"));
    assert!(!dbg.contains("hunter2"));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut out = Vec::new();
    HandshakeResponse {
        capabilities: Capabilities(0x0000_0200 | 0x8000),
        max_packet_size: 0,
        charset: 8,
        mariadb_capabilities: MariaDbCapabilities(0),
        username: b"u",
        auth_response: b"",
        database: None,
        auth_plugin: None,
        connect_attrs: None,
    }
    .write(&mut out);
    out.push(7);
    assert_eq!(HandshakeResponse::parse(&out), Err(WireError::TrailingBytes { packet: RESPONSE, extra: 1 }));
}

fn cstring() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40)
}

fn caps() -> impl Strategy<Value = Capabilities> {
    any::<u32>().prop_map(|c| Capabilities(c | Capabilities::PROTOCOL_41.0))
}

proptest! {
    #[test]
    fn greeting_round_trips(
        version in cstring(), id in any::<u32>(), a1 in proptest::collection::vec(any::<u8>(), 8),
        caps in caps(), charset in any::<u8>(), status in any::<u16>(), ext in any::<u32>(),
        a2 in proptest::collection::vec(any::<u8>(), 13), plugin in cstring(),
    ) {
        let g = Greeting {
            server_version: &version, connection_id: id, auth_data_1: &a1, capabilities: caps, charset, status,
            auth_data_len: 21,
            mariadb_capabilities: MariaDbCapabilities(if caps.has_mariadb_extension() { ext } else { 0 }),
            auth_data_2: if caps.contains(Capabilities::SECURE_CONNECTION) { &a2 } else { &[] },
            auth_plugin: caps.contains(Capabilities::PLUGIN_AUTH).then_some(&plugin[..]),
        };
        let mut out = Vec::new();
        g.write(&mut out);
        prop_assert_eq!(Greeting::parse(&out), Ok(g));
    }

    #[test]
    fn response_round_trips(
        caps in caps(), max in any::<u32>(), charset in any::<u8>(), ext in any::<u32>(),
        user in cstring(), auth in proptest::collection::vec(any::<u8>(), 0..300),
        db in cstring(), plugin in cstring(), attrs in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // Without a length prefix the auth response is NUL-terminated, so it cannot hold a NUL.
        let auth: Vec<u8> = if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_DATA) { auth }
            else if caps.contains(Capabilities::SECURE_CONNECTION) { auth.into_iter().take(255).collect() }
            else { auth.into_iter().filter(|&b| b != 0).collect() };
        let r = HandshakeResponse {
            capabilities: caps, max_packet_size: max, charset,
            mariadb_capabilities: MariaDbCapabilities(if caps.has_mariadb_extension() { ext } else { 0 }),
            username: &user, auth_response: &auth,
            database: caps.contains(Capabilities::CONNECT_WITH_DB).then_some(&db[..]),
            auth_plugin: caps.contains(Capabilities::PLUGIN_AUTH).then_some(&plugin[..]),
            connect_attrs: caps.contains(Capabilities::CONNECT_ATTRS).then_some(&attrs[..]),
        };
        let mut out = Vec::new();
        r.write(&mut out);
        prop_assume!(out.len() != SSL_REQUEST_LEN);
        let back = HandshakeResponse::parse(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // An empty trailing optional field may come back as absent; compare through a re-encode.
        let mut again = Vec::new();
        back.write(&mut again);
        prop_assert_eq!(&again, &out);
        prop_assert_eq!(back.username, &user[..]);
        prop_assert_eq!(back.auth_response, &auth[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Greeting::parse(&data);
        let _ = parse_client_first(&data);
    }
}

/// Packets captured from real peers (`testdata/`): a MariaDB 10.11 greeting, and the first
/// packets of the mariadb CLI (libmariadb 3.3), PyMySQL and `openssl s_client -starttls mysql`.
mod captured {
    use super::*;
    use crate::{frame, write_packet};

    const GREETING: &[u8] = include_bytes!("../../testdata/mariadb-10.11-greeting.bin");
    const CLI_RESPONSE: &[u8] = include_bytes!("../../testdata/mariadb-cli-10.11-response.bin");
    const CLI_SSL: &[u8] = include_bytes!("../../testdata/mariadb-cli-10.11-sslrequest.bin");
    const PYMYSQL_RESPONSE: &[u8] = include_bytes!("../../testdata/pymysql-response.bin");
    const OPENSSL_SSL: &[u8] = include_bytes!("../../testdata/openssl-sslrequest.bin");

    /// Fed a byte at a time, framing says "need more" until the packet is whole, then yields
    /// exactly it.
    fn check_all_prefixes(payload: &[u8]) {
        let mut framed = Vec::new();
        write_packet(&mut framed, 1, payload);
        for cut in 0..framed.len() {
            assert_eq!(frame(&framed[..cut], 64 * 1024), Ok(None), "prefix of {cut} bytes");
        }
        let f = frame(&framed, 64 * 1024).ok().flatten().unwrap_or_else(|| panic!("whole packet not framed"));
        assert_eq!(f.payload, payload);
    }

    #[test]
    fn mariadb_greeting() {
        check_all_prefixes(GREETING);
        let g = Greeting::parse(GREETING).unwrap_or_else(|e| panic!("{e}"));
        assert!(g.server_version.ends_with(b"-MariaDB-0+deb12u1"));
        assert!(g.capabilities.has_mariadb_extension());
        assert_eq!(g.nonce().len(), 20);
        let mut out = Vec::new();
        g.write(&mut out);
        assert_eq!(out, GREETING, "re-encoding changed the greeting");
    }

    #[test]
    fn mariadb_cli_response() {
        check_all_prefixes(CLI_RESPONSE);
        let ClientFirst::Response(r) = parse_client_first(CLI_RESPONSE).unwrap_or_else(|e| panic!("{e}")) else {
            panic!("not a response")
        };
        assert_eq!(r.username, b"app");
        assert_eq!(r.database, Some(&b"inventory"[..]));
        assert_eq!(r.auth_plugin, Some(&b"mysql_native_password"[..]));
        assert_eq!(r.auth_response.len(), 20);
        assert!(r.capabilities.has_mariadb_extension());
        assert!(r.connect_attrs.is_some_and(|a| a.windows(11).any(|w| w == b"libmariadb\x04")));
        let mut out = Vec::new();
        r.write(&mut out);
        assert_eq!(out, CLI_RESPONSE, "re-encoding changed the response");
    }

    #[test]
    fn pymysql_response() {
        check_all_prefixes(PYMYSQL_RESPONSE);
        let ClientFirst::Response(r) = parse_client_first(PYMYSQL_RESPONSE).unwrap_or_else(|e| panic!("{e}")) else {
            panic!("not a response")
        };
        assert_eq!(r.username, b"app");
        assert_eq!(r.database, Some(&b"inventory"[..]));
        assert!(!r.capabilities.contains(Capabilities::SSL));
    }

    #[test]
    fn ssl_requests() {
        for (who, bytes) in [("mariadb CLI", CLI_SSL), ("openssl", OPENSSL_SSL)] {
            check_all_prefixes(bytes);
            match parse_client_first(bytes) {
                Ok(ClientFirst::SslRequest(r)) => assert!(r.capabilities.contains(Capabilities::SSL), "{who}"),
                other => panic!("{who}: {other:?}"),
            }
        }
    }
}
