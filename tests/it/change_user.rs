//! `COM_CHANGE_USER` through flexgate: the relay pauses, flexgate forwards the command with a
//! forced auth switch (the client scrambled over flexgate's nonce), relays the server's
//! exchange, publishes a `ChangeUser` login event, and resumes. `COM_RESET_CONNECTION` is
//! plain pass-through.

use flexgate::events::{LoginEvent, LoginKind, LoginOutcome};
use flexgate::registry::SYNTHETIC_BASE;
use mysql_async::prelude::*;
use mysql_async::{ChangeUserOpts, Conn};

use crate::harness::*;

fn to(user: &str, password: &str, schema: Option<&str>) -> ChangeUserOpts {
    ChangeUserOpts::new()
        .with_user(Some(user.to_owned()))
        .with_pass(Some(password.to_owned()))
        .with_db_name(schema.map(str::to_owned))
}

async fn current_user(conn: &mut Conn) -> String {
    let u: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap_or_else(|e| panic!("{e}"));
    u.unwrap_or_else(|| panic!("no CURRENT_USER()"))
}

/// mysql_async options with a connection attribute, so that the client announces
/// `CLIENT_CONNECT_ATTRS` (see `change_user_without_connect_attrs_as_mysql_async_sends_it`).
fn opts_with_attrs(port: u16, user: &str, schema: &str) -> mysql_async::Opts {
    let db = mariadb();
    mysql_async::OptsBuilder::from_opts(async_opts(port, user, schema, PASSWORD, &db.certs))
        .connect_attribute("program_name", "flexgate-it")
        .into()
}

async fn connect_with_attrs(port: u16, user: &str, schema: &str) -> Conn {
    Conn::new(opts_with_attrs(port, user, schema)).await.unwrap_or_else(|e| panic!("connect to {port}: {e}"))
}

fn change_user_event<'a>(user: &'a str) -> impl Fn(&LoginEvent) -> bool + 'a {
    move |e| e.kind == LoginKind::ChangeUser && e.user.as_deref() == Some(user)
}

#[tokio::test(flavor = "multi_thread")]
async fn change_user_to_a_native_password_account() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let (b, b_schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut conn = connect_with_attrs(proxy.port(), &a, &a_schema).await;
    let id = conn.id();
    assert!(id >= SYNTHETIC_BASE);
    let server_id = proxy.registry.server_id(id);
    assert!(server_id.is_some());
    assert_eq!(current_user(&mut conn).await, format!("{a}@%"));

    conn.change_user(to(&b, PASSWORD, Some(&b_schema))).await.unwrap_or_else(|e| panic!("change_user to {b}: {e}"));
    assert_eq!(current_user(&mut conn).await, format!("{b}@%"));
    let schema: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(schema.as_deref(), Some(b_schema.as_str()));
    let e = proxy.next_event("change-user to B", change_user_event(&b)).await;
    assert_eq!(e.outcome, LoginOutcome::Ok, "{e:?}");
    assert_eq!(e.plugin.as_deref(), Some("mysql_native_password"), "{e:?}");
    assert_eq!(e.database.as_deref(), Some(b_schema.as_str()), "{e:?}");
    // Same server connection: the greeting's id still names it.
    assert_eq!(proxy.registry.server_id(id), server_id);
    // And the relay carries on: B's privileges apply from now on.
    conn.query_drop("CREATE TABLE t (x INT)").await.unwrap_or_else(|e| panic!("B's schema: {e}"));
    let denied = conn.query_drop(format!("CREATE TABLE {a_schema}.t (x INT)")).await;
    assert!(matches!(&denied, Err(mysql_async::Error::Server(e)) if e.code == 1142), "{denied:?}");
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// A raw `COM_CHANGE_USER` from PyMySQL, with PyMySQL's own auth-switch handling
/// (`_process_auth`, which does `client_ed25519` with PyNaCl). PyMySQL has no public
/// change-user call, and mysql_async is built here without its `client_ed25519` feature (it
/// panics on an ed25519 switch). `{target}` and `{target_pw}` name the account to change to.
const PY_CHANGE_USER: &str = r#"
import struct
from pymysql import _auth
def change_user(conn, user, password, database=''):
    conn.user, conn.password = user, password.encode()
    auth = _auth.scramble_native_password(conn.password, conn.salt)
    p = user.encode() + b'\0' + bytes([len(auth)]) + auth + database.encode() + b'\0'
    # charset, plugin, and an empty attribute block (CLIENT_CONNECT_ATTRS is on)
    p += struct.pack('<H', 45) + b'mysql_native_password\0' + b'\0'
    conn._execute_command(0x11, p)
    pkt = conn._read_packet()
    if pkt.is_auth_switch_request():
        pkt.read_uint8()
        plugin = pkt.read_string()
        print('switch', plugin.decode())
        pkt = conn._process_auth(plugin, pkt)
    print('ok' if pkt.is_ok_packet() else 'unexpected')
c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})
change_user(c, {target:?}, {target_pw:?})
cur = c.cursor()
cur.execute('SELECT CURRENT_USER()')
print(cur.fetchone()[0])
"#;

