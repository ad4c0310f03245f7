//! How a logged-in session ends is counted by who ended it: the client's COM_QUIT is a normal
//! end (`quit`), a client that just closes is MySQL's "aborted client" (`client_closed`), a
//! server that closes first (KILL, `wait_timeout`, shutdown) is `server_closed`, and only a
//! socket error is `relay_error`.

use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use flexgate::metrics::Outcome;

use crate::harness::*;

/// The non-zero outcome counters, for failure messages.
fn outcomes(proxy: &RunningProxy) -> String {
    let counted: Vec<String> = Outcome::ALL
        .iter()
        .filter(|o| proxy.metrics.outcome_total(**o) > 0)
        .map(|o| format!("{o}={}", proxy.metrics.outcome_total(*o)))
        .collect();
    if counted.is_empty() { "none".into() } else { counted.join(" ") }
}

/// Waits (bounded) until `n` sessions have been counted, whatever their outcome.
async fn sessions_ended(proxy: &RunningProxy, n: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ended: u64 = Outcome::ALL.iter().map(|o| proxy.metrics.outcome_total(*o)).sum();
        if ended >= n {
            return;
        }
        assert!(Instant::now() < until, "{what}: {ended} of {n} sessions ended; outcomes: {}", outcomes(proxy));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After `n` sessions in all, exactly `n` are counted as `want`.
async fn all_counted_as(proxy: &RunningProxy, n: u64, want: Outcome, what: &str) {
    sessions_ended(proxy, n, what).await;
    assert_eq!(proxy.metrics.outcome_total(want), n, "{what}: outcomes: {}", outcomes(proxy));
}

fn plaintext_opts(port: u16, user: &str, schema: &str) -> mysql_async::Opts {
    let certs = &mariadb().certs;
    mysql_async::OptsBuilder::from_opts(async_opts(port, user, schema, PASSWORD, certs)).ssl_opts(None).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_quit_is_counted_as_quit() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;

    // The mariadb CLI sends COM_QUIT, then closes without a TLS close_notify.
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert_eq!(stdout(&o), "1", "{}", stderr(&o));
    all_counted_as(&proxy, 1, Outcome::Quit, "mariadb CLI over TLS").await;

    // PyMySQL's close() sends COM_QUIT.
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT 2'); print(cur.fetchone()[0]); c.close()";
    assert_eq!(pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await.trim(), "2");
    all_counted_as(&proxy, 2, Outcome::Quit, "PyMySQL over TLS").await;

    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let v: Option<i64> = conn.query_first("SELECT 3").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some(3));
    conn.disconnect().await.unwrap_or_else(|e| panic!("disconnect: {e}"));
    all_counted_as(&proxy, 3, Outcome::Quit, "mysql_async over TLS").await;

    // Plaintext, where the listener allows it.
    let plain = ProxyConfig { require_secure_transport: false, ..ProxyConfig::to(db) }.start(&db.certs).await;
    let mut c = cli(plain.port(), &user, PASSWORD, &db.certs);
    c.args(["--skip-ssl", "--skip-ssl-verify-server-cert", "-e", "SELECT 4"]);
    let o = run(c).await;
    assert_eq!(stdout(&o), "4", "{}", stderr(&o));
    all_counted_as(&plain, 1, Outcome::Quit, "plaintext mariadb CLI").await;
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, ssl_disabled=True)\n\
                cur = c.cursor(); cur.execute('SELECT 5'); print(cur.fetchone()[0]); c.close()";
    assert_eq!(pymysql(plain.port(), &user, &schema, PASSWORD, &db.certs, body).await.trim(), "5");
    all_counted_as(&plain, 2, Outcome::Quit, "plaintext PyMySQL").await;

    for p in [&proxy, &plain] {
        assert_eq!(p.metrics.outcome_total(Outcome::RelayError), 0, "{}", outcomes(p));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_without_quit_is_client_closed() {
    let db = mariadb();
    let (user, schema) = db.user();
    let aborted_before = db.status("Aborted_clients");
    let proxy = ProxyConfig { require_secure_transport: false, ..ProxyConfig::to(db) }.start(&db.certs).await;

    // The process exits after its query: the kernel closes the socket, with no COM_QUIT and
    // no TLS close_notify.
    let exit = "import os\n\
                c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0], flush=True)\n\
                os._exit(0)";
    assert_eq!(pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, exit).await.trim(), "1");
    all_counted_as(&proxy, 1, Outcome::ClientClosed, "PyMySQL over TLS, process exit").await;

    let plain_exit = exit.replace("ssl={'ca': ca}", "ssl_disabled=True");
    assert_eq!(pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, &plain_exit).await.trim(), "1");
    all_counted_as(&proxy, 2, Outcome::ClientClosed, "plaintext PyMySQL, process exit").await;

    // PyMySQL closing only its socket.
    let sock_close = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                      cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0]); c._sock.close()";
    assert_eq!(pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, sock_close).await.trim(), "1");
    all_counted_as(&proxy, 3, Outcome::ClientClosed, "PyMySQL over TLS, socket closed").await;

    // A mysql_async connection dropped without disconnect(): its Drop (0.37) closes the stream
    // without COM_QUIT.
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let _: Option<i64> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    drop(conn);
    all_counted_as(&proxy, 4, Outcome::ClientClosed, "mysql_async dropped").await;

    // The server saw each as an aborted client.
    status_until(db, "Aborted_clients", "grown by 4", |v| v >= aborted_before + 4).await;
}

