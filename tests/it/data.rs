//! After login, traffic passes untouched: large packets, binary protocol, multi-statements and
//! LOAD DATA LOCAL all behave as they do against the server directly.

use aws_lc_rs::digest::{SHA256, digest};
use mysql_async::prelude::*;

use crate::harness::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_of_32_mib_round_trips_across_16_mib_packets() {
    blob_round_trips(ProxyConfig::to(mariadb())).await;
}

/// A 32 MiB BLOB in and out, through packets of 16 MiB and more; also run in server-greeting mode.
pub(crate) async fn blob_round_trips(cfg: ProxyConfig) {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = cfg.start(&db.certs).await;
    let opts = mysql_async::OptsBuilder::from_opts(async_opts(proxy.port(), &user, &schema, PASSWORD, &db.certs))
        .max_allowed_packet(Some(64 * 1024 * 1024));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap_or_else(|e| panic!("connect: {e}"));
    conn.query_drop("CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB)").await.unwrap_or_else(|e| panic!("{e}"));
    // Deterministic, incompressible-looking content; the length is not a multiple of anything.
    let len = 32 * 1024 * 1024 + 12_345;
    let mut data = Vec::with_capacity(len);
    let mut x: u32 = 0x1234_5678;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    let want = hex(digest(&SHA256, &data).as_ref());
    conn.exec_drop("INSERT INTO blobs VALUES (1, ?)", (data,)).await.unwrap_or_else(|e| panic!("insert: {e}"));
    let server_side: Option<String> =
        conn.query_first("SELECT SHA2(b, 256) FROM blobs WHERE id = 1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server_side.as_deref(), Some(want.as_str()), "the server stored different bytes");
    let back: Option<Vec<u8>> =
        conn.query_first("SELECT b FROM blobs WHERE id = 1").await.unwrap_or_else(|e| panic!("select: {e}"));
    let back = back.unwrap_or_else(|| panic!("no row"));
    assert_eq!(back.len(), len);
    assert_eq!(hex(digest(&SHA256, &back).as_ref()), want, "the client received different bytes");
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_use_the_binary_protocol() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(50), score DOUBLE, note TEXT NULL) DEFAULT CHARSET = utf8mb4",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let stmt = conn.prep("INSERT INTO t VALUES (?, ?, ?, ?)").await.unwrap_or_else(|e| panic!("{e}"));
    conn.exec_batch(
        &stmt,
        vec![(1, "ä-ö ✓", 1.5f64, None::<String>), (2, "two", -2.25, Some("n".to_string())), (3, "three", 0.0, None)],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(i32, String, f64, Option<String>)> = conn
        .exec("SELECT id, name, score, note FROM t WHERE id >= ? ORDER BY id", (1,))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rows,
        vec![
            (1, "ä-ö ✓".to_string(), 1.5, None),
            (2, "two".to_string(), -2.25, Some("n".to_string())),
            (3, "three".to_string(), 0.0, None)
        ]
    );
    conn.close(stmt).await.unwrap_or_else(|e| panic!("{e}"));
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_statements_return_every_result_set() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let mut conn = connect(&proxy, &user, &schema, &db.certs).await;
    let mut result = conn
        .query_iter("CREATE TABLE m (x INT); INSERT INTO m VALUES (1),(2),(3); SELECT SUM(x) FROM m; SELECT 'last'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sets: Vec<Vec<String>> = Vec::new();
    while !result.is_empty() {
        let rows: Vec<mysql_async::Row> = result.collect().await.unwrap_or_else(|e| panic!("{e}"));
        sets.push(rows.into_iter().filter_map(|r| r.get::<String, _>(0)).collect());
    }
    drop(result);
    assert_eq!(sets, vec![vec![], vec![], vec!["6".to_string()], vec!["last".to_string()]]);
    conn.disconnect().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn load_data_local_infile() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("rows.csv");
    // 400k rows (~6 MiB) take more than 256 packets, so the file's sequence ids wrap past 255
    // to 0: the relay must not mistake those packets for commands.
    let content: String = (1..=400_000).map(|i| format!("{i},row-{i}\n")).collect();
    std::fs::write(&file, content).unwrap_or_else(|e| panic!("{e}"));
    let mut c = cli(proxy.port(), &user, PASSWORD, &db.certs);
    c.args(["--local-infile=1", &format!("--database={schema}"), "-e"]).arg(format!(
        "CREATE TABLE l (id INT PRIMARY KEY, name VARCHAR(20)); \
         LOAD DATA LOCAL INFILE '{}' INTO TABLE l FIELDS TERMINATED BY ','; \
         SELECT COUNT(*), SUM(id), MAX(name) FROM l",
        file.display()
    ));
    let o = run(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "400000\t80000200000\trow-99999");
}

/// Commands written back to back before any answer is read: the relay sees several command
/// boundaries in one read, including a KILL of an id that is no session (passed unchanged),
/// and every answer comes back in order.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_commands_are_answered_in_order() {
    let db = mariadb();
    let (user, schema) = db.user();
    let proxy = ProxyConfig::to(db).start(&db.certs).await;
    let body = r#"import struct
c = pymysql.connect(host=host, port=port, user=user, password=pw, database=db, ssl={'ca': ca})
def packet(sql):
    p = b'\x03' + sql.encode()
    return struct.pack('<I', len(p))[:3] + b'\x00' + p
sqls = ['SELECT %d' % i for i in range(40)] + ['KILL QUERY 4294967295'] + ['SELECT %d' % i for i in range(40, 60)]
c._write_bytes(b''.join(packet(s) for s in sqls))
out = []
for s in sqls:
    c._next_seq_id = 1
    try:
        r = pymysql.connections.MySQLResult(c)
        r.read()
        out.append(str(r.rows[0][0]) if r.rows else 'ok')
    except pymysql.err.MySQLError as e:
        out.append('E%d' % e.args[0])
print(' '.join(out))
c.close()"#;
    let out = pymysql(proxy.port(), &user, &schema, PASSWORD, &db.certs, body).await;
    let want: Vec<String> =
        (0..40).map(|i| i.to_string()).chain(["E1094".to_string()]).chain((40..60).map(|i| i.to_string())).collect();
    assert_eq!(out.trim(), want.join(" "));
}
