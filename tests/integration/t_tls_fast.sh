#!/bin/bash
# The libcrypto record path (tls.fastRecords) interoperates, byte for byte,
# with real TLS stacks on the client-facing side of a hijacked CONNECT:
#
#   curl (OpenSSL)      1 GiB download from nginx
#   Go (crypto/tls)     the same 1 GiB as a blob, oras:// pull through the
#                       registry fixture (the task engine fetches it)
#   openssl s_client    1 GiB download, the raw response stream hashed
#   curl -T             100 MiB PUT upload to fault_origin.py's /echo, which
#                       reports the sha256 of the body it received
#   curl, fastRecords: false   64 MiB download, mbedTLS does every record
#
# Each transfer must arrive intact (size and sha256), and its core.log
# "connect" line must say which record layer protected the client's
# records: "libcrypto" with an AES-GCM suite, or "mbedtls" when the fast
# path is off. The origins are nginx and fault_origin.py on the fixture's
# blob-store address with a leaf for its host name (signed by the fixture's
# origin CA), on ports of their own; shoald hijacks that host name. The
# origin side (shoald to nginx, the sink and the registry) uses the same
# record layer, so the transfers cover it too, though no log line names it.
# About 30 s on 2 cores, a third of it pushing the 1 GiB blob (directly) to
# the registry for the Go client; at its peak the test holds ~4.5 GiB on disk.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq openssl nginx python3
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
[ -x "${SHOAL_TEST_ORAS:-}" ] || skip "ORAS client not built ($SHOAL_TEST_ORAS)"

host=$SHOAL_TEST_BLOBS_HOST
ip=$SHOAL_TEST_BLOBS_IP
gib=$((1 << 30))

# hash_of FILE: prints FILE's sha256 in hex (openssl is about four times
# faster than sha256sum here, which matters at 1 GiB).
hash_of() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }

site=$TEST_TMP/site-ca
make_ca "$site"
# Go (the oras client) also needs the origin CA: auth.* is tunnelled, so it
# sees the fixture's real certificate there.
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"

info "origin leaf for $host, signed by the fixture's origin CA (which shoald trusts)"
od=$TEST_TMP/origin
mkdir -p "$od"
{
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$od/leaf.key" -out "$od/leaf.csr" &&
    printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$host" >"$od/ext.cnf" &&
    openssl x509 -req -in "$od/leaf.csr" -CA "$SHOAL_TEST_ORIGIN_CA" -CAkey "$SHOAL_TEST_ORIGIN_CA_KEY" \
      -set_serial "0x$(openssl rand -hex 16)" -days 2 -extfile "$od/ext.cnf" -out "$od/leaf.crt"
} >"$od/openssl.log" 2>&1 || { cat "$od/openssl.log" >&2; fail "origin leaf for $host"; }

info "1 GiB of random data, 64 MiB and 100 MiB prefixes of it"
www=$TEST_TMP/www
mkdir -p "$www"
t0=$SECONDS
openssl rand -out "$www/big.bin" "$gib" || fail "openssl rand"
head -c $((64 << 20)) "$www/big.bin" >"$www/mid.bin"
head -c $((100 << 20)) "$www/big.bin" >"$TEST_TMP/up.bin"
big_sha=$(hash_of "$www/big.bin")
mid_sha=$(hash_of "$www/mid.bin")
up_sha=$(hash_of "$TEST_TMP/up.bin")
assert_eq "$(stat -c %s "$www/big.bin")" "$gib" "generated file size"
info "generated and hashed in $((SECONDS - t0)) s: big.bin sha256:$big_sha"

# --- origins -----------------------------------------------------------------
nport=$(free_port)
uport=$(free_port)
[ "$nport" != "$uport" ] || uport=$(free_port)
ng=$TEST_TMP/nginx
mkdir -p "$ng/tmp"
cat >"$ng/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
master_process on;
pid $ng/nginx.pid;
error_log $ng/error.log warn;
events { worker_connections 64; }
http {
  default_type application/octet-stream;
  sendfile on;
  server_tokens off;
  client_body_temp_path $ng/tmp/body;
  proxy_temp_path $ng/tmp/proxy;
  fastcgi_temp_path $ng/tmp/fastcgi;
  uwsgi_temp_path $ng/tmp/uwsgi;
  scgi_temp_path $ng/tmp/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  log_format shoal escape=json '{"request":"\$request","status":\$status,"bytes":\$bytes_sent}';
  server {
    listen $ip:$nport ssl;
    server_name $host;
    ssl_certificate $od/leaf.crt;
    ssl_certificate_key $od/leaf.key;
    access_log $ng/access.log shoal;
    root $www;
  }
}
EOF
nginx -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" </dev/null >"$ng/out" 2>&1 &
nginx_pid=$!
on_exit stop_pid "$nginx_pid"

