//! Network access: allow, deny and the default deny from different source addresses (all of
//! 127.0.0.0/8 is loopback), IPv6 and dual-stack, hostnames, IP-set files, connection limits,
//! per-listener certificates and Unix-socket listeners. Real MariaDB, real clients.

use std::net::SocketAddr;

use mysql_async::prelude::Queryable;

use crate::harness::*;

fn status(db: &MariaDb, name: &str) -> u64 {
    tokio::task::block_in_place(|| db.status(name))
}

/// A PyMySQL login from `src` that runs `SELECT 1`; its output is `1` or `ERR <code> <msg>`.
async fn login_from(src: &str, port: u16, user: &str, schema: &str, certs: &Certs) -> String {
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, \
                ssl={'ca': ca}, bind_address=src)\n\
                cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0])";
    pymysql_from(src, port, user, schema, PASSWORD, certs, body).await.trim().to_owned()
}

fn refused_host(r: Result<(), (u16, String)>, host: &str) {
    assert_eq!(r, Err((1130, format!("Host '{host}' is not allowed to connect to this MySQL server"))));
}

/// Allow, deny (which wins) and the default deny, each from its own address: a refused
/// client gets ERR 1130 in place of the greeting and the server sees no connection at all.
#[tokio::test(flavor = "multi_thread")]
async fn allow_deny_and_default_deny_refuse_before_the_server() {
    let db = MariaDb::start_private("flexgate-fw-counts", &[]);
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(&db)
        .listener("allow = [\"127.0.0.1\", \"127.0.0.2\", \"127.0.0.16/28\"]\ndeny = [\"127.0.0.20\"]\n")
        .start(&db.certs)
        .await;
    proxy.profile_learned().await;
    let before = status(&db, "Connections");
    refused_host(first_packet_from("127.0.0.3", proxy.addr).await, "127.0.0.3");
    refused_host(first_packet_from("127.0.0.20", proxy.addr).await, "127.0.0.20");
    // A real client sees the same refusal.
    let out = login_from("127.0.0.4", proxy.port(), &user, &schema, &db.certs).await;
    assert!(out.starts_with("ERR 1130 Host '127.0.0.4' is not allowed"), "{out}");
    // Only this status query itself reached the server.
    assert_eq!(status(&db, "Connections"), before + 1, "a refused client reached the server");
    assert_eq!(proxy.gate.refused_firewall.load(std::sync::atomic::Ordering::Relaxed), 3);

    for allowed in ["127.0.0.1", "127.0.0.2", "127.0.0.17"] {
        assert_eq!(login_from(allowed, proxy.port(), &user, &schema, &db.certs).await, "1", "from {allowed}");
    }
    let mut c = connect(&proxy, &user, &schema, &db.certs).await;
    let v: Option<i64> = c.query_first("SELECT 6 * 7").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, Some(42));
}

/// A listener without allow entries refuses everyone, loopback included.
#[tokio::test(flavor = "multi_thread")]
async fn no_allow_entries_refuse_everyone() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db).listener("").start(&db.certs).await;
    refused_host(first_packet_from("127.0.0.1", proxy.addr).await, "127.0.0.1");
}

/// IPv6 `::1`, and IPv4 clients on a dual-stack `[::]` listener: they arrive as
/// `::ffff:a.b.c.d` and are matched (and named in the refusal) as IPv4.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_and_v4_rules_on_a_dual_stack_listener() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig { address: "[::]:0".into(), ..ProxyConfig::to(db) }
        .listener("allow = [\"127.0.0.1\", \"::1\"]\ndeny = [\"127.0.0.9\"]\n")
        .start(&db.certs)
        .await;
    let port = proxy.port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first_packet_from("127.0.0.1", v4).await, Ok(()));
    assert_eq!(first_packet_from("::1", v6).await, Ok(()));
    refused_host(first_packet_from("127.0.0.2", v4).await, "127.0.0.2");
    // The deny on the v4 form holds for the mapped form that the socket reports.
    refused_host(first_packet_from("127.0.0.9", v4).await, "127.0.0.9");
    assert_eq!(login_from("127.0.0.1", port, &user, &schema, &db.certs).await, "1");
}

/// A hostname entry allows what it resolves to, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_allows_its_addresses() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db).listener("allow = [\"localhost\"]\n").start(&db.certs).await;
    assert_eq!(first_packet_from("127.0.0.1", proxy.addr).await, Ok(()));
    refused_host(first_packet_from("127.0.0.2", proxy.addr).await, "127.0.0.2");
}

