#!/bin/bash
# Hostile clients against shoald (issue "Hardening"): with 10,000 idle or
# byte-at-a-time connections open, a new 1 KiB request still completes with
# p99 < 100 ms.
#
#   BUILD=/abs/build bench/hostile.sh        (make bench builds what it needs)
#
# shoald (a copy of $BUILD/shoald, `workers: $BENCH_HOSTILE_WORKERS` (1),
# default timeouts: header 30 s, idle 300 s; no proxy.maxConcurrency)
# runs on core $BENCH_PROXY_CPU (1); the origins (tests/fixtures/
# fault_origin.py, plain and TLS) and the load generator
# (build/bench/hostile_load: one process, epoll) on core $BENCH_CLIENT_CPU
# (0). The object is a 1 KiB blob by digest, stored by shoald on the first
# request, so every timed request is served from the store.
#
# 1. baseline: new 1 KiB requests for $BENCH_HOSTILE_SECONDS (40) s, one at a
#    time, each on a new connection, alternating the explicit proxy
#    (absolute-form GET) and the hijacked path (CONNECT, a full TLS 1.2
#    handshake without resumption, GET), with nothing else going on;
# 2. hostile: the same while $BENCH_HOSTILE_CONNS (10,000) connections are
#    held open, half idle (connected, nothing sent), half sending an endless
#    request head one byte per connection every $BENCH_HOSTILE_GAP_MS (1000)
#    ms; each one shoald closes (timeouts.header, 30 s: the whole set
#    expires and is replaced once within the 40 s) is replaced at once.
# Reports p50/p90/p99/max per path and prints PASS/MISS for p99 < 100 ms
# (and no failed request) under the hostile load; also shoald's RSS, open
# descriptors and CPU while the connections are held. Never tuned for.
#
# Writes $BUILD/bench/hostile-results.txt, hostile-raw.txt and the logs
# under $BUILD/bench/hostile-logs/. BENCH_KEEP_TMP=1 keeps the scratch dir.
set -euo pipefail

BENCH_TAG=bench-hostile
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
CONNS_H=${BENCH_HOSTILE_CONNS:-10000}
SECS=${BENCH_HOSTILE_SECONDS:-40}
WORKERS=${BENCH_HOSTILE_WORKERS:-1}
GAP=${BENCH_HOSTILE_GAP_MS:-1000}
TARGET_P99_MS=100
LOAD=$BUILD/bench/hostile_load

for c in taskset python3 awk openssl curl; do command -v "$c" >/dev/null || die "$c not installed"; done
for b in "$BUILD/shoald" "$LOAD"; do [ -x "$b" ] || die "$b not built (run make bench)"; done
[ "$(nproc --all)" -ge 2 ] || say "only one CPU: shoald and the clients share it; figures are not comparable"
# Both shoald and the load generator hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
lim=$(ulimit -n)
[ "$lim" = unlimited ] || [ "$lim" -ge $((CONNS_H + 1000)) ] ||
  die "RLIMIT_NOFILE hard limit $lim is below $((CONNS_H + 1000)) (raise it, e.g. ulimit -Hn 65536 as root)"

bench_scratch shoal-bench-hostile hostile-raw.txt hostile-logs
bench_snapshot_shoald

# Certificates: the site CA shoald mints from, and the origin's.
"$root/tools/gen-ca.sh" "$W/site" --cn "Shoal bench hostile site CA" >/dev/null || die "tools/gen-ca.sh failed"
mkdir -p "$W/origin"
(
  cd "$W/origin"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=hostile origin CA" \
    -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=origin" -keyout leaf.key -out leaf.csr
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out leaf.crt
) >"$W/openssl.log" 2>&1 || die "openssl failed; see $W/openssl.log"

# start_origin NAME [ARGS]: fault_origin.py on CCPU; sets NAME_PORT.
start_origin() {
  local name=$1 port
  shift
  port=$(free_port)
  taskset -c "$CCPU" python3 "$root/tests/fixtures/fault_origin.py" --listen "127.0.0.1:$port" "$@" \
    </dev/null >"$W/$name.log" 2>&1 &
  bg_pids+=("$!")
  wait_port 127.0.0.1 "$port" "$!" "origin $name"
  printf -v "${name}_PORT" %s "$port"
}
plain_PORT="" tls_PORT=""
start_origin plain
start_origin tls --cert "$W/origin/leaf.crt" --key "$W/origin/leaf.key"

pport=$(free_port)
mport=$(free_port)
mkdir -p "$W/shoald/log" "$W/shoald/data"
cat >"$W/shoald.yaml" <<EOF
workers: $WORKERS
hijackHTTPS:
  cert: $W/site/ca.crt
  key: $W/site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$tls_PORT\$
proxy:
  connectPorts: [$tls_PORT]
  proxies:
    - regx: blobs/sha256.*
tls:
  trustStore: $W/origin/ca.crt
EOF
[ "$transparent_off" = 1 ] && printf 'transparent:\n  mode: off\n' >>"$W/shoald.yaml"
taskset -c "$PCPU" "$SHOALD_BIN" -c "$W/shoald.yaml" --proxy-listen "127.0.0.1:$pport" \
  --metrics-listen "127.0.0.1:$mport" --data-dir "$W/shoald/data" --log-dir "$W/shoald/log" \
  --admin-socket "$W/shoald/admin.sock" </dev/null >"$W/shoald/log/stdout.log" 2>&1 &
spid=$!
bg_pids+=("$spid")
wait_port 127.0.0.1 "$pport" "$spid" shoald

