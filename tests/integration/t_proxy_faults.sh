#!/bin/bash
# variants: fast-records-off (hijacked with and without tls.fastRecords)
# Origin faults, faked by tests/fixtures/fault_origin.py, plain, through a
# hijacked tunnel and through a plain CONNECT tunnel:
#   the origin resets (or closes) mid-body after the headers went out, with
#   Content-Length, chunked or EOF framing: the client sees a failed
#   transfer (curl exit status non-zero), never a short body that looks
#   complete;
#   the origin closes without answering, answers garbage, a response with
#   both Content-Length and Transfer-Encoding, or a head over 64 KiB: 502;
#   a reused keep-alive origin connection that closes as the next request
#   arrives: a GET is retried on a new connection (200), a POST is not (502);
#   the origin stalls (timeouts.idle 2s): 504 if no headers were sent yet,
#   a reset if they were; each after ~2 s, not the connection's lifetime.
# The daemon stays healthy and keeps serving.
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin PLAIN
start_fault_origin TLSO --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"

cat >"$TEST_TMP/shoald.yaml" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$TLSO_PORT\$
proxy:
  connectPorts: [$TLSO_PORT, $PLAIN_PORT]
tls:
  trustStore: $TEST_TMP/origin/ca.crt
timeouts:
  idle: 2s
EOF
start_shoald "$TEST_TMP/shoald.yaml"

# fetch LABEL URL CURL_ARGS...: runs curl through the proxy; sets RC (curl's
# exit status), CODE (HTTP status), SIZE (body bytes) and SECS.
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

