#!/bin/bash
# Runs each CMocka unit-test binary given on the command line, then prints one
# closing line "unit: N passed, N failed" counting binaries.
set -u
pass=0 fail=0
for bin in "$@"; do
  echo "== $(basename "$bin")"
  if "$bin"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $bin"; fi
done
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
