#!/bin/bash
# Runs libFuzzer targets: each BIN (build/fuzz/fuzz_<name>) for FUZZ_SECONDS
# seconds on a working corpus in $BUILD/fuzz/corpus/<name>, seeded from
# tests/fuzz/corpus/<name>, with tests/fuzz/<name>.dict (or <family>.dict)
# as its dictionary when there is one. A crash, leak or sanitizer report
# fails the target; its reproducer is kept in $BUILD/fuzz/artifacts/<name>/
# and the log in $BUILD/fuzz/<name>.log. Prints "PASS|FAIL name" per target and
# "fuzz: N passed, N failed"; exits 1 if any failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$root/build}
secs=${FUZZ_SECONDS:-60}
pass=0 failed=0
for bin in "$@"; do
  name=$(basename "$bin")
  name=${name#fuzz_}
  corpus=$BUILD/fuzz/corpus/$name
  artifacts=$BUILD/fuzz/artifacts/$name
  log=$BUILD/fuzz/$name.log
  mkdir -p "$corpus" "$artifacts"
  [ -d "$root/tests/fuzz/corpus/$name" ] && cp -n "$root/tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null
  # A dictionary tests/fuzz/<name>.dict, or one for the family (http.dict
  # serves http_request and http_response).
  dict=()
  for d in "$root/tests/fuzz/$name.dict" "$root/tests/fuzz/${name%%_*}.dict"; do
    if [ -f "$d" ]; then
      dict=(-dict="$d")
      break
    fi
  done
  if "$bin" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" "$corpus" >"$log" 2>&1; then
    pass=$((pass + 1))
    echo "PASS fuzz_$name ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${secs}s)"
  else
    failed=$((failed + 1))
    echo "FAIL fuzz_$name (reproducer in $artifacts; log $log)"
    tail -n 30 "$log" | sed 's/^/    /'
  fi
done
echo "fuzz: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
