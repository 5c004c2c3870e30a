#!/bin/bash
# variants: fast-records-off (hijacked with and without tls.fastRecords)
# HTTP/1.1 semantics through the proxy, once with absolute-URI plain-HTTP
# requests and once inside a hijacked (decrypted) CONNECT tunnel, against
# tests/fixtures/fault_origin.py, which echoes what reached it:
#   keep-alive (several requests, one client connection, one origin
#   connection), pipelining, chunked upload and chunked response, HEAD,
#   204 and 304 (bodiless, the connection goes on), repeated Accept headers
#   in order and unchanged, PUT/POST bodies byte-exact (with 100-continue),
#   an EOF-delimited response arriving whole.
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3 cmp
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin PLAIN
start_fault_origin PLAIN2
start_fault_origin TLSO --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"

cat >"$TEST_TMP/shoald.yaml" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$TLSO_PORT\$
proxy:
  connectPorts: [$TLSO_PORT]
tls:
  trustStore: $TEST_TMP/origin/ca.crt
EOF
start_shoald "$TEST_TMP/shoald.yaml"

head -c 1048576 /dev/urandom >"$TEST_TMP/upload.bin"
up_sha=$(sha256sum "$TEST_TMP/upload.bin" | cut -d' ' -f1)
python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit 300000 >"$TEST_TMP/expect-300000"
python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit 2000000 >"$TEST_TMP/expect-2000000"

# semantics LABEL BASE REQUESTS_LOG CURL_ARGS...: every check against one origin.
semantics() {
  local label=$1 base=$2 reqlog=$3 n d
  shift 3
  local c=(curl -sS -x "$SHOALD_PROXY" "$@")
  d=$TEST_TMP/$label
  mkdir -p "$d"

  info "$label: keep-alive: three requests on one client connection and one origin connection"
  "${c[@]}" -w '%{http_code} %{num_connects}\n' -o "$d/ka1" "$base/echo" -o "$d/ka2" "$base/echo" \
    -o "$d/ka3" "$base/bytes/1000" >"$d/ka.w" || fail "$label: keep-alive curl failed"
  assert_eq "$(tr '\n' ' ' <"$d/ka.w")" "200 1 200 0 200 0 " "$label: status and new connections per request"
  n=$(jq -s '[.[] | .conn] | unique | length' <(tail -n 3 "$reqlog"))
  assert_eq "$n" 1 "$label: origin connections used by three keep-alive requests"
  assert_eq "$(stat -c %s "$d/ka3")" 1000 "$label: third keep-alive response size"

  info "$label: repeated Accept headers arrive in order, unchanged"
  "${c[@]}" -o "$d/accept.json" -H 'Accept: application/vnd.oci.image.index.v1+json' \
    -H 'X-Between: 1' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json;q=0.9,  */*' \
    -H 'Accept: text/plain' "$base/echo" || fail "$label: Accept curl failed"
  assert_eq "$(jq -c '[.headers[] | select(.[0] == "Accept" or .[0] == "X-Between") | .[1]]' "$d/accept.json")" \
    '["application/vnd.oci.image.index.v1+json","1","application/vnd.docker.distribution.manifest.v2+json;q=0.9,  */*","text/plain"]' \
    "$label: Accept headers at the origin"

  info "$label: PUT and POST bodies with Content-Length arrive byte-exact"
  "${c[@]}" -o "$d/put.json" -T "$TEST_TMP/upload.bin" "$base/echo" || fail "$label: PUT failed"
  assert_eq "$(jq -r '"\(.method) \(.body_len) \(.body_sha256) \(.chunked)"' "$d/put.json")" "PUT 1048576 $up_sha false" "$label: PUT body"
  "${c[@]}" -o "$d/post.json" --data-binary "@$TEST_TMP/upload.bin" -H 'Expect:' "$base/echo" || fail "$label: POST failed"
  assert_eq "$(jq -r '"\(.method) \(.body_len) \(.body_sha256)"' "$d/post.json")" "POST 1048576 $up_sha" "$label: POST body"
  # With Expect: 100-continue the origin's 100 must reach curl before the body goes.
  "${c[@]}" -o "$d/post100.json" --data-binary "@$TEST_TMP/upload.bin" -H 'Expect: 100-continue' \
    --expect100-timeout 30 -w '%{time_total}' "$base/echo" >"$d/post100.t" || fail "$label: POST with 100-continue failed"
  assert_eq "$(jq -r '.body_sha256' "$d/post100.json")" "$up_sha" "$label: POST body after 100-continue"
  awk '{ exit !($1 < 10) }' "$d/post100.t" || fail "$label: POST with 100-continue took $(cat "$d/post100.t") s (100 not forwarded?)"

  info "$label: chunked upload arrives byte-exact"
  "${c[@]}" -o "$d/chunked-up.json" -H 'Transfer-Encoding: chunked' -T - "$base/echo" <"$TEST_TMP/upload.bin" ||
    fail "$label: chunked upload failed"
  assert_eq "$(jq -r '"\(.body_len) \(.body_sha256)"' "$d/chunked-up.json")" "1048576 $up_sha" "$label: chunked upload body"

  info "$label: chunked response arrives whole"
  "${c[@]}" -D "$d/chunked.h" -o "$d/chunked.body" "$base/bytes/300000?chunked=1" || fail "$label: chunked GET failed"
  cmp -s "$d/chunked.body" "$TEST_TMP/expect-300000" || fail "$label: chunked response body differs"
  tr -d '\r' <"$d/chunked.h" | grep -qi '^transfer-encoding: chunked' || fail "$label: chunked response not chunked to the client"

  info "$label: EOF-delimited response arrives whole"
  "${c[@]}" -o "$d/eof.body" -w '%{http_code}' "$base/bytes/2000000?eof=1" >"$d/eof.code" || fail "$label: EOF-delimited GET failed"
  cmp -s "$d/eof.body" "$TEST_TMP/expect-2000000" || fail "$label: EOF-delimited body differs ($(stat -c %s "$d/eof.body") bytes)"

  info "$label: HEAD, 204 and 304 are bodiless and the connection goes on"
  "${c[@]}" -w '%{http_code} %{num_connects} %{size_download}\n' \
    -I "$base/bytes/5000" -o "$d/head.h" \
    --next "${c[@]:1}" -w '%{http_code} %{num_connects} %{size_download}\n' -o "$d/s204" "$base/status/204" \
    --next "${c[@]:1}" -w '%{http_code} %{num_connects} %{size_download}\n' -o "$d/s304" "$base/status/304" \
    --next "${c[@]:1}" -w '%{http_code} %{num_connects} %{size_download}\n' -o "$d/after" "$base/bytes/777" \
    >"$d/bodiless.w" || fail "$label: HEAD/204/304 curl failed"
  assert_eq "$(tr '\n' ' ' <"$d/bodiless.w")" "200 1 0 204 0 0 304 0 0 200 0 777 " "$label: HEAD, 204, 304, then a GET on one connection"
  tr -d '\r' <"$d/head.h" | grep -qi '^content-length: 5000$' || fail "$label: HEAD lost Content-Length: $(cat "$d/head.h")"
}

