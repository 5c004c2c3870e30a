#!/bin/bash
# shoalctl preheat (issue 7): a scheduler and two shoalds on loopback, with
# P2P, against the registry fixture (bearer tokens, blobs redirected to a
# blob store).
#   - `preheat docker://REGISTRY/library/hello:1` on daemon A follows the 401
#     to an anonymous token, fetches the manifest by tag and by digest, the
#     config and both layers, verifies each, and reports that A stored every
#     one of them, fetched from the origin;
#   - skopeo then pulls the image through daemon B: the right image, and the
#     blob store serves none of its blobs' bytes (B's tasks and its "peer
#     task done" lines say every byte came from peers);
#   - an index pushed for the test (linux/amd64 + linux/arm64): preheat picks
#     linux/amd64; --platform with a platform the index lacks fails (exit 1,
#     naming the platforms it has);
#   - the ORAS SIF artifact (oras://) preheats too, with a human summary;
#   - a REF by digest (on B, everything already there) succeeds.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq skopeo
ctl=$BUILD/shoalctl
[ -x "$ctl" ] || skip "$ctl not built yet"
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
certdir=$TEST_TMP/client-certdir
mkdir -p "$certdir"
cp "$site/ca.crt" "$certdir/site.crt"
cp "$SHOAL_TEST_ORIGIN_CA" "$certdir/origin.crt"

secret=$TEST_TMP/cluster.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
chmod 600 "$secret"
config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"
printf 'p2p:\n  clusterSecretFile: %s\n' "$secret" >>"$config"

sched_port=$(free_port)
"$BUILD/shoald" scheduler --listen "127.0.0.1:$sched_port" --cluster-secret-file "$secret" \
  --log-dir "$TEST_TMP/sched" </dev/null >"$TEST_TMP/sched.out" 2>&1 &
sched_pid=$!
on_exit stop_pid "$sched_pid"
deadline=$((SECONDS + 15))
until curl -sf "http://127.0.0.1:$sched_port/healthz" >/dev/null 2>&1; do
  kill -0 "$sched_pid" 2>/dev/null || { cat "$TEST_TMP/sched.out" >&2; fail "scheduler exited at start"; }
  [ "$SECONDS" -lt "$deadline" ] || fail "scheduler not ready after 15 s"
  sleep 0.1
done

start_peer() { # NAME: sets NAME_PROXY, NAME_ADMIN, NAME_LOG, NAME_PID
  start_shoald "$config" --scheduler "127.0.0.1:$sched_port" --peer-listen "127.0.0.1:$(free_port)"
  printf -v "${1}_PROXY" %s "$SHOALD_PROXY"
  printf -v "${1}_ADMIN" %s "$SHOALD_ADMIN_SOCKET"
  printf -v "${1}_LOG" %s "$SHOALD_LOG_DIR/core.log"
  printf -v "${1}_PID" %s "$SHOALD_PID"
}
start_peer A
start_peer B

reg=$SHOAL_TEST_REGISTRY
read -ra layers <<<"$SHOAL_TEST_HELLO_LAYER_DIGESTS"
blobs=("$SHOAL_TEST_HELLO_CONFIG_DIGEST" "${layers[@]}")
[ "${#blobs[@]}" -eq 3 ] || fail "expected a config and two layers, got ${blobs[*]}"
# blob-store bytes of GETs for any of the image's blobs since a mark
store_bytes() {
  local hexes
  hexes=$(printf '%s\n' "${blobs[@]#sha256:}" | jq -R . | jq -sc .)
  log_since "$SHOAL_TEST_BLOBS_LOG" "$1" |
    jq -R --argjson h "$hexes" 'fromjson? | select(.method == "GET" and (.uri as $u | any($h[]; . as $x | $u | contains($x)))) | .bytes' |
    jq -s 'add // 0'
}

info "preheat library/hello:1 on daemon A"
mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
"$ctl" --socket "$A_ADMIN" --json preheat "docker://$reg/library/hello:1" --cacert "$SHOAL_TEST_ORIGIN_CA" \
  >"$TEST_TMP/preheat-a.json" 2>"$TEST_TMP/preheat-a.err" || {
  cat "$TEST_TMP/preheat-a.err" "$TEST_TMP/preheat-a.json" >&2
  fail "preheat on A failed"
}
j=$TEST_TMP/preheat-a.json
assert_eq "$(jq -r .ok "$j")" true "preheat .ok"
assert_eq "$(jq -r .manifest_digest "$j")" "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" "preheat manifest digest"
assert_eq "$(jq -r .blobs "$j")" 3 "preheat blob count"
assert_eq "$(jq -r .not_stored "$j")" 0 "objects A did not store"
assert_eq "$(jq -r .manifests_not_stored "$j")" 0 "manifests A did not store"
for d in "${blobs[@]}"; do
  assert_eq "$(jq -r --arg d "$d" '.items[] | select(.digest == $d) | .stored' "$j")" true "A stored $d"
  assert_eq "$(jq -r --arg d "$d" '.items[] | select(.digest == $d) | .bytes_origin == .size' "$j")" true \
    "A fetched $d from the origin"
done
[ "$(store_bytes "$mark")" -ge "$SHOAL_TEST_HELLO_BIG_LAYER_SIZE" ] || fail "the blob store did not serve A's preheat"
grep -q $'\r' "$TEST_TMP/preheat-a.err" && fail "preheat drew progress into a pipe"
# The token came by the 401 flow, through A (tunnelled to the auth host).
assert_log_has ".msg == \"connect\" and .host == \"$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT\" and .route == \"tunnel\"" "$A_LOG"

