//! PROXY protocol: headers in from a trusted balancer (v1 and v2), refused from anyone else,
//! and out to a MariaDB with `proxy_protocol_networks`, where a grant for one host works only
//! through it. The balancer is a small forwarder here that claims a client address of its
//! choosing, as HAProxy's `send-proxy` does with the real one.

use std::net::SocketAddr;

use mysql_async::prelude::Queryable;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use flexgate::events::LoginOutcome;

use crate::harness::*;

/// The header a balancer sends for `client` connecting to `to`.
fn header(v2: bool, client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(t)) = (client, to) else { panic!("IPv4 only here") };
    if !v2 {
        return format!("PROXY TCP4 {} {} {} {}\r\n", c.ip(), t.ip(), c.port(), t.port()).into_bytes();
    }
    // Written out by hand (not with the code under test): signature, version 2 + PROXY,
    // TCP over IPv4, 12 bytes of addresses and ports.
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&t.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&t.port().to_be_bytes());
    h
}

/// A balancer on 127.0.0.1: each connection to it is forwarded to `to`, behind a header that
/// names `client` as the real client. Returns its address.
async fn balancer(to: SocketAddr, client: SocketAddr, v2: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(to).await else { return };
                if out.write_all(&header(v2, client, to)).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    addr
}

fn claimed(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Through a trusted balancer (v1 and v2), the firewall, the limits and the login events use
/// the carried address; a header from a peer that is not trusted is refused.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_headers_name_the_client() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db)
        .listener(
            "allow = [\"10.9.0.0/16\", \"127.0.0.2\"]\nproxy_protocol = { trusted = [\"127.0.0.1\"] }\n\
             max_connections_per_ip = 1\n",
        )
        .start(&db.certs)
        .await;
    let opts = |port| async_opts(port, &user, &schema, PASSWORD, &db.certs);
    for v2 in [false, true] {
        let via = balancer(proxy.addr, claimed("10.9.9.9:40000"), v2).await;
        let mut c = mysql_async::Conn::new(opts(via.port())).await.unwrap_or_else(|e| panic!("v2={v2}: {e}"));
        let v: Option<i64> = c.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, Some(1));
        // The login event names the carried client (the socket's peer was 127.0.0.1).
        let carried = flexgate::events::ClientAddr::Tcp(claimed("10.9.9.9:40000"));
        let e = proxy.next_event("login from 10.9.9.9", |e| e.outcome == LoginOutcome::Ok && e.client == carried).await;
        assert_eq!(e.listener.as_ref(), "test", "v2={v2}");
        // The limit counts the carried address: a second connection "from 10.9.9.9" is refused,
        // one from another carried address is not.
        let second = mysql_async::Conn::new(opts(via.port())).await;
        assert!(
            matches!(&second, Err(mysql_async::Error::Server(e)) if e.code == 1040 && e.message.contains("max_connections_per_ip")),
            "{second:?}"
        );
        let other = balancer(proxy.addr, claimed("10.9.9.10:40000"), v2).await;
        let o = mysql_async::Conn::new(opts(other.port())).await.unwrap_or_else(|e| panic!("{e}"));
        o.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
        c.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
        // The next round starts with 10.9.9.9's slot free again.
        eventually("the sessions ended", || proxy.gate.quota.open() == 0).await;
    }
    // A carried address that the allow-list does not hold: 1130 names it, not the balancer.
    let outsider = balancer(proxy.addr, claimed("203.0.113.9:5000"), false).await;
    let mut s = TcpStream::connect(outsider).await.unwrap_or_else(|e| panic!("{e}"));
    let (seq, p) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed"));
    assert_eq!(
        (seq, err_of(&p)),
        (0, Some((1130, "Host '203.0.113.9' is not allowed to connect to this MySQL server".into())))
    );
    // 127.0.0.2 may connect but is not trusted: its header is refused.
    let mut s = connect_from("127.0.0.2".parse().unwrap_or_else(|e| panic!("{e}")), proxy.addr).await;
    let (_, greeting) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed"));
    assert!(err_of(&greeting).is_none());
    s.write_all(&header(false, claimed("10.9.9.9:1"), proxy.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed"));
    let (code, msg) = err_of(&p).unwrap_or_else(|| panic!("no ERR"));
    assert_eq!(code, 1130);
    assert!(msg.contains("not a trusted proxy"), "{msg}");
}

/// A trusted peer must send a header: garbage in its place is refused with 1043.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_peer_without_a_header_is_refused() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db)
        .listener("allow = [\"127.0.0.0/8\"]\nproxy_protocol = { trusted = [\"127.0.0.1\"] }\n")
        .start(&db.certs)
        .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let (_, p) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed"));
    assert_eq!(err_of(&p).map(|e| e.0), Some(1043));
    eventually("counted as a PROXY refusal", || {
        proxy.gate.refused_proxy.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
}

/// `backend.proxy_protocol` tells MariaDB the real client: an account for one host logs in
/// through flexgate only when the header is sent, and the server sees that host.
#[tokio::test(flavor = "multi_thread")]
async fn headers_out_keep_host_based_grants() {
    let db = MariaDb::start_private("flexgate-pp-out", &["--proxy-protocol-networks=127.0.0.1"]);
    let user = unique("pp");
    db.root_sql(&format!(
        "CREATE USER '{user}'@'10.9.9.9' IDENTIFIED BY '{PASSWORD}'; GRANT USAGE ON *.* TO '{user}'@'10.9.9.9';"
    ));
    let listener = "allow = [\"10.9.0.0/16\"]\nproxy_protocol = { trusted = [\"127.0.0.1\"] }\n";
    for (out, works) in [("\"v1\"", true), ("\"v2\"", true), ("\"none\"", false)] {
        let proxy = ProxyConfig { backend_extra: format!("proxy_protocol = {out}\n"), ..ProxyConfig::to(&db) }
            .listener(listener)
            .start(&db.certs)
            .await;
        let via = balancer(proxy.addr, claimed("10.9.9.9:40001"), true).await;
        let opts = mysql_async::OptsBuilder::from_opts(async_opts(via.port(), &user, "", PASSWORD, &db.certs))
            .db_name(None::<String>);
        match mysql_async::Conn::new(opts).await {
            Ok(mut c) => {
                assert!(works, "logged in as {user}@10.9.9.9 without telling the server ({out})");
                let who: Option<String> = c.query_first("SELECT USER()").await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(who, Some(format!("{user}@10.9.9.9")), "{out}");
            }
            Err(e) => {
                assert!(!works, "backend proxy_protocol = {out}: {e}");
                assert!(matches!(e, mysql_async::Error::Server(ref s) if s.code == 1045), "{e}");
            }
        }
    }
    // The server still takes connections without a header from the listed network (its own
    // tools, the harness's root queries), so flexgate's startup probe is no problem either.
    assert!(db.status("Threads_connected") >= 1);
}