/// Waits (bounded) until the server no longer lists thread `id`.
async fn thread_gone(id: u64) {
    let db = mariadb();
    let until = Instant::now() + Duration::from_secs(10);
    let sql = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}");
    while tokio::task::block_in_place(|| db.root_sql(&sql)).trim() != "0" {
        assert!(Instant::now() < until, "server thread {id} still there after KILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's thread id for `conn` (through flexgate, not the greeting's id).
async fn server_thread_id(conn: &mut mysql_async::Conn) -> u64 {
    conn.query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no CONNECTION_ID()"))
}

/// Kills `id` while it is idle; the client finds out at its next query and drops the
/// connection (mysql_async does so without COM_QUIT).
async fn kill_idle(mut conn: mysql_async::Conn) {
    let db = mariadb();
    let id = server_thread_id(&mut conn).await;
    tokio::task::block_in_place(|| db.root_sql(&format!("KILL CONNECTION {id}")));
    thread_gone(id).await;
    // flexgate relays the server's close at once; leave it a moment before the next query.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r: Result<Option<i64>, _> = conn.query_first("SELECT 1").await;
    assert!(r.is_err(), "a query on a killed connection succeeded: {r:?}");
    drop(conn);
}

/// Kills `id` in the middle of a `SLEEP`: the client is waiting for its result and sees the
/// connection close.
async fn kill_busy(mut conn: mysql_async::Conn) {
    let db = mariadb();
    let id = server_thread_id(&mut conn).await;
    let query = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = conn.query_first("SELECT SLEEP(30)").await;
        drop(conn);
        r
    });
    let until = Instant::now() + Duration::from_secs(10);
    let sql =
        format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id} AND INFO LIKE 'SELECT SLEEP%'");
    while tokio::task::block_in_place(|| db.root_sql(&sql)).trim() != "1" {
        assert!(Instant::now() < until, "the SLEEP never started on thread {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| db.root_sql(&format!("KILL CONNECTION {id}")));
    let r = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .unwrap_or_else(|_| panic!("the killed query did not return"))
        .unwrap_or_else(|e| panic!("join: {e}"));
    assert!(r.is_err(), "the killed SLEEP returned {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_kill_is_server_closed_in_plaintext() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig { require_secure_transport: false, ..ProxyConfig::to(db) }.start(&db.certs).await;
    let conn = || async {
        mysql_async::Conn::new(plaintext_opts(proxy.port(), &user, &schema))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    };
    kill_idle(conn().await).await;
    all_counted_as(&proxy, 1, Outcome::ServerClosed, "plaintext, killed while idle").await;
    kill_busy(conn().await).await;
    all_counted_as(&proxy, 2, Outcome::ServerClosed, "plaintext, killed in a query").await;
}

/// Over TLS the client's close after the server's usually comes without a close_notify
/// (mysql_async, PyMySQL, the mariadb CLI), which must not turn a server kill into
/// `client_closed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_kill_is_server_closed_over_tls() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    kill_idle(connect(&proxy, &user, &schema, &db.certs).await).await;
    all_counted_as(&proxy, 1, Outcome::ServerClosed, "TLS, killed while idle").await;
    kill_busy(connect(&proxy, &user, &schema, &db.certs).await).await;
    all_counted_as(&proxy, 2, Outcome::ServerClosed, "TLS, killed in a query").await;
}
