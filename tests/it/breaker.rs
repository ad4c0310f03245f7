//! The key breaker against a real MariaDB with data-at-rest encryption, and its command and
//! HTTPS providers against a real program and a real HTTPS server.
//!
//! Checks run every 200 ms with a 1 s grace period, so a trip takes about 1.2 s and a
//! recovery (two good checks) about 0.4 s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::harness::*;

const KEY1: &str = "a7addd9adea9978fda19f21e6be987880e68ac92632ca052e5bb42b1a506939a";
const KEY2: &str = "49c16ac9cd0e9b4e6e2b5e04f3a1e7d3c1b2a3f4e5d6c7b8a9f0e1d2c3b4a596";
const KEY3: &str = "0c9f6e1f0b6a4a1d8e3c2b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e";

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("keyfile");
    std::fs::write(&path, format!("# file_key_management keys\n1;{KEY1}\n2;{KEY2}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// `[admin]` and `[key_guard]` with fast checks; `providers` are `[[key_guard.provider]]`s.
fn guarded(on_inaccessible: &str, providers: &str) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[key_guard]\ncheck_interval = \"200ms\"\ntimeout = \"500ms\"\n\
         grace = \"1s\"\nrecover_after = 2\non_inaccessible = \"{on_inaccessible}\"\n{providers}\n"
    )
}

fn file_provider(path: &Path, extra: &str) -> String {
    format!("[[key_guard.provider]]\nname = \"keyfile\"\nkind = \"file\"\npath = \"{}\"\n{extra}\n", path.display())
}

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap_or_else(|e| panic!("{e}"));
    let resp = http.get(format!("http://{admin}{path}")).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

async fn breaker(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get(admin, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["breaker"].clone()
}

async fn state(admin: SocketAddr) -> String {
    breaker(admin).await["state"].as_str().unwrap_or("?").to_owned()
}

async fn wait_state(admin: SocketAddr, want: &str) {
    eventually_async(&format!("key breaker {want}"), || async { state(admin).await == want }).await;
}

/// Connects and reads the first packet: the ERR flexgate sends in place of the greeting.
async fn refusal(proxy: &RunningProxy) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap_or_else(|e| panic!("{e}"));
    let (seq, payload) = read_packet(&mut s).await?;
    assert_eq!(seq, 0);
    err_of(&payload)
}

async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let (_, text) = get(admin, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

fn history(b: &serde_json::Value) -> Vec<String> {
    b["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{}>{}", t["from"].as_str().unwrap_or("?"), t["to"].as_str().unwrap_or("?")))
        .collect()
}

