#!/usr/bin/env bash
# End-to-end benchmark of flexgate against a direct MariaDB connection and
# HAProxy in TCP mode, with sysbench (throughput, p99 latency) and a
# connection-rate loop (connect, TLS, login, SELECT 1, close). With
# FLEXGATE_BASE_BIN it also runs an older flexgate binary beside the current
# one, so a before/after comparison comes from one invocation.
#
# Everything runs on 127.0.0.1 in a throwaway temp dir and is torn down on exit.
# See benches/README.md for the knobs and for how to read the output.
#
# Usage:  benches/e2e.sh                       # full run (~20 min)
#         QUICK=1 benches/e2e.sh               # smoke test (~2 min)
#         PATHS=direct,haproxy QUICK=1 benches/e2e.sh
#         FLEXGATE_BASE_BIN=/path/to/old/flexgate \
#           PATHS=haproxy,flexgate,flexgate-base,direct-tls,flexgate-tls,flexgate-base-tls benches/e2e.sh
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
# mariadbd and haproxy live in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------- settings --

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  # Smoke-test sizes; explicit values in the environment still win.
  : "${DURATION:=3}" "${REPS:=1}" "${THREADS:=1 8}" "${CONNRATE_SECS:=2}" "${WARMUP:=2}"
fi
DURATION=${DURATION:-10}            # seconds per sysbench run
REPS=${REPS:-3}                     # repetitions of every (workload, threads, path)
THREADS=${THREADS:-1 8 32}          # sysbench thread counts (space or comma list)
WORKLOADS=${WORKLOADS:-oltp_point_select oltp_read_only}  # "none" = connection rate only
PATHS=${PATHS:-direct,haproxy,flexgate,direct-tls,flexgate-tls}
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-100000}
WARMUP=${WARMUP:-5}                 # seconds of unrecorded warm-up after prepare
CONNRATE_SECS=${CONNRATE_SECS:-5}   # seconds per connection-rate run; 0 skips it
CONNRATE_WORKERS=${CONNRATE_WORKERS:-4}
MEMORY_CONNS=${MEMORY_CONNS:-500}   # idle logged-in connections held for the memory figure; 0 skips it
QUIET_PCT=${QUIET_PCT:-5}           # "quiet" = other processes below this % of all CPUs
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-60} # give up waiting for quiet after this many seconds
HAPROXY_NBTHREAD=${HAPROXY_NBTHREAD:-}  # empty = HAProxy's default (one thread per CPU)
PERF=${PERF:-auto}                  # auto | 1 | 0 : instructions per query via perf stat
SYSBENCH_EXTRA=${SYSBENCH_EXTRA:-}  # extra sysbench options, e.g. --db-ps-mode=disable
PYTHON=${PYTHON:-/usr/bin/python3}  # Debian's python3, where apt's python3-pymysql lives
OUT=${OUT:-$REPO_ROOT/target/bench-e2e/$(date +%Y%m%d-%H%M%S)}
FLEXGATE_BIN=${FLEXGATE_BIN:-}
# A baseline (older) flexgate binary for before/after comparisons in one run:
# the flexgate-base and flexgate-base-tls paths go through it.
FLEXGATE_BASE_BIN=${FLEXGATE_BASE_BIN:-}
# The current binary's listener admits clients through an allow-list of this
# many prefixes (a generated @bench IP set that also holds 127.0.0.0/8), so
# the firewall's lookup is on the measured path. 0: a plain "127.0.0.1" rule.
# The baseline binary gets the same rules (it has the firewall too).
# The current binary also runs its admin API, scraped every METRICS_SCRAPE
# seconds during the run (0: no scrapes), so its figures are with metrics on.
# It also watches a key file with [key_guard], checked every KEY_CHECK (empty:
# no [key_guard]), so that the breaker's per-connection and relay costs are on
# the measured path.
ALLOW_PREFIXES=${ALLOW_PREFIXES:-10000}
METRICS_SCRAPE=${METRICS_SCRAPE:-5}
KEY_CHECK=${KEY_CHECK-1s}
DB_USER=sbtest
DB_PASS=sbtest
DB_NAME=sbtest

