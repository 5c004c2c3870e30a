#!/bin/bash
# Every metric shoald can export is documented in README.md's metrics table:
#   every name passed to obs::metrics().counter/gauge/histogram in the
#   sources, and every "# TYPE" name a running shoald actually serves (which
#   also catches names built at run time), must appear in README.md.
. "$(dirname "$0")/lib.sh"

need_cmd python3 curl
readme=$SHOAL_ROOT/README.md

# Names in the sources: the first string literal of each registration call,
# which may sit on the next line.
mapfile -t code_names < <(python3 - "$SHOAL_ROOT" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
pat = re.compile(r'\.(?:counter|gauge|histogram)\(\s*"([a-z_:][a-z0-9_:]*)"', re.S)
names = set()
for f in list(root.glob("userspace/**/*.cpp")) + list(root.glob("include/**/*.h")):
    names.update(pat.findall(f.read_text()))
print("\n".join(sorted(names)))
PY
)
[ "${#code_names[@]}" -ge 20 ] || fail "found only ${#code_names[@]} metric names in the sources; the scan is broken"

cat >"$TEST_TMP/shoald.yaml" <<EOF
proxy:
  proxies:
    - regx: blobs/sha256.*
EOF
start_shoald "$TEST_TMP/shoald.yaml"
served=$(curl -sS --max-time 5 "http://127.0.0.1:$SHOALD_METRICS_PORT/metrics") || fail "GET /metrics failed"
mapfile -t live_names < <(awk '$1 == "#" && $2 == "TYPE" { print $3 }' <<<"$served" | sort -u)
[ "${#live_names[@]}" -ge 10 ] || fail "shoald served only ${#live_names[@]} metric families"

missing=()
for n in "${code_names[@]}" "${live_names[@]}"; do
  grep -qE "\`$n(\{[^\`]*)?\`" "$readme" || missing+=("$n")
done
if [ "${#missing[@]}" -gt 0 ]; then
  fail "metrics missing from README.md's metrics table: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
fi
info "${#code_names[@]} metric names in the sources, ${#live_names[@]} served, all documented"
