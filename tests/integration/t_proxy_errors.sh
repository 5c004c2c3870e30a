#!/bin/bash
# variants: fast-records-off (hijacked with and without tls.fastRecords)
# Bad input gets a clear, specific error, and the daemon stays healthy:
#   malformed request line 400, header block over 64 KiB 431,
#   Transfer-Encoding + Content-Length 400, obs-fold 400;
#   a request head or a TLS handshake trickled in slowly: cut off at
#   timeouts.header (a deadline, not an idle timer);
#   CONNECT to an unresolvable host 502 with a one-line reason, to a refused
#   (allowed) port 502, to a port outside proxy.connectPorts 403;
#   absolute-URI GET to a refused upstream 502;
#   a hijacked host whose certificate comes from a CA outside tls.trustStore:
#   502 inside the TLS tunnel and a core.log line with mbedTLS's reason;
#   a hijacked TLS 1.3-only origin (openssl s_server -tls1_3): 502 naming TLS 1.3;
#   TLS garbage after CONNECT to a hijacked host: logged, closed, daemon fine.
. "$(dirname "$0")/lib.sh"

need_cmd curl jq openssl python3
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/good" "IP:127.0.0.1"
make_origin_cert "$TEST_TMP/rogue" "IP:127.0.0.1"

start_fault_origin GOOD --cert "$TEST_TMP/good/leaf.crt" --key "$TEST_TMP/good/leaf.key"
start_fault_origin PLAIN
start_fault_origin ROGUE --cert "$TEST_TMP/rogue/leaf.crt" --key "$TEST_TMP/rogue/leaf.key"
tls13_port=$(free_port)
openssl s_server -quiet -tls1_3 -www -accept "127.0.0.1:$tls13_port" \
  -cert "$TEST_TMP/good/leaf.crt" -key "$TEST_TMP/good/leaf.key" </dev/null >"$TEST_TMP/s_server.out" 2>&1 &
tls13_pid=$!
on_exit stop_pid "$tls13_pid"
wait_port 127.0.0.1 "$tls13_port" 10 || fail "openssl s_server did not start"
refused_port=$(free_port) # nothing listens there

config=$TEST_TMP/shoald.yaml
cat >"$config" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:($GOOD_PORT|$ROGUE_PORT|$tls13_port)\$
proxy:
  connectPorts: [443, $GOOD_PORT, $ROGUE_PORT, $tls13_port, $refused_port]
tls:
  trustStore: $TEST_TMP/good/ca.crt
timeouts:
  header: 2s
EOF
"$BUILD/shoald" --check-config -c "$config" >/dev/null || fail "test config rejected"
start_shoald "$config"
proxy=127.0.0.1:$SHOALD_PROXY_PORT
plain=http://127.0.0.1:$PLAIN_PORT

# status_of RAW_BYTES: the status code of the proxy's answer to RAW_BYTES.
status_of() { proxy_client raw --proxy "$proxy" --data "$1" 2>/dev/null | head -n 1 | cut -d' ' -f2; }
# body_of RAW_BYTES: the body of the proxy's answer.
body_of() { proxy_client raw --proxy "$proxy" --data "$1" 2>/dev/null | tr -d '\r' | sed '1,/^$/d'; }

info "malformed request line: 400"
assert_eq "$(status_of 'GARBAGE\r\n\r\n')" 400 "malformed request line"
assert_eq "$(status_of 'GET  HTTP/1.1\r\n\r\n')" 400 "request line without a target"
assert_eq "$(status_of "GET $plain/echo HTTX/1.1\r\nHost: x\r\n\r\n")" 400 "request line with a bad version"

info "header block over 64 KiB: 431"
big=$(head -c 70000 /dev/zero | tr '\0' a)
assert_eq "$(status_of "GET $plain/echo HTTP/1.1\r\nHost: x\r\nX-Big: $big\r\n\r\n")" 431 "70 KB header"
# Just under the cap still goes through.
ok=$(head -c 60000 /dev/zero | tr '\0' a)
assert_eq "$(status_of "GET $plain/echo HTTP/1.1\r\nHost: x\r\nX-Big: $ok\r\nConnection: close\r\n\r\n")" 200 "60 KB header"

info "Transfer-Encoding with Content-Length: 400"
assert_eq "$(status_of "POST $plain/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")" 400 "TE + CL"

info "obs-fold: 400"
assert_eq "$(status_of "GET $plain/echo HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n")" 400 "obs-fold"
# Nothing of the rejected requests reached the origin.
assert_eq "$(jq -s '[.[] | select(.headers | map(.[0]) | index("X-A"))] | length' "$TEST_TMP/PLAIN.requests")" 0 \
  "folded request forwarded to the origin"

