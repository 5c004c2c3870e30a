#!/bin/bash
# shoalctl's commands against a real shoald and the registry fixture:
#   - --help on every command (exit 0, the command's own usage), usage
#     errors exit 2, an unreachable daemon exits 3;
#   - check-config without a daemon: "ok" and a summary for a good file,
#     file:line:col errors and exit 1 for a bad one, both as --json too;
#   - get: a blob through the daemon (hijacked, routed to the task engine)
#     lands in FILE byte for byte, no FILE.tmp left, no progress when piped
#     and a progress bar on a terminal; a wrong --digest exits 4 and leaves
#     no file; a 404 exits 1; an unwritable FILE exits 5;
#   - tasks: the blob is stored, its bytes came from the origin, a second
#     get is a reuse (bytes_reuse, reuse_count); the table shows it;
#   - status shows the store; gc, after a reload with a 1 s expiry, removes
#     the task and says how many bytes it freed.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq
ctl=$BUILD/shoalctl
[ -x "$ctl" ] || skip "$ctl not built yet"
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"

# expect_rc WANT WHAT CMD...: runs CMD, fails unless it exits WANT.
expect_rc() {
  local want=$1 what=$2 rc=0
  shift 2
  "$@" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
  if [ "$rc" -ne "$want" ]; then
    cat "$TEST_TMP/out" "$TEST_TMP/err" >&2
    fail "$what: exit $rc, want $want"
  fi
}

info "--help everywhere, usage errors, no daemon"
expect_rc 0 "shoalctl --help" "$ctl" --help
grep -q '^Exit codes:' "$TEST_TMP/out" || fail "shoalctl --help documents no exit codes"
for c in status tasks get preheat gc check-config reload attach detach run cleanup; do
  expect_rc 0 "shoalctl $c --help" "$ctl" "$c" --help
  grep -q "^usage: shoalctl $c" "$TEST_TMP/out" || fail "shoalctl $c --help does not show its usage"
  if grep -q "^Commands:" "$TEST_TMP/out"; then fail "shoalctl $c --help printed the global usage"; fi
done
expect_rc 2 "shoalctl without a command" "$ctl"
expect_rc 2 "unknown command" "$ctl" frobnicate
expect_rc 2 "get without -O" "$ctl" get https://example.test/x
expect_rc 2 "preheat with a bad REF" "$ctl" preheat 'registry.test/Upper:1'
grep -q 'lower-case' "$TEST_TMP/err" || fail "preheat's REF error does not say why"
expect_rc 3 "status without a daemon" "$ctl" --socket "$TEST_TMP/none.sock" status
expect_rc 3 "tasks without a daemon" "$ctl" --socket "$TEST_TMP/none.sock" --json tasks

fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"

info "check-config (no daemon needed)"
expect_rc 0 "check-config on a good file" "$ctl" --socket "$TEST_TMP/none.sock" check-config "$config"
grep -q "^$config: ok" "$TEST_TMP/out" || fail "check-config did not say ok: $(cat "$TEST_TMP/out")"
grep -q '2 rule(s), TLS interception on (2 host(s))' "$TEST_TMP/out" || fail "check-config summary: $(cat "$TEST_TMP/out")"
bad=$TEST_TMP/bad.yaml
printf 'proxy:\n  proxies:\n    - regx: "blobs(("\n  nosuchkey: 1\n' >"$bad"
expect_rc 1 "check-config on a bad file" "$ctl" check-config "$bad"
grep -q "^$bad:3:[0-9]*: proxy.proxies\[0\].regx: bad regex" "$TEST_TMP/err" ||
  fail "check-config did not report the regex at file:line: $(cat "$TEST_TMP/err")"
grep -q "^$bad:4:[0-9]*: proxy.nosuchkey" "$TEST_TMP/err" || fail "check-config did not report the unknown key"
expect_rc 1 "check-config --json on a bad file" "$ctl" --json check-config "$bad"
assert_eq "$(jq -r '.ok' "$TEST_TMP/out")" false "check-config --json .ok"
assert_eq "$(jq -r '[.diagnostics[] | select(.severity == "error") | .line] | sort | join(",")' "$TEST_TMP/out")" 3,4 \
  "check-config --json error lines"
expect_rc 0 "check-config --json on a good file" "$ctl" check-config "$config" --json
assert_eq "$(jq -r '.summary.rules' "$TEST_TMP/out")" 2 "check-config --json summary.rules"

