#!/bin/bash
# Faults on the P2P path, on one machine (loopback): a scheduler and shoalds
# side by side (as in t_p2p_local.sh), blobs from
# tests/fixtures/fault_origin.py (plain HTTP, Range requests per piece;
# pieces are 2 MiB):
#   a. the origin resets in mid-piece: the piece is asked for again with the
#      same Range, the client gets 200 and every byte;
#      it stalls in mid-piece (p2p.stallTime 1s): the piece is cancelled
#      and asked for again, the client gets every byte;
#      it closes each kept-alive connection when the next request comes
#      (dropnext): that request goes again on a new connection, no piece
#      fails;
#   b. an object named by its URL (/obj) changes after a reset: its pieces
#      carry If-Range, the origin answers 200, the download fails and the
#      client's transfer fails too (its own Range request for the rest
#      carries If-Range as well): never a splice of two versions;
#   c. the origin's certificate comes from a CA outside tls.trustStore
#      (a hijacked blob host): 502 and a log line naming the verification;
#   d. a parent peer is killed (SIGKILL) in mid-piece: two seeds hold the
#      blob (8 MiB: four pieces), uploads limited to 1 MiB/s so a piece
#      takes a second or two;
#      the downloader logs the failed piece fetch from the killed parent
#      with 0 < bytes < piece_bytes, fetches the piece from the other seed
#      (bytes_peer = size, bytes_origin = 0) and its client gets 200 and
#      every byte; then the other seed, now the only live parent, is killed
#      in mid-piece under a new downloader: it fetches what only dead
#      parents held from the origin (bytes_origin > 0) and its client gets
#      every byte (the scheduler forgets dead peers only after a minute
#      here, longer than curl's --max-time);
#   e. a peer is SIGKILLed with pieces on disk (origin paced): its client's
#      transfer fails; restarted on the same data dir and peer address,
#      tmp/ is empty and nothing of the blob is stored; the next pull gets
#      every byte and stores it without asking the killed incarnation for
#      a piece (the scheduler forgot it when the new one registered), the
#      one after is served from the store;
#   f. the data dir (a 6 MiB tmpfs) fills up under a 12 MiB blob: the
#      download fails ("no space" in core.log) but the client gets every
#      byte (the verified pieces, then the rest from the origin); nothing
#      is kept in tmp/ or tasks/; a small blob is stored after;
#   g. the scheduler is killed (SIGKILL) while two peers download (origin
#      paced): both warn "no scheduler reachable; fetching from the
#      origin" and their clients get every byte.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need_root
need_cmd curl jq python3 openssl mount umount
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
site=$TEST_TMP/site-ca
make_ca "$site"
make_origin_cert "$TEST_TMP/rogue" "IP:127.0.0.1"
start_fault_origin ORIGIN
start_fault_origin ROGUE --cert "$TEST_TMP/rogue/leaf.crt" --key "$TEST_TMP/rogue/leaf.key"
base=http://127.0.0.1:$ORIGIN_PORT

secret=$TEST_TMP/cluster.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
chmod 600 "$secret"
# peer_config OUT [P2P_LINE...]: the peers' configuration.
peer_config() {
  local out=$1 line
  shift
  cat >"$out" <<EOF
proxy:
  connectPorts: [$ROGUE_PORT]
  proxies:
    - regx: blobs/sha256.*
    - regx: /obj
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: ^127\.0\.0\.1:$ROGUE_PORT\$
tls:
  trustStore: $site/ca.crt
p2p:
  clusterSecretFile: $secret
EOF
  for line in "$@"; do echo "  $line" >>"$out"; done
}
config=$TEST_TMP/peer.yaml
peer_config "$config" "stallTime: 1s"
slow_config=$TEST_TMP/peer-slow.yaml
peer_config "$slow_config" "stallTime: 1s" "uploadRate: 1MiB"

sched_port=$(free_port)
# A dead peer is forgotten after peerTimeout: a minute here, so that a
# download that waits for that (instead of going around the dead peer)
# outlives curl's --max-time and fails the test.
cat >"$TEST_TMP/sched.yaml" <<EOF
schedulerServer:
  peerTimeout: 60s
