#!/bin/bash
# Running the daemon: configuration checks, reload, log rotation, status.
#   shoald --check-config: 0 for a good file; non-zero with
#     file:line:col: messages (every error at once) for bad ones
#   SIGHUP: a new hijack host and a new rule apply to new connections
#     (route in core.log changes); a broken file is logged and the old
#     configuration keeps working
#   SIGUSR1 after mv core.log core.log.1: a fresh core.log
#   shoalctl --socket S status (and --json, valid JSON), /metrics
#   admin socket: a user outside admin.group is refused (filesystem mode
#     and, with the mode opened up, the daemon's SO_PEERCRED check); the
#     same user in the group is let in
#   a listener that cannot be had (the metrics port taken): exit status 1,
#     the reason on stderr and in core.log, no abort
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq python3 useradd userdel groupadd groupdel su
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/origin" "IP:127.0.0.1"
start_fault_origin A --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"
start_fault_origin B --cert "$TEST_TMP/origin/leaf.crt" --key "$TEST_TMP/origin/leaf.key"
start_fault_origin PLAIN
cat "$site/ca.crt" "$TEST_TMP/origin/ca.crt" >"$TEST_TMP/bundle.pem"

# --- check-config ------------------------------------------------------------------
info "--check-config: a good file passes"
good=$TEST_TMP/good.yaml
write_config() { # write_config FILE HIJACK_REGX [RULE_REGX]
  cat >"$1" <<EOF
# Lifecycle test configuration.
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: $2
proxy:
  connectPorts: [$A_PORT, $B_PORT]
${3:+  proxies:
    - regx: $3}
tls:
  trustStore: $TEST_TMP/origin/ca.crt
admin:
  group: $grp
timeouts:
  idle: 30s
EOF
}
grp=shoalt$$
user=shoalu$$
write_config "$good" "^127\\.0\\.0\\.1:$A_PORT\$"
out=$("$BUILD/shoald" --check-config -c "$good" 2>&1) || fail "--check-config rejected a good file: $out"
grep -q ': ok' <<<"$out" || fail "--check-config did not say ok: $out"

info "--check-config: bad files fail with file:line:col: messages, all at once"
bad=$TEST_TMP/bad.yaml
cat >"$bad" <<'EOF'
timeouts:
  idle: forever
proxy:
  maxConcurrency: -3
  noSuchKey: 1
  proxies:
    - regx: "blobs/(unclosed"
EOF
rc=0
"$BUILD/shoald" --check-config -c "$bad" >"$TEST_TMP/bad.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "--check-config accepted $bad"
for want in "$bad:2:[0-9]+: timeouts.idle" "$bad:4:[0-9]+: proxy.maxConcurrency" "$bad:5:[0-9]+: proxy.noSuchKey" \
  "$bad:7:[0-9]+: proxy.proxies\\[0\\].regx"; do
  grep -Eq "^$want" "$TEST_TMP/bad.out" || fail "--check-config output lacks '$want': $(cat "$TEST_TMP/bad.out")"
done
printf 'proxy:\n  proxies: [\n' >"$TEST_TMP/syntax.yaml"
rc=0
"$BUILD/shoald" --check-config -c "$TEST_TMP/syntax.yaml" >"$TEST_TMP/syntax.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "--check-config accepted a YAML syntax error"
grep -Eq "^$TEST_TMP/syntax.yaml:[0-9]+:[0-9]+: " "$TEST_TMP/syntax.out" || fail "syntax error without file:line:col: $(cat "$TEST_TMP/syntax.out")"
printf 'proxy:\n  proxies:\n    - regx: "blobs/(unclosed"\n' >"$TEST_TMP/regex.yaml"
rc=0
"$BUILD/shoald" --check-config -c "$TEST_TMP/regex.yaml" >"$TEST_TMP/regex.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "--check-config accepted a bad regex"
grep -Eq "^$TEST_TMP/regex.yaml:3:[0-9]+: " "$TEST_TMP/regex.out" || fail "bad regex without file:line:col: $(cat "$TEST_TMP/regex.out")"

# --- start, then reload ------------------------------------------------------------------
getent group "$grp" >/dev/null && fail "group $grp exists already"
groupadd "$grp" || fail "groupadd $grp"
on_exit groupdel "$grp"
useradd -M -N -g nogroup -s /bin/sh "$user" || fail "useradd $user"
on_exit userdel "$user"
start_shoald "$good"
P=$SHOALD_PROXY
LOG=$(shoal_log)
route_of() { # route_of PORT: the route of the last connect line for 127.0.0.1:PORT
  jq -rR "fromjson? | select(.msg == \"connect\" and .host == \"127.0.0.1:$1\") | .route" "$LOG" | tail -n 1
}
get() { curl -sS -o /dev/null -w '%{http_code}' -x "$P" --cacert "$TEST_TMP/bundle.pem" "$@"; }

