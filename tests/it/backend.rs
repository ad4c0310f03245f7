//! The flexgate → server leg: Unix socket, TLS with verification, and an outage.

use mysql_async::prelude::*;

use flexgate::metrics::Outcome;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn backend_over_unix_socket() {
    let db = mariadb();
    let (user, schema) = db.user();
    let cfg = ProxyConfig { backend: format!("unix:{}", db.socket.display()), ..ProxyConfig::to(db) };
    let proxy = cfg.start(&db.certs).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    // MariaDB names socket connections 'localhost' and TCP ones by address.
    let host: Option<String> =
        conn.query_first("SELECT SUBSTRING_INDEX(USER(), '@', -1)").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.as_deref(), Some("localhost"));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_over_tls_with_verify_identity() {
    let db = mariadb();
    let (user, schema) = db.user();
    let tls = format!("mode = \"verify-identity\"\nca = \"{}\"\nserver_name = \"db.internal\"", db.certs.ca.display());
    let proxy = ProxyConfig { backend_tls: Some(tls), ..ProxyConfig::to(db) }.start(&db.certs).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    // The server's own view of this session: it is encrypted.
    let row: Option<(String, String)> =
        conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_version'").await.unwrap_or_else(|e| panic!("{e}"));
    let version = row.map(|(_, v)| v).unwrap_or_default();
    assert!(version.starts_with("TLSv1."), "server leg not encrypted: {version:?}");
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_certificate_for_another_name_is_refused() {
    let db = mariadb();
    let (user, schema) = db.user();
    let tls =
        format!("mode = \"verify-identity\"\nca = \"{}\"\nserver_name = \"other.internal\"", db.certs.ca.display());
    let proxy = ProxyConfig { backend_tls: Some(tls), ..ProxyConfig::to(db) }.start(&db.certs).await;
    let body = "pymysql.connect(host=host, port=port, user=user, password=pw, ssl={'ca': ca})\nprint('connected')";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.starts_with("ERR 1105") && out.contains("TLS to the database server"), "{out}");
    eventually("backend_tls_failed == 1", || proxy.metrics.outcome_total(Outcome::BackendTlsFailed) == 1).await;
    // verify-ca accepts the same certificate: the chain is good, only the name differs.
    let tls = format!("mode = \"verify-ca\"\nca = \"{}\"\nserver_name = \"other.internal\"", db.certs.ca.display());
    let proxy = ProxyConfig { backend_tls: Some(tls), ..ProxyConfig::to(db) }.start(&db.certs).await;
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, ssl={'ca': ca})\nprint('connected')";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), "connected");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_backend_gives_2003_and_a_restarted_one_is_served_again() {
    // A dedicated server: stopping the shared one would disturb the other tests.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut db = tokio::task::block_in_place(|| MariaDb::start(dir.path()));
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(&db).start(&db.certs).await;
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT 1'); print('ok', cur.fetchone()[0])";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), "ok 1");

    tokio::task::block_in_place(|| db.stop());
    let started = std::time::Instant::now();
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.starts_with("ERR 2003"), "{out}");
    assert!(out.contains(&db.addr()), "message does not name the backend: {out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "ERR 2003 took {:?}", started.elapsed());
    let err = mysql_async::Conn::new(async_opts(proxy.port(), &user, &schema, PASSWORD, &db.certs)).await.err();
    assert!(matches!(&err, Some(mysql_async::Error::Server(e)) if e.code == 2003), "{err:?}");

    tokio::task::block_in_place(|| db.launch());
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), "ok 1", "not served again after the backend came back");
    eventually("backend_unavailable == 2", || proxy.metrics.outcome_total(Outcome::BackendUnavailable) == 2).await;
    tokio::task::block_in_place(|| db.stop());
}