python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --listen "$ip:$uport" \
  --cert "$od/leaf.crt" --key "$od/leaf.key" --log "$TEST_TMP/sink.requests" >"$TEST_TMP/sink.out" 2>&1 &
sink_pid=$!
on_exit stop_pid "$sink_pid"

wait_port "$ip" "$nport" 10 || { cat "$ng/out" "$ng/error.log" >&2; fail "nginx does not listen on $ip:$nport"; }
wait_port "$ip" "$uport" 10 || { cat "$TEST_TMP/sink.out" >&2; fail "upload sink does not listen on $ip:$uport"; }
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$SHOAL_TEST_ORIGIN_CA" \
  "https://$host:$nport/mid.bin") || fail "direct GET from nginx"
assert_eq "$code" 200 "direct GET from nginx"

# --- shoald ------------------------------------------------------------------
# write_config OUT [TLS_LINE...]: the fixture's config (registry and blob
# hosts hijacked with the site CA), CONNECT also allowed to our two ports;
# each TLS_LINE is added under tls:, which registry_config writes last.
write_config() {
  local out=$1 line
  shift
  registry_config "$out" "$site" "connectPorts: [443, $nport, $uport]"
  for line in "$@"; do echo "  $line" >>"$out"; done
}

# connect_line MARK HOSTPORT: prints the first "connect" line core.log
# gained after log_mark printed MARK for a CONNECT to HOSTPORT; fails after
# 5 s without one (the line is written when the tunnel closes).
connect_line() {
  local mark=$1 hp=$2 deadline=$((SECONDS + 5)) l
  while :; do
    l=$(log_since "$(shoal_log)" "$mark" |
      jq -c -R --arg hp "$hp" 'fromjson? | select(.msg == "connect" and .host == $hp)' | head -n 1)
    if [ -n "$l" ]; then
      echo "$l"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_since "$(shoal_log)" "$mark" | tail -n 20 >&2
      fail "no connect line for $hp in core.log"
    fi
    sleep 0.2
  done
}

# check_connect LINE RECORDS MIN_BYTES WHAT: LINE (from connect_line) must be
# a hijacked CONNECT answered 200, whose client records were protected by
# RECORDS ("libcrypto" or "mbedtls") with a suite matching $kAesGcm for
# libcrypto (the fast path does AES-GCM only) or any ECDHE suite for mbedtls
# (with the fast path off shoald keeps mbedTLS's preference, ChaCha20 here),
# and that carried at least MIN_BYTES in the transfer's direction
# (bytes_down, or bytes_up for a WHAT starting with "upload").
kAesGcm='^TLS-ECDHE-(ECDSA|RSA)-WITH-AES-(128|256)-GCM-SHA(256|384)$'
check_connect() {
  local line=$1 records=$2 min=$3 what=$4 dir=bytes_down suites=$kAesGcm
  [ "$records" = libcrypto ] || suites='^TLS-ECDHE-'
  case $what in upload*) dir=bytes_up ;; esac
  info "$what: $line"
  assert_eq "$(jq -r .route <<<"$line")" hijack "$what: connect route"
  assert_eq "$(jq -r .status <<<"$line")" 200 "$what: connect status"
  assert_eq "$(jq -r '.records // "none"' <<<"$line")" "$records" "$what: record layer"
  jq -e --arg re "$suites" '(.cipher // "") | test($re)' <<<"$line" >/dev/null ||
    fail "$what: cipher '$(jq -r '.cipher // ""' <<<"$line")' does not match $suites"
  jq -e --argjson min "$min" ".$dir >= \$min" <<<"$line" >/dev/null ||
    fail "$what: $dir $(jq -r ".$dir" <<<"$line") < $min"
}