#[tokio::test(flavor = "multi_thread")]
async fn change_user_to_an_ed25519_account() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let ed = unique("ed");
    db.root_sql(&format!("CREATE USER '{ed}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}');"));
    let body =
        PY_CHANGE_USER.replace("{target:?}", &format!("{ed:?}")).replace("{target_pw:?}", &format!("{PASSWORD:?}"));
    let want = format!("switch client_ed25519\nok\n{ed}@%");

    let direct = pymysql(db.port, &a, &a_schema, PASSWORD, &db.certs, &body).await;
    assert_eq!(direct.trim(), want, "directly against MariaDB");

    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let got = pymysql(proxy.port(), &a, &a_schema, PASSWORD, &db.certs, &body).await;
    assert_eq!(got.trim(), want, "through flexgate");
    let e = proxy.next_event("change-user to the ed25519 account", change_user_event(&ed)).await;
    assert_eq!(e.outcome, LoginOutcome::Ok, "{e:?}");
    assert_eq!(e.plugin.as_deref(), Some("client_ed25519"), "{e:?}");

    // A wrong password the same way: the server's 1045.
    let wrong = PY_CHANGE_USER.replace("{target:?}", &format!("{ed:?}")).replace("{target_pw:?}", "'nope'");
    let got = pymysql(proxy.port(), &a, &a_schema, PASSWORD, &db.certs, &wrong).await;
    assert!(got.contains("switch client_ed25519\nERR 1045 Access denied"), "{got}");
    let e = proxy.next_event("failed change-user to the ed25519 account", change_user_event(&ed)).await;
    assert_eq!(e.outcome, LoginOutcome::ServerRefused { code: 1045 }, "{e:?}");
}

/// What a connection is after a failed change-user: its error code, then the answer to a
/// query (or the error it gets instead).
async fn after_failed_change_user(mut conn: Conn, b: &str) -> (u16, String) {
    let r = conn.change_user(to(b, "wrong-password", None)).await;
    let code = match r {
        Err(mysql_async::Error::Server(e)) => e.code,
        other => panic!("change_user with a wrong password: {other:?}"),
    };
    let after: Result<Option<(String, Option<String>)>, _> =
        conn.query_first("SELECT CURRENT_USER(), DATABASE()").await;
    let state = match after {
        Ok(Some((user, schema))) => format!("answers as {user} in {schema:?}"),
        Ok(None) => "no row".to_string(),
        Err(mysql_async::Error::Server(e)) => format!("ERROR {}", e.code),
        Err(e) => format!("fails: {}", e.to_string().split(':').next().unwrap_or_default()),
    };
    (code, state)
}