for mode in plain hijacked; do
  if [ "$mode" = plain ]; then
    base=http://127.0.0.1:$PLAIN_PORT
    args=()
  else
    base=https://127.0.0.1:$TLSO_PORT
    args=(--cacert "$site/ca.crt")
  fi

  info "$mode: the origin fails mid-body after the headers: the client's transfer fails"
  for fault in reset close; do
    for framing in cl chunked eof; do
      [ "$fault/$framing" = close/eof ] && continue # a FIN is how an EOF-delimited body ends
      fetch "$mode-$fault-$framing" "$base/$fault/100000?framing=$framing" "${args[@]}"
      [ "$RC" -ne 0 ] || fail "$mode: origin $fault mid-body ($framing): curl reports success with $SIZE bytes"
      [ "$RC" -ne 28 ] || fail "$mode: origin $fault mid-body ($framing): curl timed out instead of failing"
      assert_eq "$CODE" 200 "$mode $fault $framing: status the client saw before the failure"
    done
  done

  info "$mode: the origin closes without answering, answers garbage or a bad head: 502"
  fetch "$mode-drop" "$base/drop" "${args[@]}"
  assert_eq "$RC/$CODE" 0/502 "$mode: origin closed without an answer"
  fetch "$mode-garbage" "$base/garbage" "${args[@]}"
  assert_eq "$RC/$CODE" 0/502 "$mode: origin answered garbage"
  grep -qi 'bad response from origin' "$TEST_TMP/$mode-garbage.body" || fail "$mode: 502 body: $(cat "$TEST_TMP/$mode-garbage.body")"

  fetch "$mode-tecl" "$base/tecl" "${args[@]}"
  assert_eq "$RC/$CODE" 0/502 "$mode: response with Transfer-Encoding and Content-Length"
  fetch "$mode-bighead" "$base/bighead" "${args[@]}"
  assert_eq "$RC/$CODE" 0/502 "$mode: response head over 64 KiB"

  info "$mode: the origin stalls before the headers: 504 after timeouts.idle"
  fetch "$mode-stall" "$base/stall" "${args[@]}"
  assert_eq "$RC/$CODE" 0/504 "$mode: stalled origin"
  awk -v s="$SECS" 'BEGIN { exit !(s >= 1.5 && s < 6) }' || fail "$mode: 504 after ${SECS}s, want ~2 s"

  info "$mode: the origin stalls mid-body: the client is reset after timeouts.idle"
  fetch "$mode-stall-body" "$base/stall/50000" "${args[@]}"
  [ "$RC" -ne 0 ] && [ "$RC" -ne 28 ] || fail "$mode: origin stalled mid-body: curl status $RC"
  assert_eq "$CODE" 200 "$mode: status before the mid-body stall"
  awk -v s="$SECS" 'BEGIN { exit !(s >= 1.5 && s < 6) }' || fail "$mode: reset after ${SECS}s, want ~2 s"
  [ "$SIZE" -ge 50000 ] || fail "$mode: the bytes before the stall did not arrive ($SIZE)"

  info "$mode: a reused origin connection closes as the next request arrives: GET retried, POST not"
  if [ "$mode" = plain ]; then
    send=(raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT")
    target=http://127.0.0.1:$PLAIN_PORT
  else
    send=(tls --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:$TLSO_PORT" --ca "$site/ca.crt")
    target=""
  fi
  statuses=$(proxy_client "${send[@]}" --gap 0.5 --timeout 5 \
    --data "GET $target/bytes/3?dropnext=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" \
    --data "GET $target/echo?second HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" 2>/dev/null |
    grep -ao 'HTTP/1.1 [0-9]*' | cut -d' ' -f2 | tr '\n' ' ' || true)
  assert_eq "$statuses" "200 200 " "$mode: GET on a connection the origin dropped"
  assert_log_has ".msg == \"retrying request on a new origin connection\" and .path == \"/echo\""
  statuses=$(proxy_client "${send[@]}" --gap 0.5 --timeout 5 \
    --data "GET $target/bytes/3?dropnext=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" \
    --data "POST $target/echo?post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi" 2>/dev/null |
    grep -ao 'HTTP/1.1 [0-9]*' | cut -d' ' -f2 | tr '\n' ' ' || true)
  assert_eq "$statuses" "200 502 " "$mode: POST on a connection the origin dropped (never sent twice)"

  info "$mode: the proxy still serves"
  fetch "$mode-after" "$base/bytes/12345" "${args[@]}"
  assert_eq "$RC/$CODE/$SIZE" 0/200/12345 "$mode: GET after the faults"
done

info "tunnel (CONNECT, not hijacked, plain HTTP inside): faults reach the client as failures"
# curl -p tunnels plain http:// through CONNECT; the proxy only splices bytes,
# so all it can do is pass on a reset as a reset and never turn a stall
# into a clean end of stream.
for fault in reset/100000?framing=cl reset/100000?framing=chunked reset/100000?framing=eof \
  close/100000?framing=cl close/100000?framing=chunked stall stall/50000?framing=eof stall/50000?framing=chunked; do
  label=tunnel-$(tr '/?=' '---' <<<"$fault")
  fetch "$label" "http://127.0.0.1:$PLAIN_PORT/$fault" -p
  [ "$RC" -ne 0 ] && [ "$RC" -ne 28 ] || fail "tunnel: origin $fault: curl status $RC with $SIZE bytes"
done
assert_log_has ".msg == \"connect\" and .host == \"127.0.0.1:$PLAIN_PORT\" and .route == \"tunnel\" and .error == \"idle timeout\""
fetch tunnel-after "http://127.0.0.1:$PLAIN_PORT/bytes/12345" -p
assert_eq "$RC/$CODE/$SIZE" 0/200/12345 "tunnel: GET after the faults"

info "core.log: the failures are logged with a reason"
assert_log_has '.msg == "request failed" and (.error | test("reset|closed"; "i"))'
assert_log_has '.msg == "request failed" and (.error | test("idle timeout"))'
assert_log_has ".msg == \"request\" and .path == \"/stall\" and .status == 504 and .port == $TLSO_PORT"
shoald_alive "after origin faults"
info "ok"
