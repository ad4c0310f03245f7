//! `KILL` through flexgate: clients name connections by the id flexgate greeted them with
//! (>= 2^31), and flexgate rewrites it to the server's thread id. Real thread ids pass
//! untouched, and the server still decides who may kill what.

use std::process::Stdio;
use std::time::{Duration, Instant};

use flexgate::events::{LoginKind, LoginOutcome};
use flexgate::registry::SYNTHETIC_BASE;
use mysql_async::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;

/// What a query's answer was, comparably: `ERROR <code>` or the value returned.
fn outcome(r: &Result<Option<i64>, mysql_async::Error>) -> String {
    match r {
        Ok(v) => format!("value {v:?}"),
        Err(mysql_async::Error::Server(e)) => format!("ERROR {}", e.code),
        Err(e) => format!("client error {e}"),
    }
}

/// The server's error code of a failed statement; panics if it did not fail that way.
fn server_code(r: Result<(), mysql_async::Error>, what: &str) -> u16 {
    match r {
        Err(mysql_async::Error::Server(e)) => e.code,
        other => panic!("{what}: expected a server error, got {other:?}"),
    }
}

async fn connection_id(conn: &mut mysql_async::Conn) -> u32 {
    let id: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap_or_else(|e| panic!("{e}"));
    id.unwrap_or_else(|| panic!("no CONNECTION_ID()"))
}

/// Waits (bounded) until the server runs `SELECT SLEEP(30)` on thread `server_id`, as seen
/// by `observer` (the same account sees its own threads).
async fn wait_sleeping(observer: &mut mysql_async::Conn, server_id: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let n: Option<u64> = observer
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO LIKE 'SELECT SLEEP(30)%'",
                (server_id,),
            )
            .await
            .unwrap_or_else(|e| panic!("processlist: {e}"));
        if n == Some(1) {
            return;
        }
        assert!(Instant::now() < until, "thread {server_id} never ran SELECT SLEEP(30)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `SELECT SLEEP(30)` on `a` (server thread `server_id`) and, once the server runs it,
/// sends `kill` on `b`, which must succeed. Returns `a`'s answer, how long it took, and `a`.
async fn sleep_then_kill(
    mut a: mysql_async::Conn,
    b: &mut mysql_async::Conn,
    server_id: u32,
    kill: &str,
) -> (String, Duration, mysql_async::Conn) {
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let r: Result<Option<i64>, _> = a.query_first("SELECT SLEEP(30)").await;
        (outcome(&r), started.elapsed(), a)
    });
    wait_sleeping(b, server_id).await;
    b.query_drop(kill).await.unwrap_or_else(|e| panic!("{kill}: {e}"));
    tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .unwrap_or_else(|_| panic!("the sleeping query did not end after {kill}"))
        .unwrap_or_else(|e| panic!("join: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_query_with_the_greeting_id_interrupts_only_the_query() {
    let db = mariadb();
    let (user, schema) = db.user();

    // The reference: the same against MariaDB directly.
    let direct = || mysql_async::Conn::new(async_opts(db.port, &user, &schema, PASSWORD, &db.certs));
    let a = direct().await.unwrap_or_else(|e| panic!("direct: {e}"));
    let mut b = direct().await.unwrap_or_else(|e| panic!("direct: {e}"));
    let id = a.id();
    let (want, _, a) = sleep_then_kill(a, &mut b, id, &format!("KILL QUERY {id}")).await;
    assert_eq!(want, "ERROR 1317", "MariaDB's answer to a killed SLEEP() changed");
    drop((a, b));

    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut a = connect(&proxy, &user, &schema, &db.certs).await;
    let mut b = connect(&proxy, &user, &schema, &db.certs).await;
    let id = a.id();
    assert!(id >= SYNTHETIC_BASE, "the greeting's id {id} is not one of flexgate's");
    let server_id = connection_id(&mut a).await;
    assert_eq!(proxy.registry.server_id(id), Some(server_id));
    assert_ne!(server_id, id);

    let (got, took, mut a) = sleep_then_kill(a, &mut b, server_id, &format!("KILL QUERY {id}")).await;
    assert_eq!(got, want, "through flexgate, after {took:?}");
    assert!(took < Duration::from_secs(10), "the query was not cut short: {took:?}");
    // KILL QUERY ends the statement, not the connection.
    let one: Option<i64> = a.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("A after KILL QUERY: {e}"));
    assert_eq!(one, Some(1));
    assert_eq!(connection_id(&mut a).await, server_id, "still the same server connection");
    a.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    b.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_connection_with_the_greeting_id_ends_it() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut a = connect(&proxy, &user, &schema, &db.certs).await;
    let mut b = connect(&proxy, &user, &schema, &db.certs).await;
    let id = a.id();
    assert!(id >= SYNTHETIC_BASE, "{id}");
    let server_id = connection_id(&mut a).await;

    // Control: a synthetic id that names no session passes untouched, and the server does
    // not know it.
    let unknown = id + 1000;
    assert_eq!(server_code(b.query_drop(format!("KILL CONNECTION {unknown}")).await, "unknown id"), 1094);

    b.query_drop(format!("KILL CONNECTION {id}")).await.unwrap_or_else(|e| panic!("KILL CONNECTION {id}: {e}"));
    let after: Result<Option<i64>, _> = a.query_first("SELECT 1").await;
    assert!(after.is_err(), "A still answers after KILL CONNECTION: {after:?}");
    // flexgate's session ended with the server's, and released the id...
    eventually("A's id released", || proxy.registry.server_id(id).is_none()).await;
    // ...so a second KILL of it is the server's "unknown thread" again.
    assert_eq!(server_code(b.query_drop(format!("KILL {id}")).await, "stale id"), 1094);
    let left: Option<u64> = b
        .exec_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", (server_id,))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, Some(0), "the server thread survived");
    b.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// PyMySQL's `kill()` sends COM_PROCESS_KILL with the greeting's `thread_id()`.
#[tokio::test(flavor = "multi_thread")]
async fn com_process_kill_with_the_greeting_id() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let body = r#"
s = {'ca': ca}
a = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl=s)
b = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl=s)
cur = a.cursor()
cur.execute('SELECT CONNECTION_ID()')
print('ids', a.thread_id(), cur.fetchone()[0])
b.kill(a.thread_id())
print('kill ok')
try:
    a.cursor().execute('SELECT 1')
    print('a alive')
