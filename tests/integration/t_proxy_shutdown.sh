#!/bin/bash
# SIGTERM with transfers in flight (a fault_origin.py body trickled over a
# few seconds, plain and through a hijacked tunnel):
#   shutdown.grace 5s: the listener closes at once (/healthz says stopping),
#     idle keep-alive connections are closed, running transfers finish
#     whole, and shoald exits 0 as soon as they are done;
#   shutdown.grace 1s (set by a SIGHUP reload from 30s) and a longer
#     transfer: the client is reset (a failed transfer, never a short
#     "complete" one) and shoald exits 0 promptly;
#   a second SIGTERM resets what is left at once.
. "$(dirname "$0")/lib.sh"

need_cmd curl jq python3 cmp
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin PLAIN
start_fault_origin TLSO --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"
python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit 200000 >"$TEST_TMP/expect-200000"

config() { # config GRACE
  cat >"$TEST_TMP/shoald-$1.yaml" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$TLSO_PORT\$
proxy:
  connectPorts: [$TLSO_PORT]
tls:
  trustStore: $TEST_TMP/origin/ca.crt
shutdown:
  grace: $1
EOF
  echo "$TEST_TMP/shoald-$1.yaml"
}

# --- grace 5s: transfers finish --------------------------------------------------
start_shoald "$(config 5s)"
pid=$SHOALD_PID
info "grace 5s: two 3-second transfers and an idle keep-alive connection, then SIGTERM"
curl -sS -o "$TEST_TMP/t1" -x "$SHOALD_PROXY" "http://127.0.0.1:$PLAIN_PORT/trickle/200000?secs=3" 2>"$TEST_TMP/t1.err" &
c1=$!
curl -sS -o "$TEST_TMP/t2" -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "https://127.0.0.1:$TLSO_PORT/trickle/200000?secs=3" 2>"$TEST_TMP/t2.err" &
c2=$!
proxy_client raw --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --timeout 20 \
  --data "GET http://127.0.0.1:$PLAIN_PORT/echo HTTP/1.1\r\nHost: x\r\n\r\n" >"$TEST_TMP/idle.out" 2>"$TEST_TMP/idle.err" &
c3=$!
sleep 1
t0=$(date +%s.%N)
kill -TERM "$pid"
sleep 0.3
# New connections are refused while the transfers drain.
if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SHOALD_PROXY_PORT" 2>/dev/null; then
  fail "the proxy still accepts connections after SIGTERM"
fi
code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SHOALD_METRICS_PORT/healthz" || true)
assert_eq "$code" 503 "/healthz while stopping"
wait_exit "$c3" 3; rc=$WAIT_RC
assert_eq "$rc" 0 "idle keep-alive client (closed by the drain)"
grep -q '^END eof' "$TEST_TMP/idle.err" || fail "idle keep-alive connection not closed on SIGTERM: $(cat "$TEST_TMP/idle.err")"
wait "$c1" || fail "plain transfer failed across SIGTERM: $(cat "$TEST_TMP/t1.err")"
wait "$c2" || fail "hijacked transfer failed across SIGTERM: $(cat "$TEST_TMP/t2.err")"
cmp -s "$TEST_TMP/t1" "$TEST_TMP/expect-200000" || fail "plain transfer incomplete after SIGTERM"
cmp -s "$TEST_TMP/t2" "$TEST_TMP/expect-200000" || fail "hijacked transfer incomplete after SIGTERM"
wait_exit "$pid" 4; rc=$WAIT_RC
t1=$(date +%s.%N)
assert_eq "$rc" 0 "shoald exit status after a graceful stop"
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
info "shoald exited ${secs}s after SIGTERM"
awk -v s="$secs" 'BEGIN { exit !(s >= 1.2 && s < 4.5) }' || fail "graceful stop took ${secs}s (want ~2 s: until the transfers end, not the whole grace)"
LOG=$SHOALD_LOG_DIR/core.log
assert_log_has '.msg == "stopping" and .signal == "SIGTERM"' "$LOG"
assert_log_has '.msg == "shoald stopped"' "$LOG"
assert_eq "$(log_count '.msg == "grace period over: resetting remaining connections"' "$LOG")" 0 "grace-over resets"
assert_log_has ".msg == \"request\" and .port == $TLSO_PORT and .status == 200 and .bytes == 200000" "$LOG"

