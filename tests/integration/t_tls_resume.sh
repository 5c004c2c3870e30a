#!/bin/bash
# variants: fast-records-off (the abbreviated handshake with and without tls.fastRecords)
# TLS session resumption on the hijacked path (tls.sessionTickets, on by
# default): a client that saved the session of one connection resumes it on
# the next with an abbreviated handshake, and data flows afterwards on the
# record layer the configuration asks for.
#
#   openssl s_client  -sess_out, then -sess_in: "New" then "Reused", each
#                     answered 200 for the manifest; the registry's ticket
#                     offered to the blob host gives a full handshake
#   s_client -quiet   the 8 MiB blob over a resumed session, its body's
#                     sha256 checked (bulk data on the fast record layer)
#   tickets off       a restarted shoald with tls.sessionTickets: false
#                     resumes nothing
#
# shoald's shoal_tls_handshakes_total{kind=full|resumed} and the "resumed"
# field of its core.log "connect" lines must agree with what the clients say.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq openssl
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"

reg=$SHOAL_TEST_REGISTRY_HOST
blobs=$SHOAL_TEST_BLOBS_HOST
want_records=libcrypto
[ "${SHOAL_TEST_FAST_RECORDS:-1}" = 1 ] || want_records=mbedtls
token=$(registry_token) || fail "token"
manifest=/v2/$SHOAL_TEST_HELLO_REPO/manifests/$SHOAL_TEST_HELLO_MANIFEST_DIGEST
blob=/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST

config=$TEST_TMP/shoald.yaml
registry_config "$config" "$site"
start_shoald "$config"
proxy=127.0.0.1:$SHOALD_PROXY_PORT

# s_client_get NAME HOST [S_CLIENT ARGS...]: one connection to HOST through
# the proxy sending a GET for $path (default the manifest; Connection:
# close); the transcript goes to $TEST_TMP/NAME.out.
s_client_get() {
  local name=$1 host=$2
  shift 2
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: %s\r\nConnection: close\r\n\r\n' \
    "${path:-$manifest}" "$host" "$token" "application/vnd.oci.image.manifest.v1+json" |
    timeout 30 openssl s_client -proxy "$proxy" -connect "$host:443" -servername "$host" \
      -CAfile "$site/ca.crt" -verify_return_error -ign_eof "$@" >"$TEST_TMP/$name.out" 2>&1 ||
    { tail -n 20 "$TEST_TMP/$name.out" >&2; fail "s_client $name failed"; }
}
# session_line NAME: "New" or "Reused" from the transcript.
session_line() { grep -m1 -oE '^(New|Reused), TLSv1\.2' "$TEST_TMP/$1.out" | cut -d, -f1; }
status_of() { grep -m1 -oE '^HTTP/1\.1 [0-9]+' "$TEST_TMP/$1.out" | cut -d' ' -f2; }
hs() { metric "shoal_tls_handshakes_total{kind=\"$1\"}"; }

info "s_client: a full handshake saves the session"
s_client_get first "$reg" -sess_out "$TEST_TMP/reg.sess"
assert_eq "$(session_line first)" New "first connection"
assert_eq "$(status_of first)" 200 "manifest over the full handshake"
grep -q "TLS session ticket lifetime hint: 3600" "$TEST_TMP/first.out" ||
  fail "no session ticket (lifetime 3600 s) in the first handshake"
assert_eq "$(hs full)" 1 "full handshakes after the first connection"

info "s_client: the saved session resumes"
s_client_get second "$reg" -sess_in "$TEST_TMP/reg.sess"
assert_eq "$(session_line second)" Reused "second connection"
assert_eq "$(status_of second)" 200 "manifest over the resumed session"
grep -q "$SHOAL_TEST_HELLO_CONFIG_DIGEST" "$TEST_TMP/second.out" || fail "manifest body missing after resumption"
assert_eq "$(hs resumed)" 1 "resumed handshakes"
assert_eq "$(hs full)" 1 "full handshakes after the resumption"

info "s_client: the registry's ticket does not resume a connection to the blob host"
s_client_get other "$blobs" -sess_in "$TEST_TMP/reg.sess"
assert_eq "$(session_line other)" New "ticket offered to another host"
assert_eq "$(hs resumed)" 1 "resumed handshakes after the other host"

info "s_client: the 8 MiB blob over a resumed session"
path=$blob s_client_get bulk "$reg" -quiet -sess_in "$TEST_TMP/reg.sess"
# -quiet leaves the response alone in the transcript: head, blank line, body.
python3 -c 'import sys; d = open(sys.argv[1], "rb").read(); h, _, b = d.partition(b"\r\n\r\n")
sys.stdout.write(h.split(b"\r\n")[0].decode() + "\n"); open(sys.argv[2], "wb").write(b)' \
  "$TEST_TMP/bulk.out" "$TEST_TMP/blob" >"$TEST_TMP/bulk.status" || fail "splitting the blob response"
assert_eq "$(cat "$TEST_TMP/bulk.status")" "HTTP/1.1 200 OK" "blob status after resumption"
assert_eq "$(sha256_of "$TEST_TMP/blob")" "$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST" "blob after resumption"
assert_eq "$(hs resumed)" 2 "resumed handshakes after the blob"

info "core.log: resumed connections, on the $want_records record layer"
assert_log_has ".msg == \"connect\" and .route == \"hijack\" and .resumed == true and .records == \"$want_records\""
assert_eq "$(log_count ".msg == \"connect\" and .route == \"hijack\" and .resumed == true")" 2 \
  "connect lines with resumed: true"
assert_eq "$(log_count ".msg == \"connect\" and .route == \"hijack\" and .records != \"$want_records\"")" 0 \
  "hijacked connections not on the $want_records record layer"

info "tls.sessionTickets: false resumes nothing"
stop_shoald "$SHOALD_PID"
off=$TEST_TMP/shoald-off.yaml
awk '{ print } /^tls:[[:space:]]*$/ { print "  sessionTickets: false" }' "$config" >"$off"
start_shoald "$off"
proxy=127.0.0.1:$SHOALD_PROXY_PORT
s_client_get off1 "$reg" -sess_out "$TEST_TMP/off.sess"
grep -q "TLS session ticket lifetime hint" "$TEST_TMP/off1.out" && fail "a ticket was issued with sessionTickets: false"
s_client_get off2 "$reg" -sess_in "$TEST_TMP/off.sess"
assert_eq "$(session_line off2)" New "resumption with sessionTickets: false"
assert_eq "$(status_of off2)" 200 "manifest without tickets"
assert_eq "$(hs resumed)" 0 "resumed handshakes without tickets"
assert_eq "$(hs full)" 2 "full handshakes without tickets"
shoald_alive "end"
