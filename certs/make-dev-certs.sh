#!/usr/bin/env bash
# Make a throwaway development CA plus server and client certificates for flexgate.
#
#   certs/make-dev-certs.sh [--force] [DIR]
#
# DIR defaults to certs/dev next to this script. Existing files are kept unless
# --force is given. FOR DEVELOPMENT ONLY: the CA key is stored next to the
# certificates, so anyone who can read DIR can mint certificates this CA signs.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: make-dev-certs.sh [--force] [DIR]

Creates in DIR (default: certs/dev next to this script):
  ca.pem, ca-key.pem            throwaway development CA
  server.pem, server-key.pem    server certificate (leaf + CA chain) and PKCS#8 key
                                SANs: DNS localhost, DNS db.internal, IP 127.0.0.1, IP ::1
  client.pem, client-key.pem    client certificate (for tools that want one)

All keys are EC P-256, certificates are valid for 30 days.
Options:
  --force    replace existing files
  -h, --help show this help
EOF
}

force=0
dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; [[ $# -gt 0 ]] && dir="$1"; break ;;
        -*) echo "make-dev-certs.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *)
            if [[ -n "$dir" ]]; then
                echo "make-dev-certs.sh: only one DIR may be given" >&2
                exit 2
            fi
            dir="$1"
            ;;
    esac
    shift
done

if ! command -v openssl >/dev/null 2>&1; then
    echo "make-dev-certs.sh: openssl not found (Debian: apt-get install openssl)" >&2
    exit 1
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${dir:-$script_dir/dev}"
days=30
files=(ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem)

present=()
for f in "${files[@]}"; do
    [[ -e "$dir/$f" ]] && present+=("$f")
done
if [[ $force -eq 0 && ${#present[@]} -eq ${#files[@]} ]]; then
    echo "Development certificates already exist in $dir (use --force to replace them)."
    exit 0
fi
if [[ $force -eq 0 && ${#present[@]} -gt 0 ]]; then
    echo "make-dev-certs.sh: $dir holds only some of the files (${present[*]});" >&2
    echo "make-dev-certs.sh: rerun with --force to replace them all." >&2
    exit 1
fi

mkdir -p "$dir"
work="$(mktemp -d "$dir/.make-dev-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# EC P-256 keys; `openssl genpkey` writes PKCS#8 ("BEGIN PRIVATE KEY").
genkey() {
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
}
serial() {
    echo "0x$(openssl rand -hex 16)"
}

# --- CA ---------------------------------------------------------------------
genkey "$work/ca-key.pem"
openssl req -x509 -new -sha256 -days "$days" \
    -key "$work/ca-key.pem" -set_serial "$(serial)" \
    -subj "/O=flexgate development/CN=flexgate dev CA (DO NOT TRUST)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca.pem" 2>/dev/null

# sign NAME CN EXTFILE: issue NAME.pem (leaf only) for NAME-key.pem from the CA.
sign() {
    local name="$1" cn="$2" ext="$3"
    genkey "$work/$name-key.pem"
    openssl req -new -sha256 -key "$work/$name-key.pem" \
        -subj "/O=flexgate development/CN=$cn" -out "$work/$name.csr" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$work/$name.csr" \
        -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -set_serial "$(serial)" \
        -extfile "$ext" -out "$work/$name.leaf.pem" 2>/dev/null
}

cat >"$work/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:db.internal, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
cat >"$work/client.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:flexgate-dev-client
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

sign server localhost "$work/server.ext"
sign client flexgate-dev-client "$work/client.ext"

# Chains: leaf first, then the CA.
cat "$work/server.leaf.pem" "$work/ca.pem" >"$work/server.pem"
cat "$work/client.leaf.pem" "$work/ca.pem" >"$work/client.pem"

for f in "${files[@]}"; do
    case "$f" in
        *key.pem) chmod 0600 "$work/$f" ;;
        *) chmod 0644 "$work/$f" ;;
    esac
    mv -f "$work/$f" "$dir/$f"
done

echo "Made development certificates in $dir:"
echo "  ca.pem          development CA certificate (trust this in test clients)"
echo "  ca-key.pem      development CA private key"
echo "  server.pem      server certificate + CA chain (localhost, db.internal, 127.0.0.1, ::1)"
echo "  server-key.pem  server private key (PKCS#8, EC P-256)"
echo "  client.pem      client certificate + CA chain"
echo "  client-key.pem  client private key (PKCS#8, EC P-256)"
echo "Valid for $days days."
echo "WARNING: these certificates are for development only. Never use them in production" >&2
echo "WARNING: and never trust ca.pem outside a test setup: its private key is right next to it." >&2
