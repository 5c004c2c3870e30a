#!/bin/bash
# Runs a command (by default tests/integration/run.sh with the given GLOB) in
# a private network and mount namespace, so that two integration runs can go
# side by side: each gets its own loopback (the registry fixture binds
# 127.0.0.2-4:443), its own iptables tables and its own /etc/hosts (a copy,
# bind-mounted; the fixture rewrites it in place). Cgroups and BPF links are
# still the machine's: tests name their cgroups uniquely.
#
#   BUILD=build/x tests/integration/isolated.sh [GLOB]
#   tests/integration/isolated.sh -- CMD [ARGS...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "isolated.sh: needs root" >&2; exit 2; }
# A private mount namespace needs / to be a mount point; inside a chroot it
# is not unless the chroot's directory was bind-mounted onto itself.
mountpoint -q / || {
  echo "isolated.sh: / is not a mount point (a chroot? bind-mount its directory onto itself first)" >&2
  exit 2
}
if [ "${1:-}" = "--" ]; then
  shift
  cmd=("$@")
else
  cmd=("$root/tests/integration/run.sh" "$@")
fi
hosts=$(mktemp /tmp/shoal-hosts.XXXXXX)
trap 'rm -f "$hosts"' EXIT
cp /etc/hosts "$hosts"
chmod 644 "$hosts"
unshare --mount --net --propagation private -- bash -c '
  set -e
  mount --bind "$1" /etc/hosts
  ip link set lo up
  shift
  exec "$@"' isolated "$hosts" "${cmd[@]}"
