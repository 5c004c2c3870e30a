#!/bin/bash
# Task engine across a crash (tests/fixtures/fault_origin.py, plain proxy):
#   first, a joiner that gives up early (curl --max-time) does not disturb
#   the owner or a later joiner (one origin GET, both get the exact bytes);
#   then shoald is SIGKILLed in the middle of a 64 MiB task download
#   (trickled), with the partial download in <data-dir>/tmp/; its client
#   sees a failed transfer. Restarted on the same --data-dir:
#   tmp/ is empty and no task directory exists for the object (nothing
#   partial survives) while the task committed before the crash does
#   ("task store open" with tasks: 1); the next request goes to the origin
#   again (origin GET count 2, no reuse), gets exactly the right 64 MiB and
#   is stored ("peer task done"); a request after that is served from the
#   store.
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3
start_fault_origin ORIGIN

cat >"$TEST_TMP/shoald.yaml" <<EOF
proxy:
  proxies:
    - regx: blobs/sha256.*
EOF
data=$TEST_TMP/data # shared by both daemons (the last --data-dir wins)
n=$((64 << 20))
hex=$(python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$n" | sha256sum | cut -d' ' -f1)
url=http://127.0.0.1:$ORIGIN_PORT/v2/x/blobs/sha256:$hex

start_shoald "$TEST_TMP/shoald.yaml" --data-dir "$data"
first_pid=$SHOALD_PID

info "first, a joiner that gives up early does not disturb the owner or later joiners"
s=$((8 << 20))
shex=$(python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$s" | sha256sum | cut -d' ' -f1)
surl=http://127.0.0.1:$ORIGIN_PORT/v2/x/blobs/sha256:$shex
curl -sS -o "$TEST_TMP/s-owner.body" --max-time 30 -x "$SHOALD_PROXY" "$surl?size=$s&secs=2" 2>"$TEST_TMP/s-owner.err" &
sowner_pid=$!
sleep 0.3
qrc=0
curl -sS -o /dev/null --max-time 0.7 -x "$SHOALD_PROXY" "$surl?size=$s" 2>/dev/null || qrc=$?
assert_eq "$qrc" 28 "curl status of the joiner that gave up"
curl -sS -o "$TEST_TMP/s-joiner.body" --max-time 30 -x "$SHOALD_PROXY" "$surl?size=$s" 2>"$TEST_TMP/s-joiner.err" ||
  fail "a joiner after another one gave up failed: $(cat "$TEST_TMP/s-joiner.err")"
wait_exit "$sowner_pid" 30
assert_eq "$WAIT_RC" 0 "owner's curl after a joiner gave up ($(cat "$TEST_TMP/s-owner.err"))"
assert_eq "$(sha256_of "$TEST_TMP/s-owner.body")" "sha256:$shex" "owner's bytes"
assert_eq "$(sha256_of "$TEST_TMP/s-joiner.body")" "sha256:$shex" "second joiner's bytes"
assert_eq "$(origin_count "sha256:$shex")" 1 "origin GETs for the object with three clients"
assert_eq "$(metric shoal_task_joined_total)" 2 "shoal_task_joined_total"
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$shex\""
rm -f "$TEST_TMP/s-owner.body" "$TEST_TMP/s-joiner.body"

info "a 64 MiB task trickled over 20 s; SIGKILL once part of it is on disk"
curl -sS -o "$TEST_TMP/first.body" --max-time 60 -x "$SHOALD_PROXY" "$url?size=$n&secs=20" \
  2>"$TEST_TMP/first.err" &
client_pid=$!
deadline=$((SECONDS + 15))
partial=0
while :; do
  partial=$(find "$data/tmp" -type f -name data -printf '%s\n' 2>/dev/null | sort -n | tail -n 1)
  partial=${partial:-0}
  [ "$partial" -lt $((4 << 20)) ] || break
  [ "$SECONDS" -lt "$deadline" ] || fail "no partial download in $data/tmp after 15 s: $(task_files "$data")"
  sleep 0.1
done
info "  partial download: $partial bytes in $(find "$data/tmp" -mindepth 1 -maxdepth 1)"
[ "$partial" -lt "$n" ] || fail "the download finished before the kill"
kill -KILL "$first_pid"
wait "$first_pid" 2>/dev/null || true
wait_exit "$client_pid" 20
[ "$WAIT_RC" != timeout ] || fail "the client of the killed daemon still waits after 20 s"
[ "$WAIT_RC" -ne 0 ] || fail "the client of the killed daemon reports success ($(stat -c %s "$TEST_TMP/first.body") bytes)"
got=$(stat -c %s "$TEST_TMP/first.body" 2>/dev/null || echo 0)
[ "$got" -lt "$n" ] || fail "the client of the killed daemon got all $n bytes"
assert_eq "$(origin_count "sha256:$hex")" 1 "origin GETs before the restart"

info "restart on the same data dir"
start_shoald "$TEST_TMP/shoald.yaml" --data-dir "$data"
assert_log_has '.msg == "task store open" and .tasks == 1'
left=$(find "$data/tmp" -mindepth 1 2>/dev/null)
[ -z "$left" ] || fail "tmp/ after the restart: $left"
[ -z "$(find "$data/tasks" -name "$hex" 2>/dev/null)" ] || fail "a task directory for the partial object survived: $(task_files "$data")"

info "the next request goes to the origin and gets the whole object"
curl -sS -o "$TEST_TMP/second.body" --max-time 60 -x "$SHOALD_PROXY" "$url?size=$n" 2>"$TEST_TMP/second.err" ||
  fail "request after the restart failed: $(cat "$TEST_TMP/second.err")"
assert_eq "$(stat -c %s "$TEST_TMP/second.body")" "$n" "size after the restart"
assert_eq "$(sha256_of "$TEST_TMP/second.body")" "sha256:$hex" "digest after the restart"
assert_eq "$(origin_count "sha256:$hex")" 2 "origin GETs after the restart"
assert_eq "$(metric shoal_task_reuse_total)" 0 "shoal_task_reuse_total for the first request after the restart"
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$hex\" and .size == $n and .bytes_origin == $n"
[ -f "$data/tasks/${hex:0:2}/$hex/data" ] || fail "not stored after the restart: $(task_files "$data")"
rm -f "$TEST_TMP/first.body" "$TEST_TMP/second.body"

info "and the one after that is served from the store"
curl -sS -o "$TEST_TMP/third.body" --max-time 60 -x "$SHOALD_PROXY" "$url?size=$n" 2>"$TEST_TMP/third.err" ||
  fail "third request failed: $(cat "$TEST_TMP/third.err")"
assert_eq "$(sha256_of "$TEST_TMP/third.body")" "sha256:$hex" "digest from the store"
assert_eq "$(origin_count "sha256:$hex")" 2 "origin GETs after the request served from the store"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$hex\""
shoald_alive "after the restart"
info "ok"
