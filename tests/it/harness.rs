//! Test harness: a real MariaDB (Debian's mariadbd) in a temporary directory, certificates made
//! with rcgen, flexgate run in-process on pre-bound loopback listeners, and the real clients.
//!
//! One MariaDB instance is shared by the whole test binary; each test makes its own users and
//! schemas. A missing tool fails the test with the command that installs it.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flexgate::config::Config;
use flexgate::events::LoginEvent;
use flexgate::metrics::Metrics;
use flexgate::profile::ProfileCell;
use flexgate::registry::SessionRegistry;
use flexgate::server::Proxy;

pub const PASSWORD: &str = "S3cret-pw";

/// Fails with the command that installs `tool` if it is not on PATH.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(tool)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("`{tool}` is not installed; install it with: {install} (or run tests/run.sh, which does)")
    })
}

pub fn require_pymysql() {
    let ok = Command::new("python3").args(["-c", "import pymysql"]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "PyMySQL is not importable by python3; install it with: python3 -m pip install PyMySQL (or run tests/run.sh)"
    );
}

/// Fails, saying how to install it, unless python3 can import `module`.
pub fn require_python_module(module: &str, install: &str) {
    let ok = Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Python module {module} is not importable by python3; install it with: {install} (or run tests/run.sh)"
    );
}

/// Certificates for the tests: one CA, one leaf valid for localhost, db.internal and 127.0.0.1.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    make_certs_named(dir, "localhost")
}

/// A fresh CA and a leaf for localhost, db.internal and 127.0.0.1 with common name `cn`, in
/// `dir`: a reload test's rotated certificate, or a listener's own.
pub fn make_certs_named(dir: &Path, cn: &str) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("ca key: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "flexgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap_or_else(|e| panic!("ca: {e}"));
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap_or_else(|e| panic!("leaf key: {e}"));
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "db.internal".into(), "127.0.0.1".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    leaf.distinguished_name.push(DnType::CommonName, cn);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap_or_else(|e| panic!("leaf: {e}"));
    let certs = Certs {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&certs.cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&certs.key, leaf_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    certs
}

/// A running mariadbd. Killed when the test process exits (a watchdog shell waits on our pipe).
pub struct MariaDb {
    pub port: u16,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub certs: Certs,
    /// Server options after the harness's own (mariadbd takes the last of a repeated option).
    extra: Vec<String>,
    watchdog: Option<(Child, ChildStdin)>,
}

static SHARED: OnceLock<MariaDb> = OnceLock::new();
static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// The binary's shared MariaDB, started on first use.
pub fn mariadb() -> &'static MariaDb {
    SHARED.get_or_init(|| {
        let db = MariaDb::start(&tempdir_path("flexgate-it"));
        // For the auth-switch test: ed25519 ships with mariadb-server.
        db.root_sql("INSTALL SONAME 'auth_ed25519'");
        db
    })
}

/// A unique name for a test's user or schema.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed))
}

fn tempdir_path(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    dir.keep()
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}

/// Attempts at `mariadb-install-db`. Debian's 10.11.19 has been seen to crash (SIGSEGV in
/// `ha_maria::drop_table`, while bootstrap creates the sys schema's views) on a loaded CI
/// machine; a second run on a fresh datadir succeeds. Each failure is printed, not hidden.
const INSTALL_ATTEMPTS: usize = 3;

/// Initialises `dir/data`, with a private tmpdir (bootstrap's internal temporary tables).
fn install_db(dir: &Path) {
    let data = dir.join("data");
    let tmp = dir.join("tmp");
    let mut failures = Vec::new();
    for attempt in 1..=INSTALL_ATTEMPTS {
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(user_arg())
            .output()
            .unwrap_or_else(|e| panic!("mariadb-install-db: {e}; install it with: apt-get install -y mariadb-server"));
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("mariadb-install-db attempt {attempt} of {INSTALL_ATTEMPTS} failed ({}):\n{stderr}", out.status);
        failures.push(stderr);
    }
    panic!(
        "mariadb-install-db failed {INSTALL_ATTEMPTS} times; the last error:\n{}",
        failures.pop().unwrap_or_default()
    );
}

