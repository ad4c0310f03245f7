//! Client-facing TLS: version floor, negotiated version seen from the client, secure transport.

use flexgate::metrics::Outcome;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn tls12_and_tls13_clients_log_in_and_the_client_sees_the_version() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    for (v, flag, ctx_max) in
        [("TLSv1.2", "-tls1_2", "ssl.TLSVersion.TLSv1_2"), ("TLSv1.3", "-tls1_3", "ssl.TLSVersion.TLSv1_3")]
    {
        // openssl reads the negotiated protocol on the client's side.
        assert_eq!(openssl_version(proxy.port(), &[flag]).await.as_deref(), Some(v));
        // PyMySQL pinned to exactly this version logs in, queries, and reports the version.
        let body = format!(
            "ctx = ssl.create_default_context(cafile=ca)\nctx.minimum_version = ctx.maximum_version = {ctx_max}\n\
             c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl=ctx, autocommit=True)\n\
             cur = c.cursor(); cur.execute('SELECT 40 + 2'); print(cur.fetchone()[0], c._sock.version())"
        );
        let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, &body).await;
        assert_eq!(out.trim(), format!("42 {v}"));
        // The mariadb CLI too, with its --tls-version pin.
        let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
        c.arg(format!("--tls-version={v}")).args(["-e", "SELECT CONCAT('via ', 'flexgate')"]);
        let o = run(c).await;
        assert!(o.status.success(), "{v}: {}", stderr(&o));
        assert_eq!(stdout(&o), "via flexgate");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls11_is_refused_and_counted() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    // SECLEVEL=0 so that OpenSSL 3 really offers TLS 1.1.
    let v = openssl_version(proxy.port(), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
    assert_eq!(v, None, "TLS 1.1 was negotiated");
    eventually("tls_handshake_failures() == 1", || proxy.metrics.tls_handshake_failures() == 1).await;
    // A modern client is still served by the same listener.
    assert_eq!(openssl_version(proxy.port(), &["-tls1_3"]).await.as_deref(), Some("TLSv1.3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn min_version_13_refuses_a_tls12_only_client() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig { min_version: "1.3", ..ProxyConfig::to(db) }.start(&db.certs).await;
    assert_eq!(openssl_version(proxy.port(), &["-tls1_2"]).await, None);
    assert_eq!(openssl_version(proxy.port(), &["-tls1_3"]).await.as_deref(), Some("TLSv1.3"));
    let body = "ctx = ssl.create_default_context(cafile=ca)\nctx.maximum_version = ssl.TLSVersion.TLSv1_2\n\
                try:\n    pymysql.connect(host=host, port=port, user=user, password=pw, ssl=ctx)\n    print('connected')\n\
                except pymysql.err.OperationalError as e:\n    print('refused', e.args[0])";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert!(out.starts_with("refused"), "{out}");
    eventually("two TLS failures", || proxy.metrics.tls_handshake_failures() >= 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_client_gets_3159_by_default() {
    plaintext_gets_3159(ProxyConfig::to(mariadb())).await;
}

/// Plaintext clients get 3159 before anything reaches the server; also run in server-greeting mode.
pub(crate) async fn plaintext_gets_3159(cfg: ProxyConfig) {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = cfg.start(&db.certs).await;
    let body =
        "c = pymysql.connect(host=host, port=port, user=user, password=pw, ssl_disabled=True)\nprint('connected')";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(
        out.trim(),
        "ERR 3159 Connections using insecure transport are prohibited while --require_secure_transport=ON."
    );
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["--skip-ssl", "--skip-ssl-verify-server-cert", "-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ERROR 3159 (HY000)"), "{}", stderr(&o));
    // Nothing of the client's reached the server: the user never logged in.
    eventually("insecure_transport_refused == 2", || {
        proxy.metrics.outcome_total(Outcome::InsecureTransportRefused) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_client_is_served_when_allowed() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig { require_secure_transport: false, ..ProxyConfig::to(db) }.start(&db.certs).await;
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl_disabled=True)\n\
                cur = c.cursor(); cur.execute('SELECT DATABASE()'); print(cur.fetchone()[0])";
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), schema);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_certificate_tls_is_not_offered() {
    let db = mariadb();
    let (user, _) = db.user();
    let proxy =
        ProxyConfig { require_secure_transport: false, tls: false, ..ProxyConfig::to(db) }.start(&db.certs).await;
    // A client that insists on a verified TLS connection must be told TLS is unavailable.
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(!o.status.success(), "connected over TLS although none is configured");
    // And plaintext works.
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["--skip-ssl", "--skip-ssl-verify-server-cert", "-e", "SELECT 7"]);
    let o = run(c).await;
    assert_eq!(stdout(&o), "7", "{}", stderr(&o));
}
