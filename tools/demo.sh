#!/bin/bash
# Shoal in a minute: starts a local registry holding a SIF artifact on
# loopback (tests/fixtures/registry: Debian's docker-registry with token auth
# and a blob store behind 307 redirects, host names *.shoal.test), makes a
# name-constrained site CA, starts shoald as an explicit proxy that hijacks
# the registry, pulls the SIF twice through it with an ORAS client (oras-go,
# as Singularity and Apptainer <= 1.2 use), prints the two "peer task done"
# lines of the SIF layer (the second a reuse from Shoal's store) and the
# bytes the registry was spared, and removes everything it started.
#
#   make demo                      (runs this in a private network namespace)
#   BUILD=build tests/integration/isolated.sh -- tools/demo.sh
#
# Needs root (the registry binds 127.0.0.2-4:443 and edits /etc/hosts, which
# isolated.sh makes private copies of) and the test packages (make deps-test).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$root/build}
BUILD=$(cd "$BUILD" && pwd)
export BUILD
# Bold headings on a terminal only.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() {
  echo "demo: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root (run: make demo)"
[ -x "$BUILD/shoald" ] || die "$BUILD/shoald not built (run: make demo)"
for tool in curl jq openssl; do command -v "$tool" >/dev/null || die "$tool missing (make deps-test)"; done
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

t0=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-demo.XXXXXX")
shoald_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$shoald_pid" ] && kill -0 "$shoald_pid" 2>/dev/null; then
    kill -TERM "$shoald_pid"
    wait "$shoald_pid" 2>/dev/null
  fi
  [ -d "$work/fixture" ] && "$root/tests/fixtures/registry/down.sh" "$work/fixture" >/dev/null 2>&1
  if [ "$rc" -ne 0 ]; then
    echo "demo: failed; logs were in $work (removed). Run with SHOAL_DEMO_KEEP=1 to keep them." >&2
  fi
  if [ "${SHOAL_DEMO_KEEP:-0}" = 1 ]; then echo "demo: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "starting a local registry with a SIF artifact (registry.shoal.test on 127.0.0.2:443)"
rc=0
"$root/tests/fixtures/registry/up.sh" "$work/fixture" >"$work/fixture.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  tail -n 20 "$work/fixture.log" >&2
  [ "$rc" -eq 77 ] && die "the registry cannot run here: a tool is missing (make deps-test)"
  die "the registry did not start"
fi
# shellcheck disable=SC1091
. "$work/fixture/env"
echo "    $SHOAL_TEST_SIF_REF: $SHOAL_TEST_SIF_SIZE bytes, $SHOAL_TEST_SIF_DIGEST"

say "making a site CA that may only vouch for *.shoal.test (tools/gen-ca.sh --permit shoal.test)"
"$root/tools/gen-ca.sh" "$work/ca" --permit shoal.test | sed 's/^/    /'

say "starting shoald (explicit proxy, hijacking the registry and its blob store)"
proxy_port=$(free_port)
metrics_port=$(free_port)
# Two binds in a row may get the same ephemeral port.
while [ "$metrics_port" = "$proxy_port" ]; do metrics_port=$(free_port); done
cat >"$work/shoald.yaml" <<EOF
# Dragonfly dfget.yaml sections, as the Singularity/Apptainer guide shows them.
proxy:
  proxies:
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
hijackHTTPS:
  cert: $work/ca/ca.crt
  key: $work/ca/ca.key
  hosts:
    - regx: $SHOAL_TEST_REGISTRY_HOST
    - regx: $SHOAL_TEST_BLOBS_HOST
# Shoal's own: the demo registry's certificates come from its own test CA.
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
EOF
mkdir -p "$work/data" "$work/log"
"$BUILD/shoald" -c "$work/shoald.yaml" --proxy-listen "127.0.0.1:$proxy_port" \
  --metrics-listen "127.0.0.1:$metrics_port" --admin-socket "$work/admin.sock" \
  --data-dir "$work/data" --log-dir "$work/log" --transparent off </dev/null >"$work/shoald.out" 2>&1 &
shoald_pid=$!
for _ in $(seq 100); do
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port" 2>/dev/null && break
  kill -0 "$shoald_pid" 2>/dev/null || { cat "$work/shoald.out" >&2; die "shoald exited"; }
  sleep 0.1
done
echo "    HTTPS_PROXY=http://127.0.0.1:$proxy_port, log $work/log/core.log"

# The client trusts the site CA (hijacked hosts) and the registry's own CA
# (the token host, which Shoal tunnels untouched).
cat "$work/ca/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$work/client-cas.pem"
blobs_mark=$(wc -l <"$SHOAL_TEST_BLOBS_LOG")
for n in 1 2; do
  say "pull $n: oras pull $SHOAL_TEST_SIF_REF through shoald"
  start=$(date +%s%N)
  HTTPS_PROXY=http://127.0.0.1:$proxy_port SSL_CERT_FILE=$work/client-cas.pem \
    "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$work/pull$n" >/dev/null 2>"$work/pull$n.err" ||
    { cat "$work/pull$n.err" >&2; die "pull $n failed"; }
  cmp -s "$work/pull$n/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" || die "pull $n: the SIF differs from the pushed one"
  echo "    $SHOAL_TEST_SIF_NAME identical to the pushed file ($((($(date +%s%N) - start) / 1000000)) ms)"
done

say "grep \"peer task done\" core.log (the SIF layer; the second is a reuse from Shoal's store)"
sleep 0.3  # the log line follows the response
lines=$(jq -c --argjson size "$SHOAL_TEST_SIF_SIZE" \
  'select((.msg | test("peer task done")) and .size == $size) | {ts, msg, task, size}' \
  "$work/log/core.log" 2>/dev/null || true)
[ -n "$lines" ] || die "no \"peer task done\" line for the SIF in core.log"
while read -r l; do echo "    $l"; done <<<"$lines"
[ "$(grep -c 'reuse file peer task done' <<<"$lines")" -ge 1 ] || die "the second pull was not a reuse"

say "what the registry was spared"
metric() {
  curl -sS "http://127.0.0.1:$metrics_port/metrics" | awk -v s="$1" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }'
}
local_bytes=$(metric 'shoal_bytes_total{source="local"}')
origin_bytes=$(metric 'shoal_bytes_total{source="origin"}')
store_gets=$(tail -n +"$((blobs_mark + 1))" "$SHOAL_TEST_BLOBS_LOG" |
  jq -s --arg d "${SHOAL_TEST_SIF_DIGEST#sha256:}" '[.[] | select(.method == "GET" and (.uri | contains($d)))] | length')
printf '    blob store GETs of the SIF over both pulls: %s\n' "$store_gets"
printf '    bytes Shoal sent clients from the origin: %s, from its own store: %s\n' "$origin_bytes" "$local_bytes"
printf '    the registry was spared %s bytes (%.1f MiB)\n' "$local_bytes" "$(awk -v b="$local_bytes" 'BEGIN { print b / 1048576 }')"
say "done in $((SECONDS - t0)) s; cleaning up"