digest=$(python3 "$root/tests/fixtures/fault_origin.py" --emit 1024 | sha256sum | cut -d' ' -f1)
obj="/v2/bench/blobs/sha256:$digest?size=1024"
load() {
  taskset -c "$CCPU" "$LOAD" --proxy "127.0.0.1:$pport" --url "http://127.0.0.1:$plain_PORT$obj" \
    --tls-url "https://127.0.0.1:$tls_PORT$obj" --cacert "$W/site/ca.crt" --sni hostile.bench.shoal.test \
    --probe-gap 10 "$@"
}
# Warm up: store the object, mint the leaf.
load --probe-seconds 2 >"$W/warmup.out" 2>"$W/warmup.log" || die "warm-up requests failed: $(cat "$W/warmup.log")"

say "baseline: new 1 KiB requests for $SECS s, no hostile connections"
load --probe-seconds "$SECS" >"$W/baseline.out" 2>"$W/baseline.log" || die "baseline failed: $(cat "$W/baseline.log")"
sed 's/^/baseline /' "$W/baseline.out" >>"$RAW"

say "hostile: $CONNS_H connections ($((CONNS_H / 2)) idle, $((CONNS_H - CONNS_H / 2)) one byte per ${GAP} ms) + new requests for $SECS s"
rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$spid/status")
t0=$(cpu_ticks "$spid")
rc=0
load --idle $((CONNS_H / 2)) --slow $((CONNS_H - CONNS_H / 2)) --slow-gap "$GAP" --reconnect --rate 2000 \
  --probe-seconds "$SECS" >"$W/hostile.out" 2>"$W/hostile.log" &
lpid=$!
bg_pids+=("$lpid")
until grep -q 'ready after' "$W/hostile.log" 2>/dev/null; do
  kill -0 "$lpid" 2>/dev/null || break
  sleep 0.2
done
ready=$(sed -n 's/^hostile_load: //p' "$W/hostile.log" | head -n 1)
t_ready=$(cpu_ticks "$spid")
sleep $((SECS / 2))
rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$spid/status")
fds=$(find "/proc/$spid/fd" -mindepth 1 -maxdepth 1 | wc -l)
active=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '$1 == "shoal_proxy_connections_active" { print $2 }')
wait "$lpid" || rc=$?
t1=$(cpu_ticks "$spid")
sed 's/^/hostile /' "$W/hostile.out" >>"$RAW"
kill -0 "$spid" 2>/dev/null || die "shoald died under the hostile load"
paused=$(grep -c 'listener paused' "$W/shoald/log/core.log" || true)

# row LABEL FILE KIND: "label  p50 p90 p99 max  ok/n"
row() {
  awk -v l="$1" -v k="kind=$3" '$1 == "probe" && $2 == k {
      for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%-34s %8s %8s %8s %8s %8s/%s\n", l, v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"], v["ok"], v["n"] }' "$2"
}
p99() { awk -v k="kind=$2" '$1 == "probe" && $2 == k { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "p99_ms") print kv[2] } }' "$1"; }
failed() { awk -v k="kind=$2" '$1 == "probe" && $2 == k { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "failed") print kv[2] } }' "$1"; }
verdict() {
  local p f
  p=$(p99 "$W/hostile.out" "$1")
  f=$(failed "$W/hostile.out" "$1")
  if [ -n "$p" ] && [ "${f:-1}" = 0 ] && awk -v p="$p" -v t="$TARGET_P99_MS" 'BEGIN { exit !(p < t) }'; then
    echo "PASS  $2: p99 ${p} ms < ${TARGET_P99_MS} ms with $CONNS_H hostile connections open, no failed request"
  else
    echo "MISS  $2: p99 ${p:-?} ms (target < ${TARGET_P99_MS} ms), ${f:-?} failed, with $CONNS_H hostile connections open"
  fi
}

{
  echo "Hostile clients: shoald $( "$SHOALD_BIN" --version 2>/dev/null | head -n 1), workers: $WORKERS on CPU $PCPU; load and origins on CPU $CCPU"
  echo "($dirty uncommitted files in userspace/ include/; load: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "hostile set: $ready; shoald while held: RSS ${rss} KiB (${rss0} KiB before: $(((rss - rss0) * 1024 / CONNS_H)) bytes per connection), ${fds} descriptors, shoal_proxy_connections_active ${active:-?}"
  echo "shoald CPU: $(ticks_s $((t_ready - t0))) s while opening, $(ticks_s $((t1 - t_ready))) s over the ${SECS} s held; listener pauses (EMFILE): $paused"
  grep '^hostile kind=' "$W/hostile.out" | sed 's/^/  /'
  echo
  printf '%-34s %8s %8s %8s %8s %10s\n' "new 1 KiB request (ms)" p50 p90 p99 max ok/n
  row "explicit proxy, idle" "$W/baseline.out" plain
  row "explicit proxy, $CONNS_H hostile" "$W/hostile.out" plain
  row "hijacked TLS, idle" "$W/baseline.out" tls
  row "hijacked TLS, $CONNS_H hostile" "$W/hostile.out" tls
  echo
  verdict plain "explicit proxy (absolute-form GET, stored object)"
  verdict tls "hijacked path (CONNECT + TLS 1.2 handshake + GET, stored object)"
} | tee "$OUT/hostile-results.txt"
[ "$rc" -eq 0 ] || say "hostile_load reported failed requests (exit $rc); see $W/hostile.log"