const SERVICE_TAGS: &str = r#"{
  "changeNumber": 7, "cloud": "Public",
  "values": [
    { "name": "AzureCloud", "id": "AzureCloud",
      "properties": { "changeNumber": 3, "region": "", "regionId": 0, "platform": "Azure", "systemService": "",
        "addressPrefixes": ["127.0.0.3/32", "2001:db8::/32"], "networkFeatures": ["API", "NSG"] } },
    { "name": "Storage", "id": "Storage",
      "properties": { "changeNumber": 1, "region": "", "regionId": 0, "platform": "Azure", "systemService": "AzureStorage",
        "addressPrefixes": ["127.0.0.4/32"], "networkFeatures": ["API"] } }
  ]
}"#;

/// Named IP sets from a CIDR-list file and from a Service Tags file (only the tags named).
#[tokio::test(flavor = "multi_thread")]
async fn ip_sets_from_both_formats() {
    let db = mariadb();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let list = dir.path().join("list.txt");
    let tags = dir.path().join("ServiceTags_Public.json");
    std::fs::write(&list, "# partners\n127.0.0.2\n\n127.0.0.16/30 ; lab\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&tags, SERVICE_TAGS).unwrap_or_else(|e| panic!("{e}"));
    let extra = format!(
        "[ipsets.partners]\nfile = \"{}\"\nformat = \"cidr-list\"\n\
         [ipsets.azure-cloud]\nfile = \"{}\"\nformat = \"azure-service-tags\"\ntags = [\"AzureCloud\"]\n",
        list.display(),
        tags.display()
    );
    let proxy = ProxyConfig::to(db)
        .listener("allow = [\"@partners\", \"@azure-cloud\"]\n")
        .extra(&extra)
        .start(&db.certs)
        .await;
    for ok in ["127.0.0.2", "127.0.0.3", "127.0.0.17"] {
        assert_eq!(first_packet_from(ok, proxy.addr).await, Ok(()), "from {ok}");
    }
    // Storage is in the file but was not asked for.
    for no in ["127.0.0.1", "127.0.0.4", "127.0.0.20"] {
        refused_host(first_packet_from(no, proxy.addr).await, no);
    }
}

fn limit_err(out: &str, key: &str) {
    assert!(out.starts_with("ERR 1040 Too many connections"), "{out}");
    assert!(out.contains(key), "{out} does not name {key}");
}

async fn mysql_err(r: Result<mysql_async::Conn, mysql_async::Error>) -> (u16, String) {
    match r {
        Err(mysql_async::Error::Server(e)) => (e.code, e.message),
        Err(e) => panic!("not a server error: {e}"),
        Ok(_) => panic!("connected past a limit"),
    }
}

/// `max_connections` counts the listener's open connections; one slot frees on disconnect.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_trips_and_frees() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).listener(&format!("{LOOPBACK}max_connections = 2\n")).start(&db.certs).await;
    let opts = || async_opts(proxy.port(), &user, &schema, PASSWORD, &db.certs);
    let a = mysql_async::Conn::new(opts()).await.unwrap_or_else(|e| panic!("{e}"));
    let _b = mysql_async::Conn::new(opts()).await.unwrap_or_else(|e| panic!("{e}"));
    let (code, msg) = mysql_err(mysql_async::Conn::new(opts()).await).await;
    assert_eq!(code, 1040);
    assert!(msg.contains("max_connections"), "{msg}");
    a.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    eventually_async("a slot freed after a disconnect", || async { mysql_async::Conn::new(opts()).await.is_ok() })
        .await;
}

/// `max_connections_per_ip` counts one address's connections, logged in or not; another
/// address is not affected.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_per_ip_trips_and_frees() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).listener(&format!("{LOOPBACK}max_connections_per_ip = 1\n")).start(&db.certs).await;
    let opts = || async_opts(proxy.port(), &user, &schema, PASSWORD, &db.certs);
    let held = mysql_async::Conn::new(opts()).await.unwrap_or_else(|e| panic!("{e}"));
    limit_err(&login_from("127.0.0.1", proxy.port(), &user, &schema, &db.certs).await, "max_connections_per_ip");
    assert_eq!(login_from("127.0.0.2", proxy.port(), &user, &schema, &db.certs).await, "1");
    held.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    eventually_async("the address's slot freed", || async {
        login_from("127.0.0.1", proxy.port(), &user, &schema, &db.certs).await == "1"
    })
    .await;
}

/// `connect_rate_per_ip` is a token bucket per address: a burst of N, then N per period.
#[tokio::test(flavor = "multi_thread")]
async fn connect_rate_per_ip_trips_and_refills() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy =
        ProxyConfig::to(db).listener(&format!("{LOOPBACK}connect_rate_per_ip = \"2/s\"\n")).start(&db.certs).await;
    let port = proxy.port();
    let mut outs = Vec::new();
    for _ in 0..3 {
        outs.push(login_from("127.0.0.1", port, &user, &schema, &db.certs).await);
    }
    // Python's start-up takes far less than the half second a token takes to come back only
    // on an idle machine, so at least the burst must pass and something must be refused
    // within a tight loop of raw connections.
    assert_eq!(&outs[..2], ["1", "1"], "the burst of 2 passes: {outs:?}");
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = first_packet_from("127.0.0.1", proxy.addr).await {
            refused = Some(e);
            break;
        }
    }
    let (code, msg) = refused.unwrap_or_else(|| panic!("5 connections within the bucket's refill were all accepted"));
    assert_eq!(code, 1040);
    assert!(msg.contains("connect_rate_per_ip"), "{msg}");
    assert_eq!(first_packet_from("127.0.0.2", proxy.addr).await, Ok(()), "another address has its own bucket");
    eventually_async("the bucket refilled", || async {
        login_from("127.0.0.1", port, &user, &schema, &db.certs).await == "1"
    })
    .await;
}