/// The whole story on a MariaDB whose table is encrypted with `file_key_management`: the key
/// file goes, MariaDB goes on serving from memory (the gap), flexgate trips after the grace
/// period and refuses new clients without touching the server, while an open session goes
/// on; a corrupt file keeps it tripped; the real key brings logins back; and a corrupt file
/// alone trips it again.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_mariadb_is_refused_while_its_key_is_gone_and_served_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = key_file(dir.path());
    let db = MariaDb::start_private(
        "flexgate-enc",
        &[
            "--plugin-load-add=file_key_management",
            &format!("--file-key-management-filename={}", keys.display()),
            "--file-key-management-encryption-algorithm=aes_ctr",
            "--innodb-encrypt-tables=ON",
        ],
    );
    let (user, schema) = db.user();
    db.root_sql(&format!(
        "CREATE TABLE {schema}.secrets (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB ENCRYPTED=YES ENCRYPTION_KEY_ID=2; \
         INSERT INTO {schema}.secrets VALUES (1, 'card 4111')"
    ));
    let scheme = db.root_sql(&format!(
        "SELECT ENCRYPTION_SCHEME, CURRENT_KEY_ID FROM information_schema.INNODB_TABLESPACES_ENCRYPTION \
         WHERE NAME = '{schema}/secrets'"
    ));
    assert_eq!(scheme.split_whitespace().collect::<Vec<_>>(), ["1", "2"], "the table is not encrypted with key 2");

    let providers = file_provider(&keys, "format = \"mariadb-file-key-management\"\nkey_ids = [1, 2]");
    let proxy = ProxyConfig::to(&db).extra(&guarded("refuse-new", &providers)).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    assert_eq!(state(admin).await, "available");
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let mut open = connect(&proxy, &user, &schema, &db.certs).await;
    let v: Option<String> = open.query_first("SELECT v FROM secrets").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.as_deref(), Some("card 4111"));

    std::fs::remove_file(&keys).unwrap_or_else(|e| panic!("{e}"));
    wait_state(admin, "inaccessible").await;
    let b = breaker(admin).await;
    // The first entry is the start: inaccessible (fail closed) until the first check passed.
    assert_eq!(history(&b), ["inaccessible>available", "available>degraded", "degraded>inaccessible"], "{b}");
    assert!(b["cause"].as_str().is_some_and(|c| c.contains("No such file")), "{b}");
    // MariaDB itself noticed nothing: it keeps serving the encrypted table from memory.
    assert!(db.root_sql(&format!("SELECT v FROM {schema}.secrets")).contains("card 4111"));

    let before = db.status("Connections");
    for _ in 0..3 {
        let (code, message) = refusal(&proxy).await.unwrap_or_else(|| panic!("no ERR"));
        assert_eq!(code, 3032, "{message}");
        assert!(
            message.contains("data-encryption key has been unavailable since") && message.contains("GMT"),
            "{message}"
        );
    }
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["-e", "SELECT 1"]);
    let o = run(c).await;
    assert!(stderr(&o).contains("3032"), "the CLI: {}", stderr(&o));
    // The refused clients never reached the server (the one connection is `status` itself).
    assert_eq!(db.status("Connections"), before + 1, "a refused client reached the server");
    let refused = proxy
        .next_event("a key_unavailable login event", |e| {
            matches!(e.outcome, flexgate::events::LoginOutcome::Refused { reason: "key_unavailable", code: 3032 })
        })
        .await;
    assert!(refused.user.is_none());

    // The open session goes on (refuse-new is the default).
    let v: Option<String> = open.query_first("SELECT v FROM secrets").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.as_deref(), Some("card 4111"));
    let (code, body) = get(admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("key: failing (inaccessible"), "{body}");
    assert_eq!(metric(admin, "flexgate_key_state{state=\"inaccessible\"}").await, 1.0);
    assert!(
        metric(admin, "flexgate_connections_refused_total{listener=\"test\",reason=\"key_unavailable\"}").await >= 4.0
    );
    assert_eq!(proxy.gate.refused_key.load(Ordering::Relaxed), 4);

    // A corrupt file is no key.
    std::fs::write(&keys, "1;not-hex\n").unwrap_or_else(|e| panic!("{e}"));
    eventually_async("the corrupt file is checked", || async {
        breaker(admin).await["cause"].as_str().is_some_and(|c| c.contains("invalid key"))
    })
    .await;
    assert_eq!(state(admin).await, "inaccessible");

    // The real key: two good checks, and logins succeed again.
    key_file(dir.path());
    wait_state(admin, "available").await;
    let b = breaker(admin).await;
    let last = &b["history"][3];
    assert_eq!(
        (last["to"].as_str(), last["cause"].as_str()),
        (Some("available"), Some("2 good key check(s) in a row"))
    );
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let mut again = connect(&proxy, &user, &schema, &db.certs).await;
    let v: Option<String> = again.query_first("SELECT v FROM secrets").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.as_deref(), Some("card 4111"));

    // Corruption alone trips it.
    std::fs::write(&keys, format!("2;{KEY2}\n")).unwrap_or_else(|e| panic!("{e}"));
    wait_state(admin, "inaccessible").await;
    assert!(breaker(admin).await["cause"].as_str().is_some_and(|c| c.contains("key id 1 is missing")));
    assert_eq!(refusal(&proxy).await.map(|r| r.0), Some(3032));
    assert_eq!(metric(admin, "flexgate_key_transitions_total{from=\"degraded\",to=\"inaccessible\"}").await, 2.0);
    open.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    again.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// `close-existing`: open sessions (mysql_async and PyMySQL) get ERR 3032 as the answer to
