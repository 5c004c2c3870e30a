#!/bin/bash
# The soak: shoald's hijacked path under SOAK_CLIENTS (default 1000)
# concurrent TLS clients for two rounds of SOAK_SECONDS (default 60), pulling
# a mix of manifests and blobs (the 8 MiB layer most of all) of the registry
# fixture through the explicit proxy. `make soak` runs it in a private
# network namespace (tests/integration/isolated.sh), since the fixture binds
# 127.0.0.2-4:443:
#
#   make soak                                         (build, then this)
#   tests/integration/isolated.sh -- bash bench/soak.sh   (BUILD=/abs/build)
#
# One load generator process, build/bench/soak_load (epoll + OpenSSL),
# multiplexes every client: CONNECT, TLS with the session of an earlier
# connection offered (tickets), up to SOAK_PER_CONN keep-alive requests per
# connection (default 8, drawn per connection), every body's length and
# sha256 checked. shoald runs with the registry fixture's usual config (the
# guide's two rules: blobs/sha256 and manifests/sha256 go through the task
# engine, the tag manifest is forwarded to the origin each time) and
# proxy.authCheck on. A short warm-up (4 clients, 5 s) fills the store and
# mints the leaf first.
#
# Criteria, each printed PASS/FAIL with its figures (exit 1 on any FAIL):
#   failed or short responses   0 in both rounds
#   digest mismatches           0 in both rounds
#   open descriptors            /proc/PID/fd after round 2 == after warm-up
#   RSS                         after round 2 <= 1.05 x after round 1
# Also printed: requests/s, MB/s, latency, full vs resumed handshakes (the
# client's count and shoald's shoal_tls_handshakes_total), and the load
# average. Results go to stdout and $BUILD/bench/soak-results.txt.
set -euo pipefail

. "$(dirname "$0")/../tests/integration/lib.sh"

CLIENTS=${SOAK_CLIENTS:-1000}
SECONDS_PER_ROUND=${SOAK_SECONDS:-60}
PER_CONN=${SOAK_PER_CONN:-8}
LOAD=$BUILD/bench/soak_load
[ -x "$BUILD/shoald" ] || fail "$BUILD/shoald not built (make soak builds it)"
[ -x "$LOAD" ] || fail "$LOAD not built (make soak builds it)"
need_root
need_cmd curl jq openssl
mkdir -p "$BUILD/bench"
RESULTS=$BUILD/bench/soak-results.txt
: >"$RESULTS"
say() { echo "$*" | tee -a "$RESULTS"; }

# The clients and shoald each need a descriptor per connection and more.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"
start_shoald "$config"
pid=$SHOALD_PID

token_file=$TEST_TMP/token
registry_token >"$token_file" || fail "token"
repo=/v2/$SHOAL_TEST_HELLO_REPO
oci=application/vnd.oci.image.manifest.v1+json
items=$TEST_TMP/items
cat >"$items" <<EOF
# weight path size digest accept
30 $repo/manifests/1 $SHOAL_TEST_HELLO_MANIFEST_SIZE $SHOAL_TEST_HELLO_MANIFEST_DIGEST $oci
20 $repo/manifests/$SHOAL_TEST_HELLO_MANIFEST_DIGEST $SHOAL_TEST_HELLO_MANIFEST_SIZE $SHOAL_TEST_HELLO_MANIFEST_DIGEST $oci
5 $repo/blobs/$SHOAL_TEST_HELLO_CONFIG_DIGEST $SHOAL_TEST_HELLO_CONFIG_SIZE $SHOAL_TEST_HELLO_CONFIG_DIGEST -
5 $repo/blobs/$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST $SHOAL_TEST_HELLO_SMALL_LAYER_SIZE $SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST -
40 $repo/blobs/$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST $SHOAL_TEST_HELLO_BIG_LAYER_SIZE $SHOAL_TEST_HELLO_BIG_LAYER_DIGEST -
EOF

