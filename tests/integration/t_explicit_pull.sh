#!/bin/bash
# variants: fast-records-off (hijacked with and without tls.fastRecords)
# The explicit-proxy product test: real clients pull through shoald with
# HTTPS_PROXY set, and get exactly what a direct pull gets.
#
#   curl    blob GET (307 followed, Authorization must not reach the store)
#   skopeo  docker:// pull of library/hello:1 (containers/image)
#   oras    oras:// pull of sif/hello:1 (oras-go v1, containerd resolver)
#
# shoald hijacks registry.shoal.test and blobs.shoal.test (leaves minted by
# a site CA that the clients trust), tunnels auth.shoal.test untouched, and
# routes blobs/sha256 and manifests/sha256 to the task engine ("p2p").
# core.log must show each of those decisions; the blob store's log must
# show no request carrying Authorization.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq skopeo cmp diff
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"

# Clients trust the site CA for hijacked hosts and the origin CA for the
# tunnelled token host, whose real certificate they see.
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
certdir=$TEST_TMP/client-certdir
mkdir -p "$certdir"
cp "$site/ca.crt" "$certdir/site.crt"
cp "$SHOAL_TEST_ORIGIN_CA" "$certdir/origin.crt"

config=$TEST_TMP/shoald.yaml
cat >"$config" <<EOF
# Dragonfly dfget.yaml proxy sections, as the Singularity/Apptainer guide shows them.
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
# Shoal's own: how shoald verifies origins.
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
EOF
port=$(free_port)
start_shoald "$config" --proxy-listen "127.0.0.1:$port"
info "shoald $SHOALD_PID listens on $SHOALD_PROXY"

proxied() { HTTPS_PROXY=$SHOALD_PROXY https_proxy=$SHOALD_PROXY "$@"; }
reg=$SHOAL_TEST_REGISTRY_URL
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST

info "direct pulls for reference"
skopeo --insecure-policy copy --quiet --src-cert-dir "$SHOAL_TEST_ORIGIN_CERT_DIR" --src-no-creds \
  "docker://$SHOAL_TEST_HELLO_REF" "dir:$TEST_TMP/direct-skopeo" || fail "direct skopeo copy failed"
SSL_CERT_FILE=$SHOAL_TEST_ORIGIN_CA "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TEST_TMP/direct-oras" >/dev/null ||
  fail "direct oras pull failed"

blobs_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")

info "curl: token, then the blob through the proxy (following the 307)"
token=$(proxied curl -sSf --cacert "$bundle" \
  "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull" |
  jq -er .token) || fail "token fetch through the proxy failed"
code=$(proxied curl -sS -L --cacert "$bundle" -o "$TEST_TMP/blob" -w '%{http_code}' \
  -H "Authorization: Bearer $token" "$reg/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob") ||
  fail "curl of the blob through the proxy failed"
assert_eq "$code" 200 "proxied blob GET status"
assert_eq "$(sha256_of "$TEST_TMP/blob")" "$blob" "proxied blob digest"
assert_eq "$(stat -c %s "$TEST_TMP/blob")" "$SHOAL_TEST_HELLO_BIG_LAYER_SIZE" "proxied blob size"

info "skopeo copy through the proxy"
proxied skopeo --insecure-policy copy --quiet --src-cert-dir "$certdir" --src-no-creds \
  "docker://$SHOAL_TEST_HELLO_REF" "dir:$TEST_TMP/proxied-skopeo" || fail "proxied skopeo copy failed"
diff -r "$TEST_TMP/direct-skopeo" "$TEST_TMP/proxied-skopeo" >&2 || fail "proxied skopeo copy differs from the direct one"
assert_eq "$(sha256_of "$TEST_TMP/proxied-skopeo/manifest.json")" "$SHOAL_TEST_HELLO_MANIFEST_DIGEST" "proxied manifest digest"

info "oras pull through the proxy"
proxied env SSL_CERT_FILE="$bundle" "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TEST_TMP/proxied-oras" >/dev/null ||
  fail "proxied oras pull failed"
assert_same_file "$TEST_TMP/proxied-oras/$SHOAL_TEST_SIF_NAME" "$TEST_TMP/direct-oras/$SHOAL_TEST_SIF_NAME" "proxied SIF vs direct"
assert_same_file "$TEST_TMP/proxied-oras/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" "proxied SIF vs pushed"

kill -0 "$SHOALD_PID" 2>/dev/null || fail "shoald died during the pulls"

info "core.log records the routing decisions"
reg_hp="$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT"
auth_hp="$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT"
# Request lines may carry the host with or without its default port.
on_reg="((.host // \"\") | sub(\":$SHOAL_TEST_PORT\$\"; \"\")) == \"$SHOAL_TEST_REGISTRY_HOST\""
assert_log_has ".msg == \"request\" and $on_reg and .method == \"GET\"
  and ((.path // \"\") | test(\"/blobs/sha256:\")) and .route == \"p2p\""
assert_log_has ".msg == \"request\" and $on_reg and .method == \"GET\"
  and ((.path // \"\") | test(\"/manifests/sha256:\")) and .route == \"p2p\""
assert_log_has ".msg == \"request\" and $on_reg
  and ((.path // \"\") | test(\"/manifests/1\$\")) and .route == \"direct\""
assert_log_has ".msg == \"connect\" and .host == \"$reg_hp\" and .route == \"hijack\""
# Which record layer protected the hijacked connections: libcrypto's AES-GCM
# by default, mbedTLS's in the fast-records-off variant; never a mix.
want_records=libcrypto
[ "${SHOAL_TEST_FAST_RECORDS:-1}" = 1 ] || want_records=mbedtls
assert_log_has ".msg == \"connect\" and .route == \"hijack\" and .records == \"$want_records\""
assert_eq "$(log_count ".msg == \"connect\" and .route == \"hijack\" and .records != \"$want_records\"")" 0 \
  "hijacked connections not on the $want_records record layer"
assert_log_has ".msg == \"connect\" and .host == \"$auth_hp\" and .route == \"tunnel\""
assert_eq "$(log_count ".msg == \"connect\" and .host == \"$auth_hp\" and .route != \"tunnel\"")" 0 \
  "CONNECTs to the token host that were not tunnelled"

info "the blob store never saw Authorization"
sleep 0.2
since=$(log_since "$SHOAL_TEST_BLOBS_LOG" "$blobs_mark")
assert_eq "$(jq -s '[.[] | select(.status == 400 or .auth == "yes")] | length' <<<"$since")" 0 \
  "blob-store requests with Authorization (400s) during the proxied pulls"
info "ok"