info "before reload: A hijacked, B tunnelled, no rules"
assert_eq "$(get "https://127.0.0.1:$A_PORT/echo")" 200 "GET A"
assert_eq "$(get "https://127.0.0.1:$B_PORT/echo")" 200 "GET B"
sleep 0.3
assert_eq "$(route_of "$A_PORT")" hijack "route of A before reload"
assert_eq "$(route_of "$B_PORT")" tunnel "route of B before reload"
assert_log_has ".msg == \"request\" and .port == $A_PORT and .path == \"/echo\" and .route == \"direct\""

info "SIGHUP with B hijacked and a rule: new connections follow it"
write_config "$TEST_TMP/new.yaml" "^127\\.0\\.0\\.1:($A_PORT|$B_PORT)\$" "/layer/"
mv "$TEST_TMP/new.yaml" "$good"
kill -HUP "$SHOALD_PID"
assert_log_has '.msg == "configuration reloaded"'
assert_eq "$(get "https://127.0.0.1:$B_PORT/echo")" 200 "GET B after reload"
assert_eq "$(get "https://127.0.0.1:$A_PORT/layer/1")" 404 "GET A /layer/1 after reload"
sleep 0.3
assert_eq "$(route_of "$B_PORT")" hijack "route of B after reload"
assert_log_has ".msg == \"request\" and .port == $B_PORT and .path == \"/echo\" and .route == \"direct\""
assert_log_has ".msg == \"request\" and .port == $A_PORT and .path == \"/layer/1\" and .route == \"p2p\""

info "SIGHUP with a broken file: logged, the old configuration keeps working"
printf 'proxy:\n  connectPorts: [not-a-port\n' >"$good"
kill -HUP "$SHOALD_PID"
assert_log_has '.msg == "reload failed; keeping the running configuration"'
assert_eq "$(get "https://127.0.0.1:$B_PORT/echo")" 200 "GET B after a failed reload"
sleep 0.3
assert_eq "$(route_of "$B_PORT")" hijack "route of B after a failed reload"
kill -0 "$SHOALD_PID" || fail "shoald died on a broken reload"
printf 'proxy:\n  whiteList:\n    - regx: "(("\n' >"$good"
kill -HUP "$SHOALD_PID"
sleep 0.3
assert_eq "$(log_count '.msg == "reload failed; keeping the running configuration"')" 2 "failed reloads logged"
assert_eq "$(get "https://127.0.0.1:$B_PORT/echo")" 200 "GET B after a second failed reload"

info "20 reloads while requests flow on both workers: every request answered"
write_config "$good" "^127\\.0\\.0\\.1:($A_PORT|$B_PORT)\$" "/layer/"
(
  for i in $(seq 40); do
    curl -sS -w '%{http_code}\n' -x "$P" --cacert "$TEST_TMP/bundle.pem" -o /dev/null "https://127.0.0.1:$A_PORT/echo" \
      -o /dev/null "https://127.0.0.1:$B_PORT/layer/$i" -o /dev/null "http://127.0.0.1:$PLAIN_PORT/echo" || echo curl-failed
  done
) >"$TEST_TMP/storm.codes" &
storm=$!
for _ in $(seq 20); do
  kill -HUP "$SHOALD_PID"
  sleep 0.1
done
wait "$storm"
assert_eq "$(sort "$TEST_TMP/storm.codes" | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')" "200:80 404:40 " \
  "statuses of 120 requests during 20 reloads"
kill -0 "$SHOALD_PID" || fail "shoald died during the reload storm"

info "SIGUSR1 after mv core.log core.log.1: a fresh core.log"
mv "$LOG" "$LOG.1"
lines_before=$(wc -l <"$LOG.1")
kill -USR1 "$SHOALD_PID"
for _ in $(seq 50); do [ -f "$LOG" ] && break; sleep 0.1; done
[ -f "$LOG" ] || fail "no new core.log after SIGUSR1"
assert_eq "$(curl -sS -o /dev/null -w '%{http_code}' -x "$P" "http://127.0.0.1:$PLAIN_PORT/echo?after-rotate")" 200 "GET after rotation"
assert_log_has '.msg == "request" and .path == "/echo" and .port == '"$PLAIN_PORT"
sleep 0.3
assert_eq "$(wc -l <"$LOG.1")" "$lines_before" "lines written to the rotated core.log.1 after SIGUSR1"

