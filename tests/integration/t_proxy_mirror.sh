#!/bin/bash
# Registry-mirror mode against the fixture registry (TLS, token auth):
#   a path-only GET /v2/... to the proxy goes to registryMirror.url (the
#   registry's own 401 challenge comes back; with a token, the manifest);
#   X-Dragonfly-Registry naming the fixture registry is honoured when
#   dynamic, one naming another host gets 403 and nothing is dialled;
#   with dynamic: false the header is ignored (the mirror answers).
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq
fixture_up

cat >"$TEST_TMP/mirror.yaml" <<EOF
registryMirror:
  url: $SHOAL_TEST_REGISTRY_URL
  dynamic: true
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
EOF
start_shoald "$TEST_TMP/mirror.yaml"
M=http://127.0.0.1:$SHOALD_PROXY_PORT

info "GET /v2/ on the proxy: the registry's 401 with its Bearer challenge"
code=$(curl -sS -D "$TEST_TMP/v2.h" -o /dev/null -w '%{http_code}' "$M/v2/")
assert_eq "$code" 401 "GET /v2/ through the mirror"
tr -d '\r' <"$TEST_TMP/v2.h" | grep -qi "^www-authenticate: Bearer realm=\"$SHOAL_TEST_TOKEN_URL\"" ||
  fail "401 lacks the registry's challenge: $(cat "$TEST_TMP/v2.h")"
assert_log_has ".msg == \"request\" and .host == \"$SHOAL_TEST_REGISTRY_HOST\" and .port == $SHOAL_TEST_PORT and .path == \"/v2/\" and .status == 401 and .tls == true"

info "with a token: the manifest by tag, byte for byte"
token=$(registry_token) || fail "no token from the fixture"
curl -sS -f -o "$TEST_TMP/manifest.json" -H "Authorization: Bearer $token" \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "$M/v2/$SHOAL_TEST_HELLO_REPO/manifests/1" || fail "manifest GET through the mirror failed"
assert_eq "$(sha256_of "$TEST_TMP/manifest.json")" "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" "manifest through the mirror"

info "X-Dragonfly-Registry naming the mirror's registry: allowed"
reg_mark=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: $SHOAL_TEST_REGISTRY_URL" "$M/v2/")
assert_eq "$code" 401 "GET /v2/ with X-Dragonfly-Registry: $SHOAL_TEST_REGISTRY_URL"
sleep 0.2
[ "$(log_since "$SHOAL_TEST_REGISTRY_ACCESS_LOG" "$reg_mark" | grep -c 'GET /v2/')" -ge 1 ] ||
  fail "the registry's access log does not show the allowed request"

info "X-Dragonfly-Registry naming another host: 403, nothing dialled"
reg_mark=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
code=$(curl -sS -o "$TEST_TMP/403.body" -w '%{http_code}' -H "X-Dragonfly-Registry: https://some-other-host.invalid" "$M/v2/")
assert_eq "$code" 403 "GET /v2/ with X-Dragonfly-Registry: https://some-other-host.invalid"
grep -q 'X-Dragonfly-Registry' "$TEST_TMP/403.body" || fail "403 body does not name the header: $(cat "$TEST_TMP/403.body")"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: https://$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT" "$M/v2/")
assert_eq "$code" 403 "X-Dragonfly-Registry naming the token host (reachable, not the mirror)"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: https://$SHOAL_TEST_REGISTRY_HOST:8443" "$M/v2/")
assert_eq "$code" 403 "X-Dragonfly-Registry naming the registry host on another port"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: not a url" "$M/v2/")
assert_eq "$code" 400 "X-Dragonfly-Registry that is not a URL"
sleep 0.2
assert_eq "$(log_since "$SHOAL_TEST_REGISTRY_ACCESS_LOG" "$reg_mark" | wc -l)" 0 "registry requests caused by refused headers"
assert_eq "$(log_count ".msg == \"request\" and .host == \"some-other-host.invalid\"")" 0 "requests forwarded to some-other-host"
stop_shoald "$SHOALD_PID"

info "dynamic: false: the header is ignored and the mirror answers"
cat >"$TEST_TMP/static.yaml" <<EOF
registryMirror:
  url: $SHOAL_TEST_REGISTRY_URL
  dynamic: false
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
EOF
start_shoald "$TEST_TMP/static.yaml"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: https://some-other-host.invalid" \
  "http://127.0.0.1:$SHOALD_PROXY_PORT/v2/")
assert_eq "$code" 401 "GET /v2/ with X-Dragonfly-Registry when not dynamic"
assert_log_has ".msg == \"request\" and .host == \"$SHOAL_TEST_REGISTRY_HOST\" and .path == \"/v2/\""
info "ok"
