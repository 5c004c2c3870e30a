#!/bin/bash
# proxy.authCheck: a stored private blob is served only to a client whose own
# credentials the registry accepts. A client with a bad token gets the
# registry's own 401 (relayed, not the blob); a good token gets the stored
# bytes without another blob download; with authCheck off, the store is
# served as is (public registries).
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
write_config() { registry_config "$TEST_TMP/shoald.yaml" "$site" "authCheck: $1"; }
write_config true
start_shoald "$TEST_TMP/shoald.yaml"
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST
get() { curl -sS -o "$TEST_TMP/out" -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$bundle" "$@" "$url"; }

info "a good token stores the blob"
assert_eq "$(get -H "Authorization: Bearer $SHOAL_TEST_TOKEN")" 200 "status with a good token"
assert_eq "$(sha256_of "$TEST_TMP/out")" "$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST" "digest with a good token"
assert_log_has '.msg | startswith("peer task done")'
blobs_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")

info "a bad token gets the registry's 401, not the stored blob"
code=$(get -H "Authorization: Bearer not-a-valid-token")
assert_eq "$code" 401 "status with a bad token"
if [ "$(sha256_of "$TEST_TMP/out")" = "$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST" ]; then fail "the stored blob went to a client with a bad token"; fi
assert_eq "$(get)" 401 "status without any token"
assert_log_has '.msg == "credential check did not allow shared bytes; forwarding" and .status == 401'

info "the good token again: served from the store, no new blob download"
assert_eq "$(get -H "Authorization: Bearer $SHOAL_TEST_TOKEN")" 200 "status with a good token, stored"
assert_eq "$(sha256_of "$TEST_TMP/out")" "$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST" "digest from the store"
assert_log_has '.msg | startswith("reuse file peer task done")'
sleep 0.2
assert_eq "$(log_since "$SHOAL_TEST_BLOBS_LOG" "$blobs_mark" | jq -s '[.[] | select(.method == "GET")] | length')" 0 \
  "blob-store GETs after the blob was stored"

info "authCheck: false serves the store without asking (public registries)"
write_config false
kill -HUP "$SHOALD_PID"
sleep 0.5
assert_eq "$(get)" 200 "status without a token, authCheck off"
assert_eq "$(sha256_of "$TEST_TMP/out")" "$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST" "digest, authCheck off"
info "ok"
