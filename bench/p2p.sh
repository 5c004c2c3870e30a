#!/bin/bash
# make bench: Shoal's P2P distribution against its fluid lower bound and
# against the two ways a cluster does without it (docs/design.md §5).
#
#   BUILD=/abs/build bench/p2p.sh
#
# A virtual cluster in network namespaces (tests/integration/netns_lib.sh):
# an origin host (Debian's docker-registry over TLS, 198.18.0.1:443, one
# random F-byte blob), a scheduler host, a cache host and up to N_max peer
# hosts; EVERY host's egress is a TBF at U (origin, peers and cache alike:
# u = U); downloads are not limited (d = unlimited). Rows:
#
#   shoal N    N peer hosts each run shoald (explicit proxy on their own
#              127.0.0.1:65001, upload server :65002, one `shoald scheduler`);
#              one curl per host pulls the blob through its shoald, all
#              started at once
#   direct     at N_max: every client pulls straight from the origin
#   central    at N_max: every client pulls from one pull-through cache
#              (docker-registry with proxy.remoteurl = the origin) on its own
#              host; one client's pull fills it first (its time is shown),
#              then all N_max pull from the warm cache (the figure compared)
#
# For each: every client's completion time from the common start (T_last
# is the slowest), whether it got the right bytes (SHA-256), the origin's
# transmitted bytes (eth0 tx_bytes: frames with their headers, so ~1 % over
# the payload), and CPU-seconds (utime+stime from /proc/PID/stat) of every
# shoald (peers and scheduler) or of the cache's registry, and how busy the
# whole machine was meanwhile (all CPUs; near 100 % the run was CPU-bound). The fluid bound
# T* = max(F/U, N·F/(U + N·u)) (the F/d term drops out: d is unlimited).
# Targets: T_last <= 1.3 T* at every N; origin bytes <= 1.1 F; at N_max the
# warm central cache at least 8x slower than Shoal.
#
# Results: stdout and $BUILD/bench/p2p-results.txt, p2p-results.md,
# p2p-raw.txt (every measurement), p2p.png (gnuplot: time against N),
# logs (core.log and the final /metrics of every peer) in $BUILD/bench/p2p-logs/. Takes about 10 minutes at the defaults
# (direct and central each move N_max·F through one 80 Mbit/s uplink:
# ~215 s apiece). Without P2P options in shoald (--scheduler), the Shoal
# rows are reported as not run and the baselines still run.
#
# Knobs (environment): BENCH_P2P_MIB=128 (F), BENCH_P2P_RATE=80mbit (U = u),
# BENCH_P2P_NS="4 8 16", BENCH_P2P_BASELINES=1 (0: skip direct and central),
# BENCH_P2P_IDLE_WAIT=60 (seconds, in all, spent waiting for an idle machine
# before the Shoal runs), BENCH_KEEP_TMP=1 (keep the scratch directory),
# BENCH_P2P_LOG_LEVEL=info (debug: a line per piece in the peers' core.log),
# BENCH_P2P_TLS=0 (1: p2p.tls on every peer, piece links over TLS).
set -euo pipefail

BENCH_TAG=p2p
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/netns_lib.sh
. "$root/tests/integration/netns_lib.sh"

F_MIB=${BENCH_P2P_MIB:-128}
RATE=${BENCH_P2P_RATE:-80mbit}
NS_LIST=${BENCH_P2P_NS:-4 8 16}
BASELINES=${BENCH_P2P_BASELINES:-1}
F=$((F_MIB << 20))
REPO=p2p/bench
NMAX=0
for n in $NS_LIST; do
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then die "BENCH_P2P_NS: $n is not in 1..200"; fi
  [ "$n" -le "$NMAX" ] || NMAX=$n
done
RATE_BPS=$(nl_rate_bps "$RATE") || die "BENCH_P2P_RATE=$RATE is not a tc rate"

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, tc)"
for c in ip tc curl docker-registry openssl python3 awk; do
  command -v "$c" >/dev/null || die "$c not installed (make deps-bench)"
