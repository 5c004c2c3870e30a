#!/bin/bash
# Task engine, digest verification, against tests/fixtures/fault_origin.py
# behind a hijacked TLS tunnel (blob URLs are p2p):
#   an origin that serves WRONG bytes of the right length for
#   /v2/x/blobs/sha256:<digest>: curl fails (non-zero, not a timeout) after
#   at most length - 64 KiB bytes, never exit 0 with the full length;
#   core.log "peer task failed" with a digest-mismatch error;
#   shoal_digest_mismatch_total = 1, nothing in tasks/ or tmp/; a client
#   that joined the failing task is reset as well (the origin saw one GET);
#   the same URL again, now answered correctly: the origin is asked again
#   (count 2), the client gets the exact bytes, the task is stored, and a
#   third request is served from the store (count stays 2);
#   a small object (< 64 KiB): corrupt -> reset with no body byte, then
#   correct -> stored; an empty object (digest of ""): 200, 0 bytes, stored
#   and served again from the store;
#   a joiner that learns of the mismatch before its first byte (its
#   credential-check HEAD is answered late) must not get the unverified
#   object with success either (no fallback to an unverified origin fetch).
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3 cmp
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin ORIGIN --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"

cat >"$TEST_TMP/shoald.yaml" <<EOF
proxy:
  connectPorts: [$ORIGIN_PORT]
  proxies:
    - regx: blobs/sha256.*
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$ORIGIN_PORT\$
tls:
  trustStore: $TEST_TMP/origin/ca.crt
EOF
start_shoald "$TEST_TMP/shoald.yaml"
base=https://127.0.0.1:$ORIGIN_PORT

