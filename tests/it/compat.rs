//! The README's client compatibility table, produced by running each client through flexgate
//! in front of the harness's MariaDB.
//!
//! Every cell is a real attempt. A feature that fails through flexgate is tried again straight
//! against MariaDB: if it works there, flexgate broke it and the test fails; if it fails there
//! too, the client cannot do it and the cell says "no" with the client's reason. Cells that
//! pass are checked against flexgate's own login events (the TLS version flexgate negotiated,
//! the auth plugin, the change-user). The table is then compared with README.md's; run with
//! `FLEXGATE_UPDATE_README=1` to rewrite it.

use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use flexgate::events::{LoginEvent, LoginKind, LoginOutcome};
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, Conn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::broadcast::error::TryRecvError;

use crate::harness::*;

const PROBE: &str = include_str!("compat_probe.py");
const BEGIN: &str = "<!-- compat-table:begin -->";
const END: &str = "<!-- compat-table:end -->";
/// The large-packet cell's payload: more than one 16 MiB packet each way.
const BIG: usize = 20 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feature {
    Tls12,
    Tls13,
    Native,
    Ed25519,
    CachingSha2,
    ChangeUser,
    Kill,
    Big,
}

impl Feature {
    const ALL: [Self; 8] = [
        Self::Tls12,
        Self::Tls13,
        Self::Native,
        Self::Ed25519,
        Self::CachingSha2,
        Self::ChangeUser,
        Self::Kill,
        Self::Big,
    ];

    /// The column header.
    const fn title(self) -> &'static str {
        match self {
            Self::Tls12 => "TLS 1.2",
            Self::Tls13 => "TLS 1.3",
            Self::Native => "mysql_native_password",
            Self::Ed25519 => "ed25519",
            Self::CachingSha2 => "caching_sha2_password",
            Self::ChangeUser => "change-user",
            Self::Kill => "KILL",
            Self::Big => "20 MiB packets",
        }
    }

    /// The name compat_probe.py knows it by.
    const fn key(self) -> &'static str {
        match self {
            Self::Tls12 => "tls12",
            Self::Tls13 => "tls13",
            Self::Native => "native",
            Self::Ed25519 => "ed25519",
            Self::CachingSha2 => "caching_sha2",
            Self::ChangeUser => "change_user",
            Self::Kill => "kill",
            Self::Big => "big",
        }
    }

    fn from_key(key: &str) -> Self {
        Self::ALL.into_iter().find(|f| f.key() == key).unwrap_or_else(|| panic!("unknown feature {key}"))
    }
}

/// What one attempt found.
#[derive(Debug, Clone)]
enum Outcome {
    Pass(String),
    Fail(String),
    /// The client has no way to do it: the reason.
    NotApplicable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cell {
    Yes,
    No(String),
    Na(String),
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Yes => f.write_str("yes"),
            Self::No(r) => write!(f, "no ({r})"),
            Self::Na(r) => write!(f, "n/a ({r})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Cli,
    PyMySql,
    ConnectorPure,
    ConnectorC,
    MysqlAsync,
}

impl Client {
    const ALL: [Self; 5] = [Self::Cli, Self::PyMySql, Self::ConnectorPure, Self::ConnectorC, Self::MysqlAsync];

    const fn name(self) -> &'static str {
        match self {
            Self::Cli => "mariadb CLI",
            Self::PyMySql => "PyMySQL",
            Self::ConnectorPure => "mysql-connector-python (pure Python)",
            Self::ConnectorC => "mysql-connector-python (C extension)",
            Self::MysqlAsync => "mysql_async (Rust)",
        }
    }

    /// compat_probe.py's name for a Python client.
    const fn python(self) -> Option<&'static str> {
        match self {
            Self::PyMySql => Some("pymysql"),
            Self::ConnectorPure => Some("connector-pure"),
            Self::ConnectorC => Some("connector-c"),
            Self::Cli | Self::MysqlAsync => None,
        }
    }
}

