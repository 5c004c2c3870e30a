#!/bin/bash
# make bench: the explicit proxy against squid, side by side, as
# docs/design.md §7 prescribes (see bench/README.md for how to read it).
#
#   BUILD=/abs/build bench/run.sh
#
# Proxy under test on one core (taskset -c $BENCH_PROXY_CPU), curl, kload and
# the origin nginx (1 worker, TLS 1.2 only) on the other. The origin listens
# on $BENCH_ORIGIN_IP:$BENCH_ORIGIN_PORT under two names from a temporary
# /etc/hosts block: tunnel.bench.shoal.test (shoald tunnels it) and
# relay.bench.shoal.test (in hijackHTTPS.hosts; no proxies rule matches, so
# requests route direct). squid-openssl tunnels on one port and bumps on
# another (ssl_bump bump all, cache deny all) with the same site CA.
#
# Measures: a. direct HTTPS; b. tunnel; c. hijacked relay (bulk: best and
# median of $BENCH_RUNS curl runs to /dev/null, with the proxy's CPU-s/GiB
# from /proc/PID/stat and its peak RSS, VmHWM reset before each run);
# d. 1 KiB keep-alive GETs from $BENCH_CONNS connections (build/bench/kload);
# f. mbedTLS's own AEAD speed (build/bench/cipher_speed) as the bound for the
# relay's CPU cost. Within each round shoald and squid alternate who goes
# first (odd rounds shoald, even rounds squid), so neither always runs
# right after the other or the direct run: that position bias otherwise
# lands on one side of every ratio. Prints the table to stdout and writes
# $BUILD/bench/results.txt, results.md and raw.txt (every measurement).
#
# Knobs (environment): BENCH_RUNS=3, BENCH_SIZE_MIB=1024, BENCH_KLOAD_SECONDS=10,
# BENCH_CONNS=16, BENCH_ORIGIN_IP=127.0.0.20, BENCH_ORIGIN_PORT=443,
# BENCH_PROXY_CPU=1, BENCH_CLIENT_CPU=0, BENCH_IDLE_WAIT=240 (seconds the bench
# may spend in total waiting for an idle machine before runs), BENCH_DATA=$BUILD/bench-data (the
# random files and certificates, kept for the next run), BENCH_KEEP_TMP=1
# (keep the scratch directory with every log).
set -euo pipefail

BENCH_TAG=bench
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_check_rig "$BUILD/shoald" "$BUILD/bench/kload" "$BUILD/bench/cipher_speed"
bench_scratch shoal-bench raw.txt logs
bench_data
bench_snapshot_shoald

hosts_add_block "$W" "$ORIGIN_IP $TUNNEL_HOST" "$ORIGIN_IP $RELAY_HOST" || die "cannot edit /etc/hosts"
getent hosts "$RELAY_HOST" | grep -q "^$ORIGIN_IP " || die "$RELAY_HOST does not resolve to $ORIGIN_IP"
background before

# --- f. cipher speed, on the proxy's core while nothing else runs --------------

say "mbedTLS AEAD speed on cpu $PCPU"
taskset -c "$PCPU" "$BUILD/bench/cipher_speed" --seconds 2 | sed 's/^/cipher /' >>"$RAW" ||
  die "cipher_speed failed"

# --- servers: the origin, shoald, squid ---------------------------------------

# shellcheck disable=SC2119 # no extra directives for the origin here
start_nginx
# The embedded default's proxies rules: the bench's paths match none of
# them, so hijacked requests route direct (relayed, not stored).
shoald_conf "$W/shoald" "" "  proxies:" "    - regx: blobs/sha256.*" "    - regx: manifests/sha256.*"
start_shoald "$W/shoald"
SHOALD_PID=$started_pid
SHOALD_PORT=$started_port

SQT_PORT=$(free_port)
SQB_PORT=$(free_port)
SQ=$W/squid
squid_prepare "$SQ"
squid_conf "$SQ" "$SQB_PORT" "http_port 127.0.0.1:$SQT_PORT" "cache deny all"
start_squid "$SQ" "$SQB_PORT" "$SQT_PORT"
SQUID_PID=$started_pid

# Per path: the origin name, the CA the client trusts, the proxy URL, its
# address for kload and the PID whose CPU time is measured.
declare -A HOST=([tunnel]=$TUNNEL_HOST [relay]=$RELAY_HOST) CA=([tunnel]=$OCA [relay]=$SCA)
declare -A PROXY=([shoald-tunnel]=http://127.0.0.1:$SHOALD_PORT [shoald-relay]=http://127.0.0.1:$SHOALD_PORT
  [squid-tunnel]=http://127.0.0.1:$SQT_PORT [squid-relay]=http://127.0.0.1:$SQB_PORT)
declare -A PID=([shoald-tunnel]=$SHOALD_PID [shoald-relay]=$SHOALD_PID [squid-tunnel]=$SQUID_PID
  [squid-relay]=$SQUID_PID)

# --- probes: every path works, and which suites it speaks -------------------------

probe direct "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$OCA"
for p in shoald-tunnel shoald-relay squid-tunnel squid-relay; do
  probe "$p" "https://${HOST[${p#*-}]}:$ORIGIN_PORT/$SMALL" "${CA[${p#*-}]}" "${PROXY[$p]}"
done
grep -q '"route":"hijack"' "$W/shoald/log/core.log" 2>/dev/null ||
  say "warning: core.log shows no hijacked CONNECT (see $W/shoald/log)"

# --- bulk transfers, then d. 1 KiB keep-alive ------------------------------------------
# Each round: direct first, then shoald and squid in round_order (odd rounds
# shoald first, even rounds squid first).

say "bulk: $SIZE_MIB MiB x $RUNS runs per path"
for ((r = 1; r <= RUNS; r++)); do
  bulk direct "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$BULK" "$OCA"
  for p in $(round_order "$r" shoald-tunnel squid-tunnel) $(round_order "$r" shoald-relay squid-relay); do
    bulk "$p" "$r" "https://${HOST[${p#*-}]}:$ORIGIN_PORT/$BULK" "${CA[${p#*-}]}" "${PROXY[$p]}" "${PID[$p]}"
  done
done

say "1 KiB: $CONNS keep-alive connections, $KSECS s x $RUNS runs per path"
for ((r = 1; r <= RUNS; r++)); do
  kload direct "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$OCA"
  for p in $(round_order "$r" shoald-relay squid-relay); do
    kload "$p" "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "${PROXY[$p]#http://}" "${PID[$p]}"
  done
done

# --- origin-side suites (nginx logs each probe's query), then the report -------------

kill -0 "$SHOALD_PID" 2>/dev/null || die "shoald died during the bench"
kill -0 "$SQUID_PID" 2>/dev/null || die "squid died during the bench"
background after
origin_suites shoald-relay squid-relay
records=$(grep '"route":"hijack"' "$W/shoald/log/core.log" | sed -n 's/.*"records":"\([a-z]*\)".*/\1/p' | sort | uniq -c |
  awk '{ printf "%s%s:%s", (NR > 1 ? "," : ""), $2, $1 }')
echo "info shoald_records=${records:-none}" >>"$RAW"
bench_info
python3 "$root/bench/report.py" "$RAW" "$OUT/results.txt" "$OUT/results.md"
cat "$OUT/results.txt"
