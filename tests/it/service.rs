//! The binary as a service: sd_notify messages on a test NOTIFY_SOCKET, the watchdog, socket
//! activation with systemd's own `systemd-socket-activate`, the second stop signal, and the
//! `status`, `probe` and `check-config --print` commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cli::{LogLines, binary_config, log_line};
use crate::harness::*;

fn flexgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flexgate"))
}

/// The harness config with `[admin]` on `admin_port` and the listener on `port`.
fn config(db: &MariaDb, port: u16, admin_port: u16, extra: &str) -> String {
    let t = binary_config(db, "\"127.0.0.0/8\"").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    format!("{t}\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n{extra}")
}

fn spawn(cmd: &mut tokio::process::Command) -> (tokio::process::Child, LogLines) {
    let mut child =
        cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap_or_else(|e| panic!("{e}"));
    let pipe = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    (child, tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(pipe)))
}

fn run_cmd(path: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_flexgate"));
    c.args(["--log-format", "json", "run", "--config"]).arg(path);
    c
}

/// The next datagram on the notify socket.
async fn notified(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no sd_notify message within 10 s"))
        .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Skips watchdog pings until a message containing `want`.
async fn notified_with(sock: &tokio::net::UnixDatagram, want: &str) -> String {
    loop {
        let m = notified(sock).await;
        if m.contains(want) {
            return m;
        }
        assert_eq!(m, "WATCHDOG=1\n", "unexpected sd_notify message while waiting for {want}");
    }
}

fn kill(sig: &str, pid: u32) -> Command {
    let mut k = Command::new("kill");
    k.args([sig, &pid.to_string()]);
    k
}

async fn probe(endpoint: &str, admin_port: u16) -> std::process::Output {
    let mut c = flexgate();
    c.args(["probe", endpoint, "--admin", &format!("127.0.0.1:{admin_port}")]);
    run(c).await
}

/// READY=1 once serving, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 with
/// MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1 on SIGTERM; `status` and `probe` ask the
/// admin API meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_watchdog_reload_and_stop() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = tmp.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&socket).unwrap_or_else(|e| panic!("{e}"));
    let (port, admin_port) = (free_port(), free_port());
    let path = tmp.path().join("flexgate.toml");
    std::fs::write(&path, config(db, port, admin_port, "")).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = run_cmd(&path);
    cmd.env("NOTIFY_SOCKET", &socket).env("WATCHDOG_USEC", "400000");
    let (mut child, _lines) = spawn(&mut cmd);
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));

    let ready = notified(&sock).await;
    assert!(ready.starts_with("READY=1\nSTATUS=serving 1 listener(s), config generation 1"), "{ready:?}");
    // The admin API and the listener are up by READY=1.
    assert!(probe("healthz", admin_port).await.status.success());
    assert_eq!(notified(&sock).await, "WATCHDOG=1\n", "the watchdog is fed at WATCHDOG_USEC / 2");

    run(kill("-HUP", pid)).await;
    let reloading = notified_with(&sock, "RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let ready = notified_with(&sock, "READY=1").await;
    assert!(ready.contains("config generation 2"), "{ready:?}");

    let mut st = flexgate();
    st.args(["status", "--config"]).arg(&path);
    let o = run(st).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(", ready"), "{text}");
    assert!(text.contains("generation 2 (1 reload attempt(s)); last: ok"), "{text}");
    assert!(text.contains(&format!("listener test on 127.0.0.1:{port}: 0 open")), "{text}");
    let mut js = flexgate();
    js.args(["status", "--json", "--admin", &format!("127.0.0.1:{admin_port}")]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&run(js).await)).unwrap_or_default();
    assert_eq!(v["pid"], pid);

    run(kill("-TERM", pid)).await;
    let stopping = notified_with(&sock, "STOPPING=1").await;
    assert!(stopping.contains("STATUS=draining 0 session(s)"), "{stopping:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("flexgate did not stop on SIGTERM with no session open"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
    let o = probe("healthz", admin_port).await;
    assert!(!o.status.success(), "probe succeeded after exit");
    assert!(stderr(&o).contains("is flexgate running"), "{}", stderr(&o));
}