/// One client's accounts: a native-password account for most cells, one used only by the TLS
/// cells (so that its single login on each listener is the one the TLS cell made), an ed25519
/// account, and a change-user target.
struct Accounts {
    native: (String, String),
    tls: (String, String),
    ed: String,
    target: (String, String),
}

impl Accounts {
    fn new(db: &MariaDb) -> Self {
        let ed = unique("ed");
        db.root_sql(&format!("CREATE USER '{ed}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}');"));
        Self { native: db.user(), tls: db.user(), ed, target: db.user() }
    }

    /// Replaces this run's account and schema names, so that a reason reads the same every run.
    fn scrub(&self, text: &str) -> String {
        let mut t = text.to_string();
        for name in [&self.native.0, &self.native.1, &self.tls.0, &self.tls.1, &self.ed, &self.target.0, &self.target.1]
        {
            t = t.replace(name.as_str(), "<user>");
        }
        t
    }
}

/// Where a client connects: flexgate's two listeners, or MariaDB itself for both.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// A listener with `min_version = "1.2"`; also the one every non-TLS cell uses.
    p12: u16,
    /// A listener with `min_version = "1.3"`.
    p13: u16,
}

/// A proxy's login events, drained into a list that every row can search.
struct EventLog {
    proxy: RunningProxy,
    seen: Mutex<Vec<Arc<LoginEvent>>>,
}

impl EventLog {
    async fn start(min_version: &'static str) -> Self {
        let db = mariadb();
        let proxy = ProxyConfig { min_version, ..ProxyConfig::to(db) }.start(&db.certs).await;
        Self { proxy, seen: Mutex::new(Vec::new()) }
    }

