#!/bin/bash
# P2P on one machine (loopback): a scheduler and two shoalds side by side,
# each with its own proxy, peer, metrics and admin addresses, against the
# real registry fixture (which redirects blobs to its blob store).
#   - peer A pulls the ~8 MiB layer (2 MiB pieces): its client gets the
#     right bytes; A fetched every piece from the origin with Range requests
#     carrying no registry token at the blob store; "peer task done" says
#     bytes_origin = size;
#   - peer B (p2p.keepAlive: 0s) pulls the same layer: the right bytes,
#     bytes_peer = size and bytes_origin = 0, and the blob store served no
#     byte of it to B; every request of B's went on a new connection;
#   - across both pulls the blob store sent the blob's bytes about once
#     (<= 1.1 x size);
#   - the upload server answers an unsigned piece request and a signed one
#     for a task it does not hold with the same 403;
#   - p2p.tls: two more peers D and E with `tls: true` (and a scheduler of
#     their own, so they never meet the plain peers) pull the layer, E every
#     piece from D; D's upload server gives a plain HTTP client no answer,
#     and answers a TLS 1.2 DHE-PSK client holding the derived key (403 for
#     an unsigned request); E's requests after the first to D and to the
#     scheduler go over kept-alive connections (no TLS handshake per piece);
#   - a swarm the scheduler knows with another length (a peer that lies, or
#     an object that changed): the scheduler answers 409, and peer A fetches
#     the small layer from the origin at once, with a warning, instead of
#     leaving its client waiting;
#   - with the scheduler stopped, a third peer C still pulls the layer (from
#     the origin) and logs a warning that no scheduler is reachable.
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq cmp python3
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
fixture_up
site=$TEST_TMP/site-ca
make_ca "$site"
bundle=$TEST_TMP/client-cas.pem
cat "$site/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$bundle"

secret=$TEST_TMP/cluster.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
chmod 600 "$secret"

config=$TEST_TMP/shoald.yaml
cat >"$config" <<EOF
proxy:
  proxies:
    - regx: blobs/sha256.*
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: $SHOAL_TEST_REGISTRY_HOST
    - regx: $SHOAL_TEST_BLOBS_HOST
tls:
  trustStore: $SHOAL_TEST_ORIGIN_CA
p2p:
  clusterSecretFile: $secret
EOF

# start_scheduler PORT: returns once it answers /healthz; sets SCHED_PID.
start_scheduler() {
  local port=$1 deadline=$((SECONDS + 15))
  # A soft descriptor limit of 1024, as a login shell hands down: the
  # scheduler raises it (peers keep their connections to it open).
  (ulimit -Sn 1024 && exec "$BUILD/shoald" scheduler --listen "127.0.0.1:$port" --cluster-secret-file "$secret" \
    --log-dir "$TEST_TMP/sched-$port") </dev/null >"$TEST_TMP/sched-$port.out" 2>&1 &
  SCHED_PID=$!
  on_exit stop_pid "$SCHED_PID"
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    kill -0 "$SCHED_PID" 2>/dev/null || { cat "$TEST_TMP/sched-$port.out" >&2; fail "scheduler exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "scheduler not ready after 15 s"
    sleep 0.1
  done
}
sched_port=$(free_port)
start_scheduler "$sched_port"
sched_pid=$SCHED_PID
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -gt 1024 ]; then
  assert_log_has ".msg == \"scheduler started\" and .fd_limit == $hard" "$TEST_TMP/sched-$sched_port/core.log"
fi

# start_peer NAME [CONFIG SCHEDULER_PORT]: a shoald with its own peer port;
# sets NAME_PROXY, NAME_LOG, NAME_PID, NAME_METRICS, NAME_PEER.
start_peer() {
  local name=$1 cfg=${2:-$config} sport=${3:-$sched_port} peer
  peer=$(free_port)
  start_shoald "$cfg" --scheduler "127.0.0.1:$sport" --peer-listen "127.0.0.1:$peer"
  printf -v "${name}_PROXY" %s "$SHOALD_PROXY"
  printf -v "${name}_LOG" %s "$SHOALD_LOG_DIR/core.log"
  printf -v "${name}_PID" %s "$SHOALD_PID"
  printf -v "${name}_METRICS" %s "$SHOALD_METRICS_PORT"
  printf -v "${name}_PEER" %s "$peer"
  printf -v "${name}_ADMIN" %s "$SHOALD_ADMIN_SOCKET"
}