done
[ -x "$BUILD/shoald" ] || die "$BUILD/shoald not built (run make bench)"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# Waiting for an idle machine (bench/lib.sh's wait_idle) only before the
# Shoal runs, which can be CPU-bound; 60 s in all unless told otherwise.
idle_budget=${BENCH_P2P_IDLE_WAIT:-60}
bench_scratch shoal-p2p p2p-raw.txt p2p-logs
bench_snapshot_shoald
bench_cleanup_hook() { nl_teardown; }
P2P=0
# Not "--help | grep -q": under pipefail, grep leaving early can fail the pipe.
case $("$SHOALD_BIN" --help 2>&1 || true) in *--scheduler*) P2P=1 ;; esac
[ "$P2P" = 1 ] || say "$BUILD/shoald has no --scheduler option yet: the Shoal rows are not run"

# --- the cluster, the origin and the blob ---------------------------------------------

nl_sweep_stale
nl_init || die "cannot build network namespaces"
nl_add_host origin 1 "$RATE" || die "origin host"
nl_add_host sched 2 "$RATE" || die "scheduler host"
nl_add_host cache 3 "$RATE" || die "cache host"
for ((i = 1; i <= NMAX; i++)); do nl_add_host "p$i" $((10 + i)) "$RATE" || die "peer host p$i"; done

nl_registry_up origin "$W/origin" || die "origin registry did not start"
ORIGIN_URL=$NL_REG_URL
ORIGIN_CA=$NL_REG_CA
ORIGIN_PID=$NL_REG_PID
say "writing a $F_MIB MiB random blob and pushing it to $ORIGIN_URL"
openssl enc -aes-128-ctr -pass pass:"$(openssl rand -hex 16)" -nosalt -pbkdf2 </dev/zero 2>/dev/null |
  head -c "$F" >"$W/blob.bin" || true
