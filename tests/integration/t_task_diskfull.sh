#!/bin/bash
# A full disk does not fail the client that started a download: with the
# data dir on a 3 MiB tmpfs, an ~8 MiB blob cannot be stored, and that
# client still gets every byte (file, then memory, then straight from the
# origin); a client that joined the download gets what is on disk, then the
# rest from the origin with a Range request. The error is logged and nothing
# half-written stays in the store.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq mount umount
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
data=$TEST_TMP/small-disk
mkdir -p "$data"
mount -t tmpfs -o size=3m tmpfs "$data" || skip "cannot mount a tmpfs here"
on_exit "umount -l '$data'"
registry_config "$TEST_TMP/shoald.yaml" "$site"
start_shoald "$TEST_TMP/shoald.yaml" --data-dir "$data"
digest=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$digest
# -L as registry clients do: a request that arrives while the disk is full
# (here, the second client's, when it comes after the first one's store has
# already failed) is passed through, and the registry's answer to it is the
# 307 to the blob store.
get() {
  curl -sS -L -x "$SHOALD_PROXY" --cacert "$bundle" -H "Authorization: Bearer $SHOAL_TEST_TOKEN" \
    -o "$1" -w '%{http_code}' "$url"
}

info "one client, a blob larger than the disk: it gets every byte"
code=$(get "$TEST_TMP/a") || fail "the client's transfer failed"
assert_eq "$code" 200 "status"
assert_eq "$(sha256_of "$TEST_TMP/a")" "$digest" "bytes"
assert_log_has '.msg == "store failed; passing the rest of the object through" and (.error | test("space"; "i"))'

info "two clients at once: the owner finishes, the client that joined gets the rest by a Range request"
rm -f "$TEST_TMP/a" "$TEST_TMP/b"
(get "$TEST_TMP/a" >"$TEST_TMP/a.code") 2>"$TEST_TMP/a.err" &
pa=$!
(get "$TEST_TMP/b" >"$TEST_TMP/b.code") 2>"$TEST_TMP/b.err" &
pb=$!
wait "$pa" || fail "client a failed: $(cat "$TEST_TMP/a.err")"
wait "$pb" || fail "client b failed: $(cat "$TEST_TMP/b.err")"
for c in a b; do
  assert_eq "$(cat "$TEST_TMP/$c.code")" 200 "client $c's status"
  assert_eq "$(sha256_of "$TEST_TMP/$c")" "$digest" "client $c's bytes"
done
info "nothing of it is stored; the store still works"
[ -z "$(find "$data/tmp" -mindepth 1 2>/dev/null)" ] || fail "tmp/ keeps debris: $(ls -la "$data/tmp")"
[ -z "$(find "$data/tasks" -name data 2>/dev/null)" ] || fail "a task was stored on a full disk"
code=$(curl -sS -x "$SHOALD_PROXY" --cacert "$bundle" -H "Authorization: Bearer $SHOAL_TEST_TOKEN" -o "$TEST_TMP/small" \
  -w '%{http_code}' "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST")
assert_eq "$code" 200 "a small blob after the failure"
assert_eq "$(sha256_of "$TEST_TMP/small")" "$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST" "small blob bytes"
shoald_alive "end of test"
info "ok"