config=$TEST_TMP/shoald.yaml
write_config "$config"
start_shoald "$config"
info "shoald $SHOALD_PID on $SHOALD_PROXY, fastRecords default (on)"

# --- 1. curl, 1 GiB download ---------------------------------------------------
info "1. curl: 1 GiB through the hijacked tunnel"
mark=$(log_mark "$(shoal_log)")
t0=$SECONDS
out=$(curl -sS -x "$SHOALD_PROXY" --cacert "$site/ca.crt" --max-time 60 -o "$TEST_TMP/got" \
  -w '%{http_code} %{size_download}' "https://$host:$nport/big.bin") || fail "1: curl failed: $out"
info "1: $out in $((SECONDS - t0)) s"
assert_eq "$out" "200 $gib" "1: curl status and size"
assert_eq "$(hash_of "$TEST_TMP/got")" "$big_sha" "1: sha256 of curl's 1 GiB download"
rm -f "$TEST_TMP/got"
line=$(connect_line "$mark" "$host:$nport")
check_connect "$line" libcrypto "$gib" "1 (curl)"

# --- 2. Go: oras pull of a 1 GiB blob ------------------------------------------
# The same bytes pushed (directly) as the SIF layer of sif/scratch:tls-fast;
# the proxied pull's blob GET goes through the task engine, which follows
# the registry's 307 to the blob store itself.
repo=sif/scratch
tag=tls-fast
v2=$SHOAL_TEST_STORAGE_DIR/docker/registry/v2
# Leave no 1 GiB blob in a shared fixture: drop the tag, the layer link and
# the blob's data (the token grants no delete, so not through the API).
on_exit "rm -rf '$v2/repositories/$repo/_manifests/tags/$tag' '$v2/repositories/$repo/_layers/sha256/$big_sha' '$v2/blobs/sha256/${big_sha:0:2}/$big_sha'"
info "2. pushing big.bin to $SHOAL_TEST_REGISTRY/$repo:$tag (direct)"
t0=$SECONDS
SSL_CERT_FILE=$SHOAL_TEST_ORIGIN_CA "$SHOAL_TEST_ORAS" push "$SHOAL_TEST_REGISTRY/$repo:$tag" "$www/big.bin" \
  >"$TEST_TMP/push.out" 2>"$TEST_TMP/push.err" || { tail -n 20 "$TEST_TMP/push.err" >&2; fail "2: oras push"; }
info "2: pushed in $((SECONDS - t0)) s"
info "2. Go: oras pull through the proxy"
mark=$(log_mark "$(shoal_log)")
t0=$SECONDS
HTTPS_PROXY=$SHOALD_PROXY https_proxy=$SHOALD_PROXY SSL_CERT_FILE=$bundle timeout 90 \
  "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_REGISTRY/$repo:$tag" "$TEST_TMP/oras" \
  >"$TEST_TMP/pull.out" 2>"$TEST_TMP/pull.err" || { tail -n 20 "$TEST_TMP/pull.err" >&2; fail "2: proxied oras pull"; }
