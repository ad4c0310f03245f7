#!/usr/bin/env bash
# Checks the container image and Kubernetes examples without a cluster:
#
#   tests/container.sh
#
#   a. every YAML document in examples/kubernetes/ parses (PyYAML) and passes
#      kubernetes-validate --strict, plus the rules the comments there promise
#      (no subPath mounts, grace period longer than the drain, probes on the
#      admin port, non-root, read-only root, no capabilities);
#   b. every flexgate.toml in those ConfigMaps passes `flexgate check-config`,
#      its certificate paths pointed at throwaway certificates;
#   c. examples/container/Dockerfile is replayed without an engine: its build
#      stage's COPY and RUN lines run in a copy of the repository (so the COPY
#      list and .dockerignore are checked too), its runtime stage's COPY --from
#      lines fill a root file system with what distroless/cc-debian12 has, and
#      the binary there must link only against what that image ships. From the
#      rootfs, as uid 65532 (setpriv; and once in a chroot): --version,
#      check-config, the ENTRYPOINT with a backend that is down, the
#      HEALTHCHECK command against it, and a prompt exit 0 on SIGTERM;
#   d. a real engine: podman (installed with apt-get if neither it nor a docker
#      daemon is there) or docker builds the Dockerfile; where that fails (the
#      base images cannot be pulled without access to their registries), the
#      rootfs from (c) is imported into podman and run with the Pod's
#      restrictions, HEALTHCHECK command included. Nothing in (d) fails the
#      script: it prints the engine's exact error and what was not checked.
#
# The build in (c) runs the Dockerfile's own cargo command (--release) in a
# fixed directory under $CARGO_TARGET_DIR (default target/), with that target
# directory: cargo shares artifacts with builds of the checkout, so when
# `cargo build --release` is up to date the step is a no-op. CONTAINER_PROFILE=debug
# drops --release (and says so) for a quick run.
# Needs python3, openssl, ldd, setpriv; root for the uid switch and chroot in (c).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
state=$target/container-check
started=$SECONDS

say() { printf '==> container: %s\n' "$*" >&2; }
die() {
    printf 'tests/container.sh: error: %s\n' "$*" >&2
    exit 1
}
# For what could not be checked: easy to spot in a long CI log.
shout() {
    printf '\n!!! container: NOT CHECKED: %s\n\n' "$*" >&2
}

