#!/bin/bash
# make bench: what transparent interception costs (issue 5's benchmark),
# side by side in one run (see bench/README.md for how to read it).
#
#   BUILD=/abs/build bench/connect.sh
#
# 1. connect() latency on loopback (build/bench/connlat, one connect at a
#    time, many thousands per case, cases interleaved connect by connect):
#      a0  outside any attached cgroup, no Shoal hook attached anywhere
#      a1  outside, shoald's hooks attached to the bench's job cgroup
#      a1x the same after an attach while attached (the control of a0/a1)
#      a   outside (hooks attached to the job cgroup), interleaved with b, c
#      b   inside the attached job cgroup, to a port Shoal does not redirect
#      c   inside, to port 443: redirected by eBPF to shoald's listener
#      a2, b2, d  the same as a, b, c with shoald restarted in iptables mode
#      an  (iptables phase) outside, in a second network namespace that has
#          no NAT table: a connect with no Shoal at all, same run as d
#    The servers (connlat --serve for a*, b*; shoald for c, d) are held
#    stopped (SIGSTOP) during each batch of connects so that no connect
#    pays for waking a server on the other core; a shorter "awake" run
#    without that is shown for reference.
# 2. Each BPF program's own run time per connect for b and c, from
#    kernel.bpf_stats_enabled (turned on for that step only; its old value
#    is restored afterwards, also on failure).
# 3. 1 KiB GETs (build/bench/kload, $BENCH_CONNS keep-alive connections)
#    from inside the job cgroup: transparent (no proxy) against explicit
#    (--proxy), in the eBPF phase and again in the iptables phase, with
#    direct HTTPS as the rig's reference.
#
# Everything runs in a network namespace of its own (the script re-executes
# itself under `unshare --net`; case an's server gets a second one):
# shoald's transparent listener (65003), its iptables chains and nginx on
# $BENCH_ORIGIN_IP:443 cannot collide with other shoalds on the machine
# (tests running at the same time), and the namespace's own TCP settings
# keep many thousands of connects from piling up TIME_WAIT sockets and
# conntrack entries (net.ipv4.tcp_max_tw_buckets=0,
# nf_conntrack_tcp_timeout_time_wait=1, in this namespace only). shoald on
# core $BENCH_PROXY_CPU, clients, nginx and connlat's server on
# $BENCH_CLIENT_CPU. Prints the table and writes
# $BUILD/bench/connect-results.txt, connect-results.md and connect-raw.txt.
#
# Knobs (environment): BENCH_CONNECTS=10000 (timed connects per case and
# run), BENCH_CONNECT_RUNS=5, BENCH_CONNECT_BATCH=500 (connects per case
# between a server's SIGSTOP and SIGCONT), BENCH_RUNS=3 and
# BENCH_KLOAD_SECONDS=5 (1 KiB runs), BENCH_CONNS=16, BENCH_IDLE_WAIT=60,
# BENCH_PROXY_CPU=1, BENCH_CLIENT_CPU=0, BENCH_ORIGIN_IP=127.0.0.20,
# BENCH_KEEP_TMP=1, and the rest of bench/lib.sh's.
set -euo pipefail

if [ "${SHOAL_BENCH_CONNECT_NETNS:-}" != 1 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "[connect] FAIL: needs root (cgroups, BPF, iptables, a network namespace)" >&2; exit 1; }
  command -v unshare >/dev/null || { echo "[connect] FAIL: unshare (util-linux) not installed" >&2; exit 1; }
  SHOAL_BENCH_CONNECT_NETNS=1 exec unshare --net -- bash "$0" "$@"
fi

: "${BENCH_KLOAD_SECONDS:=5}"
: "${BENCH_IDLE_WAIT:=60}"
BENCH_TAG=connect
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
NCONN=${BENCH_CONNECTS:-10000}
CRUNS=${BENCH_CONNECT_RUNS:-5}
BATCH=${BENCH_CONNECT_BATCH:-500}
WARM=$((NCONN / 10))
NAWAKE=$((NCONN / 2))
REDIR_IP=127.0.0.21  # nothing listens there: a connect that is not redirected fails
TPORT=65003

bench_check_rig "$BUILD/shoald" "$BUILD/shoalctl" "$BUILD/bench/kload" "$BUILD/bench/connlat"
for c in bpftool iptables ip sysctl findmnt; do
  command -v "$c" >/dev/null || die "$c not installed"