blob=$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST
hex=${blob#sha256:}
size=$SHOAL_TEST_HELLO_BIG_LAYER_SIZE
url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$blob
token=$(registry_token) || fail "no token from the fixture"

# blob-store bytes of the blob's data since a mark
store_bytes() {
  log_since "$SHOAL_TEST_BLOBS_LOG" "$1" |
    jq -R --arg h "$hex" 'fromjson? | select(.method == "GET" and (.uri | contains($h))) | .bytes' |
    jq -s 'add // 0'
}
pull() { # PROXY OUT
  curl -sS --max-time 60 -x "$1" --cacert "$bundle" -H "Authorization: Bearer $token" -o "$2" -w '%{http_code}' "$url"
}
done_line() { # LOG: the task's "peer task done" line
  jq -c --arg t "$hex" 'select((.msg | startswith("peer task done")) and .task == $t)' "$1" | tail -n 1
}
wait_done() { # LOG
  local deadline=$((SECONDS + 30))
  until [ -n "$(done_line "$1")" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no peer task done in $1 after 30 s"
    sleep 0.2
  done
}

start_peer A
# B with keep-alive off: a connection per request (checked below).
b_config=$TEST_TMP/shoald-b.yaml
{ cat "$config"; echo "  keepAlive: 0s"; } >"$b_config"
start_peer B "$b_config"
store_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")

info "peer A pulls $blob ($size bytes)"
code=$(pull "$A_PROXY" "$TEST_TMP/a.body") || fail "peer A pull failed"
assert_eq "$code" 200 "peer A status"
assert_eq "$(sha256_of "$TEST_TMP/a.body")" "$blob" "peer A body digest"
wait_done "$A_LOG"
line=$(done_line "$A_LOG")
assert_eq "$(jq -r .bytes_origin <<<"$line")" "$size" "peer A bytes_origin"
assert_eq "$(jq -r .bytes_peer <<<"$line")" 0 "peer A bytes_peer"
sleep 0.5
a_store=$(store_bytes "$store_mark")
[ "$a_store" -ge "$size" ] || fail "blob store sent $a_store bytes for peer A's pull, want >= $size"
ranges=$(log_since "$SHOAL_TEST_BLOBS_LOG" "$store_mark" |
  jq -R --arg h "$hex" 'fromjson? | select(.method == "GET" and (.uri | contains($h))) | .status' | grep -c '^206$' || true)
pieces=$(((size + (2 << 20) - 1) >> 21))
[ "$ranges" -ge "$pieces" ] || fail "blob store answered $ranges Range requests (206), want one per piece ($pieces)"
assert_eq "$(log_since "$SHOAL_TEST_BLOBS_LOG" "$store_mark" | jq -s '[.[] | select(.auth == "yes")] | length')" 0 \
  "blob-store requests carrying the registry token"

# A's pieces from the origin share kept-alive connections. The registry
# redirects every blob GET to its blob store: two requests a piece, on at
# most two connections to each (two Range fetches in flight per task).
scrape=$(curl -sf "http://127.0.0.1:$A_METRICS/metrics") || fail "peer A metrics"
o_new=$(awk '$1 == "shoal_origin_range_requests_total{connection=\"new\"}" { print $2 }' <<<"$scrape")
o_reused=$(awk '$1 == "shoal_origin_range_requests_total{connection=\"reused\"}" { print $2 }' <<<"$scrape")
info "peer A's Range requests to the origin: ${o_new:-?} on new connections, ${o_reused:-?} on kept-alive ones"
[ "$((${o_new:-0} + ${o_reused:-0}))" -ge $((2 * pieces)) ] || fail "peer A sent fewer than two Range requests a piece"
[ "${o_new:-99}" -le 4 ] || fail "peer A opened ${o_new:-?} connections to the origin (want <= 4)"
[ "${o_reused:-0}" -ge $((2 * pieces - 4)) ] || fail "peer A reused origin connections ${o_reused:-?} times (want >= $((2 * pieces - 4)))"

info "peer B pulls the same layer: every piece from peer A"
store_mark=$(log_mark "$SHOAL_TEST_BLOBS_LOG")
code=$(pull "$B_PROXY" "$TEST_TMP/b.body") || fail "peer B pull failed"
assert_eq "$code" 200 "peer B status"
assert_same_file "$TEST_TMP/b.body" "$TEST_TMP/a.body" "peer B vs peer A"
wait_done "$B_LOG"
line=$(done_line "$B_LOG")
assert_eq "$(jq -r .bytes_peer <<<"$line")" "$size" "peer B bytes_peer"
assert_eq "$(jq -r .bytes_origin <<<"$line")" 0 "peer B bytes_origin"
sleep 0.5
assert_eq "$(store_bytes "$store_mark")" 0 "blob-store bytes for peer B's pull"
total=$((a_store))
[ "$total" -le $((size * 11 / 10)) ] || fail "blob store sent $total bytes for two pulls of $size"
b_peer=$(curl -sf "http://127.0.0.1:$B_METRICS/metrics" | awk '$1 == "shoal_p2p_bytes_total{source=\"peer\"}" { print $2 }')
assert_eq "$b_peer" "$size" "peer B shoal_p2p_bytes_total{source=\"peer\"}"
scrape=$(curl -sf "http://127.0.0.1:$B_METRICS/metrics") || fail "peer B metrics"
b_reused=$(awk '$1 == "shoal_p2p_requests_total{connection=\"reused\"}" { print $2 }' <<<"$scrape")
b_new=$(awk '$1 == "shoal_p2p_requests_total{connection=\"new\"}" { print $2 }' <<<"$scrape")
info "peer B (keepAlive: 0s): requests on new connections ${b_new:-?}, on kept-alive ones ${b_reused:-?}"
assert_eq "$b_reused" 0 "peer B (keepAlive: 0s) requests on kept-alive connections"
if [ -z "$b_new" ] || [ "$b_new" -lt 5 ]; then
  fail "peer B made ${b_new:-?} requests on new connections (want >= 5: four pieces and a scheduler call)"
fi
# A keeps the pieces it verified in memory (p2p.pieceMemory, 64 MiB by
# default): B got every piece from there, none read back from A's disk.
scrape=$(curl -sf "http://127.0.0.1:$A_METRICS/metrics") || fail "peer A metrics"
a_mem=$(awk '$1 == "shoal_upload_started_total{from=\"memory\"}" { print $2 }' <<<"$scrape")
a_disk=$(awk '$1 == "shoal_upload_started_total{from=\"disk\"}" { print $2 }' <<<"$scrape")
info "peer A's uploads to B: ${a_mem:-?} from memory, ${a_disk:-?} from disk"
assert_eq "$a_disk" 0 "peer A uploads read from disk"
[ "${a_mem:-0}" -ge "$pieces" ] || fail "peer A sent ${a_mem:-?} pieces from memory, want >= $pieces"

info "upload server: unsigned and not-held requests get the same 403"
r1=$(curl -s -o "$TEST_TMP/r1" -w '%{http_code}' "http://127.0.0.1:$A_PEER/v1/tasks/$hex/pieces/0")
assert_eq "$r1" 403 "unsigned piece request"
other=$(printf '%064d' 7)
r2=$(python3 - "$secret" "$A_PEER" "$other" "$TEST_TMP/r2" <<'PY'
import hashlib, hmac, os, sys, time, urllib.request
secret = open(sys.argv[1], 'rb').read().strip()
path = f"/v1/tasks/{sys.argv[3]}/pieces/0"
ts, nonce = str(int(time.time())), os.urandom(16).hex()
msg = "\n".join(["shoal-req-v1", "GET", path, ts, nonce, hashlib.sha256(b"").hexdigest()]).encode()
sig = hmac.new(secret, msg, hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[2]}{path}", headers={
    "X-Shoal-Protocol": "1", "X-Shoal-Time": ts, "X-Shoal-Nonce": nonce, "X-Shoal-Signature": sig})
try:
    r = urllib.request.urlopen(req, timeout=10); body = r.read(); code = r.status
except urllib.error.HTTPError as e:
    body = e.read(); code = e.code
open(sys.argv[4], 'wb').write(body)
print(code)
PY
)
assert_eq "$r2" 403 "signed request for a task peer A does not hold"
assert_same_file "$TEST_TMP/r2" "$TEST_TMP/r1" "403 bodies"

