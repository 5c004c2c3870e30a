#!/bin/bash
# Origin faults on the task path (blobs a proxy.proxies rule matches, stored,
# no P2P), against tests/fixtures/fault_origin.py through the plain proxy
# (timeouts.idle 1s):
#   the origin resets in mid-body (once): Shoal asks for the rest with
#   "Range: bytes=N-" and If-Range (the blob's ETag) and the owner's client
#   and a client that joined both get 200 and every byte, without an error;
#   the blob is verified and stored, and served from the store next;
#   it resets twice more at once (no byte in between): still resumed;
#   it resets every time: 1 GET + 3 Range requests, then the client's
#   transfer fails (never a short body that looks complete), nothing kept;
#   the object changes while resuming (/obj, a task named by its URL): the
#   origin answers 200 to If-Range, the download fails, never spliced;
#   it stalls in mid-body (once): after timeouts.idle, resumed, whole blob;
#   it stalls every time: a clean failure after ~4 x timeouts.idle, the
#   client is not left hanging; it stalls before the head: 504;
#   a pass-through object (no rule matches) cut by a reset still fails the
#   client's transfer (t_proxy_faults.sh has the rest of that);
#   a hijacked blob host whose certificate comes from a CA outside
#   tls.trustStore: 502 and a core.log line naming the verification failure.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3 openssl
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/rogue" "IP:127.0.0.1"
start_fault_origin ORIGIN
start_fault_origin ROGUE --cert "$TEST_TMP/rogue/leaf.crt" --key "$TEST_TMP/rogue/leaf.key"

cat >"$TEST_TMP/shoald.yaml" <<EOF
proxy:
  connectPorts: [$ROGUE_PORT]
  proxies:
    - regx: blobs/sha256.*
    - regx: /obj
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$ROGUE_PORT\$
tls:
  trustStore: $site/ca.crt
timeouts:
  idle: 1s
EOF
start_shoald "$TEST_TMP/shoald.yaml"
base=http://127.0.0.1:$ORIGIN_PORT

