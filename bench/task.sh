#!/bin/bash
# The task engine against squid's caches, on the same rig as run.sh (proxy on
# $BENCH_PROXY_CPU, nginx origin and clients on $BENCH_CLIENT_CPU), as
# docs/design.md §7 prescribes:
#
#   BUILD=/abs/build bench/task.sh        (make bench runs it after run.sh)
#
# Five proxies, all pinned to the proxy core, measured in one run:
#   shoald-on   tls.fastRecords: true (the default): after mbedTLS's TLS 1.2
#               handshake, AES-GCM records go through OpenSSL's libcrypto
#   shoald-off  tls.fastRecords: false: mbedTLS does every record
#   squid-disk  ssl-bump, cache_dir aufs 16000 16 256, maximum_object_size
#               2 GB, cache_mem 256 MB (restarted before the hits, so they
#               are disk hits)
#   squid-mem   ssl-bump, no cache_dir, cache_mem 3072 MB,
#               maximum_object_size_in_memory 1100 MB, maximum_object_size
#               2 GB: the object can only be served from cache_mem (TCP_MEM_HIT)
# Both shoalds get a fresh --data-dir, a proxies rule that makes the bench
# files tasks (route p2p) and proxy.authCheck: false (pure store hits, no
# HEAD to the origin).
#
# a. $SIZE_MIB MiB hijacked MISS, $BENCH_RUNS runs each of shoald-on,
#    shoald-off and squid-disk, every run a fresh URL (?miss=PROXY-RUN); one
#    more miss fills squid-mem.
# b. HIT: $BENCH_RUNS refetches of each proxy's first miss URL: shoald's
#    store (on, off) vs squid's disk hit and squid's memory hit.
# c. a stored 1 KiB object, $BENCH_CONNS keep-alive connections (kload),
#    $BENCH_RUNS runs of $BENCH_KLOAD_SECONDS s: shoald on/off vs squid-disk's
#    1 KiB hit (served from its cache_mem).
# d. 16 concurrent curls of one fresh object through shoald-on: origin bytes
#    (nginx $body_bytes_sent) / object size.
# e. shoald's peak RSS (VmHWM, reset before each transfer) over a and b.
# Each round runs the proxies in round_order (odd rounds as listed, even
# rounds reversed). Every bulk and kload row carries the proxy's CPU-seconds
# (/proc/PID/stat) per GiB moved. Checks: squid's access.log codes (MISS,
# then TCP_HIT for disk, TCP_MEM_HIT for memory), shoald's reuse counters,
# origin GETs per URL, and core.log's "connect" lines ("records":
# libcrypto for shoald-on, mbedtls for shoald-off). Targets are those of
# the fast-record-path issue; they are printed PASS/MISS, never tuned for.
#
# Writes $BUILD/bench/task-results.txt, task-results.md, task-raw.txt, logs
# in $BUILD/bench/task-logs/. Knobs as run.sh (BENCH_RUNS, BENCH_SIZE_MIB,
# BENCH_KLOAD_SECONDS, BENCH_CONNS, BENCH_PROXY_CPU, BENCH_CLIENT_CPU,
# BENCH_IDLE_WAIT, BENCH_DATA, BENCH_KEEP_TMP), plus BENCH_CONC=16 (row d's
# clients; 0 skips row d).
set -euo pipefail

BENCH_TAG=bench-task
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
NCONC=${BENCH_CONC:-16}
bench_check_rig "$BUILD/shoald" "$BUILD/bench/kload"
bench_scratch shoal-bench-task task-raw.txt task-logs
bench_data
bench_snapshot_shoald

hosts_add_block "$W" "$ORIGIN_IP $RELAY_HOST" || die "cannot edit /etc/hosts"
getent hosts "$RELAY_HOST" | grep -q "^$ORIGIN_IP " || die "$RELAY_HOST does not resolve to $ORIGIN_IP"
background before

# --- the origin, with cacheable headers (expires 1h: Expires and
# Cache-Control: max-age=3600) so squid stores the objects -----------------------

start_nginx "expires 1h;"

# origin_gets URI: GETs nginx logged for exactly URI (path and query).
origin_gets() {
  sleep 1.5  # nginx flushes its buffered access log every second
  awk -v p="$1" '$1 == "GET" && $2 == p { n++ } END { print n + 0 }' "$W/nginx/access.log"
}

# --- the proxies ------------------------------------------------------------------

declare -A PID PROXY PADDR METRICS DIR
for mode in on off; do
  p=shoald-$mode
  DIR[$p]=$W/$p
  # Pure store hits: no credential HEAD to the origin before serving
  # stored bytes; both bench files are tasks.
  shoald_conf "${DIR[$p]}" "$([ "$mode" = on ] && echo true || echo false)" "  authCheck: false" "  proxies:" \
    "    - regx: relay\\.bench\\.shoal\\.test(:$ORIGIN_PORT)?/(bulk-[0-9]+M|1k)\\.bin"
  start_shoald "${DIR[$p]}"
  PID[$p]=$started_pid
  PADDR[$p]=127.0.0.1:$started_port
  METRICS[$p]=$started_metrics