/// Differential: the same failed change-user directly against MariaDB and through flexgate.
/// (MariaDB 10.11 answers 1045 and keeps the connection, still logged in as the old account
/// in the old schema.)
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_on_change_user_behaves_as_mariadb_does() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let (b, _) = db.user();
    let direct = connect_with_attrs(db.port, &a, &a_schema).await;
    let want = after_failed_change_user(direct, &b).await;
    assert_eq!(want.0, 1045, "MariaDB's code for a wrong password");

    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let conn = connect_with_attrs(proxy.port(), &a, &a_schema).await;
    let got = after_failed_change_user(conn, &b).await;
    assert_eq!(got, want, "through flexgate vs directly");
    let e = proxy.next_event("failed change-user", change_user_event(&b)).await;
    assert_eq!(e.outcome, LoginOutcome::ServerRefused { code: 1045 }, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_passes_through() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut conn = connect(&proxy, &a, &a_schema, &db.certs).await;
    let server_id: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap_or_else(|e| panic!("{e}"));
    conn.query_drop("SET @kept = 42").await.unwrap_or_else(|e| panic!("{e}"));
    conn.query_drop("CREATE TEMPORARY TABLE tmp (x INT)").await.unwrap_or_else(|e| panic!("{e}"));

    assert!(conn.reset().await.unwrap_or_else(|e| panic!("COM_RESET_CONNECTION: {e}")), "reset not supported?");
    // The server reset the session: user variables and temporary tables are gone...
    let kept: Option<Option<i64>> = conn.query_first("SELECT @kept").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept, Some(None), "the reset did not reach the server");
    let tmp = conn.query_drop("SELECT * FROM tmp").await;
    assert!(matches!(&tmp, Err(mysql_async::Error::Server(e)) if e.code == 1146), "{tmp:?}");
    // ...and the session goes on, as the same account on the same server connection.
    assert_eq!(current_user(&mut conn).await, format!("{a}@%"));
    let again: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, server_id);
    assert_eq!(proxy.registry.server_id(conn.id()), server_id);
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

/// In server-greeting mode the client scrambled over the server's own nonce, and flexgate
/// forwards the command as it came.
#[tokio::test(flavor = "multi_thread")]
async fn change_user_in_server_greeting_mode() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let (b, b_schema) = db.user();
    let proxy = ProxyConfig::to(db).server_greeting().start(&db.certs).await;
    let mut conn = connect_with_attrs(proxy.port(), &a, &a_schema).await;
    let server_id: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server_id, Some(conn.id()), "the server's greeting and id are relayed");

    conn.change_user(to(&b, PASSWORD, Some(&b_schema))).await.unwrap_or_else(|e| panic!("change_user to {b}: {e}"));
    assert_eq!(current_user(&mut conn).await, format!("{b}@%"));
    let e = proxy.next_event("change-user to B", change_user_event(&b)).await;
    assert_eq!(e.outcome, LoginOutcome::Ok, "{e:?}");

    let r = conn.change_user(to(&a, "wrong-password", None)).await;
    assert!(matches!(&r, Err(mysql_async::Error::Server(e)) if e.code == 1045), "{r:?}");
    let e = proxy.next_event("failed change-user back to A", change_user_event(&a)).await;
    assert_eq!(e.outcome, LoginOutcome::ServerRefused { code: 1045 }, "{e:?}");
    conn.disconnect().await.ok();
}

/// mysql_async by default logs in without `CLIENT_CONNECT_ATTRS`, yet its `COM_CHANGE_USER`
/// always ends with an (empty) attribute block: one byte the server does not read. MariaDB
/// ignores it and changes the user; flexgate must too, in both greeting modes.
#[tokio::test(flavor = "multi_thread")]
async fn change_user_without_connect_attrs_as_mysql_async_sends_it() {
    let db = mariadb();
    let (a, a_schema) = db.user();
    let (b, b_schema) = db.user();
    let mut direct = Conn::new(async_opts(db.port, &a, &a_schema, PASSWORD, &db.certs))
        .await
        .unwrap_or_else(|e| panic!("direct: {e}"));
    direct.change_user(to(&b, PASSWORD, Some(&b_schema))).await.unwrap_or_else(|e| panic!("directly: {e}"));
    assert_eq!(current_user(&mut direct).await, format!("{b}@%"), "directly");
    direct.disconnect().await.unwrap_or_else(|e| panic!("{e}"));

    for config in [ProxyConfig::to(db), ProxyConfig::to(db).server_greeting()] {
        let mode = config.greeting;
        let proxy = config.start(&db.certs).await;
        let mut conn = connect(&proxy, &a, &a_schema, &db.certs).await;
        conn.change_user(to(&b, PASSWORD, Some(&b_schema)))
            .await
            .unwrap_or_else(|e| panic!("{mode} greeting: change_user without CLIENT_CONNECT_ATTRS: {e}"));
        assert_eq!(current_user(&mut conn).await, format!("{b}@%"), "{mode} greeting");
        let e = proxy.next_event("change-user to B", change_user_event(&b)).await;
        assert_eq!(e.outcome, LoginOutcome::Ok, "{mode} greeting: {e:?}");
        conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
