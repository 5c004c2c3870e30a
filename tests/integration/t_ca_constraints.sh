#!/bin/bash
# A name-constrained site CA (tools/gen-ca.sh --permit registry.shoal.test):
#
#   - curl (OpenSSL) and a Go client (crypto/x509) accept a leaf the CA signs
#     for the registry host and reject one it signs, with openssl directly,
#     for blobs.shoal.test, outside the constraint;
#   - shoald, told to hijack both hosts, warns at --check-config that the
#     blob host is outside the constraint, hijacks the registry (a curl blob
#     GET and an ORAS pull through it work, with leaves of the site CA),
#     and tunnels blobs.shoal.test untouched: the client sees the origin's
#     own certificate, core.log says why, once per host; a CONNECT to the
#     registry whose SNI names the blob host is tunnelled too.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq openssl
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
command -v go >/dev/null || skip "go not installed (make deps-test)"
fixture_up
reg=$SHOAL_TEST_REGISTRY_HOST
blobs=$SHOAL_TEST_BLOBS_HOST
tlscheck=$BUILD/tests/fixtures/tlscheck/shoal-tlscheck
"$SHOAL_ROOT/tests/fixtures/tlscheck/build.sh" "$tlscheck" >&2 || fail "building the Go TLS client failed"

site=$TEST_TMP/site-ca
"$SHOAL_ROOT/tools/gen-ca.sh" "$site" --permit "$reg" >&2 || fail "gen-ca.sh --permit failed"
nc=$(openssl x509 -in "$site/ca.crt" -noout -ext nameConstraints)
grep -q critical <<<"$nc" || fail "nameConstraints not critical: $nc"
grep -q "DNS:$reg" <<<"$nc" || fail "nameConstraints lacks DNS:$reg: $nc"

# --- clients reject a leaf outside the constraint ---------------------------
# leaf NAME: a server leaf for NAME signed by the site CA with openssl, served
# by openssl s_server on 127.0.0.1; sets LEAF_PORT.
leaf() {
  local name=$1 d=$TEST_TMP/leaf-$1 pid
  mkdir -p "$d"
  {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$d/key.pem" -out "$d/csr.pem" &&
      printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$name" >"$d/ext.cnf" &&
      openssl x509 -req -in "$d/csr.pem" -CA "$site/ca.crt" -CAkey "$site/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/ext.cnf" -out "$d/crt.pem"
  } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; fail "minting a leaf for $name failed"; }
  LEAF_PORT=$(free_port)
  openssl s_server -accept "127.0.0.1:$LEAF_PORT" -cert "$d/crt.pem" -key "$d/key.pem" -www -quiet \
    </dev/null >"$d/s_server.log" 2>&1 &
  pid=$!
  on_exit stop_pid "$pid"
  wait_port 127.0.0.1 "$LEAF_PORT" 10 || fail "openssl s_server for $name did not start"
}

info "curl and Go accept the CA's leaf for $reg"
leaf "$reg"
out=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$site/ca.crt" --resolve "$reg:$LEAF_PORT:127.0.0.1" \
  "https://$reg:$LEAF_PORT/" 2>&1) || fail "curl rejected the leaf inside the constraint: $out"
assert_eq "$out" 200 "curl status, leaf inside"
out=$("$tlscheck" -cafile "$site/ca.crt" -connect "127.0.0.1:$LEAF_PORT" "https://$reg:$LEAF_PORT/" 2>&1) ||
  fail "Go rejected the leaf inside the constraint: $out"

info "curl and Go reject the CA's leaf for $blobs"
leaf "$blobs"
rc=0
out=$(curl -sS -o /dev/null --cacert "$site/ca.crt" --resolve "$blobs:$LEAF_PORT:127.0.0.1" \
  "https://$blobs:$LEAF_PORT/" 2>&1) || rc=$?