    /// The first event matching `f`, waiting up to 5 s for it to be published.
    async fn find(&self, f: impl Fn(&LoginEvent) -> bool) -> Option<Arc<LoginEvent>> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            {
                let mut rx = self.proxy.events.lock().await;
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    match rx.try_recv() {
                        Ok(e) => seen.push(e),
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                if let Some(e) = seen.iter().find(|e| f(e)) {
                    return Some(e.clone());
                }
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The successful login of `kind` by `user`.
    async fn login(&self, kind: LoginKind, user: &str) -> Option<Arc<LoginEvent>> {
        self.find(|e| e.kind == kind && e.user.as_deref() == Some(user) && e.outcome == LoginOutcome::Ok).await
    }
}

/// Checks a passing cell against what flexgate itself recorded. Returns what disagrees.
async fn flexgate_agrees(f: Feature, acc: &Accounts, p12: &EventLog, p13: &EventLog) -> Result<(), String> {
    let (log, kind, user, want_tls, want_plugin) = match f {
        Feature::Tls12 => (p12, LoginKind::Connect, &acc.tls.0, Some("TLSv1.2"), None),
        Feature::Tls13 => (p13, LoginKind::Connect, &acc.tls.0, Some("TLSv1.3"), None),
        Feature::Native => (p12, LoginKind::Connect, &acc.native.0, None, Some("mysql_native_password")),
        Feature::Ed25519 => (p12, LoginKind::Connect, &acc.ed, None, Some("client_ed25519")),
        Feature::ChangeUser => (p12, LoginKind::ChangeUser, &acc.target.0, None, Some("mysql_native_password")),
        Feature::CachingSha2 | Feature::Kill | Feature::Big => return Ok(()),
    };
    let e =
        log.login(kind, user).await.ok_or_else(|| format!("no successful {} event from flexgate", kind.as_str()))?;
    if let Some(v) = want_tls
        && e.transport.tls_version != Some(v)
    {
        return Err(format!("flexgate negotiated {:?}, not {v}", e.transport.tls_version));
    }
    if let Some(p) = want_plugin
        && e.plugin.as_deref() != Some(p)
    {
        return Err(format!("flexgate saw plugin {:?}, not {p}", e.plugin));
    }
    Ok(())
}

/// Shortens a client's error to a reason that fits a cell: its first line, no run-specific
/// names, no file paths.
fn reason(acc: &Accounts, error: &str) -> String {
    let line = acc.scrub(error.lines().next().unwrap_or_default());
    let line = match line.split_once(": ") {
        Some((code, rest)) if code.starts_with("error ") => rest.to_string(),
        _ => line,
    };
    let line = line.split(": /").next().unwrap_or_default().trim().replace('|', "/");
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The same deterministic, printable payload for every client: hex digits, so that no client
/// escapes it and the CLI can print it as it is.
fn big_payload() -> String {
    let mut x: u32 = 0x1234_5678;
    let mut s = String::with_capacity(BIG);
    while s.len() < BIG {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.push_str(&format!("{x:08x}"));
    }
    s.truncate(BIG);
    s
}

fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- the clients

/// Runs compat_probe.py for one Python client. Returns its version and each feature's outcome,
/// or the reason the client cannot run here.
async fn python(
    client: Client,
    route: Route,
    acc: &Accounts,
    features: &[Feature],
) -> Result<(String, Vec<(Feature, Outcome)>), String> {
    require_pymysql();
    let db = mariadb();
    let arg = serde_json::json!({
        "impl": client.python(),
        "host": "127.0.0.1",
        "ca": db.certs.ca.display().to_string(),
        "pw": PASSWORD,
        "p12": route.p12,
        "p13": route.p13,
        "port": route.p12,
        "native": [acc.native.0, acc.native.1],
        "tls": [acc.tls.0, acc.tls.1],
        "ed": acc.ed,
        "target": [acc.target.0, acc.target.1],
        "features": features.iter().map(|f| f.key()).collect::<Vec<_>>(),
        "big_len": BIG,
    });
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", PROBE, &arg.to_string()]);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}: compat_probe.py failed:\n{}", client.name(), stderr(&out));
    let mut version = None;
    let mut outcomes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if let Some(why) = v["unavailable"].as_str() {
            return Err(why.to_string());
        }
        if let Some(ver) = v["version"].as_str() {
            version = Some(ver.to_string());
            continue;
        }
        let f = Feature::from_key(v["feature"].as_str().unwrap_or_default());
        let detail = v["detail"].as_str().unwrap_or_default().to_string();
        let o = match v["ok"].as_bool() {
            Some(true) => Outcome::Pass(detail),
            Some(false) => Outcome::Fail(detail),
            None => Outcome::NotApplicable(detail),
        };
        outcomes.push((f, o));
    }
    let version = version.unwrap_or_else(|| panic!("{}: no version in {}", client.name(), stdout(&out)));
    Ok((version, outcomes))
}

fn cli_version() -> String {
    let out = std::process::Command::new("mariadb")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("mariadb --version: {e}; install it with: apt-get install -y mariadb-client"));
    // "mariadb  Ver 15.1 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64) ..."
    let text = stdout(&out);
    let ver = text.split_once("Ver ").map_or(text.as_str(), |(_, v)| v);
    ver.split(',').next().unwrap_or_default().trim().to_string()
}