# --- grace 1s: transfers are cut -------------------------------------------------
# Started with 30s; a reload brings it down to 1s, which the stop must use.
cfg=$(config 1s)
sed -i 's/grace: 1s/grace: 30s/' "$cfg"
start_shoald "$cfg"
pid=$SHOALD_PID
sed -i 's/grace: 30s/grace: 1s/' "$cfg"
kill -HUP "$pid"
assert_log_has '.msg == "configuration reloaded"'
info "grace 1s (after a reload from 30s): two 8-second transfers, then SIGTERM"
curl -sS -o "$TEST_TMP/u1" -x "$SHOALD_PROXY" "http://127.0.0.1:$PLAIN_PORT/trickle/200000?secs=8" 2>"$TEST_TMP/u1.err" &
c1=$!
curl -sS -o "$TEST_TMP/u2" -x "$SHOALD_PROXY" --cacert "$site/ca.crt" \
  "https://127.0.0.1:$TLSO_PORT/trickle/200000?secs=8" 2>"$TEST_TMP/u2.err" &
c2=$!
sleep 1
t0=$(date +%s.%N)
kill -TERM "$pid"
wait_exit "$pid" 5; rc=$WAIT_RC
t1=$(date +%s.%N)
assert_eq "$rc" 0 "shoald exit status after the grace period"
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
info "shoald exited ${secs}s after SIGTERM"
awk -v s="$secs" 'BEGIN { exit !(s >= 0.9 && s < 2.5) }' || fail "stop with grace 1s took ${secs}s"
wait_exit "$c1" 5; rc1=$WAIT_RC
wait_exit "$c2" 5; rc2=$WAIT_RC
[ "$rc1" != 0 ] && [ "$rc1" != timeout ] || fail "plain client was not reset (curl status $rc1)"
[ "$rc2" != 0 ] && [ "$rc2" != timeout ] || fail "hijacked client was not reset (curl status $rc2)"
[ "$(stat -c %s "$TEST_TMP/u1")" -lt 200000 ] || fail "plain client got everything?"
info "clients: curl $rc1 ($(cat "$TEST_TMP/u1.err")), curl $rc2 ($(cat "$TEST_TMP/u2.err"))"
LOG=$SHOALD_LOG_DIR/core.log
assert_log_has '.msg == "grace period over: resetting remaining connections" and .connections == 2' "$LOG"
assert_log_has '.msg == "shoald stopped"' "$LOG"

# --- a second SIGTERM --------------------------------------------------------------
start_shoald "$(config 30s)"
pid=$SHOALD_PID
info "grace 30s: a second SIGTERM resets the transfer at once"
curl -sS -o /dev/null -x "$SHOALD_PROXY" "http://127.0.0.1:$PLAIN_PORT/trickle/200000?secs=8" 2>/dev/null &
c1=$!
sleep 1
kill -TERM "$pid"
sleep 0.5
kill -0 "$pid" 2>/dev/null || fail "shoald exited on the first SIGTERM with a transfer in flight (grace 30s)"
kill -TERM "$pid"
wait_exit "$pid" 3
assert_eq "$WAIT_RC" 0 "shoald exit status after a second SIGTERM"
wait_exit "$c1" 5
[ "$WAIT_RC" != 0 ] && [ "$WAIT_RC" != timeout ] || fail "client not reset by the second SIGTERM (curl status $WAIT_RC)"
assert_log_has '.msg == "second stop signal: resetting remaining connections"' "$SHOALD_LOG_DIR/core.log"
info "ok"
