#!/bin/bash
# P2P piece exchange across hosts, in a virtual cluster of network
# namespaces (tests/integration/netns_lib.sh): one switch, an origin host
# (Debian's docker-registry over TLS on 198.18.0.1:443, no auth, a random
# ~24 MiB blob pushed by this test), a scheduler host (and a second one for
# e), a host for the corrupt peer, and 8 peer hosts. Every host's egress is
# a TBF (200 Mbit/s; the origin's 40 Mbit/s in b, c and e, so the swarm is
# still busy when the test strikes). Each peer host runs its own shoald
# (explicit proxy on its own 127.0.0.1:65001, upload server on :65002) and a
# curl that pulls the blob through it, trusting the site CA.
#
# First the harness itself: the root namespace has no 198.18.0.0/15
# address; a direct pull from the origin and a plain HTTP transfer between
# two peers run at the shaped rate (80..105 %) and hash right; that pull
# calibrates the origin's per-pull overhead (Ethernet/IP/TCP headers, TLS,
# HTTP). Then, each scenario with fresh daemons and data directories:
#   a. 8 clients at once: all get the right bytes; the origin sends at most
#      1.1 x the blob + that overhead + 256 KiB (handshakes and headers of
#      extra connections); every peer logs "peer task done"; some peer got
#      bytes from peers (bytes_peer > 0).
#   b. kill -9 of two peer daemons (p7, p8) mid-transfer (once the origin
#      has sent 30 % of the blob, while clients still run): the other six
#      clients get the right bytes.
#   c. tests/fixtures/corrupt_peer.py announces every piece and serves random
#      bytes: all 8 clients get the right bytes, it did serve pieces, and the
#      peers detected bad pieces (core.log "bad piece" or a bad-piece
#      series on /metrics).
#   d. the scheduler stopped before the pulls: all 8 get the right bytes.
#   e. two schedulers (--scheduler A,B); the one the peers talk to more
#      (the task's owner) killed mid-pull: all 8 get the right bytes.
# Skips after the harness checks when shoald has no P2P flags yet.
#
# Takes about 1 minute (51 s on the 2-core rig), within run.sh's timeout.
# Knobs: SHOAL_P2P_RATE (200mbit), SHOAL_P2P_SLOW_RATE (40mbit),
# SHOAL_P2P_BLOB_MIB (24).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/netns_lib.sh
. "$(dirname "$0")/netns_lib.sh"