async fn cli_probe(route: Route, acc: &Accounts, f: Feature) -> Outcome {
    let db = mariadb();
    let certs = &db.certs;
    let fail = |o: &std::process::Output| Outcome::Fail(stderr(o));
    match f {
        Feature::Tls12 | Feature::Tls13 => {
            let (port, v) = if f == Feature::Tls12 { (route.p12, "TLSv1.2") } else { (route.p13, "TLSv1.3") };
            let mut c = cli(port, &acc.tls.0, PASSWORD, certs);
            c.arg(format!("--tls-version={v}")).args(["-e", "status; SELECT 40 + 2"]);
            let o = run(c).await;
            let out = stdout(&o);
            match out.lines().find_map(|l| l.split_once("Cipher in use is ")) {
                Some((_, cipher)) if o.status.success() && out.ends_with("\n42") => {
                    Outcome::Pass(format!("pinned to {v}, cipher {cipher}"))
                }
                _ => fail(&o),
            }
        }
        Feature::Native | Feature::Ed25519 => {
            let user = if f == Feature::Native { &acc.native.0 } else { &acc.ed };
            let mut c = cli(route.p12, user, PASSWORD, certs);
            c.args(["-e", "SELECT CURRENT_USER()"]);
            let o = run(c).await;
            if stdout(&o) == format!("{user}@%") { Outcome::Pass(String::new()) } else { fail(&o) }
        }
        Feature::ChangeUser => {
            // The CLI's `connect` opens a new connection (two server ids), it does not change
            // the user on the one it has.
            let mut c = cli(route.p12, &acc.native.0, PASSWORD, certs);
            c.args(["-e", "SELECT CONNECTION_ID(); connect; SELECT CONNECTION_ID()"]);
            let o = run(c).await;
            let printed = stdout(&o);
            let ids: Vec<&str> = printed.lines().filter(|l| l.chars().all(|c| c.is_ascii_digit())).collect();
            assert!(
                o.status.success() && ids.len() == 2 && ids[0] != ids[1],
                "the CLI's `connect` did not reconnect: {ids:?} {}",
                stderr(&o)
            );
            Outcome::NotApplicable("no change-user command; `connect` reconnects".into())
        }
        Feature::Kill => match cli_kill(route, acc).await {
            Ok(detail) => Outcome::Pass(detail),
            Err(e) => Outcome::Fail(e),
        },
        Feature::Big => {
            let data = big_payload();
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let file = dir.path().join("big.sql");
            let sql = format!(
                "DROP TABLE IF EXISTS big; CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB);\n\
                 INSERT INTO big VALUES (1, '{data}');\n\
                 SELECT SHA2(b, 256) = '{}' FROM big;\nSELECT b FROM big;\n",
                sha256_hex(data.as_bytes())
            );
            std::fs::write(&file, sql).unwrap_or_else(|e| panic!("{e}"));
            let mut c = cli(route.p12, &acc.native.0, PASSWORD, certs);
            c.args(["--max-allowed-packet=64M", &format!("--database={}", acc.native.1)]);
            c.stdin(Stdio::from(std::fs::File::open(&file).unwrap_or_else(|e| panic!("{e}"))));
            let o = run(c).await;
            if o.status.success() && stdout(&o) == format!("1\n{data}") {
                Outcome::Pass(String::new())
            } else {
                Outcome::Fail(format!("{} ({} bytes out)", stderr(&o), o.stdout.len()))
            }
        }
        Feature::CachingSha2 => unreachable!("not probed"),
    }
}

/// Whether the server runs `SELECT SLEEP(30)` for `user`.
fn sleeping(user: &str) -> bool {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}' AND INFO LIKE 'SELECT SLEEP(30)%'"
    );
    tokio::task::block_in_place(|| mariadb().root_sql(&sql)).trim() == "1"
}

