#!/bin/bash
# Access control on the explicit listener:
#   proxy.basicAuth      407 + Proxy-Authenticate without credentials, 401 with
#                        wrong ones, 200 with the right ones (absolute URI and
#                        CONNECT alike); credentials never reach the origin
#   proxy.whiteList      403 for hosts/ports it does not list
#   proxy.maxConcurrency 2: the third concurrent connection gets 429, and a
#                        slot frees when a connection closes
#   proxy.tcpListen.listen 0.0.0.0 without basicAuth/whiteList: refused by
#                        shoald --check-config with file:line
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin PLAIN
start_fault_origin OTHER
start_fault_origin TLSO --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"
plain=http://127.0.0.1:$PLAIN_PORT

# --- basicAuth ------------------------------------------------------------------
cat >"$TEST_TMP/auth.yaml" <<EOF
proxy:
  basicAuth:
    username: alice
    password: "s3cret:pw"
  connectPorts: [$TLSO_PORT]
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$TLSO_PORT\$
tls:
  trustStore: $TEST_TMP/origin/ca.crt
EOF
start_shoald "$TEST_TMP/auth.yaml"
P=$SHOALD_PROXY

info "basicAuth: no credentials -> 407 with Proxy-Authenticate"
code=$(curl -sS -D "$TEST_TMP/407.h" -o /dev/null -w '%{http_code}' -x "$P" "$plain/echo")
assert_eq "$code" 407 "GET without proxy credentials"
tr -d '\r' <"$TEST_TMP/407.h" | grep -qi '^Proxy-Authenticate: Basic realm=' || fail "407 lacks Proxy-Authenticate: $(cat "$TEST_TMP/407.h")"
resp=$(proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --data "CONNECT 127.0.0.1:$TLSO_PORT HTTP/1.1\r\n\r\n" 2>/dev/null | tr -d '\r' || true)
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 407 "CONNECT without proxy credentials"
grep -qi '^Proxy-Authenticate: Basic' <<<"$resp" || fail "CONNECT 407 lacks Proxy-Authenticate"

info "basicAuth: wrong credentials -> 401"
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" -U alice:wrong "$plain/echo")
assert_eq "$code" 401 "GET with a wrong password"
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" -U mallory:s3cret:pw "$plain/echo")
assert_eq "$code" 401 "GET with a wrong user"
resp=$(proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" \
  --data "CONNECT 127.0.0.1:$TLSO_PORT HTTP/1.1\r\nProxy-Authorization: Basic !!notbase64!!\r\n\r\n" 2>/dev/null)
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 401 "CONNECT with undecodable credentials"
assert_eq "$(jq -s length "$TEST_TMP/PLAIN.requests" 2>/dev/null || echo 0)" 0 "requests that reached the origin without valid credentials"

info "basicAuth: right credentials -> 200, and Proxy-Authorization is not forwarded"
code=$(curl -sS -o "$TEST_TMP/echo.json" -w '%{http_code}' -x "$P" -U 'alice:s3cret:pw' "$plain/echo")
assert_eq "$code" 200 "GET with the right credentials"
assert_eq "$(jq '[.headers[] | select(.[0] | ascii_downcase == "proxy-authorization")] | length' "$TEST_TMP/echo.json")" 0 \
  "Proxy-Authorization headers forwarded to the origin"
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" -U 'alice:s3cret:pw' --cacert "$site/ca.crt" \
  "https://127.0.0.1:$TLSO_PORT/echo")
assert_eq "$code" 200 "hijacked GET through CONNECT with the right credentials"
assert_log_has '.msg == "proxy authentication failed"'
stop_shoald "$SHOALD_PID"

# --- whiteList -------------------------------------------------------------------
cat >"$TEST_TMP/white.yaml" <<EOF
proxy:
  whiteList:
    - host: 127.0.0.1
      ports: [$PLAIN_PORT, $TLSO_PORT]
  connectPorts: [$TLSO_PORT, $OTHER_PORT]
EOF
start_shoald "$TEST_TMP/white.yaml"
P=$SHOALD_PROXY
info "whiteList: listed host and port pass"
assert_eq "$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" "$plain/echo")" 200 "whitelisted GET"
assert_eq "$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" --cacert "$TEST_TMP/origin/ca.crt" \
  "https://127.0.0.1:$TLSO_PORT/echo")" 200 "whitelisted CONNECT (tunnel)"