info "p2p.tls: peer E pulls the layer from peer D over TLS"
tls_config=$TEST_TMP/shoald-tls.yaml
{ cat "$config"; echo "  tls: true"; } >"$tls_config"
tls_sched_port=$(free_port)
start_scheduler "$tls_sched_port"
# D keeps no piece in memory once written (p2p.pieceMemory: 0): E's pieces
# are read back from D's disk, the other upload path.
d_config=$TEST_TMP/shoald-d.yaml
{ cat "$tls_config"; echo "  pieceMemory: 0"; } >"$d_config"
start_peer D "$d_config" "$tls_sched_port"
start_peer E "$tls_config" "$tls_sched_port"
code=$(pull "$D_PROXY" "$TEST_TMP/d.body") || fail "peer D pull failed"
assert_eq "$code" 200 "peer D status"
assert_same_file "$TEST_TMP/d.body" "$TEST_TMP/a.body" "peer D vs peer A"
wait_done "$D_LOG"
assert_eq "$(jq -r .bytes_origin <<<"$(done_line "$D_LOG")")" "$size" "peer D bytes_origin"
code=$(pull "$E_PROXY" "$TEST_TMP/e.body") || fail "peer E pull failed"
assert_eq "$code" 200 "peer E status"
assert_same_file "$TEST_TMP/e.body" "$TEST_TMP/a.body" "peer E vs peer A"
wait_done "$E_LOG"
line=$(done_line "$E_LOG")
assert_eq "$(jq -r .bytes_peer <<<"$line")" "$size" "peer E bytes_peer"
assert_eq "$(jq -r .bytes_origin <<<"$line")" 0 "peer E bytes_origin"
jq -se 'any(.[]; .msg == "p2p peer started" and .tls == true)' "$E_LOG" >/dev/null ||
  fail "peer E did not start with tls"
