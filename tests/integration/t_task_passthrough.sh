#!/bin/bash
# Task engine: origin answers that are not tasks are relayed unchanged and
# never stored (tests/fixtures/fault_origin.py behind a hijacked TLS tunnel,
# blob URLs routed p2p):
#   404 (registry JSON error) and 401 with WWW-Authenticate for a blob URL:
#   the client gets the same status, headers (WWW-Authenticate, Content-Type,
#   Docker-Distribution-Api-Version, Content-Length) and body as a direct
#   request; a second request reaches the origin again; a client that joined
#   the task while the owner waited for the 404 gets the 404 too;
#   a chunked 200 (no Content-Length): relayed whole, not stored;
#   a 200 with Content-Encoding: relayed byte for byte with its header, not
#   stored;
#   nothing under tasks/ or tmp/, no "peer task done", and
#   shoal_tasks_total{result="passthrough"} counts them.
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

# fetch LABEL URL [CURL_ARGS...]: through the proxy; sets RC, CODE, SIZE.
fetch() {
  local label=$1 url=$2
  shift 2
  RC=0
  CODE=$(curl -sS -o "$TEST_TMP/$label.body" -D "$TEST_TMP/$label.head" -w '%{http_code}' --max-time 20 \
    -x "$SHOALD_PROXY" --cacert "$site/ca.crt" "$@" "$url" 2>"$TEST_TMP/$label.err") || RC=$?
  SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes $(head -c 200 "$TEST_TMP/$label.err")"
}
# direct LABEL URL: the same request straight to the origin.
direct() {
  curl -sS -o "$TEST_TMP/$1.body" -D "$TEST_TMP/$1.head" --max-time 20 --cacert "$TEST_TMP/origin/ca.crt" "$2" ||
    fail "direct request $2 failed"
}
# final_head FILE: the last response head of a curl -D dump (not the
# proxy's CONNECT answer).
final_head() { tr -d '\r' <"$1" | awk '/^HTTP\// { n = 0 } { l[n++] = $0 } END { for (i = 0; i < n; i++) print l[i] }'; }
# header FILE NAME: the value of header NAME in the final head of a curl -D dump.
header() { final_head "$1" | awk -v n="$(tr '[:upper:]' '[:lower:]' <<<"$2")" 'tolower(substr($0, 1, index($0, ":") - 1)) == n { sub(/^[^:]*: */, ""); print }'; }
# same_answer PROXIED DIRECT WHAT: status line, selected headers and body equal.
same_answer() {
  local h
  assert_eq "$(final_head "$TEST_TMP/$1.head" | head -n 1 | cut -d' ' -f2-)" \
    "$(final_head "$TEST_TMP/$2.head" | head -n 1 | cut -d' ' -f2-)" "$3: status line"
  for h in WWW-Authenticate Content-Type Docker-Distribution-Api-Version Content-Length Content-Encoding \
    Docker-Content-Digest; do
    assert_eq "$(header "$TEST_TMP/$1.head" "$h")" "$(header "$TEST_TMP/$2.head" "$h")" "$3: $h"
  done
  assert_same_file "$TEST_TMP/$1.body" "$TEST_TMP/$2.body" "$3: body"
}
nothing_stored() {
  local left
  left=$(task_files "$SHOALD_DATA_DIR")
  [ -z "$left" ] || fail "$1: the store holds $left"
}
hexof() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

info "404 and 401 for a blob URL: relayed unchanged, asked again next time"
for st in 404 401; do
  h=$(hexof "missing-$st")
  u="$base/v2/x/blobs/sha256:$h?status=$st"
  direct "d$st" "$u"
  fetch "p$st" "$u" -H "Authorization: Bearer t0k3n"
  assert_eq "$RC/$CODE" "0/$st" "proxied $st"
  same_answer "p$st" "d$st" "proxied $st"
  fetch "p$st-again" "$u" -H "Authorization: Bearer t0k3n"
  assert_eq "$RC/$CODE" "0/$st" "proxied $st again"
  same_answer "p$st-again" "d$st" "proxied $st again"
  assert_eq "$(origin_count "sha256:$h")" 3 "origin GETs for the $st (1 direct + 2 proxied)"
done
[ -n "$(header "$TEST_TMP/p401.head" WWW-Authenticate)" ] || fail "401 without WWW-Authenticate: $(cat "$TEST_TMP/p401.head")"
nothing_stored "after 404 and 401"

info "a client that joined the task gets the owner's 404 too"
h=$(hexof "joined-404")
u="$base/v2/x/blobs/sha256:$h"
curl -sS -o "$TEST_TMP/jo.body" -w '%{http_code}' --max-time 20 -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "$u?status=404&delay=1" >"$TEST_TMP/jo.code" 2>"$TEST_TMP/jo.err" &
jo_pid=$!
sleep 0.3
# headok: the joiner's credential check (a HEAD) passes, so it waits on the
# task, which then fails, and must fetch the 404 for itself.
fetch joiner "$u?status=404&headok=1"
wait_exit "$jo_pid" 20
assert_eq "$WAIT_RC/$(cat "$TEST_TMP/jo.code")" "0/404" "owner of a 404 task"
assert_eq "$RC/$CODE" "0/404" "joiner of a 404 task"
jq -e '.errors[0].code == "BLOB_UNKNOWN"' "$TEST_TMP/joiner.body" >/dev/null || fail "joiner's 404 body: $(cat "$TEST_TMP/joiner.body")"
assert_eq "$(metric shoal_task_joined_total)" 1 "shoal_task_joined_total"
assert_eq "$(origin_count "sha256:$h")" 2 "origin GETs for the joined 404 (owner + joiner's own)"
nothing_stored "after the joined 404"

info "a chunked 200 (no Content-Length): relayed whole, not stored"
n=700000
python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$n" >"$TEST_TMP/expect"
h=$(sha256sum "$TEST_TMP/expect" | cut -d' ' -f1)
u="$base/v2/x/blobs/sha256:$h?size=$n&chunked=1"
fetch chunked "$u"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "chunked 200"
assert_same_file "$TEST_TMP/chunked.body" "$TEST_TMP/expect" "chunked 200 body"
fetch chunked-again "$u"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "chunked 200 again"
assert_eq "$(origin_count "sha256:$h")" 2 "origin GETs for the chunked object"
nothing_stored "after the chunked 200"

info "a 200 with Content-Encoding: relayed as is, not stored"
u="$base/v2/x/blobs/sha256:$h?size=$n&encoding=gzip"
direct denc "$u"
fetch enc "$u"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "Content-Encoding 200"
same_answer enc denc "Content-Encoding 200"
assert_eq "$(header "$TEST_TMP/enc.head" Content-Encoding)" gzip "Content-Encoding the client saw"
fetch enc-again "$u"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "Content-Encoding 200 again"
assert_eq "$(origin_count "encoding=gzip")" 3 "origin GETs for the encoded object (1 direct + 2 proxied)"
nothing_stored "after the Content-Encoding 200"

assert_eq "$(log_count '(.msg // "") | test("peer task done")')" 0 "\"peer task done\" lines"
pt=$(metric 'shoal_tasks_total{result="passthrough"}')
[ "$pt" -ge 8 ] || fail "shoal_tasks_total{result=\"passthrough\"} = $pt, want >= 8"
assert_eq "$(metric 'shoal_tasks_total{result="success"}')" 0 "shoal_tasks_total{result=\"success\"}"
shoald_alive "after the pass-through answers"
info "ok"