done
ip link set lo up || die "cannot bring up lo in the bench's network namespace"

bench_scratch shoal-bench-connect connect-raw.txt connect-logs
bench_data
bench_snapshot_shoald
[ "$transparent_off" = 1 ] || die "$BUILD/shoald does not know the transparent section (too old?)"
transparent_off=0  # shoald_conf: this script writes its own transparent section
cp "$BUILD/shoalctl" "$W/shoalctl.bin"
CTL=$W/shoalctl.bin
CONNLAT=$BUILD/bench/connlat

# This namespace only: no TIME_WAIT sockets, short-lived conntrack entries.
sysctl -qw net.ipv4.tcp_max_tw_buckets=0 || die "cannot set net.ipv4.tcp_max_tw_buckets"
sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1 2>/dev/null || true

CG2=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[ -n "$CG2" ] || die "no cgroup2 mount"
CGR=$CG2/shoal-bench-connect.$$
CGO=$CGR/out  # "outside": never attached
CGJ=$CGR/job  # the job cgroup shoald intercepts
mkdir "$CGR" "$CGO" "$CGJ" || die "cannot make cgroups under $CGR"

stats_old=
bench_cleanup_hook() {
  if [ -n "$stats_old" ]; then
    sysctl -qw "kernel.bpf_stats_enabled=$stats_old" || say "warning: could not restore kernel.bpf_stats_enabled=$stats_old"
    stats_old=
  fi
  # iptables mode removes its chains on stop; a killed shoald's stay (in
  # this namespace only, which ends with the script).
  if iptables -t nat -S 2>/dev/null | grep -q SHOAL; then
    "$CTL" --socket "$W/none.sock" cleanup >/dev/null 2>&1 || say "warning: shoalctl cleanup failed"
  fi
  local d
  for d in "$CGJ" "$CGO" "$CGR"; do
    [ -d "$d" ] || continue
    rmdir "$d" 2>/dev/null || say "warning: cannot remove cgroup $d (procs: $(tr '\n' ' ' <"$d/cgroup.procs" 2>/dev/null))"
  done
}

ctl() { "$CTL" --socket "$W/$SHOALD_NAME/admin.sock" "$@"; }

# foreign_hooks: connect4/connect6/sockops programs attached anywhere but
# under $CGR (other shoalds' on the machine): with any of them, case a0's
# "nothing attached" is not true.
foreign_hooks() {
  bpftool cgroup tree --json 2>/dev/null | python3 -c '
import json, sys
n = 0
try:
    tree = json.load(sys.stdin)
except ValueError:
    print(-1); sys.exit()
for cg in tree:
    if cg.get("cgroup", "").startswith(sys.argv[1]):
        continue
    for p in cg.get("programs", []):
        if p.get("attach_type") in ("cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_sock_ops", "sock_ops"):
            n += 1
print(n)' "$CGR"
}

# start_transparent NAME MODE: shoald with transparent.mode MODE on the
# proxy core, the job cgroup attached through shoalctl. Sets SHOALD_PID.
start_transparent() {
  SHOALD_NAME=$1
  shoald_conf "$W/$1" "" "  proxies:" "    - regx: blobs/sha256.*" "    - regx: manifests/sha256.*"
  printf 'transparent:\n  mode: %s\n  ports: [%s]\n  port: %s\n' "$2" "$ORIGIN_PORT" "$TPORT" >>"$W/$1/shoald.yaml"
  start_shoald "$W/$1"
  SHOALD_PID=$started_pid
  SHOALD_PORT=$started_port
  SHOALD_METRICS=$started_metrics
  local mode i
  for ((i = 0; i < 150; i++)); do  # the proxy port may accept before the admin socket exists
    [ -S "$W/$1/admin.sock" ] && break
    sleep 0.1
  done
  mode=$(ctl --json status | python3 -c 'import json, sys; print(json.load(sys.stdin)["transparent"]["mode"])') ||
    die "shoalctl status failed"
  [ "$mode" = "$2" ] || die "shoald runs transparent mode '$mode', not '$2' (see $W/$1/log)"
  ctl attach "$CGJ" >/dev/null || die "shoalctl attach $CGJ failed"
  echo "info ${2}_attach=ok" >>"$RAW"
}

