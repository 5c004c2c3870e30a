#!/bin/bash
# Task engine: task ids of presigned URLs, and redirects Shoal follows
# itself, against tests/fixtures/fault_origin.py through the plain proxy:
#   /obj?Expires=..&Signature=..&keep=1 twice with different Expires and
#   Signature (proxy.defaultFilter, default Expires&Signature&ns): one
#   origin GET, the second served from the store ("reuse file peer task
#   done"); the task id is sha256 of the URL without those parameters;
#   keep=2 is another task (another origin GET, another id);
#   a chain A -307-> A -307-> B (B on another port; B answers 400, as S3
#   does, to a request carrying Authorization): the client gets 200 and the
#   exact bytes without following anything itself; A saw Authorization on
#   both hops, B never did, and B got its own Host; a second request is
#   served from the store;
#   a redirect loop (A -> B/loop/0 -> B/loop/1 ...): Shoal follows 10
#   redirects (11 origin GETs) and the client gets an error (5xx) promptly,
#   never 200, never a hang, and never the 11th redirect (whose relative
#   Location would point the client at the wrong host).
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3 cmp
start_fault_origin ORIGIN
start_fault_origin OTHER

cat >"$TEST_TMP/shoald.yaml" <<EOF
proxy:
  proxies:
    - regx: /obj
    - regx: /redirect
    - regx: /loop/
EOF
start_shoald "$TEST_TMP/shoald.yaml"
a=http://127.0.0.1:$ORIGIN_PORT
b=http://127.0.0.1:$OTHER_PORT

# fetch LABEL URL [CURL_ARGS...]: curl through the proxy (no -L); sets RC, CODE, SIZE, SECS.
fetch() {
  local label=$1 url=$2 t0
  shift 2
  t0=$(date +%s.%N)
  RC=0
  CODE=$(curl -sS -o "$TEST_TMP/$label.body" -D "$TEST_TMP/$label.head" -w '%{http_code}' --max-time 20 \
    -x "$SHOALD_PROXY" "$@" "$url" 2>"$TEST_TMP/$label.err") || RC=$?
  SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes, ${SECS}s $(head -c 200 "$TEST_TMP/$label.err")"
}
expect() { python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$1" >"$TEST_TMP/expect.$1"; }
done_ids() { jq -R -r 'fromjson? | select((.msg // "") | test("^peer task done")) | .task' "$(shoal_log)"; }
rnd() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }

info "presigned URLs: Expires and Signature change, the task does not"
n=300000
expect "$n"
fetch p1 "$a/obj?Expires=$(rnd)&Signature=$(rnd)&keep=1&size=$n"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "first presigned GET"
assert_same_file "$TEST_TMP/p1.body" "$TEST_TMP/expect.$n" "first presigned GET bytes"
id1=$(printf '%s' "$a/obj?keep=1&size=$n" | sha256sum | cut -d' ' -f1)
assert_log_has "((.msg // \"\") | test(\"^peer task done, cost: [0-9]+ms$\")) and .task == \"$id1\" and .size == $n"
fetch p2 "$a/obj?Expires=$(rnd)&Signature=$(rnd)&keep=1&size=$n&ns=$(rnd)"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "second presigned GET"
assert_same_file "$TEST_TMP/p2.body" "$TEST_TMP/expect.$n" "second presigned GET bytes"
assert_eq "$(origin_count "keep=1")" 1 "origin GETs for keep=1 after two presigned GETs"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$id1\""
fetch p3 "$a/obj?Expires=$(rnd)&Signature=$(rnd)&keep=2&size=$n"
assert_eq "$RC/$CODE/$SIZE" "0/200/$n" "presigned GET with keep=2"
assert_eq "$(origin_count "keep=2")" 1 "origin GETs for keep=2"
assert_eq "$(done_ids | sort -u | wc -l)" 2 "distinct tasks done (keep=1, keep=2)"
id2=$(printf '%s' "$a/obj?keep=2&size=$n" | sha256sum | cut -d' ' -f1)
assert_log_has "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$id2\""