/// Silent sockets from one address beyond `max_preauth_per_ip` are refused with 1040, while a
/// client from another address logs in; the slots free when the sockets close.
#[tokio::test(flavor = "multi_thread")]
async fn preauth_slots_per_address() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig { handshake_timeout: "30s", ..ProxyConfig::to(db) }
        .listener(&format!("{LOOPBACK}max_preauth_per_ip = 4\n"))
        .start(&db.certs)
        .await;
    let src = "127.0.0.5".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(src, proxy.addr).await;
        let (_, p) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed"));
        assert!(err_of(&p).is_none(), "greeted");
        silent.push(s);
    }
    for _ in 0..3 {
        let e =
            first_packet_from("127.0.0.5", proxy.addr).await.err().unwrap_or_else(|| panic!("greeted past the limit"));
        assert_eq!(e.0, 1040);
        assert!(e.1.contains("max_preauth_per_ip"), "{}", e.1);
    }
    assert_eq!(login_from("127.0.0.6", proxy.port(), &user, &schema, &db.certs).await, "1");
    drop(silent);
    eventually_async("the slots freed", || async { first_packet_from("127.0.0.5", proxy.addr).await.is_ok() }).await;
}

/// The certificate's subject as `openssl s_client -starttls mysql` prints it.
async fn served_subject(port: u16) -> String {
    require_tool("openssl", "apt-get install -y openssl");
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-starttls", "mysql"])
        .stdin(std::process::Stdio::null());
    let out = run(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no subject in s_client output:\n{text}\n{}", stderr(&out)))
}

/// A listener with its own `[listener.tls]` presents its certificate; another listener
/// presents the default one.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_presents_its_own_certificate() {
    let db = mariadb();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let own = make_certs_named(dir.path(), "orders.db.internal");
    let extra = format!(
        "[[listener]]\nname = \"orders\"\naddress = \"127.0.0.1:0\"\n{LOOPBACK}\
         [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nmin_version = \"1.3\"\n",
        own.cert.display(),
        own.key.display()
    );
    let proxy = ProxyConfig::to(db).extra(&extra).start(&db.certs).await;
    let orders =
        proxy.addrs.iter().find(|(n, _)| n == "orders").map(|(_, a)| *a).unwrap_or_else(|| panic!("no orders"));
    assert!(served_subject(orders.port()).await.contains("orders.db.internal"));
    assert!(served_subject(proxy.port()).await.contains("CN = localhost"));
    // Its own floor, too.
    assert_eq!(openssl_version(orders.port(), &["-tls1_2"]).await, None);
    assert_eq!(openssl_version(proxy.port(), &["-tls1_2"]).await.as_deref(), Some("TLSv1.2"));
}

/// A Unix-socket listener: its file mode is the access control, IP rules do not apply, and
/// the client counts as a secure transport (no TLS needed where it is required).
#[tokio::test(flavor = "multi_thread")]
async fn a_unix_socket_listener_is_local_and_secure() {
    use std::os::unix::fs::PermissionsExt;
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sock = dir.path().join("flexgate.sock");
    let extra =
        format!("[[listener]]\nname = \"local\"\naddress = \"unix:{}\"\nsocket_mode = \"0600\"\n", sock.display());
    let proxy = ProxyConfig::to(db).extra(&extra).start(&db.certs).await;
    assert_eq!(proxy.listener_addr("local"), format!("unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock).unwrap_or_else(|e| panic!("{e}")).permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    require_tool("mariadb", "apt-get install -y mariadb-client");
    let mut c = std::process::Command::new("mariadb");
    c.args(["--no-defaults", "--protocol=socket", "--skip-ssl", "-N", "-B"])
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("-u{user}"))
        .arg(format!("-p{PASSWORD}"))
        .arg(&schema)
        .args(["-e", "SELECT 40 + 2"]);
    let o = run(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "42");
    let e = proxy.next_event("unix login", |e| e.listener.as_ref() == "local").await;
    assert_eq!(e.client, flexgate::events::ClientAddr::Unix);
    assert_eq!(e.transport.tls_version, None);
    drop(proxy);
    eventually("socket file removed on shutdown", || !sock.exists()).await;
}