/// The CLI: `KILL QUERY <id>` from a second CLI cuts the first one's `SELECT SLEEP(30)` short
/// with 1317, `KILL <id>` ends its session (2013, and the next statement does not run). The id
/// is the one the CLI's `status` shows (the greeting's, through flexgate). In batch mode the
/// CLI quits on 1317 even with `--force`, so that the session goes on after `KILL QUERY` is
/// for the other clients' cells (and kill.rs's Ctrl-C test) to show.
async fn cli_kill(route: Route, acc: &Accounts) -> Result<String, String> {
    let (user, schema) = &acc.native;
    let mut details = Vec::new();
    for (kill, code) in [("KILL QUERY", "ERROR 1317"), ("KILL", "ERROR 2013")] {
        let db = mariadb();
        let mut c = cli(route.p12, user, PASSWORD, &db.certs);
        // -n flushes after each query: `status` is out once `SELECT 1` is answered.
        c.args(["-n", "--force", "--skip-reconnect", &format!("--database={schema}"), "-e"])
            .arg("status; SELECT 1; SELECT SLEEP(30); SELECT 'after'");
        let mut c = tokio::process::Command::from(c);
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| format!("mariadb: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut out = Vec::new();
        let id = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(l)) = lines.next_line().await {
                out.push(l.clone());
                if let Some(id) = l.trim().strip_prefix("Connection id:") {
                    return id.trim().parse::<u32>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("no connection id in the CLI's status: {out:?}"))?;
        let until = Instant::now() + Duration::from_secs(10);
        while !sleeping(user) {
            if Instant::now() > until {
                return Err("the CLI's SELECT SLEEP(30) never ran".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let mut k = cli(route.p12, user, PASSWORD, &db.certs);
        k.args(["-e", &format!("{kill} {id}")]);
        let o = run(k).await;
        if !o.status.success() {
            return Err(format!("{kill} {id}: {}", stderr(&o)));
        }
        let rest = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                out.push(l);
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            let _ = child.wait().await;
            err
        })
        .await
        .map_err(|_| format!("the CLI did not finish after {kill}"))?;
        let took = started.elapsed();
        let after = out.iter().any(|l| l == "after");
        if took >= Duration::from_secs(10) || after || !rest.contains(code) {
            return Err(format!("{kill} {id}: after {took:?}, `after` printed: {after}; {}", rest.trim()));
        }
        details.push(format!("{kill}: {} after {took:?}", rest.trim()));
    }
    Ok(details.join("; "))
}

fn mysql_async_version() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .unwrap_or_else(|e| panic!("Cargo.lock: {e}"));
    let mut lines = lock.lines();
    lines.find(|l| *l == "name = \"mysql_async\"").unwrap_or_else(|| panic!("no mysql_async in Cargo.lock"));
    let v = lines.next().and_then(|l| l.strip_prefix("version = \"")).and_then(|v| v.strip_suffix('"'));
    v.unwrap_or_else(|| panic!("no mysql_async version in Cargo.lock")).to_string()
}

async fn ma_connect(port: u16, user: &str, schema: &str) -> Result<Conn, String> {
    let opts = async_opts(port, user, schema, PASSWORD, &mariadb().certs);
    // A panic inside the client (as an unsupported auth switch once caused) is a failure too.
    tokio::spawn(Conn::new(opts)).await.map_err(|e| format!("panicked: {e}"))?.map_err(|e| e.to_string())
}

async fn ma_first<T: FromRow + Send + 'static>(conn: &mut Conn, sql: &str) -> Result<T, String> {
    let v: Option<T> = conn.query_first(sql).await.map_err(|e| e.to_string())?;
    v.ok_or_else(|| format!("{sql}: no row"))
}