# measure PHASE RUN SET ARG...: one connlat run (ARGs: its --case and
# --state options); its lines go to $RAW as "conn phase=PHASE run=RUN
# set=SET ...".
measure() {
  local phase=$1 run=$2 set=$3 n=$NCONN out rc=0 fh='' l
  shift 3
  [ "$set" = awake ] && n=$NAWAKE
  wait_idle
  fh=$(foreign_hooks)
  out=$(taskset -c "$CCPU" "$CONNLAT" --home "$CGO" -n "$n" --warmup "$WARM" --batch "$BATCH" "$@" \
    2>"$W/connlat-$phase-$set-$run.log") || rc=$?
  [ -n "$out" ] || die "connlat ($phase $set run $run) printed nothing: $(head -n 3 "$W/connlat-$phase-$set-$run.log")"
  [ "$rc" -eq 0 ] || die "connlat ($phase $set run $run) failed: $(head -n 3 "$W/connlat-$phase-$set-$run.log" | tr '\n' ' ') / $out"
  while read -r l; do echo "conn phase=$phase run=$run set=$set foreign_hooks=$fh $l"; done <<<"$out" >>"$RAW"
  say "  $phase $set run $run: $(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^(label|p50_us)=/) printf "%s ", $i }' <<<"$out")"
}

# prog_stats: "ID NAME RUN_TIME_NS RUN_CNT" for each program attached to $CGJ
# and each Shoal program on shoald's own cgroup (accepted4/6, which run when
# shoald looks up a redirected connection's destination).
prog_stats() {
  local own
  own=$(awk -F: '$1 == "0" { print $3 }' "/proc/$SHOALD_PID/cgroup")
  { bpftool cgroup show "$CGJ" --json; echo; bpftool cgroup show "$CG2$own" --json; } | python3 -c '
import json, subprocess, sys
seen = set()
for i, line in enumerate(l for l in sys.stdin.read().splitlines() if l.strip()):
    for p in json.loads(line):
        name = p.get("name", "")
        if p["id"] in seen or (i == 1 and not name.startswith("shoal_accepted")):
            continue
        seen.add(p["id"])
        s = json.loads(subprocess.check_output(["bpftool", "prog", "show", "id", str(p["id"]), "--json"]))
        print(p["id"], s.get("name", name or "?"), s.get("run_time_ns", 0), s.get("run_cnt", 0))'
}

# bpf_cost CASE_LABEL CASE: one connlat run of CASE alone with
# kernel.bpf_stats_enabled on; "bpfstat" lines with each program's deltas.
bpf_cost() {
  local label=$1 before after out
  before=$(prog_stats) || die "bpftool failed"
  out=$(taskset -c "$CCPU" "$CONNLAT" --home "$CGO" -n "$NCONN" --warmup 0 --batch "$BATCH" --case "$2" \
    2>"$W/connlat-stats-$label.log") || die "connlat (stats $label) failed: $(head -n 3 "$W/connlat-stats-$label.log")"
  after=$(prog_stats) || die "bpftool failed"
  local connects
  connects=$(sed -n 's/.* connects=\([0-9]*\).*/\1/p' <<<"$out")
  # join: "ID NAME NS0 CNT0 NAME NS1 CNT1"
  LC_ALL=C join <(LC_ALL=C sort <<<"$before") <(LC_ALL=C sort <<<"$after") | awk -v c="$label" -v n="$connects" \
    '{ printf "bpfstat case=%s prog=%s id=%s runs=%d ns=%d connects=%d\n", c, $2, $1, $7 - $4, $6 - $3, n }' >>"$RAW"
  echo "conn phase=ebpf run=1 set=stats $out" >>"$RAW"
}

# "redirected no_original_destination client_gone" from shoald's metrics.
# connlat closes each connection right after connect(): with the eBPF
# backend, one that shoald looks up after that is "client_gone".
redirect_counts() {
  echo "$(metric "$SHOALD_METRICS" 'shoal_transparent_connections_total{result="redirected"}')" \
    "$(metric "$SHOALD_METRICS" 'shoal_transparent_connections_total{result="no_original_destination"}')" \
    "$(metric "$SHOALD_METRICS" 'shoal_transparent_connections_total{result="client_gone"}')"
}

