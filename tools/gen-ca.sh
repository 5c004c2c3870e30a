#!/bin/bash
# Makes the site CA that Shoal mints per-host leaf certificates from, exactly as
# Dragonfly's Singularity proxy guide does with openssl (RSA 2048, self-signed,
# basicConstraints=CA:TRUE, 100 years), but without prompting.
#   tools/gen-ca.sh [DIR] [--cn NAME] [--permit DOMAIN]... [--permit-ip CIDR]...
# Writes DIR/ca.key (mode 0600) and DIR/ca.crt; DIR defaults to the current
# directory. Refuses to overwrite an existing ca.key.
#   --cn NAME         subject CN (default "Shoal site CA"); give the next CA of
#                     a rotation its own name, e.g. "Shoal site CA 2026"
#   --permit DOMAIN   X.509 name constraints: the CA can vouch only for DOMAIN
#                     and its subdomains (".DOMAIN": subdomains only);
#                     repeatable. Without --permit-ip, IP addresses are
#                     excluded altogether (0.0.0.0/0 and ::/0).
#   --permit-ip CIDR  also permit leaves for addresses in CIDR (10.0.0.0/8,
#                     fd00::/8); repeatable; implies name constraints
#   -h, --help        this text
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "gen-ca.sh: $*" >&2
  exit 2
}

# DNS name as a name constraint: letters, digits, '-', '_' in dot-separated
# labels of 1-63 characters; one leading dot allowed (subdomains only).
valid_domain() {
  local d=${1#.}
  [ -n "$d" ] && [ ${#d} -le 253 ] || return 1
  [[ $d =~ ^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$ ]]
}

# CIDR -> "ADDRESS/NETMASK" as openssl's nameConstraints IP syntax wants, or
# nothing (and status 1) when CIDR is not an IPv4 or IPv6 prefix.
cidr_to_openssl() {
  python3 - "$1" <<'PY' 2>/dev/null
import ipaddress, sys
try:
    n = ipaddress.ip_network(sys.argv[1], strict=True)
except ValueError:
    sys.exit(1)
if "/" not in sys.argv[1]:
    sys.exit(1)
print(f"{n.network_address}/{n.netmask}")
PY
}

dir=.
dir_given=0
cn="Shoal site CA"
permits=()
ip_permits=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cn)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "--cn needs a name"; fi
      cn="$2"
      shift 2
      ;;
    --permit)
      [ $# -ge 2 ] || die "--permit needs a domain"
      valid_domain "$2" || die "--permit $2: not a DNS domain (letters, digits, '-', '_' in labels; one leading '.' for subdomains only)"
      permits+=("$(tr '[:upper:]' '[:lower:]' <<<"$2")")
      shift 2
      ;;
    --permit-ip)
      [ $# -ge 2 ] || die "--permit-ip needs a CIDR"
      command -v python3 >/dev/null || die "--permit-ip needs python3"
      ip=$(cidr_to_openssl "$2") || die "--permit-ip $2: not an address prefix such as 10.0.0.0/8 or fd00::/8 (host bits must be zero)"
      ip_permits+=("$ip")
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [ "$dir_given" = 0 ] || die "one DIR only (got $dir and $1)"
      dir="$1"
      dir_given=1
      shift
      ;;
  esac
done

# The name constraints line, if any: permitted DNS and IP subtrees, and every
# address excluded when no IP range is permitted (RFC 5280 constrains each
# name type separately, so a DNS-only constraint would leave IPs open).
constraints=""
if [ ${#permits[@]} -gt 0 ] || [ ${#ip_permits[@]} -gt 0 ]; then
  constraints="critical"
  for d in "${permits[@]}"; do constraints+=",permitted;DNS:$d"; done
  for ip in "${ip_permits[@]}"; do constraints+=",permitted;IP:$ip"; done
  if [ ${#ip_permits[@]} -eq 0 ]; then
    constraints+=",excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:::/::"
  fi
fi

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
if [ -n "$constraints" ]; then
  echo "nameConstraints = $constraints" >>"$tmp/openssl.conf"
fi
(umask 077 && openssl genrsa -out "$tmp/ca.key" 2048 2>/dev/null)
openssl req -new -key "$tmp/ca.key" -nodes -out "$tmp/ca.csr" -config "$tmp/openssl.conf"
openssl x509 -req -days 36500 -extfile "$tmp/openssl.conf" -extensions v3_ca \
  -in "$tmp/ca.csr" -signkey "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
install -m 0600 "$tmp/ca.key" "$dir/ca.key"
install -m 0644 "$tmp/ca.crt" "$dir/ca.crt"
echo "gen-ca.sh: wrote $dir/ca.crt and $dir/ca.key (0600)"
if [ -n "$constraints" ]; then
  what="permitted:"
  for d in "${permits[@]}"; do what+=" DNS:$d"; done
  for ip in "${ip_permits[@]}"; do what+=" IP:$ip"; done
  [ ${#ip_permits[@]} -gt 0 ] || what+="; every IP address excluded"
  echo "gen-ca.sh: name constraints (critical) $what"
fi