assert_eq "$rc" 60 "curl exit status for a leaf outside the constraint ($out)"
grep -qi 'subtree' <<<"$out" || fail "curl failed, but not for the name constraint: $out"
rc=0
out=$("$tlscheck" -cafile "$site/ca.crt" -connect "127.0.0.1:$LEAF_PORT" "https://$blobs:$LEAF_PORT/" 2>&1) || rc=$?
assert_eq "$rc" 1 "Go client exit status for a leaf outside the constraint ($out)"
grep -q 'not permitted' <<<"$out" || fail "Go failed, but not for the name constraint: $out"

# --- shoald hijacks inside, tunnels outside ------------------------------------
config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"
out=$("$BUILD/shoald" --check-config -c "$config" 2>&1) || fail "--check-config failed: $out"
line=$(grep -n "regx: $blobs\$" "$config" | cut -d: -f1)
grep -q "^$config:$line:.*warning: .*host $blobs is outside the CA's name constraints" <<<"$out" ||
  fail "--check-config did not warn at $config:$line about $blobs: $out"

start_shoald "$config"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"
proxied() { HTTPS_PROXY=$SHOALD_PROXY https_proxy=$SHOALD_PROXY "$@"; }

info "the registry is hijacked: a blob GET and an ORAS pull through shoald"
token=$(registry_token)
blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
code=$(proxied curl -sS -L --cacert "$bundle" -o "$TEST_TMP/blob" -w '%{http_code}' \
  -H "Authorization: Bearer $token" "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob") ||
  fail "curl of the blob through shoald failed"
assert_eq "$code" 200 "blob GET status"
assert_eq "$(sha256_of "$TEST_TMP/blob")" "$blob" "blob digest"
proxied env SSL_CERT_FILE="$bundle" "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TEST_TMP/oras" >/dev/null ||
  fail "ORAS pull through shoald failed"
assert_same_file "$TEST_TMP/oras/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" "SIF pulled through shoald"
assert_log_has ".msg == \"connect\" and .host == \"$reg:443\" and .route == \"hijack\""

# issuer HOST SNI: the issuer CN of the certificate a client sees through a
# CONNECT to HOST:443 offering SNI.
issuer() {
  local pem
  pem=$(timeout 10 openssl s_client -proxy "127.0.0.1:$SHOALD_PROXY_PORT" -connect "$1:443" -servername "$2" \
    </dev/null 2>"$TEST_TMP/s_client.err") || { cat "$TEST_TMP/s_client.err" >&2; fail "s_client via shoald to $1 failed"; }
  openssl x509 -noout -issuer -nameopt multiline <<<"$pem" | awk -F' = ' '/commonName/ { print $2 }'
}
assert_eq "$(issuer "$reg" "$reg")" "Shoal site CA" "issuer of the registry's certificate through shoald"

info "$blobs is tunnelled: the client sees the origin's certificate"
assert_eq "$(issuer "$blobs" "$blobs")" "Shoal test origin CA" "issuer of $blobs's certificate through shoald"
code=$(proxied curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" \
  "$SHOAL_TEST_BLOBS_URL/shoal-probe") || fail "curl to $blobs through shoald (origin CA only) failed"
assert_eq "$code" 404 "status from the blob store through the tunnel"
assert_log_has ".msg == \"connect\" and .host == \"$blobs:443\" and .route == \"tunnel\""
assert_log_has "(.msg | startswith(\"not hijacking a host outside\")) and .host == \"$blobs\"
  and (.ca_constraints | contains(\"DNS:$reg\"))"
assert_eq "$(log_count "(.msg | startswith(\"not hijacking\")) and .host == \"$blobs\"")" 1 \
  "warnings for $blobs (once per host)"
assert_eq "$(log_count ".route == \"hijack\" and .host == \"$blobs:443\"")" 0 "hijacked connections to $blobs"

info "a CONNECT to the registry whose SNI names $blobs is tunnelled, not minted for"
assert_eq "$(issuer "$reg" "$blobs")" "Shoal test origin CA" "issuer through CONNECT $reg with SNI $blobs"
assert_eq "$(log_count ".msg == \"leaf mint failed\"")" 0 "failed mints"
shoald_alive "after the constrained pulls"
info "ok"