impl MariaDb {
    /// Initialises a datadir in `dir` and starts mariadbd on a free port.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A private server with options of its own, such as `--max-connections=151`.
    pub fn start_private(prefix: &str, extra: &[&str]) -> Self {
        Self::start_with(&tempdir_path(prefix), extra)
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        require_tool("mariadbd", "apt-get install -y mariadb-server");
        require_tool("mariadb", "apt-get install -y mariadb-client");
        install_db(dir);
        let certs = make_certs(dir);
        let mut db = Self {
            port: 0,
            socket: dir.join("mysqld.sock"),
            dir: dir.to_path_buf(),
            certs,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            watchdog: None,
        };
        db.launch();
        db
    }

    /// Starts (or restarts) mariadbd on the same datadir; a new port is only picked the first time.
    pub fn launch(&mut self) {
        let first = self.port == 0;
        for _attempt in 0..5 {
            if first {
                self.port = free_port();
            }
            let d = &self.dir;
            let args = vec![
                "--no-defaults".to_string(),
                format!("--datadir={}", d.join("data").display()),
                format!("--socket={}", self.socket.display()),
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".into(),
                format!("--pid-file={}", d.join("mysqld.pid").display()),
                format!("--tmpdir={}", d.join("tmp").display()),
                format!("--log-error={}", d.join("error.log").display()),
                format!("--ssl-ca={}", self.certs.ca.display()),
                format!("--ssl-cert={}", self.certs.cert.display()),
                format!("--ssl-key={}", self.certs.key.display()),
                "--skip-name-resolve".into(),
                "--max-connections=1000".into(),
                "--max-connect-errors=100000".into(),
                "--max-allowed-packet=128M".into(),
                "--local-infile=1".into(),
                "--innodb-buffer-pool-size=64M".into(),
                "--innodb-flush-log-at-trx-commit=0".into(),
                "--skip-log-bin".into(),
            ];
            let mut args = args;
            args.extend(self.extra.iter().cloned());
            args.extend(user_arg());
            // The shell runs mariadbd and kills it when our end of its stdin closes, i.e. when
            // this process exits however it exits.
            let script = r#"mariadbd "$@" & pid=$!; read -r _; kill "$pid" 2>/dev/null; wait "$pid""#;
            let mut child = Command::new("sh")
                .args(["-c", script, "sh"])
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn mariadbd: {e}"));
            let stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin pipe"));
            self.watchdog = Some((child, stdin));
            if self.wait_ready(Duration::from_secs(60)) {
                return;
            }
            self.stop();
            if !first {
                break;
            }
        }
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        panic!("mariadbd did not start; its error log:\n{log}");
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some((child, _)) = &mut self.watchdog
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.root_sql_try("SELECT 1").is_ok_and(|o| o.status.success()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops mariadbd and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn root_sql_try(&self, sql: &str) -> std::io::Result<Output> {
        Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "--skip-ssl", "-N", "-B"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .output()
    }

    /// Runs SQL as root over the Unix socket; panics on failure. Returns stdout.
    pub fn root_sql(&self, sql: &str) -> String {
        self.root_sql_checked(sql)
    }

    /// A server status variable, such as `Threads_connected` or `Aborted_connects`.
    pub fn status(&self, name: &str) -> u64 {
        let out = self.root_sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"));
        out.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("status {name}: {out}"))
    }

    fn root_sql_checked(&self, sql: &str) -> String {
        let out = self.root_sql_try(sql).unwrap_or_else(|e| panic!("mariadb: {e}"));
        assert!(out.status.success(), "root SQL failed: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh user with its own schema and all privileges on it. Returns (user, schema).
    pub fn user(&self) -> (String, String) {
        let user = unique("u");
        let db = unique("db");
        self.root_sql(&format!(
            "CREATE DATABASE {db}; CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON {db}.* TO '{user}'@'%'; GRANT FILE ON *.* TO '{user}'@'%';"
        ));
        (user, db)
    }
}

fn user_arg() -> Vec<String> {
    // mariadbd refuses to run as root unless told to.
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if is_root { vec!["--user=root".into()] } else { vec![] }
}

/// Settings for an in-process flexgate.
pub struct ProxyConfig {
    pub backend: String,
    pub min_version: &'static str,
    pub require_secure_transport: bool,
    pub handshake_timeout: &'static str,
    pub backend_tls: Option<String>,
    pub tls: bool,
    /// The listener's `greeting`: "flexgate" (the default) or "server".
    pub greeting: &'static str,
    /// TOML lines for the listener: `allow`, limits, `proxy_protocol`, `[listener.tls]`.
    pub listener: String,
    /// TOML after the listener: more `[[listener]]`s, `[ipsets.*]`, `[dns]`.
    pub extra: String,
    /// Lines for `[backend]`, such as `proxy_protocol = "v1"`.
    pub backend_extra: String,
    /// The listener's address.
    pub address: String,
}

/// The harness's listeners admit loopback, where every test client is.
pub const LOOPBACK: &str = "allow = [\"127.0.0.0/8\", \"::1\"]\n";

/// Loopback, for tests that hold hundreds of connections still logging in from one address
/// (the default `max_preauth_per_ip` is 16).
pub const MANY_PREAUTH: &str = "allow = [\"127.0.0.0/8\", \"::1\"]\nmax_preauth_per_ip = 10000\n";

impl ProxyConfig {
    pub fn to(db: &MariaDb) -> Self {
        Self::to_addr(db.addr())
    }

    /// The same defaults in front of another server (a scripted peer).
    pub fn to_addr(backend: String) -> Self {
        Self {
            backend,
            min_version: "1.2",
            require_secure_transport: true,
            handshake_timeout: "10s",
            backend_tls: None,
            tls: true,
            greeting: "flexgate",
            listener: LOOPBACK.into(),
            extra: String::new(),
            backend_extra: String::new(),
            address: "127.0.0.1:0".into(),
        }
    }

    /// Replaces the listener's lines (the default admits loopback).
    pub fn listener(self, lines: &str) -> Self {
        Self { listener: lines.into(), ..self }
    }

    /// Adds TOML after the listener.
    pub fn extra(self, toml: &str) -> Self {
        Self { extra: toml.into(), ..self }
    }

    /// The same settings with the server's greeting relayed (dial at accept).
    pub fn server_greeting(self) -> Self {
        Self { greeting: "server", ..self }
    }

    pub fn toml(&self, certs: &Certs) -> String {
        let mut t =
            format!("[backend]\naddress = \"{}\"\nconnect_timeout = \"1s\"\n{}", self.backend, self.backend_extra);
        if let Some(extra) = &self.backend_tls {
            t.push_str(&format!("[backend.tls]\n{extra}\n"));
        }
        t.push_str("[tls]\n");
        if self.tls {
            t.push_str(&format!("cert = \"{}\"\nkey = \"{}\"\n", certs.cert.display(), certs.key.display()));
        }
        t.push_str(&format!(
            "min_version = \"{}\"\nrequire_secure_transport = {}\n[[listener]]\nname = \"test\"\naddress = \"{}\"\nhandshake_timeout = \"{}\"\ngreeting = \"{}\"\n",
            self.min_version, self.require_secure_transport, self.address, self.handshake_timeout, self.greeting
        ));
        t.push_str(&self.listener);
        t.push('\n');
        t.push_str(&self.extra);
        t
    }

    /// Starts flexgate on this runtime; it stops when the returned handle drops.
    pub async fn start(self, certs: &Certs) -> RunningProxy {
        // FLEXGATE_LOG=debug shows flexgate's own log lines in failing tests' output.
        let filter = tracing_subscriber::EnvFilter::try_from_env("FLEXGATE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let text = self.toml(certs);
        let path = certs.dir.join(format!("{}.toml", unique("proxy")));
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let proxy = Proxy::build(&cfg).unwrap_or_else(|e| panic!("build: {e}"));
        let bound = proxy.bind().await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addrs = bound.local_addrs();
        let addr = addrs.iter().find(|(n, _)| n == "test").map_or(addrs[0].1, |(_, a)| *a);
        let metrics = bound.metrics();
        let events = bound.events().subscribe();
        let profile = bound.profile();
        let registry = bound.registry();
        let gate = bound.gate("test");
        let admin = bound.admin_addr();
        let readiness = bound.readiness();
        let bound = bound.watch_files();
        let reloader = bound.reloader();
        let stop = flexgate::server::Stop::default();
        tokio::spawn(bound.serve(stop.clone()));
        RunningProxy {
            addr,
            addrs,
            metrics,
            events: tokio::sync::Mutex::new(events),
            profile,
            registry,
            gate,
            reloader,
            config: path,
            admin,
            readiness,
            stop,
        }
    }
}

pub struct RunningProxy {
    /// The listener named "test".
    pub addr: SocketAddr,
    /// Every TCP listener at startup, by name.
    pub addrs: Vec<(String, SocketAddr)>,
    pub metrics: Arc<Metrics>,
    /// Login events from the moment the proxy was built.
    pub events: tokio::sync::Mutex<tokio::sync::broadcast::Receiver<Arc<LoginEvent>>>,
    pub profile: Arc<ProfileCell>,
    pub registry: Arc<SessionRegistry>,
    /// The "test" listener's counts and refusal counters.
    pub gate: Arc<flexgate::firewall::ListenerGate>,
    pub reloader: flexgate::server::Reloader,
    /// The config file it runs from (and reloads).
    pub config: PathBuf,
    /// The admin API, if the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The readiness latch.
    pub readiness: Arc<flexgate::health::Readiness>,
    /// Drains (`drain`) or stops (`now`) the proxy; both happen when this handle drops.
    pub stop: flexgate::server::Stop,
}

impl RunningProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next login event matching `f`, skipping others; fails after 10 s.
    pub async fn next_event(&self, what: &str, f: impl Fn(&LoginEvent) -> bool) -> Arc<LoginEvent> {
        let mut rx = self.events.lock().await;
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(e) if f(&e) => return e,
                    Ok(_) => {}
                    Err(e) => panic!("login events: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("no login event: {what}"))
    }

    /// The address of listener `name` as of the latest reload (`ip:port` or `unix:/path`).
    pub fn listener_addr(&self, name: &str) -> String {
        let st = self.reloader.status().borrow().clone();
        st.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no listener {name}: {st:?}"))
    }

    /// Rewrites the config file, then waits (bounded) for the file watcher's reload and
    /// returns its status.
    pub async fn rewrite_config(&self, text: &str) -> flexgate::server::ReloadStatus {
        let mut rx = self.reloader.status();
        let before = rx.borrow_and_update().attempts;
        // Written aside and renamed, as editors and config management do.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &self.config).unwrap_or_else(|e| panic!("{e}"));
        let wait = async {
            loop {
                rx.changed().await.unwrap_or_else(|e| panic!("proxy stopped: {e}"));
                let st = rx.borrow_and_update().clone();
                if st.attempts > before {
                    return st;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no reload after rewriting the config"))
    }

    /// Waits (bounded) until the startup probe has learned the server profile.
    pub async fn profile_learned(&self) {
        eventually("server profile learned", || self.profile.load().is_some()).await;
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop.now.cancel();
        self.stop.drain.cancel();
    }
}

/// Runs a command to completion off the async runtime's threads.
pub async fn run(mut cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
}

/// The mariadb CLI against `port`, verifying flexgate's certificate.
pub fn cli(port: u16, user: &str, password: &str, certs: &Certs) -> Command {
    require_tool("mariadb", "apt-get install -y mariadb-client");
    let mut c = Command::new("mariadb");
    c.args(["--no-defaults", "-h", "127.0.0.1", "-N", "-B", "--connect-timeout=10"])
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{password}"))
        .arg("--ssl-verify-server-cert")
        .arg(format!("--ssl-ca={}", certs.ca.display()));
    c
}

/// Runs a PyMySQL snippet. The snippet sees `host`, `port`, `user`, `pw`, `ca`, `db` and must
/// print its result; stdout is returned. Exceptions are printed as `ERR <code> <message>`.
pub async fn pymysql(port: u16, user: &str, db: &str, password: &str, certs: &Certs, body: &str) -> String {
    pymysql_from("127.0.0.1", port, user, db, password, certs, body).await
}

/// [`pymysql`] from source address `src` (the snippet passes `bind_address=src`).
pub async fn pymysql_from(
    src: &str,
    port: u16,
    user: &str,
    db: &str,
    password: &str,
    certs: &Certs,
    body: &str,
) -> String {
    require_pymysql();
    let script = format!(
        "import sys, ssl, pymysql\nhost, port, user, pw, ca, db, src = '127.0.0.1', {port}, {user:?}, {password:?}, {ca:?}, {db:?}, {src:?}\n\
         try:\n{body}\nexcept pymysql.err.MySQLError as e:\n    print('ERR', e.args[0], e.args[1] if len(e.args) > 1 else '')\n",
        ca = certs.ca.display().to_string(),
        body = body.lines().map(|l| format!("    {l}\n")).collect::<String>(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let out = run(cmd).await;
    assert!(out.status.success(), "python failed:\n{}\n{script}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl s_client -starttls mysql`; returns the negotiated version from the client's side
/// (`TLSv1.3`, `TLSv1.2`, ...) or `None` if the handshake failed.
pub async fn openssl_version(port: u16, flags: &[&str]) -> Option<String> {
    require_tool("openssl", "apt-get install -y openssl");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-starttls", "mysql"])
        .args(flags)
        .stdin(Stdio::null());
    let out = run(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("New, "))
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| (v.starts_with("TLSv")).then(|| v.to_string()))
}

/// mysql_async options for `port`, verifying flexgate's certificate against the test CA.
pub fn async_opts(port: u16, user: &str, db: &str, password: &str, certs: &Certs) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some(db))
        .prefer_socket(false)
        .ssl_opts(mysql_async::SslOpts::default().with_root_certs(vec![certs.ca.clone().into()]))
        .into()
}

/// A logged-in mysql_async connection through `proxy` with the test password.
pub async fn connect(proxy: &RunningProxy, user: &str, db: &str, certs: &Certs) -> mysql_async::Conn {
    mysql_async::Conn::new(async_opts(proxy.port(), user, db, PASSWORD, certs))
        .await
        .unwrap_or_else(|e| panic!("connect through flexgate: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Reads a status counter of `db` (a blocking `mariadb` call) until `f` accepts it; fails
/// after 15 s.
pub async fn status_until(db: &MariaDb, name: &str, what: &str, f: impl Fn(u64) -> bool) -> u64 {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let v = tokio::task::block_in_place(|| db.status(name));
        if f(v) {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {name} {what}; last {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `f` returns true; session counters are updated just after the client
/// has seen its answer, so tests wait for them rather than read them once.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the async condition `f` holds, polling for at most 15 s.
pub async fn eventually_async<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects from source address `src` (any of 127.0.0.0/8 works on loopback) to `to`.
pub async fn connect_from(src: std::net::IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let sock = if to.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .unwrap_or_else(|e| panic!("socket: {e}"));
    sock.bind(SocketAddr::new(src, 0)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect(to).await.unwrap_or_else(|e| panic!("connect {to} from {src}: {e}"))
}

/// Reads one packet (sequence id, payload), or `None` on close or after 10 s of silence.
pub async fn read_packet(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut hdr = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut hdr)).await.ok()?.ok()?;
    let len = usize::from(hdr[0]) | usize::from(hdr[1]) << 8 | usize::from(hdr[2]) << 16;
    let mut payload = vec![0; len];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut payload)).await.ok()?.ok()?;
    Some((hdr[3], payload))
}

/// An ERR packet's code.
pub fn err_code(payload: &[u8]) -> Option<u16> {
    (payload.first() == Some(&0xff) && payload.len() >= 3).then(|| u16::from_le_bytes([payload[1], payload[2]]))
}

/// An ERR packet's code and message (a pre-greeting ERR has no SQLSTATE marker).
pub fn err_of(p: &[u8]) -> Option<(u16, String)> {
    let code = err_code(p)?;
    let rest = &p[3..];
    let msg = if rest.first() == Some(&b'#') && rest.len() >= 6 { &rest[6..] } else { rest };
    Some((code, String::from_utf8_lossy(msg).into_owned()))
}

/// What a client connecting from `src` receives first: `Ok(())` for a greeting, or the ERR.
pub async fn first_packet_from(src: &str, to: SocketAddr) -> Result<(), (u16, String)> {
    let mut s = connect_from(src.parse().unwrap_or_else(|e| panic!("{src}: {e}")), to).await;
    let (seq, p) = read_packet(&mut s).await.unwrap_or_else(|| panic!("closed without a packet"));
    assert_eq!(seq, 0, "the first packet has sequence id 0");
    match err_of(&p) {
        Some(e) => Err(e),
        None => {
            assert_eq!(p.first(), Some(&10), "a protocol-10 greeting");
            Ok(())
        }
    }
}