semantics plain "http://127.0.0.1:$PLAIN_PORT" "$TEST_TMP/PLAIN.requests"
semantics hijacked "https://127.0.0.1:$TLSO_PORT" "$TEST_TMP/TLSO.requests" --cacert "$site/ca.crt"

# body_after_head FILE: FILE's bytes after the first blank line (CRLF CRLF).
body_after_head() { python3 -c 'import sys; d = open(sys.argv[1], "rb").read(); sys.stdout.buffer.write(d.split(b"\r\n\r\n", 1)[1])' "$1"; }

info "HTTP/1.0 client, EOF-delimited response: the proxy closes to delimit it (plain and hijacked)"
proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --timeout 10 \
  --data "GET http://127.0.0.1:$PLAIN_PORT/bytes/300000?eof=1 HTTP/1.0\r\n\r\n" >"$TEST_TMP/eof10.plain" 2>"$TEST_TMP/eof10.plain.err"
grep -q '^END eof' "$TEST_TMP/eof10.plain.err" || fail "HTTP/1.0 plain: connection not closed cleanly: $(cat "$TEST_TMP/eof10.plain.err")"
body_after_head "$TEST_TMP/eof10.plain" | cmp -s - "$TEST_TMP/expect-300000" || fail "HTTP/1.0 plain: EOF-delimited body differs"
# Python's client offers no ALPN (curl -0 offers only "http/1.0").
proxy_client tls --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt" --timeout 10 \
  --data "GET /bytes/300000?eof=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >"$TEST_TMP/eof10.tls" 2>"$TEST_TMP/eof10.tls.err"
grep -q '^END eof' "$TEST_TMP/eof10.tls.err" || fail "HTTP/1.0 hijacked: connection not closed cleanly: $(cat "$TEST_TMP/eof10.tls.err")"
body_after_head "$TEST_TMP/eof10.tls" | cmp -s - "$TEST_TMP/expect-300000" || fail "HTTP/1.0 hijacked: EOF-delimited body differs"