work=$(mktemp -d)
# uid 65532 runs the binary from $work/rootfs and must be able to get there.
chmod 0711 "$work"
proxy_pid=
podman_ctr=
cleanup() {
    if [[ -n $proxy_pid ]]; then kill "$proxy_pid" 2>/dev/null || true; fi
    if [[ -n $podman_ctr ]]; then podman rm -f "$podman_ctr" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

command -v python3 >/dev/null || die "python3 is missing; install it with: apt-get install python3"
command -v openssl >/dev/null || die "openssl is missing; install it with: apt-get install openssl"
command -v ldd >/dev/null || die "ldd is missing; install it with: apt-get install libc-bin"

# Debian's python3 is externally managed (PEP 668): PyYAML comes from apt there,
# and kubernetes-validate (not packaged) goes into a venv kept under $state.
system_python=0
[[ $(command -v python3) == /usr/bin/python3 ]] && system_python=1

if ! python3 -c 'import yaml' 2>/dev/null; then
    if [[ $system_python -eq 1 && $(id -u) -eq 0 ]]; then
        say "installing python3-yaml"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml >/dev/null ||
            true
    elif [[ $system_python -eq 0 ]]; then
        say "installing PyYAML with pip"
        python3 -m pip install --quiet PyYAML || true
    fi
    python3 -c 'import yaml' 2>/dev/null ||
        die "PyYAML is not importable; install it with: apt-get install python3-yaml (or pip install PyYAML)"
fi

kv=(python3 -m kubernetes_validate)
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    if [[ $system_python -eq 1 ]]; then
        if [[ ! -x $state/venv/bin/python3 ]]; then
            say "creating a venv for kubernetes-validate in $state/venv"
            mkdir -p "$state"
            python3 -m venv --system-site-packages "$state/venv" ||
                die "cannot create a venv; install it with: apt-get install python3-venv"
        fi
        kv=("$state/venv/bin/python3" -m kubernetes_validate)
        if ! "${kv[0]}" -c 'import kubernetes_validate' 2>/dev/null; then
            say "installing kubernetes-validate into $state/venv"
            "$state/venv/bin/pip" install --quiet kubernetes-validate ||
                die "cannot install kubernetes-validate; install it with: $state/venv/bin/pip install kubernetes-validate"
        fi
    else
        say "installing kubernetes-validate with pip"
        python3 -m pip install --quiet kubernetes-validate ||
            die "cannot install kubernetes-validate; install it with: pip install kubernetes-validate"
    fi
fi

# ---------------------------------------------------------------------------
say "(a) parsing and validating examples/kubernetes/*.yaml"
step=$SECONDS
manifests=(examples/kubernetes/*.yaml)
[[ -e ${manifests[0]} ]] || die "no manifests in examples/kubernetes/"
mkdir -p "$work/configs"
python3 - "$work/configs" "${manifests[@]}" <<'PY'
import re, sys, tomllib, yaml

out, files = sys.argv[1], sys.argv[2:]
errors = []

def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", d)
    if not m:
        raise ValueError(f"not a duration: {d!r}")
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]

for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        errors.append(f"{path}: no documents")
    configs = {}  # ConfigMap name -> parsed flexgate.toml
    for d in docs:
        if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
            errors.append(f"{path}: a document without apiVersion/kind")
            continue
        if d["kind"] == "ConfigMap" and "flexgate.toml" in d.get("data", {}):
            name = d["metadata"]["name"]
            text = d["data"]["flexgate.toml"]
            try:
                configs[name] = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                errors.append(f"{path}: ConfigMap {name}: flexgate.toml: {e}")
                continue
            stem = path.rsplit("/", 1)[-1].removesuffix(".yaml")
            with open(f"{out}/{stem}--{name}.toml", "w") as f:
                f.write(text)
    if not configs:
        errors.append(f"{path}: no ConfigMap with a flexgate.toml")
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        where = f"{path}: {d['kind']} {d['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            for m in c.get("volumeMounts", []):
                # A subPath mount never sees ConfigMap or Secret updates.
                if "subPath" in m or "subPathExpr" in m:
                    errors.append(f"{where}: {c['name']} mounts {m['name']} with subPath")
            if "flexgate" not in c.get("image", ""):
                continue
            w = f"{where}: container {c['name']}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            vol = volumes.get(mounts.get("/etc/flexgate", ""), {})
            cm = vol.get("configMap", {}).get("name")
            if cm not in configs:
                errors.append(f"{w}: /etc/flexgate is not a ConfigMap from this file with a flexgate.toml")
                continue
            cfg = configs[cm]
            admin_port = int(cfg.get("admin", {}).get("address", "127.0.0.1:9308").rsplit(":", 1)[1])
            if not cfg.get("admin", {}).get("address", "").startswith("0.0.0.0:"):
                errors.append(f"{w}: [admin] address must bind 0.0.0.0 for the kubelet's probes")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = ports.get(get.get("port"), get.get("port"))
                if get.get("path") != path_ or port != admin_port:
                    errors.append(f"{w}: {probe} must be httpGet {path_} on the admin port {admin_port}")
            drain = seconds(cfg.get("shutdown", {}).get("drain_timeout", "30s"))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= drain + pre:
                errors.append(f"{w}: terminationGracePeriodSeconds {grace} <= preStop {pre}s + drain_timeout {drain}s")
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                    and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                errors.append(f"{w}: securityContext must be runAsNonRoot, readOnlyRootFilesystem, "
                              "allowPrivilegeEscalation false, drop ALL")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits", {}).get("memory"):
                errors.append(f"{w}: needs resource requests and a memory limit")
for e in errors:
    print(f"error: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
"${kv[@]}" --strict --quiet "${manifests[@]}" || die "kubernetes-validate rejected the manifests above"
say "(a) ok: ${#manifests[@]} file(s), $((SECONDS - step))s"

# ---------------------------------------------------------------------------
say "(b) flexgate check-config on the ConfigMaps' flexgate.toml"
step=$SECONDS
# Throwaway CA and leaf; the configs name Secret paths that exist only in a Pod.
certs=$work/certs
mkdir -p "$certs"
(
    cd "$certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=container-check-ca -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=localhost -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
        -extfile server.ext -out server.pem 2>/dev/null
)
cargo build --quiet --locked --bin flexgate
debug_bin=$target/debug/flexgate
for cfg in "$work"/configs/*.toml; do
    # Every cert/key/ca value is replaced; anything else the config names must exist as written.
    python3 - "$cfg" "$certs" <<'PY'
import re, sys
path, certs = sys.argv[1], sys.argv[2]
files = {"cert": "server.pem", "key": "server-key.pem", "ca": "ca.pem"}
text = open(path).read()
text = re.sub(r'(?m)^(\s*(cert|key|ca)\s*=\s*)"[^"]*"',
              lambda m: f'{m[1]}"{certs}/{files[m[2]]}"', text)
open(path, "w").write(text)
PY
    name=$(basename "$cfg" .toml)
    "$debug_bin" check-config --config "$cfg" >/dev/null ||
        die "check-config rejected the flexgate.toml of ${name/--/ ConfigMap } (above)"
    say "(b) ok: ${name/--/: ConfigMap }"
done
say "(b) done in $((SECONDS - step))s"

# ---------------------------------------------------------------------------
say "(c) replaying examples/container/Dockerfile without an engine"
step=$SECONDS
build_root=$state/build-root
rootfs=$work/rootfs
rm -rf "$build_root"
mkdir -p "$build_root" "$rootfs"
# Prints the runtime stage's USER, ENTRYPOINT and HEALTHCHECK for the steps below.
profile=${CONTAINER_PROFILE:-release}
case $profile in
release) ;;
debug) shout "CONTAINER_PROFILE=debug: the Dockerfile's cargo command runs without --release; the image build itself is not what was checked" ;;
*) die "CONTAINER_PROFILE must be release or debug, not $profile" ;;
esac
python3 - examples/container/Dockerfile "$repo" "$build_root" "$rootfs" "$target" "$profile" >"$work/plan.json" <<'PY'
import fnmatch, json, os, shlex, shutil, subprocess, sys, time

dockerfile, repo, build_root, rootfs, target, profile = sys.argv[1:]

def fail(msg):
    print(f"tests/container.sh: error: {dockerfile}: {msg}", file=sys.stderr)
    sys.exit(1)

lines, buf = [], ""
for raw in open(dockerfile):
    s = raw.rstrip("\n")
    if not buf and (not s.strip() or s.lstrip().startswith("#")):
        continue
    if s.endswith("\\"):
        buf += s[:-1] + " "
        continue
    lines.append(buf + s)
    buf = ""

ignore = []
if os.path.exists(f"{repo}/.dockerignore"):
    ignore = [l.strip() for l in open(f"{repo}/.dockerignore")
              if l.strip() and not l.startswith("#")]

def ignored(src):
    return any(not p.startswith("!") and (fnmatch.fnmatch(src, p) or fnmatch.fnmatch(src, p.rstrip("/") + "/*"))
               for p in ignore)

stages, stage, plan = {}, None, {}
workdir = "/"
def inside(root, path):
    return os.path.join(root, path.lstrip("/"))

for line in lines:
    instr, _, rest = line.strip().partition(" ")
    instr, rest = instr.upper(), rest.strip()
    if instr == "FROM":
        words = rest.split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        stage = {"name": name, "image": words[0]}
        # The stage with a name is the builder; the last, unnamed one is the image.
        stage["root"] = build_root if name else rootfs
        if name:
            stages[name] = stage
        workdir = "/"
        print(f"    FROM {words[0]} -> {stage['root']}", file=sys.stderr)
    elif stage is None:
        fail(f"{instr} before FROM")
    elif instr == "WORKDIR":
        workdir = os.path.join(workdir, rest)
        os.makedirs(inside(stage["root"], workdir), exist_ok=True)
    elif instr == "COPY":
        args = shlex.split(rest)
        src_stage = None
        if args[0].startswith("--from="):
            src_stage = stages.get(args.pop(0).split("=", 1)[1])
            if src_stage is None:
                fail(f"COPY from an unknown stage: {line}")
        elif any(a.startswith("--") for a in args):
            fail(f"COPY option not understood by tests/container.sh: {line}")
        *srcs, dest = args
        dest_abs = inside(stage["root"], os.path.join(workdir, dest))
        for src in srcs:
            if src_stage:
                if profile == "debug":
                    src = src.replace("/target/release/", "/target/debug/")
                from_path = inside(src_stage["root"], src)
            else:
                if ignored(src.rstrip("/")):
                    fail(f"COPY {src}: excluded by .dockerignore, a real build would not see it")
                from_path = os.path.join(repo, src)
            if not os.path.exists(from_path):
                fail(f"COPY {src}: {from_path} does not exist")
            # COPY semantics: a directory's contents go into dest; a file goes into
            # dest if dest ends with "/" (or there are several sources), else to dest.
            # copy2/copytree keep mtimes, so cargo sees unchanged sources as unchanged.
            if os.path.isdir(from_path):
                shutil.copytree(from_path, dest_abs, symlinks=True, dirs_exist_ok=True)
            elif dest.endswith("/") or len(srcs) > 1:
                os.makedirs(dest_abs, exist_ok=True)
                shutil.copy2(from_path, dest_abs)
            else:
                os.makedirs(os.path.dirname(dest_abs), exist_ok=True)
                shutil.copy2(from_path, dest_abs)
            print(f"    COPY {src} -> {dest_abs}", file=sys.stderr)
    elif instr == "RUN":
        if stage is not stages.get(stage["name"]):
            fail(f"RUN in the runtime stage cannot be replayed: {line}")
        cwd = inside(stage["root"], workdir)
        # The builder writes target/ under its WORKDIR; here that is the shared
        # target dir, linked in place so COPY --from finds the binary.
        link = os.path.join(cwd, "target")
        if not os.path.lexists(link):
            os.symlink(target, link)
        env = dict(os.environ, CARGO_TARGET_DIR=target)
        cmd = rest
        if profile == "debug":
            cmd = cmd.replace(" --release", "")
        print(f"    RUN {cmd}   (in {cwd})", file=sys.stderr)
        t = time.monotonic()
        r = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=sys.stderr)
        if r.returncode != 0:
            fail(f"RUN failed with exit code {r.returncode}: {cmd}")
        print(f"    RUN took {time.monotonic() - t:.0f}s", file=sys.stderr)
    elif instr in ("USER", "ENTRYPOINT", "EXPOSE", "HEALTHCHECK", "CMD"):
        plan[instr.lower()] = rest
    elif instr == "LABEL":
        pass
    else:
        fail(f"instruction not understood by tests/container.sh: {instr}; extend the replay")

def json_cmd(s, what):
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        fail(f"{what} must be in JSON (exec) form: distroless has no shell")
    if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        fail(f"{what} must be a JSON list of strings")
    return v

if "entrypoint" not in plan or "user" not in plan:
    fail("the runtime stage needs ENTRYPOINT and USER")
plan["entrypoint"] = json_cmd(plan["entrypoint"], "ENTRYPOINT")
if "healthcheck" in plan:
    _, _, cmd = plan["healthcheck"].partition(" CMD ")
    plan["healthcheck_cmd"] = json_cmd(cmd.strip(), "HEALTHCHECK CMD")
plan["expose"] = plan.get("expose", "").split()
print(json.dumps(plan))
PY
plan() { python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print("\n".join(v) if isinstance(v, list) else v)' "$work/plan.json" "$1"; }
user=$(plan user)
mapfile -t entrypoint < <(plan entrypoint)
bin_in_image=${entrypoint[0]}
bin=$rootfs$bin_in_image
[[ -x $bin ]] || die "the ENTRYPOINT $bin_in_image is not in the assembled rootfs"
[[ $user == 65532:65532 ]] || die "USER is $user, not 65532:65532 (distroless's nonroot)"
say "(c) build replayed in $((SECONDS - step))s; image files in $rootfs"

# distroless/cc-debian12 ships glibc (libc, libm, ld-linux and the stubs that
# glibc 2.34+ folded into libc) and libgcc_s. Anything else would be missing at
# run time in the image, though it is present on this build machine.
allowed='^(linux-vdso\.so\.1|linux-gate\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
ldd_out=$(ldd "$bin")
while read -r lib _; do
    [[ -n $lib ]] || continue
    soname=${lib##*/}
    [[ $soname =~ $allowed ]] || die "the binary needs $lib, which distroless/cc-debian12 does not ship:"$'\n'"$ldd_out"
done <<<"$ldd_out"
say "(c) ok: links only against $(awk '{ sub(".*/", "", $1); printf "%s ", $1 }' <<<"$ldd_out")"

# Make the rootfs what the image would be: those libraries at the paths the
# loader looks in, distroless's passwd/group/nsswitch, and the files every
# container runtime bind-mounts (resolv.conf, hosts).
while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done < <(grep -o '/[^ ]*' <<<"$ldd_out")
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/etc/flexgate"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
cp /etc/resolv.conf /etc/hosts "$rootfs/etc/"
# distroless ships Debian's CA bundle, and the binary needs it: `flexgate probe`
# (the HEALTHCHECK) cannot even build its HTTP client without a trust store,
# though it only speaks plain HTTP to loopback.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca_bundle ]] || die "$ca_bundle is missing (distroless has it); install it with: apt-get install ca-certificates"
mkdir -p "$rootfs/etc/ssl/certs"
cp "$ca_bundle" "$rootfs/etc/ssl/certs/"
chmod 1777 "$rootfs/tmp"

# What a deployment mounts at /etc/flexgate: config and certificates, the key
# readable by the image's group only.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listen_port=$(free_port)
etc=$rootfs/etc/flexgate
cp "$certs/server.pem" "$certs/server-key.pem" "$etc/"
chown 0:65532 "$etc/server-key.pem" 2>/dev/null || true
chmod 0640 "$etc/server-key.pem"
cat >"$etc/flexgate.toml" <<EOF
[backend]
# Nothing listens here; the proxy must still start and answer clients (ERR 2003).
address = "127.0.0.1:1"
connect_timeout = "2s"

[tls]
cert = "server.pem"
key = "server-key.pem"

[[listener]]
name = "check"
address = "127.0.0.1:$listen_port"
allow = ["127.0.0.1"]
EOF
# The HEALTHCHECK probes the admin API; the config enables it on a free port.
admin_port=$(free_port)
printf '\n[admin]\naddress = "127.0.0.1:%s"\n' "$admin_port" >>"$etc/flexgate.toml"
mapfile -t hc < <(plan healthcheck_cmd)
[[ ${#hc[@]} -gt 0 ]] || die "the runtime stage has no HEALTHCHECK CMD"
# Its address as written (127.0.0.1:9308) may be taken on this machine.
hc=("${hc[@]/127.0.0.1:9308/127.0.0.1:$admin_port}")

# Waits until the proxy on 127.0.0.1:$1 answers a client as it must with its
# backend down: ERR 2003 (server unreachable) as the first packet, or a
# handshake (protocol 10) if it greets first. Gives up when process $2 dies
# (empty: do not watch a process).
answers() {
    local port=$1 pid=${2:-} got
    for _ in $(seq 50); do
        got=$(python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
d = b""
while len(d) < 7:
    c = s.recv(7 - len(d))
    if not c:
        break
    d += c
if len(d) >= 5 and d[3] == 0 and d[4] == 10:
    print("ok")
elif len(d) == 7 and d[3] == 0 and d[4] == 0xFF and int.from_bytes(d[5:7], "little") == 2003:
    print("ok")
else:
    print("bad:" + d.hex())
' "$port" 2>/dev/null) || got=
        [[ $got == ok ]] && return 0
        [[ -n $got ]] && break
        [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    printf 'no handshake or ERR 2003 on 127.0.0.1:%s (%s)\n' "$port" "${got:-connection refused}" >&2
    return 1
}

# An image command line (absolute paths are the image's) taken from the
# rootfs: every argument starting with / is looked up inside $rootfs. It runs
# as the image's user through setpriv, which execs it (same pid).
host_argv=()
to_host() {
    local a
    host_argv=()
    for a in "$@"; do
        if [[ $a == /* ]]; then host_argv+=("$rootfs$a"); else host_argv+=("$a"); fi
    done
}
if [[ $(id -u) -eq 0 ]]; then
    run_as=(setpriv --reuid=65532 --regid=65532 --clear-groups --)
    # Also once in a chroot, where only the rootfs's own files exist: catches a
    # library or file the binary needs that the image would not have.
    chroot --userspec=65532:65532 "$rootfs" "$bin_in_image" --version >/dev/null ||
        die "the binary does not run in a chroot of the assembled rootfs"
else
    shout "not root: the binary runs as $(id -un), not as uid 65532, and not in a chroot"
    run_as=(env --)
fi
as_image() {
    to_host "$@"
    "${run_as[@]}" "${host_argv[@]}"
}
say "(c) from the rootfs: $(as_image "$bin_in_image" --version)"
as_image "$bin_in_image" check-config --config /etc/flexgate/flexgate.toml >/dev/null ||
    die "check-config failed from the rootfs as uid 65532"
to_host "${entrypoint[@]}"
"${run_as[@]}" "${host_argv[@]}" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
answers "$listen_port" "$proxy_pid" ||
    die "the ENTRYPOINT from the rootfs did not answer a client; its log:"$'\n'"$(cat "$work/proxy.log")"
# setpriv execs the binary, so this pid is the proxy's.
read -r _ ruid euid _ < <(grep '^Uid:' "/proc/$proxy_pid/status")
[[ $(id -u) -ne 0 || ($ruid == 65532 && $euid == 65532) ]] || die "the proxy runs as uid $ruid/$euid, not 65532"
say "(c) ok: the ENTRYPOINT runs (uid $ruid, euid $euid) and answers a client with ERR 2003 (its backend is down)"
hc_ok=0
for _ in $(seq 25); do
    if as_image "${hc[@]}" >/dev/null 2>&1; then
        hc_ok=1
        break
    fi
    sleep 0.2
done
[[ $hc_ok -eq 1 ]] || die "the HEALTHCHECK command fails against the running proxy: ${hc[*]}: $(as_image "${hc[@]}" 2>&1)"
say "(c) ok: the HEALTHCHECK command exits 0: ${hc[*]}"
if [[ $(id -u) -eq 0 ]]; then
    chroot --userspec=65532:65532 "$rootfs" "${hc[@]}" >/dev/null ||
        die "the HEALTHCHECK command fails in a chroot of the rootfs: $(chroot --userspec=65532:65532 "$rootfs" "${hc[@]}" 2>&1)"
    say "(c) ok: and in a chroot of the rootfs, with only the image's files"
fi
# No sessions are open, so the drain (drain_timeout, default 30s) has nothing
# to wait for: the process must be gone within a few seconds.
kill -TERM "$proxy_pid"
for _ in $(seq 50); do
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$proxy_pid" 2>/dev/null; then
    die "the proxy is still running 5s after SIGTERM with no sessions open; its log:"$'\n'"$(cat "$work/proxy.log")"
fi
rc=0
wait "$proxy_pid" || rc=$?
proxy_pid=
[[ $rc -eq 0 ]] || die "the proxy exited with $rc on SIGTERM:"$'\n'"$(cat "$work/proxy.log")"
say "(c) ok: on SIGTERM it exits 0 within 5s"
say "(c) done in $((SECONDS - step))s"

# ---------------------------------------------------------------------------
say "(d) a real container engine"
step=$SECONDS
engine_built=0
if ! command -v podman >/dev/null && ! docker info >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "(d) installing podman"
        if ! out=$(apt-get update -qq 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman 2>&1); then
            shout "apt-get install podman failed: $(grep -m1 -E '^E:' <<<"$out" || tail -n 1 <<<"$out")"
        fi
    fi
fi
if command -v podman >/dev/null; then
    if podman build -f examples/container/Dockerfile -t localhost/flexgate:container-check . >"$work/podman-build.log" 2>&1; then
        engine_built=1
        say "(d) ok: podman build (the image is localhost/flexgate:container-check)"
    else
        shout "podman build failed: $(grep -m1 -E '^(Error|error)' "$work/podman-build.log" || tail -n 1 "$work/podman-build.log")"
    fi
else
    shout "podman is not installed (apt-get install podman)"
fi
if [[ $engine_built -eq 0 ]]; then
    if ! docker_err=$(docker info 2>&1 >/dev/null); then
        shout "docker: $(grep -m1 -iE 'error|cannot|not found' <<<"${docker_err:-docker not installed}" || echo "${docker_err:-not installed}")"
    elif docker build -f examples/container/Dockerfile -t flexgate:container-check . >"$work/docker-build.log" 2>&1; then
        engine_built=1
        say "(d) ok: docker build (the image is flexgate:container-check)"
    else
        shout "docker build failed: $(tail -n 3 "$work/docker-build.log")"
    fi
fi

# Without the real build, run the rootfs from (c) as an image: that at least
# shows the layout works under a real runtime with the Pod's restrictions.
if [[ $engine_built -eq 0 ]] && command -v podman >/dev/null; then
    image=localhost/flexgate:container-check-rootfs
    entrypoint_json=$(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["entrypoint"]))' "$work/plan.json")
    # resolv.conf and hosts are the runtime's to provide.
    if ! tar -C "$rootfs" --exclude=./etc/resolv.conf --exclude=./etc/hosts -c . |
        podman import --change "USER $user" --change "ENTRYPOINT $entrypoint_json" - "$image" \
            >/dev/null 2>"$work/podman-import.log"; then
        shout "podman import of the rootfs failed: $(tail -n 1 "$work/podman-import.log")"
    else
        # As the manifests run it: read-only root, no capabilities, no privilege escalation.
        opts=(--read-only --cap-drop=ALL --security-opt=no-new-privileges --network=host)
        workarounds=()
        # Two host problems seen on the development machines: crun refuses hosts
        # with hybrid cgroups ("cgroups in hybrid mode not supported"), and podman's
        # default rlimits exceed what a root without CAP_SYS_RESOURCE may set.
        # Retry with each workaround, and say which were needed.
        while ! out=$(podman run --rm "${opts[@]}" "${workarounds[@]}" --entrypoint "$bin_in_image" "$image" --version 2>&1); do
            say "(d) podman run failed: $(tail -n 1 <<<"$out")"
            if [[ $out == *"hybrid mode"* && " ${workarounds[*]} " != *" --runtime "* ]] && command -v runc >/dev/null; then
                workarounds+=(--runtime runc)
            elif [[ $out == *[Rr][Ll][Ii][Mm][Ii][Tt]* && " ${workarounds[*]} " != *" --ulimit "* ]]; then
                workarounds+=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
            else
                out=
                break
            fi
        done
        if [[ -z $out ]]; then
            shout "podman cannot run containers on this host (last error above)"
        else
            say "(d) ok: podman runs the rootfs image: $out (host workarounds: ${workarounds[*]:-none})"
            # The config and certificates from (c), mounted as a Pod would.
            podman_ctr=$(podman run -d "${opts[@]}" "${workarounds[@]}" -v "$etc:/etc/flexgate:ro" "$image")
            if answers "$listen_port"; then
                say "(d) ok: the proxy runs under podman (read-only root, no capabilities, user $(podman inspect -f '{{.Config.User}}' "$podman_ctr")) and answers a client"
                if podman exec "$podman_ctr" "${hc[@]}"; then
                    say "(d) ok: the HEALTHCHECK command passes in the container"
                else
                    shout "the HEALTHCHECK command failed in the container: ${hc[*]}"
                fi
                podman stop -t 40 "$podman_ctr" >/dev/null
                rc=$(podman inspect -f '{{.State.ExitCode}}' "$podman_ctr")
                if [[ $rc -eq 0 ]]; then
                    say "(d) ok: podman stop: the proxy exited 0"
                else
                    shout "podman stop: the proxy exited with $rc"
                fi
            else
                shout "the proxy did not answer under podman: $(podman logs "$podman_ctr" 2>&1 | tail -n 3)"
            fi
            podman rm -f "$podman_ctr" >/dev/null 2>&1 || true
            podman_ctr=
        fi
        podman rmi "$image" >/dev/null 2>&1 || true
    fi
    shout "the image itself (examples/container/Dockerfile on its base images) was not built on this machine"
fi
say "(d) done in $((SECONDS - step))s"
say "all container checks done in $((SECONDS - started))s"