info "a request head trickled in (slowloris): 408 at timeouts.header (2s), however busy the client"
slow=(--data "GET $plain/echo HTTP/1.1\r\n")
for i in $(seq 12); do slow+=(--data "X-Slow-$i: 1\r\n"); done
proxy_client raw --proxy "$proxy" --gap 0.4 --timeout 3 "${slow[@]}" >"$TEST_TMP/slow.out" 2>"$TEST_TMP/slow.err" || true
assert_eq "$(head -n 1 "$TEST_TMP/slow.out" | cut -d' ' -f2)" 408 "trickled request head"
at=$(sed -n 's/^END [a-z]* after \([0-9.]*\)s$/\1/p' "$TEST_TMP/slow.err")
awk -v s="$at" 'BEGIN { exit !(s >= 1.5 && s < 3.5) }' || fail "trickled head answered after ${at}s, want ~2 s: $(cat "$TEST_TMP/slow.err")"
info "  answered after ${at}s"
info "a TLS handshake trickled in after CONNECT to a hijacked host: closed at timeouts.header"
python3 -c '
import ssl, sys
o = ssl.MemoryBIO()
t = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), o, server_hostname="slow.test")
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.buffer.write(o.read())' >"$TEST_TMP/hello.bin"
hello_args=()
for off in $(seq 0 40 200); do
  hello_args+=(--data "$(python3 -c 'import sys; d = open(sys.argv[1], "rb").read()[int(sys.argv[2]):int(sys.argv[2]) + 40]; print("".join("\\x%02x" % b for b in d))' "$TEST_TMP/hello.bin" "$off")")
done
proxy_client raw --proxy "$proxy" --gap 0.5 --timeout 3 --data "CONNECT 127.0.0.1:$GOOD_PORT HTTP/1.1\r\n\r\n" \
  "${hello_args[@]}" >/dev/null 2>"$TEST_TMP/slowhello.err" || true
at=$(sed -n 's/^END [a-z]* after \([0-9.]*\)s$/\1/p' "$TEST_TMP/slowhello.err")
awk -v s="$at" 'BEGIN { exit !(s >= 1.5 && s < 3.5) }' || fail "trickled handshake closed after ${at}s, want ~2 s: $(cat "$TEST_TMP/slowhello.err")"
assert_log_has '.msg == "connect" and .route == "hijack" and (.error // "" | test("timeouts.header"))'

info "CONNECT to an unresolvable host: 502 with a one-line reason"
resp=$(proxy_client raw --proxy "$proxy" --data 'CONNECT nosuch-host.invalid:443 HTTP/1.1\r\nHost: nosuch-host.invalid:443\r\n\r\n' 2>/dev/null | tr -d '\r')
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 502 "CONNECT nosuch-host.invalid"
body=$(sed '1,/^$/d' <<<"$resp")
assert_eq "$(wc -l <<<"$body")" 1 "lines in the 502 body ($body)"
grep -q 'nosuch-host.invalid' <<<"$body" || fail "502 body does not name the host: $body"
grep -qi 'resolve' <<<"$body" || fail "502 body does not say resolution failed: $body"
assert_log_has '.msg == "connect" and .host == "nosuch-host.invalid:443" and .status == 502 and (.error | test("resolve"))'

info "CONNECT to a refused port in connectPorts: 502"
resp=$(proxy_client raw --proxy "$proxy" --data "CONNECT 127.0.0.1:$refused_port HTTP/1.1\r\n\r\n" 2>/dev/null | tr -d '\r')
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 502 "CONNECT to a refused port"
grep -qi 'refused' <<<"$resp" || fail "502 body does not say connection refused: $resp"
assert_log_has ".msg == \"connect\" and .host == \"127.0.0.1:$refused_port\" and .status == 502"

info "CONNECT to a port outside connectPorts: 403"
resp=$(proxy_client raw --proxy "$proxy" --data "CONNECT 127.0.0.1:$PLAIN_PORT HTTP/1.1\r\n\r\n" 2>/dev/null | tr -d '\r')
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 403 "CONNECT to a port outside connectPorts"
grep -q connectPorts <<<"$resp" || fail "403 body does not name proxy.connectPorts: $resp"
assert_log_has ".msg == \"connect\" and .host == \"127.0.0.1:$PLAIN_PORT\" and .status == 403 and (.error | test(\"connectPorts\"))"

info "absolute-URI GET to a refused upstream: 502"
code=$(curl -sS -o "$TEST_TMP/refused.body" -w '%{http_code}' -x "$SHOALD_PROXY" "http://127.0.0.1:$refused_port/x")
assert_eq "$code" 502 "GET to a refused upstream"
grep -qi refused "$TEST_TMP/refused.body" || fail "502 body: $(cat "$TEST_TMP/refused.body")"
assert_log_has ".msg == \"request\" and .port == $refused_port and .status == 502"