# check_redirects PHASE BEFORE LABEL: every connect of case LABEL in this
# phase reached shoald with its original destination.
check_redirects() {
  local want got r0 u0 g0 r1 u1 g1
  read -r r0 u0 g0 <<<"$2"
  read -r r1 u1 g1 <<<"$(redirect_counts)"
  want=$(awk -v p="$1" -v l="$3" '$1 == "conn" && index($0, " phase=" p " ") && index($0, " label=" l " ") {
    for (i = 1; i <= NF; i++) if ($i ~ /^connects=/) { sub(/connects=/, "", $i); s += $i } } END { print s + 0 }' "$RAW")
  got=$((r1 - r0))
  echo "check phase=$1 redirect_case=$3 connects=$want shoald_redirected=$got shoald_no_original_destination=$((u1 - u0))" \
    "shoald_client_gone=$((g1 - g0))" >>"$RAW"
  [ "$((got + g1 - g0))" -eq "$want" ] ||
    say "warning: $1: shoald saw $got redirected connections and $((g1 - g0)) already closed, connlat made $want"
  [ "$u1" -eq "$u0" ] || say "warning: $1: $((u1 - u0)) connections reached shoald without an original destination"
}

# kload_in NAME RUN [PROXY_ADDR]: kload from the job cgroup; no PROXY_ADDR:
# transparent (relay.bench.shoal.test resolves to the origin and the
# connects are redirected).
kload_in() {
  kload_args=(--cgroup "$CGJ")
  kload "$1" "$2" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "${3:-}" "$SHOALD_PID"
  kload_args=()
}

hosts_add_block "$W" "$ORIGIN_IP $TUNNEL_HOST" "$ORIGIN_IP $RELAY_HOST" || die "cannot edit /etc/hosts"
background before

# --- the servers ----------------------------------------------------------------

SINK_PORT=$(free_port)
taskset -c "$CCPU" "$CONNLAT" --serve "127.0.0.1:$SINK_PORT" </dev/null >"$W/sink.log" 2>&1 &
SINK_PID=$!
bg_pids+=("$SINK_PID")
wait_port 127.0.0.1 "$SINK_PORT" "$SINK_PID" "connlat --serve"
SINK=127.0.0.1:$SINK_PORT
# The same server in a network namespace of its own that never gets a NAT
# table: the iptables phase's reference for a connect with no Shoal at all
# (connlat makes that case's sockets there).
# shellcheck disable=SC2016 # expanded by the inner bash
unshare --net -- bash -c 'ip link set lo up && exec taskset -c "$1" "$2" --serve "127.0.0.1:$3"' _ \
  "$CCPU" "$CONNLAT" "$SINK_PORT" </dev/null >"$W/sink-clean.log" 2>&1 &
CLEAN_PID=$!
bg_pids+=("$CLEAN_PID")
CLEAN_NS=/proc/$CLEAN_PID/ns/net
for ((i = 0; i < 150; i++)); do
  nsenter --net="$CLEAN_NS" bash -c "exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT" 2>/dev/null && break
  kill -0 "$CLEAN_PID" 2>/dev/null || die "connlat --serve (clean namespace) exited; see $W/sink-clean.log"
  sleep 0.1
done
# shellcheck disable=SC2119 # no extra directives for the origin here
start_nginx

# --- eBPF ---------------------------------------------------------------------------

say "eBPF: connect latency, $CRUNS runs of $NCONN connects per case"
start_transparent shoald-ebpf ebpf
before=$(redirect_counts)
# a0 and a1 differ by a state of the whole machine (the hooks attached or
# not), so connlat takes turns between them batch by batch, detaching and
# attaching through shoalctl before each batch; a1x, an attach while
# already attached, is the control: a1x - a1 shows what the turn-taking
# itself leaves in the figures.
detach_cmd="$CTL --socket $W/$SHOALD_NAME/admin.sock detach $CGJ >/dev/null"
attach_cmd="$CTL --socket $W/$SHOALD_NAME/admin.sock attach $CGJ >/dev/null"
for ((r = 1; r <= CRUNS; r++)); do
  for s in $(round_order "$r" toggle mix); do
    if [ "$s" = toggle ]; then
      measure ebpf "$r" toggle --case "x,-,$SINK,$SINK_PID" --state "a0,$detach_cmd" --state "a1,$attach_cmd" \
        --state "a1x,$attach_cmd"
    else
      measure ebpf "$r" mix --case "a,-,$SINK,$SINK_PID" --case "b,$CGJ,$SINK,$SINK_PID" \
        --case "c,$CGJ,$REDIR_IP:$ORIGIN_PORT,$SHOALD_PID"
    fi
  done