# fetch LABEL URL [CURL_ARGS...]: curl through the proxy; sets RC, CODE, SIZE.
fetch() {
  local label=$1 url=$2
  shift 2
  RC=0
  CODE=$(curl -sS -o "$TEST_TMP/$label.body" -w '%{http_code}' --max-time 30 -x "$SHOALD_PROXY" \
    --cacert "$site/ca.crt" "$@" "$url" 2>"$TEST_TMP/$label.err") || RC=$?
  SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes $(head -c 200 "$TEST_TMP/$label.err")"
}
# expect: the pattern body of N bytes.
expect() { python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$1" >"$TEST_TMP/expect.$1"; }
assert_failed_transfer() { # LABEL MAX_BYTES
  [ "$RC" -ne 0 ] || fail "$1: curl exit 0 with $SIZE bytes for an object that failed verification"
  [ "$RC" -ne 28 ] || fail "$1: curl timed out instead of being reset"
  [ "$SIZE" -le "$2" ] || fail "$1: the client got $SIZE bytes, more than the $2 allowed before verification"
}
stored() { find "$SHOALD_DATA_DIR/tasks" -path "*/$1/data" 2>/dev/null | wc -l; }
tmp_empty() { [ -z "$(find "$SHOALD_DATA_DIR/tmp" -mindepth 1 2>/dev/null)" ]; }

n=$((3 << 20 | 12345))
expect "$n"
hex=$(sha256sum "$TEST_TMP/expect.$n" | cut -d' ' -f1)
url=$base/v2/x/blobs/sha256:$hex

info "wrong bytes of the right length ($n) for sha256:$hex, with a joiner"
curl -sS -o "$TEST_TMP/owner.body" --max-time 30 -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "$url?size=$n&corrupt=1&secs=1.5" 2>"$TEST_TMP/owner.err" &
owner_pid=$!
sleep 0.5
fetch joiner "$url?size=$n&corrupt=1" # the query differs, the task (the digest) is the same
assert_failed_transfer joiner $((n - 65536))
wait_exit "$owner_pid" 30
RC=$WAIT_RC
SIZE=$(stat -c %s "$TEST_TMP/owner.body" 2>/dev/null || echo 0)
info "  owner: curl $RC, $SIZE bytes $(head -c 200 "$TEST_TMP/owner.err")"
assert_failed_transfer owner $((n - 65536))
assert_eq "$(origin_count "sha256:$hex")" 1 "origin GETs for the corrupt object with two clients"
assert_log_has ".msg == \"peer task failed\" and .task == \"$hex\" and ((.error // \"\") | test(\"digest mismatch\"))"
assert_eq "$(metric shoal_digest_mismatch_total)" 1 "shoal_digest_mismatch_total"
assert_eq "$(metric 'shoal_tasks_total{result="failed"}')" 1 "shoal_tasks_total{result=\"failed\"}"
assert_eq "$(metric shoal_task_joined_total)" 1 "shoal_task_joined_total"
assert_eq "$(log_count "((.msg // \"\") | test(\"peer task done\")) and .task == \"$hex\"")" 0 "\"peer task done\" for the corrupt object"
assert_eq "$(stored "$hex")" 0 "stored copies of the corrupt object"
tmp_empty || fail "tmp/ not empty after the failed task: $(task_files "$SHOALD_DATA_DIR")"

info "the same task, now answered correctly: fetched again, verified, stored"
fetch good "$url?size=$n"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "correct object after the failure"
assert_same_file "$TEST_TMP/good.body" "$TEST_TMP/expect.$n" "correct object bytes"
assert_eq "$(origin_count "sha256:$hex")" 2 "origin GETs after the corrupt and the correct answers"
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$hex\" and .size == $n"
assert_eq "$(stored "$hex")" 1 "stored copies of the verified object"
fetch again "$url?size=$n&corrupt=1" # the origin would corrupt it: it must not be asked
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "third request"
assert_same_file "$TEST_TMP/again.body" "$TEST_TMP/expect.$n" "object served from the store"
assert_eq "$(origin_count "sha256:$hex")" 2 "origin GETs after the store served it"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$hex\""
assert_eq "$(metric shoal_digest_mismatch_total)" 1 "shoal_digest_mismatch_total after the good fetches"

info "a small object (< 64 KiB): corrupt, then correct"
s=5000
expect "$s"
shex=$(sha256sum "$TEST_TMP/expect.$s" | cut -d' ' -f1)
surl=$base/v2/x/blobs/sha256:$shex
fetch small-bad "$surl?size=$s&corrupt=1"
assert_failed_transfer small-bad 0
assert_eq "$(metric shoal_digest_mismatch_total)" 2 "shoal_digest_mismatch_total after the small corrupt object"
assert_eq "$(stored "$shex")" 0 "stored copies of the small corrupt object"
fetch small-good "$surl?size=$s"
assert_eq "$RC/$CODE/$SIZE" "0/200/$s" "small object"
assert_same_file "$TEST_TMP/small-good.body" "$TEST_TMP/expect.$s" "small object bytes"
assert_eq "$(stored "$shex")" 1 "stored copies of the small object"
fetch small-again "$surl?size=$s"
assert_eq "$RC/$CODE/$SIZE" "0/200/$s" "small object from the store"
assert_eq "$(origin_count "sha256:$shex")" 2 "origin GETs for the small object"

info "an empty object"
ehex=$(printf '' | sha256sum | cut -d' ' -f1)
eurl=$base/v2/x/blobs/sha256:$ehex
fetch empty "$eurl?size=0"
assert_eq "$RC/$CODE/$SIZE" "0/200/0" "empty object"
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$ehex\" and .size == 0"
assert_eq "$(stored "$ehex")" 1 "stored copies of the empty object"
fetch empty-again "$eurl?size=0"
assert_eq "$RC/$CODE/$SIZE" "0/200/0" "empty object from the store"
assert_eq "$(origin_count "sha256:$ehex")" 1 "origin GETs for the empty object"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$ehex\""
assert_eq "$(metric shoal_digest_mismatch_total)" 2 "shoal_digest_mismatch_total after the empty object"
tmp_empty || fail "tmp/ not empty at the end: $(task_files "$SHOALD_DATA_DIR")"

info "a joiner whose task fails before its first byte is not handed the unverified bytes"
# The joiner's credential check (a HEAD, proxy.authCheck) is answered only
# after the owner's download failed verification, so the joiner learns of
# the failure before it sent its response head.
m=$((1 << 20 | 777))
expect "$m"
jhex=$(sha256sum "$TEST_TMP/expect.$m" | cut -d' ' -f1)
jurl=$base/v2/x/blobs/sha256:$jhex
curl -sS -o "$TEST_TMP/jowner.body" --max-time 30 -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "$jurl?size=$m&corrupt=1&secs=1" 2>"$TEST_TMP/jowner.err" &
jowner_pid=$!
sleep 0.3
# Its own credential: the check's cache does not answer for it.
fetch late-joiner "$jurl?size=$m&corrupt=1&headdelay=2" -H "Authorization: Bearer late-joiner"
wait_exit "$jowner_pid" 30
[ "$WAIT_RC" != 0 ] || fail "owner of a corrupt object: curl exit 0"
[ "$RC" -ne 0 ] || [ "$SIZE" -ne "$m" ] ||
  fail "a client got all $m bytes of an object that failed verification with success (curl exit 0, HTTP $CODE)"
[ "$RC" -ne 0 ] || [ "$CODE" != 200 ] || fail "a client got HTTP 200 and curl exit 0 ($SIZE bytes) for an object that failed verification"
assert_eq "$(stored "$jhex")" 0 "stored copies of the corrupt object"
# 3, or 4 if the late joiner fetched (and verified) the object itself.
mm=$(metric shoal_digest_mismatch_total)
[ "$mm" -ge 3 ] || fail "shoal_digest_mismatch_total at the end: $mm, want >= 3"
shoald_alive "after the verification faults"
info "ok"
