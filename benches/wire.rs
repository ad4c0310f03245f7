//! Handshake parser and builder costs. These run once per connection, so they bound the
//! per-login CPU flexgate adds; the relay itself parses nothing.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flexgate::protocol::{
    Capabilities, Greeting, HandshakeResponse, MariaDbCapabilities, frame, parse_client_first, write_packet,
};

/// A MariaDB 10.11 greeting, as on the wire (payload only).
const GREETING: &[u8] = b"\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\0\x03\0\0\0!aB3$cD4\0\xfe\xff\x2d\x02\0\xff\x81\x15\0\0\0\0\0\0\x1d\0\0\0eF5%gH6^iJ7&\0mysql_native_password\0";

/// A HandshakeResponse41 shaped like the mariadb CLI's: scramble, database, plugin and the
/// usual connection attributes.
fn response() -> Vec<u8> {
    let attrs: Vec<u8> = [
        ("_client_name", "libmariadb"),
        ("_client_version", "3.3.20"),
        ("_os", "Linux"),
        ("_pid", "4242"),
        ("_platform", "x86_64"),
        ("program_name", "mariadb"),
    ]
    .iter()
    .flat_map(|(k, v)| {
        let mut e = vec![k.len() as u8];
        e.extend_from_slice(k.as_bytes());
        e.push(v.len() as u8);
        e.extend_from_slice(v.as_bytes());
        e
    })
    .collect();
    let r = HandshakeResponse {
        capabilities: Capabilities(0x01be_a20e | 0x0800),
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities(0x1d),
        username: b"application_user",
        auth_response: &[0x5a; 20],
        database: Some(b"inventory"),
        auth_plugin: Some(b"mysql_native_password"),
        connect_attrs: Some(&attrs),
    };
    let mut out = Vec::new();
    r.write(&mut out);
    out
}

fn benches(c: &mut Criterion) {
    let resp = response();
    let mut framed = Vec::new();
    write_packet(&mut framed, 1, &resp);

    c.bench_function("frame/handshake_response", |b| b.iter(|| frame(black_box(&framed), 64 * 1024)));
    c.bench_function("parse/greeting", |b| b.iter(|| Greeting::parse(black_box(GREETING))));
    c.bench_function("parse/handshake_response", |b| b.iter(|| parse_client_first(black_box(&resp))));
    c.bench_function("build/greeting", |b| {
        let g = Greeting::parse(GREETING).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            black_box(&g).write(&mut out);
            black_box(out.len())
        })
    });
    c.bench_function("build/handshake_response", |b| {
        let r = HandshakeResponse::parse(&resp).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            black_box(&r).write(&mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(wire, benches);
criterion_main!(wire);