# Four pieces from D and a dozen or more scheduler calls: a connection each
# without keep-alive; with it, at most two to D (two pieces in flight per
# parent) and a few to the scheduler (calls that overlap).
scrape=$(curl -sf "http://127.0.0.1:$E_METRICS/metrics") || fail "peer E metrics"
e_new=$(awk '$1 == "shoal_p2p_requests_total{connection=\"new\"}" { print $2 }' <<<"$scrape")
e_reused=$(awk '$1 == "shoal_p2p_requests_total{connection=\"reused\"}" { print $2 }' <<<"$scrape")
info "peer E: requests on new connections ${e_new:-?}, on kept-alive ones ${e_reused:-?}"
if [ -z "$e_new" ] || [ "$e_new" -lt 1 ] || [ "$e_new" -gt 6 ]; then
  fail "peer E opened ${e_new:-?} connections (want 1..6)"
fi
if [ -z "$e_reused" ] || [ "$e_reused" -lt 4 ]; then
  fail "peer E sent ${e_reused:-?} requests on kept-alive connections (want >= 4)"
fi
scrape=$(curl -sf "http://127.0.0.1:$D_METRICS/metrics") || fail "peer D metrics"
d_mem=$(awk '$1 == "shoal_upload_started_total{from=\"memory\"}" { print $2 }' <<<"$scrape")
d_disk=$(awk '$1 == "shoal_upload_started_total{from=\"disk\"}" { print $2 }' <<<"$scrape")
d_held=$(awk '$1 == "shoal_p2p_piece_memory_bytes" { print $2 }' <<<"$scrape")
info "peer D (pieceMemory: 0) uploads to E: ${d_mem:-?} from memory, ${d_disk:-?} from disk; ${d_held:-?} bytes held"
assert_eq "$d_mem" 0 "peer D (pieceMemory: 0) uploads from memory"
assert_eq "$d_held" 0 "peer D (pieceMemory: 0) piece bytes held after its download"
[ "${d_disk:-0}" -ge "$pieces" ] || fail "peer D sent ${d_disk:-?} pieces from disk, want >= $pieces"
# Plain HTTP to a TLS upload server: no HTTP answer at all (curl fails,
# empty reply or reset, status 000).
rc=0
plain=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$D_PEER/v1/tasks/$hex/pieces/0") || rc=$?
[ "$rc" -ne 0 ] || fail "plain curl to peer D's TLS upload server succeeded (status $plain)"
assert_eq "$plain" 000 "plain HTTP status from a TLS upload server"
# And TLS with the key derived from the secret works (openssl's own client):
# the unsigned request gets the usual 403, inside TLS.
psk=$(python3 - "$secret" <<'PY'
import hashlib, hmac, sys
secret = open(sys.argv[1], 'rb').read().rstrip()
prk = hmac.new(b"shoal-p2p-psk-v1", secret, hashlib.sha256).digest()
print(hmac.new(prk, b"\x01", hashlib.sha256).hexdigest())
PY
)
printf 'GET /v1/tasks/%s/pieces/0 HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n' "$hex" |
  timeout 10 openssl s_client -connect "127.0.0.1:$D_PEER" -tls1_2 -cipher DHE-PSK-AES128-GCM-SHA256 \
    -psk_identity shoal-p2p-v1 -psk "$psk" -quiet -ign_eof >"$TEST_TMP/s_client.out" 2>"$TEST_TMP/s_client.err" ||
  true
answer=$(head -n 1 "$TEST_TMP/s_client.out" | cut -d' ' -f1,2)
[ -n "$answer" ] || cat "$TEST_TMP/s_client.err" >&2
assert_eq "$answer" "HTTP/1.1 403" "TLS (DHE-PSK) request to peer D"

