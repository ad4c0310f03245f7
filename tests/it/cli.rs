//! The `flexgate` binary: version, check-config over every example config, and refusals that
//! name the key.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

fn flexgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flexgate"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread")]
async fn version_is_printed() {
    let mut c = flexgate();
    c.arg("--version");
    let o = run(c).await;
    assert!(o.status.success());
    assert_eq!(stdout(&o), format!("flexgate {}", env!("CARGO_PKG_VERSION")));
}

/// Every example config in config/ passes check-config once dev certificates exist. The configs
/// and the cert script are copied so that the test writes nothing into the repository.
#[tokio::test(flavor = "multi_thread")]
async fn every_example_config_passes_check_config() {
    require_tool("openssl", "apt-get install -y openssl");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (config, certs) = (tmp.path().join("config"), tmp.path().join("certs"));
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&certs).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(repo().join("certs/make-dev-certs.sh"), certs.join("make-dev-certs.sh"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut mk = Command::new("bash");
    mk.arg(certs.join("make-dev-certs.sh")).arg(certs.join("dev"));
    let o = run(mk).await;
    assert!(o.status.success(), "make-dev-certs.sh failed: {}", stderr(&o));

    // The files that the examples name: IP sets, placeholder secrets.
    for dir in ["ipsets", "secrets"] {
        std::fs::create_dir_all(config.join(dir)).unwrap_or_else(|e| panic!("{e}"));
        for entry in std::fs::read_dir(repo().join("config").join(dir)).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            std::fs::copy(&path, config.join(dir).join(path.file_name().unwrap_or_default()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let copy = config.join(path.file_name().unwrap_or_default());
        std::fs::copy(&path, &copy).unwrap_or_else(|e| panic!("{e}"));
        let mut c = flexgate();
        c.args(["check-config", "--config"]).arg(&copy);
        let o = run(c).await;
        assert!(o.status.success(), "{} fails check-config: {}", path.display(), stderr(&o));
        assert!(stdout(&o).contains(": ok"), "{}", stdout(&o));
        // Every example admits someone: none leaves a listener at the default deny.
        assert!(!stderr(&o).contains("refuses every connection"), "{}: {}", path.display(), stderr(&o));
        checked += 1;
    }
    assert!(checked >= 9, "expected the example configs, found {checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_configs_fail_naming_file_and_key() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let good = ProxyConfig::to(db).toml(&db.certs);
    let cases = [
        (
            good.replace("min_version = \"1.2\"", "min_version = \"1.1\""),
            "tls.min_version",
            "insecure and not supported",
        ),
        (
            good.replace("handshake_timeout = \"10s\"", "handshake_timeout = \"soon\""),
            "listener[0].handshake_timeout",
            "duration",
        ),
        (good.replace("[[listener]]", "[[listener]]\nport = 3306"), "port", "unknown field"),
        (good.replace(&db.certs.key.display().to_string(), "/nonexistent/key.pem"), "tls.key", "/nonexistent/key.pem"),
        // A key that exists but does not belong to the certificate.
        (
            good.replace(&db.certs.key.display().to_string(), &db.certs.ca.display().to_string()),
            "tls.key",
            "private key",
        ),
        (good.replace("allow = [\"127.0.0.0/8\"", "allow = [\"127.0.0.0/33\""), "listener[0].allow[0]", "CIDR"),
        (
            good.replace("allow = [\"127.0.0.0/8\"", "allow = [\"@nowhere\""),
            "listener[0].allow[0]",
            "no [ipsets.nowhere]",
        ),
        (
            good.replace("[[listener]]", "[ipsets.x]\nfile = \"/nonexistent/set.txt\"\n[[listener]]"),
            "ipsets.x.file",
            "/nonexistent",
        ),
        (
            format!("{good}proxy_protocol = {{ trusted = [\"app.example.com\"] }}\n"),
            "listener[0].proxy_protocol.trusted[0]",
            "not an IP address or CIDR range",
        ),
        (good.replace("[tls]", "[dns]\nmin_ttl = \"2h\"\n[tls]"), "dns.min_ttl", "longer than dns.max_ttl"),
    ];
    for (i, (text, key, detail)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        for sub in ["check-config", "run"] {
            let mut c = flexgate();
            c.args([sub, "--config"]).arg(&path);
            let o = run(c).await;
            let err = stderr(&o);
            assert!(!o.status.success(), "{sub} accepted case {i}");
            assert!(err.contains(&path.display().to_string()), "{sub} case {i}: no file name in: {err}");
            assert!(err.contains(key), "{sub} case {i}: key {key} not named in: {err}");
            assert!(err.contains(detail), "{sub} case {i}: {detail:?} not in: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_mode_is_announced_at_startup() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = ProxyConfig { require_secure_transport: false, ..ProxyConfig::to(db) }.toml(&db.certs);
    let path = tmp.path().join("legacy.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let (mut child, mut lines) = run_json(&path);
    let mut warned = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if line.contains("\"level\":\"WARN\"") && line.contains("plaintext clients are accepted") {
            warned = true;
        }
        if line.contains("\"message\":\"listening\"") {
            break;
        }
    }
    assert!(warned, "no startup warning about plaintext clients");
    // SIGTERM ends it cleanly.
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let _ = run({
        let mut k = Command::new("kill");
        k.arg(pid.to_string());
        k
    })
    .await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("flexgate did not stop on SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
}

/// Behind a Unix socket the server sees every client as flexgate's OS user; as root, MariaDB's
/// unix_socket authentication would admit anyone as root, so `run` refuses.
#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_backend_is_refused_when_running_as_root() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = ProxyConfig { backend: format!("unix:{}", db.socket.display()), ..ProxyConfig::to(db) }.toml(&db.certs);
    let path = tmp.path().join("socket.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    let mut c = flexgate();
    c.args(["run", "--config"]).arg(&path);
    if is_root {
        let o = run(c).await;
        assert!(!o.status.success());
        assert!(stderr(&o).contains("refusing to connect to a Unix-socket backend as root"), "{}", stderr(&o));
    } else {
        // Not root: it starts; check-config is enough to show the same file is otherwise valid.
        let mut c = flexgate();
        c.args(["check-config", "--config"]).arg(&path);
        assert!(run(c).await.status.success());
    }
}

/// The harness's config for a flexgate binary, with `allow` as the listener's rules.
pub(crate) fn binary_config(db: &MariaDb, allow: &str) -> String {
    ProxyConfig::to(db).listener(&format!("allow = [{allow}]\n")).toml(&db.certs)
}

pub(crate) type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// `flexgate --log-format json run --config path`, killed when dropped, and its log lines.
pub(crate) fn run_json(path: &Path) -> (tokio::process::Child, LogLines) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flexgate"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let pipe = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    (child, tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(pipe)))
}

/// Follows a flexgate binary's JSON log until a line contains all of `parts`.
pub(crate) async fn log_line(lines: &mut LogLines, parts: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if parts.iter().all(|p| line.contains(p)) {
            return line;
        }
    }
    panic!("no log line with {parts:?}");
}

/// SIGHUP reloads even an unchanged file (one line: result, generation, changes); an edit is
/// picked up without a signal; a broken file is rejected and the running rules stay.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_file_changes_reload_the_binary() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = tmp.path().join("flexgate.toml");
    let port = free_port();
    let with_port = |t: String| t.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, with_port(binary_config(db, "\"127.0.0.1\""))).unwrap_or_else(|e| panic!("{e}"));
    let (mut child, mut lines) = run_json(&path);
    log_line(&mut lines, &["\"message\":\"listening\""]).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(first_packet_from("127.0.0.1", addr).await, Ok(()));
    let pid = child.id().unwrap_or_else(|| panic!("no pid")).to_string();
    let signal = |sig: &'static str| {
        let mut k = Command::new("kill");
        k.args([sig, pid.as_str()]);
        k
    };
    run(signal("-HUP")).await;
    let line = log_line(&mut lines, &["config reloaded"]).await;
    assert!(line.contains("\"generation\":2"), "{line}");

    std::fs::write(&path, with_port(binary_config(db, "\"127.0.0.2\""))).unwrap_or_else(|e| panic!("{e}"));
    let line = log_line(&mut lines, &["config reloaded"]).await;
    assert!(line.contains("\"generation\":3") && line.contains("~listener test (rules)"), "{line}");
    let refused = first_packet_from("127.0.0.1", addr).await;
    assert_eq!(refused.map_err(|e| e.0), Err(1130));
    assert_eq!(first_packet_from("127.0.0.2", addr).await, Ok(()));

    std::fs::write(&path, with_port(binary_config(db, "\"127.0.0.300\""))).unwrap_or_else(|e| panic!("{e}"));
    let line = log_line(&mut lines, &["config reload rejected"]).await;
    assert!(line.contains("listener[0].allow[0]"), "{line}");
    assert_eq!(first_packet_from("127.0.0.2", addr).await, Ok(()), "the running rules stay");

    run(signal("-TERM")).await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("flexgate did not stop on SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
}
