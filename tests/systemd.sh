#!/usr/bin/env bash
# Checks the systemd units in examples/systemd/ without running systemd:
#
#   tests/systemd.sh [path/to/flexgate]
#
# 1. `systemd-analyze verify` on flexgate.service and flexgate.socket: must
#    exit 0 and say nothing about them (unknown keys, bad values and missing
#    binaries are warnings there, with exit status 0, so the output counts).
# 2. `systemd-analyze security --offline=yes` on flexgate.service: prints the
#    exposure score and fails above MAX_EXPOSURE.
# verify checks that every Exec*= binary exists, so the units are checked
# from a copy naming a built flexgate: $1, or target/debug/flexgate (or
# under $CARGO_TARGET_DIR). Neither check needs systemd as PID 1, or the
# flexgate user: verify does not look users up.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# systemd-analyze prints tenths: 20 is an exposure of 2.0. flexgate.service
# scores 1.2 on systemd 252; the margin is for newer systemd versions, which
# add checks.
MAX_EXPOSURE=20
limit="$((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10))"
# Where the units name the binary, and the other things they execute.
INSTALLED_BIN=/usr/local/bin/flexgate

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'tests/systemd.sh: error: %s\n' "$*" >&2
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

if ! command -v systemd-analyze >/dev/null; then
    command -v apt-get >/dev/null ||
        die "systemd-analyze not found; install systemd's tools (package systemd) by hand"
    say "systemd-analyze is missing: installing package systemd"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
    command -v systemd-analyze >/dev/null || die "systemd-analyze is still missing after installing systemd"
fi

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/flexgate}"
[[ -x "$bin" ]] || die "no flexgate binary at $bin; build one (cargo build --bin flexgate) or pass its path"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

units=(flexgate.service flexgate.socket)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for unit in "${units[@]}"; do
    sed "s#$INSTALLED_BIN#$bin#g" "examples/systemd/$unit" >"$work/$unit"
done

say "systemd-analyze verify ${units[*]}"
# A debug level set in the environment would flood the output checked below;
# notice still shows every warning.
status=0
output="$(cd "$work" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --generators=no \
    "${units[@]/#/$work/}" 2>&1)" || status=$?
if [[ -n "$output" ]]; then
    printf '%s\n' "$output" >&2
fi
[[ $status -eq 0 ]] || die "systemd-analyze verify exited with $status"
# Lines about system units the host ships (sysinit.target, ...) are not ours
# to fix; lines naming our units or their copies are.
if grep -E "flexgate|$work" <<<"$output" >/dev/null; then
    die "systemd-analyze verify reported problems in the units (above)"
fi
say "verify: no warnings"

say "systemd-analyze security --offline=yes flexgate.service (fails above $limit)"
status=0
report="$(cd "$work" && SYSTEMD_LOG_LEVEL=notice systemd-analyze security --offline=yes \
    --threshold="$MAX_EXPOSURE" --no-pager "$work/flexgate.service" 2>&1)" || status=$?
score="$(sed -n 's/.*Overall exposure level for flexgate.service: \([0-9.]*\).*/\1/p' <<<"$report")"
if [[ $status -ne 0 || -z "$score" ]]; then
    printf '%s\n' "$report" >&2
    die "exposure ${score:-unknown} exceeds $limit, or systemd-analyze security failed (status $status)"
fi
echo "flexgate.service exposure: $score (limit $limit)"
