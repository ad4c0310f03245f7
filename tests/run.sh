#!/usr/bin/env bash
# flexgate's test command (the README's second command, and what CI runs).
#
#   tests/run.sh
#
# Installs what the suite needs and is missing (Debian 12: mariadb-server, mariadb-client,
# openssl, PyMySQL), then runs formatting and lint checks, every unit, property and
# integration test, and, when a nightly toolchain is present, a short fuzz run.
# A dependency that cannot be installed stops the run with the command that would install it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# mariadbd lives in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'tests/run.sh: error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "not root and no sudo; run as root: $*"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install these by hand: $*"
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        as_root apt-get update -qq
        apt_updated=1
    fi
    say "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v cargo >/dev/null ||
    die "cargo is not installed; install Rust $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer with rustup"

missing=()
command -v mariadbd >/dev/null || missing+=(mariadb-server)
command -v mariadb >/dev/null || missing+=(mariadb-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
fi
for tool in mariadbd mariadb mariadb-install-db openssl python3; do
    command -v "$tool" >/dev/null || die "$tool is still missing after installing packages"
done

# The Python clients, pinned: the README's client compatibility table is produced by a test
# and names their versions. prometheus_client's parser checks the /metrics exposition.
py_pkgs=(PyMySQL==1.2.4 PyNaCl cryptography mysql-connector-python==26.10.0 prometheus_client)
if ! python3 - <<'PY' 2>/dev/null; then
import importlib.metadata as m
import pymysql, nacl, mysql.connector, prometheus_client
assert m.version("PyMySQL") == "1.2.4" and m.version("mysql-connector-python") == "26.10.0"
PY
    pip_args=(--quiet)
    if [[ "$(command -v python3)" == /usr/bin/python3 ]]; then
        # Debian's python3 is externally managed (PEP 668); the pinned clients are not Debian's.
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        pip_args+=(--break-system-packages)
    fi
    say "installing Python clients: ${py_pkgs[*]}"
    python3 -m pip install "${pip_args[@]}" "${py_pkgs[@]}" ||
        die "cannot install the Python clients; install them with: python3 -m pip install ${py_pkgs[*]}"
fi

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"
# One total over every test binary, for the closing line.
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$test_log")

say "systemd units: systemd-analyze verify and security"
tests/systemd.sh "${CARGO_TARGET_DIR:-target}/debug/flexgate"

say "tests/container.sh (Kubernetes manifests, Dockerfile replay, rootfs as uid 65532)"
# The replay's release build alone is over 3 minutes on 2 cores; the suite replays the
# Dockerfile with a debug build, so the whole run stays well under 30 minutes.
# CONTAINER_PROFILE=release tests/container.sh replays it exactly.
CONTAINER_PROFILE="${CONTAINER_PROFILE:-debug}" tests/container.sh

# Fuzzing needs a nightly toolchain (cargo-fuzz builds with sanitizers); run briefly when
# one is installed, and say so when there is none.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        say "installing cargo-fuzz"
        cargo install --quiet --locked cargo-fuzz
    fi
    secs="${FUZZ_SECONDS:-20}"
    for target in $(cd fuzz && cargo +nightly fuzz list); do
        say "fuzzing $target for ${secs}s"
        # Seed with packets captured from real peers.
        mkdir -p "fuzz/corpus/$target"
        cp crates/mysql-wire/testdata/*.bin "fuzz/corpus/$target/"
        (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=1024 2>&1 | tail -n 3)
    done
else
    say "no nightly toolchain: fuzz targets not run (install one with: rustup toolchain install nightly)"
fi
say "all checks passed"
echo "tests: $passed passed, $failed failed"