info "skopeo pulls the image through daemon B: nothing from the origin"
mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
HTTPS_PROXY=$B_PROXY https_proxy=$B_PROXY skopeo --insecure-policy copy --quiet --src-cert-dir "$certdir" \
  --src-no-creds "docker://$reg/library/hello:1" "dir:$TEST_TMP/pulled" || fail "skopeo through B failed"
assert_eq "$(sha256_of "$TEST_TMP/pulled/manifest.json")" "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" "pulled manifest"
for d in "${blobs[@]}"; do
  assert_eq "$(sha256_of "$TEST_TMP/pulled/${d#sha256:}")" "$d" "pulled blob $d"
done
sleep 0.5
assert_eq "$(store_bytes "$mark")" 0 "blob-store bytes for B's pull"
"$ctl" --socket "$B_ADMIN" --json tasks >"$TEST_TMP/tasks-b.json" || fail "tasks on B failed"
for d in "${blobs[@]}"; do
  e=$(jq -c --arg h "${d#sha256:}" '.stored[] | select(.id == $h)' "$TEST_TMP/tasks-b.json")
  [ -n "$e" ] || fail "B did not store $d"
  assert_eq "$(jq -r .bytes_origin <<<"$e")" 0 "B's bytes from the origin for $d"
  assert_eq "$(jq -r '.bytes_peer == .size' <<<"$e")" true "B's bytes from peers for $d"
done
assert_eq "$(jq -s --arg h "${SHOAL_TEST_HELLO_BIG_LAYER_DIGEST#sha256:}" \
  '[.[] | select((.msg // "" | startswith("peer task done")) and .task == $h) | .bytes_origin] | add' "$B_LOG")" 0 \
  "B's peer task done bytes_origin for the big layer"

info "an index: linux/amd64 chosen, a missing platform refused"
token=$SHOAL_TEST_TOKEN
tag=ctl-index-$$
index=$(jq -nc --arg d "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" --argjson s "$SHOAL_TEST_HELLO_MANIFEST_SIZE" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [
    {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
     platform: {os: "linux", architecture: "arm64", variant: "v8"}},
    {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
     platform: {os: "linux", architecture: "amd64"}}]}')
code=$(curl -sS -o "$TEST_TMP/put.out" -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" -X PUT \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/vnd.oci.image.index.v1+json' \
  --data-binary "$index" "$SHOAL_TEST_REGISTRY_URL/v2/library/hello/manifests/$tag")
[ "$code" = 201 ] || { cat "$TEST_TMP/put.out" >&2; fail "pushing the test index: $code"; }
"$ctl" --socket "$A_ADMIN" --json preheat "$reg/library/hello:$tag" --cacert "$SHOAL_TEST_ORIGIN_CA" \
  >"$TEST_TMP/index.json" 2>"$TEST_TMP/index.err" || { cat "$TEST_TMP/index.err" >&2; fail "preheat of the index failed"; }
assert_eq "$(jq -r '.items[0].kind' "$TEST_TMP/index.json")" index "index: first item"
assert_eq "$(jq -r '[.items[] | select(.kind == "manifest") | .platform] | join(",")' "$TEST_TMP/index.json")" \
  linux/amd64 "index: chosen platform"
assert_eq "$(jq -r .blobs "$TEST_TMP/index.json")" 3 "index: blobs"
rc=0
"$ctl" --socket "$A_ADMIN" preheat "$reg/library/hello:$tag" --platform linux/s390x --cacert "$SHOAL_TEST_ORIGIN_CA" \
  >/dev/null 2>"$TEST_TMP/s390x.err" || rc=$?
assert_eq "$rc" 1 "preheat for a platform the index lacks"
grep -q 'linux/arm64/v8, linux/amd64' "$TEST_TMP/s390x.err" || fail "no list of platforms: $(cat "$TEST_TMP/s390x.err")"

info "oras:// SIF artifact, human output"
"$ctl" --socket "$A_ADMIN" preheat "oras://$SHOAL_TEST_SIF_REF" --cacert "$SHOAL_TEST_ORIGIN_CA" \
  >"$TEST_TMP/sif.out" 2>"$TEST_TMP/sif.err" || { cat "$TEST_TMP/sif.err" >&2; fail "preheat of the SIF failed"; }
grep -q "^preheated $SHOAL_TEST_SIF_REF ($SHOAL_TEST_SIF_MANIFEST_DIGEST)" "$TEST_TMP/sif.out" ||
  fail "no summary: $(cat "$TEST_TMP/sif.out")"
grep -q '^shoald stored \([0-9]*\) of \1 object(s)' "$TEST_TMP/sif.out" || fail "not all stored: $(cat "$TEST_TMP/sif.out")"
if grep -q "not checked" "$TEST_TMP/sif.out"; then fail "preheat says it could not check, with the admin socket at hand"; fi
grep -q "$SHOAL_TEST_SIF_DIGEST" "$TEST_TMP/sif.err" || fail "no per-blob line for the SIF: $(cat "$TEST_TMP/sif.err")"
"$ctl" --socket "$A_ADMIN" --json tasks "$SHOAL_TEST_SIF_DIGEST" | jq -e '.stored | length == 1' >/dev/null ||
  fail "A does not hold the SIF"

info "by digest on B: everything already there"
"$ctl" --socket "$B_ADMIN" --json preheat "$reg/library/hello@$SHOAL_TEST_HELLO_MANIFEST_DIGEST" \
  --cacert "$SHOAL_TEST_ORIGIN_CA" >"$TEST_TMP/digest.json" 2>"$TEST_TMP/digest.err" ||
  { cat "$TEST_TMP/digest.err" >&2; fail "preheat by digest on B failed"; }
assert_eq "$(jq -r '.not_stored' "$TEST_TMP/digest.json")" 0 "by digest: objects B lacks"
for p in "$A_PID" "$B_PID"; do kill -0 "$p" 2>/dev/null || fail "a shoald died"; done
info "ok"