info "whiteList: other ports and hosts get 403"
code=$(curl -sS -o "$TEST_TMP/403.body" -w '%{http_code}' -x "$P" "http://127.0.0.1:$OTHER_PORT/echo")
assert_eq "$code" 403 "GET to a port not in the whiteList"
grep -q whiteList "$TEST_TMP/403.body" || fail "403 body does not name proxy.whiteList: $(cat "$TEST_TMP/403.body")"
assert_eq "$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" "http://localhost:$PLAIN_PORT/echo")" 403 "GET to a host not in the whiteList"
resp=$(proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --data "CONNECT 127.0.0.1:$OTHER_PORT HTTP/1.1\r\n\r\n" 2>/dev/null)
assert_eq "$(head -n 1 <<<"$resp" | cut -d' ' -f2)" 403 "CONNECT to a port not in the whiteList"
assert_eq "$(jq -s length "$TEST_TMP/OTHER.requests" 2>/dev/null || echo 0)" 0 "requests that reached a non-whitelisted origin"
stop_shoald "$SHOALD_PID"

# --- maxConcurrency -------------------------------------------------------------
cat >"$TEST_TMP/conc.yaml" <<EOF
proxy:
  maxConcurrency: 2
EOF
start_shoald "$TEST_TMP/conc.yaml"
info "maxConcurrency 2: the third concurrent connection gets 429"
out=$(proxy_client hold --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --hold 2 \
  --data "GET $plain/echo HTTP/1.1\r\nHost: x\r\n\r\n" 2>/dev/null || true)
assert_eq "$(head -n 1 <<<"$out" | cut -d' ' -f2)" 429 "third concurrent connection"
out=$(proxy_client hold --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --hold 1 \
  --data "GET $plain/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" 2>/dev/null || true)
assert_eq "$(head -n 1 <<<"$out" | cut -d' ' -f2)" 200 "second concurrent connection"
# The held connections are gone: two at once work again.
curl -sS -o "$TEST_TMP/c1" -x "$SHOALD_PROXY" "$plain/trickle/1000?secs=1" &
c1=$!
curl -sS -o "$TEST_TMP/c2" -x "$SHOALD_PROXY" "$plain/trickle/1000?secs=1" &
c2=$!
wait "$c1" || fail "first of two concurrent transfers failed"
wait "$c2" || fail "second of two concurrent transfers failed"
assert_eq "$(stat -c %s "$TEST_TMP/c1")$(stat -c %s "$TEST_TMP/c2")" 10001000 "two concurrent transfers"
assert_log_has '.msg == "connection refused" and .reason == "proxy.maxConcurrency reached"'
curl -sS "http://127.0.0.1:$SHOALD_METRICS_PORT/metrics" | grep -q '^shoal_proxy_connections_rejected_total 1$' ||
  fail "shoal_proxy_connections_rejected_total is not 1"
stop_shoald "$SHOALD_PID"

# --- open relay ------------------------------------------------------------------
info "tcpListen 0.0.0.0 without basicAuth or whiteList: --check-config refuses"
cat >"$TEST_TMP/open.yaml" <<'EOF'
# An open relay on every address.
proxy:
  tcpListen:
    listen: 0.0.0.0
    port: 65001
EOF
rc=0
"$BUILD/shoald" --check-config -c "$TEST_TMP/open.yaml" >"$TEST_TMP/open.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "--check-config accepted an open relay: $(cat "$TEST_TMP/open.out")"
grep -Eq "^$TEST_TMP/open.yaml:[0-9]+:([0-9]+:)? .*proxy.tcpListen" "$TEST_TMP/open.out" ||
  fail "--check-config message lacks file:line and the key: $(cat "$TEST_TMP/open.out")"
grep -q "basicAuth" "$TEST_TMP/open.out" || fail "--check-config does not say what would fix it: $(cat "$TEST_TMP/open.out")"
# With basicAuth the same listener is accepted (checked only, never started).
cat >>"$TEST_TMP/open.yaml" <<'EOF'
  basicAuth:
    username: u
    password: p
EOF
"$BUILD/shoald" --check-config -c "$TEST_TMP/open.yaml" >"$TEST_TMP/open2.out" 2>&1 ||
  fail "--check-config refused 0.0.0.0 with basicAuth: $(cat "$TEST_TMP/open2.out")"
info "ok"