/// their next command, and are closed.
#[tokio::test(flavor = "multi_thread")]
async fn close_existing_ends_open_sessions_with_an_err() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = key_file(dir.path());
    let proxy = ProxyConfig::to(db).extra(&guarded("close-existing", &file_provider(&keys, ""))).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let one: Option<u8> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one, Some(1));

    let ready = dir.path().join("ready");
    let go = dir.path().join("go");
    let body = format!(
        "import os, time\n\
         c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={{'ca': ca}})\n\
         cur = c.cursor(); cur.execute('SELECT 1')\n\
         open({ready:?}, 'w').close()\n\
         while not os.path.exists({go:?}): time.sleep(0.05)\n\
         cur.execute('SELECT 2'); print('still open', cur.fetchone())",
        ready = ready.display().to_string(),
        go = go.display().to_string(),
    );
    let port = proxy.port();
    let (u, s) = (user.clone(), schema.clone());
    let py = tokio::spawn(async move { pymysql(port, &u, &s, PASSWORD, &db.certs, &body).await });
    eventually("PyMySQL logged in", || ready.exists()).await;

    std::fs::remove_file(&keys).unwrap_or_else(|e| panic!("{e}"));
    wait_state(admin, "inaccessible").await;
    std::fs::write(&go, "").unwrap_or_else(|e| panic!("{e}"));
    let out = py.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.starts_with("ERR 3032 flexgate closed this session"), "PyMySQL: {out}");
    assert!(out.contains("close-existing"), "{out}");

    let err = conn.query_first::<u8, _>("SELECT 1").await.err().unwrap_or_else(|| panic!("the session is still open"));
    let text = err.to_string();
    assert!(text.contains("3032") && text.contains("data-encryption key"), "mysql_async: {text}");
    eventually_async("two sessions counted as closed", || async {
        metric(admin, "flexgate_key_sessions_closed_total").await == 2.0
    })
    .await;
    eventually("closed_key_unavailable outcomes", || {
        proxy.metrics.outcome_total(flexgate::metrics::Outcome::ClosedKeyUnavailable) == 2
    })
    .await;
}

/// No check has passed at startup: flexgate serves nothing (fail closed, no grace period)
/// until the key appears and passes `recover_after` checks.
#[tokio::test(flavor = "multi_thread")]
async fn startup_without_the_key_is_inaccessible_until_it_appears() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = dir.path().join("keyfile");
    let proxy = ProxyConfig::to(db).extra(&guarded("refuse-new", &file_provider(&keys, ""))).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    // The first check ran before the listener opened: the very first client is refused.
    assert_eq!(refusal(&proxy).await.map(|r| r.0), Some(3032));
    let b = breaker(admin).await;
    assert_eq!(b["state"], "inaccessible", "{b}");
    assert!(b["providers"][0]["detail"].as_str().is_some_and(|d| d.contains("No such file")), "{b}");
    assert_eq!(get(admin, "/readyz").await.0, 503);

    key_file(dir.path());
    wait_state(admin, "available").await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let one: Option<u8> = conn.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one, Some(1));
    assert_eq!(get(admin, "/readyz").await.0, 200);
}

