//! The auth exchange is relayed: the server decides, and its answers reach the client.

use flexgate::metrics::Outcome;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_gets_the_servers_1045() {
    wrong_password_gets_1045(ProxyConfig::to(mariadb())).await;
}

/// The server's 1045 reaches every client; also run in server-greeting mode.
pub(crate) async fn wrong_password_gets_1045(cfg: ProxyConfig) {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = cfg.start(&db.certs).await;

    let mut c = cli(proxy.port(), &user, "wrong-password", &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(stderr(&o).contains(&format!("ERROR 1045 (28000): Access denied for user '{user}'@")), "{}", stderr(&o));

    let body = "pymysql.connect(host=host, port=port, user=user, password='nope', ssl={'ca': ca})";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.starts_with("ERR 1045 Access denied"), "{out}");

    let err = mysql_async::Conn::new(async_opts(proxy.port(), &user, &schema, "bad", &db.certs)).await.err();
    match err {
        Some(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045),
        other => panic!("expected a server error 1045, got {other:?}"),
    }
    eventually("auth_failed == 3", || proxy.metrics.outcome_total(Outcome::AuthFailed) == 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_switch_to_ed25519_is_relayed() {
    let db = mariadb();
    let user = unique("ed");
    db.root_sql(&format!("CREATE USER '{user}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}');"));
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT CURRENT_USER()"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&user));
    // Starting with ed25519 makes MariaDB send its 32-byte nonce as raw plugin data, with no
    // 0x01 marker; several logins cover nonces whose first byte looks like a packet type.
    for _ in 0..8 {
        let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
        c.args(["--default-auth=client_ed25519", "-e", "SELECT 1"]);
        let o = run(c).await;
        assert_eq!(stdout(&o), "1", "{}", stderr(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_listeners_serve_at_once() {
    let db = mariadb();
    let (user, _) = db.user();
    let mut text = ProxyConfig::to(db).toml(&db.certs);
    text.push_str("[[listener]]\nname = \"private\"\naddress = \"127.0.0.1:0\"\nhandshake_timeout = \"5s\"\n");
    text.push_str(LOOPBACK);
    let cfg = flexgate::config::Config::parse(&text, &db.certs.dir.join("two.toml")).unwrap_or_else(|e| panic!("{e}"));
    let bound = flexgate::server::Proxy::build(&cfg)
        .unwrap_or_else(|e| panic!("{e}"))
        .bind()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addrs = bound.local_addrs();
    assert_eq!(addrs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["test", "private"]);
    let stop = flexgate::server::Stop::default();
    tokio::spawn(bound.serve(stop.clone()));
    for (name, addr) in &addrs {
        let mut c = cli(addr.port(), &user, PASSWORD, &db.certs);
        c.args(["-e", "SELECT 1"]);
        let o = run(c).await;
        assert_eq!(stdout(&o), "1", "listener {name}: {}", stderr(&o));
    }
    stop.now.cancel();
    stop.drain.cancel();
}

/// The server's failed-login accounting sees exactly what the client did: one failure for a
/// wrong password, none for a right one. (Empty auth data under the account's real plugin
/// would be a failed login of its own; flexgate's forced switch never sends that.)
#[tokio::test(flavor = "multi_thread")]
async fn the_server_counts_one_failure_per_wrong_password_and_none_per_login() {
    // A private server, so that other tests' logins do not move its counters.
    let db = MariaDb::start_private("flexgate-accounting", &[]);
    db.root_sql("INSTALL SONAME 'auth_ed25519'");
    let (native, schema) = db.user();
    let ed = unique("ed");
    db.root_sql(&format!("CREATE USER '{ed}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}');"));
    let proxy = ProxyConfig::to(&db).start(&db.certs).await;
    proxy.profile_learned().await;
    for user in [&native, &ed] {
        let before = db.status("Access_denied_errors");
        let mut c = cli(proxy.port(), user, PASSWORD, &db.certs);
        c.args(["-e", "SELECT 1"]);
        assert_eq!(stdout(&run(c).await), "1");
        let ok = mysql_async::Conn::new(async_opts(proxy.port(), user, "", PASSWORD, &db.certs)).await;
        assert!(ok.is_ok(), "{user}: {:?}", ok.err());
        if let Ok(conn) = ok {
            conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(db.status("Access_denied_errors"), before, "{user}: a correct login was counted as a failure");
        let mut c = cli(proxy.port(), user, "wrong", &db.certs);
        c.args(["-e", "SELECT 1"]);
        assert!(stderr(&run(c).await).contains("ERROR 1045"));
        assert_eq!(db.status("Access_denied_errors"), before + 1, "{user}: one wrong password, one failure");
    }
    let _ = schema;
}

/// A server that refuses the connection before greeting (here: too many connections) has its
/// ERR relayed to a client that flexgate has already greeted, at the client's sequence id.
#[tokio::test(flavor = "multi_thread")]
async fn an_err_instead_of_the_servers_greeting_reaches_the_client() {
    let db = MariaDb::start_private("flexgate-1040", &["--max-connections=10"]); // MariaDB's minimum
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(&db).start(&db.certs).await;
    proxy.profile_learned().await;
    let direct = |_: usize| {
        let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(db.port)
            .user(Some(user.clone()))
            .pass(Some(PASSWORD))
            .db_name(Some(schema.clone()))
            .prefer_socket(false)
            .into();
        mysql_async::Conn::new(opts)
    };
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(direct(i).await.unwrap_or_else(|e| panic!("direct connection {i}: {e}")));
    }
    // MariaDB keeps one connection beyond max_connections for SUPER; root takes it, and only
    // then does the server refuse before greeting.
    let root: mysql_async::Opts =
        mysql_async::OptsBuilder::default().socket(Some(db.socket.display().to_string())).user(Some("root")).into();
    held.push(mysql_async::Conn::new(root).await.unwrap_or_else(|e| panic!("root over the socket: {e}")));
    // Through flexgate, over TLS: the ERR arrives after the SSLRequest and the response.
    match mysql_async::Conn::new(async_opts(proxy.port(), &user, &schema, PASSWORD, &db.certs)).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1040, "{e:?}");
            assert_eq!(e.state, "08004");
        }
        other => panic!("expected ERR 1040, got {:?}", other.map(|_| "a connection")),
    }
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(stderr(&o).contains("ERROR 1040"), "{}", stderr(&o));
    eventually("backend_refused == 2", || proxy.metrics.outcome_total(flexgate::metrics::Outcome::BackendRefused) == 2)
        .await;
    for c in held {
        c.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