info "hijacked host, origin certificate from a CA outside tls.trustStore: 502 in the tunnel"
code=$(curl -sS -o "$TEST_TMP/rogue.body" -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "https://127.0.0.1:$ROGUE_PORT/echo") || fail "curl through the hijacked tunnel failed"
assert_eq "$code" 502 "hijacked GET to an untrusted origin"
grep -qi 'verif' "$TEST_TMP/rogue.body" || fail "502 body does not mention verification: $(cat "$TEST_TMP/rogue.body")"
assert_log_has ".msg == \"request failed\" and .host == \"127.0.0.1\" and (.error | test(\"certificate\"; \"i\")) and (.error | test(\"verif\"; \"i\"))"
assert_log_has ".msg == \"request\" and .port == $ROGUE_PORT and .status == 502 and .tls == true"
[ ! -s "$TEST_TMP/ROGUE.requests" ] || fail "the untrusted origin received a request"

info "hijacked TLS 1.3-only origin: 502 naming TLS 1.3"
code=$(curl -sS -o "$TEST_TMP/tls13.body" -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "https://127.0.0.1:$tls13_port/") || fail "curl to the TLS 1.3 origin failed"
assert_eq "$code" 502 "hijacked GET to a TLS 1.3-only origin"
grep -q 'TLS 1.3' "$TEST_TMP/tls13.body" || fail "502 body does not name TLS 1.3: $(cat "$TEST_TMP/tls13.body")"
assert_log_has ".msg == \"request failed\" and (.error | test(\"TLS 1.3\"))"

info "the trusted hijacked origin works (control)"
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$site/ca.crt" "https://127.0.0.1:$GOOD_PORT/echo")
assert_eq "$code" 200 "hijacked GET to the trusted origin"

info "TLS garbage after CONNECT to a hijacked host: logged and closed"
garbage='\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00'"$(printf '\\xde\\xad%.0s' $(seq 1 40))"
proxy_client raw --proxy "$proxy" --timeout 5 \
  --data "CONNECT 127.0.0.1:$GOOD_PORT HTTP/1.1\r\n\r\n$garbage" >"$TEST_TMP/garbage.out" 2>"$TEST_TMP/garbage.err"
grep -q '^END \(eof\|reset\)' "$TEST_TMP/garbage.err" || fail "garbage connection not closed: $(cat "$TEST_TMP/garbage.err")"
head -n 1 "$TEST_TMP/garbage.out" | grep -q '^HTTP/1.1 200' || fail "CONNECT to the hijacked host not answered 200"
assert_log_has ".msg == \"connect\" and .host == \"127.0.0.1:$GOOD_PORT\" and .route == \"hijack\" and (.error // \"\" | length > 0)"
# A plausible record header followed by junk, and pure junk that is not even TLS.
proxy_client raw --proxy "$proxy" --timeout 5 \
  --data "CONNECT 127.0.0.1:$GOOD_PORT HTTP/1.1\r\n\r\n\x16\x03\x03\x40\x00$(printf '\\x00%.0s' $(seq 1 300))" --shut \
  >/dev/null 2>"$TEST_TMP/garbage2.err"
grep -q '^END \(eof\|reset\)' "$TEST_TMP/garbage2.err" || fail "second garbage connection not closed"
# A genuine ClientHello (it passes the SNI peek) followed by records of junk:
# the handshake itself fails.
{
  printf 'CONNECT 127.0.0.1:%s HTTP/1.1\r\n\r\n' "$GOOD_PORT"
  python3 -c '
import ssl, sys
ctx = ssl.create_default_context()
o = ssl.MemoryBIO()
t = ctx.wrap_bio(ssl.MemoryBIO(), o, server_hostname="origin.test")
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.buffer.write(o.read() + b"\x16\x03\x03\x00\x40" + b"\xa5" * 64)'
} >"$TEST_TMP/hello-junk"
proxy_client raw --proxy "$proxy" --timeout 5 --data-file "$TEST_TMP/hello-junk" >/dev/null 2>"$TEST_TMP/garbage3.err"
grep -q '^END \(eof\|reset\)' "$TEST_TMP/garbage3.err" || fail "ClientHello + junk connection not closed"
assert_log_has ".msg == \"client TLS handshake failed\" and .sni == \"origin.test\""
assert_log_has ".msg == \"connect\" and .sni == \"origin.test\" and (.error | test(\"handshake\"))"
shoald_alive "after TLS garbage"
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$site/ca.crt" "https://127.0.0.1:$GOOD_PORT/echo")
assert_eq "$code" 200 "hijacked GET after the garbage"
info "ok"
