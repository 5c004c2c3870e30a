#!/bin/bash
# Task engine, single flight against the real registry fixture:
#   16 concurrent curl GETs of the ~8 MiB layer through the hijacked proxy,
#   with the bearer token and WITHOUT -L: every client gets 200 directly
#   (Shoal follows the registry's 307 to the blob store itself), all 16
#   bodies are identical and hash to the digest;
#   the registry saw exactly one GET of that blob and the blob store exactly
#   one GET of its data (no Authorization); core.log has exactly one
#   "peer task done" for the task (id = the digest's hex), with size and
#   bytes_origin; every other client joined the task or was served from the
#   store (shoal_task_joined_total + shoal_task_reuse_total = 15) and
#   shoal_back_to_source_total = 1;
#   a second pull afterwards reaches neither the registry nor the blob store
#   and logs "reuse file peer task done"; shoal_bytes_total{source="local"}
#   grows by at least the blob's size;
#   the blob store's own URL (.../blobs/sha256/xx/<hex>/data?presigned) is
#   the same task: served from the store, no blob-store GET;
#   a manifest by digest: two proxied GETs, one registry GET, the second
#   from the store with the same Content-Type.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq cmp
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"

config=$TEST_TMP/shoald.yaml
cat >"$config" <<EOF
registryMirror:
  url: $SHOAL_TEST_REGISTRY_URL
  dynamic: true
proxy:
  proxies:
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: $SHOAL_TEST_REGISTRY_HOST
    - regx: $SHOAL_TEST_BLOBS_HOST
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
EOF
start_shoald "$config"

blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
hex=${blob#sha256:}
size=$SHOAL_TEST_HELLO_BIG_LAYER_SIZE
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob
token=$(registry_token) || fail "no token from the fixture"

# counts since the marks: registry blob GETs and blob-store data GETs.
reg_gets() {
  log_since "$SHOAL_TEST_REGISTRY_ACCESS_LOG" "$1" | grep -c "\"GET /v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob " || true
}
store_gets() {
  log_since "$SHOAL_TEST_BLOBS_LOG" "$1" |
    jq -R --arg h "$hex" 'fromjson? | select(.method == "GET" and (.uri | contains($h)))' | jq -s length
}

reg_mark=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
store_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
local0=$(metric 'shoal_bytes_total{source="local"}')

info "16 concurrent GETs of $blob ($size bytes) through the proxy"
pids=()
for i in $(seq 1 16); do
  curl -sS --max-time 60 -x "$SHOALD_PROXY" --cacert "$bundle" -H "Authorization: Bearer $token" \
    -o "$TEST_TMP/c$i.body" -w '%{http_code}' "$url" >"$TEST_TMP/c$i.code" 2>"$TEST_TMP/c$i.err" &
  pids+=($!)
done
for i in $(seq 1 16); do
  wait_exit "${pids[$((i - 1))]}" 90
  [ "$WAIT_RC" = 0 ] || fail "client $i: curl status $WAIT_RC: $(cat "$TEST_TMP/c$i.err")"
  assert_eq "$(cat "$TEST_TMP/c$i.code")" 200 "client $i status (no -L: Shoal follows the 307)"
  assert_eq "$(stat -c %s "$TEST_TMP/c$i.body")" "$size" "client $i body size"
  assert_same_file "$TEST_TMP/c$i.body" "$TEST_TMP/c1.body" "client $i vs client 1"
done
assert_eq "$(sha256_of "$TEST_TMP/c1.body")" "$blob" "body digest"
kill -0 "$SHOALD_PID" 2>/dev/null || fail "shoald died during the concurrent pull"

sleep 0.5 # nginx and the registry write their access lines after the response
assert_eq "$(reg_gets "$reg_mark")" 1 "registry GETs of the blob during the concurrent pull"
assert_eq "$(store_gets "$store_mark")" 1 "blob-store GETs of the blob's data during the concurrent pull"
assert_eq "$(log_since "$SHOAL_TEST_BLOBS_LOG" "$store_mark" | jq -s '[.[] | select(.auth == "yes")] | length')" 0 \
  "blob-store requests carrying Authorization"

assert_log_has "((.msg // \"\") | test(\"^peer task done, cost: [0-9]+ms$\")) and .task == \"$hex\""
assert_eq "$(log_count "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$hex\"")" 1 \
  "\"peer task done\" lines for the task"