info "2: pulled in $((SECONDS - t0)) s"
assert_eq "$(stat -c %s "$TEST_TMP/oras/big.bin" 2>/dev/null)" "$gib" "2: size of the oras pull"
assert_eq "$(hash_of "$TEST_TMP/oras/big.bin")" "$big_sha" "2: sha256 of the oras pull"
rm -rf "$TEST_TMP/oras"
reg_hp=$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT
# The pull may use several connections to the registry; the blob's is the big one.
deadline=$((SECONDS + 5))
until line=$(log_since "$(shoal_log)" "$mark" | jq -c -R --arg hp "$reg_hp" --argjson min "$gib" \
  'fromjson? | select(.msg == "connect" and .host == $hp and .bytes_down >= $min)' | head -n 1) && [ -n "$line" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { log_since "$(shoal_log)" "$mark" | tail -n 20 >&2; fail "2: no connect line for $reg_hp carrying 1 GiB"; }
  sleep 0.2
done
check_connect "$line" libcrypto "$gib" "2 (Go)"
assert_log_has ".msg == \"request\" and ((.path // \"\") | test(\"/blobs/sha256:$big_sha\")) and .route == \"p2p\""

# --- 3. openssl s_client, 1 GiB ------------------------------------------------
info "3. openssl s_client: 1 GiB through the hijacked tunnel"
mark=$(log_mark "$(shoal_log)")
t0=$SECONDS
# -quiet implies -ign_eof: s_client keeps reading after its stdin ends,
# until the origin closes ("Connection: close") and shoald closes with it.
rc=0
printf 'GET /big.bin HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$host" "$nport" |
  timeout 60 openssl s_client -proxy "127.0.0.1:$SHOALD_PROXY_PORT" -connect "$host:$nport" \
    -servername "$host" -CAfile "$site/ca.crt" -verify_return_error -verify_hostname "$host" -quiet \
    >"$TEST_TMP/sclient.out" 2>"$TEST_TMP/sclient.err" || rc=$?
[ "$rc" -eq 0 ] || { cat "$TEST_TMP/sclient.err" >&2; fail "3: s_client exited with status $rc (124: timed out)"; }
info "3: $(stat -c %s "$TEST_TMP/sclient.out") bytes in $((SECONDS - t0)) s"
# Prints "STATUS CONTENT_LENGTH BODY_BYTES BODY_SHA256" of the raw response.
got=$(python3 - "$TEST_TMP/sclient.out" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(65536)
    end = head.find(b"\r\n\r\n")
    if end < 0:
        sys.exit("no end of the response head in the first 64 KiB")
    lines = head[:end].decode("latin-1").split("\r\n")
    length = "-"
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = v.strip()
    h = hashlib.sha256(head[end + 4:])
    n = len(head) - end - 4
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
print(lines[0].split(" ")[1], length, n, h.hexdigest())
EOF
) || fail "3: cannot parse s_client's output"
rm -f "$TEST_TMP/sclient.out"
assert_eq "$got" "200 $gib $gib $big_sha" "3: s_client status, Content-Length, body size and sha256"
line=$(connect_line "$mark" "$host:$nport")
check_connect "$line" libcrypto "$gib" "3 (s_client)"

# --- 4. curl -T, 100 MiB upload ------------------------------------------------
info "4. curl -T: 100 MiB PUT through the hijacked tunnel"
mark=$(log_mark "$(shoal_log)")
t0=$SECONDS
curl -sS -x "$SHOALD_PROXY" --cacert "$site/ca.crt" --max-time 60 -T "$TEST_TMP/up.bin" \
  -o "$TEST_TMP/echo.json" -w '%{http_code}' "https://$host:$uport/echo" >"$TEST_TMP/put.code" ||
  fail "4: curl -T failed"
info "4: PUT in $((SECONDS - t0)) s"
assert_eq "$(cat "$TEST_TMP/put.code")" 200 "4: PUT status"
assert_eq "$(jq -r '[.method, .body_len, .body_sha256] | join(" ")' "$TEST_TMP/echo.json")" \
  "PUT $((100 << 20)) $up_sha" "4: method, size and sha256 the sink received"
line=$(connect_line "$mark" "$host:$uport")
check_connect "$line" libcrypto $((100 << 20)) "upload (4, curl -T)"

shoald_alive "after the fast-path transfers"
stop_shoald "$SHOALD_PID" "$(shoal_log shoald.out)"

# --- 5. fastRecords: false -------------------------------------------------------
info "5. tls.fastRecords: false, curl 64 MiB"
config2=$TEST_TMP/shoald-nofast.yaml
write_config "$config2" "fastRecords: false"
start_shoald "$config2"
mark=$(log_mark "$(shoal_log)")
t0=$SECONDS
out=$(curl -sS -x "$SHOALD_PROXY" --cacert "$site/ca.crt" --max-time 60 -o "$TEST_TMP/got" \
  -w '%{http_code} %{size_download}' "https://$host:$nport/mid.bin") || fail "5: curl failed: $out"
info "5: $out in $((SECONDS - t0)) s"
assert_eq "$out" "200 $((64 << 20))" "5: curl status and size"
assert_eq "$(hash_of "$TEST_TMP/got")" "$mid_sha" "5: sha256 of curl's 64 MiB download"
rm -f "$TEST_TMP/got"
line=$(connect_line "$mark" "$host:$nport")
check_connect "$line" mbedtls $((64 << 20)) "5 (curl, mbedTLS records)"
shoald_alive "after the mbedTLS-record transfer"
info "ok"