/// Rotation (new content in the same file) keeps the key available; with a pinned SHA-256
/// the same change trips the breaker.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_the_key_available_unless_its_digest_is_pinned() {
    let db = mariadb();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = key_file(dir.path());
    let pinned = {
        let o = std::process::Command::new("sha256sum").arg(&keys).output().unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_owned()
    };
    let fmt = "format = \"mariadb-file-key-management\"\nkey_ids = [1]";
    let free = ProxyConfig::to(db).extra(&guarded("refuse-new", &file_provider(&keys, fmt))).start(&db.certs).await;
    let pin = ProxyConfig::to(db)
        .extra(&guarded("refuse-new", &file_provider(&keys, &format!("sha256 = \"{pinned}\""))))
        .start(&db.certs)
        .await;
    let (a, p) = (free.admin.unwrap_or_else(|| panic!()), pin.admin.unwrap_or_else(|| panic!()));
    assert_eq!((state(a).await, state(p).await), ("available".into(), "available".into()));

    // Key 1 rotated to a new version: a new line for id 1, written in place.
    for key in [KEY3, KEY2, KEY1] {
        std::fs::write(&keys, format!("1;{key}\n2;{KEY2}\n")).unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(state(a).await, "available");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = breaker(a).await;
    assert_eq!(history(&b), ["inaccessible>available"], "rotation changed the state: {b}");
    assert!(b["providers"][0]["detail"].as_str().is_some_and(|d| d.contains("ids 1, 2")), "{b}");
    wait_state(p, "inaccessible").await;
    assert!(breaker(p).await["cause"].as_str().is_some_and(|c| c.contains("pinned")));
    assert_eq!(refusal(&pin).await.map(|r| r.0), Some(3032));
}

/// A `command` provider: the program's exit status decides, without a shell; its output is
/// shown in `/status`.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_provider_follows_the_programs_exit_status() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flag = dir.path().join("key-present");
    std::fs::write(&flag, "").unwrap_or_else(|e| panic!("{e}"));
    let script = dir.path().join("check-key.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ -e \"$1\" ]; then echo \"key $2 enabled\"; else echo \"key $2 disabled\" >&2; exit 4; fi\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let provider = format!(
        "[[key_guard.provider]]\nname = \"vault\"\nkind = \"command\"\ncommand = [\"{}\", \"{}\", \"db cmk; $(id)\"]\n",
        script.display(),
        flag.display()
    );
    let proxy = ProxyConfig::to(db).extra(&guarded("refuse-new", &provider)).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    let b = breaker(admin).await;
    assert_eq!(b["state"], "available", "{b}");
    // The argument reached the program as one word, unexpanded.
    assert_eq!(b["providers"][0]["detail"], "exit 0: key db cmk; $(id) enabled", "{b}");

    std::fs::remove_file(&flag).unwrap_or_else(|e| panic!("{e}"));
    wait_state(admin, "inaccessible").await;
    let b = breaker(admin).await;
    assert!(b["cause"].as_str().is_some_and(|c| c.contains("exited with 4") && c.contains("disabled")), "{b}");
    assert_eq!(refusal(&proxy).await.map(|r| r.0), Some(3032));
    assert!(metric(admin, "flexgate_key_checks_total{provider=\"vault\",result=\"failed\"}").await >= 1.0);

    std::fs::write(&flag, "").unwrap_or_else(|e| panic!("{e}"));
    wait_state(admin, "available").await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    conn.query_drop("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
}

/// How the stand-in key service answers.
const ENABLED: u8 = 0;
const DISABLED: u8 = 1;
const FORBIDDEN: u8 = 2;
const HANG: u8 = 3;