info "a redirect chain to another host that rejects Authorization"
m=$((2 << 20 | 4321))
expect "$m"
final="$b/obj?size=$m&noauth=1&Expires=$(rnd)&Signature=$(rnd)"
hop2="$a/redirect?hop=2&to=$(jq -rn --arg u "$final" '$u | @uri')"
start="$a/redirect?hop=1&to=$(jq -rn --arg u "$hop2" '$u | @uri')"
fetch chain "$start" -H "Authorization: Bearer s3cret"
assert_eq "$RC/$CODE/$SIZE" "0/200/$m" "redirect chain through the proxy (client does not follow)"
assert_same_file "$TEST_TMP/chain.body" "$TEST_TMP/expect.$m" "redirect chain bytes"
grep -qi '^Content-Length: '"$m"$'\r'"\$" "$TEST_TMP/chain.head" || fail "redirect chain: no Content-Length $m: $(cat "$TEST_TMP/chain.head")"
assert_eq "$(origin_count "hop=1")" 1 "GETs of the first hop"
assert_eq "$(origin_count "hop=2")" 1 "GETs of the second hop (same host)"
assert_eq "$(jq -r 'select(.method == "GET" and (.target | startswith("/redirect"))) | [.headers[] | select(.[0] | ascii_downcase == "authorization")] | length' \
  "$TEST_TMP/ORIGIN.requests" | sort -u | tr '\n' ' ')" "1 " "Authorization on every GET to the first host"
assert_eq "$(origin_count "/obj?size=$m" OTHER)" 1 "GETs of the object on the other host"
assert_eq "$(jq -r '[.headers[] | select(.[0] | ascii_downcase == "authorization")] | length' "$TEST_TMP/OTHER.requests" |
  sort -u | tr '\n' ' ')" "0 " "requests carrying Authorization on the other host"
assert_eq "$(jq -r 'select(.method == "GET") | .headers[] | select(.[0] | ascii_downcase == "host") | .[1]' \
  "$TEST_TMP/OTHER.requests" | sort -u | tr '\n' ' ')" "127.0.0.1:$OTHER_PORT " "Host the other host got"
fetch chain-again "$start" -H "Authorization: Bearer s3cret"
assert_eq "$RC/$CODE/$SIZE" "0/200/$m" "redirect chain again"
assert_same_file "$TEST_TMP/chain-again.body" "$TEST_TMP/expect.$m" "redirect chain bytes from the store"
assert_eq "$(origin_count "/obj?size=$m" OTHER)" 1 "GETs of the object on the other host after the second request"

info "more than 10 redirects: an error, promptly"
# From A to a loop on B: a relayed 3xx would carry B's relative Location,
# which the client would resolve against A.
fetch loop "$a/redirect?to=$(jq -rn --arg u "$b/loop/0" '$u | @uri')"
[ "$RC" -ne 28 ] || fail "redirect loop: the client timed out"
awk -v s="$SECS" 'BEGIN { exit !(s < 10) }' || fail "redirect loop answered after ${SECS}s"
assert_eq "$(origin_count "/loop/" OTHER)" 10 "GETs of the loop on the other host (11 with the first hop)"
[ "$CODE" != 200 ] || fail "redirect loop: the client got 200"
case $CODE in
  5??) ;;
  *) fail "redirect loop: the client got HTTP $CODE, want a 5xx error (Location: $(tr -d '\r' <"$TEST_TMP/loop.head" | awk -F': ' 'tolower($1) == "location" { print $2 }'))" ;;
esac
assert_eq "$(find "$SHOALD_DATA_DIR/tmp" -mindepth 1 2>/dev/null | wc -l)" 0 "entries in tmp/"
shoald_alive "after the redirects"
info "ok"
