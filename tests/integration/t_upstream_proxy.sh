#!/bin/bash
# The site proxy (upstreamProxy): shoald's own connections to origins go
# through a real forwarding proxy, tinyproxy on 127.0.0.1 with a log of its
# own, with CONNECT; clients reach shoald as an explicit proxy.
#
#   A. No proxy credentials; noProxy lists the token host. A curl blob pull
#      (registry hijacked; the task engine follows the 307 to the blob
#      store) and a skopeo copy through shoald match the direct pull;
#      tinyproxy's log shows CONNECTs to the registry and the blob store and
#      none to the token host, whose tunnel went direct.
#   B. tinyproxy with BasicAuth, shoald with upstreamProxy.credentialsFile:
#      a pull works and every CONNECT carried the credentials. Wrong ones
#      (the file rewritten, shoalctl reload): a hijacked request gets 502, a
#      tunnel's CONNECT gets 502, core.log says "site proxy error" naming the
#      proxy and its refusal (tinyproxy: 401; 407 without credentials); the
#      password is in no log of shoald's.
#   C. The proxy down: 502 and a log line naming the proxy and the refusal.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq skopeo tinyproxy
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
[ -x "$BUILD/shoalctl" ] || skip "$BUILD/shoalctl not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
certdir=$TEST_TMP/client-certdir
mkdir -p "$certdir"
cp "$site/ca.crt" "$certdir/site.crt"
cp "$SHOAL_TEST_ORIGIN_CA" "$certdir/origin.crt"
reg=$SHOAL_TEST_REGISTRY_URL
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST

# connects LOG MARK HOST: how many CONNECTs to HOST (on the fixture's port)
# tinyproxy logged since MARK.
connects() { tinyproxy_connects "$1" "$2" "$3:$SHOAL_TEST_PORT"; }

# shoald_config OUT PROXY_URL [YAML_LINE...]: the registry fixture's
# config plus an upstreamProxy section (each YAML_LINE under it).
shoald_config() {
  local out=$1 url=$2 line
  shift 2
  registry_config "$out" "$site"
  {
    echo "upstreamProxy:"
    echo "  url: $url"
    for line in "$@"; do echo "  $line"; done
  } >>"$out"
  local chk
  chk=$("$BUILD/shoald" --check-config -c "$out" 2>&1) || fail "--check-config rejects $out: $chk"
}

proxied() { HTTPS_PROXY=$SHOALD_PROXY https_proxy=$SHOALD_PROXY "$@"; }

# pull_blob WHAT: the token (from the token host) and the big layer through
# shoald; fails unless the blob's digest is right.
pull_blob() {
  local token code
  token=$(proxied curl -sSf --cacert "$bundle" \
    "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull" |
    jq -er .token) || fail "$1: token fetch through shoald failed"
  rm -f "$TEST_TMP/blob"
  code=$(proxied curl -sS --cacert "$bundle" -o "$TEST_TMP/blob" -w '%{http_code}' \
    -H "Authorization: Bearer $token" "$reg/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob") ||
    fail "$1: blob GET through shoald failed"
  assert_eq "$code" 200 "$1: blob GET status"
  assert_eq "$(sha256_of "$TEST_TMP/blob")" "$blob" "$1: blob digest"
}

info "direct pull for reference"
skopeo --insecure-policy copy --quiet --src-cert-dir "$SHOAL_TEST_ORIGIN_CERT_DIR" --src-no-creds \
  "docker://$SHOAL_TEST_HELLO_REF" "dir:$TEST_TMP/direct" || fail "direct skopeo copy failed"

# --- A -----------------------------------------------------------------------------
start_tinyproxy OPEN
config=$TEST_TMP/shoald-a.yaml
shoald_config "$config" "http://127.0.0.1:$OPEN_PORT" "noProxy: [$SHOAL_TEST_AUTH_HOST, 192.0.2.0/24]"
start_shoald "$config"
mark=$(log_mark "$OPEN_LOG")
auth_mark=$(log_mark "$SHOAL_TEST_AUTH_LOG")
info "A: pulls through shoald, shoald through tinyproxy :$OPEN_PORT"
pull_blob A
proxied skopeo --insecure-policy copy --quiet --src-cert-dir "$certdir" --src-no-creds \
  "docker://$SHOAL_TEST_HELLO_REF" "dir:$TEST_TMP/via-proxy" || fail "A: skopeo copy through shoald failed"