done

# squid's memory-cache sizes: design.md §7's, grown only for an object over 1 GiB.
mem_obj_mb=1100
cache_mem_mb=3072
if ((SIZE_MIB > 1024)); then
  mem_obj_mb=$((SIZE_MIB + 76))
  cache_mem_mb=$((SIZE_MIB * 3))
fi
for p in squid-disk squid-mem; do
  DIR[$p]=$W/$p
  PADDR[$p]=127.0.0.1:$(free_port)
  squid_prepare "${DIR[$p]}"
done
mkdir -p "${DIR[squid-disk]}/cache"
squid_conf "${DIR[squid-disk]}" "${PADDR[squid-disk]#*:}" \
  "cache_dir aufs ${DIR[squid-disk]}/cache 16000 16 256" "maximum_object_size 2 GB" "cache_mem 256 MB"
squid -N -z -f "${DIR[squid-disk]}/squid.conf" </dev/null >"${DIR[squid-disk]}/squid-z.log" 2>&1 ||
  die "squid -z failed; see ${DIR[squid-disk]}/squid-z.log"
# No cache_dir: squid 5 then caches in memory only.
squid_conf "${DIR[squid-mem]}" "${PADDR[squid-mem]#*:}" \
  "maximum_object_size 2 GB" "cache_mem $cache_mem_mb MB" "maximum_object_size_in_memory $mem_obj_mb MB"
for p in squid-disk squid-mem; do
  start_squid "${DIR[$p]}" "${PADDR[$p]#*:}"
  PID[$p]=$started_pid
done
for p in "${!PADDR[@]}"; do PROXY[$p]=http://${PADDR[$p]}; done

# --- probes: every proxy works, and which suites it speaks on each side ---------

for p in shoald-on shoald-off squid-disk squid-mem; do
  probe "$p" "https://$RELAY_HOST/$SMALL" "$SCA" "${PROXY[$p]}"
done
origin_suites shoald-on shoald-off squid-disk squid-mem

# --- a. miss, b. hit ------------------------------------------------------------------

URL=https://$RELAY_HOST/$BULK
say "a. $SIZE_MIB MiB miss: $RUNS runs per proxy, each a fresh URL"
for ((r = 1; r <= RUNS; r++)); do
  for p in $(round_order "$r" shoald-on shoald-off squid-disk); do
    bulk "miss-$p" "$r" "$URL?miss=$p-$r" "$SCA" "${PROXY[$p]}" "${PID[$p]}"
  done
done
bulk fill-squid-mem 1 "$URL?miss=squid-mem-1" "$SCA" "${PROXY[squid-mem]}" "${PID[squid-mem]}"
for p in shoald-on shoald-off; do
  grep -q '"route":"p2p"' "${DIR[$p]}/log/core.log" || die "$p did not route the bulk GET to the task engine (core.log)"
done
echo "check squid_disk_miss_codes=$(squid_codes "${DIR[squid-disk]}" "[?]miss=squid-disk-[0-9]+$")" >>"$RAW"

say "b. $SIZE_MIB MiB hit: $RUNS runs per proxy (squid-disk restarted first: an empty memory cache, so disk hits)"
stop_tree "${PID[squid-disk]}"
start_squid "${DIR[squid-disk]}" "${PADDR[squid-disk]#*:}"
PID[squid-disk]=$started_pid
declare -A reuse0
for p in shoald-on shoald-off; do reuse0[$p]=$(metric "${METRICS[$p]}" shoal_task_reuse_total); done
for ((r = 1; r <= RUNS; r++)); do
  for p in $(round_order "$r" shoald-on shoald-off squid-disk squid-mem); do
    bulk "hit-$p" "$r" "$URL?miss=$p-1" "$SCA" "${PROXY[$p]}" "${PID[$p]}"
  done
done
{
  printf 'check'
  for p in shoald-on shoald-off; do
    printf ' %s_hit_reuse=%s' "$p" $(($(metric "${METRICS[$p]}" shoal_task_reuse_total) - ${reuse0[$p]}))
  done
  for p in squid-disk squid-mem; do printf ' %s_hit_codes=%s' "$p" "$(squid_codes "${DIR[$p]}" "[?]miss=$p-1$")"; done
  for p in shoald-on shoald-off squid-disk squid-mem; do printf ' %s_hit_origin_gets=%s' "$p" "$(origin_gets "/$BULK?miss=$p-1")"; done
  echo
} >>"$RAW"
# Its gigabyte of cache_mem is of no further use.
stop_tree "${PID[squid-mem]}"

# --- c. 1 KiB stored object ---------------------------------------------------------------

