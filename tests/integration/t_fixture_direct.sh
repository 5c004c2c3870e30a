#!/bin/bash
# Proves the registry fixture on its own, with no proxy in the way: the
# token dance, the 307 to the blob store, the store's S3-like 400 on
# Authorization, and real clients (curl, skopeo, the oras-go v1 client)
# pulling what up.sh pushed, byte for byte. Every other integration test
# builds on these facts.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq skopeo sha256sum cmp
fixture_up

ca=$SHOAL_TEST_ORIGIN_CA
reg=$SHOAL_TEST_REGISTRY_URL
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST

info "GET /v2/ without a token: 401 with a Bearer challenge"
code=$(curl -sS --cacert "$ca" -o /dev/null -D "$TEST_TMP/v2.h" -w '%{http_code}' "$reg/v2/")
assert_eq "$code" 401 "GET /v2/ status"
challenge=$(tr -d '\r' <"$TEST_TMP/v2.h" | awk 'tolower($1) == "www-authenticate:" { $1 = ""; print substr($0, 2) }')
case $challenge in
  "Bearer realm=\"$SHOAL_TEST_TOKEN_URL\""*) ;;
  *) fail "WWW-Authenticate is '$challenge', want a Bearer realm=\"$SHOAL_TEST_TOKEN_URL\"" ;;
esac
case $challenge in
  *"service=\"$SHOAL_TEST_SERVICE\""*) ;;
  *) fail "WWW-Authenticate '$challenge' lacks service=\"$SHOAL_TEST_SERVICE\"" ;;
esac

info "token from the realm"
curl -sS --cacert "$ca" -D "$TEST_TMP/token.h" -o "$TEST_TMP/token.json" \
  "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull"
tr -d '\r' <"$TEST_TMP/token.h" | grep -qi '^content-type: application/json' ||
  fail "token response is not application/json"
token=$(jq -er .token "$TEST_TMP/token.json") || fail "token response has no .token"
assert_eq "$(jq -r .access_token "$TEST_TMP/token.json")" "$token" "access_token"
assert_eq "$token" "$SHOAL_TEST_TOKEN" "token"
code=$(curl -sS --cacert "$ca" -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$reg/v2/")
assert_eq "$code" 200 "GET /v2/ with the token"

info "blob GET with the token: 307 to the blob store"
read -r code location < <(curl -sS --cacert "$ca" -o /dev/null -w '%{http_code} %{redirect_url}\n' \
  -H "Authorization: Bearer $token" "$reg/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob")
assert_eq "$code" 307 "blob GET status"
case $location in
  "$SHOAL_TEST_BLOBS_URL"/*) ;;
  *) fail "blob GET redirects to '$location', want $SHOAL_TEST_BLOBS_URL/..." ;;
esac

info "blob store: 400 with Authorization, the blob without"
mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
code=$(curl -sS --cacert "$ca" -o "$TEST_TMP/s3err" -w '%{http_code}' -H "Authorization: Bearer $token" "$location")
assert_eq "$code" 400 "blob store GET with Authorization"
code=$(curl -sS --cacert "$ca" -o "$TEST_TMP/blob" -w '%{http_code}' "$location?X-Amz-Signature=ignored")
assert_eq "$code" 200 "blob store GET without Authorization"
assert_eq "$(sha256_of "$TEST_TMP/blob")" "$blob" "blob digest"
assert_eq "$(stat -c %s "$TEST_TMP/blob")" "$SHOAL_TEST_HELLO_BIG_LAYER_SIZE" "blob size"
# curl -L drops Authorization when the redirect leaves the host, as registry clients must.
code=$(curl -sS -L --cacert "$ca" -o "$TEST_TMP/blob-L" -w '%{http_code}' \
  -H "Authorization: Bearer $token" "$reg/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob")
assert_eq "$code" 200 "curl -L of the blob"
assert_same_file "$TEST_TMP/blob-L" "$TEST_TMP/blob" "curl -L blob"
sleep 0.2 # nginx writes its access log line after the response
assert_eq "$(log_since "$SHOAL_TEST_BLOBS_LOG" "$mark" | jq -s '[.[] | select(.status == 400 and .auth == "yes")] | length')" 1 \
  "400s with Authorization in the blob-store log"

info "skopeo copy docker://$SHOAL_TEST_HELLO_REF dir:"
mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
skopeo --insecure-policy copy --quiet --src-cert-dir "$SHOAL_TEST_ORIGIN_CERT_DIR" --src-no-creds \
  "docker://$SHOAL_TEST_HELLO_REF" "dir:$TEST_TMP/skopeo" || fail "skopeo copy failed"
assert_eq "$(sha256_of "$TEST_TMP/skopeo/manifest.json")" "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" "skopeo manifest digest"
for d in $SHOAL_TEST_HELLO_CONFIG_DIGEST $SHOAL_TEST_HELLO_LAYER_DIGESTS; do
  assert_same_file "$TEST_TMP/skopeo/${d#sha256:}" "$SHOAL_TEST_HELLO_OCI_DIR/blobs/sha256/${d#sha256:}" "skopeo blob $d"
done

info "oras pull $SHOAL_TEST_SIF_REF"
SSL_CERT_FILE=$ca "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TEST_TMP/oras" >"$TEST_TMP/oras.out" ||
  fail "oras pull failed"
assert_same_file "$TEST_TMP/oras/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" "oras-pulled SIF"

sleep 0.2
since=$(log_since "$SHOAL_TEST_BLOBS_LOG" "$mark")
assert_eq "$(jq -s '[.[] | select(.status == 200)] | length' <<<"$since")" 4 \
  "blob-store GETs by skopeo (config + 2 layers) and oras (1 layer)"
assert_eq "$(jq -s '[.[] | select(.auth == "yes" or .status == 400)] | length' <<<"$since")" 0 \
  "blob-store requests with Authorization from skopeo and oras"
info "ok"
