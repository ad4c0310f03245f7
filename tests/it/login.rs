//! The auth exchange is relayed: the server decides, and its answers reach the client.

use flexgate::metrics::Outcome;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_gets_the_servers_1045() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;

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
    let cfg = flexgate::config::Config::parse(&text, &db.certs.dir.join("two.toml")).unwrap_or_else(|e| panic!("{e}"));
    let bound = flexgate::server::Proxy::build(&cfg)
        .unwrap_or_else(|e| panic!("{e}"))
        .bind()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addrs = bound.local_addrs();
    assert_eq!(addrs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["test", "private"]);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(bound.serve(stop.clone(), std::time::Duration::from_secs(1)));
    for (name, addr) in &addrs {
        let mut c = cli(addr.port(), &user, PASSWORD, &db.certs);
        c.args(["-e", "SELECT 1"]);
        let o = run(c).await;
        assert_eq!(stdout(&o), "1", "listener {name}: {}", stderr(&o));
    }
    stop.cancel();
}
