#!/bin/bash
# `make demo` (tools/demo.sh in its own network and mount namespace) works:
# both pulls succeed, the second "peer task done" line is a reuse, the
# registry was spared the SIF's bytes, and it removes what it made.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd jq curl openssl unshare
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
[ -x "$BUILD/tests/fixtures/oras/shoal-oras" ] || skip "the ORAS client is not built yet"
before=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'shoal-demo.*' | sort)
out=$TEST_TMP/demo.out
# isolated.sh gives the demo its own loopback and /etc/hosts, so it does not
# meet the registry fixture this run may have up on 127.0.0.2-4:443.
if ! timeout 120 "$SHOAL_ROOT/tests/integration/isolated.sh" -- "$SHOAL_ROOT/tools/demo.sh" >"$out" 2>&1; then
  cat "$out" >&2
  fail "tools/demo.sh failed"
fi
cat "$out" >&2
[ "$(grep -c '"msg":"peer task done' "$out")" -eq 1 ] || fail "demo did not print one first-pull \"peer task done\" line"
[ "$(grep -c '"msg":"reuse file peer task done' "$out")" -eq 1 ] || fail "demo did not print one reuse line"
spared=$(sed -n 's/.*the registry was spared \([0-9]*\) bytes.*/\1/p' "$out")
if ! [[ $spared =~ ^[0-9]+$ ]] || [ "$spared" -lt 4000000 ]; then
  fail "demo reported '$spared' bytes spared, want the SIF's size"
fi
grep -q 'blob store GETs of the SIF over both pulls: 1$' "$out" || fail "the blob store served the SIF more than once"
after=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'shoal-demo.*' | sort)
assert_eq "$after" "$before" "demo work directories left behind"
info "ok"
