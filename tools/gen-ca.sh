#!/bin/bash
# Makes the site CA that Shoal mints per-host leaf certificates from, exactly as
# Dragonfly's Singularity proxy guide does with openssl (RSA 2048, self-signed,
# basicConstraints=CA:TRUE, 100 years), but without prompting.
#   tools/gen-ca.sh [DIR] [--cn NAME]
# Writes DIR/ca.key (mode 0600) and DIR/ca.crt; DIR defaults to the current
# directory. Refuses to overwrite an existing ca.key.
set -euo pipefail

dir=.
cn="Shoal site CA"
while [ $# -gt 0 ]; do
  case "$1" in
    --cn) cn="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gen-ca.sh: unknown option $1" >&2; exit 2 ;;
    *) dir="$1"; shift ;;
  esac
done

mkdir -p "$dir"
if [ -e "$dir/ca.key" ]; then
  echo "gen-ca.sh: $dir/ca.key exists; remove it first to make a new CA" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/openssl.conf" <<CONF
[ req ]
distinguished_name = req_distinguished_name
prompt = no
extensions = v3_ca
req_extensions = v3_ca

[ req_distinguished_name ]
CN = $cn

[ v3_ca ]
basicConstraints = CA:TRUE
CONF
(umask 077 && openssl genrsa -out "$tmp/ca.key" 2048 2>/dev/null)
openssl req -new -key "$tmp/ca.key" -nodes -out "$tmp/ca.csr" -config "$tmp/openssl.conf"
openssl x509 -req -days 36500 -extfile "$tmp/openssl.conf" -extensions v3_ca \
  -in "$tmp/ca.csr" -signkey "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
install -m 0600 "$tmp/ca.key" "$dir/ca.key"
install -m 0644 "$tmp/ca.crt" "$dir/ca.crt"
echo "gen-ca.sh: wrote $dir/ca.crt and $dir/ca.key (0600)"
