#!/bin/bash
# Range requests on tasks: bytes=N-, bytes=N-M and suffix ranges get 206 with
# an exact Content-Range and the exact bytes, both while the owner fetches
# the whole object (the origin is asked for all of it once) and from the
# store; an unsatisfiable range gets 416; a multi-range request goes to the
# origin as it is.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq cmp
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
registry_config "$TEST_TMP/shoald.yaml" "$site"
start_shoald "$TEST_TMP/shoald.yaml"
digest=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
size=$SHOAL_TEST_HELLO_BIG_LAYER_SIZE
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$digest
auth=(-H "Authorization: Bearer $SHOAL_TEST_TOKEN")
# The reference copy, fetched directly from the registry.
curl -sSfL --cacert "$SHOAL_TEST_ORIGIN_CA" "${auth[@]}" -o "$TEST_TMP/whole" "$url" || fail "direct fetch failed"

# range_get SPEC FIRST LAST: a proxied GET with Range SPEC must be a 206 of
# exactly bytes FIRST..LAST of the object.
range_get() {
  local spec=$1 first=$2 last=$3 code hdr
  code=$(curl -sS -x "$SHOALD_PROXY" --cacert "$bundle" "${auth[@]}" -H "Range: $spec" \
    -D "$TEST_TMP/h" -o "$TEST_TMP/part" -w '%{http_code}' "$url") || fail "ranged GET $spec failed"
  assert_eq "$code" 206 "status for Range: $spec"
  hdr=$(tr -d '\r' <"$TEST_TMP/h" | awk -F': ' 'tolower($1) == "content-range" { print $2 }')
  assert_eq "$hdr" "bytes $first-$last/$size" "Content-Range for $spec"
  dd if="$TEST_TMP/whole" of="$TEST_TMP/expect" iflag=skip_bytes,count_bytes skip="$first" \
    count="$((last - first + 1))" status=none
  cmp -s "$TEST_TMP/part" "$TEST_TMP/expect" || fail "bytes for Range: $spec differ"
}

blobs_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
info "first request is a range: the owner fetches the whole object once"
range_get "bytes=1000-2999" 1000 2999
assert_log_has '.msg | startswith("peer task done")'
info "ranges from the store"
range_get "bytes=$((size - 10))-" $((size - 10)) $((size - 1))
range_get "bytes=-4096" $((size - 4096)) $((size - 1))
range_get "bytes=0-0" 0 0
range_get "bytes=5-$((size + 100))" 5 $((size - 1))
code=$(curl -sS -o /dev/null -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$bundle" "${auth[@]}" \
  -H "Range: bytes=$size-" "$url")
assert_eq "$code" 416 "status for a range past the end"
sleep 0.2
assert_eq "$(log_since "$SHOAL_TEST_BLOBS_LOG" "$blobs_mark" | jq -s '[.[] | select(.method == "GET")] | length')" 1 \
  "blob-store GETs for all the ranges"
info "a multi-range request goes to the origin"
code=$(curl -sS -L -o /dev/null -w '%{http_code}' -x "$SHOALD_PROXY" --cacert "$bundle" "${auth[@]}" \
  -H "Range: bytes=0-1,5-6" "$url")
case $code in 206 | 200) ;; *) fail "multi-range status $code" ;; esac
assert_log_has '.msg == "request" and .route == "direct" and (.path | test("blobs/sha256:"))'
info "ok"