# fetch LABEL URL [CURL_ARGS...]: curl through the proxy; sets RC, CODE,
# SIZE and SECS.
fetch() {
  local label=$1 url=$2 t0
  shift 2
  t0=$(date +%s.%N)
  RC=0
  CODE=$(curl -sS -o "$TEST_TMP/$label.body" -w '%{http_code}' --max-time 20 -x "$SHOALD_PROXY" "$@" "$url" \
    2>"$TEST_TMP/$label.err") || RC=$?
  SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes, ${SECS}s $(head -c 200 "$TEST_TMP/$label.err")"
}
# blob N: sets HEX and URL for an N-byte pattern blob.
blob() {
  python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$1" >"$TEST_TMP/expect.$1"
  HEX=$(sha256sum "$TEST_TMP/expect.$1" | cut -d' ' -f1)
  URL=$base/v2/x/blobs/sha256:$HEX
}
# ranges PATTERN: the Range headers of the origin's GETs whose target has PATTERN.
ranges() {
  jq -r --arg p "$1" 'select(.method == "GET" and (.target | contains($p))) |
    ([.headers[] | select(.[0] == "Range") | .[1]] | first // "-")' "$TEST_TMP/ORIGIN.requests" | tr '\n' ' '
}
stored() { find "$SHOALD_DATA_DIR/tasks" -path "*/$1/data" 2>/dev/null | wc -l; }
tmp_empty() { [ -z "$(find "$SHOALD_DATA_DIR/tmp" -mindepth 1 2>/dev/null)" ]; }
assert_failed_transfer() { # LABEL
  [ "$RC" -ne 0 ] || fail "$1: curl exit 0 with $SIZE bytes for a download that cannot be completed"
  [ "$RC" -ne 28 ] || fail "$1: the client was left hanging until curl's --max-time"
}

n=$((3 << 20))
blob "$n"
cut=$((3 << 19))
info "the origin resets once in mid-body (at $cut of $n), paced so a second client joins first"
curl -sS -o "$TEST_TMP/owner.body" --max-time 20 -x "$SHOALD_PROXY" "$URL?size=$n&resetat=$cut&rate=8000000" \
  2>"$TEST_TMP/owner.err" &
owner_pid=$!
sleep 0.1
fetch joiner "$URL?size=$n"
wait_exit "$owner_pid" 20
assert_eq "$WAIT_RC" 0 "the owner's curl ($(cat "$TEST_TMP/owner.err"))"
assert_same_file "$TEST_TMP/owner.body" "$TEST_TMP/expect.$n" "the owner's bytes"
assert_eq "$RC/$CODE" 0/200 "the joiner"
assert_same_file "$TEST_TMP/joiner.body" "$TEST_TMP/expect.$n" "the joiner's bytes"
assert_eq "$(metric shoal_task_joined_total)" 1 "shoal_task_joined_total"
got=$(ranges "$HEX")
info "  origin GETs, by Range: $got"
[[ $got =~ ^-\ bytes=([0-9]+)-\ $ ]] || fail "origin requests: '$got', want one whole GET and one 'bytes=N-'"
from=${BASH_REMATCH[1]}
if [ "$from" -eq 0 ] || [ "$from" -gt "$cut" ]; then fail "resumed from $from, want 0 < N <= $cut"; fi
ifr=$(jq -r --arg p "$HEX" 'select(.method == "GET" and (.target | contains($p))) |
  [.headers[] | select(.[0] == "If-Range") | .[1]] | first // empty' "$TEST_TMP/ORIGIN.requests")
assert_eq "$ifr" "\"sha256:$HEX\"" "If-Range of the resumed request"
assert_log_has ".msg == \"origin broke off mid-body; asking for the rest with a Range request\" and .task == \"$HEX\" and .from == $from"
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$HEX\" and .size == $n"
assert_eq "$(stored "$HEX")" 1 "stored copies"
fetch again "$URL?size=$n&resetat=$cut&key=again"
assert_eq "$RC/$CODE" 0/200 "the blob from the store"
assert_same_file "$TEST_TMP/again.body" "$TEST_TMP/expect.$n" "bytes from the store"
assert_eq "$(origin_count "sha256:$HEX")" 2 "origin GETs after the store served it"

m=$((2 << 20 | 4321))
blob "$m"
info "three resets in a row, the last two without a byte in between: still resumed"
fetch thrice "$URL?size=$m&resetat=100000&times=3"
assert_eq "$RC/$CODE" 0/200 "resumed twice without progress"
assert_same_file "$TEST_TMP/thrice.body" "$TEST_TMP/expect.$m" "bytes after three resets"
assert_eq "$(ranges "$HEX")" "- bytes=100000- bytes=100000- bytes=100000- " "origin requests for three resets"

k=$((2 << 20 | 999))
blob "$k"
info "the origin resets every time: bounded retries, then a failed transfer"
fetch always "$URL?size=$k&resetat=200000&times=-1"
assert_failed_transfer always
assert_eq "$(ranges "$HEX")" "- bytes=200000- bytes=200000- bytes=200000- " "origin requests when every one resets"
assert_log_has ".msg == \"origin failed again without sending a byte; giving up the download\" and .task == \"$HEX\""
assert_eq "$(stored "$HEX")" 0 "stored copies of the failed blob"
tmp_empty || fail "tmp/ not empty after the failed download: $(task_files "$SHOALD_DATA_DIR")"

info "the object changes while resuming (a task named by its URL): not spliced"
c=$((2 << 20 | 1234))
fetch changed "$base/obj?size=$c&resetat=300000&change=1&key=changed"
assert_failed_transfer changed
assert_log_has '.msg == "cannot resume the download" and (.error | test("If-Range did not match"))'
assert_eq "$(jq -r 'select(.target | contains("key=changed")) | [.headers[] | select(.[0] == "If-Range") | .[1]] | first // "-"' \
  "$TEST_TMP/ORIGIN.requests" | tr '\n' ' ')" "- \"obj-$c\" " "If-Range of the requests for the changing object"
assert_eq "$(find "$SHOALD_DATA_DIR/tasks" -name data -size "${c}c" | wc -l)" 0 "stored copies of the changing object"
tmp_empty || fail "tmp/ not empty after the changed object: $(task_files "$SHOALD_DATA_DIR")"

s=$((1 << 20 | 55))
blob "$s"
info "the origin stalls once in mid-body: resumed after timeouts.idle"
fetch stall-once "$URL?size=$s&stallat=400000"
assert_eq "$RC/$CODE" 0/200 "a stall once"
assert_same_file "$TEST_TMP/stall-once.body" "$TEST_TMP/expect.$s" "bytes after a stall"
assert_log_has ".msg == \"origin broke off mid-body; asking for the rest with a Range request\" and .task == \"$HEX\" and (.error | test(\"idle timeout\"))"
assert_eq "$(ranges "$HEX")" "- bytes=400000- " "origin requests for a stall"

t=$((1 << 20 | 77))
blob "$t"
info "the origin stalls every time: a clean failure, the client not left hanging"
fetch stall-always "$URL?size=$t&stallat=300000&times=-1"
assert_failed_transfer stall-always
awk -v s="$SECS" 'BEGIN { exit !(s >= 3.5 && s < 9) }' || fail "stalled every time: failed after ${SECS}s, want ~4 x 1 s"
assert_eq "$(origin_count "sha256:$HEX")" 4 "origin GETs for an origin that always stalls"
assert_eq "$(stored "$HEX")" 0 "stored copies of the stalled blob"

info "the origin stalls before the head: 504 after timeouts.idle"
u=$((100 << 10 | 3))
blob "$u"
fetch stall-head "$URL?size=$u&delay=30"
assert_eq "$RC/$CODE" 0/504 "origin silent before the head"

info "pass-through (no rule matches): a reset in mid-body still fails the client's transfer"
fetch passthrough "$base/reset/100000"
assert_failed_transfer passthrough
assert_eq "$CODE" 200 "status before the reset"

info "a blob host whose certificate comes from a CA outside tls.trustStore: 502 and a log line"
r=$((200 << 10 | 5))
python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$r" >"$TEST_TMP/expect.$r"
rhex=$(sha256sum "$TEST_TMP/expect.$r" | cut -d' ' -f1)
for i in 1 2; do
  fetch "rogue$i" "https://127.0.0.1:$ROGUE_PORT/v2/x/blobs/sha256:$rhex?size=$r" --cacert "$site/ca.crt"
  assert_eq "$RC/$CODE" 0/502 "blob from an origin with an untrusted issuer (try $i)"
  grep -qi 'verif' "$TEST_TMP/rogue$i.body" || fail "502 body does not say verification failed: $(cat "$TEST_TMP/rogue$i.body")"
done
assert_log_has ".msg == \"request failed\" and (.path | contains(\"$rhex\")) and (.error | test(\"certificate\"; \"i\")) and (.error | test(\"verif\"; \"i\"))"
[ ! -s "$TEST_TMP/ROGUE.requests" ] || fail "the untrusted origin received a request"
[ "$(metric shoal_origin_resumes_total)" -ge 8 ] || fail "shoal_origin_resumes_total $(metric shoal_origin_resumes_total), want >= 8"
shoald_alive "after the origin faults"
info "ok"