THREADS=${THREADS//,/ }
WORKLOADS=${WORKLOADS//,/ }

# ----------------------------------------------------------------- helpers --

log()  { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[e2e %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[e2e %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

require_uint() {
  local name=$1 value=$2
  [[ $value =~ ^[0-9]+$ ]] || die "$name must be a non-negative integer, got '$value'"
}

# Formats an integer count of hundredths as "12.34" (pure bash: no fork per sample).
fmt_centi() {
  local v=$1
  printf '%d.%02d' $((v / 100)) $((v % 100))
}

# Prints the path list rotated left by $1 (so each rep starts with another path).
rotated() {
  local r=$1
  shift
  local -a items=("$@")
  local n=${#items[@]} i
  for ((i = 0; i < n; i++)); do
    printf '%s\n' "${items[(i + r) % n]}"
  done
}

path_selected() {
  [[ ",$PATHS," == *",$1,"* ]]
}

# True if any of the given paths is selected.
any_path_selected() {
  local p
  for p in "$@"; do
    path_selected "$p" && return 0
  done
  return 1
}

any_tls_path_selected() {
  local p
  for p in ${PATHS//,/ }; do
    [[ $p == *-tls ]] && return 0
  done
  return 1
}

# --------------------------------------------------------------- cleanup --

WORK=""
declare -a STARTED_PIDS=()   # every long-running process we started, for the trap
MARIADB_PID=""
HAPROXY_PID=""
FLEXGATE_PID=""
FLEXGATE_BASE_PID=""
FAILED_RUNS=0
CHILD_PID=""                 # the sysbench / Python client currently running
SB_DIR=""                    # sysbench cwd, holding the certs it loads by fixed name

# Runs "$@" from the sysbench cert dir under a timeout (a hung proxy must not
# hang the benchmark), output to file $2. It runs in the background and we
# wait for it, because a trapped signal interrupts `wait` at once, whereas a
# foreground child would delay cleanup until it finished.
run_child() {
  local limit=$1 out=$2 rc=0
  shift 2
  (cd "$SB_DIR" && exec timeout -k 5 "$limit" "$@") >"$out" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# Stops one process we started: TERM, a bounded wait, then KILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  [[ -n $CHILD_PID ]] && stop_pid "$CHILD_PID"
  # Reverse start order: proxies first, then the server they forward to.
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[i]}"
  done
  if [[ -n $WORK && -d $WORK ]]; then
    # Keep the logs next to the results: they explain failed runs.
    if [[ -d $OUT ]]; then
      mkdir -p "$OUT/logs"
      cp -f "$WORK"/*.log "$WORK"/*.err "$WORK"/*.cfg "$WORK"/*.toml "$OUT/logs/" 2>/dev/null || true
    fi
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- packages --

# Installs the Debian packages that provide missing commands; apt-get update
# only runs when something is actually missing (it is slow and needs network).
ensure_packages() {
  local -a missing=()
  local pair cmd pkg
  for pair in sysbench:sysbench haproxy:haproxy mariadbd:mariadb-server \
              mariadb-install-db:mariadb-server mariadb:mariadb-client \
              mariadb-admin:mariadb-client openssl:openssl; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ! "$PYTHON" -c 'import pymysql' >/dev/null 2>&1; then
    if [[ $PYTHON == /usr/bin/python3 ]]; then
      missing+=(python3 python3-pymysql)
    elif ((CONNRATE_SECS > 0)); then
      die "$PYTHON cannot import pymysql; install it there or unset PYTHON to use Debian's python3"
    fi
  fi
  if [[ $PERF == 1 ]] && ! command -v perf >/dev/null 2>&1; then
    missing+=(linux-perf)
  fi
  if ((${#missing[@]} > 0)); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing missing packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  for cmd in sysbench haproxy mariadbd mariadb-install-db mariadb mariadb-admin openssl; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after install"
  done
  "$PYTHON" -c 'import pymysql' 2>/dev/null || die "$PYTHON cannot import pymysql after install"
}

# Builds flexgate in release mode unless FLEXGATE_BIN points at a binary, and
# only when a flexgate path is selected (direct/haproxy runs need no build).
# The baseline is never built (see check_base_bin).
resolve_flexgate() {
  if ! any_path_selected flexgate flexgate-tls; then
    return 0
  fi
  if [[ -z $FLEXGATE_BIN ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found; set FLEXGATE_BIN to a flexgate binary"
    log "building flexgate (cargo build --release --bin flexgate)"
    (cd "$REPO_ROOT" && cargo build --release --bin flexgate) || die "cargo build failed"
    FLEXGATE_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/flexgate
  fi
  [[ -x $FLEXGATE_BIN ]] || die "FLEXGATE_BIN '$FLEXGATE_BIN' is not an executable file"
}

# The baseline is an older build, by definition not the work tree's, so it
# must be given. Checked before anything is installed or started: a typo in
# the path should not cost a package install and a MariaDB start-up.
check_base_bin() {
  if any_path_selected flexgate-base flexgate-base-tls; then
    [[ -n $FLEXGATE_BASE_BIN ]] \
      || die "PATHS has flexgate-base/flexgate-base-tls, which run the baseline binary: set FLEXGATE_BASE_BIN to an older flexgate binary, or drop them from PATHS"
    [[ -f $FLEXGATE_BASE_BIN && -x $FLEXGATE_BASE_BIN ]] \
      || die "FLEXGATE_BASE_BIN '$FLEXGATE_BASE_BIN' is not an executable file"
  elif [[ -n $FLEXGATE_BASE_BIN ]]; then
    warn "FLEXGATE_BASE_BIN is set but PATHS has neither flexgate-base nor flexgate-base-tls: the baseline will not run"
  fi
}

# ---------------------------------------------------------------- ports --

# Binds N ephemeral ports at once (so they differ), prints them, releases them.
pick_free_ports() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Polls until something accepts TCP on 127.0.0.1:$port (bounded), failing
# early if the process that should listen has died.
wait_for_tcp() {
  local port=$1 pid=$2 name=$3 logfile=$4 i
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      tail -n 30 "$logfile" >&2 || true
      die "$name exited during startup (exit status $rc, log above: $logfile)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$logfile" >&2 || true
  die "$name did not accept TCP on port $port within 30 s"
}

# ---------------------------------------------------------------- certs --

# A dev CA, a server cert for localhost/127.0.0.1 (used by MariaDB and
# flexgate alike, so both sides of the TLS comparison do the same RSA work),
# and a client cert, because sysbench --mysql-ssl=on insists on loading one.
make_certs() {
  local d=$WORK/certs
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=flexgate bench CA" \
    -keyout "$d/ca-key.pem" -out "$d/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || die "openssl: CA generation failed"
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > "$d/server.ext"
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth" > "$d/client.ext"
  local who
  for who in server client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=${who/server/localhost}" \
      -keyout "$d/$who-key.pem" -out "$d/$who.csr" >/dev/null 2>&1 \
      || die "openssl: $who key generation failed"
    openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
      -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$d/$who.ext" \
      -out "$d/$who.pem" >/dev/null 2>&1 || die "openssl: $who cert signing failed"
  done
  # sysbench 1.0.20 --mysql-ssl=on takes no paths: it loads these three names
  # from its working directory. Every sysbench run uses this dir as cwd.
  SB_DIR=$WORK/sysbench
  mkdir -p "$SB_DIR"
  cp "$d/ca.pem" "$SB_DIR/cacert.pem"
  cp "$d/client.pem" "$SB_DIR/client-cert.pem"
  cp "$d/client-key.pem" "$SB_DIR/client-key.pem"
}

# -------------------------------------------------------------- MariaDB --

sql_root() {
  # --skip-ssl: the 10.11 CLI would otherwise do TLS even over the socket,
  # which would bump the Ssl_accepts counter that check_sysbench_tls reads.
  mariadb --no-defaults --skip-ssl --socket="$WORK/mysqld.sock" -uroot -N -B -e "$1"
}

start_mariadb() {
  local datadir=$WORK/data i
  log "initialising MariaDB datadir"
  mariadb-install-db --no-defaults --user=root --datadir="$datadir" \
    --auth-root-authentication-method=normal --skip-test-db >"$WORK/install-db.log" 2>&1 \
    || { tail -n 20 "$WORK/install-db.log" >&2; die "mariadb-install-db failed"; }
  # max-connect-errors: TCP probes without a handshake count as connect
  # errors per host, and every path comes from 127.0.0.1; don't get blocked.
  mariadbd --no-defaults --user=root --datadir="$datadir" --socket="$WORK/mysqld.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --max-connections=2000 \
    --max-connect-errors=1000000000 \
    --ssl-cert="$WORK/certs/server.pem" --ssl-key="$WORK/certs/server-key.pem" \
    --ssl-ca="$WORK/certs/ca.pem" --skip-name-resolve \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=0 \
    --pid-file="$WORK/mysqld.pid" --log-error="$WORK/mysqld.err" >"$WORK/mysqld.log" 2>&1 &
  MARIADB_PID=$!
  STARTED_PIDS+=("$MARIADB_PID")
  for ((i = 0; i < 600; i++)); do
    kill -0 "$MARIADB_PID" 2>/dev/null || { tail -n 30 "$WORK/mysqld.err" >&2 || true; die "mariadbd exited during startup"; }
    if mariadb-admin --no-defaults --socket="$WORK/mysqld.sock" -uroot ping >/dev/null 2>&1; then
      break
    fi
    sleep 0.1
  done
  ((i < 600)) || die "mariadbd not ready within 60 s (see $WORK/mysqld.err)"
  [[ $(sql_root "SELECT @@have_ssl") == YES ]] || die "MariaDB started without TLS (have_ssl != YES)"
  sql_root "CREATE DATABASE $DB_NAME;
            CREATE USER '$DB_USER'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('$DB_PASS');
            GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'%';" \
    || die "could not create user $DB_USER"
  log "MariaDB $(sql_root "SELECT VERSION()") up on 127.0.0.1:$DB_PORT (pid $MARIADB_PID)"
}

# ------------------------------------------------------------- proxies --

start_haproxy() {
  local nbthread_line
  nbthread_line="# nbthread: HAProxy default, one thread per CPU ($(nproc) here)"
  [[ -n $HAPROXY_NBTHREAD ]] && nbthread_line="nbthread $HAPROXY_NBTHREAD"
  cat >"$WORK/haproxy.cfg" <<EOF
# Minimal TCP-mode pass-through: the baseline cost of "a proxy in between".
global
    maxconn 4096
    $nbthread_line

defaults
    mode tcp
    maxconn 4096
    timeout connect 5s
    timeout client 1h
    timeout server 1h

listen mariadb
    bind 127.0.0.1:$HAP_PORT
    server db 127.0.0.1:$DB_PORT
EOF
  haproxy -c -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.log" 2>&1 \
    || { cat "$WORK/haproxy-check.log" >&2; die "haproxy rejected its config"; }
  # -db: stay in the foreground, so $! is the process that serves traffic.
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  STARTED_PIDS+=("$HAPROXY_PID")
  wait_for_tcp "$HAP_PORT" "$HAPROXY_PID" haproxy "$WORK/haproxy.log"
  log "HAProxy up on 127.0.0.1:$HAP_PORT (pid $HAPROXY_PID, ${HAPROXY_NBTHREAD:-default} threads)"
}

# One flexgate listener serves both the plaintext and the TLS path: the
# client decides whether to upgrade, exactly as with MariaDB itself.
# Writes the config for a listener on port $2 to file $1. The baseline gets
# the same config (only the port differs), so a before/after difference is
# the binary's, not the setup's.
write_flexgate_config() {
  local file=$1 port=$2 rules=${3:-}
  cat >"$file" <<EOF
[backend]
address = "127.0.0.1:$DB_PORT"
connect_timeout = "5s"

[tls]
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server-key.pem"
min_version = "1.2"
require_secure_transport = false

[[listener]]
name = "bench"
address = "127.0.0.1:$port"
EOF
  [[ -n $rules ]] && printf '%s\n' "$rules" >>"$file"
  return 0
}

# The listener rules of the current binary: an allow-list of ALLOW_PREFIXES
# prefixes, with pre-auth headroom for sysbench's threads connecting at once.
flexgate_rules() {
  local set="$WORK/allow-$ALLOW_PREFIXES.txt"
  if ((ALLOW_PREFIXES == 0)); then
    printf 'allow = ["127.0.0.1"]\nmax_preauth_per_ip = 1024\n'
    return
  fi
  if [[ ! -f $set ]]; then
    # Seeded pseudo-random /16-/30 prefixes from 11.0.0.0 up, and loopback.
    awk -v n="$ALLOW_PREFIXES" 'BEGIN {
      srand(42); print "127.0.0.0/8"
      for (i = 1; i < n; i++) {
        len = 16 + int(rand() * 15)
        printf "%d.%d.%d.0/%d\n", 11 + int(rand() * 100), int(rand() * 256), int(rand() * 256), len
      }
    }' >"$set"
  fi
  printf 'allow = ["@bench"]\nmax_preauth_per_ip = 1024\n\n[ipsets.bench]\nfile = "%s"\nformat = "cidr-list"\n' "$set"
}

# Starts one flexgate process: name (also the stem of its .toml and .log in
# the work dir, which cleanup copies to logs/), binary, port; sets the
# variable named by $4 to its pid.
start_flexgate_proc() {
  local name=$1 bin=$2 port=$3 pid_var=$4 rules=${5:-} pid
  write_flexgate_config "$WORK/$name.toml" "$port" "$rules"
  # Quiet logging: per-connection info lines would tax the connection-rate test,
  # and HAProxy logs nothing here either.
  FLEXGATE_LOG=${FLEXGATE_LOG:-warn} "$bin" run --config "$WORK/$name.toml" \
    >"$WORK/$name.log" 2>&1 &
  pid=$!
  STARTED_PIDS+=("$pid")
  printf -v "$pid_var" '%s' "$pid"
  wait_for_tcp "$port" "$pid" "$name" "$WORK/$name.log"
  log "$name up on 127.0.0.1:$port (pid $pid, $bin)"
}

start_flexgate() {
  local admin_port=$ADMIN_PORT guard=''
  if [[ -n $KEY_CHECK ]]; then
    printf '1;%s\n' a7addd9adea9978fda19f21e6be987880e68ac92632ca052e5bb42b1a506939a >"$WORK/keyfile"
    guard=$'\n[key_guard]\ncheck_interval = "'"$KEY_CHECK"$'"\n[[key_guard.provider]]\nkind = "file"\npath = "'"$WORK/keyfile"$'"\nformat = "mariadb-file-key-management"\nkey_ids = [1]\n'
    log "flexgate watches $WORK/keyfile every $KEY_CHECK ([key_guard])"
  fi
  start_flexgate_proc flexgate "$FLEXGATE_BIN" "$FG_PORT" FLEXGATE_PID \
    "$(flexgate_rules)"$'\n\n[admin]\naddress = "127.0.0.1:'"$admin_port"$'"\n'"$guard"
  if ((METRICS_SCRAPE > 0)); then
    # A Prometheus-like scraper: one GET of /metrics every METRICS_SCRAPE seconds.
    (while kill -0 "$FLEXGATE_PID" 2>/dev/null; do
      curl -s -o /dev/null "http://127.0.0.1:$admin_port/metrics" || true
      sleep "$METRICS_SCRAPE"
    done) &
    STARTED_PIDS+=("$!")
    log "scraping http://127.0.0.1:$admin_port/metrics every ${METRICS_SCRAPE}s"
  fi
}
start_flexgate_base() { start_flexgate_proc flexgate-base "$FLEXGATE_BASE_BIN" "$FGB_PORT" FLEXGATE_BASE_PID "$(flexgate_rules)"; }

# ---------------------------------------------------------------- paths --

path_port() {
  case $1 in
    direct | direct-tls) echo "$DB_PORT" ;;
    haproxy | haproxy-tls) echo "$HAP_PORT" ;;
    flexgate | flexgate-tls) echo "$FG_PORT" ;;
    flexgate-base | flexgate-base-tls) echo "$FGB_PORT" ;;
    *) die "unknown path '$1'" ;;
  esac
}

# flexgate-base* must come before flexgate*, which would match it too.
path_proxy_pid() {
  case $1 in
    haproxy*) echo "$HAPROXY_PID" ;;
    flexgate-base*) echo "$FLEXGATE_BASE_PID" ;;
    flexgate*) echo "$FLEXGATE_PID" ;;
    *) echo "" ;;
  esac
}

# The proxy's CPU ticks in the last cpu_delta for a path (0 for direct paths).
path_proxy_ticks() {
  case $1 in
    haproxy*) echo "$D_HAPROXY" ;;
    flexgate-base*) echo "$D_FLEXGATE_BASE" ;;
    flexgate*) echo "$D_FLEXGATE" ;;
    *) echo 0 ;;
  esac
}

path_is_tls() { [[ $1 == *-tls ]]; }

# Logs in through a path once with the mariadb CLI before timing anything.
# TLS paths verify the certificate, which also proves TLS was negotiated:
# sysbench --mysql-ssl=on (like PyMySQL and the CLI without verification)
# silently stays plaintext when the server does not advertise CLIENT_SSL.
check_path_login() {
  local path=$1 port
  port=$(path_port "$path")
  local -a tls_opts=(--skip-ssl)
  path_is_tls "$path" && tls_opts=(--ssl --ssl-ca="$WORK/certs/ca.pem" --ssl-verify-server-cert)
  if ! timeout 20 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" -u"$DB_USER" \
      -p"$DB_PASS" "${tls_opts[@]}" "$DB_NAME" -N -B -e 'SELECT 1' >"$WORK/login-check.log" 2>&1; then
    cat "$WORK/login-check.log" >&2
    die "login through path '$path' (port $port) failed"
  fi
}

# ------------------------------------------------------ CPU accounting --
# /proc/stat gives machine-wide ticks; /proc/PID/stat gives the processes
# under test. "Other" = user+nice+system time not spent by them. irq/softirq
# is left out of "other" because loopback networking of the test itself lands
# there; it is recorded separately, as is steal (a noisy VM neighbour).

CLK_TCK=$(getconf CLK_TCK)

# Sets PROC_TICKS to utime+stime of $1 (plus reaped children's if $2 = all).
proc_ticks() {
  local pid=$1 with_children=${2:-} line
  PROC_TICKS=0
  [[ -n $pid ]] || return 0
  read -r line 2>/dev/null <"/proc/$pid/stat" || return 0
  line=${line##*) }   # drop "pid (comm) ": comm may contain spaces
  local -a f
  read -ra f <<<"$line"
  # f[0] is field 3 (state): utime=14 -> f[11], stime f[12], cutime f[13], cstime f[14]
  PROC_TICKS=$((f[11] + f[12]))
  [[ $with_children == all ]] && PROC_TICKS=$((PROC_TICKS + f[13] + f[14]))
  return 0
}

# Sets SNAP=(proc_busy total irq steal server haproxy flexgate flexgate_base self).
# "self" is this script plus every child it has waited for: sysbench and the
# Python client are counted there once they exit.
cpu_snapshot() {
  local _c user nice system idle iowait irq softirq steal _rest
  read -r _c user nice system idle iowait irq softirq steal _rest </proc/stat
  SNAP=($((user + nice + system)) $((user + nice + system + idle + iowait + irq + softirq + steal))
        $((irq + softirq)) "$steal")
  proc_ticks "$MARIADB_PID"; SNAP+=("$PROC_TICKS")
  proc_ticks "$HAPROXY_PID"; SNAP+=("$PROC_TICKS")
  proc_ticks "$FLEXGATE_PID"; SNAP+=("$PROC_TICKS")
  proc_ticks "$FLEXGATE_BASE_PID"; SNAP+=("$PROC_TICKS")
  proc_ticks $$ all; SNAP+=("$PROC_TICKS")
}

# From snapshots SNAP0 (start) and SNAP1 (end) sets, in hundredths of a percent
# of all CPUs: D_OTHER D_IRQ D_STEAL; in ticks: D_SERVER D_HAPROXY D_FLEXGATE
# D_FLEXGATE_BASE D_SELF. The baseline is a process under test, not "other".
SNAP=() SNAP0=() SNAP1=()
cpu_delta() {
  local -a a=("${SNAP0[@]}") b=("${SNAP1[@]}")
  local total=$((b[1] - a[1]))
  ((total > 0)) || total=1
  D_SERVER=$((b[4] - a[4])) D_HAPROXY=$((b[5] - a[5])) D_FLEXGATE=$((b[6] - a[6]))
  D_FLEXGATE_BASE=$((b[7] - a[7])) D_SELF=$((b[8] - a[8]))
  local other=$((b[0] - a[0] - D_SERVER - D_HAPROXY - D_FLEXGATE - D_FLEXGATE_BASE - D_SELF))
  ((other > 0)) || other=0
  D_OTHER=$((other * 10000 / total))
  D_IRQ=$(((b[2] - a[2]) * 10000 / total))
  D_STEAL=$(((b[3] - a[3]) * 10000 / total))
}

ticks_to_secs() { fmt_centi $(($1 * 100 / CLK_TCK)); }

# Samples 1 s at a time until other processes use < QUIET_PCT of the machine,
# for at most QUIET_MAX_WAIT s. Sets QUIET_OTHER (hundredths of %) and NOISY.
wait_for_quiet() {
  local start=$SECONDS announced=0
  while :; do
    cpu_snapshot; SNAP0=("${SNAP[@]}")
    sleep 1
    cpu_snapshot; SNAP1=("${SNAP[@]}")
    cpu_delta
    QUIET_OTHER=$D_OTHER
    if ((D_OTHER <= QUIET_PCT * 100)); then
      NOISY=0
      return 0
    fi
    if ((SECONDS - start >= QUIET_MAX_WAIT)); then
      warn "machine still busy after ${QUIET_MAX_WAIT}s (other processes $(fmt_centi "$D_OTHER")%); running anyway, flagged noisy"
      NOISY=1
      return 0
    fi
    if ((announced == 0 || (SECONDS - start) % 10 == 0)); then
      log "waiting for a quiet machine: other processes at $(fmt_centi "$D_OTHER")% (limit ${QUIET_PCT}%)"
      announced=1
    fi
  done
}

# ------------------------------------------------------------------ perf --

PERF_OK=0
check_perf() {
  [[ $PERF == 0 ]] && return 0
  if ! command -v perf >/dev/null 2>&1; then
    log "perf not installed: skipping instructions per query (PERF=1 installs linux-perf)"
    return 0
  fi
  local out
  out=$(perf stat -x, -e instructions true 2>&1) || true
  if [[ $out == *instructions* && $out != *"not supported"* && $out != *"not counted"* ]]; then
    PERF_OK=1
    log "perf counts instructions: reporting instructions per query for the proxies"
  else
    log "perf cannot count instructions here (no PMU in this VM?): skipping; CPU µs/query is reported instead"
  fi
}

# Starts perf stat on the proxy of a path; sets PERF_PID (empty if none).
perf_start() {
  local pid=$1 file=$2
  PERF_PID=""
  ((PERF_OK == 1)) && [[ -n $pid ]] || return 0
  perf stat -x, -e instructions -p "$pid" -o "$file" >/dev/null 2>&1 &
  PERF_PID=$!
}

# Stops perf (SIGINT makes it write its counts); sets PERF_INSTR.
perf_stop() {
  local file=$1
  PERF_INSTR=""
  [[ -n $PERF_PID ]] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_INSTR=$(awk -F, '/instructions/ && $1 ~ /^[0-9]+$/ {print $1; exit}' "$file" 2>/dev/null || true)
}

# ------------------------------------------------------------- sysbench --

sysbench_args() {
  local port=$1 tls=$2
  SB_ARGS=(--db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port"
           --mysql-user="$DB_USER" --mysql-password="$DB_PASS" --mysql-db="$DB_NAME"
           --tables="$TABLES" --table-size="$TABLE_SIZE" --mysql-ssl="$tls")
  if [[ -n $SYSBENCH_EXTRA ]]; then
    local -a extra
    read -ra extra <<<"$SYSBENCH_EXTRA"
    SB_ARGS+=("${extra[@]}")
  fi
}

ssl_accepts() { sql_root "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'" | awk '{print $2}'; }

prepare_tables() {
  log "preparing sysbench tables ($TABLES x $TABLE_SIZE rows)"
  sysbench_args "$DB_PORT" off
  (cd "$SB_DIR" && sysbench oltp_read_only "${SB_ARGS[@]}" --threads=2 prepare) \
    >"$WORK/prepare.log" 2>&1 || { tail -n 20 "$WORK/prepare.log" >&2; die "sysbench prepare failed"; }
}

# Checks once that sysbench's --mysql-ssl really toggles TLS, by MariaDB's
# own counter of TLS handshakes (a plaintext run must not add any).
check_sysbench_tls() {
  local before after mode
  for mode in off on; do
    before=$(ssl_accepts)
    sysbench_args "$DB_PORT" "$mode"
    run_child 60 "$WORK/tls-check.log" sysbench oltp_point_select "${SB_ARGS[@]}" --threads=1 --time=1 run \
      || { tail -n 20 "$WORK/tls-check.log" >&2; die "sysbench --mysql-ssl=$mode failed against MariaDB"; }
    after=$(ssl_accepts)
    if [[ $mode == on ]]; then
      ((after > before)) || die "sysbench --mysql-ssl=on made no TLS handshake with MariaDB"
    else
      ((after == before)) || die "sysbench --mysql-ssl=off still used TLS ($((after - before)) handshakes)"
    fi
  done
  log "checked: sysbench --mysql-ssl=on negotiates TLS (certs from its cwd), =off stays plaintext"
}

warm_up() {
  ((WARMUP > 0)) || return 0
  log "warm-up: ${WARMUP}s oltp_read_only direct (not recorded)"
  sysbench_args "$DB_PORT" off
  run_child $((WARMUP + 60)) "$WORK/warmup.log" sysbench oltp_read_only "${SB_ARGS[@]}" \
    --threads=8 --time="$WARMUP" run || warn "warm-up run failed"
}

RUNS_CSV=""
CONN_CSV=""

# One recorded sysbench run: quiet wait, CPU snapshots around it, parse, CSV row.
run_sysbench() {
  local workload=$1 threads=$2 rep=$3 order=$4 path=$5
  local port tls=off proxy_pid raw
  port=$(path_port "$path")
  path_is_tls "$path" && tls=on
  proxy_pid=$(path_proxy_pid "$path")
  raw=$OUT/raw/sysbench-$workload-t$threads-r$rep-$path.txt
  sysbench_args "$port" "$tls"

  wait_for_quiet
  local pre_other=$QUIET_OTHER status=ok
  cpu_snapshot; SNAP0=("${SNAP[@]}")
  perf_start "$proxy_pid" "$WORK/perf.out"
  if ! run_child $((DURATION + 60)) "$raw" sysbench "$workload" "${SB_ARGS[@]}" \
        --threads="$threads" --time="$DURATION" --report-interval=0 --percentile=99 \
        --histogram=off run; then
    status=failed
  fi
  cpu_snapshot; SNAP1=("${SNAP[@]}")
  perf_stop "$WORK/perf.out"
  cpu_delta

  local queries qps p99 avg errors
  queries=$(sed -n 's/^ *queries: *\([0-9][0-9]*\) *(\([0-9.]*\) per sec.).*/\1/p' "$raw")
  qps=$(sed -n 's/^ *queries: *\([0-9][0-9]*\) *(\([0-9.]*\) per sec.).*/\2/p' "$raw")
  p99=$(sed -n 's/^ *99th percentile: *\([0-9.]*\).*/\1/p' "$raw")
  avg=$(sed -n 's/^ *avg: *\([0-9.]*\).*/\1/p' "$raw")
  errors=$(sed -n 's/^ *ignored errors: *\([0-9][0-9]*\).*/\1/p' "$raw")
  if [[ $status == ok && ( -z $qps || -z $p99 ) ]]; then
    status=failed
  fi
  if [[ $status != ok ]]; then
    FAILED_RUNS=$((FAILED_RUNS + 1))
    warn "$workload t=$threads rep=$rep $path FAILED; last lines of $raw:"
    tail -n 5 "$raw" >&2 || true
  fi
  local proxy_ticks
  proxy_ticks=$(path_proxy_ticks "$path")

  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' \
    "$(date -u +%FT%TZ)" "$workload" "$threads" "$rep" "$order" "$path" "$DURATION" "$status" \
    "${queries:-}" "${qps:-}" "${p99:-}" "${avg:-}" "${errors:-}" \
    "$(fmt_centi "$pre_other")" "$(fmt_centi "$D_OTHER")" "$(fmt_centi "$D_IRQ")" "$(fmt_centi "$D_STEAL")" \
    "$NOISY" "$(ticks_to_secs "$D_SERVER")" "$(ticks_to_secs "$proxy_ticks")" \
    "$(ticks_to_secs "$D_SELF")" "${PERF_INSTR:-}" >>"$RUNS_CSV"
  printf '  %-17s t=%-2s rep=%s %-17s QPS %9s  p99 %7s ms  other-CPU %5s%% (before %s%%)%s\n' \
    "$workload" "$threads" "$rep" "$path" "${qps:--}" "${p99:--}" "$(fmt_centi "$D_OTHER")" \
    "$(fmt_centi "$pre_other")" "$([[ $status == ok ]] || echo "  FAILED")" >&2
}

run_sysbench_matrix() {
  local workload threads rep i path
  local -a plain=() tlsp=() run_order=()
  for path in ${PATHS//,/ }; do
    if path_is_tls "$path"; then tlsp+=("$path"); else plain+=("$path"); fi
  done
  for workload in $WORKLOADS; do
    for threads in $THREADS; do
      for ((rep = 1; rep <= REPS; rep++)); do
        # Interleave: every path runs back to back under the same conditions,
        # and the order rotates per rep so no path always goes first.
        mapfile -t run_order < <(rotated $((rep - 1)) "${plain[@]}"; rotated $((rep - 1)) "${tlsp[@]}")
        for i in "${!run_order[@]}"; do
          run_sysbench "$workload" "$threads" "$rep" "$((i + 1))" "${run_order[i]}"
        done
      done
    done
  done
}

# ------------------------------------------------------- connection rate --

write_connrate_client() {
  cat >"$WORK/connrate.py" <<'PY'
"""Connection-rate client: each worker loops connect (+TLS) / login /
SELECT 1 / close for a fixed time. Prints one JSON line."""
import argparse, json, multiprocessing as mp, ssl, sys, time
import pymysql

def kwargs(a):
    # autocommit=None: PyMySQL then sends no SET autocommit after login, so a
    # connection costs exactly handshake + login + one query + COM_QUIT.
    kw = dict(host="127.0.0.1", port=a.port, user=a.user, password=a.password,
              autocommit=None, connect_timeout=5, read_timeout=10, write_timeout=10)
    if a.ca:
        # One context per process, handed to PyMySQL as is: building one per
        # connection costs ~0.7 ms of client CPU with OpenSSL 3. It verifies
        # the chain and the 127.0.0.1 SAN. No session reuse: every connection
        # is a full handshake, on both paths alike.
        ctx = ssl.create_default_context(cafile=a.ca)
        ctx.check_hostname = True
        kw["ssl"] = ctx
    return kw

def worker(a):
    kw = kwargs(a)
    n = errors = 0
    first_error = None
    start = time.monotonic()
    deadline = start + a.secs
    while time.monotonic() < deadline:
        try:
            c = pymysql.connect(**kw)
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchall()
            finally:
                c.close()
            n += 1
        except Exception as e:  # count and go on; stop if nothing ever works
            errors += 1
            first_error = first_error or repr(e)
            if n == 0 and errors >= 50:
                break
            time.sleep(0.01)
    return n, errors, time.monotonic() - start, first_error

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--ca")
    p.add_argument("--secs", type=float, required=True)
    p.add_argument("--workers", type=int, required=True)
    a = p.parse_args()
    tls = "none"
    try:  # one probe connection: fail fast and record what TLS was negotiated
        c = pymysql.connect(**kwargs(a))
        if a.ca:
            # PyMySQL 1.0 silently stays plaintext when the server does not
            # advertise CLIENT_SSL: refuse to report that as a TLS figure.
            if not isinstance(c._sock, ssl.SSLSocket):
                raise RuntimeError("server did not offer TLS; PyMySQL fell back to plaintext")
            tls = "%s %s" % (c._sock.version(), c._sock.cipher()[0])
        c.close()
    except Exception as e:
        print(json.dumps({"error": repr(e)}))
        return 1
    with mp.get_context("fork").Pool(a.workers) as pool:
        res = pool.map(worker, [a] * a.workers)
    conns = sum(r[0] for r in res)
    errors = sum(r[1] for r in res)
    rate = sum(r[0] / r[2] for r in res if r[2] > 0)
    first = next((r[3] for r in res if r[3]), None)
    print(json.dumps({"conns": conns, "errors": errors, "rate": round(rate, 1),
                      "tls": tls, "first_error": first}))
    return 0 if conns > 0 else 1

sys.exit(main())
PY
}

run_connrate() {
  local rep=$1 order=$2 path=$3
  local port ca="" raw
  port=$(path_port "$path")
  path_is_tls "$path" && ca=$WORK/certs/ca.pem
  raw=$OUT/raw/connrate-r$rep-$path.json
  local -a ca_arg=()
  [[ -n $ca ]] && ca_arg=(--ca "$ca")

  wait_for_quiet
  local pre_other=$QUIET_OTHER status=ok
  cpu_snapshot; SNAP0=("${SNAP[@]}")
  if ! run_child $((CONNRATE_SECS + 60)) "$raw" "$PYTHON" "$WORK/connrate.py" --port "$port" \
      --user "$DB_USER" --password "$DB_PASS" "${ca_arg[@]}" --secs "$CONNRATE_SECS" \
      --workers "$CONNRATE_WORKERS"; then
    status=failed
  fi
  cpu_snapshot; SNAP1=("${SNAP[@]}")
  cpu_delta

  local fields conns errors rate tls
  fields=$("$PYTHON" -c 'import json,sys
try: d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception: d = {}
print(d.get("conns",""), d.get("errors",""), d.get("rate",""), d.get("tls") or "", sep="\t")' "$raw")
  IFS=$'\t' read -r conns errors rate tls <<<"$fields"
  [[ -n $rate ]] || status=failed
  if [[ $status != ok ]]; then
    FAILED_RUNS=$((FAILED_RUNS + 1))
    warn "connrate rep=$rep $path FAILED: $(tail -c 400 "$raw")"
  fi
  local proxy_ticks
  proxy_ticks=$(path_proxy_ticks "$path")
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' \
    "$(date -u +%FT%TZ)" "$rep" "$order" "$path" "$CONNRATE_SECS" "$CONNRATE_WORKERS" "$status" \
    "${conns:-}" "${errors:-}" "${rate:-}" "${tls:-}" \
    "$(fmt_centi "$pre_other")" "$(fmt_centi "$D_OTHER")" "$NOISY" \
    "$(ticks_to_secs "$D_SERVER")" "$(ticks_to_secs "$proxy_ticks")" >>"$CONN_CSV"
  printf '  connrate rep=%s %-17s %8s conn/s  errors %s  tls %s  other-CPU %5s%% (before %s%%)%s\n' \
    "$rep" "$path" "${rate:--}" "${errors:--}" "${tls:-?}" "$(fmt_centi "$D_OTHER")" \
    "$(fmt_centi "$pre_other")" "$([[ $status == ok ]] || echo "  FAILED")" >&2
}

run_connrate_matrix() {
  ((CONNRATE_SECS > 0)) || { log "CONNRATE_SECS=0: skipping connection rate"; return 0; }
  log "connection rate: $CONNRATE_WORKERS workers x ${CONNRATE_SECS}s per path, $REPS reps"
  local rep i path
  local -a plain=() tlsp=() run_order=()
  for path in ${PATHS//,/ }; do
    if path_is_tls "$path"; then tlsp+=("$path"); else plain+=("$path"); fi
  done
  for ((rep = 1; rep <= REPS; rep++)); do
    mapfile -t run_order < <(rotated $((rep - 1)) "${plain[@]}"; rotated $((rep - 1)) "${tlsp[@]}")
    for i in "${!run_order[@]}"; do
      run_connrate "$rep" "$((i + 1))" "${run_order[i]}"
    done
  done
}

# ------------------------------------------------------------------ memory --

write_memory_client() {
  cat >"$WORK/hold.py" <<'PY'
"""Opens N logged-in connections (login + SELECT 1), prints 'ready', holds them until
stdin closes, then closes them."""
import argparse, ssl, sys
import pymysql

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--user", required=True)
p.add_argument("--password", required=True)
p.add_argument("--ca")
p.add_argument("--n", type=int, required=True)
a = p.parse_args()
kw = dict(host="127.0.0.1", port=a.port, user=a.user, password=a.password, autocommit=None)
if a.ca:
    kw["ssl"] = ssl.create_default_context(cafile=a.ca)
conns = []
for _ in range(a.n):
    c = pymysql.connect(**kw)
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    conns.append(c)
print("ready", flush=True)
sys.stdin.read()
for c in conns:
    c.close()
PY
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Resident memory of each proxy with MEMORY_CONNS idle, logged-in connections, against its
# resident memory with none: the per-connection cost an operator sizes for.
run_memory() {
  ((MEMORY_CONNS > 0)) || { log "MEMORY_CONNS=0: skipping the memory figure"; return 0; }
  log "memory: $MEMORY_CONNS idle logged-in connections per proxy path"
  {
    echo
    echo "## Memory ($MEMORY_CONNS idle logged-in connections; proxy VmRSS)"
    echo
    echo "| path | RSS before (KiB) | RSS with connections (KiB) | per connection (KiB) |"
    echo "|---|---|---|---|"
  } >"$OUT/memory.md"
  local path pid before after ca fifo holder
  for path in ${PATHS//,/ }; do
    pid=$(path_proxy_pid "$path")
    [[ -n $pid ]] || continue
    ca=""
    path_is_tls "$path" && ca=$WORK/certs/ca.pem
    before=$(rss_kib "$pid")
    fifo=$WORK/hold-$path.fifo
    rm -f "$fifo"; mkfifo "$fifo"
    # The holder reads stdin from the fifo; keeping fd 9 open keeps the connections open.
    "$PYTHON" "$WORK/hold.py" --port "$(path_port "$path")" --user "$DB_USER" --password "$DB_PASS" \
      ${ca:+--ca "$ca"} --n "$MEMORY_CONNS" <"$fifo" >"$WORK/hold-$path.out" 2>&1 &
    holder=$!
    exec 9>"$fifo"
    local waited=0
    until grep -q ready "$WORK/hold-$path.out" 2>/dev/null; do
      if ! kill -0 "$holder" 2>/dev/null || ((waited >= 600)); then
        exec 9>&-
        warn "memory $path: holder failed: $(tail -c 300 "$WORK/hold-$path.out")"
        FAILED_RUNS=$((FAILED_RUNS + 1))
        continue 2
      fi
      sleep 0.1; waited=$((waited + 1))
    done
    after=$(rss_kib "$pid")
    exec 9>&-
    wait "$holder" || true
    printf '| %s | %s | %s | %s |\n' "$path" "$before" "$after" \
      "$(awk -v a="$after" -v b="$before" -v n="$MEMORY_CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')" >>"$OUT/memory.md"
    printf '  memory %-17s RSS %s KiB -> %s KiB with %s connections\n' "$path" "$before" "$after" "$MEMORY_CONNS" >&2
  done
}

# --------------------------------------------------------------- summary --

write_summarizer() {
  cat >"$WORK/summarize.py" <<'PY'
"""Medians and ratios from runs.csv / connrate.csv -> summary.md (also printed)."""
import csv, os, statistics, sys

out = sys.argv[1]
runs = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
conns = list(csv.DictReader(open(os.path.join(out, "connrate.csv"))))

def med(rows, key):
    vals = [float(r[key]) for r in rows if r["status"] == "ok" and r.get(key) not in ("", None)]
    return statistics.median(vals) if vals else None

def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"

def num(v, fmt="%.0f"):
    return fmt % v if v is not None else "-"

def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

md = []
with open(os.path.join(out, "settings.txt")) as f:
    md.append("# flexgate end-to-end benchmark\n\n```\n" + f.read().strip() + "\n```\n")

keys = []
for r in runs:
    k = (r["workload"], int(r["threads"]))
    if k not in keys:
        keys.append(k)
paths = []
for r in runs + conns:
    if r["path"] not in paths:
        paths.append(r["path"])

def sel(w, t, p):
    return [r for r in runs if r["workload"] == w and int(r["threads"]) == t and r["path"] == p]

def us_per_query(rows, key):
    vals = [float(r[key]) * 1e6 / float(r["queries"]) for r in rows
            if r["status"] == "ok" and r["queries"] and float(r["queries"]) > 0]
    return statistics.median(vals) if vals else None

def per_query(rows, key):
    vals = [float(r[key]) / float(r["queries"]) for r in rows
            if r["status"] == "ok" and r.get(key) and r["queries"] and float(r["queries"]) > 0]
    return statistics.median(vals) if vals else None

have = {r["path"] for r in runs if r["status"] == "ok"}
# The baseline columns only appear when a baseline path ran (ok or not), so a
# run without FLEXGATE_BASE_BIN renders exactly as before.
base = "flexgate-base" in paths
base_tls = "flexgate-base-tls" in paths

if have & {"direct", "haproxy", "flexgate", "flexgate-base"}:
    md.append("## Plaintext throughput (median QPS)\n")
    rows = []
    for w, t in keys:
        q = {p: med(sel(w, t, p), "qps") for p in ("direct", "haproxy", "flexgate", "flexgate-base")}
        rows.append([w, str(t), num(q["direct"]), num(q["haproxy"]), num(q["flexgate"]),
                     ratio(q["flexgate"], q["direct"]), ratio(q["flexgate"], q["haproxy"]),
                     ratio(q["haproxy"], q["direct"])]
                    + ([num(q["flexgate-base"]), ratio(q["flexgate-base"], q["haproxy"]),
                        ratio(q["flexgate"], q["flexgate-base"])] if base else []))
    md.append(table(["workload", "threads", "direct", "haproxy", "flexgate",
                     "flexgate/direct", "flexgate/haproxy", "haproxy/direct"]
                    + (["flexgate-base", "flexgate-base/haproxy", "flexgate/flexgate-base"]
                       if base else []), rows) + "\n")

    md.append("## Plaintext latency (median of per-run p99, ms)\n")
    rows = []
    for w, t in keys:
        l = {p: med(sel(w, t, p), "p99_ms") for p in ("direct", "haproxy", "flexgate", "flexgate-base")}
        rows.append([w, str(t), num(l["direct"], "%.2f"), num(l["haproxy"], "%.2f"),
                     num(l["flexgate"], "%.2f"), ratio(l["flexgate"], l["haproxy"]),
                     ratio(l["haproxy"], l["direct"])]
                    + ([num(l["flexgate-base"], "%.2f"), ratio(l["flexgate-base"], l["haproxy"]),
                        ratio(l["flexgate"], l["flexgate-base"])] if base else []))
    md.append(table(["workload", "threads", "direct p99", "haproxy p99", "flexgate p99",
                     "flexgate/haproxy p99", "haproxy/direct p99"]
                    + (["flexgate-base p99", "flexgate-base/haproxy p99", "flexgate/flexgate-base p99"]
                       if base else []), rows) + "\n")

if have & {"direct-tls", "haproxy-tls", "flexgate-tls", "flexgate-base-tls"}:
    md.append("## TLS (client-side TLS; flexgate is plaintext to MariaDB)\n")
    rows = []
    for w, t in keys:
        q = {p: med(sel(w, t, p), "qps")
             for p in ("direct-tls", "haproxy-tls", "flexgate-tls", "flexgate-base-tls")}
        l = {p: med(sel(w, t, p), "p99_ms") for p in ("direct-tls", "flexgate-tls", "flexgate-base-tls")}
        rows.append([w, str(t), num(q["direct-tls"]), num(q["flexgate-tls"]),
                     ratio(q["flexgate-tls"], q["direct-tls"])]
                    + ([num(q["flexgate-base-tls"]), ratio(q["flexgate-base-tls"], q["direct-tls"]),
                        ratio(q["flexgate-tls"], q["flexgate-base-tls"])] if base_tls else [])
                    + [num(l["direct-tls"], "%.2f"), num(l["flexgate-tls"], "%.2f"),
                       ratio(l["flexgate-tls"], l["direct-tls"])]
                    + ([num(l["flexgate-base-tls"], "%.2f"),
                        ratio(l["flexgate-base-tls"], l["direct-tls"]),
                        ratio(l["flexgate-tls"], l["flexgate-base-tls"])] if base_tls else [])
                    + ([num(q["haproxy-tls"])] if "haproxy-tls" in paths else []))
    md.append(table(["workload", "threads", "mariadb-tls QPS", "flexgate-tls QPS",
                     "flexgate-tls/mariadb-tls"]
                    + (["flexgate-base-tls QPS", "flexgate-base-tls/mariadb-tls",
                        "flexgate-tls/flexgate-base-tls"] if base_tls else [])
                    + ["mariadb-tls p99", "flexgate-tls p99", "flexgate-tls/mariadb-tls p99"]
                    + (["flexgate-base-tls p99", "flexgate-base-tls/mariadb-tls p99",
                        "flexgate-tls/flexgate-base-tls p99"] if base_tls else [])
                    + (["haproxy-tls (passthrough) QPS"] if "haproxy-tls" in paths else []),
                    rows) + "\n")

PROXIES = ("haproxy", "flexgate", "flexgate-tls", "flexgate-base", "flexgate-base-tls")
if have & set(PROXIES):
    md.append("## Proxy CPU cost (median CPU µs per query, from /proc/PID/stat)\n")
    rows = []
    for w, t in keys:
        c = {p: us_per_query(sel(w, t, p), "proxy_cpu_s") for p in PROXIES}
        i = {p: per_query(sel(w, t, p), "proxy_instructions") for p in PROXIES}
        rows.append([w, str(t), num(c["haproxy"], "%.1f"), num(c["flexgate"], "%.1f"),
                     num(c["flexgate-tls"], "%.1f"), ratio(c["flexgate"], c["haproxy"])]
                    + ([num(c["flexgate-base"], "%.1f"), ratio(c["flexgate-base"], c["haproxy"]),
                        ratio(c["flexgate"], c["flexgate-base"])] if base else [])
                    + ([num(c["flexgate-base-tls"], "%.1f"),
                        ratio(c["flexgate-tls"], c["flexgate-base-tls"])] if base_tls else [])
                    + [num(i["haproxy"]), num(i["flexgate"]), num(i["flexgate-tls"])]
                    + ([num(i["flexgate-base"])] if base else [])
                    + ([num(i["flexgate-base-tls"])] if base_tls else []))
    md.append(table(["workload", "threads", "haproxy µs/q", "flexgate µs/q", "flexgate-tls µs/q",
                     "flexgate/haproxy"]
                    + (["flexgate-base µs/q", "flexgate-base/haproxy", "flexgate/flexgate-base"]
                       if base else [])
                    + (["flexgate-base-tls µs/q", "flexgate-tls/flexgate-base-tls"] if base_tls else [])
                    + ["haproxy instr/q", "flexgate instr/q", "flexgate-tls instr/q"]
                    + (["flexgate-base instr/q"] if base else [])
                    + (["flexgate-base-tls instr/q"] if base_tls else []), rows) + "\n")

if conns:
    md.append("## Connection rate (connect, login, SELECT 1, close; median conn/s)\n")
    r = {p: med([c for c in conns if c["path"] == p], "conn_per_s") for p in paths}
    tls = {c["path"]: c["tls"] for c in conns if c["tls"] and c["tls"] != "none"}
    def proxy_us_per_conn(p):
        vals = [float(c["proxy_cpu_s"]) * 1e6 / float(c["conns"]) for c in conns
                if c["path"] == p and c["status"] == "ok" and c["conns"] and float(c["conns"]) > 0]
        return statistics.median(vals) if vals and p not in ("direct", "direct-tls") else None
    md.append(table(["path", "conn/s", "proxy CPU µs/conn", "TLS negotiated"],
                    [[p, num(r[p]), num(proxy_us_per_conn(p), "%.0f"), tls.get(p, "none")]
                     for p in paths if any(c["path"] == p for c in conns)]) + "\n")
    conn_base = any(c["path"] == "flexgate-base" for c in conns)
    conn_base_tls = any(c["path"] == "flexgate-base-tls" for c in conns)
    pairs = [("flexgate", "direct"), ("flexgate", "haproxy"), ("haproxy", "direct"),
             ("flexgate-tls", "direct-tls")]
    if conn_base:
        pairs += [("flexgate-base", "haproxy"), ("flexgate", "flexgate-base")]
    if conn_base_tls:
        pairs += [("flexgate-base-tls", "direct-tls"), ("flexgate-tls", "flexgate-base-tls")]
    def label(p):
        return "mariadb-tls" if p == "direct-tls" else p
    # With a baseline, the proxy CPU per connection is the steadier
    # before/after figure (conn/s is bounded by the Python client), so it gets
    # a column; it is "-" where one side is not a proxy.
    cpu_col = conn_base or conn_base_tls
    md.append(table(["ratio", "value"] + (["proxy CPU µs/conn"] if cpu_col else []), [
        ["%s/%s" % (label(a), label(b)), ratio(r.get(a), r.get(b))]
        + ([ratio(proxy_us_per_conn(a), proxy_us_per_conn(b))] if cpu_col else [])
        for a, b in pairs]) + "\n")

allrows = runs + conns
if allrows:
    others = [float(r["other_cpu_run_pct"]) for r in allrows if r["other_cpu_run_pct"]]
    noisy = sum(1 for r in allrows if r["noisy"] == "1")
    failed = [r for r in allrows if r["status"] != "ok"]
    md.append("## Noise and failures\n")
    md.append("- other processes' CPU during runs (%% of all CPUs): median %.1f, max %.1f"
              % (statistics.median(others), max(others)) if others else "- no CPU samples")
    md.append("- runs started on a busy machine (waited the limit and ran anyway): %d of %d" % (noisy, len(allrows)))
    md.append("- failed runs: %d%s" % (len(failed), "".join(
        "\n  - %s %s t=%s rep=%s" % (r.get("workload", "connrate"), r["path"], r.get("threads", "-"), r["rep"])
        for r in failed)))
    md.append("")

text = "\n".join(md)
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
PY
}

# "path (--version, sha256 prefix), N threads running". Two builds of nearby
# commits usually print the same --version, so the hash tells them apart.
describe_flexgate() {
  local bin=$1 pid=$2 version sha
  version=$("$bin" --version 2>/dev/null | head -n 1) || true
  sha=$(sha256sum "$bin" | cut -c1-12)
  printf '%s (%s, sha256 %s), %s threads running' "$bin" "${version:-version unknown}" "$sha" \
    "$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l)"
}

write_settings() {
  {
    echo "date:        $(date -u +%FT%TZ)"
    echo "host:        $(nproc) CPUs, kernel $(uname -r)"
    echo "paths:       $PATHS"
    echo "workloads:   $WORKLOADS"
    echo "threads:     $THREADS"
    echo "duration:    ${DURATION}s x $REPS reps (interleaved, order rotated per rep)"
    echo "tables:      $TABLES x $TABLE_SIZE rows"
    echo "connrate:    $CONNRATE_WORKERS workers x ${CONNRATE_SECS}s"
    echo "quiet:       other processes <= ${QUIET_PCT}% of all CPUs, wait <= ${QUIET_MAX_WAIT}s"
    echo "sysbench:    $(sysbench --version)${SYSBENCH_EXTRA:+ $SYSBENCH_EXTRA}"
    echo "mariadb:     $(sql_root 'SELECT VERSION()')"
    if [[ -n $HAPROXY_PID ]]; then
      # Count the live threads rather than trusting the config: the default
      # depends on the CPUs HAProxy may run on.
      echo "haproxy:     $(haproxy -v | head -n 1), nbthread ${HAPROXY_NBTHREAD:-default}, $(find "/proc/$HAPROXY_PID/task" -mindepth 1 -maxdepth 1 | wc -l) threads running"
    fi
    if [[ -n $FLEXGATE_PID ]]; then
      echo "flexgate:    $(describe_flexgate "$FLEXGATE_BIN" "$FLEXGATE_PID")"
    fi
    if [[ -n $FLEXGATE_BASE_PID ]]; then
      echo "baseline:    $(describe_flexgate "$FLEXGATE_BASE_BIN" "$FLEXGATE_BASE_PID")"
      if [[ -n $FLEXGATE_PID ]] && cmp -s "$FLEXGATE_BIN" "$FLEXGATE_BASE_BIN"; then
        echo "             (same file as flexgate: the flexgate/flexgate-base ratios measure only noise)"
      fi
    fi
    echo "perf instr:  $([[ $PERF_OK == 1 ]] && echo yes || echo no)"
  } >"$OUT/settings.txt"
}

# ------------------------------------------------------------------ main --

main() {
  require_uint DURATION "$DURATION"; require_uint REPS "$REPS"; require_uint TABLES "$TABLES"
  require_uint TABLE_SIZE "$TABLE_SIZE"; require_uint WARMUP "$WARMUP"
  require_uint CONNRATE_SECS "$CONNRATE_SECS"; require_uint CONNRATE_WORKERS "$CONNRATE_WORKERS"
  require_uint QUIET_PCT "$QUIET_PCT"; require_uint QUIET_MAX_WAIT "$QUIET_MAX_WAIT"
  ((DURATION > 0 && REPS > 0)) || die "DURATION and REPS must be positive"
  local p t
  for p in ${PATHS//,/ }; do
    case $p in
      direct | direct-tls | haproxy | haproxy-tls | flexgate | flexgate-tls) ;;
      flexgate-base | flexgate-base-tls) ;;
      *) die "unknown path '$p' in PATHS (direct, haproxy, flexgate, direct-tls, haproxy-tls, flexgate-tls, flexgate-base, flexgate-base-tls)" ;;
    esac
  done
  for t in $THREADS; do require_uint THREADS "$t"; done
  check_base_bin

  ensure_packages
  resolve_flexgate
  ulimit -n 65536 2>/dev/null || true   # 32 threads x 2 legs is fine, but leave headroom

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/flexgate-e2e.XXXXXX")
  mkdir -p "$OUT/raw"
  OUT=$(cd "$OUT" && pwd)
  RUNS_CSV=$OUT/runs.csv
  CONN_CSV=$OUT/connrate.csv
  echo "time,workload,threads,rep,order,path,duration_s,status,queries,qps,p99_ms,avg_ms,errors,other_cpu_before_pct,other_cpu_run_pct,irq_pct,steal_pct,noisy,server_cpu_s,proxy_cpu_s,client_cpu_s,proxy_instructions" >"$RUNS_CSV"
  echo "time,rep,order,path,secs,workers,status,conns,errors,conn_per_s,tls,other_cpu_before_pct,other_cpu_run_pct,noisy,server_cpu_s,proxy_cpu_s" >"$CONN_CSV"
  log "work dir $WORK, results in $OUT"

  read -r DB_PORT HAP_PORT FG_PORT FGB_PORT ADMIN_PORT < <(pick_free_ports 5)
  make_certs
  start_mariadb
  if path_selected haproxy || path_selected haproxy-tls; then start_haproxy; fi
  if path_selected flexgate || path_selected flexgate-tls; then start_flexgate; fi
  if path_selected flexgate-base || path_selected flexgate-base-tls; then start_flexgate_base; fi
  for p in ${PATHS//,/ }; do check_path_login "$p"; done
  log "login checked on every path: ${PATHS}"

  if [[ $WORKLOADS != none ]]; then
    prepare_tables
    if any_tls_path_selected; then
      check_sysbench_tls
    fi
  fi
  check_perf
  write_settings
  write_connrate_client
  write_memory_client
  write_summarizer

  if [[ $WORKLOADS != none ]]; then
    warm_up
    log "sysbench: workloads [$WORKLOADS] threads [$THREADS] x $REPS reps x ${DURATION}s"
    run_sysbench_matrix
  fi
  run_connrate_matrix
  run_memory

  log "summary (also in $OUT/summary.md):"
  "$PYTHON" "$WORK/summarize.py" "$OUT"
  if [[ -f $OUT/memory.md ]]; then
    cat "$OUT/memory.md" >>"$OUT/summary.md"
    cat "$OUT/memory.md"
  fi
  if ((FAILED_RUNS > 0)); then
    die "$FAILED_RUNS run(s) failed; raw output in $OUT/raw, server/proxy logs in $OUT/logs"
  fi
  log "done: $OUT"
}

main "$@"
