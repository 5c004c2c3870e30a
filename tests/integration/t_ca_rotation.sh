#!/bin/bash
# CA rotation: hijackHTTPS.nextCert/nextKey stage the next site CA beside the
# current one. The configuration loads with both; a bad next CA is a
# configuration error at its file:line; leaves come from the current CA
# (clients trusting both accept them); promoting the next CA and reloading
# (SIGHUP) makes new leaves come from it; a reload with a broken next CA
# keeps the running configuration. No origin is contacted: the leaf is
# minted and presented before Shoal dials anyone.
. "$(dirname "$0")/lib.sh"

need_cmd openssl jq
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
gen=$SHOAL_ROOT/tools/gen-ca.sh
"$gen" "$TEST_TMP/ca1" --cn "Shoal rotation CA 1" >/dev/null || fail "gen-ca.sh ca1 failed"
"$gen" "$TEST_TMP/ca2" --cn "Shoal rotation CA 2" >/dev/null || fail "gen-ca.sh ca2 failed"
host=rotation.shoal.test
cat "$TEST_TMP/ca1/ca.crt" "$TEST_TMP/ca2/ca.crt" >"$TEST_TMP/both.pem"

# write_config FILE CERT_DIR [NEXT_CERT NEXT_KEY]
write_config() {
  {
    echo "hijackHTTPS:"
    echo "  cert: $2/ca.crt"
    echo "  key: $2/ca.key"
    if [ -n "${3:-}" ]; then
      echo "  nextCert: $3"
      echo "  nextKey: $4"
    fi
    echo "  hosts:"
    echo "    - regx: $host"
  } >"$1"
}

# check_error FILE WANT: --check-config must fail on FILE with an error at
# hijackHTTPS.nextCert (or nextKey) on the line that holds it, containing WANT.
check_error() {
  local file=$1 want=$2 out line
  if out=$("$BUILD/shoald" --check-config -c "$file" 2>&1); then fail "--check-config accepted $file: $out"; fi
  line=$(grep -n 'next\(Cert\|Key\):' "$file" | head -n 1 | cut -d: -f1)
  grep -qF "$file:$line:" <<<"$out" || fail "no error at $file:$line in: $out"
  grep -qF "$want" <<<"$out" || fail "error lacks '$want': $out"
}

info "a configuration with the current and the next CA loads"
cfg=$TEST_TMP/shoald.yaml
write_config "$cfg" "$TEST_TMP/ca1" "$TEST_TMP/ca2/ca.crt" "$TEST_TMP/ca2/ca.key"
"$BUILD/shoald" --check-config -c "$cfg" >&2 || fail "--check-config rejected current + next CA"

info "bad next CAs are configuration errors at file:line"
write_config "$TEST_TMP/bad-key.yaml" "$TEST_TMP/ca1" "$TEST_TMP/ca2/ca.crt" "$TEST_TMP/ca1/ca.key"
check_error "$TEST_TMP/bad-key.yaml" "hijackHTTPS.nextCert: cannot use the next hijack CA: $TEST_TMP/ca1/ca.key: key does not match"
write_config "$TEST_TMP/missing.yaml" "$TEST_TMP/ca1" "$TEST_TMP/nope.crt" "$TEST_TMP/ca2/ca.key"
check_error "$TEST_TMP/missing.yaml" "$TEST_TMP/nope.crt: cannot read"
write_config "$TEST_TMP/same.yaml" "$TEST_TMP/ca1" "$TEST_TMP/ca1/ca.crt" "$TEST_TMP/ca1/ca.key"
check_error "$TEST_TMP/same.yaml" "the next CA is the current one"
cp "$TEST_TMP/ca2/ca.key" "$TEST_TMP/loose.key" && chmod 644 "$TEST_TMP/loose.key"
write_config "$TEST_TMP/loose.yaml" "$TEST_TMP/ca1" "$TEST_TMP/ca2/ca.crt" "$TEST_TMP/loose.key"
check_error "$TEST_TMP/loose.yaml" "permissions 0644 are too open"
write_config "$TEST_TMP/half.yaml" "$TEST_TMP/ca1"
sed -i "/^  key:/a\\  nextCert: $TEST_TMP/ca2/ca.crt" "$TEST_TMP/half.yaml"
check_error "$TEST_TMP/half.yaml" "nextCert is given without nextKey"

# issuer: prints the CN of the issuer of the leaf Shoal presents for $host.
issuer() {
  local pem
  pem=$(timeout 10 openssl s_client -proxy "127.0.0.1:$SHOALD_PROXY_PORT" -connect "$host:443" \
    -servername "$host" -CAfile "$TEST_TMP/both.pem" -verify_return_error </dev/null 2>"$TEST_TMP/s_client.err") ||
    { cat "$TEST_TMP/s_client.err" >&2; fail "TLS through shoald to $host failed (a client trusting both CAs)"; }
  openssl x509 -noout -issuer -nameopt multiline <<<"$pem" | awk -F' = ' '/commonName/ { print $2 }'
}

info "leaves come from the current CA; clients trusting both accept them"
start_shoald "$cfg"
assert_log_has '.msg == "site CA: mints the leaves" and (.subject | contains("Shoal rotation CA 1"))'
assert_log_has '.msg == "next site CA: staged for rotation, not minting" and (.subject | contains("Shoal rotation CA 2"))'
assert_eq "$(issuer)" "Shoal rotation CA 1" "leaf issuer before the rotation"

info "promote: the next CA becomes current, reload"
mark=$(log_mark "$(shoal_log)")
write_config "$cfg" "$TEST_TMP/ca2"
kill -HUP "$SHOALD_PID"
deadline=$((SECONDS + 10))
until log_since "$(shoal_log)" "$mark" | grep -q '"configuration reloaded"'; do
  [ "$SECONDS" -lt "$deadline" ] || fail "no 'configuration reloaded' after SIGHUP"
  sleep 0.1
done
assert_eq "$(issuer)" "Shoal rotation CA 2" "leaf issuer after promotion"

info "a reload with a broken next CA keeps the running configuration"
mark=$(log_mark "$(shoal_log)")
write_config "$cfg" "$TEST_TMP/ca1" "$TEST_TMP/ca2/ca.crt" "$TEST_TMP/ca1/ca.key"
kill -HUP "$SHOALD_PID"
deadline=$((SECONDS + 10))
until log_since "$(shoal_log)" "$mark" | grep -q 'reload failed'; do
  [ "$SECONDS" -lt "$deadline" ] || fail "no 'reload failed' after SIGHUP with a broken next CA"
  sleep 0.1
done
assert_eq "$(issuer)" "Shoal rotation CA 2" "leaf issuer after a failed reload"
shoald_alive "after the rotation"
info "ok"
