#!/bin/bash
# Memory stays bounded (VmRSS from /proc/PID/status):
#   a 512 MiB body generated on the fly by tests/fixtures/fault_origin.py,
#   downloaded through a hijacked tunnel by a slow reader (curl
#   --limit-rate 20M for a few seconds, then it stops): shoald's RSS stays
#   under 64 MiB throughout;
#   1,000 concurrent hijacked connections (TLS handshake done, one small
#   keep-alive request answered, all left open; one multiplexed Python
#   client): RSS growth at most 256 KiB per connection, all of them still
#   open afterwards; SIGTERM then closes all of them at once (no grace wait).
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3
N=${SHOAL_MEMORY_CONNS:-1000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((N * 2 + 200)) ] || skip "ulimit -n $(ulimit -n) is too low for $N connections"
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin TLSO --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"
# A log per request at 1,000 requests is fine; per-request lines are not needed here.
cat >"$TEST_TMP/shoald.yaml" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$TLSO_PORT\$
proxy:
  connectPorts: [$TLSO_PORT]
tls:
  trustStore: $TEST_TMP/origin/ca.crt
EOF
start_shoald "$TEST_TMP/shoald.yaml"
pid=$SHOALD_PID
url=https://127.0.0.1:$TLSO_PORT

# sample_rss PID FILE: appends VmRSS (KiB) every 0.1 s until FILE.stop exists.
sample_rss() {
  while [ ! -e "$2.stop" ] && kill -0 "$1" 2>/dev/null; do
    rss_kib "$1" >>"$2"
    sleep 0.1
  done
}

info "slow reader of a 512 MiB body through the hijacked tunnel"
curl -sS -o /dev/null -x "$SHOALD_PROXY" --cacert "$site/ca.crt" "$url/bytes/1000" || fail "warm-up GET failed"
rss0=$(rss_kib "$pid")
sample_rss "$pid" "$TEST_TMP/rss-big" &
sampler=$!
on_exit "touch '$TEST_TMP/rss-big.stop'"
rc=0
curl -sS -o /dev/null -x "$SHOALD_PROXY" --cacert "$site/ca.crt" --limit-rate 20M --max-time 4 \
  -w '%{size_download}' "$url/bytes/536870912" >"$TEST_TMP/big.size" 2>"$TEST_TMP/big.err" || rc=$?
assert_eq "$rc" 28 "curl status of the time-limited slow download (28 = stopped by --max-time)"
got=$(cat "$TEST_TMP/big.size")
[ "$got" -ge $((40 << 20)) ] || fail "the slow reader got only $got bytes in 4 s"
# The reader is gone; the proxy must have noticed and stopped the origin too.
sleep 1
touch "$TEST_TMP/rss-big.stop"
wait "$sampler"
peak=$(sort -n "$TEST_TMP/rss-big" | tail -n 1)
info "RSS: ${rss0} KiB before, peak ${peak} KiB while $((got >> 20)) MiB streamed at 20 MB/s"
[ "${SHOAL_SAN:-0}" = 1 ] || [ "$peak" -lt 65536 ] || fail "shoald's RSS reached ${peak} KiB (limit 64 MiB) during a slow download"
assert_log_has ".msg == \"request\" and .path == \"/bytes/536870912\" and .status == 200 and .bytes < 536870912"

info "a reader that stops reading altogether for 3 s"
rss0=$(rss_kib "$pid")
proxy_client tls --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt" \
  --data "GET /bytes/536870912 HTTP/1.1\r\nHost: x\r\n\r\n" --gap 3 --timeout 0.1 >/dev/null 2>&1 || true
rss1=$(rss_kib "$pid")
info "RSS: ${rss0} KiB before, ${rss1} KiB after a 3 s stalled reader"
[ "${SHOAL_SAN:-0}" = 1 ] || [ "$rss1" -lt 65536 ] || fail "shoald's RSS reached ${rss1} KiB with a stalled reader"

info "$N concurrent hijacked keep-alive connections"
# Warm up: the leaf is minted, per-worker TLS configurations exist.
proxy_client many --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt" \
  --n 20 --path /bytes/100 --release /dev/null >"$TEST_TMP/warm.out" 2>&1 || fail "warm-up failed: $(cat "$TEST_TMP/warm.out")"
sleep 0.5
base=$(rss_kib "$pid")
proxy_client many --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt" \
  --n "$N" --batch 100 --timeout 60 --path /bytes/100 --release "$TEST_TMP/release" \
  >"$TEST_TMP/many.out" 2>"$TEST_TMP/many.err" &
client=$!
on_exit "touch '$TEST_TMP/release'; stop_pid $client"
for _ in $(seq 900); do
  grep -q '^ready' "$TEST_TMP/many.out" && break
  kill -0 "$client" 2>/dev/null || break
  sleep 0.1
done
read -r _ ok failed < <(grep '^ready' "$TEST_TMP/many.out") || fail "the client never got ready: $(cat "$TEST_TMP/many.err")"
assert_eq "$ok/$failed" "$N/0" "connections ready / failed ($(head -c 500 "$TEST_TMP/many.err"))"
sleep 1
active=$(curl -sS "http://127.0.0.1:$SHOALD_METRICS_PORT/metrics" | awk '$1 == "shoal_proxy_connections_active" { print $2 }')
[ "${active%.*}" -ge "$N" ] || fail "shoald reports $active active connections, want $N"
now=$(rss_kib "$pid")
per=$(((now - base) / N))
info "RSS: ${base} KiB before, ${now} KiB with $N connections open: $(((now - base) * 1024 / N)) bytes per connection"
if [ "${SHOAL_SAN:-0}" = 1 ]; then
  info "sanitizer build: RSS limits not checked (ASan's redzones and quarantine inflate them)"
else
  [ "$per" -le 256 ] || fail "RSS grew ${per} KiB per connection (limit 256 KiB)"
fi
assert_eq "$(log_count '.msg == "request" and .path == "/bytes/100" and .status == 200 and .tls == true')" $((N + 20)) \
  "request lines for the small GETs"
shoald_alive "with $N connections"

info "SIGTERM with $N idle keep-alive connections: all closed at once, shoald exits 0"
t0=$(date +%s.%N)
kill -TERM "$pid"
wait_exit "$pid" 10
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
assert_eq "$WAIT_RC" 0 "shoald exit status"
awk -v s="$secs" 'BEGIN { exit !(s < 3) }' || fail "stopping with $N idle connections took ${secs}s"
touch "$TEST_TMP/release"
wait_exit "$client" 30
assert_eq "$WAIT_RC" 0 "multiplexed client exit status"
closed=$(awk '/^closed-by-proxy/ { print $2 }' "$TEST_TMP/many.out")
assert_eq "$closed" "$N" "idle keep-alive connections closed by the stop"
info "ok"
