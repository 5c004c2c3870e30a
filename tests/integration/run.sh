#!/bin/bash
# Runs the integration tests: every tests/integration/t_*.sh, or those whose
# file name (with or without .sh) matches GLOB.
#
#   BUILD=/abs/build tests/integration/run.sh [GLOB]
#
# The registry fixture (tests/fixtures/registry/up.sh) is brought up once for
# the run and shared through SHOAL_FIXTURE; it is torn down at exit and its
# logs are copied to $BUILD/test-logs/fixture/. Each test runs under a
# timeout (SHOAL_TEST_TIMEOUT seconds, default 120) with its output in
# $BUILD/test-logs/<name>.log; exit status 77 means skipped. Prints
# "PASS|FAIL|SKIP name (seconds)" per test, the tail of a failed test's log,
# and finally "integration: N passed, N failed, N skipped". Exits 1 if any
# test failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$root/build}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)
export BUILD
glob=${1:-*}
per_test_timeout=${SHOAL_TEST_TIMEOUT:-120}
logdir=$BUILD/test-logs
mkdir -p "$logdir"

# A test whose header has the line "# variants: fast-records-off" runs a
# second time with SHOAL_TEST_FAST_RECORDS=0 (lib.sh's start_shoald then sets
# tls.fastRecords: false), reported as NAME[fast-records-off].
tests=()
for t in "$root"/tests/integration/t_*.sh; do
  [ -e "$t" ] || continue
  base=$(basename "$t")
  # shellcheck disable=SC2053
  if [[ $base == $glob || ${base%.sh} == $glob ]]; then
    tests+=("$t")
    if grep -q '^# variants:.*fast-records-off' "$t"; then tests+=("$t|fast-records-off"); fi
  fi
done
if [ ${#tests[@]} -eq 0 ]; then
  echo "run.sh: no integration test matches '$glob'" >&2
  echo "integration: 0 passed, 0 failed, 0 skipped"
  exit 1
fi

unset SHOAL_FIXTURE SHOAL_FIXTURE_SKIP SHOAL_FIXTURE_ERROR
fixture=""
running=""
teardown() {
  trap - EXIT INT TERM HUP
  # Interrupted mid-test: timeout(1) forwards the signal to the test's
  # process group, whose on_exit cleanups then run.
  if [ -n "$running" ]; then
    kill -TERM "$running" 2>/dev/null
    wait "$running" 2>/dev/null
  fi
  if [ -n "$fixture" ]; then
    "$root/tests/fixtures/registry/down.sh" "$fixture" >&2
    rm -rf "$logdir/fixture"
    cp -r "$fixture/logs" "$logdir/fixture" 2>/dev/null
    if [ "${SHOAL_KEEP_TMP:-0}" = 1 ]; then
      echo "run.sh: kept fixture $fixture" >&2
    else
      rm -rf "$fixture"
    fi
  fi
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ "$(id -u)" -ne 0 ]; then
  export SHOAL_FIXTURE_SKIP="needs root"
else
  fixture=$(mktemp -d "${TMPDIR:-/tmp}/shoal-fixture.XXXXXX")
  "$root/tests/fixtures/registry/up.sh" "$fixture" >"$logdir/fixture-up.log" 2>&1
  rc=$?
  case $rc in
    0) export SHOAL_FIXTURE=$fixture ;;
    77)
      SHOAL_FIXTURE_SKIP=$(tail -n 1 "$logdir/fixture-up.log")
      export SHOAL_FIXTURE_SKIP
      ;;
    *)
      echo "run.sh: registry fixture failed (rc=$rc); its output:" >&2
      sed 's/^/    /' "$logdir/fixture-up.log" >&2
      export SHOAL_FIXTURE_ERROR="up.sh failed with status $rc (see $logdir/fixture-up.log)"
      ;;
  esac
  echo "fixture: $(tail -n 1 "$logdir/fixture-up.log")"
fi

pass=0 failed=0 skipped=0
for entry in "${tests[@]}"; do
  t=${entry%%|*}
  variant=""
  [ "$entry" = "$t" ] || variant=${entry#*|}
  name=$(basename "$t" .sh)
  fast=1
  if [ -n "$variant" ]; then
    name="$name[$variant]"
    fast=0
  fi
  log=$logdir/$name.log
  start=$(date +%s.%N)
  SHOAL_TEST_FAST_RECORDS=$fast timeout -k 15 "$per_test_timeout" bash "$t" >"$log" 2>&1 </dev/null &
  running=$!
  wait "$running"
  rc=$?
  running=""
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0)
      pass=$((pass + 1))
      echo "PASS $name (${secs}s)"
      ;;
    77)
      skipped=$((skipped + 1))
      echo "SKIP $name (${secs}s)"
      reason=$(grep '^SKIP: ' "$log" | tail -n 1)
      [ -z "$reason" ] || echo "    ${reason#SKIP: }"
      ;;
    *)
      failed=$((failed + 1))
      echo "FAIL $name (${secs}s)"
      if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "    timed out after ${per_test_timeout}s"
      fi
      echo "    --- last 40 lines of $log:"
      tail -n 40 "$log" | sed 's/^/    /'
      ;;
  esac
done

echo "integration: $pass passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