diff -r "$TEST_TMP/direct" "$TEST_TMP/via-proxy" >&2 || fail "A: the pull through the site proxy differs from the direct one"
n=$(connects "$OPEN_LOG" "$mark" "$SHOAL_TEST_REGISTRY_HOST")
[ "$n" -ge 1 ] || { cat "$OPEN_LOG" >&2; fail "A: tinyproxy logged no CONNECT to $SHOAL_TEST_REGISTRY_HOST"; }
m=$(connects "$OPEN_LOG" "$mark" "$SHOAL_TEST_BLOBS_HOST")
[ "$m" -ge 1 ] || { cat "$OPEN_LOG" >&2; fail "A: tinyproxy logged no CONNECT to $SHOAL_TEST_BLOBS_HOST (the 307's target)"; }
assert_eq "$(connects "$OPEN_LOG" "$mark" "$SHOAL_TEST_AUTH_HOST")" 0 "A: CONNECTs to the noProxy host $SHOAL_TEST_AUTH_HOST"
all=$(log_since "$OPEN_LOG" "$mark" | grep -c 'Request (file descriptor [0-9]*): CONNECT ' || true)
assert_eq "$all" "$((n + m))" "A: CONNECTs in tinyproxy's log, all of them to the registry or the blob store"
# The token host was reached, directly: its access log grew.
[ "$(log_since "$SHOAL_TEST_AUTH_LOG" "$auth_mark" | wc -l)" -ge 2 ] || fail "A: the token host logged no requests"
assert_log_has ".msg == \"connect\" and .host == \"$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT\" and .route == \"tunnel\" and .status == 200"
ok=$(metric 'shoal_upstream_proxy_connects_total{result="ok"}')
assert_eq "$ok" "$((n + m))" "A: shoald's count of CONNECTs through the site proxy vs tinyproxy's"
info "A: $n CONNECTs to the registry, $m to the blob store, none to the token host"
stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"

# --- B -----------------------------------------------------------------------------
pass=pw-$$-$RANDOM
start_tinyproxy AUTH shoal "$pass"
cred=$TEST_TMP/proxy.cred
(umask 077 && echo "shoal:$pass" >"$cred")
config=$TEST_TMP/shoald-b.yaml
shoald_config "$config" "http://127.0.0.1:$AUTH_PORT" "credentialsFile: $cred"
start_shoald "$config"
mark=$(log_mark "$AUTH_LOG")
info "B: tinyproxy with BasicAuth, shoald with upstreamProxy.credentialsFile"
pull_blob B
n=$(connects "$AUTH_LOG" "$mark" "$SHOAL_TEST_REGISTRY_HOST")
[ "$n" -ge 1 ] || { cat "$AUTH_LOG" >&2; fail "B: tinyproxy logged no CONNECT to $SHOAL_TEST_REGISTRY_HOST"; }
[ "$(connects "$AUTH_LOG" "$mark" "$SHOAL_TEST_AUTH_HOST")" -ge 1 ] || fail "B: no CONNECT to the token host (noProxy is empty here)"
assert_eq "$(metric 'shoal_upstream_proxy_connects_total{result="error"}')" 0 "B: CONNECTs refused with the right credentials"

info "B: wrong credentials (file rewritten, shoalctl reload)"
(umask 077 && echo "shoal:not-$pass" >"$cred")
out=$("$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" reload 2>&1) || fail "shoalctl reload: $out"
core_mark=$(log_mark "$(shoal_log)")
code=$(proxied curl -sS --cacert "$bundle" -o "$TEST_TMP/body" -w '%{http_code}' "$reg/v2/") ||
  fail "B: curl of a hijacked URL failed outright (want a 502 inside the tunnel)"
assert_eq "$code" 502 "B: hijacked request through a proxy that refuses the credentials"
grep -q "site proxy http://127.0.0.1:$AUTH_PORT" "$TEST_TMP/body" || fail "B: the 502's body does not name the proxy: $(cat "$TEST_TMP/body")"
# tinyproxy answers 401 to wrong credentials (407 to none).
grep -qE '(401|407) .*credentials missing or wrong' "$TEST_TMP/body" ||
  fail "B: the 502's body does not give the proxy's refusal and its meaning: $(cat "$TEST_TMP/body")"
code=$(proxied curl -sS --cacert "$bundle" -o /dev/null -w '%{http_connect}' "$SHOAL_TEST_TOKEN_URL" 2>/dev/null) || true
assert_eq "$code" 502 "B: CONNECT to a tunnelled host through a proxy that refuses the credentials"
assert_log_has ".msg == \"site proxy error\" and .proxy == \"http://127.0.0.1:$AUTH_PORT\" and (.status == 401 or .status == 407)
  and .target == \"$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT\" and (.error | test(\"credentials\"))"
assert_log_has ".msg == \"site proxy error\" and (.status == 401 or .status == 407) and .target == \"$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT\""
[ "$(log_since "$(shoal_log)" "$core_mark" | grep -c 'site proxy error')" -ge 2 ] || fail "B: fewer than two site proxy error lines"
# tinyproxy saw the refused attempts: the credentials were wrong, not absent.
[ "$(connects "$AUTH_LOG" "$mark" "$SHOAL_TEST_REGISTRY_HOST")" -gt "$n" ] || fail "B: the refused CONNECT never reached tinyproxy"
for f in "$SHOALD_LOG_DIR"/*; do
  if grep -q -- "$pass" "$f"; then fail "B: the proxy password appears in $f"; fi
done
shoald_alive "after the proxy refused"

# --- C -----------------------------------------------------------------------------
info "C: the site proxy down"
stop_pid "$AUTH_PID"
code=$(proxied curl -sS --cacert "$bundle" -o "$TEST_TMP/body" -w '%{http_code}' "$reg/v2/") ||
  fail "C: curl of a hijacked URL failed outright (want a 502 inside the tunnel)"
assert_eq "$code" 502 "C: hijacked request with the site proxy down"
assert_log_has ".msg == \"site proxy error\" and .proxy == \"http://127.0.0.1:$AUTH_PORT\"
  and (.error | test(\"connect: connection refused\"))"
shoald_alive "with the site proxy down"
info "ok"
