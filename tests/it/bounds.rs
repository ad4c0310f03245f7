//! Everything before login is bounded in time and size, and bad input gets ERR or a close.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use flexgate::metrics::Outcome;

use crate::harness::*;

/// Whether the peer closes within `limit` (EOF or reset), whatever it sends before.
async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let drain = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain).await.is_ok()
}

async fn greeted(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("{e}"));
    let (seq, greeting) = read_packet(&mut s).await.unwrap_or_else(|| panic!("no greeting"));
    assert_eq!((seq, greeting.first()), (0, Some(&10)));
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_timeout_closes_a_silent_socket() {
    let db = mariadb();
    let proxy = ProxyConfig { handshake_timeout: "2s", ..ProxyConfig::to(db) }.start(&db.certs).await;
    let started = Instant::now();
    let mut s = greeted(proxy.port()).await;
    assert!(closes_within(&mut s, Duration::from_secs(5)).await, "silent socket still open");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900), "closed before the timeout: {waited:?}");
    eventually("handshake_timeout == 1", || proxy.metrics.outcome_total(Outcome::HandshakeTimeout) == 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_do_not_stop_a_normal_login() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy =
        ProxyConfig { handshake_timeout: "20s", ..ProxyConfig::to(db) }.listener(MANY_PREAUTH).start(&db.certs).await;
    let mut silent = Vec::with_capacity(200);
    for _ in 0..200 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let started = Instant::now();
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0])";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), "1");
    assert!(started.elapsed() < Duration::from_secs(10), "login took {:?}", started.elapsed());
    assert!(proxy.metrics.active() >= 200, "the silent sockets were not all held open");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_oversized_input_get_err_then_close() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    // (name, bytes, expected ERR code and its sequence id: the one after the refused packet's)
    type ErrAndSeq = Option<(u16, u8)>;
    let cases: Vec<(&str, Vec<u8>, ErrAndSeq)> = vec![
        // An HTTP request: "GET" read as a length is 5.5 MB, far past the pre-auth limit.
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some((1153, b' ' + 1))),
        ("oversized", vec![0xff, 0xff, 0xff, 0x01], Some((1153, 2))),
        ("just over 64 KiB", vec![0x01, 0x00, 0x01, 0x01], Some((1153, 2))),
        ("garbage payload", vec![0x05, 0, 0, 1, 1, 2, 3, 4, 5], Some((1043, 2))),
        (
            "wrong sequence id",
            {
                let mut v = vec![0x20, 0, 0, 7];
                v.extend([0u8; 32]);
                v
            },
            Some((1156, 8)),
        ),
        (
            "pre-4.1 client",
            {
                let mut v = vec![0x20, 0, 0, 1];
                v.extend([0u8; 32]);
                v
            },
            Some((1043, 2)),
        ),
        ("truncated packet then EOF", vec![0x40, 0, 0, 1, 1, 2, 3], None),
    ];
    for (name, bytes, want) in cases {
        let mut s = greeted(proxy.port()).await;
        s.write_all(&bytes).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        if want.is_none() {
            s.shutdown().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        match want {
            Some((code, seq)) => {
                let (got_seq, payload) = read_packet(&mut s).await.unwrap_or_else(|| panic!("{name}: no ERR packet"));
                assert_eq!(err_code(&payload), Some(code), "{name}: {}", String::from_utf8_lossy(&payload));
                assert_eq!(got_seq, seq, "{name}: ERR sequence id");
                assert!(closes_within(&mut s, Duration::from_secs(5)).await, "{name}: not closed after ERR");
            }
            None => assert!(closes_within(&mut s, Duration::from_secs(5)).await, "{name}: not closed"),
        }
    }
    // Still serving.
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, ssl={'ca': ca})\nprint('ok')";
    assert_eq!(pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_instead_of_a_tls_client_hello_is_closed() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut s = greeted(proxy.port()).await;
    // A valid SSLRequest, then bytes that are not TLS.
    let mut req = vec![0x20, 0, 0, 1];
    req.extend_from_slice(&(0x0000_0200u32 | 0x0800 | 0x8000).to_le_bytes());
    req.extend_from_slice(&[0u8; 28]);
    s.write_all(&req).await.unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"this is not a ClientHello at all, not even close......").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(closes_within(&mut s, Duration::from_secs(5)).await);
    eventually("tls_handshake_failures() == 1", || proxy.metrics.tls_handshake_failures() == 1).await;
}

/// A real client whose handshake is too large (huge connection attributes) sees ERR 1153 itself,
/// which needs the right sequence id as well as the right code.
#[tokio::test(flavor = "multi_thread")]
async fn real_client_with_oversized_handshake_sees_1153() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let body = "pymysql.connect(host=host, port=port, user=user, password=pw, ssl={'ca': ca}, program_name='x' * 70000)\n\
                print('connected')";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.starts_with("ERR 1153"), "{out}");
}