/// With a session open, SIGTERM drains (readiness fails, the process stays); a second SIGTERM
/// exits at once, well before the drain timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_ends_the_drain_at_once() {
    let db = mariadb();
    let (user, schema) = db.user();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (port, admin_port) = (free_port(), free_port());
    let path = tmp.path().join("flexgate.toml");
    std::fs::write(&path, config(db, port, admin_port, "[shutdown]\ndrain_timeout = \"60s\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut child, mut lines) = spawn(&mut run_cmd(&path));
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    log_line(&mut lines, &["\"message\":\"listening\""]).await;
    let opts = async_opts(port, &user, &schema, PASSWORD, &db.certs);
    let conn = mysql_async::Conn::new(opts).await.unwrap_or_else(|e| panic!("{e}"));
    eventually_async("readyz 200", || async { probe("readyz", admin_port).await.status.success() }).await;

    run(kill("-TERM", pid)).await;
    log_line(&mut lines, &["draining"]).await;
    let o = probe("readyz", admin_port).await;
    assert!(!o.status.success() && stderr(&o).contains("HTTP 503"), "{}", stderr(&o));
    assert!(stderr(&o).contains("draining: failing"), "{}", stderr(&o));
    assert!(child.try_wait().unwrap_or_default().is_none(), "flexgate exited with a session open");

    let t = std::time::Instant::now();
    run(kill("-TERM", pid)).await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("a second SIGTERM did not stop flexgate"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(conn);
}

/// systemd-socket-activate (from systemd) binds the port, waits for the first client, then
/// starts flexgate with the socket as fd 3: that client, queued in the backlog while flexgate
/// started, is served. A socket whose name matches no listener is refused at startup.
#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_the_client_queued_in_the_backlog() {
    let activate = require_tool("systemd-socket-activate", "apt-get install -y systemd");
    let db = mariadb();
    let (user, schema) = db.user();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = tmp.path().join("flexgate.toml");
    // The configured address is not the activated one: the inherited socket wins.
    std::fs::write(&path, config(db, free_port(), free_port(), "")).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let mut cmd = tokio::process::Command::new(&activate);
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=test", env!("CARGO_BIN_EXE_flexgate")])
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path);
    let (_child, mut lines) = spawn(&mut cmd);
    // systemd-socket-activate says where it listens before it waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "systemd-socket-activate did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That probe connection started flexgate; this client waits in the backlog meanwhile.
    let body = "c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})\n\
                cur = c.cursor(); cur.execute('SELECT 7'); print(cur.fetchone()[0])";
    let out = pymysql(port, &user, &schema, PASSWORD, &db.certs, body).await;
    assert_eq!(out.trim(), "7");
    let line = log_line(&mut lines, &["using the socket passed by systemd"]).await;
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");

    // A name that is no listener's.
    let mut bad = tokio::process::Command::new(&activate);
    let port = free_port();
    bad.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=public", env!("CARGO_BIN_EXE_flexgate")])
        .args(["run", "--config"])
        .arg(&path);
    let (mut child, mut lines) = spawn(&mut bad);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "systemd-socket-activate did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("flexgate did not refuse the unknown socket"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success());
    let mut all = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        all.push_str(&l);
        all.push('\n');
    }
    assert!(all.contains("no [[listener]] is named public"), "{all}");
}

/// `check-config --print` prints the effective config: valid TOML that check-config accepts
/// again, with the defaults filled in.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_print_shows_the_effective_config() {
    let db = mariadb();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = tmp.path().join("flexgate.toml");
    std::fs::write(&path, config(db, free_port(), free_port(), "")).unwrap_or_else(|e| panic!("{e}"));
    let mut c = flexgate();
    c.args(["check-config", "--print", "--config"]).arg(&path);
    let o = run(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let t: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(t["shutdown"]["drain_timeout"].as_str(), Some("30s"), "{text}");
    assert_eq!(t["admin"]["backend_retry"].as_str(), Some("5s"), "{text}");
    assert_eq!(t["listener"][0]["max_preauth_per_ip"].as_integer(), Some(16), "{text}");
    assert_eq!(t["listener"][0]["tls"]["min_version"].as_str(), Some("1.2"), "{text}");
    assert_eq!(t["dns"]["keep_stale"].as_str(), Some("5m"), "{text}");
    // What it prints is itself a config that loads to the same thing.
    let again = tmp.path().join("again.toml");
    std::fs::write(&again, &text).unwrap_or_else(|e| panic!("{e}"));
    let a = flexgate::config::Config::load(&again).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let b = flexgate::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.effective_toml(), b.effective_toml());
    assert_eq!(a.listeners, b.listeners);
}