/// A local HTTPS key service with the test CA's certificate, answering like Azure Key Vault's
/// "get key" as `mode` says, and recording each request's first line and bearer token.
async fn key_service(certs: &Certs, mode: Arc<AtomicU8>, seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .unwrap_or_else(|e| panic!("{e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap_or_else(|e| panic!("{e}"));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("{e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, mode, seen) = (acceptor.clone(), mode.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                let line = text.lines().next().unwrap_or_default().to_owned();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
                    .unwrap_or("none")
                    .to_owned();
                seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("{line} | {auth}"));
                let (status, body) = match mode.load(Ordering::SeqCst) {
                    ENABLED => ("200 OK", r#"{"key":{"kid":"k"},"attributes":{"enabled":true}}"#),
                    DISABLED => ("200 OK", r#"{"key":{"kid":"k"},"attributes":{"enabled":false}}"#),
                    FORBIDDEN => ("403 Forbidden", r#"{"error":{"code":"Forbidden"}}"#),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// An `http` provider against a local HTTPS key service: enabled, disabled, 403 and a hang
/// past the timeout each decide the state, the bearer token is sent, and a hanging check
/// holds up neither new clients nor an open session.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_provider_follows_the_key_services_answer() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("kv-token");
    std::fs::write(&token, "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.test-token\n").unwrap_or_else(|e| panic!("{e}"));
    let mode = Arc::new(AtomicU8::new(ENABLED));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = key_service(&db.certs, mode.clone(), seen.clone()).await;
    let provider = format!(
        "[[key_guard.provider]]\nname = \"keyvault\"\nkind = \"http\"\n\
         url = \"https://localhost:{}/keys/db-cmk?api-version=7.4\"\nbearer_token_file = \"{}\"\nca = \"{}\"\n\
         timeout = \"300ms\"\nexpect = {{ pointer = \"/attributes/enabled\", equals = true }}\n",
        service.port(),
        token.display(),
        db.certs.ca.display()
    );
    let proxy = ProxyConfig::to(db).extra(&guarded("refuse-new", &provider)).start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    let b = breaker(admin).await;
    assert_eq!(b["state"], "available", "{b}");
    assert_eq!(b["providers"][0]["detail"], "HTTP 200 OK, /attributes/enabled = true", "{b}");
    let first = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[0].clone();
    assert_eq!(
        first,
        "GET /keys/db-cmk?api-version=7.4 HTTP/1.1 | Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.test-token"
    );
    let mut open = connect(&proxy, &user, &schema, &db.certs).await;

    for (m, cause) in [
        (DISABLED, "/attributes/enabled = false, expected true"),
        (FORBIDDEN, "HTTP 403 Forbidden"),
        (HANG, "no answer within 300ms"),
    ] {
        mode.store(m, Ordering::SeqCst);
        wait_state(admin, "inaccessible").await;
        let b = breaker(admin).await;
        assert!(b["cause"].as_str().is_some_and(|c| c.contains(cause)), "{cause}: {b}");
        // Neither the accept loop nor the open session waits for the check.
        let started = std::time::Instant::now();
        assert_eq!(refusal(&proxy).await.map(|r| r.0), Some(3032));
        open.query_drop("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
        mode.store(ENABLED, Ordering::SeqCst);
        wait_state(admin, "available").await;
        connect(&proxy, &user, &schema, &db.certs).await.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    }
    // The token never reaches /status or the metrics.
    let (_, status) = get(admin, "/status").await;
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(!status.contains("test-token") && !metrics.contains("test-token"));
}

/// Providers and settings reload with the rest of the config: adding a `[key_guard]` whose
/// key is missing refuses new clients; removing it admits them again.
#[tokio::test(flavor = "multi_thread")]
async fn key_guard_reloads_with_the_config() {
    let db = mariadb();
    let (user, schema) = db.user();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let admin_only = "[admin]\naddress = \"127.0.0.1:0\"\n";
    let config = ProxyConfig::to(db).extra(admin_only);
    let base = config.toml(&db.certs);
    let proxy = config.start(&db.certs).await;
    let admin = proxy.admin.unwrap_or_else(|| panic!("no admin"));
    assert_eq!(breaker(admin).await["state"], "disabled");

    let missing = dir.path().join("keyfile");
    let with_guard = base.replace(admin_only, &guarded("refuse-new", &file_provider(&missing, "")));
    let st = proxy.rewrite_config(&with_guard).await;
    assert!(st.last.is_ok(), "{st:?}");
    wait_state(admin, "inaccessible").await;
    assert_eq!(refusal(&proxy).await.map(|r| r.0), Some(3032));

    let st = proxy.rewrite_config(&base).await;
    assert!(st.last.is_ok(), "{st:?}");
    eventually_async("breaker disabled", || async { breaker(admin).await["state"] == "disabled" }).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    conn.query_drop("SELECT 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(admin, "/readyz").await.0, 200);
}