info "shoalctl status, --json, /metrics"
out=$("$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" status) || fail "shoalctl status failed"
grep -q "^shoald $(cat "$SHOAL_ROOT/VERSION" 2>/dev/null || echo)" <<<"$out" || fail "status lacks the version: $out"
grep -q "proxy *127.0.0.1:$SHOALD_PROXY_PORT" <<<"$out" || fail "status lacks the proxy listener: $out"
grep -q "metrics *127.0.0.1:$SHOALD_METRICS_PORT" <<<"$out" || fail "status lacks the metrics listener: $out"
grep -q 'shoal_requests_total' <<<"$out" || fail "status lacks counters: $out"
"$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" --json status >"$TEST_TMP/status.json" || fail "shoalctl --json status failed"
jq -e '.ok == true and (.version | length > 0) and (.listeners | map(.kind) | index("proxy") != null)
  and (.counters | length > 0) and .pid > 0' "$TEST_TMP/status.json" >/dev/null ||
  fail "shoalctl --json status is not the expected JSON: $(cat "$TEST_TMP/status.json")"
curl -sS "http://127.0.0.1:$SHOALD_METRICS_PORT/metrics" >"$TEST_TMP/metrics.txt" || fail "GET /metrics failed"
grep -Eq '^shoal_requests_total\{route="hijack"\} [1-9]' "$TEST_TMP/metrics.txt" || fail "/metrics lacks shoal_requests_total{route=\"hijack\"} > 0"
grep -Eq '^shoal_requests_total\{route="tunnel"\} [1-9]' "$TEST_TMP/metrics.txt" || fail "/metrics lacks shoal_requests_total{route=\"tunnel\"} > 0"
grep -q '^# TYPE shoal_requests_total counter' "$TEST_TMP/metrics.txt" || fail "/metrics lacks TYPE for shoal_requests_total"

info "admin socket: a user outside admin.group may only use run; the rest is refused"
chmod o+x "$TEST_TMP" "$(dirname "$SHOALD_ADMIN_SOCKET")"
# The checkout may sit where other users cannot reach (root's home on a fresh
# machine): run a copy of shoalctl from the test's own directory.
ctl=$TEST_TMP/shoalctl
install -m 0755 "$BUILD/shoalctl" "$ctl"
su -s /bin/sh "$user" -c "'$ctl' --help" >/dev/null 2>&1 || fail "user $user cannot run $ctl"
# The socket is open to all (shoalctl run is for every user); the daemon
# checks each command's caller with SO_PEERCRED.
assert_eq "$(stat -c '%a %G' "$SHOALD_ADMIN_SOCKET")" "666 $grp" "admin socket mode and group"
for cmd in status reload; do
  rc=0
  su -s /bin/sh "$user" -c "'$ctl' --socket '$SHOALD_ADMIN_SOCKET' $cmd" >"$TEST_TMP/denied.out" 2>&1 || rc=$?
  assert_eq "$rc" 1 "shoalctl $cmd exit status when the daemon refuses"
  grep -qi 'permission denied' "$TEST_TMP/denied.out" || fail "daemon did not refuse $cmd: $(cat "$TEST_TMP/denied.out")"
  assert_log_has ".msg == \"admin command refused\" and .cmd == \"$cmd\" and .uid == $(id -u "$user")"
done
assert_eq "$(log_count '.msg == "reloading configuration"')" 0 "reloads since the rotation (the refused user asked for one)"
usermod -a -G "$grp" "$user"
su -s /bin/sh "$user" -c "'$ctl' --socket '$SHOALD_ADMIN_SOCKET' status" >"$TEST_TMP/member.out" 2>&1 ||
  fail "a member of $grp was refused: $(cat "$TEST_TMP/member.out")"
shoald_alive "end of test"

info "a metrics port already taken: shoald exits 1 with the reason"
# The running daemon's own metrics port is the one taken.
mkdir -p "$TEST_TMP/busy/data" "$TEST_TMP/busy/log"
rc=0
timeout 20 "$BUILD/shoald" -c "$good" --data-dir "$TEST_TMP/busy/data" --log-dir "$TEST_TMP/busy/log" \
  --admin-socket "$TEST_TMP/busy/admin.sock" --metrics-listen "127.0.0.1:$SHOALD_METRICS_PORT" \
  --proxy-listen "127.0.0.1:$(free_port)" --transparent off >"$TEST_TMP/busy/out" 2>&1 || rc=$?
assert_eq "$rc" 1 "shoald's exit status when its metrics port is taken (134 would be an abort)"
grep -q "cannot listen on metrics 127.0.0.1:$SHOALD_METRICS_PORT: address already in use" "$TEST_TMP/busy/out" ||
  fail "stderr does not name the taken port: $(cat "$TEST_TMP/busy/out")"
[ "$(jq -c 'select(.msg == "start failed")' "$TEST_TMP/busy/log/core.log" | wc -l)" = 1 ] ||
  fail "core.log lacks the start failure: $(cat "$TEST_TMP/busy/log/core.log")"
shoald_alive "after the second daemon failed"
info "ok"