need_root
need_cmd ip tc curl jq docker-registry openssl python3 sha256sum
[ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"

RATE=${SHOAL_P2P_RATE:-200mbit}
SLOW=${SHOAL_P2P_SLOW_RATE:-40mbit}
BLOB_MIB=${SHOAL_P2P_BLOB_MIB:-24}
NPEERS=8
REPO=p2p/swarm
PULL_MAX=90 # curl --max-time for every pull
# The interpreter itself, not a wrapper (pyenv's shim forks), so that the
# PID nl_spawn records is the server's own.
PY=$(python3 -c 'import sys; print(sys.executable)')

# --- the cluster and the origin ------------------------------------------------------

nl_sweep_stale
# Registered first: an nl_init that fails halfway leaves its switch behind.
on_exit nl_teardown
nl_init || skip "cannot build network namespaces here (see above)"
nl_add_host origin 1 "$RATE" || fail "origin host"
nl_add_host sched 2 "$RATE" || fail "scheduler host"
nl_add_host sched2 3 "$RATE" || fail "second scheduler host"
nl_add_host evil 4 "$RATE" || fail "corrupt peer host"
for i in $(seq 1 $NPEERS); do nl_add_host "p$i" $((10 + i)) "$RATE" || fail "peer host p$i"; done
if ip -4 addr show | grep -q ' 198\.1[89]\.'; then fail "the root namespace has an address in 198.18.0.0/15"; fi
if ip -4 route show | grep -q '^198\.1[89]\.'; then fail "the root namespace has a route into 198.18.0.0/15"; fi

nl_registry_up origin "$TEST_TMP/origin" || fail "origin registry did not start"
ORIGIN_CA=$NL_REG_CA
ORIGIN_URL=$NL_REG_URL
blob=$TEST_TMP/blob.bin
head -c $((BLOB_MIB << 20)) /dev/urandom >"$blob"
SIZE=$(stat -c %s "$blob")
DIGEST=$(nl_push_blob origin "$ORIGIN_URL" "$ORIGIN_CA" "$REPO" "$blob") || fail "pushing the blob failed"
HEX=${DIGEST#sha256:}
URL=$ORIGIN_URL/v2/$REPO/blobs/$DIGEST
info "origin $ORIGIN_URL serves $DIGEST ($SIZE bytes)"

# --- the harness itself ----------------------------------------------------------------

RATE_BPS=$(nl_rate_bps "$RATE")
# check_speed WHAT BYTES_PER_S: within 80..105 % of the shaped rate.
check_speed() {
  awk -v s="$2" -v r="$RATE_BPS" 'BEGIN { exit !(s * 8 >= 0.80 * r && s * 8 <= 1.05 * r) }' ||
    fail "$1 ran at $(awk -v s="$2" 'BEGIN { printf "%.1f", s * 8 / 1e6 }') Mbit/s; shaped to $RATE"
  info "$1: $(awk -v s="$2" 'BEGIN { printf "%.1f", s * 8 / 1e6 }') Mbit/s (shaped to $RATE)"
}

tx0=$(nl_tx_bytes origin)
out=$(nl_exec p1 curl -sS --max-time 60 --cacert "$ORIGIN_CA" -o "$TEST_TMP/direct.body" \
  -w '%{http_code} %{speed_download}' "$URL") || fail "direct pull from the origin failed"
DIRECT_TX=$(($(nl_tx_bytes origin) - tx0))
assert_eq "${out%% *}" 200 "direct pull status"
assert_eq "$(sha256_of "$TEST_TMP/direct.body")" "$DIGEST" "direct pull digest"
rm -f "$TEST_TMP/direct.body"
check_speed "direct pull origin -> p1" "${out#* }"
OVERHEAD=$((DIRECT_TX > SIZE ? DIRECT_TX - SIZE : 0))
info "one direct pull: origin sent $DIRECT_TX bytes for $SIZE (overhead $OVERHEAD)"

nl_spawn p2 "$TEST_TMP/http-p2.log" "$PY" -m http.server --bind "$(nl_ip p2)" --directory "$TEST_TMP" 8080
http_pid=$NL_PID
nl_wait_tcp p3 "$(nl_ip p2)" 8080 10 "$http_pid" || fail "HTTP server on p2 did not start"
out=$(nl_exec p3 curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{speed_download}' \
  "http://$(nl_ip p2):8080/blob.bin") || fail "p2 -> p3 transfer failed"
assert_eq "${out%% *}" 200 "p2 -> p3 status"
check_speed "plain HTTP p2 -> p3" "${out#* }"
nl_stop "$http_pid"

# Not "--help | grep -q": under pipefail, grep leaving early can fail the pipe.
case $("$BUILD/shoald" --help 2>&1 || true) in *--scheduler*) p2p=1 ;; *) p2p=0 ;; esac
if [ "$p2p" = 0 ]; then
  skip "harness checks passed; $BUILD/shoald has no --scheduler option yet, P2P scenarios not run"
fi

# --- peers, schedulers, clients ----------------------------------------------------------

site=$TEST_TMP/site-ca
make_ca "$site"
SECRET=$TEST_TMP/cluster.secret
(umask 077 && openssl rand -hex 24 >"$SECRET")
CONFIG=$TEST_TMP/peer.yaml
cat >"$CONFIG" <<EOF
proxy:
  proxies:
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
hijackHTTPS:
  cert: $site/ca.crt
  key: $site/ca.key
  hosts:
    - regx: $(nl_ip origin | sed 's/\./\\./g')
tls:
  trustStore: $ORIGIN_CA
EOF

declare -A DPID=() CPID=() SPID=()
SCEN=

# scen_begin NAME: a new scenario, its files under $TEST_TMP/NAME.
scen_begin() {
  SCEN=$1
  mkdir -p "$TEST_TMP/$SCEN"
  info "=== scenario $SCEN"
}

# sched_start HOST: `shoald scheduler` on HOST:8002, up once /healthz says ok.
sched_start() {
  local h=$1 d=$TEST_TMP/$SCEN/$1 ip deadline
  ip=$(nl_ip "$h")
  mkdir -p "$d/log"
  nl_spawn "$h" "$d/shoald.out" "$BUILD/shoald" scheduler --listen "$ip:8002" \
    --cluster-secret-file "$SECRET" --log-dir "$d/log"
  SPID[$h]=$NL_PID
  deadline=$((SECONDS + 15))
  until [ "$(nl_exec "$h" curl -s --max-time 1 "http://$ip:8002/healthz" 2>/dev/null)" = ok ]; do
    kill -0 "${SPID[$h]}" 2>/dev/null || { tail -n 20 "$d/shoald.out" >&2; fail "scheduler on $h exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "scheduler on $h: /healthz not ok after 15 s"
    sleep 0.1
  done
}

# peers_start SCHEDULERS: shoald on every peer host, started together, each
# ready once its proxy and upload ports accept.
peers_start() {
  local i d ip
  for i in $(seq 1 $NPEERS); do
    d=$TEST_TMP/$SCEN/p$i
    ip=$(nl_ip "p$i")
    mkdir -p "$d/data" "$d/log"
    nl_spawn "p$i" "$d/log/shoald.out" "$BUILD/shoald" -c "$CONFIG" --data-dir "$d/data" --log-dir "$d/log" \
      --admin-socket "$d/admin.sock" --metrics-listen 127.0.0.1:65004 --proxy-listen 127.0.0.1:65001 \
      --transparent off --scheduler "$1" --cluster-secret-file "$SECRET" \
      --peer-listen 0.0.0.0:65002 --advertise "$ip:65002"
    DPID[$i]=$NL_PID
  done
  for i in $(seq 1 $NPEERS); do
    d=$TEST_TMP/$SCEN/p$i
    if ! nl_wait_tcp "p$i" 127.0.0.1 65001 15 "${DPID[$i]}" || ! nl_wait_tcp "p$i" "$(nl_ip "p$i")" 65002 5 "${DPID[$i]}"; then
      tail -n 20 "$d/log/shoald.out" >&2
      fail "shoald on p$i not ready (proxy :65001, upload :65002)"
    fi
  done
}

# stop_all: every daemon and client of the scenario (SIGTERM, SIGKILL after
# 5 s); a sanitizer report in a shoald's output fails the test.
stop_all() {
  local p f
  for p in "${DPID[@]}" "${SPID[@]}" "${CPID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DPID[@]}" "${SPID[@]}" "${CPID[@]}"; do nl_stop "$p" TERM 5; done
  DPID=() SPID=() CPID=()
  for f in "$TEST_TMP/$SCEN"/*/shoald.out "$TEST_TMP/$SCEN"/*/log/shoald.out; do
    [ -f "$f" ] || continue
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$f"; then
      head -n 60 "$f" >&2
      fail "sanitizer report in $f"
    fi
  done
}

# pulls_start I...: curl on peer host pI through its own shoald.
pulls_start() {
  local i d
  for i in "$@"; do
    d=$TEST_TMP/$SCEN/p$i
    rm -f "$d/body"
    nl_spawn "p$i" "$d/client.out" curl -sS --max-time "$PULL_MAX" -x http://127.0.0.1:65001 \
      --cacert "$site/ca.crt" -o "$d/body" -w 'http_code=%{http_code} time=%{time_total}\n' "$URL"
    CPID[$i]=$NL_PID
  done
}

# pulls_check I...: each client exits 0 with a 200 and exactly the blob.
pulls_check() {
  local i d times=""
  for i in "$@"; do
    d=$TEST_TMP/$SCEN/p$i
    wait_exit "${CPID[$i]}" $((PULL_MAX + 10))
    [ "$WAIT_RC" = 0 ] || fail "$SCEN: client on p$i: curl status $WAIT_RC: $(tail -n 3 "$d/client.out")"
    grep -q '^http_code=200 ' "$d/client.out" || fail "$SCEN: client on p$i: $(tail -n 1 "$d/client.out")"
    assert_eq "$(stat -c %s "$d/body")" "$SIZE" "$SCEN: p$i body size"
    assert_eq "$(sha256_of "$d/body")" "$DIGEST" "$SCEN: p$i body digest"
    rm -f "$d/body"
    times+=" p$i=$(sed -n 's/^http_code=200 time=//p' "$d/client.out")s"
    unset "CPID[$i]"
  done
  info "$SCEN: right bytes on $*; times:$times"
}

# running_clients I...: how many of these clients still run.
running_clients() {
  local i n=0
  for i in "$@"; do kill -0 "${CPID[$i]}" 2>/dev/null && n=$((n + 1)); done
  echo "$n"
}

# wait_origin_sent FRACTION SINCE_TX SECS: until the origin has sent
# FRACTION of the blob since its tx counter read SINCE_TX.
wait_origin_sent() {
  local want deadline=$((SECONDS + $3))
  want=$(awk -v f="$1" -v s="$SIZE" 'BEGIN { printf "%d", f * s }')
  while [ $(($(nl_tx_bytes origin) - $2)) -lt "$want" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$SCEN: the origin sent under $1 of the blob in $3 s"
    sleep 0.1
  done
}

# peer_logs: the core.log of every peer of the scenario.
peer_logs() { ls "$TEST_TMP/$SCEN"/p*/log/core.log 2>/dev/null; }

# done_sum FIELD: FIELD summed over the scenario's "peer task done" lines.
done_sum() {
  # shellcheck disable=SC2046
  cat $(peer_logs) /dev/null | jq -R --arg h "$HEX" \
    'fromjson? | select(((.msg // "") | test("^peer task done")) and .task == $h) | (.'"$1"' // 0)' |
    jq -s 'add // 0'
}

# assert_peers_done I...: each peer logged "peer task done" for the blob.
assert_peers_done() {
  local i
  for i in "$@"; do
    assert_log_has "((.msg // \"\") | test(\"^peer task done, cost: [0-9]+ms$\")) and .task == \"$HEX\"" \
      "$TEST_TMP/$SCEN/p$i/log/core.log"
  done
}

ALL=$(seq 1 $NPEERS | tr '\n' ' ')

# --- a. everyone at once ------------------------------------------------------------------

scen_begin a
sched_start sched
peers_start "$(nl_ip sched):8002"
tx0=$(nl_tx_bytes origin)
# shellcheck disable=SC2086
pulls_start $ALL
# shellcheck disable=SC2086
pulls_check $ALL
sleep 0.5
origin_bytes=$(($(nl_tx_bytes origin) - tx0))
limit=$((SIZE * 11 / 10 + OVERHEAD + (256 << 10)))
info "a: origin sent $origin_bytes bytes = $(awk -v a="$origin_bytes" -v s="$SIZE" 'BEGIN { printf "%.3f", a / s }') x the blob (limit $limit)"
[ "$origin_bytes" -le "$limit" ] ||
  fail "a: the origin sent $origin_bytes bytes for a $SIZE-byte blob to $NPEERS peers (limit 1.1 x + overhead $OVERHEAD + 256 KiB = $limit)"
# shellcheck disable=SC2086
assert_peers_done $ALL
bo=$(done_sum bytes_origin)
bp=$(done_sum bytes_peer)
info "a: peer task done: bytes_origin total $bo, bytes_peer total $bp"
[ "$bp" -gt 0 ] || fail "a: no peer logged bytes_peer > 0: nothing was exchanged between peers"
stop_all

# --- b. two peers killed mid-transfer --------------------------------------------------------

scen_begin b
nl_shape origin "$SLOW" || fail "reshaping the origin"
sched_start sched
peers_start "$(nl_ip sched):8002"
tx0=$(nl_tx_bytes origin)
# shellcheck disable=SC2086
pulls_start $ALL
wait_origin_sent 0.3 "$tx0" 30
survivors="1 2 3 4 5 6"
# shellcheck disable=SC2086
still=$(running_clients $survivors)
info "b: kill -9 of shoald on p7 and p8 (origin sent $(($(nl_tx_bytes origin) - tx0)) bytes; $still of 6 other clients still running)"
kill -KILL "${DPID[7]}" "${DPID[8]}"
wait "${DPID[7]}" "${DPID[8]}" 2>/dev/null || true # reaped here, quietly
[ "$still" -gt 0 ] || fail "b: all clients had finished before the kill; the scenario tests nothing"
# shellcheck disable=SC2086
pulls_check $survivors
# shellcheck disable=SC2086
assert_peers_done $survivors
stop_all
nl_shape origin "$RATE" || fail "reshaping the origin"

# --- c. a corrupt peer -----------------------------------------------------------------------

scen_begin c
nl_shape origin "$SLOW" || fail "reshaping the origin"
sched_start sched
cstats=$TEST_TMP/c/corrupt.stats
nl_spawn evil "$TEST_TMP/c/corrupt.out" "$PY" "$SHOAL_ROOT/tests/fixtures/corrupt_peer.py" \
  --scheduler "$(nl_ip sched):8002" --secret-file "$SECRET" --listen "$(nl_ip evil):65002" \
  --peer-id corrupt-evil --task "$HEX" --length "$SIZE" --stats "$cstats"
SPID[evil]=$NL_PID
deadline=$((SECONDS + 10))
until [ "$(jq -r '.announced' "$cstats" 2>/dev/null || echo 0)" -ge 1 ] 2>/dev/null; do
  kill -0 "${SPID[evil]}" 2>/dev/null || { cat "$TEST_TMP/c/corrupt.out" >&2; fail "c: corrupt_peer.py exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$TEST_TMP/c/corrupt.out" >&2; fail "c: the corrupt peer could not announce in 10 s"; }
  sleep 0.2
done
peers_start "$(nl_ip sched):8002"
# shellcheck disable=SC2086
pulls_start $ALL
# shellcheck disable=SC2086
pulls_check $ALL
served=$(jq -r .pieces_served "$cstats")
# shellcheck disable=SC2046
bad_lines=$(cat $(peer_logs) /dev/null | jq -R 'fromjson? | select((.msg // "") | test("bad piece"; "i"))' | jq -s length)
bad_metric=0
for i in $(seq 1 $NPEERS); do
  m=$(nl_exec "p$i" curl -s --max-time 5 http://127.0.0.1:65004/metrics |
    awk '$1 ~ /bad_piece/ && $1 !~ /^#/ { s += $2 } END { printf "%d", s }') || m=0
  bad_metric=$((bad_metric + m))
done
info "c: the corrupt peer served $served random pieces; peers logged $bad_lines bad-piece lines, /metrics bad-piece series sum $bad_metric"
info "c: corrupt peer: $(cat "$cstats")"
[ "$served" -gt 0 ] || fail "c: no peer ever asked the corrupt peer for a piece; the scenario tests nothing"
[ "$bad_lines" -gt 0 ] || [ "$bad_metric" -gt 0 ] ||
  fail "c: $served random pieces were served but no peer logged a bad piece or counted one on /metrics"
stop_all
nl_shape origin "$RATE" || fail "reshaping the origin"

# --- d. scheduler down before the pulls -----------------------------------------------------

scen_begin d
sched_start sched
peers_start "$(nl_ip sched):8002"
nl_stop "${SPID[sched]}" TERM 5
unset "SPID[sched]"
info "d: scheduler stopped; pulling"
# shellcheck disable=SC2086
pulls_start $ALL
# shellcheck disable=SC2086
pulls_check $ALL
# shellcheck disable=SC2086
assert_peers_done $ALL
stop_all

# --- e. two schedulers, one killed mid-pull -----------------------------------------------------

scen_begin e
nl_shape origin "$SLOW" || fail "reshaping the origin"
sched_start sched
sched_start sched2
peers_start "$(nl_ip sched):8002,$(nl_ip sched2):8002"
tx0=$(nl_tx_bytes origin)
rx0=$(nl_rx_bytes sched)
rx0b=$(nl_rx_bytes sched2)
# shellcheck disable=SC2086
pulls_start $ALL
wait_origin_sent 0.3 "$tx0" 30
# The scheduler that owns the task (rendezvous hash of the task id) is the
# one to kill: the one the peers sent more bytes to since the pulls began
# (announces and parent requests; heartbeats go to both).
rxa=$(($(nl_rx_bytes sched) - rx0))
rxb=$(($(nl_rx_bytes sched2) - rx0b))
victim=sched
[ "$rxb" -le "$rxa" ] || victim=sched2
info "e: since the pulls began the schedulers received $rxa (sched) and $rxb (sched2) bytes"
# shellcheck disable=SC2086
still=$(running_clients $ALL)
info "e: kill -9 of the scheduler on $victim ($still of 8 clients still running)"
kill -KILL "${SPID[$victim]}"
wait "${SPID[$victim]}" 2>/dev/null || true
[ "$still" -gt 0 ] || fail "e: all clients had finished before the kill; the scenario tests nothing"
# shellcheck disable=SC2086
pulls_check $ALL
# shellcheck disable=SC2086
assert_peers_done $ALL
stop_all
nl_shape origin "$RATE" || fail "reshaping the origin"
info "ok"
