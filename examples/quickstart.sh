#!/usr/bin/env bash
# flexgate quickstart: a throwaway MariaDB behind flexgate, with TLS required.
#
#   examples/quickstart.sh [--no-build]
#
# Installs what is missing (Debian 12: mariadb-server, mariadb-client, openssl,
# python3), builds flexgate, makes development certificates, starts a private
# MariaDB and flexgate in a temporary directory and prints how to connect.
# Ctrl-C stops both and deletes the temporary directory.
#
# Environment:
#   FLEXGATE_BIN   use this flexgate binary instead of building one
#   FLEXGATE_PORT  port flexgate listens on at 127.0.0.1 (default 3307, or a
#                  free port when 3307 is taken)
set -eEuo pipefail
trap 'echo "quickstart: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

usage() {
    cat <<'EOF'
Usage: examples/quickstart.sh [--no-build]

Starts a throwaway MariaDB and flexgate in front of it (TLS required) and
prints how to connect. Ctrl-C stops everything and deletes the temporary files.

Options:
  --no-build   do not run cargo; use target/release/flexgate (or FLEXGATE_BIN)
  -h, --help   show this help

Environment:
  FLEXGATE_BIN   flexgate binary to use (implies no build)
  FLEXGATE_PORT  listening port on 127.0.0.1 (default 3307, or a free port if taken)
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'quickstart: error: %s\n' "$*" >&2
    exit 1
}

no_build=0
for arg in "$@"; do
    case "$arg" in
        --no-build) no_build=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# mariadbd lives in /usr/sbin, which is not on every user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# --- flexgate binary: settle what to use before doing anything slow -----------
build=0
if [[ -n "${FLEXGATE_BIN:-}" ]]; then
    flexgate_bin="$FLEXGATE_BIN"
    [[ -f "$flexgate_bin" && -x "$flexgate_bin" ]] ||
        die "FLEXGATE_BIN=$flexgate_bin is not an executable file"
elif [[ $no_build -eq 1 ]]; then
    flexgate_bin="$repo_root/target/release/flexgate"
    [[ -x "$flexgate_bin" ]] ||
        die "--no-build given but $flexgate_bin does not exist; build it with 'cargo build --release --bin flexgate' or set FLEXGATE_BIN"
else
    build=1
    flexgate_bin="$repo_root/target/release/flexgate"
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found. Install Rust with https://rustup.rs (Debian's rustc is too old), or set FLEXGATE_BIN to a flexgate binary"
fi

# --- packages ------------------------------------------------------------------
packages=()
need() { # need COMMAND PACKAGE
    if ! command -v "$1" >/dev/null 2>&1 && [[ " ${packages[*]} " != *" $2 "* ]]; then
        packages+=("$2")
    fi
}
need mariadbd mariadb-server
need mariadb-install-db mariadb-server
need mariadb mariadb-client
need mariadb-admin mariadb-client
need openssl openssl
need python3 python3
[[ $build -eq 1 ]] && need cc build-essential