async fn mysql_async_probe(route: Route, acc: &Accounts, f: Feature) -> Outcome {
    let r = match f {
        Feature::Tls12 => {
            return Outcome::NotApplicable("no option to cap TLS at 1.2, and flexgate has no maximum".into());
        }
        Feature::Tls13 => {
            async {
                let mut c = ma_connect(route.p13, &acc.tls.0, &acc.tls.1).await?;
                let n: i64 = ma_first(&mut c, "SELECT 40 + 2").await?;
                c.disconnect().await.map_err(|e| e.to_string())?;
                if n == 42 { Ok(String::new()) } else { Err(format!("SELECT 40 + 2 gave {n}")) }
            }
            .await
        }
        Feature::Native | Feature::Ed25519 => {
            async {
                let (user, schema) =
                    if f == Feature::Native { acc.native.clone() } else { (acc.ed.clone(), String::new()) };
                let mut c = ma_connect(route.p12, &user, &schema).await?;
                let who: String = ma_first(&mut c, "SELECT CURRENT_USER()").await?;
                c.disconnect().await.map_err(|e| e.to_string())?;
                if who == format!("{user}@%") { Ok(String::new()) } else { Err(format!("logged in as {who}")) }
            }
            .await
        }
        Feature::ChangeUser => {
            async {
                let mut c = ma_connect(route.p12, &acc.native.0, &acc.native.1).await?;
                let (target, target_db) = &acc.target;
                let to = ChangeUserOpts::new()
                    .with_user(Some(target.clone()))
                    .with_pass(Some(PASSWORD.to_owned()))
                    .with_db_name(Some(target_db.clone()));
                c.change_user(to).await.map_err(|e| e.to_string())?;
                let (who, schema): (String, String) = ma_first(&mut c, "SELECT CURRENT_USER(), DATABASE()").await?;
                c.disconnect().await.map_err(|e| e.to_string())?;
                if who == format!("{target}@%") && &schema == target_db {
                    Ok(String::new())
                } else {
                    Err(format!("{who} in {schema}"))
                }
            }
            .await
        }
        Feature::Kill => mysql_async_kill(route, acc).await,
        Feature::Big => {
            async {
                let opts = mysql_async::OptsBuilder::from_opts(async_opts(
                    route.p12,
                    &acc.native.0,
                    &acc.native.1,
                    PASSWORD,
                    &mariadb().certs,
                ))
                .max_allowed_packet(Some(64 * 1024 * 1024));
                let mut c = Conn::new(opts).await.map_err(|e| e.to_string())?;
                let data = big_payload();
                c.query_drop("DROP TABLE IF EXISTS big; CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
                    .await
                    .map_err(|e| e.to_string())?;
                c.exec_drop("INSERT INTO big VALUES (1, ?)", (data.as_bytes(),)).await.map_err(|e| e.to_string())?;
                let stored: String = ma_first(&mut c, "SELECT SHA2(b, 256) FROM big").await?;
                let back: Vec<u8> = ma_first(&mut c, "SELECT b FROM big").await?;
                c.disconnect().await.map_err(|e| e.to_string())?;
                if stored != sha256_hex(data.as_bytes()) {
                    Err("the server stored other bytes".into())
                } else if back != data.as_bytes() {
                    Err(format!("{} other bytes back", back.len()))
                } else {
                    Ok(String::new())
                }
            }
            .await
        }
        Feature::CachingSha2 => unreachable!("not probed"),
    };
    match r {
        Ok(d) => Outcome::Pass(d),
        Err(e) => Outcome::Fail(e),
    }
}

/// mysql_async: `KILL <conn.id()>` ends the other connection; `KILL QUERY <conn.id()>` cuts
/// its `SELECT SLEEP(30)` short.
async fn mysql_async_kill(route: Route, acc: &Accounts) -> Result<String, String> {
    let (user, schema) = &acc.native;
    let mut a = ma_connect(route.p12, user, schema).await?;
    let mut b = ma_connect(route.p12, user, schema).await?;
    b.query_drop(format!("KILL {}", a.id())).await.map_err(|e| e.to_string())?;
    if a.query_drop("SELECT 1").await.is_ok() {
        return Err("still answers after KILL".into());
    }
    let mut a = ma_connect(route.p12, user, schema).await?;
    let server_id: u32 = ma_first(&mut a, "SELECT CONNECTION_ID()").await?;
    let id = a.id();
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let r = a.query_drop("SELECT SLEEP(30)").await;
        (r.err().map(|e| e.to_string()), started.elapsed(), a)
    });
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {server_id} AND INFO LIKE 'SELECT SLEEP(30)%'"
        );
        if ma_first::<u64>(&mut b, &sql).await? == 1 {
            break;
        }
        if Instant::now() > until {
            return Err("the SLEEP never started".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.query_drop(format!("KILL QUERY {id}")).await.map_err(|e| e.to_string())?;
    let (answer, took, mut a) = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .map_err(|_| "KILL QUERY did not end the SLEEP".to_string())?
        .map_err(|e| e.to_string())?;
    if took >= Duration::from_secs(10) {
        return Err(format!("KILL QUERY took {took:?}"));
    }
    let one: i64 = ma_first(&mut a, "SELECT 1").await?;
    a.disconnect().await.map_err(|e| e.to_string())?;
    b.disconnect().await.map_err(|e| e.to_string())?;
    if one == 1 { Ok(format!("{answer:?} after {took:?}")) } else { Err("no answer after KILL QUERY".into()) }
}

/// Runs `features` with `client` on `route`.
async fn probe(client: Client, route: Route, acc: &Accounts, features: &[Feature]) -> Vec<(Feature, Outcome)> {
    match client {
        Client::Cli | Client::MysqlAsync => {
            let mut out = Vec::new();
            for &f in features {
                let o = if client == Client::Cli {
                    cli_probe(route, acc, f).await
                } else {
                    mysql_async_probe(route, acc, f).await
                };
                out.push((f, o));
            }
            out
        }
        _ => match python(client, route, acc, features).await {
            Ok((_, outcomes)) => outcomes,
            Err(why) => features.iter().map(|&f| (f, Outcome::NotApplicable(why.clone()))).collect(),
        },
    }
}

struct Row {
    client: Client,
    version: String,
    cells: Vec<Cell>,
}

/// One client's row, with every problem that must fail the test.
async fn row(client: Client, p12: &EventLog, p13: &EventLog, caching_sha2: &Cell) -> (Row, Vec<String>) {
    let db = mariadb();
    let acc = Accounts::new(db);
    let via = Route { p12: p12.proxy.port(), p13: p13.proxy.port() };
    let direct = Route { p12: db.port, p13: db.port };
    let probed: Vec<Feature> = Feature::ALL.into_iter().filter(|&f| f != Feature::CachingSha2).collect();
    let started = Instant::now();
    let (version, outcomes) = match client {
        Client::Cli => (cli_version(), probe(client, via, &acc, &probed).await),
        Client::MysqlAsync => (mysql_async_version(), probe(client, via, &acc, &probed).await),
        _ => match python(client, via, &acc, &probed).await {
            Ok(r) => r,
            Err(why) => {
                let cells = Feature::ALL.iter().map(|_| Cell::Na(why.clone())).collect();
                return (Row { client, version: "-".into(), cells }, Vec::new());
            }
        },
    };
    let failed: Vec<Feature> =
        outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Fail(_))).map(|&(f, _)| f).collect();
    let again = if failed.is_empty() { Vec::new() } else { probe(client, direct, &acc, &failed).await };
    let mut problems = Vec::new();
    let mut cells = Vec::new();
    for f in Feature::ALL {
        if f == Feature::CachingSha2 {
            cells.push(caching_sha2.clone());
            continue;
        }
        let outcome = outcomes.iter().find(|(g, _)| *g == f).map(|(_, o)| o.clone());
        let what = format!("{} {}", client.name(), f.title());
        let cell = match outcome {
            Some(Outcome::Pass(detail)) => {
                eprintln!("{what}: yes {detail}");
                if let Err(e) = flexgate_agrees(f, &acc, p12, p13).await {
                    problems.push(format!("{what}: the client passed but {e}"));
                }
                Cell::Yes
            }
            Some(Outcome::NotApplicable(why)) => Cell::Na(reason(&acc, &why)),
            Some(Outcome::Fail(error)) => {
                let direct = again.iter().find(|(g, _)| *g == f).map(|(_, o)| o.clone());
                eprintln!("{what}: fails through flexgate ({error}); directly: {direct:?}");
                if let Some(Outcome::Pass(_)) = direct {
                    problems.push(format!("{what}: works against MariaDB directly but not through flexgate: {error}"));
                }
                Cell::No(reason(&acc, &error))
            }
            None => {
                problems.push(format!("{what}: not probed"));
                Cell::No("not probed".into())
            }
        };
        cells.push(cell);
    }
    eprintln!("{}: {:?}", client.name(), started.elapsed());
    (Row { client, version, cells }, problems)
}