# run_load NAME CLIENTS SECONDS: one soak_load run; its stdout line goes to
# $TEST_TMP/NAME.out, its stderr to NAME.err. Never fails the script itself.
run_load() {
  local rc=0
  "$LOAD" --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --host "$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT" \
    --cacert "$site/ca.crt" --items "$items" --token "$token_file" -c "$2" -d "$3" \
    --per-conn "$PER_CONN" >"$TEST_TMP/$1.out" 2>"$TEST_TMP/$1.err" || rc=$?
  cat "$TEST_TMP/$1.out"
  [ "$rc" -eq 0 ] || { echo "  soak_load exited $rc; its stderr:"; head -n 20 "$TEST_TMP/$1.err"; }
}
# field NAME KEY: the KEY=value of NAME's soak_load line.
field() { tr ' ' '\n' <"$TEST_TMP/$1.out" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# settle: waits (30 s at most) until shoald has no client connection open,
# then 2 s more for closes and thread-pool work to finish.
settle() {
  local i
  for ((i = 0; i < 300; i++)); do
    [ "$(metric shoal_proxy_connections_active)" = 0 ] && break
    sleep 0.1
  done
  sleep 2
}
fds() { find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
hs() { metric "shoal_tls_handshakes_total{kind=\"$1\"}"; }

say "soak: $CLIENTS clients, 2 rounds of $SECONDS_PER_ROUND s, up to $PER_CONN requests per connection"
say "shoald $pid ($BUILD/shoald, $(nproc) CPUs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
fd_start=$(fds)

say "warm-up: 4 clients, 5 s"
run_load warmup 4 5 | tee -a "$RESULTS"
settle
fd0=$(fds)
rss0=$(rss_kib "$pid")
say "after warm-up: fds=$fd0 (at start $fd_start) rss_kib=$rss0"

declare -A FD RSS HSF HSR
for r in 1 2; do
  f0=$(hs full)
  r0=$(hs resumed)
  say "round $r: $CLIENTS clients, $SECONDS_PER_ROUND s"
  run_load "round$r" "$CLIENTS" "$SECONDS_PER_ROUND" | tee -a "$RESULTS"
  kill -0 "$pid" 2>/dev/null || fail "shoald died in round $r"
  settle
  FD[$r]=$(fds)
  RSS[$r]=$(rss_kib "$pid")
  HSF[$r]=$(($(hs full) - f0))
  HSR[$r]=$(($(hs resumed) - r0))
  say "after round $r: fds=${FD[$r]} rss_kib=${RSS[$r]} shoald handshakes full=${HSF[$r]} resumed=${HSR[$r]}" \
    "load: $(cut -d' ' -f1-3 /proc/loadavg)"
done

bad=0
check() {  # check OK NAME FIGURES
  local verdict=PASS
  [ "$1" = 1 ] || { verdict=FAIL; bad=1; }
  say "$(printf '%-4s  %-28s %s' "$verdict" "$2" "$3")"
}
say ""
say "== soak results =="
for r in 1 2; do
  failed=$(field "round$r" failed)
  short=$(field "round$r" short)
  mism=$(field "round$r" digest_mismatch)
  ok=$(field "round$r" ok)
  check "$([ -n "$ok" ] && [ "$ok" -gt 0 ] && [ "$failed" = 0 ] && [ "$short" = 0 ] && echo 1)" \
    "round $r failed/short" "ok=$ok failed=${failed:-?} short=${short:-?}"
  check "$([ "$mism" = 0 ] && echo 1)" "round $r digest mismatches" "${mism:-?}"
  say "      round $r throughput         $(field "round$r" rps) req/s, $(field "round$r" mbps) MB/s," \
    "p50 $(field "round$r" p50_ms) ms, p99 $(field "round$r" p99_ms) ms, max $(field "round$r" max_ms) ms"
  say "      round $r handshakes         client: full=$(field "round$r" handshakes_full)" \
    "resumed=$(field "round$r" handshakes_resumed); shoald: full=${HSF[$r]} resumed=${HSR[$r]}"
done
check "$([ "${FD[2]}" = "$fd0" ] && echo 1)" "open fds before/after" "$fd0 after warm-up, ${FD[1]} after round 1, ${FD[2]} after round 2"
ratio=$(awk -v a="${RSS[1]}" -v b="${RSS[2]}" 'BEGIN { printf "%.3f", b / a }')
check "$(awk -v r="$ratio" 'BEGIN { print (r <= 1.05) ? 1 : 0 }')" "RSS r2 within +5% of r1" \
  "$((rss0 / 1024)) MiB after warm-up, $((RSS[1] / 1024)) MiB after round 1, $((RSS[2] / 1024)) MiB after round 2, ratio $ratio"
say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
shoald_alive "after the soak"
[ "$bad" = 0 ] || fail "soak: some criteria failed (see above)"
say "soak: all criteria PASS"
