#!/bin/bash
# variants: fast-records-off (hijacked with and without tls.fastRecords)
# Leaf minting under a burst: 200 clients open hijacked tunnels to a host no
# leaf exists for yet, all at once. shoald mints one leaf per event loop
# (the others wait for it) instead of one per connection, every client
# completes its TLS handshake with a leaf for the right name, and each gets a
# clear 502 for the refused origin (127.0.0.1:1) — none is left hanging.
. "$(dirname "$0")/lib.sh"

need_cmd curl python3
site=$TEST_TMP/site-ca
make_ca "$site"
cat >"$TEST_TMP/shoald.yaml" <<EOF
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:1$
proxy:
  connectPorts: [1]
EOF
start_shoald "$TEST_TMP/shoald.yaml" --workers 2
metric() { curl -sS "http://127.0.0.1:$SHOALD_METRICS_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
assert_eq "$(metric shoal_leaf_mints_total)" 0 "mints before the burst"

n=200
proxy_client many --proxy "127.0.0.1:$SHOALD_PROXY_PORT" --connect "127.0.0.1:1" --ca "$site/ca.crt" \
  --n "$n" --batch "$n" --timeout 30 --hold-secs 0 --path / >"$TEST_TMP/many.out" 2>"$TEST_TMP/many.err" </dev/null ||
  true
read -r _ ok failed < <(grep '^ready' "$TEST_TMP/many.out") || fail "client output: $(cat "$TEST_TMP/many.err")"
# Every connection got through the handshake (the leaf verified for the name)
# and then a 502, since nothing listens on the origin's port.
assert_eq "$ok/$failed" "0/$n" "connections idle / failed"
bad=$(grep '^failed:' "$TEST_TMP/many.err" | grep -cv "response b'HTTP/1.1 502" || true)
assert_eq "$bad" 0 "failures other than the expected 502 ($(head -c 400 "$TEST_TMP/many.err"))"
mints=$(metric shoal_leaf_mints_total)
info "$n simultaneous tunnels to a new host: $mints leaf mints"
{ [ "${mints%.*}" -ge 1 ] && [ "${mints%.*}" -le 2 ]; } || fail "$mints mints for one name on 2 event loops (want 1 or 2)"
assert_log_has '.msg == "request" and .host == "127.0.0.1" and .port == 1 and .status == 502'
info "ok"
