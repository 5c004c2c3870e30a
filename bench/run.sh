#!/bin/bash
# make bench: the explicit proxy against squid, side by side, as
# docs/design.md §7 prescribes (see bench/README.md for how to read it).
#
#   BUILD=/abs/build bench/run.sh
#
# Proxy under test on one core (taskset -c $BENCH_PROXY_CPU), curl, kload and
# the origin nginx (1 worker, TLS 1.2 only) on the other. The origin listens
# on $BENCH_ORIGIN_IP:$BENCH_ORIGIN_PORT under two names from a temporary
# /etc/hosts block: tunnel.bench.shoal.test (shoald tunnels it) and
# relay.bench.shoal.test (in hijackHTTPS.hosts; no proxies rule matches, so
# requests route direct). squid-openssl tunnels on one port and bumps on
# another (ssl_bump bump all, cache deny all) with the same site CA.
#
# Measures: a. direct HTTPS; b. tunnel; c. hijacked relay (bulk: best and
# median of $BENCH_RUNS curl runs to /dev/null, with the proxy's CPU-s/GiB
# from /proc/PID/stat and its peak RSS, VmHWM reset before each run);
# d. 1 KiB keep-alive GETs from $BENCH_CONNS connections (build/bench/kload);
# f. mbedTLS's own AEAD speed (build/bench/cipher_speed) as the bound for the
# relay's CPU cost. Prints the table to stdout and writes
# $BUILD/bench/results.txt, results.md and raw.txt (every measurement).
#
# Knobs (environment): BENCH_RUNS=3, BENCH_SIZE_MIB=1024, BENCH_KLOAD_SECONDS=10,
# BENCH_CONNS=16, BENCH_ORIGIN_IP=127.0.0.20, BENCH_ORIGIN_PORT=443,
# BENCH_PROXY_CPU=1, BENCH_CLIENT_CPU=0, BENCH_IDLE_WAIT=240 (seconds the bench
# may spend in total waiting for an idle machine before runs), BENCH_DATA=$BUILD/bench-data (the
# random files and certificates, kept for the next run), BENCH_KEEP_TMP=1
# (keep the scratch directory with every log).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$root/build}
BUILD=$(cd "$BUILD" && pwd)
RUNS=${BENCH_RUNS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
KSECS=${BENCH_KLOAD_SECONDS:-10}
CONNS=${BENCH_CONNS:-16}
ORIGIN_IP=${BENCH_ORIGIN_IP:-127.0.0.20}
ORIGIN_PORT=${BENCH_ORIGIN_PORT:-443}
PCPU=${BENCH_PROXY_CPU:-1}
CCPU=${BENCH_CLIENT_CPU:-0}
DATA=${BENCH_DATA:-$BUILD/bench-data}
OUT=$BUILD/bench
TUNNEL_HOST=tunnel.bench.shoal.test
RELAY_HOST=relay.bench.shoal.test
BULK=bulk-${SIZE_MIB}M.bin
SMALL=1k.bin

say() { echo "[bench] $*" >&2; }
die() {
  echo "[bench] FAIL: $*" >&2
  exit 1
}

case $ORIGIN_IP in 127.*) ;; *) die "BENCH_ORIGIN_IP=$ORIGIN_IP is not in 127.0.0.0/8" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (ports, /etc/hosts, squid's user switch)"
for c in curl nginx squid openssl taskset python3 flock awk; do
  command -v "$c" >/dev/null || die "$c not installed (make deps-bench)"
done
certgen=/usr/lib/squid/security_file_certgen
[ -x "$certgen" ] || die "$certgen missing (squid-openssl not installed?)"
for b in "$BUILD/shoald" "$BUILD/bench/kload" "$BUILD/bench/cipher_speed"; do
  [ -x "$b" ] || die "$b not built (run make bench)"
done
[ "$(nproc --all)" -ge 2 ] || say "only one CPU: proxy and clients share it; figures are not comparable"

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# --- scratch directory, processes and cleanup ---------------------------------

W=$(mktemp -d /tmp/shoal-bench.XXXXXX)
chmod 755 "$W"  # squid drops to the proxy user and must reach its files
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: >"$RAW"
bg_pids=()
# shellcheck source=tests/fixtures/registry/hosts.sh
. "$root/tests/fixtures/registry/hosts.sh"

stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  set +e
  trap - EXIT INT TERM HUP
  # squid's helpers and nginx's worker are children of what we started:
  # note their PIDs first, and stop any that outlive their parent.
  local kids=()
  for ((i = 0; i < ${#bg_pids[@]}; i++)); do
    mapfile -t -O "${#kids[@]}" kids < <(ps -o pid= --ppid "${bg_pids[i]}" 2>/dev/null | tr -d ' ')
  done
  for ((i = ${#bg_pids[@]} - 1; i >= 0; i--)); do stop_pid "${bg_pids[i]}"; done
  for i in "${kids[@]}"; do
    [ -n "$i" ] && kill -0 "$i" 2>/dev/null && kill -TERM "$i" 2>/dev/null
  done
  hosts_remove_block "$W"
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
    say "kept $W"
  else
    # Keep the logs next to the results before the scratch directory goes.
    rm -rf "$OUT/logs"
    mkdir -p "$OUT/logs"
    cp "$W"/*/*.log "$W"/shoald/log/* "$OUT/logs/" 2>/dev/null
    rm -rf "$W"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port HOST PORT PID WHAT: until HOST:PORT accepts (15 s), or PID dies.
wait_port() {
  local i
  for ((i = 0; i < 150; i++)); do
    if timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || die "$4 exited during startup (see its log under $W)"
    sleep 0.1
  done
  die "$4 does not accept on $1:$2 after 15 s"
}

# --- data: random files and certificates, reused across runs ------------------

mkdir -p "$DATA/www" "$DATA/origin"
if [ ! -s "$DATA/www/$BULK" ] || [ "$(stat -c %s "$DATA/www/$BULK")" -ne $((SIZE_MIB << 20)) ]; then
  say "writing $SIZE_MIB MiB of random data to $DATA/www/$BULK (once)"
  openssl enc -aes-128-ctr -pass pass:"$(openssl rand -hex 16)" -nosalt -pbkdf2 </dev/zero 2>/dev/null |
    head -c $((SIZE_MIB << 20)) >"$DATA/www/$BULK.tmp" || true
  [ "$(stat -c %s "$DATA/www/$BULK.tmp")" -eq $((SIZE_MIB << 20)) ] || die "could not write $BULK"
  mv "$DATA/www/$BULK.tmp" "$DATA/www/$BULK"
fi
[ -s "$DATA/www/$SMALL" ] || head -c 1024 /dev/urandom >"$DATA/www/$SMALL"

# Origin: an ECDSA P-256 CA and leaf for both names (and the IP).
ocnf=$DATA/origin/openssl.cnf
if [ ! -s "$DATA/origin/leaf.crt" ] || ! grep -q "$RELAY_HOST" "$ocnf" 2>/dev/null ||
  ! grep -q "IP:$ORIGIN_IP" "$ocnf"; then
  say "making the origin CA and certificate in $DATA/origin"
  cat >"$ocnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Shoal bench origin CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$TUNNEL_HOST, DNS:$RELAY_HOST, IP:$ORIGIN_IP
EOF
  (
    cd "$DATA/origin"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -config openssl.cnf -extensions ca -key ca.key -out ca.crt -days 3650 -sha256
    openssl ecparam -name prime256v1 -genkey -noout -out leaf.key
    openssl req -new -key leaf.key -subj "/CN=$RELAY_HOST" -out leaf.csr
    openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 825 -sha256 -extfile openssl.cnf -extensions leaf -out leaf.crt
    chmod 600 ca.key leaf.key
  ) >"$DATA/origin/openssl.log" 2>&1 || die "openssl failed; see $DATA/origin/openssl.log"
fi
OCA=$DATA/origin/ca.crt
# The site CA shoald and squid mint leaves from (RSA 2048, as Dragonfly's guide).
if [ ! -s "$DATA/site/ca.key" ]; then
  "$root/tools/gen-ca.sh" "$DATA/site" --cn "Shoal bench site CA" >/dev/null || die "tools/gen-ca.sh failed"
fi
SCA=$DATA/site/ca.crt

# Other engineers rebuild build/shoald while we run: measure a snapshot, and
# say which tree it came from.
cp "$BUILD/shoald" "$W/shoald.bin"
SHOALD_BIN=$W/shoald.bin
dirty=$(cd "$root" && git status --porcelain -- userspace include 2>/dev/null | wc -l) || dirty=unknown

hosts_add_block "$W" "$ORIGIN_IP $TUNNEL_HOST" "$ORIGIN_IP $RELAY_HOST" || die "cannot edit /etc/hosts"
getent hosts "$RELAY_HOST" | grep -q "^$ORIGIN_IP " || die "$RELAY_HOST does not resolve to $ORIGIN_IP"

# --- background load: the proxy core should be idle before anything starts ------

# core_busy CPU: ticks CPU spent neither idle nor waiting for I/O so far.
core_busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)
# background NAME: how busy both cores are over 2 s, as "info" in raw.txt.
background() {
  local p0 c0 p1 c1
  p0=$(core_busy "$PCPU")
  c0=$(core_busy "$CCPU")
  sleep 2
  p1=$(core_busy "$PCPU")
  c1=$(core_busy "$CCPU")
  echo "info background_$1=proxy_cpu:$(((p1 - p0) * 100 / (2 * HZ)))%,client_cpu:$(((c1 - c0) * 100 / (2 * HZ)))%" >>"$RAW"
}
background before

# wait_idle: before each measurement, waits (1 s samples) until both cores
# are under 10 % busy, so a burst from another job on the machine does not
# land in a run. Bounded: at most $BENCH_IDLE_WAIT seconds over the whole
# bench (default 240); once spent, runs go ahead and "other %" in the
# table shows what they shared the core with.
idle_budget=${BENCH_IDLE_WAIT:-240}
idle_waited=0
wait_idle() {
  local p0 c0 p1 c1
  while [ "$idle_waited" -lt "$idle_budget" ]; do
    p0=$(core_busy "$PCPU")
    c0=$(core_busy "$CCPU")
    sleep 1
    p1=$(core_busy "$PCPU")
    c1=$(core_busy "$CCPU")
    if [ $(((p1 - p0) * 100)) -lt $((10 * HZ)) ] && [ $(((c1 - c0) * 100)) -lt $((10 * HZ)) ]; then return 0; fi
    idle_waited=$((idle_waited + 2))
    sleep 1
  done
}

# --- f. cipher speed, on the proxy's core while nothing else runs --------------

say "mbedTLS AEAD speed on cpu $PCPU"
taskset -c "$PCPU" "$BUILD/bench/cipher_speed" --seconds 2 | sed 's/^/cipher /' >>"$RAW" ||
  die "cipher_speed failed"

# --- the origin ---------------------------------------------------------------

mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
http {
  default_type application/octet-stream;
  types {}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $W/nginx/body;
  proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fastcgi;
  uwsgi_temp_path $W/nginx/uwsgi;
  scgi_temp_path $W/nginx/scgi;
  log_format bench '\$request_uri \$status \$body_bytes_sent \$ssl_protocol \$ssl_cipher';
  access_log $W/nginx/access.log bench buffer=256k flush=1s;
  server {
    listen $ORIGIN_IP:$ORIGIN_PORT ssl;
    server_name $TUNNEL_HOST $RELAY_HOST;
    ssl_certificate $DATA/origin/leaf.crt;
    ssl_certificate_key $DATA/origin/leaf.key;
    ssl_protocols TLSv1.2;
    root $DATA/www;
  }
}
EOF
taskset -c "$CCPU" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" \
  -g 'daemon off;' </dev/null >"$W/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
bg_pids+=("$NGINX_PID")
wait_port "$ORIGIN_IP" "$ORIGIN_PORT" "$NGINX_PID" nginx

# --- shoald ----------------------------------------------------------------------

SHOALD_PORT=$(free_port)
mkdir -p "$W/shoald/data" "$W/shoald/log"
cat >"$W/shoald/shoald.yaml" <<EOF
workers: 1
proxy:
  connectPorts: [$ORIGIN_PORT]
  proxies:
    # The embedded default's rules; the bench's paths match none of them,
    # so hijacked requests route direct (relayed, not stored).
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
hijackHTTPS:
  cert: $DATA/site/ca.crt
  key: $DATA/site/ca.key
  hosts:
    - regx: ^relay\\.bench\\.shoal\\.test\$
tls:
  trustStore: $OCA
EOF
taskset -c "$PCPU" "$SHOALD_BIN" -c "$W/shoald/shoald.yaml" --data-dir "$W/shoald/data" \
  --log-dir "$W/shoald/log" --admin-socket "$W/shoald/admin.sock" \
  --metrics-listen "127.0.0.1:$(free_port)" --proxy-listen "127.0.0.1:$SHOALD_PORT" \
  </dev/null >"$W/shoald/log/shoald.out" 2>&1 &
SHOALD_PID=$!
bg_pids+=("$SHOALD_PID")
wait_port 127.0.0.1 "$SHOALD_PORT" "$SHOALD_PID" shoald

# --- squid -----------------------------------------------------------------------

SQT_PORT=$(free_port)
SQB_PORT=$(free_port)
SQ=$W/squid
mkdir -p "$SQ"
cp "$DATA/site/ca.crt" "$SQ/site.crt"
cp "$DATA/site/ca.key" "$SQ/site.key"
"$certgen" -c -s "$SQ/ssl_db" -M 4MB >"$SQ/certgen-init.log" 2>&1 || die "security_file_certgen -c failed"
cat >"$SQ/squid.conf" <<EOF
workers 1
http_port 127.0.0.1:$SQT_PORT
http_port 127.0.0.1:$SQB_PORT ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert=$SQ/site.crt tls-key=$SQ/site.key
sslcrtd_program $certgen -s $SQ/ssl_db -M 4MB
sslcrtd_children 2 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$OCA
acl bench_ports port $ORIGIN_PORT
acl CONNECT method CONNECT
http_access deny CONNECT !bench_ports
http_access allow localhost
http_access deny all
cache deny all
cache_effective_user proxy
pid_filename $SQ/squid.pid
cache_log $SQ/cache.log
access_log stdio:$SQ/access.log
coredump_dir $SQ
shutdown_lifetime 1 seconds
logfile_rotate 0
pinger_enable off
hosts_file /etc/hosts
EOF
chown -R proxy: "$SQ"
taskset -c "$PCPU" squid -N -f "$SQ/squid.conf" </dev/null >"$SQ/stdout.log" 2>&1 &
SQUID_PID=$!
bg_pids+=("$SQUID_PID")
wait_port 127.0.0.1 "$SQB_PORT" "$SQUID_PID" squid
wait_port 127.0.0.1 "$SQT_PORT" "$SQUID_PID" squid

# --- probes: every path works, and which suites it speaks -------------------------

SHOALD=http://127.0.0.1:$SHOALD_PORT
SQT=http://127.0.0.1:$SQT_PORT
SQB=http://127.0.0.1:$SQB_PORT
small_sum=$(sha256sum <"$DATA/www/$SMALL")

# probe NAME URL CA [PROXY]: fetches the 1 KiB file, checks it and records
# the suite curl negotiated.
probe() {
  local name=$1 url=$2 ca=$3 proxy=${4:-} log=$W/probe-$1.log suite
  taskset -c "$CCPU" curl -sS -v --max-time 30 --cacert "$ca" ${proxy:+--proxy "$proxy"} \
    -o "$W/probe-$name.body" "$url?probe=$name" 2>"$log" || die "probe $name ($url via ${proxy:-direct}) failed; see $log"
  [ "$(sha256sum <"$W/probe-$name.body")" = "$small_sum" ] || die "probe $name: wrong body"
  suite=$(sed -n 's/^\* SSL connection using \(.*\)$/\1/p' "$log" | tr -d ' ' | tr '/' ' ')
  echo "suite path=$name client=${suite// /,}" >>"$RAW"
}
probe direct "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$OCA"
probe shoald-tunnel "https://$TUNNEL_HOST:$ORIGIN_PORT/$SMALL" "$OCA" "$SHOALD"
probe shoald-relay "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "$SHOALD"
probe squid-tunnel "https://$TUNNEL_HOST:$ORIGIN_PORT/$SMALL" "$OCA" "$SQT"
probe squid-relay "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "$SQB"
grep -q '"route":"hijack"' "$W/shoald/log/core.log" 2>/dev/null ||
  say "warning: core.log shows no hijacked CONNECT (see $W/shoald/log)"

# --- bulk transfers -----------------------------------------------------------------

# cpu_ticks PID: utime+stime of every thread of PID, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# bulk NAME RUN URL CA [PROXY PID]: one curl of the big file, with the
# proxy's CPU time and peak RSS over the transfer.
bulk() {
  local name=$1 run=$2 url=$3 ca=$4 proxy=${5:-} pid=${6:-} t0=0 t1=0 out code size speed secs hwm=0 b0 b1
  wait_idle
  b0=$(core_busy "$PCPU")
  if [ -n "$pid" ]; then
    echo 5 >"/proc/$pid/clear_refs"  # resets VmHWM to the current RSS
    t0=$(cpu_ticks "$pid")
  fi
  out=$(taskset -c "$CCPU" curl -sS --max-time 600 --cacert "$ca" ${proxy:+--proxy "$proxy"} -o /dev/null \
    -w '%{http_code} %{size_download} %{speed_download} %{time_total}' "$url") ||
    die "bulk $name run $run: curl failed ($out)"
  b1=$(core_busy "$PCPU")
  if [ -n "$pid" ]; then
    t1=$(cpu_ticks "$pid")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  fi
  read -r code size speed secs <<<"$out"
  [ "$code" = 200 ] || die "bulk $name run $run: HTTP $code"
  [ "$size" = $((SIZE_MIB << 20)) ] || die "bulk $name run $run: got $size bytes, want $((SIZE_MIB << 20))"
  echo "bulk name=$name run=$run bytes=$size seconds=$secs bps=$speed cpu_s=$(awk -v d=$((t1 - t0)) -v hz="$HZ" \
    'BEGIN { printf "%.3f", d / hz }') hwm_kib=$hwm measured=$([ -n "$pid" ] && echo 1 || echo 0) \
pcore_busy_s=$(awk -v d=$((b1 - b0)) -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }')" >>"$RAW"
  say "  $name run $run: $(awk -v b="$speed" 'BEGIN { printf "%.0f MB/s", b / 1e6 }')"
}

say "bulk: $SIZE_MIB MiB x $RUNS runs per path"
for ((r = 1; r <= RUNS; r++)); do
  bulk direct "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$BULK" "$OCA"
  bulk shoald-tunnel "$r" "https://$TUNNEL_HOST:$ORIGIN_PORT/$BULK" "$OCA" "$SHOALD" "$SHOALD_PID"
  bulk squid-tunnel "$r" "https://$TUNNEL_HOST:$ORIGIN_PORT/$BULK" "$OCA" "$SQT" "$SQUID_PID"
  bulk shoald-relay "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$BULK" "$SCA" "$SHOALD" "$SHOALD_PID"
  bulk squid-relay "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$BULK" "$SCA" "$SQB" "$SQUID_PID"
done

# --- d. 1 KiB keep-alive -------------------------------------------------------------

# kload NAME RUN URL CA [PROXY_ADDR PID]
kload() {
  local name=$1 run=$2 url=$3 ca=$4 paddr=${5:-} pid=${6:-} line t0=0 t1=0 rc=0 b0 b1
  wait_idle
  b0=$(core_busy "$PCPU")
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  line=$(taskset -c "$CCPU" "$BUILD/bench/kload" --url "$url" --cacert "$ca" ${paddr:+--proxy "$paddr"} \
    -c "$CONNS" -d "$KSECS" --warmup 1 2>"$W/kload-$name-$run.log") || rc=$?
  [ -n "$line" ] || die "kload $name printed nothing; see $W/kload-$name-$run.log"
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  b1=$(core_busy "$PCPU")
  [ "$rc" -eq 0 ] || say "warning: kload $name reported errors: $(head -n 3 "$W/kload-$name-$run.log" | tr '\n' ' ')"
  echo "kload name=$name run=$run $line proxy_cpu_s=$(awk -v d=$((t1 - t0)) -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }') \
pcore_busy_s=$(awk -v d=$((b1 - b0)) -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }')" >>"$RAW"
  say "  $name run $run: $(cut -d' ' -f4-7 <<<"$line")"
}

say "1 KiB: $CONNS keep-alive connections, $KSECS s x $RUNS runs per path"
for ((r = 1; r <= RUNS; r++)); do
  kload direct "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$OCA"
  kload shoald-relay "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "127.0.0.1:$SHOALD_PORT" "$SHOALD_PID"
  kload squid-relay "$r" "https://$RELAY_HOST:$ORIGIN_PORT/$SMALL" "$SCA" "127.0.0.1:$SQB_PORT" "$SQUID_PID"
done

# --- origin-side suites (nginx logs each probe's query), then the report -------------

kill -0 "$SHOALD_PID" 2>/dev/null || die "shoald died during the bench"
kill -0 "$SQUID_PID" 2>/dev/null || die "squid died during the bench"
background after
sleep 1.5  # nginx flushes its buffered access log every second
for p in shoald-relay squid-relay; do
  s=$(awk -v q="probe=$p" 'index($1, q) { print $4 "," $5; exit }' "$W/nginx/access.log")
  echo "suite path=$p origin=${s:-unknown}" >>"$RAW"
done
{
  echo "info date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "info cpu=$(awk -F': ' '/^model name/ { gsub(/ /, "_", $2); print $2; exit }' /proc/cpuinfo)"
  echo "info kernel=$(uname -r)"
  echo "info shoald=$("$SHOALD_BIN" --version 2>&1 | head -n 1 | tr ' ' '_') shoald_dirty=$dirty"
  echo "info squid=$(squid -v | sed -n 's/^Squid Cache: Version //p' | tr ' ' '_')"
  echo "info nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  echo "info curl=$(curl -V | awk 'NR == 1 { print $2 }')"
  echo "info idle_waited_s=$idle_waited idle_budget_s=$idle_budget"
  echo "info size_mib=$SIZE_MIB runs=$RUNS conns=$CONNS kload_seconds=$KSECS proxy_cpu=$PCPU client_cpu=$CCPU"
} >>"$RAW"
python3 "$root/bench/report.py" "$RAW" "$OUT/results.txt" "$OUT/results.md"
cat "$OUT/results.txt"
if [ "${BENCH_TASK:-0}" = 1 ]; then for p in "${bg_pids[@]}"; do stop_pid "$p"; done; BUILD=$BUILD "$root/bench/task.sh"; fi  # frees 127.0.0.20:443 first