say "c. 1 KiB hit: $CONNS keep-alive connections, $KSECS s x $RUNS runs per proxy"
for p in shoald-on shoald-off squid-disk squid-disk; do  # store it; squid: miss then hit
  taskset -c "$CCPU" curl -sS --max-time 30 --cacert "$SCA" --proxy "${PROXY[$p]}" -o /dev/null "https://$RELAY_HOST/$SMALL" ||
    die "1 KiB fetch via $p failed"
done
echo "check squid_small_codes=$(squid_codes "${DIR[squid-disk]}" "/1k[.]bin$")" >>"$RAW"
sq_lines0=$(wc -l <"${DIR[squid-disk]}/access.log")
for p in shoald-on shoald-off; do reuse0[$p]=$(metric "${METRICS[$p]}" shoal_task_reuse_total); done
for ((r = 1; r <= RUNS; r++)); do
  for p in $(round_order "$r" shoald-on shoald-off squid-disk); do
    kload "small-$p" "$r" "https://$RELAY_HOST/$SMALL" "$SCA" "${PADDR[$p]}" "${PID[$p]}"
  done
done
sleep 0.5
{
  printf 'check small_origin_gets=%s' "$(origin_gets "/$SMALL")"
  for p in shoald-on shoald-off; do
    printf ' %s_small_reuse=%s' "$p" $(($(metric "${METRICS[$p]}" shoal_task_reuse_total) - ${reuse0[$p]}))
  done
  tail -n +"$((sq_lines0 + 1))" "${DIR[squid-disk]}/access.log" |
    awk -v p="/$SMALL" 'index($7, p) { n++; if ($4 ~ /HIT/) h++ } END { printf " squid_small_hits=%d/%d\n", h, n }'
} >>"$RAW"

# --- d. concurrent clients, one fresh object ---------------------------------------------

if [ "$NCONC" -gt 0 ]; then
  say "d. $NCONC concurrent curls of a fresh $SIZE_MIB MiB object through shoald-on"
  FRESH="/$BULK?fresh=$$"
  pid=${PID[shoald-on]}
  wait_idle
  echo 5 >"/proc/$pid/clear_refs"
  t0=$(cpu_ticks "$pid")
  s0=$(date +%s.%N)
  cpids=()
  for ((i = 0; i < NCONC; i++)); do
    taskset -c "$CCPU" curl -sS --max-time 900 --cacert "$SCA" --proxy "${PROXY[shoald-on]}" -o /dev/null \
      -w '%{http_code} %{size_download}\n' "https://$RELAY_HOST$FRESH" >"$W/conc-$i.out" 2>"$W/conc-$i.err" &
    cpids+=("$!")
  done
  bad=0
  for c in "${cpids[@]}"; do wait "$c" || bad=$((bad + 1)); done
  s1=$(date +%s.%N)
  t1=$(cpu_ticks "$pid")
  ok=$(cat "$W"/conc-*.out | awk -v s="$SIZE" '$1 == 200 && $2 == s { n++ } END { print n + 0 }')
  sleep 1.5
  obytes=$(awk -v p="$FRESH" '$2 == p { b += $4 } END { printf "%d", b }' "$W/nginx/access.log")
  ogets=$(awk -v p="$FRESH" '$1 == "GET" && $2 == p { n++ } END { print n + 0 }' "$W/nginx/access.log")
  echo "conc clients=$NCONC ok=$ok failed=$bad origin_bytes=$obytes origin_gets=$ogets size=$SIZE" \
    "seconds=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }') cpu_s=$(ticks_s $((t1 - t0)))" \
    "hwm_kib=$(hwm_kib "$pid")" >>"$RAW"
  [ "$ok" = "$NCONC" ] || say "warning: only $ok of $NCONC concurrent clients got the whole object (see $W/conc-*.err)"
fi

# --- checks on the record layer, then the report ----------------------------------------

for p in shoald-on shoald-off squid-disk; do
  kill -0 "${PID[$p]}" 2>/dev/null || die "$p died during the bench"
done
background after
sleep 0.1  # core.log is written in batches every 20 ms
for p in shoald-on shoald-off; do
  # Hijacked CONNECTs by record layer and suite, e.g. libcrypto/TLS-ECDHE-...:42.
  echo "records path=$p $(grep '"msg":"connect"' "${DIR[$p]}/log/core.log" | grep '"route":"hijack"' |
    sed -n 's/.*"cipher":"\([^"]*\)".*"records":"\([^"]*\)".*/\2\/\1/p' | sort | uniq -c |
    awk '{ printf "%s=%s ", $2, $1 }')" >>"$RAW"
done
bench_info
echo "info nconc=$NCONC squid_mem_cache_mem_mb=$cache_mem_mb squid_mem_max_obj_mb=$mem_obj_mb" >>"$RAW"
python3 "$root/bench/task_report.py" "$RAW" "$OUT/task-results.txt" "$OUT/task-results.md"
cat "$OUT/task-results.txt"
