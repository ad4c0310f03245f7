//! Every parser that sees bytes before authentication, on arbitrary input: none may panic,
//! read out of bounds or allocate beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mysql_wire::{AuthPacket, ErrPacket, Greeting, frame, parse_client_first};

fuzz_target!(|data: &[u8]| {
    let _ = frame(data, 64 * 1024);
    let _ = parse_client_first(data);
    let _ = Greeting::parse(data);
    let _ = AuthPacket::parse(data);
    let _ = ErrPacket::parse(data);
    if let Ok(Some(f)) = frame(data, 64 * 1024) {
        let _ = parse_client_first(f.payload);
        let _ = Greeting::parse(f.payload);
    }
});
