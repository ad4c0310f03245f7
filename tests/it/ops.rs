//! Operations: the admin API (metrics parsed by the Prometheus project's own parser, probes,
//! status, the token), readiness, and the drain.

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::harness::*;

/// `[admin]` on a free loopback port; `extra` adds lines to the section.
fn admin_section(extra: &str) -> String {
    format!("[admin]\naddress = \"127.0.0.1:0\"\nbackend_retry = \"200ms\"\n{extra}\n")
}

async fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap_or_else(|e| panic!("{e}"));
    let mut req = http.get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (code, ctype, resp.text().await.unwrap_or_default())
}

/// The exposition parsed by `prometheus_client`'s strict OpenMetrics parser (the Prometheus
/// project's Python client), as `name{labels} value` lines with labels sorted.
async fn parse_openmetrics(text: &str) -> Vec<String> {
    require_python_module("prometheus_client", "apt-get install -y python3-prometheus-client");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    let mut py = std::process::Command::new("python3");
    py.arg("-c")
        .arg(
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             for fam in p(open(sys.argv[1]).read()):\n    for s in fam.samples:\n        \
             labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n        \
             print(f'{s.name}{{{labels}}} {s.value}')\n",
        )
        .arg(&file);
    let o = run(py).await;
    assert!(o.status.success(), "the OpenMetrics parser rejected the exposition: {}\n{text}", stderr(&o));
    stdout(&o).lines().map(str::to_owned).collect()
}

fn value(samples: &[String], prefix: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.starts_with(prefix))
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix}:\n{}", samples.join("\n")))
}

/// A login, a query and a refused client show in /metrics, which a real OpenMetrics parser
/// accepts; label values are bounded names, never users or addresses.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_valid_openmetrics_and_count_what_happened() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).extra(&admin_section("")).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let n: Option<u64> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, Some(1));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    // A plaintext client on a TLS-only listener: refused at login (3159).
    let o = run({
        let mut c = cli(proxy.port(), &user, "x", &db.certs);
        c.args(["--skip-ssl", "--skip-ssl-verify-server-cert", "-e", "SELECT 1"]);
        c
    })
    .await;
    assert!(stderr(&o).contains("3159"), "{}", stderr(&o));
    eventually("two sessions ended", || proxy.metrics.active() == 0 && proxy.metrics.accepted_total() == 2).await;

    let (code, ctype, text) = get(admin, "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let samples = parse_openmetrics(&text).await;
    let l = "listener=\"test\"";
    assert_eq!(value(&samples, &format!("flexgate_connections_accepted_total{{{l}}}")), 2.0);
    assert_eq!(value(&samples, &format!("flexgate_sessions_active{{{l}}}")), 0.0);
    assert_eq!(value(&samples, &format!("flexgate_sessions_ended_total{{{l},outcome=\"quit\"}}")), 1.0);
    assert_eq!(
        value(&samples, &format!("flexgate_sessions_ended_total{{{l},outcome=\"insecure_transport_refused\"}}")),
        1.0
    );
    assert_eq!(value(&samples, &format!("flexgate_handshake_duration_seconds_count{{{l}}}")), 1.0);
    assert!(value(&samples, "flexgate_backend_connect_duration_seconds_count{}") >= 1.0);
    assert!(value(&samples, &format!("flexgate_bytes_total{{direction=\"from_client\",{l}}}")) > 0.0);
    assert!(value(&samples, &format!("flexgate_bytes_total{{direction=\"to_client\",{l}}}")) > 0.0);
    let tls = samples.iter().find(|s| s.starts_with("flexgate_tls_handshakes_total{")).cloned().unwrap_or_default();
    assert!(tls.contains("version=\"TLSv1.") && tls.contains("cipher=\""), "{tls}");
    eventually_async("login events counted", || async {
        let samples = parse_openmetrics(&get(admin, "/metrics", None).await.2).await;
        samples.iter().any(|s| {
            s.starts_with("flexgate_logins_total{")
                && s.contains("kind=\"connect\"")
                && s.contains("outcome=\"ok\"")
                && s.contains("plugin=\"mysql_native_password\"")
        }) && samples.iter().any(|s| s.starts_with("flexgate_logins_total{") && s.contains("outcome=\"refused\""))
    })
    .await;
    let expiry = value(&samples, &format!("flexgate_tls_certificate_expiry_seconds{{{l}}}"));
    assert!(expiry > 86400.0, "the harness's certificate expires in {expiry}s");
    assert_eq!(value(&samples, "flexgate_ready{}"), 1.0);
    assert!(!text.contains(&user), "a user name appears in the metrics");
    assert!(!text.contains("127.0.0.1"), "an address appears in the metrics");
}