assert_eq "$(log_count "((.msg // \"\") | test(\"^peer task done\")) and .task == \"$hex\"
  and .size == $size and .bytes_origin == $size and (.peer | length) > 0")" 1 \
  "\"peer task done\" with peer, size and bytes_origin = $size"
assert_eq "$(log_count '.msg == "peer task failed"')" 0 "\"peer task failed\" lines"
# The owner's line may name the blob store's URL it was redirected to.
assert_eq "$(log_count ".msg == \"request\" and ((.path // \"\") | test(\"/blobs/sha256[:/].*$hex\")) and .route == \"p2p\"
  and .status == 200 and .bytes == $size")" 16 "request lines routed p2p for the blob (status 200, all bytes)"

joined=$(metric shoal_task_joined_total)
reuse=$(metric shoal_task_reuse_total)
info "joined=$joined reuse=$reuse"
assert_eq "$((joined + reuse))" 15 "shoal_task_joined_total + shoal_task_reuse_total after 16 clients"
assert_eq "$(metric shoal_back_to_source_total)" 1 "shoal_back_to_source_total"
assert_eq "$(metric 'shoal_tasks_total{result="success"}')" 1 "shoal_tasks_total{result=\"success\"}"
[ "$(find "$SHOALD_DATA_DIR/tasks" -path "*/$hex/data" -size "${size}c" | wc -l)" = 1 ] ||
  fail "the task is not in the store: $(task_files "$SHOALD_DATA_DIR")"

info "a second pull is served from the store"
reg_mark=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
store_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
local1=$(metric 'shoal_bytes_total{source="local"}')
code=$(curl -sS --max-time 30 -x "$SHOALD_PROXY" --cacert "$bundle" -H "Authorization: Bearer $token" \
  -o "$TEST_TMP/again.body" -w '%{http_code}' "$url") || fail "second pull failed"
assert_eq "$code" 200 "second pull status"
assert_same_file "$TEST_TMP/again.body" "$TEST_TMP/c1.body" "second pull vs first"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done, cost: [0-9]+ms$\")) and .task == \"$hex\" and .size == $size"
sleep 0.5
assert_eq "$(reg_gets "$reg_mark")" 0 "registry GETs of the blob during the second pull"
assert_eq "$(store_gets "$store_mark")" 0 "blob-store GETs during the second pull"
assert_eq "$(metric shoal_task_reuse_total)" "$((reuse + 1))" "shoal_task_reuse_total after the second pull"
assert_eq "$(metric shoal_back_to_source_total)" 1 "shoal_back_to_source_total after the second pull"
local2=$(metric 'shoal_bytes_total{source="local"}')
[ "$((local2 - local1))" -eq "$size" ] || fail "shoal_bytes_total{source=\"local\"} grew by $((local2 - local1)), want $size"
[ "$((local1 - local0))" -ge "$size" ] ||
  fail "shoal_bytes_total{source=\"local\"} grew by $((local1 - local0)) during the concurrent pull, want >= $size (15 clients not served by the owner)"

info "the blob store's own URL for the blob (storage path) is the same task"
loc=$(curl -sS -o /dev/null -w '%{redirect_url}' --cacert "$SHOAL_TEST_ORIGIN_CA" -H "Authorization: Bearer $token" "$url") ||
  fail "direct GET for the blob's Location failed"
case $loc in */blobs/sha256/${hex:0:2}/$hex/data*) ;; *) fail "unexpected blob Location: $loc" ;; esac
store_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
code=$(curl -sS --max-time 30 -x "$SHOALD_PROXY" --cacert "$bundle" -o "$TEST_TMP/store-url.body" -w '%{http_code}' "$loc") ||
  fail "GET of the storage URL through the proxy failed"
assert_eq "$code" 200 "storage URL status"
assert_same_file "$TEST_TMP/store-url.body" "$TEST_TMP/c1.body" "storage URL body"
sleep 0.5
assert_eq "$(store_gets "$store_mark")" 0 "blob-store GETs for the storage URL (served from the store)"
assert_eq "$(log_count "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$hex\"")" 2 \
  "\"reuse file peer task done\" lines for the task"

info "a manifest by digest is a task too, served again with its Content-Type"
mdig=$SHOAL_TEST_HELLO_MANIFEST_DIGEST
murl=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/manifests/$mdig
accept='Accept: application/vnd.oci.image.manifest.v1+json'
reg_mark=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
for i in 1 2; do
  curl -sS --max-time 30 -x "$SHOALD_PROXY" --cacert "$bundle" -H "Authorization: Bearer $token" -H "$accept" \
    -o "$TEST_TMP/m$i.body" -w '%{http_code} %{content_type}' "$murl" >"$TEST_TMP/m$i.out" || fail "manifest GET $i failed"
  assert_eq "$(cat "$TEST_TMP/m$i.out")" "200 application/vnd.oci.image.manifest.v1+json" "manifest GET $i status and type"
  assert_eq "$(sha256_of "$TEST_TMP/m$i.body")" "$mdig" "manifest GET $i digest"
done
sleep 0.5
assert_eq "$(log_since "$SHOAL_TEST_REGISTRY_ACCESS_LOG" "$reg_mark" | grep -c "\"GET /v2/$SHOAL_TEST_HELLO_REPO/manifests/$mdig " || true)" 1 \
  "registry GETs of the manifest by digest for two proxied GETs"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"${mdig#sha256:}\""
shoald_alive "after the pulls"
info "ok"
