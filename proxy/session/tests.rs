//! The session driven over in-memory pipes, with tokio's clock paused where time matters.
//!
//! Everything before admission runs without a server: these tests point the backend at a
//! listener that they watch, and check that nothing reached it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;
use crate::backend::Backend;
use crate::config::{
    BackendAddress, BackendConfig, BackendTlsConfig, BackendTlsMode, ConnectionLimits, GreetingMode, SourceRule,
};
use crate::events::{ClientAddr, LoginKind, LoginOutcome};
use crate::firewall::{IpSet, Rules};
use crate::metrics::Outcome;
use crate::protocol::{Capabilities, Greeting, HandshakeResponse, MariaDbCapabilities, write_packet};
use crate::registry::SYNTHETIC_BASE;

const CLIENT_CAPS: Capabilities =
    Capabilities(0x0000_0200 | 0x8000 | 0x0008_0000 | 0x0020_0000 | 0x0000_0008 | 0x0001 | 0x0002_0000);

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40_000))
}

fn origin(peer: SocketAddr) -> Origin {
    Origin { peer: ClientAddr::Tcp(peer), local: Some(SocketAddr::from(([192, 0, 2, 1], 3306))) }
}

fn rule(s: &str) -> SourceRule {
    SourceRule::Net(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// What a test listener may vary.
struct Listener {
    require_tls: bool,
    allow: Vec<SourceRule>,
    limits: ConnectionLimits,
    proxy_trusted: Option<&'static str>,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            require_tls: false,
            allow: vec![rule("0.0.0.0/0"), rule("::/0")],
            limits: ConnectionLimits {
                max_connections: 100,
                max_connections_per_ip: None,
                max_preauth_per_ip: 16,
                connect_rate_per_ip: None,
            },
            proxy_trusted: None,
        }
    }
}

/// A context whose backend is `backend` (never dialled before admission) and whose profile
/// is already learned.
fn context(require_tls: bool, backend: SocketAddr) -> Arc<ListenerContext> {
    listener(Listener { require_tls, ..Listener::default() }, backend)
}

fn listener(l: Listener, backend: SocketAddr) -> Arc<ListenerContext> {
    let cfg = BackendConfig {
        address: BackendAddress::Tcp { host: backend.ip().to_string(), port: backend.port() },
        connect_timeout: Duration::from_secs(1),
        tls: BackendTlsConfig { mode: BackendTlsMode::Disabled, ca: None, server_name: None },
        proxy_protocol: None,
    };
    let profile = Arc::new(ProfileCell::default());
    let nonce2 = b"abcdefghijkl\0";
    let greeting = Greeting {
        server_version: b"10.11.19-MariaDB",
        connection_id: 5,
        auth_data_1: b"12345678",
        capabilities: Capabilities(0xf7fe | 0x0008_0000 | 0x0010_0000 | 0x0020_0000 | 0x0001_0000 | 0x0002_0000),
        charset: 45,
        status: 2,
        auth_data_len: 21,
        mariadb_capabilities: MariaDbCapabilities(0x1d),
        auth_data_2: nonce2,
        auth_plugin: Some(b"mysql_native_password"),
    };
    assert!(profile.observe(&greeting));
    Arc::new(ListenerContext {
        listener: "unit".into(),
        handshake_timeout: Duration::from_secs(10),
        tls: None,
        min_tls: crate::config::TlsVersion::Tls12,
        require_secure_transport: l.require_tls,
        greeting: GreetingMode::Flexgate,
        firewall: Rules::compile(&l.allow, &[], &Default::default(), &mut |_| panic!("no hostnames here")),
        limits: l.limits,
        proxy_protocol: l.proxy_trusted.map(|t| IpSet::from_nets([t.parse().unwrap_or_else(|e| panic!("{e}"))])),
        gate: Arc::default(),
        generation: 1,
        backend: Arc::new(Backend::new(&cfg, None)),
        profile,
        registry: Arc::default(),
        events: crate::events::LoginEvents::default(),
        metrics: Default::default(),
        dials: Arc::default(),
        draining: Default::default(),
        key: Arc::default(),
        auth_mode: Default::default(),
        entra: None,
    })
}

/// Starts a session on one end of a pipe; returns the other end and the task.
fn start(ctx: &Arc<ListenerContext>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    start_from(ctx, peer())
}

