#!/bin/bash
# The scheduler under load: `shoald scheduler` pinned to one core, the load
# generator (build/bench/sched_load) on the other, on 127.0.0.1:
#
#   BUILD=/abs/build bench/sched.sh        (make bench builds what it needs)
#
# 0. fill: after registering 10,000 peers, $BENCH_SCHED_FILL (2,000,000)
#    announces of random (peer, task) pairs, unmeasured, so that the tasks
#    have the holders (~1,800 each) of a cluster that has been running, not
#    of a scheduler just started: a parents query costs more the more
#    holders its task has (up to the scheduler's scan bound).
# 1. rate: 64 keep-alive connections register 10,000 peers, then offer
#    $BENCH_SCHED_RATE (50,000) signed requests a second, open loop, for
#    $BENCH_SCHED_SECONDS (10) s over 1,000 tasks (35% parents, 30% announce,
#    25% heartbeat, 10% result), at most 8 pipelined per connection: the
#    latency a peer sees at that load, from when each request was due (the
#    generator polls instead of sleeping, so requests leave when due; its
#    own lag is printed).
# 2. saturate: the same connections each keep 8 requests in flight for
#    $BENCH_SCHED_SECONDS s: the most the scheduler does on its core, and
#    the scheduler's CPU time per request (/proc/PID/stat).
# Targets: saturated >= 50,000 requests/s and p99 <= 5 ms at 50,000/s, no
# failed request; printed PASS/MISS, never tuned for. Every request is
# signed and a sample of the answers' signatures is checked.
#
# Writes $BUILD/bench/sched-results.txt, sched-raw.txt (sched_load's lines)
# and the scheduler's log under $BUILD/bench/sched-logs/. Knobs:
# BENCH_SCHED_CPU (0), BENCH_LOAD_CPU (1), BENCH_SCHED_RATE (50000), BENCH_SCHED_FILL (2000000),
# BENCH_SCHED_SECONDS (10), BENCH_KEEP_TMP=1 keeps the scratch directory.
set -euo pipefail

BENCH_TAG=bench-sched
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
SCPU=${BENCH_SCHED_CPU:-0}
LCPU=${BENCH_LOAD_CPU:-1}
RATE=${BENCH_SCHED_RATE:-50000}
SECS=${BENCH_SCHED_SECONDS:-10}
FILL=${BENCH_SCHED_FILL:-2000000}
TARGET_OPS=50000
TARGET_P99_MS=5

for c in taskset python3 awk; do command -v "$c" >/dev/null || die "$c not installed"; done
for b in "$BUILD/shoald" "$BUILD/bench/sched_load"; do [ -x "$b" ] || die "$b not built (run make bench)"; done
[ "$(nproc --all)" -ge 2 ] || say "only one CPU: scheduler and load share it; figures are not comparable"

bench_scratch shoal-bench-sched sched-raw.txt sched-logs
# Others rebuild $BUILD/shoald while we run: measure a copy.
cp "$BUILD/shoald" "$W/shoald.bin"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/secret")

port=$(free_port)
mkdir -p "$W/sched/log"
taskset -c "$SCPU" "$W/shoald.bin" scheduler --listen "127.0.0.1:$port" --cluster-secret-file "$W/secret" \
  --log-dir "$W/sched/log" </dev/null >"$W/sched/log/stdout.log" 2>&1 &
spid=$!
bg_pids+=("$spid")
wait_port 127.0.0.1 "$port" "$spid" "shoald scheduler"

load() {
  taskset -c "$LCPU" "$BUILD/bench/sched_load" --port "$port" --secret-file "$W/secret" \
    -c 64 --depth 8 --peers 10000 --tasks 1000 -d "$SECS" "$@"
}

say "fill: $FILL announces; rate: $RATE requests/s offered for $SECS s"
rc=0
load --fill "$FILL" --rate "$RATE" --saturate 0 >"$W/rate.out" 2>"$W/rate.log" || rc=$?
cat "$W/rate.out" >>"$RAW"
[ -s "$W/rate.out" ] || die "sched_load printed nothing; see $W/rate.log"

say "saturate: 8 requests in flight on each of 64 connections for $SECS s"
t0=$(cpu_ticks "$spid")
load --rate 0 >"$W/sat.out" 2>"$W/sat.log" || rc=$?
t1=$(cpu_ticks "$spid")
cat "$W/sat.out" >>"$RAW"
[ -s "$W/sat.out" ] || die "sched_load printed nothing; see $W/sat.log"
kill -0 "$spid" 2>/dev/null || die "the scheduler died; see its log"

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2" | head -n 1; }
ops=$(field ops_per_s "$W/sat.out")
sat_ops=$(field ops "$W/sat.out")
sat_p99=$(field p99_ms "$W/sat.out")
rate_p50=$(field p50_ms "$W/rate.out")
rate_p99=$(field p99_ms "$W/rate.out")
rate_max=$(field max_ms "$W/rate.out")
rate_lag=$(field lag_p99_ms "$W/rate.out")
holders=$(field holders_per_task "$W/rate.out")
overload=$(field overload "$W/rate.out")
errors=$(($(field errors "$W/rate.out") + $(field errors "$W/sat.out")))
bad_sig=$(($(field bad_sig "$W/rate.out") + $(field bad_sig "$W/sat.out")))
# CPU time over the whole saturate run (its registrations and warm-up
# included) per measured request: an upper bound.
us_per_op=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$sat_ops" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
hwm=$(hwm_kib "$spid")

verdict=PASS
awk -v o="$ops" -v t="$TARGET_OPS" 'BEGIN { exit !(o >= t) }' || verdict=MISS
awk -v p="$rate_p99" -v t="$TARGET_P99_MS" 'BEGIN { exit !(p <= t) }' || verdict=MISS
[ "$errors" -eq 0 ] && [ "$bad_sig" -eq 0 ] && [ "$overload" = 0 ] && [ "$rc" -eq 0 ] || verdict=MISS

{
  printf 'scheduler: %.0f ops/s on one core, p99 %s ms (target >= %d ops/s, p99 <= %d ms): %s\n' \
    "$ops" "$rate_p99" "$TARGET_OPS" "$TARGET_P99_MS" "$verdict"
  echo "  at $RATE requests/s offered (open loop, ${SECS} s): p50 $rate_p50 ms, p99 $rate_p99 ms, max $rate_max ms" \
    "(the generator sent them within $rate_lag ms of due, p99)"
  echo "  saturated (64 connections x 8 in flight, ${SECS} s): $ops/s, p99 $sat_p99 ms; scheduler CPU $us_per_op us/request"
  echo "  10,000 peers, 1,000 tasks of 32 pieces, $holders holders per task (after $FILL announces); failed requests $errors, bad answer signatures $bad_sig;" \
    "scheduler peak RSS $((hwm / 1024)) MiB; scheduler on CPU $SCPU, load on CPU $LCPU"
} | tee "$OUT/sched-results.txt"
