//! Pre-auth isolation: a client that never logs in costs the server nothing. flexgate greets it
//! itself and dials the server only after a HandshakeResponse that admission lets through, so
//! silent sockets and port probes against flexgate hold no server thread and add nothing to
//! the server's `Aborted_connects`. With `greeting = "server"` (dial at accept) they do, which
//! the contrast tests show.
//!
//! Each test has a private MariaDB (its counters are the test's alone), with the defaults a
//! Debian server has where they matter: 151 connections and 100 connect errors per host (the
//! latter is not reached over loopback with `--skip-name-resolve`, which keeps the host cache
//! out of play; `Aborted_connects` still counts every aborted handshake).

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use flexgate::metrics::Outcome;

use crate::harness::*;

/// Debian's MariaDB defaults; the harness's own options come first, and mariadbd takes the
/// last of a repeated option.
const DEBIAN_DEFAULTS: &[&str] = &["--max-connections=151", "--max-connect-errors=100"];

fn status(db: &MariaDb, name: &str) -> u64 {
    tokio::task::block_in_place(|| db.status(name))
}

/// Waits (bounded) until flexgate counts `n` open sessions.
async fn active_at_least(proxy: &RunningProxy, n: u64) {
    let until = Instant::now() + Duration::from_secs(15);
    while proxy.metrics.active() < n {
        assert!(Instant::now() < until, "flexgate holds {} sessions, not {n}", proxy.metrics.active());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until flexgate has no open session.
async fn all_ended(proxy: &RunningProxy) {
    let until = Instant::now() + Duration::from_secs(15);
    while proxy.metrics.active() > 0 {
        assert!(Instant::now() < until, "flexgate still holds {} sessions", proxy.metrics.active());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` connected TCP sockets that send nothing and read nothing.
async fn silent_sockets(proxy: &RunningProxy, n: usize) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(proxy.addr).await.unwrap_or_else(|e| panic!("silent socket {i}: {e}"));
        socks.push(s);
    }
    socks
}

/// `n` probes: connect, then close at once without a byte.
async fn probes(proxy: &RunningProxy, n: usize) {
    for i in 0..n {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap_or_else(|e| panic!("probe {i}: {e}"));
        let _ = s.shutdown().await;
    }
}

/// A real login and query through flexgate while the test's other sockets are open.
async fn real_client_queries(proxy: &RunningProxy, user: &str, schema: &str, certs: &Certs) {
    let started = Instant::now();
    let mut conn = connect(proxy, user, schema, certs).await;
    let v: Option<i64> = conn.query_first("SELECT 6 * 7").await.unwrap_or_else(|e| panic!("query: {e}"));
    assert_eq!(v, Some(42));
    conn.disconnect().await.unwrap_or_else(|e| panic!("disconnect: {e}"));
    assert!(started.elapsed() < Duration::from_secs(10), "login and query took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_hold_no_server_thread() {
    let _ = flexgate::limits::raise_nofile();
    let db = MariaDb::start_private("flexgate-iso-silent", DEBIAN_DEFAULTS);
    let (user, schema) = db.user();
    let proxy =
        ProxyConfig { handshake_timeout: "30s", ..ProxyConfig::to(&db) }.listener(MANY_PREAUTH).start(&db.certs).await;
    proxy.profile_learned().await;
    // The startup probe's connection is gone; what is left is root's status query itself.
    status_until(&db, "Threads_connected", "<= 1 before the test", |v| v <= 1).await;

    let silent = silent_sockets(&proxy, 1000).await;
    active_at_least(&proxy, 1000).await;
    // Give a server thread, were one dialled, the time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let threads = status(&db, "Threads_connected");
    assert!(threads <= 3, "1000 silent sockets against flexgate hold {threads} server threads");

    real_client_queries(&proxy, &user, &schema, &db.certs).await;
    let threads = status(&db, "Threads_connected");
    assert!(threads <= 3, "after the real login, {threads} server threads");
    assert!(proxy.metrics.active() >= 1000, "the silent sockets were not all held open during the check");
    assert_eq!(proxy.metrics.outcome_total(Outcome::HandshakeTimeout), 0, "handshake_timeout too short for the test");

    drop(silent);
    all_ended(&proxy).await;
    eventually("1000 silent sockets counted as client_gone", || {
        proxy.metrics.outcome_total(Outcome::ClientGone) >= 1000
    })
    .await;
}

/// The contrast: with the server's greeting relayed, every silent socket holds a server thread
/// (100 here, so that the server's 151 connections are not exhausted).
#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_hold_server_threads_in_server_greeting_mode() {
    let _ = flexgate::limits::raise_nofile();
    let db = MariaDb::start_private("flexgate-iso-silent-sg", DEBIAN_DEFAULTS);
    let (user, schema) = db.user();
    let proxy = ProxyConfig { handshake_timeout: "30s", ..ProxyConfig::to(&db) }
        .listener(MANY_PREAUTH)
        .server_greeting()
        .start(&db.certs)
        .await;
    proxy.profile_learned().await;
    status_until(&db, "Threads_connected", "<= 1 before the test", |v| v <= 1).await;

    let silent = silent_sockets(&proxy, 100).await;
    active_at_least(&proxy, 100).await;
    // The server drops a connection that has not logged in after its connect_timeout (10 s by
    // default); well before that, all 100 hold a thread.
    let threads = status_until(&db, "Threads_connected", ">= 100", |v| v >= 100).await;
    assert!(threads >= 100, "{threads}");

    real_client_queries(&proxy, &user, &schema, &db.certs).await;
    drop(silent);
    all_ended(&proxy).await;
    status_until(&db, "Threads_connected", "back to root's own", |v| v <= 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_add_nothing_to_aborted_connects() {
    let _ = flexgate::limits::raise_nofile();
    let db = MariaDb::start_private("flexgate-iso-probe", DEBIAN_DEFAULTS);
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(&db).listener(MANY_PREAUTH).start(&db.certs).await;
    proxy.profile_learned().await;
    // The startup probe closes after the greeting: the server counts that one abort, once its
    // thread has seen the close.
    let before = status_until(&db, "Aborted_connects", ">= 1 (the startup probe)", |v| v >= 1).await;
    status_until(&db, "Threads_connected", "<= 1 before the probes", |v| v <= 1).await;

    probes(&proxy, 300).await;
    eventually("300 probes ended", || proxy.metrics.accepted_total() == 300 && proxy.metrics.active() == 0).await;
    // Let an abort, were one caused, reach the counter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = status(&db, "Aborted_connects");
    assert_eq!(after, before, "300 probes against flexgate reached the server");
    // And the server is still there for a real client.
    real_client_queries(&proxy, &user, &schema, &db.certs).await;
    assert_eq!(status(&db, "Aborted_connects"), before);
}

/// The contrast: with the server's greeting relayed, each probe is an aborted connect.
#[tokio::test(flavor = "multi_thread")]
async fn probes_are_aborted_connects_in_server_greeting_mode() {
    let db = MariaDb::start_private("flexgate-iso-probe-sg", DEBIAN_DEFAULTS);
    let proxy = ProxyConfig::to(&db).listener(MANY_PREAUTH).server_greeting().start(&db.certs).await;
    proxy.profile_learned().await;
    let before = status_until(&db, "Aborted_connects", ">= 1 (the startup probe)", |v| v >= 1).await;
    status_until(&db, "Threads_connected", "<= 1 before the probes", |v| v <= 1).await;

    probes(&proxy, 30).await;
    eventually("30 probes ended", || proxy.metrics.accepted_total() == 30 && proxy.metrics.active() == 0).await;
    let after = status_until(&db, "Aborted_connects", "grown by the 30 probes", |v| v >= before + 30).await;
    assert_eq!(after, before + 30, "each probe should be one aborted connect");
}