done
measure ebpf 1 awake --case "a,-,$SINK" --case "b,$CGJ,$SINK" --case "c,$CGJ,$REDIR_IP:$ORIGIN_PORT"

say "eBPF: program run time (kernel.bpf_stats_enabled)"
stats_old=$(sysctl -n kernel.bpf_stats_enabled) || die "cannot read kernel.bpf_stats_enabled"
sysctl -qw kernel.bpf_stats_enabled=1 || die "cannot set kernel.bpf_stats_enabled"
bpf_cost b "b,$CGJ,$SINK,$SINK_PID"
bpf_cost c "c,$CGJ,$REDIR_IP:$ORIGIN_PORT,$SHOALD_PID"
sysctl -qw "kernel.bpf_stats_enabled=$stats_old" || die "cannot restore kernel.bpf_stats_enabled=$stats_old"
echo "info bpf_stats_enabled_restored=$stats_old" >>"$RAW"
stats_old=
check_redirects ebpf "$before" c

say "eBPF: 1 KiB, $CONNS keep-alive connections, $KSECS s x $RUNS runs per path"
code=$(taskset -c "$CCPU" "$BUILD/bench/kload" --cgroup "$CGJ" --url "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" \
  --cacert "$SCA" -c 1 -d 0.2 --warmup 0 2>&1) || die "transparent probe failed: $code"
hijacked() { grep -h '"via":"transparent"' "$W"/shoald-*/log/core.log | grep -c '"route":"hijack"' || true; }
for ((i = 0; i < 30; i++)); do  # shoald logs the connection once it has closed
  [ "$(hijacked)" -gt 0 ] && break
  sleep 0.1
done
[ "$(hijacked)" -gt 0 ] || die "the transparent probe was not hijacked (see $W/shoald-ebpf/log/core.log)"
for ((r = 1; r <= RUNS; r++)); do
  for p in $(round_order "$r" direct explicit transparent-ebpf); do
    case $p in
      direct) kload direct "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$OCA" ;;
      explicit) kload_in explicit "$r" "127.0.0.1:$SHOALD_PORT" ;;
      transparent-ebpf) kload_in transparent-ebpf "$r" ;;
    esac
  done
done
kill -0 "$SHOALD_PID" 2>/dev/null || die "shoald (eBPF) died during the bench"
stop_pid "$SHOALD_PID"

# --- iptables -----------------------------------------------------------------------

say "iptables: connect latency, $CRUNS runs of $NCONN connects per case"
start_transparent shoald-iptables iptables
before=$(redirect_counts)
for ((r = 1; r <= CRUNS; r++)); do
  measure iptables "$r" mix --case "an,-,$SINK,$CLEAN_PID,$CLEAN_NS" --case "a2,-,$SINK,$SINK_PID" \
    --case "b2,$CGJ,$SINK,$SINK_PID" --case "d,$CGJ,$REDIR_IP:$ORIGIN_PORT,$SHOALD_PID"
done
measure iptables 1 awake --case "an,-,$SINK,-,$CLEAN_NS" --case "a2,-,$SINK" --case "b2,$CGJ,$SINK" \
  --case "d,$CGJ,$REDIR_IP:$ORIGIN_PORT"
check_redirects iptables "$before" d

say "iptables: 1 KiB"
for ((r = 1; r <= RUNS; r++)); do
  for p in $(round_order "$r" explicit-iptables transparent-iptables); do
    case $p in
      explicit-iptables) kload_in explicit-iptables "$r" "127.0.0.1:$SHOALD_PORT" ;;
      transparent-iptables) kload_in transparent-iptables "$r" ;;
    esac
  done
done
kill -0 "$SHOALD_PID" 2>/dev/null || die "shoald (iptables) died during the bench"
stop_pid "$SHOALD_PID"
echo "info iptables_rules_left_after_stop=$(iptables -t nat -S 2>/dev/null | grep -c SHOAL || true)" >>"$RAW"

# --- report -----------------------------------------------------------------------------

background after
echo "info transparent_hijacked_connections=$(hijacked)" >>"$RAW"
echo "info connects_per_case=$NCONN connect_runs=$CRUNS batch=$BATCH warmup=$WARM awake_connects=$NAWAKE" >>"$RAW"
bench_info
python3 "$root/bench/connect_report.py" "$RAW" "$OUT/connect-results.txt" "$OUT/connect-results.md"
cat "$OUT/connect-results.txt"
