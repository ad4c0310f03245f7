#!/usr/bin/env bash
# Instructions per query through flexgate, counted by valgrind's callgrind.
#
#   benches/instructions.sh
#   FLEXGATE_BASE_BIN=/path/to/old/flexgate benches/instructions.sh
#
# This machine's VMs have no hardware counters (perf stat says <not supported>)
# and their steal time moves CPU-per-query figures by several per cent from run
# to run, so benches/e2e.sh cannot see a change of 2%. callgrind counts the
# instructions flexgate executes, the same for the same binary and input
# whatever else the machine does. Each binary serves SMALL and then LARGE
# sysbench point selects over one connection; (LARGE - SMALL) / (LARGE - SMALL
# queries) removes startup and login, leaving the per-query relay cost. The
# median of REPS such pairs is reported.
#
# The current binary runs as CONFIG_EXTRA (TOML appended to both configs,
# default empty) plus CURRENT_EXTRA (appended to the current binary's only).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
FLEXGATE_BIN=${FLEXGATE_BIN:-}
FLEXGATE_BASE_BIN=${FLEXGATE_BASE_BIN:-}
SMALL=${SMALL:-2000}
LARGE=${LARGE:-22000}
REPS=${REPS:-3}
CONFIG_EXTRA=${CONFIG_EXTRA:-}
CURRENT_EXTRA=${CURRENT_EXTRA:-}

log() { printf '[instructions %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 1; }

for pair in valgrind:valgrind sysbench:sysbench mariadbd:mariadb-server \
  mariadb-install-db:mariadb-server mariadb:mariadb-client; do
  command -v "${pair%%:*}" >/dev/null ||
    die "${pair%%:*} is missing; install it with: apt-get install -y ${pair#*:}"
done
((LARGE > SMALL)) || die "LARGE ($LARGE) must be greater than SMALL ($SMALL)"

if [[ -z $FLEXGATE_BIN ]]; then
  log "building flexgate (cargo build --release --bin flexgate)"
  (cd "$REPO_ROOT" && cargo build --release --bin flexgate) || die "cargo build failed"
  FLEXGATE_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/flexgate
fi
[[ -x $FLEXGATE_BIN ]] || die "FLEXGATE_BIN '$FLEXGATE_BIN' is not executable"
[[ -z $FLEXGATE_BASE_BIN || -x $FLEXGATE_BASE_BIN ]] || die "FLEXGATE_BASE_BIN '$FLEXGATE_BASE_BIN' is not executable"

WORK=$(mktemp -d /tmp/flexgate-instr.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$what did not listen on $port"
}

DB_PORT=$(free_port)
FG_PORT=$(free_port)
user=()
[[ $(id -u) -eq 0 ]] && user=(--user=root)
log "MariaDB on 127.0.0.1:$DB_PORT in $WORK"
mariadb-install-db --no-defaults "${user[@]}" --datadir="$WORK/data" --auth-root-authentication-method=normal \
  --skip-test-db >"$WORK/install.log" 2>&1 || { tail -n 20 "$WORK/install.log" >&2; die "mariadb-install-db failed"; }
mariadbd --no-defaults "${user[@]}" --datadir="$WORK/data" --socket="$WORK/sock" --port="$DB_PORT" \
  --bind-address=127.0.0.1 --skip-log-bin --innodb-buffer-pool-size=128M >"$WORK/db.log" 2>&1 &
PIDS+=("$!")
wait_port "$DB_PORT" mariadbd
mariadb --no-defaults -uroot --socket="$WORK/sock" -e \
  "CREATE DATABASE sbtest; CREATE USER sbtest@'%' IDENTIFIED BY 'sbtest'; GRANT ALL ON sbtest.* TO sbtest@'%';"
sb=(--mysql-host=127.0.0.1 --mysql-user=sbtest --mysql-password=sbtest --tables=1 --table-size=1000)
sysbench oltp_point_select "${sb[@]}" --mysql-port="$DB_PORT" prepare >"$WORK/prepare.log" 2>&1 ||
  die "sysbench prepare failed: $(tail -n 5 "$WORK/prepare.log")"

# config name extra: a plaintext listener in front of the server.
config() {
  cat >"$WORK/$1.toml" <<EOF
[backend]
address = "127.0.0.1:$DB_PORT"
[tls]
require_secure_transport = false
[[listener]]
name = "bench"
address = "127.0.0.1:$FG_PORT"
allow = ["127.0.0.1"]
$CONFIG_EXTRA
$2
EOF
}

# count bin config queries: callgrind's instruction total for a run of that many queries.
count() {
  local bin=$1 cfg=$2 n=$3 out="$WORK/cg.$RANDOM" pid
  FLEXGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$cfg" \
    >"$out.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$FG_PORT" "flexgate under callgrind"
  sysbench oltp_point_select "${sb[@]}" --mysql-port="$FG_PORT" --threads=1 --events="$n" --time=0 \
    --db-ps-mode=disable run >"$out.sb" 2>&1 || die "sysbench through flexgate failed: $(tail -n 5 "$out.sb")"
  grep -q "queries: *$n " "$out.sb" || grep -q "transactions: *$n " "$out.sb" ||
    die "sysbench did not run $n queries: $(grep -E 'queries|transactions' "$out.sb")"
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: \([0-9]*\)/\1/p' "$out"
}

per_query() {
  local bin=$1 cfg=$2 results=() small large
  for _ in $(seq 1 "$REPS"); do
    small=$(count "$bin" "$cfg" "$SMALL")
    large=$(count "$bin" "$cfg" "$LARGE")
    results+=($(((large - small) / (LARGE - SMALL))))
  done
  log "$(basename "$cfg" .toml): ${results[*]} instructions/query"
  printf '%s\n' "${results[@]}" | sort -n | sed -n "$(((REPS + 1) / 2))p"
}

config current "$CURRENT_EXTRA"
cur=$(per_query "$FLEXGATE_BIN" "$WORK/current.toml")
printf '| binary | instructions/query (median of %s) |\n|---|---|\n| current (%s) | %s |\n' "$REPS" "$FLEXGATE_BIN" "$cur"
if [[ -n $FLEXGATE_BASE_BIN ]]; then
  config base ""
  base=$(per_query "$FLEXGATE_BASE_BIN" "$WORK/base.toml")
  printf '| base (%s) | %s |\n| current/base | %s |\n' "$FLEXGATE_BASE_BIN" "$base" \
    "$(python3 -c "print(f'{$cur / $base:.3f}')")"
fi
