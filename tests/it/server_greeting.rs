//! `greeting = "server"`: flexgate dials the server at accept and relays its greeting, as it
//! did before it greeted clients itself. A representative subset of the suite in that mode,
//! and what differs: the connection id a client sees is the server's own thread id.

use std::process::Command;

use mysql_async::prelude::*;

use flexgate::metrics::Outcome;
use flexgate::registry::SYNTHETIC_BASE;

use crate::harness::*;

async fn server_mode(db: &MariaDb) -> RunningProxy {
    ProxyConfig::to(db).server_greeting().start(&db.certs).await
}

fn require_mysql_connector() {
    let ok = Command::new("python3").args(["-c", "import mysql.connector"]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "mysql-connector-python is not importable by python3; install it with: \
         python3 -m pip install mysql-connector-python"
    );
}

/// Logs in with mysql-connector-python (its pure-Python protocol implementation), verifying
/// flexgate's certificate against the test CA; prints the query's result and the client's TLS
/// version, or `ERR <errno> <msg>`.
async fn mysql_connector(port: u16, user: &str, schema: &str, certs: &Certs) -> String {
    require_mysql_connector();
    let script = format!(
        "import mysql.connector\n\
         try:\n\
         \x20   c = mysql.connector.connect(host='127.0.0.1', port={port}, user={user:?}, password={PASSWORD:?},\n\
         \x20       database={schema:?}, use_pure=True, ssl_ca={ca:?}, ssl_verify_cert=True)\n\
         \x20   cur = c.cursor(); cur.execute('SELECT CONCAT(CURRENT_USER(), \\' \\', DATABASE())')\n\
         \x20   print(cur.fetchone()[0], c._socket.sock.version())\n\
         \x20   c.close()\n\
         except mysql.connector.Error as e:\n\
         \x20   print('ERR', e.errno, e.msg)\n",
        ca = certs.ca.display().to_string(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let out = run(cmd).await;
    assert!(out.status.success(), "python failed:\n{}\n{script}", stderr(&out));
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_pymysql_and_mysql_async_log_in_over_tls() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = server_mode(db).await;

    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT CONCAT('via ', 'flexgate')"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "via flexgate");

    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT DATABASE()'); print(cur.fetchone()[0], c._sock.version()); c.close()";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.trim().starts_with(&format!("{schema} TLSv1.")), "{out}");

    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let v: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some(format!("{user}@%")));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));

    eventually("three quits", || proxy.metrics.outcome_total(Outcome::Quit) == 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_connector_python_logs_in_in_both_modes() {
    let db = mariadb();
    let (user, schema) = db.user();
    for (mode, proxy) in
        [("flexgate greeting", ProxyConfig::to(db).start(&db.certs).await), ("server greeting", server_mode(db).await)]
    {
        let out = mysql_connector(proxy.port(), &user, &schema, &db.certs).await;
        assert!(out.starts_with(&format!("{user}@% {schema} TLSv1.")), "{mode}: {out}");
        let ok = proxy.next_event(mode, |e| e.user.as_deref() == Some(user.as_str())).await;
        assert_eq!(ok.outcome, flexgate::events::LoginOutcome::Ok, "{mode}: {ok:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_gets_the_servers_1045() {
    crate::login::wrong_password_gets_1045(ProxyConfig::to(mariadb()).server_greeting()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_account_logs_in() {
    let db = mariadb();
    let user = unique("ed");
    db.root_sql(&format!("CREATE USER '{user}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}');"));
    let proxy = server_mode(db).await;
    // The server's default plugin first (the server switches to ed25519), then ed25519 from the
    // start, whose nonce the server sends as raw plugin data.
    for default_auth in [None, Some("--default-auth=client_ed25519")] {
        let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
        c.args(default_auth).args(["-e", "SELECT CURRENT_USER()"]);
        let o = run(c).await;
        assert!(o.status.success(), "{default_auth:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{user}@%"), "{default_auth:?}");
    }
    let mut c = cli(proxy.port(), &user, "wrong", &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(stderr(&o).contains("ERROR 1045 (28000)"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_client_gets_3159() {
    crate::tls::plaintext_gets_3159(ProxyConfig::to(mariadb()).server_greeting()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_of_32_mib_round_trips_across_16_mib_packets() {
    crate::data::blob_round_trips(ProxyConfig::to(mariadb()).server_greeting()).await;
}

/// The id from the greeting (mysql_async's `id()`, PyMySQL's `thread_id()`) against the
/// server's `CONNECTION_ID()`, for one mysql_async and one PyMySQL login through `proxy`.
async fn greeting_and_server_ids(proxy: &RunningProxy, user: &str, schema: &str, certs: &Certs) -> [(u64, u64); 2] {
    let mut conn = connect(proxy, user, schema, certs).await;
    let server: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap_or_else(|e| panic!("{e}"));
    let via_async = (u64::from(conn.id()), server.unwrap_or_else(|| panic!("no CONNECTION_ID()")));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT CONNECTION_ID()'); print(c.thread_id(), cur.fetchone()[0]); c.close()";
    let out = pymysql(proxy.port(), user, schema, PASSWORD, certs, body).await;
    let ids: Vec<u64> = out.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let [greeting, server] = ids[..] else { panic!("PyMySQL printed {out:?}") };
    [via_async, (greeting, server)]
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_id_is_the_servers_only_in_server_greeting_mode() {
    let db = mariadb();
    let (user, schema) = db.user();

    let proxy = server_mode(db).await;
    for (client, (greeting, server)) in
        ["mysql_async", "PyMySQL"].into_iter().zip(greeting_and_server_ids(&proxy, &user, &schema, &db.certs).await)
    {
        assert_eq!(greeting, server, "{client}: server-greeting mode relays the server's thread id");
        assert!(greeting < u64::from(SYNTHETIC_BASE), "{client}: {greeting}");
    }

    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    for (client, (greeting, server)) in
        ["mysql_async", "PyMySQL"].into_iter().zip(greeting_and_server_ids(&proxy, &user, &schema, &db.certs).await)
    {
        assert!(greeting >= u64::from(SYNTHETIC_BASE), "{client}: flexgate's own id is >= 2^31, got {greeting}");
        assert_ne!(greeting, server, "{client}: flexgate greeted with the server's id");
        assert!(server < u64::from(SYNTHETIC_BASE), "{client}: {server}");
    }
}