info "one client connection, requests to two origins in turn"
w=(-sS -x "$SHOALD_PROXY" -w '%{http_code} %{num_connects}\n')
curl "${w[@]}" -o /dev/null "http://127.0.0.1:$PLAIN_PORT/echo" \
  -o /dev/null "http://127.0.0.1:$PLAIN2_PORT/echo" -o "$TEST_TMP/alt3" "http://127.0.0.1:$PLAIN_PORT/bytes/300000" \
  --next "${w[@]}" -o /dev/null -I "http://127.0.0.1:$PLAIN2_PORT/bytes/5000?chunked=1" \
  --next "${w[@]}" -o "$TEST_TMP/alt5" "http://127.0.0.1:$PLAIN2_PORT/bytes/300000?chunked=1" >"$TEST_TMP/alt.w" ||
  fail "alternating origins failed"
assert_eq "$(tr '\n' ' ' <"$TEST_TMP/alt.w")" "200 1 200 0 200 0 200 0 200 0 " "statuses and new client connections, alternating origins"
cmp -s "$TEST_TMP/alt3" "$TEST_TMP/expect-300000" || fail "third response (back on the first origin) differs"
cmp -s "$TEST_TMP/alt5" "$TEST_TMP/expect-300000" || fail "chunked response after a HEAD of a chunked resource differs"

info "pipelined requests in one write: both answered, in order"
out=$(proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --timeout 5 --data \
  "GET http://127.0.0.1:$PLAIN_PORT/bytes/10 HTTP/1.1\r\nHost: a\r\n\r\nGET http://127.0.0.1:$PLAIN_PORT/status/204 HTTP/1.1\r\nHost: a\r\n\r\nGET http://127.0.0.1:$PLAIN_PORT/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" \
  2>"$TEST_TMP/pipe.err" | grep -ao 'HTTP/1.1 [0-9]*' | cut -d' ' -f2 | tr '\n' ' ' || true)
assert_eq "$out" "200 204 200 " "statuses of three pipelined requests"
grep -q '^END eof' "$TEST_TMP/pipe.err" || fail "proxy did not close after Connection: close: $(cat "$TEST_TMP/pipe.err")"
out=$(proxy_client tls --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt" --timeout 5 \
  --data "GET /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n" \
  --data "HEAD /bytes/100 HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" \
  --data "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" \
  2>"$TEST_TMP/pipe-tls.err" | grep -ao 'HTTP/1.1 [0-9]*' | cut -d' ' -f2 | tr '\n' ' ' || true)
assert_eq "$out" "200 204 200 200 200 " "statuses of five pipelined requests inside the hijacked tunnel"
grep -q '^END eof' "$TEST_TMP/pipe-tls.err" || fail "hijacked: no close after Connection: close: $(cat "$TEST_TMP/pipe-tls.err")"

info "absolute-URI request: the origin gets the target's authority as Host, not the client's"
proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --timeout 5 --data \
  "GET http://127.0.0.1:$PLAIN_PORT/echo?host-check HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n" \
  >"$TEST_TMP/host.out" 2>/dev/null || true
assert_eq "$(sed '1,/^\r*$/d' "$TEST_TMP/host.out" | jq -c '[.headers[] | select(.[0] | ascii_downcase == "host") | .[1]]')" \
  "[\"127.0.0.1:$PLAIN_PORT\"]" "Host headers the origin received for an absolute-URI request"
proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --timeout 5 --data \
  "GET http://127.0.0.1:$PLAIN_PORT/echo?no-host HTTP/1.1\r\nConnection: close\r\n\r\n" \
  >"$TEST_TMP/nohost.out" 2>/dev/null || true
assert_eq "$(sed '1,/^\r*$/d' "$TEST_TMP/nohost.out" | jq -c '[.headers[] | select(.[0] | ascii_downcase == "host") | .[1]]')" \
  "[\"127.0.0.1:$PLAIN_PORT\"]" "Host header added for an absolute-URI request without one"

info "core.log has one request line per exchange with the right fields"
assert_log_has ".msg == \"request\" and .method == \"PUT\" and .port == $TLSO_PORT and .tls == true and .status == 200 and .route == \"direct\""
assert_log_has ".msg == \"request\" and .method == \"GET\" and .path == \"/bytes/2000000\" and .bytes == 2000000 and .tls == false"
assert_log_has ".msg == \"request\" and .method == \"HEAD\" and .status == 200 and .bytes == 0"
shoald_alive "end of test"
info "ok"
