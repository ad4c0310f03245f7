# One Python client's row of the compatibility table (tests/it/compat.rs).
#
# argv[1] is JSON: impl ("pymysql", "connector-pure" or "connector-c"), host, ca, pw, the
# ports p12 (a listener whose floor is TLS 1.2), p13 (floor TLS 1.3) and port (everything
# else), the accounts, the features to run and big_len. Prints one JSON object per line:
# first {"version": ...} (or {"unavailable": reason}), then {"feature", "ok", "detail"}.
import json
import sys

a = json.loads(sys.argv[1])
impl = a["impl"]

if impl == "connector-c":
    # The C extension bundles a newer OpenSSL than the system's; it loads only if it is
    # imported before Python's ssl module has loaded the system's libssl.
    try:
        import _mysql_connector  # noqa: F401
    except ImportError as e:
        print(json.dumps({"unavailable": "C extension not importable: %s" % str(e).split(":")[0]}))
        sys.exit(0)

import hashlib
import importlib.metadata
import os
import ssl
import threading
import time


def emit(**kw):
    print(json.dumps(kw), flush=True)


if impl == "pymysql":
    import pymysql

    Error = pymysql.err.MySQLError
    emit(version=importlib.metadata.version("PyMySQL"))

    def connect(port, user, db=None, tls=None, big=False):
        ctx = ssl.create_default_context(cafile=a["ca"])
        if tls:
            ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, tls.replace(".", "_"))
        kw = dict(host=a["host"], port=port, user=user, password=a["pw"], ssl=ctx, autocommit=True)
        if db:
            kw["database"] = db
        if big:
            kw["max_allowed_packet"] = 64 << 20
        return pymysql.connect(**kw)

    def tls_version(c):
        return c._sock.version()

    def thread_id(c):
        return c.thread_id()

    # PyMySQL has no public change-user call (tests/it/change_user.rs sends a raw
    # COM_CHANGE_USER through its internals); if one appears, this cell needs a real probe.
    assert not hasattr(pymysql.connections.Connection, "change_user"), "PyMySQL has change_user now"
    change_user = None
    no_change_user = "no change-user API"
else:
    import mysql.connector

    Error = mysql.connector.Error
    pure = impl == "connector-pure"
    if not pure and not mysql.connector.HAVE_CEXT:
        emit(unavailable="C extension not available")
        sys.exit(0)
    emit(version=importlib.metadata.version("mysql-connector-python"))

    def connect(port, user, db=None, tls=None, big=False):
        kw = dict(
            host=a["host"],
            port=port,
            user=user,
            password=a["pw"],
            ssl_ca=a["ca"],
            ssl_verify_cert=True,
            use_pure=pure,
            autocommit=True,
        )
        if tls:
            kw["tls_versions"] = [tls]
        if db:
            kw["database"] = db
        c = mysql.connector.connect(**kw)
        assert pure == (type(c).__name__ == "MySQLConnection"), type(c).__name__
        return c

    def tls_version(c):
        # The pure-Python connection's socket is Python's; the C extension does not say.
        sock = getattr(getattr(c, "_socket", None), "sock", None)
        return sock.version() if hasattr(sock, "version") else None

    def thread_id(c):
        return c.connection_id

    def change_user(c, user, db):
        c.cmd_change_user(username=user, password=a["pw"], database=db)

    no_change_user = None


def query(c, sql, args=None):
    cur = c.cursor()
    cur.execute(sql, args)
    rows = cur.fetchall() if cur.description else []
    cur.close()
    return rows


def scalar(c, sql, args=None):
    return query(c, sql, args)[0][0]


def text(v):
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def tls(port, want):
    user, db = a["tls"]
    c = connect(port, user, db, tls=want)
    answer = scalar(c, "SELECT 40 + 2")
    seen = tls_version(c)
    c.close()
    if answer != 42:
        return False, "SELECT 40 + 2 gave %r" % (answer,)
    if seen not in (want, None):
        return False, "the client negotiated %s" % seen
    return True, "client sees %s" % (seen or "(not exposed)")


def login(user, db):
    c = connect(a["port"], user, db)
    who = text(scalar(c, "SELECT CURRENT_USER()"))
    c.close()
    return who == user + "@%", who


def change():
    if change_user is None:
        return None, no_change_user
    user, db = a["native"]
    target, target_db = a["target"]
    c = connect(a["port"], user, db)
    change_user(c, target, target_db)
    who, schema = query(c, "SELECT CURRENT_USER(), DATABASE()")[0]
    c.close()
    ok = text(who) == target + "@%" and text(schema) == target_db
    return ok, "%s in %s" % (text(who), text(schema))


def kill():
    user, db = a["native"]
    # KILL <id> ends the other connection: its next query fails.
    x, y = connect(a["port"], user, db), connect(a["port"], user, db)
    query(y, "KILL %d" % thread_id(x))
    try:
        scalar(x, "SELECT 1")
        return False, "still answers after KILL"
    except Error:
        pass
    # KILL QUERY <id> cuts a running SELECT SLEEP(30) short; the connection goes on.
    x = connect(a["port"], user, db)
    server_id = scalar(x, "SELECT CONNECTION_ID()")
    result = {}

    def sleeper():
        started = time.time()
        try:
            result["answer"] = "value %r" % (scalar(x, "SELECT SLEEP(30)"),)
        except Error as e:
            result["answer"] = "error %s" % (getattr(e, "errno", None) or e.args[0])
        result["took"] = time.time() - started

    t = threading.Thread(target=sleeper)
    t.start()
    until = time.time() + 10
    sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %d AND INFO LIKE 'SELECT SLEEP(30)%%'"
    while scalar(y, sql % server_id) != 1:
        if time.time() > until:
            return False, "the SLEEP never started"
        time.sleep(0.02)
    query(y, "KILL QUERY %d" % thread_id(x))
    t.join(20)
    took = result.get("took", 99)
    if took >= 10:
        return False, "KILL QUERY did not cut SLEEP(30) short (%.1f s)" % took
    after = scalar(x, "SELECT 1")
    x.close()
    y.close()
    return after == 1, "%s after %.2f s" % (result["answer"], took)


def big():
    user, db = a["native"]
    c = connect(a["port"], user, db, big=True)
    data = os.urandom(a["big_len"] // 2).hex()
    query(c, "DROP TABLE IF EXISTS big")
    query(c, "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
    query(c, "INSERT INTO big VALUES (1, %s)", (data,))
    stored = text(scalar(c, "SELECT SHA2(b, 256) FROM big"))
    back = text(scalar(c, "SELECT b FROM big"))
    c.close()
    want = hashlib.sha256(data.encode()).hexdigest()
    if stored != want:
        return False, "the server stored other bytes"
    return back == data, "%d bytes back" % len(back)


probes = {
    "tls12": lambda: tls(a["p12"], "TLSv1.2"),
    "tls13": lambda: tls(a["p13"], "TLSv1.3"),
    "native": lambda: login(*a["native"]),
    "ed25519": lambda: login(a["ed"], None),
    "change_user": change,
    "kill": kill,
    "big": big,
}
for f in a["features"]:
    try:
        ok, detail = probes[f]()
    except Error as e:
        ok, detail = False, "error %s: %s" % (getattr(e, "errno", None) or e.args[0], getattr(e, "msg", None) or e)
    except Exception as e:
        ok, detail = False, "%s: %s" % (type(e).__name__, e)
    emit(feature=f, ok=ok, detail=str(detail))