/// /metrics and /status need the token when one is configured; the probes never do.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_metrics_and_status_but_not_the_probes() {
    let db = mariadb();
    let token = "0123456789abcdef0123456789abcdef";
    let file = db.certs.dir.join(unique("token"));
    std::fs::write(&file, format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    let proxy = ProxyConfig::to(db)
        .extra(&admin_section(&format!("token_file = \"{}\"", file.display())))
        .start(&db.certs)
        .await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    for path in ["/metrics", "/status"] {
        assert_eq!(get(admin, path, None).await.0, 401, "{path} without a token");
        assert_eq!(get(admin, path, Some("0123456789abcdef-wrong-token-000")).await.0, 401, "{path} wrong token");
        assert_eq!(get(admin, path, Some(token)).await.0, 200, "{path} with the token");
    }
    assert_eq!(get(admin, "/healthz", None).await, (200, "text/plain; charset=utf-8".into(), "ok\n".into()));
    // A rotated token applies at once.
    std::fs::write(&file, "fedcba9876543210fedcba9876543210\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(admin, "/metrics", Some(token)).await.0, 401);
    assert_eq!(get(admin, "/metrics", Some("fedcba9876543210fedcba9876543210")).await.0, 200);
}

/// /status is JSON with the version, config generation and hash, listeners and their counts.
#[tokio::test(flavor = "multi_thread")]
async fn status_reports_config_listeners_and_sessions() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).extra(&admin_section("")).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    let conn = connect(&proxy, &user, &schema, &db.certs).await;
    let (code, ctype, body) = get(admin, "/status", None).await;
    assert_eq!((code, ctype.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["config"]["generation"], 1);
    assert_eq!(v["config"]["hash"].as_str().map(str::len), Some(64), "{body}");
    assert_eq!(v["ready"], true, "{body}");
    assert_eq!(v["backend"]["reachable"], true, "{body}");
    let l = &v["listeners"][0];
    assert_eq!(l["name"], "test");
    assert_eq!(l["address"], proxy.addr.to_string());
    assert_eq!(l["sessions_active"], 1, "{body}");
    assert!(l["certificate"]["expires_in_seconds"].as_f64().is_some_and(|s| s > 0.0), "{body}");
    assert_eq!(v["sessions"]["active"], 1);
    // A reload moves the generation and the last result.
    let st =
        proxy.rewrite_config(&std::fs::read_to_string(&proxy.config).unwrap_or_default().replace("10s", "9s")).await;
    assert!(st.last.is_ok(), "{:?}", st.last);
    let v: serde_json::Value = serde_json::from_str(&get(admin, "/status", None).await.2).unwrap_or_default();
    assert_eq!(v["config"]["generation"], 2);
    assert_eq!(v["config"]["last_reload"]["ok"], true);
    drop(conn);
}

/// /readyz fails, naming the condition, while the server cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_the_backend_is_unreachable() {
    let db = mariadb();
    let mut cfg = ProxyConfig::to(db).extra(&admin_section(""));
    cfg.backend = format!("127.0.0.1:{}", free_port());
    let proxy = cfg.start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    eventually_async("readyz 503", || async { get(admin, "/readyz", None).await.0 == 503 }).await;
    let (_, _, body) = get(admin, "/readyz", None).await;
    assert!(body.contains("backend: failing"), "{body}");
    assert_eq!(get(admin, "/healthz", None).await.0, 200, "alive while not ready");

    // The same against the real server is ready.
    let ok = ProxyConfig::to(db).extra(&admin_section("")).start(&db.certs).await;
    let a = ok.admin.unwrap_or_else(|| panic!("no admin address"));
    eventually_async("readyz 200", || async { get(a, "/readyz", None).await.0 == 200 }).await;
}

/// Any part of the proxy can hold the readiness latch (the key breaker does; see breaker.rs).
#[tokio::test(flavor = "multi_thread")]
async fn a_held_readiness_condition_flips_readyz() {
    let db = mariadb();
    let proxy = ProxyConfig::to(db).extra(&admin_section("")).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    eventually_async("readyz 200", || async { get(admin, "/readyz", None).await.0 == 200 }).await;
    let key = proxy.readiness.condition("held", false, "inaccessible since 10:00");
    let (code, _, body) = get(admin, "/readyz", None).await;
    assert_eq!(code, 503);
    assert!(body.contains("held: failing (inaccessible since 10:00)"), "{body}");
    key.set(true, "available");
    assert_eq!(get(admin, "/readyz", None).await.0, 200);
}

/// The drain: readiness fails at once, a query that is running finishes, a new client gets
/// ERR 1053, and serving ends once the last session has.
#[tokio::test(flavor = "multi_thread")]
async fn drain_finishes_running_queries_and_refuses_new_clients() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db)
        .extra(&format!("{}[shutdown]\ndrain_timeout = \"20s\"\n", admin_section("")))
        .start(&db.certs)
        .await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin address"));
    eventually_async("readyz 200", || async { get(admin, "/readyz", None).await.0 == 200 }).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let running = tokio::spawn(async move {
        let r: Result<Option<u64>, _> = conn.query_first("SELECT SLEEP(2)").await;
        (r, conn)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.stop.drain.cancel();
    eventually_async("readyz 503 while draining", || async { get(admin, "/readyz", None).await.0 == 503 }).await;
    assert!(get(admin, "/readyz", None).await.2.contains("draining: failing"));

    let mut c = cli(proxy.port(), &user, "x", &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    // The CLI reports an ERR before TLS as 2002 and quotes it: "1053 - flexgate is shutting down".
    assert!(stderr(&o).contains("1053 - flexgate is shutting down"), "{}", stderr(&o));

    let (r, mut conn) = running.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.unwrap_or_else(|e| panic!("the running query was cut: {e}")), Some(0));
    // The session may go on until it closes.
    let n: Option<u64> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, Some(1));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    // The last session gone, serving ends: the admin API closes.
    eventually_async("admin API closed", || async { tokio::net::TcpStream::connect(admin).await.is_err() }).await;
}