fn table(server: &str, rows: &[Row]) -> String {
    let mut t = format!(
        "Produced by `cargo test --test it compat::`, which runs each client through flexgate in front\n\
         of MariaDB server {server} (a \"no\" also fails straight against MariaDB);\n\
         `FLEXGATE_UPDATE_README=1 cargo test --test it compat::` rewrites it.\n\n"
    );
    let titles: Vec<&str> = Feature::ALL.iter().map(|f| f.title()).collect();
    t.push_str(&format!("| Client | Version | {} |\n", titles.join(" | ")));
    t.push_str(&format!("|{}\n", " --- |".repeat(titles.len() + 2)));
    for r in rows {
        let cells: Vec<String> = r.cells.iter().map(ToString::to_string).collect();
        t.push_str(&format!("| {} | {} | {} |\n", r.client.name(), r.version, cells.join(" | ")));
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn client_compatibility_table_matches_the_readme() {
    let started = Instant::now();
    let db = mariadb();
    let server = db.root_sql("SELECT VERSION()").trim().to_string();
    let sha2 =
        db.root_sql("SELECT COUNT(*) FROM information_schema.ALL_PLUGINS WHERE PLUGIN_NAME LIKE 'caching_sha2%'");
    assert_eq!(sha2.trim(), "0", "MariaDB {server} has caching_sha2_password: give its column real probes");
    let caching_sha2 = Cell::Na("MariaDB has no caching_sha2_password".into());
    let p12 = EventLog::start("1.2").await;
    let p13 = EventLog::start("1.3").await;

    let [cli, py, pure, cext, rust] = Client::ALL.map(|c| row(c, &p12, &p13, &caching_sha2));
    let (cli, py, pure, cext, rust) = tokio::join!(cli, py, pure, cext, rust);
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for (row, p) in [cli, py, pure, cext, rust] {
        rows.push(row);
        problems.extend(p);
    }
    let table = table(&server, &rows);
    eprintln!("{table}\ncompat: {:?}", started.elapsed());
    assert!(problems.is_empty(), "flexgate fails what the client does:\n{}", problems.join("\n"));

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (head, rest) = readme.split_once(BEGIN).unwrap_or_else(|| panic!("README.md has no {BEGIN}"));
    let (current, tail) = rest.split_once(END).unwrap_or_else(|| panic!("README.md has no {END}"));
    let want = format!("\n{table}");
    if std::env::var_os("FLEXGATE_UPDATE_README").is_some_and(|v| v == "1") {
        std::fs::write(path, format!("{head}{BEGIN}{want}{END}{tail}")).unwrap_or_else(|e| panic!("{path}: {e}"));
        return;
    }
    // Debian's point releases differ between machines (10.11.14 here, 10.11.19 there): the
    // results must match; the MariaDB version the README names is the one it was made with.
    if current != want {
        eprintln!("compat: README.md's table was produced with another MariaDB build; comparing the results only");
    }
    assert!(
        without_mariadb_versions(current) == without_mariadb_versions(&want),
        "README.md's client compatibility table is not what this run produced; rerun with \
         FLEXGATE_UPDATE_README=1 cargo test --test it compat:: to rewrite it.\n--- README.md:\n{current}\n--- this run:\n{want}"
    );
}

/// The table with every MariaDB build (`10.11.19-MariaDB-0+deb12u1`, `10.11.19-MariaDB`)
/// replaced by a placeholder.
fn without_mariadb_versions(table: &str) -> String {
    table
        .lines()
        .map(|line| {
            line.split(' ').map(|w| if w.contains("-MariaDB") { "<mariadb>" } else { w }).collect::<Vec<_>>().join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