except pymysql.err.MySQLError as e:
    print('a dead', type(e).__name__)
c = b.cursor()
c.execute('SELECT 2')
print('b', c.fetchone()[0])
"#;
    // The reference, directly against MariaDB.
    let want = pymysql(db.port, &user, &schema, PASSWORD, &db.certs, body).await;
    let got = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    let lines: Vec<&str> = got.lines().collect();
    let ids: Vec<u32> = lines
        .first()
        .and_then(|l| l.strip_prefix("ids "))
        .map(|l| l.split(' ').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let [greeting_id, server_id] = ids[..] else { panic!("no ids in:\n{got}") };
    assert!(greeting_id >= SYNTHETIC_BASE, "{got}");
    assert!(server_id < SYNTHETIC_BASE, "{got}");
    assert_eq!(lines[1..], ["kill ok", "a dead OperationalError", "b 2"], "through flexgate:\n{got}");
    assert_eq!(want.lines().skip(1).collect::<Vec<_>>(), lines[1..], "directly:\n{want}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_query_with_a_real_thread_id_passes_untouched() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut a = connect(&proxy, &user, &schema, &db.certs).await;
    let mut b = connect(&proxy, &user, &schema, &db.certs).await;
    let real = connection_id(&mut a).await;
    assert_ne!(real, a.id(), "CONNECTION_ID() is the server's, the greeting's id is flexgate's");
    assert!(real < SYNTHETIC_BASE);
    // SHOW PROCESSLIST lists the server's ids, which is what a user copies into KILL.
    let listed: Vec<u64> = b
        .query_map("SHOW PROCESSLIST", |row: mysql_async::Row| row.get::<u64, _>(0).unwrap_or_default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.contains(&u64::from(real)), "{listed:?}");
    assert!(!listed.contains(&u64::from(a.id())), "{listed:?}");

    let (got, took, mut a) = sleep_then_kill(a, &mut b, real, &format!("KILL QUERY {real}")).await;
    assert_eq!(got, "ERROR 1317", "after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let one: Option<i64> = a.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("A after KILL QUERY: {e}"));
    assert_eq!(one, Some(1));
    a.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    b.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// The CLI under a pty: type a long query, press Ctrl-C. The CLI opens a second connection and
/// sends `KILL QUERY <mysql_thread_id()>`, the id of flexgate's greeting.
///
/// The driver prints `ready <connection id from the banner>` once the query is sent, waits for `go` on stdin, sends Ctrl-C,
/// prints `interrupted <seconds>` (or `not interrupted`), checks the session still answers,
/// and ends with the whole transcript after a `---` line. Every wait is bounded.
const PTY_DRIVER: &str = r#"
import os, pty, re, sys, time, select, signal
pid, fd = pty.fork()
if pid == 0:
    os.environ['TERM'] = 'dumb'
    os.execvp(sys.argv[1], sys.argv[1:])
buf = b''
def read_until(pat, timeout):
    global buf
    end = time.time() + timeout
    while pat not in buf:
        left = end - time.time()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                d = os.read(fd, 4096)
            except OSError:
                return False
            if not d:
                return False
            buf += d
    return True
def finish(code):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    print('---')
    print(buf.decode(errors='replace'), flush=True)
    sys.exit(code)
if not read_until(b']> ', 20):
    print('no prompt', flush=True); finish(0)
os.write(fd, b'SELECT SLEEP(30);\r')
if not read_until(b'SLEEP(30);', 5):
    print('no echo', flush=True); finish(0)
m = re.search(rb'connection id is (\d+)', buf)
print('ready', m.group(1).decode() if m else 'no-id', flush=True)
r, _, _ = select.select([sys.stdin], [], [], 20)
if not r or sys.stdin.readline().strip() != 'go':
    print('no go', flush=True); finish(0)
t = time.time()
os.write(fd, b'\x03')
if read_until(b'interrupted', 15):
    print('interrupted %.2f' % (time.time() - t), flush=True)
else:
    print('not interrupted', flush=True); finish(0)
os.write(fd, b'SELECT 40+2;\r')
print('after', 'ok' if read_until(b'42 |', 10) else 'missing', flush=True)
os.write(fd, b'quit\r')
read_until(b'Bye', 5)
finish(0)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn cli_ctrl_c_kills_the_query_through_flexgate() {
    require_tool("mariadb", "apt-get install -y mariadb-client");
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut observer = connect(&proxy, &user, &schema, &db.certs).await;
    let cli_login = |e: &flexgate::events::LoginEvent| {
        e.kind == LoginKind::Connect
            && e.user.as_deref() == Some(user.as_str())
            && e.outcome == LoginOutcome::Ok
            && e.program.as_deref().is_some_and(|p| p.starts_with("mysql") || p.starts_with("mariadb"))
    };

    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PTY_DRIVER, "mariadb", "--no-defaults", "-h", "127.0.0.1", "--connect-timeout=10"])
        .arg(format!("-P{}", proxy.port()))
        .arg(format!("-u{user}"))
        .arg(format!("-p{PASSWORD}"))
        .arg(format!("--database={schema}"))
        .arg("--ssl-verify-server-cert")
        .arg(format!("--ssl-ca={}", db.certs.ca.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut driver = cmd.spawn().unwrap_or_else(|e| panic!("python3: {e}"));
    let mut stdin = driver.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let mut lines = BufReader::new(driver.stdout.take().unwrap_or_else(|| panic!("no stdout"))).lines();
    let mut transcript = Vec::new();
    let mut next_line = async || {
        let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the pty driver is silent"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        transcript.push(line.clone());
        line
    };

    let first = next_line().await;
    let greeted: u32 = first
        .strip_prefix("ready ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the CLI did not start its query: {first}"));
    assert!(greeted >= SYNTHETIC_BASE, "the CLI was greeted with {greeted}, not one of flexgate's ids");
    proxy.next_event("the CLI's login", cli_login).await;
    // Ctrl-C only once the server runs the query.
    let running: u32 = {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<u32> = observer
                .exec(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND INFO LIKE 'SELECT SLEEP(30)%'",
                    (&user,),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if let [id] = ids[..] {
                break id;
            }
            assert!(Instant::now() < until, "the server never ran the CLI's SELECT SLEEP(30)");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The sleeping thread is the CLI's, the one its greeting id names.
    assert_eq!(proxy.registry.server_id(greeted), Some(running));
    let pressed = Instant::now();
    stdin.write_all(b"go\n").await.unwrap_or_else(|e| panic!("{e}"));
    stdin.flush().await.unwrap_or_else(|e| panic!("{e}"));
    // The CLI's second connection, which carries the KILL.
    proxy.next_event("the CLI's kill connection", cli_login).await;
    let verdict = next_line().await;
    let took = pressed.elapsed();
    let after = next_line().await;
    while next_line().await != "---" {}
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut all = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    })
    .await
    .unwrap_or_else(|_| panic!("the pty driver did not finish"));
    let _ = driver.wait().await;
    let context = format!("driver: {transcript:?}\nCLI:\n{rest}");

    assert!(verdict.starts_with("interrupted "), "{context}");
    assert!(took < Duration::from_secs(10), "Ctrl-C took {took:?}\n{context}");
    assert!(rest.contains("ERROR 1317 (70100): Query execution was interrupted"), "{context}");
    assert_eq!(after, "after ok", "the CLI's session did not go on\n{context}");
    eventually("the CLI's id released", || proxy.registry.server_id(greeted).is_none()).await;
    let still: Vec<u32> = observer
        .exec("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO LIKE 'SELECT SLEEP%'", (running,))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(still.is_empty(), "the SLEEP still runs: {still:?}");
    observer.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// The server still checks who may kill: flexgate's translation gives no one more rights.
#[tokio::test(flavor = "multi_thread")]
async fn only_what_the_server_allows_can_be_killed() {
    let db = mariadb();
    let (x, x_schema) = db.user();
    let (y, y_schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut victim = connect(&proxy, &y, &y_schema, &db.certs).await;
    let victim_id = victim.id();
    assert!(victim_id >= SYNTHETIC_BASE);
    let mut killer = connect(&proxy, &x, &x_schema, &db.certs).await;

    // 1095 rather than 1094 (unknown thread) shows that the id reached the server translated.
    for kill in [format!("KILL QUERY {victim_id}"), format!("KILL CONNECTION {victim_id}")] {
        let code = server_code(killer.query_drop(&kill).await, &kill);
        assert_eq!(code, 1095, "{kill}: expected 'You are not owner of thread'");
    }
    let one: Option<i64> = victim.query_first("SELECT 1").await.unwrap_or_else(|e| panic!("victim: {e}"));
    assert_eq!(one, Some(1), "the refused KILL must not have touched the victim");

    // Given the privilege (read at login), the same statement works.
    db.root_sql(&format!("GRANT CONNECTION ADMIN ON *.* TO '{x}'@'%'"));
    killer.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    let mut killer = connect(&proxy, &x, &x_schema, &db.certs).await;
    killer
        .query_drop(format!("KILL CONNECTION {victim_id}"))
        .await
        .unwrap_or_else(|e| panic!("KILL with CONNECTION ADMIN: {e}"));
    let after: Result<Option<i64>, _> = victim.query_first("SELECT 1").await;
    assert!(after.is_err(), "the victim survived: {after:?}");
    killer.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}