if [[ ${#packages[@]} -gt 0 ]]; then
    if [[ $EUID -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "Missing packages: ${packages[*]}. As root, run:" >&2
        echo "  apt-get update && apt-get install -y ${packages[*]}" >&2
        exit 1
    fi
    log "Installing ${packages[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
fi

if [[ $build -eq 1 ]]; then
    log "Building flexgate (cargo build --release --bin flexgate)"
    (cd "$repo_root" && cargo build --release --bin flexgate)
fi
log "Using $flexgate_bin ($("$flexgate_bin" --version))"

# --- temporary directory and cleanup -------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/flexgate-quickstart.XXXXXX")"
flexgate_pid=""
mariadb_pid=""

# alive PID: the process runs (exited-but-unreaped children count as gone).
alive() {
    local state
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}
# shellcheck disable=SC2317 # called from the EXIT trap
# stop PID SECONDS: SIGTERM, SIGKILL if still running after SECONDS, then reap.
stop() {
    local pid="$1" seconds="$2" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < seconds * 5; i++)); do
        alive "$pid" || break
        sleep 0.2
    done
    if alive "$pid"; then
        log "PID $pid still running ${seconds}s after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n "$flexgate_pid" ]]; then
        log "Stopping flexgate"
        stop "$flexgate_pid" 10
    fi
    if [[ -n "$mariadb_pid" ]]; then
        log "Stopping MariaDB"
        stop "$mariadb_pid" 30
    fi
    rm -rf "$tmp"
    log "Removed $tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# port_is_free PORT: a listener could bind 127.0.0.1:PORT (SO_REUSEADDR, as
# servers use, so connections in TIME_WAIT from earlier runs do not count).
port_is_free() {
    python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
# is_listening PORT: some socket listens on PORT (reads /proc, opens no connection).
is_listening() {
    local hex f tables=()
    hex="$(printf '%04X' "$1")"
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$f" ]] && tables+=("$f")
    done
    awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        "${tables[@]}"
}

# --- certificates ----------------------------------------------------------------
log "Making development certificates in $tmp/certs"
"$repo_root/certs/make-dev-certs.sh" "$tmp/certs" >/dev/null 2>&1 ||
    die "certs/make-dev-certs.sh failed; run it by hand to see why"
ca="$tmp/certs/ca.pem"

# --- MariaDB ---------------------------------------------------------------------
datadir="$tmp/mysql"
socket="$datadir/mysqld.sock"
db_port="$(free_port)"
mkdir -p "$datadir"
log "Initialising MariaDB in $datadir"
mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$datadir" \
    --auth-root-authentication-method=normal --skip-test-db >"$tmp/mariadb-install.log" 2>&1 ||
    { cat "$tmp/mariadb-install.log" >&2; die "mariadb-install-db failed"; }

log "Starting MariaDB on 127.0.0.1:$db_port"
mariadbd --no-defaults --user="$(id -un)" --datadir="$datadir" --socket="$socket" \
    --port="$db_port" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$tmp/mariadbd.pid" --log-error="$tmp/mariadbd.err" >"$tmp/mariadbd.out" 2>&1 &
mariadb_pid=$!

sql() { mariadb --no-defaults --socket="$socket" --user=root "$@"; }
ready=0
for _ in $(seq 1 120); do # up to 60 s
    if ! alive "$mariadb_pid"; then
        tail -n 20 "$tmp/mariadbd.err" >&2 || true
        wait "$mariadb_pid" 2>/dev/null || true
        mariadb_pid=""
        die "MariaDB exited during startup"
    fi
    if mariadb-admin --no-defaults --socket="$socket" --user=root --connect-timeout=2 ping >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ $ready -eq 1 ]] || { tail -n 20 "$tmp/mariadbd.err" >&2 || true; die "MariaDB did not start within 60 s"; }

log "Creating database demo and user demo/demo"
# Only root@localhost (Unix socket, inside the private temp dir) stays; the
# password-less root accounts for 127.0.0.1, ::1 and the host name go, so they
# cannot be reached through flexgate.
sql -N -B -e "SELECT CONCAT('DROP USER ', QUOTE(User), '@', QUOTE(Host), ';')
              FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'" >"$tmp/drop-root.sql"
sql <"$tmp/drop-root.sql"
sql <<'EOF'
CREATE DATABASE demo;
CREATE USER 'demo'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('demo');
GRANT ALL PRIVILEGES ON demo.* TO 'demo'@'%';
CREATE TABLE demo.hello (id INT PRIMARY KEY, message VARCHAR(100));
INSERT INTO demo.hello VALUES (1, 'Hello through flexgate');
EOF

# --- flexgate ----------------------------------------------------------------------
if [[ -n "${FLEXGATE_PORT:-}" ]]; then
    port="$FLEXGATE_PORT"
    if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
        die "FLEXGATE_PORT=$port is not a port number"
    fi
    port=$((10#$port))
    port_is_free "$port" || die "FLEXGATE_PORT=$port: 127.0.0.1:$port is already in use"
elif port_is_free 3307; then
    port=3307
else
    port="$(free_port)"
    log "Port 3307 is in use; flexgate will listen on $port instead"
fi

config="$tmp/flexgate.toml"
# Paths are relative to this file's directory.
cat >"$config" <<EOF
# Written by examples/quickstart.sh; deleted when it exits.
[backend]
address = "127.0.0.1:$db_port"
connect_timeout = "5s"

[tls]
cert = "certs/server.pem"
key = "certs/server-key.pem"
min_version = "1.2"
require_secure_transport = true

[[listener]]
name = "quickstart"
address = "127.0.0.1:$port"
handshake_timeout = "10s"
# Nobody may connect unless allowed; here, this host only.
allow = ["127.0.0.1", "::1"]
EOF

log "Checking $config"
"$flexgate_bin" check-config --config "$config" || die "flexgate check-config rejected $config"

log "Starting flexgate on 127.0.0.1:$port (logs follow)"
"$flexgate_bin" run --config "$config" &
flexgate_pid=$!

ready=0
for _ in $(seq 1 60); do # up to 30 s
    if ! alive "$flexgate_pid"; then
        wait "$flexgate_pid" && status=0 || status=$?
        flexgate_pid=""
        die "flexgate exited during startup (status $status)"
    fi
    if is_listening "$port"; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ $ready -eq 1 ]] || die "flexgate is not listening on 127.0.0.1:$port after 30 s"

cat <<EOF

flexgate is listening on 127.0.0.1:$port in front of MariaDB on 127.0.0.1:$db_port.
Everything lives in $tmp.

Connect through flexgate with the MariaDB client:

  mariadb -h 127.0.0.1 -P $port -u demo -pdemo --ssl-verify-server-cert --ssl-ca=$ca demo -e 'SELECT * FROM hello'

Without TLS the login is refused (require_secure_transport = true):

  mariadb -h 127.0.0.1 -P $port -u demo -pdemo --skip-ssl demo

From Python (apt-get install python3-pymysql, or pip install PyMySQL):

  python3 -c "import pymysql; c = pymysql.connect(host='127.0.0.1', port=$port, user='demo', password='demo', database='demo', ssl_ca='$ca', ssl_verify_cert=True, ssl_verify_identity=True); cur = c.cursor(); cur.execute('SELECT message FROM hello'); print(cur.fetchone()[0])"

Look at the TLS handshake and certificate:

  openssl s_client -starttls mysql -connect 127.0.0.1:$port -CAfile $ca -verify_ip 127.0.0.1 -verify_return_error -brief </dev/null

Press Ctrl-C to stop flexgate and MariaDB and delete $tmp.

EOF

# Runs until flexgate exits or Ctrl-C; either way the EXIT trap cleans up.
wait "$flexgate_pid" && status=0 || status=$?
flexgate_pid=""
log "flexgate exited with status $status"
exit "$status"