[ "$(stat -c %s "$W/blob.bin")" -eq "$F" ] || die "could not write the blob"
DIGEST=$(nl_push_blob origin "$ORIGIN_URL" "$ORIGIN_CA" "$REPO" "$W/blob.bin") || die "pushing the blob failed"
rm -f "$W/blob.bin"
HEX=${DIGEST#sha256:}
PATH_V2=/v2/$REPO/blobs/$DIGEST

# The shaped rate as measured: a 16 MiB range of the blob, origin -> p1.
out=$(nl_exec p1 curl -sS --max-time 60 --cacert "$ORIGIN_CA" -r 0-16777215 -o /dev/null \
  -w '%{http_code} %{speed_download}' "$ORIGIN_URL$PATH_V2") || die "calibration pull failed"
[ "${out%% *}" = 206 ] || [ "${out%% *}" = 200 ] || die "calibration pull answered ${out%% *}"
U_EFF=$(awk -v s="${out#* }" 'BEGIN { printf "%.1f", s * 8 / 1e6 }')
say "origin -> p1 runs at $U_EFF Mbit/s (TBF at $RATE)"
{
  echo "info date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "info cpu=$(awk -F': ' '/^model name/ { gsub(/ /, "_", $2); print $2; exit }' /proc/cpuinfo) ncpu=$(nproc)"
  echo "info kernel=$(uname -r)"
  echo "info shoald=$("$SHOALD_BIN" --version 2>&1 | head -n 1 | tr ' ' '_') shoald_dirty=$dirty shoal_p2p=$P2P"
  echo "info registry=$(docker-registry --version | awk '{ print $NF }') curl=$(curl -V | awk 'NR == 1 { print $2 }')"
  echo "info f_bytes=$F rate_bps=$RATE_BPS u_eff_mbit=$U_EFF ns=${NS_LIST// /,} nmax=$NMAX peer_tls=${BENCH_P2P_TLS:-0}"
} >>"$RAW"

# --- shoald peers and scheduler ---------------------------------------------------------

"$root/tools/gen-ca.sh" "$W/site" --cn "Shoal p2p bench site CA" >/dev/null || die "tools/gen-ca.sh failed"
SITE_CA=$W/site/ca.crt
SECRET=$W/cluster.secret
(umask 077 && openssl rand -hex 24 >"$SECRET")
CONFIG=$W/peer.yaml
cat >"$CONFIG" <<EOF
proxy:
  proxies:
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
hijackHTTPS:
  cert: $W/site/ca.crt
  key: $W/site/ca.key
  hosts:
    - regx: $(nl_ip origin | sed 's/\./\\./g')
tls:
  trustStore: $ORIGIN_CA
logLevel: ${BENCH_P2P_LOG_LEVEL:-info}
EOF
if [ "${BENCH_P2P_TLS:-0}" = 1 ]; then
  printf 'p2p:\n  tls: true\n' >>"$CONFIG"
fi

# shoal_start TAG N: the scheduler and shoald on p1..pN, files in
# $W/TAG-sched and $W/TAG-pI; sets DAEMONS (their PIDs).
shoal_start() {
  local tag=$1 n=$2 i d ip deadline sip
  sip=$(nl_ip sched)
  d=$W/$tag-sched
  mkdir -p "$d/log"
  nl_spawn sched "$d/log/shoald.out" "$SHOALD_BIN" scheduler --listen "$sip:8002" \
    --cluster-secret-file "$SECRET" --log-dir "$d/log"
  DAEMONS=("$NL_PID")
  deadline=$((SECONDS + 15))
  until [ "$(nl_exec sched curl -s --max-time 1 "http://$sip:8002/healthz" 2>/dev/null)" = ok ]; do
    kill -0 "${DAEMONS[0]}" 2>/dev/null || die "the scheduler exited at start (see $d/log/shoald.out)"
    [ "$SECONDS" -lt "$deadline" ] || die "the scheduler's /healthz is not ok after 15 s"
    sleep 0.1
  done
  for ((i = 1; i <= n; i++)); do
    d=$W/$tag-p$i
    ip=$(nl_ip "p$i")
    mkdir -p "$d/data" "$d/log"
    nl_spawn "p$i" "$d/log/shoald.out" "$SHOALD_BIN" -c "$CONFIG" --data-dir "$d/data" --log-dir "$d/log" \
      --admin-socket "$d/admin.sock" --metrics-listen 127.0.0.1:65004 --proxy-listen 127.0.0.1:65001 \
      --transparent off --scheduler "$sip:8002" --cluster-secret-file "$SECRET" \
      --peer-listen 0.0.0.0:65002 --advertise "$ip:65002"
    DAEMONS+=("$NL_PID")
  done
  for ((i = 1; i <= n; i++)); do
    if ! nl_wait_tcp "p$i" 127.0.0.1 65001 20 "${DAEMONS[i]}" ||
      ! nl_wait_tcp "p$i" "$(nl_ip "p$i")" 65002 5 "${DAEMONS[i]}"; then
      die "shoald on p$i not ready (see $W/$tag-p$i/log/shoald.out)"
    fi
  done
}

# all_busy: ticks all CPUs together spent neither idle nor waiting for I/O.
all_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# busy_pct BUSY0 T0: how busy the whole machine was since all_busy printed
# BUSY0 at time T0 (date +%s.%N), in percent of all its CPUs.
busy_pct() {
  awk -v b0="$1" -v b1="$(all_busy)" -v t0="$2" -v t1="$(date +%s.%N)" -v hz="$HZ" -v n="$(nproc)" \
    'BEGIN { printf "%.0f", 100 * (b1 - b0) / hz / ((t1 - t0) * n) }'
}

# cpu_sum PID...: utime+stime of these processes, in clock ticks.
cpu_sum() {
  local p s=0 t
  for p in "$@"; do
    t=$(cpu_ticks "$p" 2>/dev/null) || t=0
    s=$((s + t))
  done
  echo "$s"
}

# --- clients ---------------------------------------------------------------------

# clients_run SYSTEM N URL CA [PROXY]: one curl per host p1..pN, all started
# together; each pipes the body into SHA-256 and notes its end time. Waits
# for all (curl --max-time: 3x the slowest plausible time + 60 s), then
# appends a "client" line per client and sets OK (right bytes), T_LAST,
# T_FIRST, T_MED (seconds from the common start).
clients_run() {
  local sys=$1 n=$2 url=$3 ca=$4 proxy=${5:-} i pids=() max t0 log code rc end t hx
  max=$(awk -v n="$n" -v f="$F" -v r="$RATE_BPS" 'BEGIN { printf "%d", 3 * n * f * 8 / r + 60 }')
  t0=$(date +%s.%N)
  for ((i = 1; i <= n; i++)); do
    log=$W/$sys-n$n-c$i.log
    : >"$log"
    # shellcheck disable=SC2016 # the inner shell expands them
    nl_spawn "p$i" "$log" bash -c \
      'curl -sS --max-time "$1" ${3:+-x "$3"} --cacert "$2" -o - \
         -w "%{stderr}code=%{http_code} size=%{size_download} curl_s=%{time_total}\n" "$4" |
         openssl dgst -sha256 -r >"$5"
       echo "rc=${PIPESTATUS[0]} end=$(date +%s.%N)"' \
      _ "$max" "$ca" "$proxy" "$url" "$log.sum"
    pids+=("$NL_PID")
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  OK=0
  : >"$W/times"
  for ((i = 1; i <= n; i++)); do
    log=$W/$sys-n$n-c$i.log
    code=$(sed -n 's/^code=\([0-9]*\) .*/\1/p' "$log" | tail -n 1)
    rc=$(sed -n 's/^rc=\([0-9]*\) .*/\1/p' "$log" | tail -n 1)
    end=$(sed -n 's/^rc=[0-9]* end=//p' "$log" | tail -n 1)
    hx=$(cut -d' ' -f1 "$log.sum" 2>/dev/null) || hx=
    t=$(awk -v a="$t0" -v b="${end:-$t0}" 'BEGIN { printf "%.3f", b - a }')
    if [ "${rc:-x}" = 0 ] && [ "$code" = 200 ] && [ "$hx" = "$HEX" ]; then
      OK=$((OK + 1))
      echo "$t" >>"$W/times"
    else
      say "  $sys N=$n client $i failed: curl rc=${rc:-?} status=${code:-?} digest ${hx:0:12}… (see $log)"
    fi
    echo "client system=$sys n=$n i=$i ok=$([ "$hx" = "$HEX" ] && [ "$code" = 200 ] && echo 1 || echo 0) t=$t" >>"$RAW"
  done
  read -r T_FIRST T_MED T_LAST < <(sort -n "$W/times" | awk '{ t[NR] = $1 }
    END { if (NR == 0) print "nan nan nan"; else print t[1], t[int((NR + 1) / 2)], t[NR] }')
}

# --- Shoal at each N -------------------------------------------------------------------

if [ "$P2P" = 1 ]; then
  for n in $NS_LIST; do
    tag=shoal-n$n
    say "shoal N=$n: $n peers pull $F_MIB MiB at once"
    shoal_start "$tag" "$n"
    sleep 1 # registrations and first heartbeats
    wait_idle
    c0=$(cpu_sum "${DAEMONS[@]}")
    tx0=$(nl_tx_bytes origin)
    b0=$(all_busy)
    s0=$(date +%s.%N)
    clients_run shoal "$n" "$ORIGIN_URL$PATH_V2" "$SITE_CA" http://127.0.0.1:65001
    busy=$(busy_pct "$b0" "$s0")
    sleep 0.5
    obytes=$(($(nl_tx_bytes origin) - tx0))
    cpu=$(ticks_s $(($(cpu_sum "${DAEMONS[@]}") - c0)))
    alive=0
    for p in "${DAEMONS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    echo "run system=shoal n=$n clients=$n ok=$OK t_first=$T_FIRST t_median=$T_MED t_last=$T_LAST" \
      "origin_bytes=$obytes cpu_s=$cpu busy_pct=$busy daemons_alive=$alive/${#DAEMONS[@]}" >>"$RAW"
    say "  ok $OK/$n, T_last $T_LAST s, origin sent $obytes bytes, shoald CPU $cpu s, machine $busy % busy"
    # Every peer's counters (503s, stalls, pieces by source) for the logs.
    for ((i = 1; i <= n; i++)); do
      nl_exec "p$i" curl -s --max-time 2 http://127.0.0.1:65004/metrics >"$W/$tag-p$i/log/metrics.txt" 2>/dev/null || true
    done
    for p in "${DAEMONS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${DAEMONS[@]}"; do nl_stop "$p" TERM 10; done
  done
fi

# --- baselines at N_max --------------------------------------------------------------------

if [ "$BASELINES" = 1 ]; then
  n=$NMAX
  say "direct N=$n: every client pulls from the origin (~$(awk -v n="$n" -v f="$F" -v r="$RATE_BPS" 'BEGIN { printf "%d", n * f * 8 / r }') s)"
  tx0=$(nl_tx_bytes origin)
  c0=$(cpu_sum "$ORIGIN_PID")
  b0=$(all_busy)
  s0=$(date +%s.%N)
  clients_run direct "$n" "$ORIGIN_URL$PATH_V2" "$ORIGIN_CA"
  busy=$(busy_pct "$b0" "$s0")
  sleep 0.5
  echo "run system=direct n=$n clients=$n ok=$OK t_first=$T_FIRST t_median=$T_MED t_last=$T_LAST" \
    "origin_bytes=$(($(nl_tx_bytes origin) - tx0)) cpu_s=$(ticks_s $(($(cpu_sum "$ORIGIN_PID") - c0))) busy_pct=$busy" >>"$RAW"
  say "  ok $OK/$n, T_last $T_LAST s"

  say "central N=$n: a pull-through cache on its own host (docker-registry proxy.remoteurl)"
  NL_REG_SSL_CERT_FILE=$ORIGIN_CA nl_registry_up cache "$W/cache" "proxy:" "  remoteurl: $ORIGIN_URL" ||
    die "the pull-through cache did not start"
  CACHE_URL=$NL_REG_URL
  CACHE_CA=$NL_REG_CA
  CACHE_PID=$NL_REG_PID
  tx0=$(nl_tx_bytes origin)
  out=$(nl_exec p1 curl -sS --max-time 600 --cacert "$CACHE_CA" -o - -w '%{stderr}%{http_code} %{time_total}\n' \
    "$CACHE_URL$PATH_V2" 2>"$W/central-fill.log" | openssl dgst -sha256 -r | cut -d' ' -f1) || die "filling the cache failed"
  fill=$(tail -n 1 "$W/central-fill.log")
  if [ "${fill%% *}" != 200 ] || [ "$out" != "$HEX" ]; then
    die "filling the cache: status ${fill%% *}, digest ${out:0:12}…"
  fi
  # distribution 2.8 serves a miss from one upstream GET and stores the blob
  # from a second one in the background: wait until it is in the cache's
  # storage, or the "warm" clients would go upstream again.
  stored=$W/cache/data/docker/registry/v2/blobs/sha256/${HEX:0:2}/$HEX/data
  deadline=$((SECONDS + 120))
  until [ "$(stat -c %s "$stored" 2>/dev/null || echo 0)" -eq "$F" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "the cache did not store the blob within 120 s ($stored)"
    sleep 0.2
  done
  sleep 0.5
  fill_bytes=$(($(nl_tx_bytes origin) - tx0))
  tx0=$(nl_tx_bytes origin)
  c0=$(cpu_sum "$CACHE_PID")
  b0=$(all_busy)
  s0=$(date +%s.%N)
  clients_run central "$n" "$CACHE_URL$PATH_V2" "$CACHE_CA"
  busy=$(busy_pct "$b0" "$s0")
  sleep 0.5
  echo "run system=central n=$n clients=$n ok=$OK t_first=$T_FIRST t_median=$T_MED t_last=$T_LAST" \
    "origin_bytes=$(($(nl_tx_bytes origin) - tx0 + fill_bytes)) cpu_s=$(ticks_s $(($(cpu_sum "$CACHE_PID") - c0)))" \
    "busy_pct=$busy" \
    "fill_s=${fill#* } fill_origin_bytes=$fill_bytes" >>"$RAW"
  say "  fill ${fill#* } s; then ok $OK/$n, T_last $T_LAST s"
  nl_stop "$CACHE_PID" TERM 5
fi

# --- report ---------------------------------------------------------------------------

python3 "$root/bench/p2p_report.py" "$RAW" "$OUT/p2p-results.txt" "$OUT/p2p-results.md" "$OUT/p2p-plot.dat"
if command -v gnuplot >/dev/null; then
  gnuplot -e "dat='$OUT/p2p-plot.dat'; out='$OUT/p2p.png'; nmax=$NMAX; fbits=$((F * 8)); ubps=$RATE_BPS" \
    "$root/bench/p2p.gnuplot" ||
    say "gnuplot failed; no $OUT/p2p.png"
else
  say "gnuplot not installed (make deps-bench): no $OUT/p2p.png"
fi
cat "$OUT/p2p-results.txt"