EOF
# start_scheduler: on sched_port, until /healthz answers; sets SCHED_PID.
start_scheduler() {
  local deadline=$((SECONDS + 15))
  "$BUILD/shoald" scheduler -c "$TEST_TMP/sched.yaml" --listen "127.0.0.1:$sched_port" \
    --cluster-secret-file "$secret" --log-dir "$TEST_TMP/sched" </dev/null >>"$TEST_TMP/sched.out" 2>&1 &
  SCHED_PID=$!
  on_exit stop_pid "$SCHED_PID"
  until curl -sf "http://127.0.0.1:$sched_port/healthz" >/dev/null 2>&1; do
    kill -0 "$SCHED_PID" 2>/dev/null || { cat "$TEST_TMP/sched.out" >&2; fail "scheduler exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "scheduler not ready after 15 s"
    sleep 0.1
  done
}
start_scheduler

# start_peer NAME CONFIG [--no-p2p | --peer-port PORT] [ARGS...]: a shoald
# with its own peer port (PORT, else a free one), or without P2P; sets
# NAME_PROXY, NAME_LOG, NAME_PID, NAME_METRICS, NAME_DATA, NAME_ADMIN,
# NAME_PEER_PORT and NAME_ID (its peer id).
start_peer() {
  local name=$1 cfg=$2 args=() port
  shift 2
  port=$(free_port)
  if [ "${1:-}" = --no-p2p ]; then
    shift
  else
    if [ "${1:-}" = --peer-port ]; then
      port=$2
      shift 2
    fi
    args=(--scheduler "127.0.0.1:$sched_port" --peer-listen "127.0.0.1:$port")
  fi
  printf -v "${name}_PEER_PORT" %s "$port"
  start_shoald "$cfg" "${args[@]}" "$@"
  [ ${#args[@]} -eq 0 ] || assert_log_has '.msg == "p2p peer started"'
  printf -v "${name}_PROXY" %s "$SHOALD_PROXY"
  printf -v "${name}_LOG" %s "$SHOALD_LOG_DIR/core.log"
  printf -v "${name}_PID" %s "$SHOALD_PID"
  printf -v "${name}_METRICS" %s "$SHOALD_METRICS_PORT"
  printf -v "${name}_DATA" %s "$SHOALD_DATA_DIR"
  printf -v "${name}_ADMIN" %s "$SHOALD_ADMIN_SOCKET"
  printf -v "${name}_ID" %s "$(jq -r 'select(.msg == "p2p peer started") | .peer' "$SHOALD_LOG_DIR/core.log" 2>/dev/null | tail -n 1)"
}
# metric_of METRICS_PORT SERIES: one /metrics series of a peer (0 if absent).
metric_of() {
  curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }'
}
# blob N: sets HEX and URL for an N-byte pattern blob (expected bytes in
# $TEST_TMP/expect.N).
blob() {
  python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$1" >"$TEST_TMP/expect.$1"
  HEX=$(sha256sum "$TEST_TMP/expect.$1" | cut -d' ' -f1)
  URL=$base/v2/x/blobs/sha256:$HEX
}
# pull LABEL PROXY URL [CURL_ARGS...]: sets RC, CODE, SIZE.
pull() {
  local label=$1 proxy=$2 url=$3
  shift 3
  RC=0
  CODE=$(curl -sS -o "$TEST_TMP/$label.body" -w '%{http_code}' --max-time 30 -x "$proxy" "$@" "$url" \
    2>"$TEST_TMP/$label.err") || RC=$?
  SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes $(head -c 200 "$TEST_TMP/$label.err")"
}
assert_whole() { # LABEL N
  assert_eq "$RC/$CODE" 0/200 "$1: curl status / HTTP status"
  assert_same_file "$TEST_TMP/$1.body" "$TEST_TMP/expect.$2" "$1: bytes"
}
assert_failed_transfer() { # LABEL
  [ "$RC" -ne 0 ] || fail "$1: curl exit 0 with $SIZE bytes for a download that cannot be completed"
  [ "$RC" -ne 28 ] || fail "$1: the client was left hanging until curl's --max-time"
}
done_line() { # LOG HEX: the task's "peer task done" line
  jq -c --arg t "$2" 'select(((.msg // "") | startswith("peer task done")) and .task == $t)' "$1" | tail -n 1
}
# ranges HEX: the Range headers of the origin's GETs for the blob, sorted.
ranges() {
  jq -r --arg p "$1" 'select(.method == "GET" and (.target | contains($p))) |
    ([.headers[] | select(.[0] == "Range") | .[1]] | first // "-")' "$TEST_TMP/ORIGIN.requests" | sort | tr '\n' ' '
}
tmp_empty() { [ -z "$(find "$1/tmp" -mindepth 1 2>/dev/null)" ]; }
stored() { find "$1/tasks" -path "*/$2/data" 2>/dev/null | wc -l; }
P=$((2 << 20)) # the piece size of every blob here (task::piece_size_for)

start_peer A "$config"

info "a. the origin resets in mid-piece: the piece is fetched again"
blob $((12 << 20))
n=$((12 << 20))
pull a "$A_PROXY" "$URL?size=$n&resetat=$((P + P / 2))"
assert_whole a "$n"
want=$(for ((i = 0; i < n / P; i++)); do
  echo "bytes=$((i * P))-$(((i + 1) * P - 1))"
  [ "$i" -ne 1 ] || echo "bytes=$P-$((2 * P - 1))" # piece 1 twice: once reset
done | sort | tr '\n' ' ')
assert_eq "$(ranges "$HEX")" "$want" "a: the origin's Range requests"
assert_log_has ".msg == \"piece fetch from the origin failed\" and .task == \"$HEX\" and .piece == 1" "$A_LOG"
assert_log_has "((.msg // \"\") | startswith(\"peer task done\")) and .task == \"$HEX\" and .bytes_origin == $n" "$A_LOG"

info "a2. the origin stalls in mid-piece: cancelled after p2p.stallTime (1s), fetched again"
blob $((12 << 20 | 1))
pull a2 "$A_PROXY" "$URL?size=$((12 << 20 | 1))&stallat=$((P + P / 2))"
assert_whole a2 $((12 << 20 | 1))
assert_log_has ".msg == \"piece fetch stalled; trying elsewhere\" and .task == \"$HEX\" and .piece == 1 and .from == \"origin\"" "$A_LOG"
assert_eq "$(ranges "$HEX" | grep -o "bytes=$P-$((2 * P - 1))" | wc -l)" 2 "a2: Range requests for the stalled piece"

info "a3. the origin closes each kept-alive connection as the next request arrives: asked again on a new one"
n3=$((12 << 20 | 2))
blob "$n3"
series='shoal_origin_range_requests_total{connection="reused"}'
reused0=$(metric_of "$A_METRICS" "$series")
pull a3 "$A_PROXY" "$URL?size=$n3&dropnext=1"
assert_whole a3 "$n3"
reused1=$(metric_of "$A_METRICS" "$series")
[ "$((reused1 - reused0))" -ge 1 ] || fail "a3: no piece request went on a kept-alive connection"
want=$(for ((i = 0; i * P < n3; i++)); do
  end=$(((i + 1) * P - 1))
  [ "$end" -lt "$n3" ] || end=$((n3 - 1))
  echo "bytes=$((i * P))-$end"
done | sort | tr '\n' ' ')
# The dropped requests are not answered (nor logged): each piece once.
assert_eq "$(ranges "$HEX")" "$want" "a3: the origin's answered Range requests"
if jq -e --arg t "$HEX" 'select(.msg == "piece fetch from the origin failed" and .task == $t)' "$A_LOG" >/dev/null; then
  fail "a3: a piece failed although only kept-alive connections were closed"
fi

info "b. an object named by its URL changes after a reset: If-Range, no splice"
pull b "$A_PROXY" "$base/obj?size=$n&resetat=$((P + P / 2))&change=1&key=b"
assert_failed_transfer b
[ "$SIZE" -le $((2 * P)) ] || fail "b: the client got $SIZE bytes, more than the pieces fetched before the change"
assert_log_has '.msg == "peer task failed" and (.error | test("If-Range did not match"))' "$A_LOG"
assert_log_has '.msg == "task stopped while serving; fetching the rest from the origin"' "$A_LOG"
irs=$(jq -r 'select(.method == "GET" and (.target | contains("key=b"))) |
  [.headers[] | select(.[0] == "If-Range") | .[1]] | first // "-"' "$TEST_TMP/ORIGIN.requests" | sort -u | tr '\n' ' ')
assert_eq "$irs" "\"obj-$n\" " "b: If-Range of every GET for the changing object"
assert_eq "$(find "$A_DATA/tasks" -name data -size "${n}c" | wc -l)" 1 "b: stored objects of that size (a.'s blob only)"

info "c. a hijacked blob host whose certificate comes from a CA outside tls.trustStore: 502"
rhex=$(printf 'rogue' | sha256sum | cut -d' ' -f1)
pull c "$A_PROXY" "https://127.0.0.1:$ROGUE_PORT/v2/x/blobs/sha256:$rhex?size=5" --cacert "$site/ca.crt"
assert_eq "$RC/$CODE" 0/502 "c: blob from an origin with an untrusted issuer"
grep -qi 'verif' "$TEST_TMP/c.body" || fail "c: 502 body does not say verification failed: $(cat "$TEST_TMP/c.body")"
assert_log_has ".msg == \"request failed\" and (.path | contains(\"$rhex\")) and (.error | test(\"verif\"; \"i\"))" "$A_LOG"
[ ! -s "$TEST_TMP/ROGUE.requests" ] || fail "c: the untrusted origin received a request"

# seed NAME URL N: a peer that holds the blob and uploads it at ~1 MiB/s.
# It gets the blob without P2P (full speed), then comes back as a peer on
# the same data dir, and announces what it holds on registering.
seed() {
  local s=$1 v proxy data pid admin deadline
  start_peer "$s" "$config" --no-p2p
  v=${s}_PROXY proxy=${!v}
  v=${s}_DATA data=${!v}
  v=${s}_PID pid=${!v}
  pull "seed-$s" "$proxy" "$2?size=$3"
  assert_whole "seed-$s" "$3"
  stop_shoald "$pid"
  start_peer "$s" "$slow_config" --data-dir "$data"
  v=${s}_ADMIN admin=${!v}
  deadline=$((SECONDS + 10))
  until [ "$("$BUILD/shoalctl" --socket "$admin" --json status 2>/dev/null | jq -r '.p2p.schedulers[0].reachable')" = true ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "seed $s not registered with the scheduler after 10 s"
    sleep 0.1
  done
}
# pull_kill LABEL PROXY URL VICTIM: pulls URL through PROXY and SIGKILLs
# peer VICTIM once it has uploaded 256 KiB more for this pull (in mid-piece:
# a piece takes it a second or two; what it sent earlier pulls does not count); sets
# RC, CODE and SIZE when the pull ends.
pull_kill() {
  local label=$1 proxy=$2 url=$3 v metrics pid cpid deadline=$((SECONDS + 10)) base
  v=${4}_METRICS metrics=${!v}
  v=${4}_PID pid=${!v}
  base=$(metric_of "$metrics" shoal_upload_bytes_total)
  curl -sS -o "$TEST_TMP/$label.body" -w '%{http_code}' --max-time 30 -x "$proxy" "$url" \
    >"$TEST_TMP/$label.code" 2>"$TEST_TMP/$label.err" &
  cpid=$!
  while [ "$(metric_of "$metrics" shoal_upload_bytes_total)" -lt $((base + (256 << 10))) ]; do
    kill -0 "$cpid" 2>/dev/null || fail "$label: the pull ended before $4 sent 256 KiB: $(cat "$TEST_TMP/$label.err")"
    [ "$SECONDS" -lt "$deadline" ] || fail "$label: $4 sent under 256 KiB in 10 s"
    sleep 0.05
  done
  info "  $4 has sent $(($(metric_of "$metrics" shoal_upload_bytes_total) - base)) bytes for this pull: SIGKILL"
  kill -KILL "$pid"
  wait_exit "$cpid" 40
  RC=$WAIT_RC CODE=$(cat "$TEST_TMP/$label.code") SIZE=$(stat -c %s "$TEST_TMP/$label.body" 2>/dev/null || echo 0)
  info "  $label: curl $RC, HTTP $CODE, $SIZE bytes $(head -c 200 "$TEST_TMP/$label.err")"
}

info "d. a parent killed in mid-piece: the downloader switches to the other parent"
d=$((8 << 20))
blob "$d"
dhex=$HEX
seed S1 "$URL" "$d"
seed S2 "$URL" "$d"
sleep 0.5 # their announces follow the registration
start_peer B "$config"
pull_kill d "$B_PROXY" "$URL?size=$d" S1
assert_whole d "$d"
assert_log_has ".msg == \"piece fetch from parent failed\" and .task == \"$dhex\" and .parent == \"$S1_ID\" and .bytes > 0 and .bytes < .piece_bytes" "$B_LOG"
line=$(done_line "$B_LOG" "$dhex")
[ -n "$line" ] || fail "d: no \"peer task done\" line on B"
assert_eq "$(jq -r '.bytes_peer' <<<"$line")/$(jq -r '.bytes_origin' <<<"$line")" "$d/0" "d: bytes_peer/bytes_origin on B"
assert_eq "$(origin_count "sha256:$dhex")" 2 "d: origin GETs (the seeds' own)"
stop_shoald "$B_PID"

info "d2. the only parent left (S2) killed in mid-piece: what it held comes from the origin"
start_peer B2 "$config"
pull_kill d2 "$B2_PROXY" "$URL?size=$d" S2
assert_whole d2 "$d"
assert_log_has ".msg == \"piece fetch from parent failed\" and .task == \"$dhex\" and .parent == \"$S2_ID\" and .bytes > 0 and .bytes < .piece_bytes" "$B2_LOG"
line=$(done_line "$B2_LOG" "$dhex")
[ -n "$line" ] || fail "d2: no \"peer task done\" line on B2"
[ "$(jq -r '.bytes_origin' <<<"$line")" -gt 0 ] || fail "d2: B2 fetched nothing from the origin: $line"

info "e. a peer SIGKILLed with pieces on disk, then restarted on the same data dir"
e=$((16 << 20))
blob "$e"
start_peer E "$config"
edata=$E_DATA
old_id=$E_ID
curl -sS -o "$TEST_TMP/e1.body" --max-time 30 -x "$E_PROXY" "$URL?size=$e&rate=4000000" 2>"$TEST_TMP/e1.err" &
epid=$!
deadline=$((SECONDS + 15))
until [ "$(metric_of "$E_METRICS" 'shoal_p2p_pieces_total{source="origin"}')" -ge 1 ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "e: no piece stored after 15 s"
  sleep 0.05
done
partial=$(find "$edata/tmp" -name data -printf '%s\n' | sort -n | tail -n 1)
info "  a piece is on disk (tmp data file of ${partial:-0} bytes): SIGKILL"
[ -n "$partial" ] || fail "e: no download in $edata/tmp: $(task_files "$edata")"
kill -KILL "$E_PID"
wait_exit "$epid" 20
[ "$WAIT_RC" != timeout ] || fail "e: the client of the killed daemon still waits after 20 s"
[ "$WAIT_RC" -ne 0 ] || fail "e: the client of the killed daemon reports success"
start_peer E "$config" --peer-port "$E_PEER_PORT" --data-dir "$edata"
tmp_empty "$edata" || fail "e: tmp/ after the restart: $(task_files "$edata")"
assert_eq "$(stored "$edata" "$HEX")" 0 "e: stored copies of the partial blob after the restart"
pull e2 "$E_PROXY" "$URL?size=$e"
assert_whole e2 "$e"
# The scheduler forgot the killed incarnation when the new one registered
# at its address: nobody is sent to it, nothing waits for it.
assert_eq "$(log_count ".msg == \"piece fetch from parent failed\" and .parent == \"$old_id\"" "$E_LOG")" 0 \
  "e: piece requests to the killed incarnation"
assert_log_has "((.msg // \"\") | startswith(\"peer task done\")) and .task == \"$HEX\"" "$E_LOG"
assert_eq "$(stored "$edata" "$HEX")" 1 "e: stored copies after the second pull"
pull e3 "$E_PROXY" "$URL?size=$e&resetat=1&times=-1"
assert_whole e3 "$e"
assert_log_has "((.msg // \"\") | test(\"^reuse file peer task done\")) and .task == \"$HEX\"" "$E_LOG"
stop_shoald "$E_PID"

info "f. the data dir (6 MiB tmpfs) fills up under a 12 MiB blob"
small=$TEST_TMP/small-disk
mkdir -p "$small"
mount -t tmpfs -o size=6m tmpfs "$small" || skip "cannot mount a tmpfs here"
on_exit "umount -l '$small'"
start_peer F "$config" --data-dir "$small"
f=$((12 << 20 | 4321))
blob "$f"
pull f "$F_PROXY" "$URL?size=$f"
assert_whole f "$f"
assert_log_has ".msg == \"peer task failed\" and .task == \"$HEX\" and (.error | test(\"space\"; \"i\"))" "$F_LOG"
tmp_empty "$small" || fail "f: tmp/ keeps debris: $(task_files "$small")"
assert_eq "$(find "$small/tasks" -name data | wc -l)" 0 "f: objects stored on the full disk"
fs=$((1 << 20 | 3))
blob "$fs"
pull f-small "$F_PROXY" "$URL?size=$fs"
assert_whole f-small "$fs"
assert_eq "$(stored "$small" "$HEX")" 1 "f: a small blob stored after the failure"
stop_shoald "$F_PID"

info "g. the scheduler is killed while two peers download"
g=$((16 << 20 | 99))
blob "$g"
for p in A B2; do
  v=${p}_PROXY proxy=${!v}
  curl -sS -o "$TEST_TMP/g-$p.body" -w '%{http_code}' --max-time 30 -x "$proxy" "$URL?size=$g&rate=4000000" \
    >"$TEST_TMP/g-$p.code" 2>"$TEST_TMP/g-$p.err" &
  printf -v "g_${p}_pid" %s $!
done
deadline=$((SECONDS + 10))
until [ "$(origin_count "sha256:$HEX")" -ge 2 ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "g: the peers did not reach the origin in 10 s"
  sleep 0.05
done
sleep 0.3
kill -KILL "$SCHED_PID"
info "  scheduler killed after $(origin_count "sha256:$HEX") origin GETs"
for p in A B2; do
  v=g_${p}_pid cpid=${!v}
  v=${p}_LOG log=${!v}
  wait_exit "$cpid" 30
  RC=$WAIT_RC CODE=$(cat "$TEST_TMP/g-$p.code") SIZE=$(stat -c %s "$TEST_TMP/g-$p.body" 2>/dev/null || echo 0)
  info "  g-$p: curl $RC, HTTP $CODE, $SIZE bytes $(head -c 200 "$TEST_TMP/g-$p.err")"
  assert_whole "g-$p" "$g"
  assert_log_has ".msg == \"no scheduler reachable; fetching from the origin\" and .task == \"$HEX\"" "$log"
  assert_log_has "((.msg // \"\") | startswith(\"peer task done\")) and .task == \"$HEX\"" "$log"
done
for p in "$A_PID" "$B2_PID"; do kill -0 "$p" 2>/dev/null || fail "a shoald died"; done
info "ok"
