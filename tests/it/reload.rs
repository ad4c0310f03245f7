//! Hot reload: rules, limits, certificates and listeners swap for new connections while
//! connected clients keep what they started with; a broken config is rejected as a whole.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::harness::*;

/// The harness's config text for `proxy` with the listener lines replaced, and the TLS files
/// pointed at `certs`.
fn config_with(base: &ProxyConfig, certs: &Certs, listener: &str, extra: &str) -> String {
    ProxyConfig {
        backend: base.backend.clone(),
        listener: listener.into(),
        extra: extra.into(),
        address: base.address.clone(),
        ..ProxyConfig::to(mariadb())
    }
    .toml(certs)
}

async fn login_from(src: &str, port: u16, user: &str, schema: &str, ca: &Certs) -> String {
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, \
                ssl={'ca': ca}, bind_address=src)\n\
                cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0])";
    pymysql_from(src, port, user, schema, PASSWORD, ca, body).await.trim().to_owned()
}

/// With a client mid-query: rotate the certificate in place, then change the allow-list. The
/// client's query and session go on; new clients get the new certificate and rules; a broken
/// config is rejected and the running one keeps serving; counters carry over.
#[tokio::test(flavor = "multi_thread")]
async fn rules_and_certificate_swap_for_new_clients_only() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = make_certs_named(dir.path(), "first.db.internal");
    let base = ProxyConfig::to(db).listener("allow = [\"127.0.0.1\"]\n");
    let proxy = ProxyConfig { listener: base.listener.clone(), backend: base.backend.clone(), ..ProxyConfig::to(db) }
        .start(&first)
        .await;
    let port = proxy.port();

    // A client from before the reloads, with a query running through them.
    let mut old = mysql_async::Conn::new(async_opts(port, &user, &schema, PASSWORD, &first))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let running = tokio::spawn(async move {
        let v: Option<(i64, i64)> = old.query_first("SELECT SLEEP(3), 7").await.unwrap_or_else(|e| panic!("{e}"));
        (old, v)
    });
    refused_host_from(&proxy, "127.0.0.2").await;

    // Rotation in place, as cert-manager or the kubelet do: new CA, new key, same paths.
    let staging = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let second = make_certs_named(staging.path(), "second.db.internal");
    let mut rx = proxy.reloader.status();
    let before = rx.borrow_and_update().attempts;
    for (from, to) in [(&second.key, &first.key), (&second.cert, &first.cert)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("{e}"));
    }
    let st = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            rx.changed().await.unwrap_or_else(|e| panic!("{e}"));
            let st = rx.borrow_and_update().clone();
            // The key and the certificate may land in two reloads; wait for the pair.
            if st.attempts > before && st.last.is_ok() && served_ca_is(&second, port).await {
                return st;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the rotated certificate was not picked up"));
    assert!(st.generation >= 2, "{st:?}");
    assert!(!served_ca_is(&first, port).await, "the old certificate is still served");

    // New rules: 127.0.0.1 out, 127.0.0.2 in.
    let text = config_with(&base, &first, "allow = [\"127.0.0.2\"]\n", "");
    let st = proxy.rewrite_config(&text).await;
    let changes = st.last.clone().unwrap_or_else(|e| panic!("reload rejected: {e}"));
    assert!(changes.contains("~listener test (rules)"), "{changes}");
    refused_host_from(&proxy, "127.0.0.1").await;
    assert_eq!(login_from("127.0.0.2", port, &user, &schema, &second).await, "1");
    // The old CA no longer verifies the new certificate.
    let out = login_from("127.0.0.2", port, &user, &schema, &first).await;
    assert!(!out.starts_with('1'), "the old certificate is still served: {out}");

    // The client from before: its query finished, and it goes on under its own snapshot.
    let (mut old, v) = running.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some((0, 7)));
    let v: Option<i64> = old.query_first("SELECT 8").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some(8));

    // A broken config is rejected as a whole, naming the key; the running one stays.
    let generation = st.generation;
    let refused_before = proxy.gate.refused();
    let broken = config_with(&base, &first, "allow = [\"127.0.0.2\", \"not an address!\"]\n", "");
    let st = proxy.rewrite_config(&broken).await;
    let err = st.last.clone().err().unwrap_or_else(|| panic!("a broken config was accepted: {st:?}"));
    assert!(err.contains("listener[0].allow[1]"), "{err}");
    assert_eq!(st.generation, generation);
    assert_eq!(login_from("127.0.0.2", port, &user, &schema, &second).await, "1");
    refused_host_from(&proxy, "127.0.0.1").await;
    assert_eq!(proxy.gate.refused(), refused_before + 1, "counters carry over reloads");
    old.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Whether a TLS client trusting only `ca` can connect (the served certificate chains to it).
async fn served_ca_is(ca: &Certs, port: u16) -> bool {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-starttls", "mysql", "-verify_return_error"])
        .arg("-CAfile")
        .arg(&ca.ca)
        .stdin(std::process::Stdio::null());
    let out = run(cmd).await;
    String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)")
}

async fn refused_host_from(proxy: &RunningProxy, src: &str) {
    let r = first_packet_from(src, proxy.addr).await;
    assert_eq!(r, Err((1130, format!("Host '{src}' is not allowed to connect to this MySQL server"))));
}

/// Listeners added on reload start accepting; removed ones stop, and their sessions go on.
#[tokio::test(flavor = "multi_thread")]
async fn listeners_come_and_go_on_reload() {
    let db = mariadb();
    let (user, schema) = db.user();
    let base = ProxyConfig::to(db);
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let added = format!("[[listener]]\nname = \"second\"\naddress = \"127.0.0.1:0\"\n{LOOPBACK}");
    let st = proxy.rewrite_config(&config_with(&base, &db.certs, LOOPBACK, &added)).await;
    assert!(st.last.as_ref().is_ok_and(|c| c.contains("+listener second")), "{st:?}");
    let second: std::net::SocketAddr =
        proxy.listener_addr("second").parse().unwrap_or_else(|e| panic!("second's address: {e}"));
    let mut held = mysql_async::Conn::new(async_opts(second.port(), &user, &schema, PASSWORD, &db.certs))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = proxy.rewrite_config(&config_with(&base, &db.certs, LOOPBACK, "")).await;
    assert!(st.last.as_ref().is_ok_and(|c| c.contains("-listener second")), "{st:?}");
    eventually_async("second stops accepting", || async { tokio::net::TcpStream::connect(second).await.is_err() })
        .await;
    let v: Option<i64> = held.query_first("SELECT 5").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some(5), "a session of a removed listener goes on");
    assert_eq!(first_packet_from("127.0.0.1", proxy.addr).await, Ok(()), "the other listener is untouched");
}