start_shoald "$config"
sock=$SHOALD_ADMIN_SOCKET
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
hex=${blob#sha256:}
size=$SHOAL_TEST_HELLO_BIG_LAYER_SIZE
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob
token=$(registry_token) || fail "no token from the fixture"

info "get through the daemon (piped: no progress bar)"
out=$TEST_TMP/blob
"$ctl" --socket "$sock" get "$url" -O "$out" --header "Authorization: Bearer $token" \
  --cacert "$SHOAL_TEST_ORIGIN_CA" 2>"$TEST_TMP/get.err" || { cat "$TEST_TMP/get.err" >&2; fail "shoalctl get failed"; }
assert_eq "$(sha256_of "$out")" "$blob" "get: file digest"
[ ! -e "$out.tmp" ] || fail "get left $out.tmp"
if grep -q $'\r' "$TEST_TMP/get.err"; then fail "get drew a progress bar into a pipe"; fi
grep -q "(verified)" "$TEST_TMP/get.err" || fail "get did not say the digest was verified: $(cat "$TEST_TMP/get.err")"
assert_log_has ".msg == \"connect\" and .route == \"hijack\""

info "tasks: stored, bytes from the origin"
"$ctl" --socket "$sock" --json tasks "$hex" >"$TEST_TMP/tasks.json" || fail "shoalctl tasks failed"
assert_eq "$(jq -r '.stored | length' "$TEST_TMP/tasks.json")" 1 "tasks: stored entries for the blob"
assert_eq "$(jq -r '.stored[0].size' "$TEST_TMP/tasks.json")" "$size" "tasks: size"
assert_eq "$(jq -r '.stored[0].bytes_origin' "$TEST_TMP/tasks.json")" "$size" "tasks: bytes_origin"
assert_eq "$(jq -r '.stored[0].bytes_peer' "$TEST_TMP/tasks.json")" 0 "tasks: bytes_peer"
assert_eq "$(jq -r '.stored[0].url' "$TEST_TMP/tasks.json")" "$url" "tasks: url"

info "get again: a reuse; JSON output"
"$ctl" --socket "$sock" get "$url" -O "$TEST_TMP/blob2" -H "Authorization: Bearer $token" --json \
  --cacert "$SHOAL_TEST_ORIGIN_CA" >"$TEST_TMP/get2.json" || fail "second get failed"
assert_eq "$(jq -r '.ok' "$TEST_TMP/get2.json")" true "get --json .ok"
assert_eq "$(jq -r '.bytes' "$TEST_TMP/get2.json")" "$size" "get --json .bytes"
assert_same_file "$TEST_TMP/blob2" "$out" "second get"
"$ctl" --socket "$sock" tasks --json "sha256:$hex" >"$TEST_TMP/tasks.json" || fail "shoalctl tasks failed"
assert_eq "$(jq -r '.stored[0].reuse_count' "$TEST_TMP/tasks.json")" 1 "tasks: reuse_count"
assert_eq "$(jq -r '.stored[0].bytes_reuse' "$TEST_TMP/tasks.json")" "$size" "tasks: bytes_reuse"
"$ctl" --socket "$sock" tasks >"$TEST_TMP/tasks.txt" || fail "shoalctl tasks (table) failed"
grep -q "^ID  *STATE  *SIZE" "$TEST_TMP/tasks.txt" || fail "tasks table has no header: $(cat "$TEST_TMP/tasks.txt")"
grep -q "^${hex:0:12}  *stored  *8.*MiB  *100%" "$TEST_TMP/tasks.txt" || fail "tasks table lacks the blob: $(cat "$TEST_TMP/tasks.txt")"

info "get on a terminal draws a progress bar"
if command -v script >/dev/null; then
  script -qec "'$ctl' --socket '$sock' get '$url' -O '$TEST_TMP/blob3' -H 'Authorization: Bearer $token' --cacert '$SHOAL_TEST_ORIGIN_CA'" \
    "$TEST_TMP/tty.log" >/dev/null || fail "get under script(1) failed"
  grep -q $'\r.*%.*MiB/s' "$TEST_TMP/tty.log" || fail "no progress bar on a terminal: $(tr '\r' '\n' <"$TEST_TMP/tty.log" | head -5)"
fi

info "get: exit codes"
# The small layer straight from the blob store's storage path (no digest
# in the URL), checked against the big layer's digest: a mismatch.
other=$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST
ohex=${other#sha256:}
surl=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$other
store_url=$SHOAL_TEST_BLOBS_URL/docker/registry/v2/blobs/sha256/${ohex:0:2}/$ohex/data
expect_rc 4 "get with a wrong --digest" "$ctl" --socket "$sock" get "$store_url" -O "$TEST_TMP/wrong" \
  --digest "$blob" --cacert "$SHOAL_TEST_ORIGIN_CA"
if [ -e "$TEST_TMP/wrong" ] || [ -e "$TEST_TMP/wrong.tmp" ]; then fail "a digest mismatch left a file"; fi
grep -q "digest mismatch" "$TEST_TMP/err" || fail "no digest mismatch message: $(cat "$TEST_TMP/err")"
expect_rc 2 "get with a --digest the URL contradicts" "$ctl" --socket "$sock" get "$surl" -O "$TEST_TMP/wrong" \
  --digest "$blob"
missing=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/sha256:$(printf '%064d' 1)
expect_rc 1 "get of a missing blob" "$ctl" --socket "$sock" get "$missing" -O "$TEST_TMP/missing" \
  -H "Authorization: Bearer $token" --cacert "$SHOAL_TEST_ORIGIN_CA"
grep -q "404" "$TEST_TMP/err" || fail "a 404 is not reported: $(cat "$TEST_TMP/err")"
[ ! -e "$TEST_TMP/missing.tmp" ] || fail "a failed get left its .tmp"
expect_rc 5 "get into an unwritable place" "$ctl" --socket "$sock" get "$surl" -O "$TEST_TMP/no/such/dir/f" \
  -H "Authorization: Bearer $token" --cacert "$SHOAL_TEST_ORIGIN_CA"
expect_rc 1 "get through a dead proxy" "$ctl" --socket "$sock" get "$surl" -O "$TEST_TMP/x" \
  --proxy "127.0.0.1:$(free_port)" -H "Authorization: Bearer $token"

info "status shows the store"
"$ctl" --socket "$sock" --json status >"$TEST_TMP/status.json" || fail "status --json failed"
[ "$(jq -r '.store.tasks' "$TEST_TMP/status.json")" -ge 1 ] || fail "status: store.tasks < 1"
assert_eq "$(jq -r '.hijack_cert' "$TEST_TMP/status.json")" "$site/ca.crt" "status: hijack_cert"
# Captured first: under pipefail, grep -q leaving early could fail the pipe.
table=$("$ctl" --socket "$sock" status) || fail "shoalctl status (table) failed"
grep -q "^store  *$SHOALD_DATA_DIR, [0-9]* tasks" <<<"$table" || fail "status table has no store line"

info "gc: nothing to free, then everything after a 1 s expiry"
"$ctl" --socket "$sock" gc >"$TEST_TMP/gc.txt" || fail "shoalctl gc failed"
grep -q "^freed 0 B in 0 task(s)" "$TEST_TMP/gc.txt" || fail "gc with nothing expired: $(cat "$TEST_TMP/gc.txt")"
stored_bytes=$(jq -r '.store.bytes' "$TEST_TMP/status.json")
printf 'storage:\n  taskExpireTime: 1s\n' >>"$config"
"$ctl" --socket "$sock" reload >/dev/null || fail "reload failed"
sleep 1.5
auto=$(log_count '.msg == "store gc"')
"$ctl" --socket "$sock" --json gc >"$TEST_TMP/gc.json" || fail "shoalctl gc --json failed"
if [ "$auto" -eq 0 ]; then
  assert_eq "$(jq -r --arg h "$hex" '[.removed[] | select(.id == $h)] | length' "$TEST_TMP/gc.json")" 1 "gc: the blob removed"
  assert_eq "$(jq -r '.freed_bytes' "$TEST_TMP/gc.json")" "$stored_bytes" "gc: freed bytes"
else
  info "the minute's automatic GC ran first; checking the store only"
fi
assert_eq "$(jq -r '.store_tasks' "$TEST_TMP/gc.json")" 0 "gc: tasks left"
assert_eq "$("$ctl" --socket "$sock" --json tasks | jq -r '.stored | length')" 0 "tasks after gc"
[ -z "$(find "$SHOALD_DATA_DIR/tasks" -mindepth 2 -maxdepth 2 2>/dev/null)" ] || fail "task directories left after gc"
kill -0 "$SHOALD_PID" 2>/dev/null || fail "shoald died"
info "ok"