fn start_from(ctx: &Arc<ListenerContext>, peer: SocketAddr) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server_side) = duplex(64 * 1024);
    let task = tokio::spawn(run(server_side, origin(peer), ctx.clone()));
    (client, task)
}

async fn read_packet(s: &mut DuplexStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await.ok()?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[3], p))
}

fn err_code(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xff)).then(|| u16::from_le_bytes([p[1], p[2]]))
}

fn response(caps: Capabilities, user: &[u8]) -> Vec<u8> {
    let r = HandshakeResponse {
        capabilities: caps,
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities(0),
        username: user,
        auth_response: &[7; 20],
        database: Some(b"shop"),
        auth_plugin: Some(b"mysql_native_password"),
        connect_attrs: None,
    };
    let mut p = Vec::new();
    r.write(&mut p);
    p
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_packet(&mut out, seq, payload);
    out
}

/// A backend that records whether anything connected to it.
async fn watched_backend() -> (SocketAddr, tokio::net::TcpListener) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    (l.local_addr().unwrap_or_else(|e| panic!("{e}")), l)
}

async fn nothing_connected(l: &tokio::net::TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(200), l.accept()).await.is_err()
}

#[tokio::test]
async fn greeting_comes_from_the_profile_with_a_fresh_nonce_and_a_synthetic_id() {
    let (addr, backend) = watched_backend().await;
    let ctx = context(false, addr);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (mut c, _task) = start(&ctx);
        let (seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no greeting"));
        assert_eq!(seq, 0);
        let g = Greeting::parse(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.server_version, b"10.11.19-MariaDB");
        assert!(g.connection_id >= SYNTHETIC_BASE, "id {}", g.connection_id);
        let nonce = g.nonce();
        assert_eq!(nonce.len(), 20);
        assert!(nonce.iter().all(|b| (1..=127).contains(b)), "{nonce:?}");
        assert!(!g.capabilities.contains(Capabilities::SSL), "no certificate, no TLS offered");
        seen.push((g.connection_id, nonce));
    }
    assert_ne!(seen[0], seen[1]);
    assert!(nothing_connected(&backend).await, "greeting must not dial the server");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out_without_reaching_the_server() {
    let ctx = context(false, SocketAddr::from(([127, 0, 0, 1], 9)));
    let (mut c, task) = start(&ctx);
    assert!(read_packet(&mut c).await.is_some());
    let started = tokio::time::Instant::now();
    // The clock only moves when every task waits: the deadline fires at exactly 10 s.
    assert!(read_packet(&mut c).await.is_none(), "closed without an ERR");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    task.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctx.metrics.outcome_total(Outcome::HandshakeTimeout), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_stalling_mid_packet_times_out_too() {
    let ctx = context(false, SocketAddr::from(([127, 0, 0, 1], 9)));
    let (mut c, task) = start(&ctx);
    assert!(read_packet(&mut c).await.is_some());
    let r = packet(1, &response(CLIENT_CAPS, b"app"));
    c.write_all(&r[..r.len() / 2]).await.unwrap_or_else(|e| panic!("{e}"));
    task.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctx.metrics.outcome_total(Outcome::HandshakeTimeout), 1);
}

/// Garbage in the first client packet: each kind gets its ERR, at the right sequence id, and
/// nothing reaches the server.
#[tokio::test]
async fn garbage_gets_the_right_err_and_the_server_sees_nothing() {
    let (addr, backend) = watched_backend().await;
    let ctx = context(false, addr);
    let cases: Vec<(Vec<u8>, u16, u8)> = vec![
        // A payload that is no HandshakeResponse.
        (packet(1, b"\x00\x02\x00\x00garbage"), 1043, 2),
        // A header announcing more than the pre-auth limit.
        (vec![0xff, 0xff, 0xff, 0x01], 1153, 2),
        // The wrong sequence id.
        (packet(7, &response(CLIENT_CAPS, b"app")), 1156, 8),
        // Protocol compression, never offered.
        (packet(1, &response(CLIENT_CAPS.with(Capabilities::COMPRESS), b"app")), 1043, 2),
        // No CLIENT_PLUGIN_AUTH: cannot follow the auth switch.
        (packet(1, &response(CLIENT_CAPS.without(Capabilities::PLUGIN_AUTH), b"app")), 1251, 2),
    ];
    for (input, code, seq) in cases {
        let (mut c, task) = start(&ctx);
        assert!(read_packet(&mut c).await.is_some());
        c.write_all(&input).await.unwrap_or_else(|e| panic!("{e}"));
        let (got_seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR for {code}"));
        assert_eq!((err_code(&p), got_seq), (Some(code), seq), "{}", String::from_utf8_lossy(&p));
        drop(c);
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(nothing_connected(&backend).await);
}

#[tokio::test]
async fn plaintext_on_a_tls_listener_is_refused_before_the_server_and_recorded() {
    let (addr, backend) = watched_backend().await;
    let ctx = context(true, addr);
    let mut events = ctx.events.subscribe();
    let (mut c, task) = start(&ctx);
    assert!(read_packet(&mut c).await.is_some());
    c.write_all(&packet(1, &response(CLIENT_CAPS, b"app"))).await.unwrap_or_else(|e| panic!("{e}"));
    let (seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!((err_code(&p), seq), (Some(3159), 2));
    task.await.unwrap_or_else(|e| panic!("{e}"));
    let e = events.recv().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.kind, LoginKind::Connect);
    assert_eq!(e.user.as_deref(), Some("app"));
    assert_eq!(e.database.as_deref(), Some("shop"));
    assert_eq!(e.outcome, LoginOutcome::Refused { reason: "insecure_transport", code: 3159 });
    assert!(nothing_connected(&backend).await);
}

#[tokio::test]
async fn an_ssl_request_without_a_certificate_is_refused() {
    let ctx = context(false, SocketAddr::from(([127, 0, 0, 1], 9)));
    let (mut c, task) = start(&ctx);
    assert!(read_packet(&mut c).await.is_some());
    let mut ssl = Vec::new();
    crate::protocol::SslRequest {
        capabilities: CLIENT_CAPS.with(Capabilities::SSL),
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities(0),
    }
    .write(&mut ssl);
    c.write_all(&packet(1, &ssl)).await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!(err_code(&p), Some(1043));
    task.await.unwrap_or_else(|e| panic!("{e}"));
}

/// A client that goes away at each point before login ends its session as `client_gone`,
/// without an ERR and without a server connection.
#[tokio::test]
async fn a_client_gone_at_each_phase_is_recorded() {
    let (addr, backend) = watched_backend().await;
    let ctx = context(false, addr);
    let full = packet(1, &response(CLIENT_CAPS, b"app"));
    for cut in [0, 3, 4, full.len() - 1] {
        let (mut c, task) = start(&ctx);
        assert!(read_packet(&mut c).await.is_some());
        c.write_all(&full[..cut]).await.unwrap_or_else(|e| panic!("{e}"));
        drop(c);
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(ctx.metrics.outcome_total(Outcome::ClientGone), 4);
    assert!(nothing_connected(&backend).await);
}

/// An admitted client whose server is down gets 2003 at its next sequence id.
#[tokio::test]
async fn an_admitted_client_learns_that_the_server_is_down() {
    let (addr, backend) = watched_backend().await;
    drop(backend);
    let ctx = context(false, addr);
    let (mut c, task) = start(&ctx);
    assert!(read_packet(&mut c).await.is_some());
    c.write_all(&packet(1, &response(CLIENT_CAPS, b"app"))).await.unwrap_or_else(|e| panic!("{e}"));
    let (seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!((err_code(&p), seq), (Some(2003), 2));
    task.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctx.metrics.outcome_total(Outcome::BackendUnavailable), 1);
}

/// A refused address gets ERR 1130 in place of the greeting (no greeting, so no SQLSTATE and
/// sequence id 0), then a close; the server sees nothing.
#[tokio::test]
async fn a_refused_address_gets_1130_before_any_greeting() {
    let (addr, backend) = watched_backend().await;
    let ctx = listener(Listener { allow: vec![rule("10.0.0.0/8")], ..Listener::default() }, addr);
    let (mut c, task) = start_from(&ctx, SocketAddr::from(([192, 0, 2, 9], 5000)));
    let (seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!((err_code(&p), seq), (Some(1130), 0));
    assert_eq!(&p[3..], b"Host '192.0.2.9' is not allowed to connect to this MySQL server");
    assert!(read_packet(&mut c).await.is_none(), "closed after the ERR");
    task.await.unwrap_or_else(|e| panic!("{e}"));
    let allowed = start_from(&ctx, SocketAddr::from(([10, 1, 2, 3], 5000)));
    let (mut c, _task) = allowed;
    let (_, g) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no greeting"));
    assert_eq!(g.first(), Some(&10), "protocol 10 greeting");
    assert_eq!(ctx.metrics.outcome_total(Outcome::HostNotAllowed), 1);
    assert_eq!(ctx.gate.refused_firewall.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(nothing_connected(&backend).await);
}

/// `max_preauth_per_ip` counts clients still logging in from one address; others are not
/// affected, and a slot frees when a client leaves.
#[tokio::test]
async fn preauth_slots_are_per_address() {
    let ctx = listener(
        Listener {
            limits: ConnectionLimits { max_preauth_per_ip: 2, ..Listener::default().limits },
            ..Listener::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 9)),
    );
    let a = SocketAddr::from(([192, 0, 2, 1], 1));
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut c, t) = start_from(&ctx, a);
        assert!(read_packet(&mut c).await.is_some_and(|(_, p)| err_code(&p).is_none()));
        held.push((c, t));
    }
    let (mut c, _t) = start_from(&ctx, a);
    let (seq, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!((err_code(&p), seq), (Some(1040), 0));
    let msg = String::from_utf8_lossy(&p[3..]).into_owned();
    assert!(msg.contains("max_preauth_per_ip"), "{msg}");
    let (mut other, _t2) = start_from(&ctx, SocketAddr::from(([192, 0, 2, 2], 1)));
    assert!(read_packet(&mut other).await.is_some_and(|(_, p)| err_code(&p).is_none()));
    let (c0, t0) = held.remove(0);
    drop(c0);
    t0.await.unwrap_or_else(|e| panic!("{e}"));
    let (mut again, _t3) = start_from(&ctx, a);
    assert!(read_packet(&mut again).await.is_some_and(|(_, p)| err_code(&p).is_none()));
}

/// A trusted peer's PROXY header names the client the firewall decides on; an untrusted
/// peer's header is refused with a message that says why.
#[tokio::test]
async fn proxy_headers_are_believed_only_from_trusted_peers() {
    let (addr, backend) = watched_backend().await;
    let ctx = listener(
        Listener { allow: vec![rule("10.0.0.0/8")], proxy_trusted: Some("192.0.2.0/24"), ..Listener::default() },
        addr,
    );
    let balancer = SocketAddr::from(([192, 0, 2, 50], 1));
    // From the balancer, carrying an allowed client.
    let (mut c, _t) = start_from(&ctx, balancer);
    c.write_all(b"PROXY TCP4 10.9.8.7 192.0.2.1 5555 3306\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(read_packet(&mut c).await.is_some_and(|(_, p)| err_code(&p).is_none()), "greeted");
    // Carrying a refused client: 1130 names the carried address, not the balancer's.
    let (mut c, _t) = start_from(&ctx, balancer);
    c.write_all(b"PROXY TCP4 203.0.113.5 192.0.2.1 5555 3306\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!(err_code(&p), Some(1130));
    assert!(String::from_utf8_lossy(&p).contains("203.0.113.5"));
    // A trusted peer that sends garbage instead of a header.
    let (mut c, _t) = start_from(&ctx, balancer);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!(err_code(&p), Some(1043));
    // An untrusted but allowed peer that sends a header: greeted (it cannot be told apart
    // before it writes), then refused when the header arrives in place of its login.
    let (mut c, _t) = start_from(&ctx, SocketAddr::from(([10, 0, 0, 1], 1)));
    assert!(read_packet(&mut c).await.is_some());
    c.write_all(b"PROXY TCP4 10.9.8.7 192.0.2.1 5555 3306\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut c).await.unwrap_or_else(|| panic!("no ERR"));
    assert_eq!(err_code(&p), Some(1130));
    assert!(String::from_utf8_lossy(&p).contains("not a trusted proxy"), "{}", String::from_utf8_lossy(&p));
    assert!(nothing_connected(&backend).await);
}
