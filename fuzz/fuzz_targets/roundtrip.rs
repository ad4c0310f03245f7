//! Whatever parses must re-encode to something that parses to the same value: the proxy
//! rebuilds greetings and handshake responses, so build(parse(x)) has to be faithful.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mysql_wire::{ClientFirst, Greeting, parse_client_first};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Greeting::parse(data) {
        let mut out = Vec::new();
        g.write(&mut out);
        assert_eq!(Greeting::parse(&out).ok(), Some(g));
    }
    if let Ok(ClientFirst::Response(r)) = parse_client_first(data) {
        let mut out = Vec::new();
        r.write(&mut out);
        let again = mysql_wire::HandshakeResponse::parse(&out);
        assert!(again.is_ok(), "re-encoded response does not parse: {again:?}");
        if let Ok(again) = again {
            assert_eq!(again.username, r.username);
            assert_eq!(again.auth_response, r.auth_response);
        }
    }
});