info "shoalctl status shows the peer address and the scheduler's reachability"
st=$("$BUILD/shoalctl" --socket "$A_ADMIN" --json status) || fail "shoalctl status on peer A failed"
assert_eq "$(jq -r '.p2p.schedulers[0].address' <<<"$st")" "127.0.0.1:$sched_port" "status: scheduler address"
assert_eq "$(jq -r '.p2p.schedulers[0].reachable' <<<"$st")" true "status: scheduler reachable"
assert_eq "$(jq -r '.listeners[] | select(.kind == "peer") | .address' <<<"$st")" "127.0.0.1:$A_PEER" "status: peer listener"
# Captured first: under pipefail, grep -q leaving early could fail the pipe.
table=$("$BUILD/shoalctl" --socket "$A_ADMIN" status) || fail "shoalctl status (table) on peer A failed"
grep -q "scheduler 127.0.0.1:$sched_port reachable" <<<"$table" ||
  fail "shoalctl status (table) does not show the scheduler as reachable"

info "a swarm with another length: peer A fetches from the origin"
small=$SHOAL_TEST_HELLO_SMALL_LAYER_DIGEST
small_size=$SHOAL_TEST_HELLO_SMALL_LAYER_SIZE
# A peer of the cluster (it holds the secret) tells the scheduler the small
# layer is one byte longer, before anyone else asks for it.
python3 - "$secret" "$sched_port" "${small#sha256:}" "$small_size" <<'PY' || fail "the lying announce was not taken"
import hashlib, hmac, json, os, sys, time, urllib.request
secret, port, task, size = open(sys.argv[1], 'rb').read().strip(), sys.argv[2], sys.argv[3], int(sys.argv[4]) + 1
def post(path, body):
    data = json.dumps(body).encode()
    ts, nonce = str(int(time.time())), os.urandom(16).hex()
    msg = "\n".join(["shoal-req-v1", "POST", path, ts, nonce, hashlib.sha256(data).hexdigest()]).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST", headers={
        "Content-Type": "application/json", "X-Shoal-Protocol": "1", "X-Shoal-Time": ts,
        "X-Shoal-Nonce": nonce, "X-Shoal-Signature": hmac.new(secret, msg, hashlib.sha256).hexdigest()})
    return urllib.request.urlopen(req, timeout=10).status
pieces = (size + (2 << 20) - 1) >> 21
assert post("/v1/register", {"v": 1, "peer": "liar", "addr": "127.0.0.1:9", "labels": {}, "slots": 1}) == 200
assert post("/v1/announce", {"v": 1, "peer": "liar", "task": task, "length": size, "piece_size": 2 << 20,
                             "have": "00" * ((pieces + 7) // 8), "hashes": {}, "complete": False}) == 200
PY
small_url=$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$small
t0=$SECONDS
code=$(curl -sS --max-time 60 -x "$A_PROXY" --cacert "$bundle" -H "Authorization: Bearer $token" \
  -o "$TEST_TMP/small.body" -w '%{http_code}' "$small_url") || fail "peer A pull of the small layer failed"
assert_eq "$code" 200 "small layer status"
assert_eq "$(sha256_of "$TEST_TMP/small.body")" "$small" "small layer digest"
[ $((SECONDS - t0)) -le 10 ] || fail "the small layer took $((SECONDS - t0)) s (waiting on the scheduler?)"
assert_log_has ".msg == \"the scheduler knows this task with another length; fetching from the origin\" and .task == \"${small#sha256:}\"" "$A_LOG"

info "scheduler stopped: peer C still pulls (from the origin)"
stop_pid "$sched_pid"
start_peer C
code=$(pull "$C_PROXY" "$TEST_TMP/c.body") || fail "peer C pull failed"
assert_eq "$code" 200 "peer C status"
assert_same_file "$TEST_TMP/c.body" "$TEST_TMP/a.body" "peer C vs peer A"
wait_done "$C_LOG"
assert_eq "$(jq -r .bytes_origin <<<"$(done_line "$C_LOG")")" "$size" "peer C bytes_origin"
grep -q 'no scheduler reachable' "$C_LOG" || fail "peer C did not warn that no scheduler is reachable"
assert_eq "$("$BUILD/shoalctl" --socket "$C_ADMIN" --json status | jq -r '.p2p.schedulers[0].reachable')" false \
  "status on peer C: scheduler reachable"
for p in "$A_PID" "$B_PID" "$C_PID" "$D_PID" "$E_PID"; do kill -0 "$p" 2>/dev/null || fail "a shoald died"; done
info "ok"
