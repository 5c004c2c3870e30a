# shellcheck shell=bash
# What bench/run.sh and bench/task.sh share: the knobs, the rig checks, the
# scratch directory with its cleanup, the random data and certificates, the
# origin nginx, shoald and squid start-up, and the measuring functions (bulk
# curl runs and kload runs, with the proxy's CPU time from /proc/PID/stat).
#
# Sourced, never run. The script that sources it sets BENCH_TAG (the prefix
# of its messages) first, then calls bench_check_rig, bench_scratch and
# bench_data before anything else; every function here runs in that script's
# shell and may call die, which exits it (the EXIT trap cleans up).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
SIZE=$((SIZE_MIB << 20))
OCA=$DATA/origin/ca.crt  # the origin's CA: clients of direct and tunnelled paths trust it
# shellcheck disable=SC2034 # used by the scripts that source this file
SCA=$DATA/site/ca.crt    # the site CA shoald and squid mint leaves from
certgen=/usr/lib/squid/security_file_certgen
HZ=$(getconf CLK_TCK)

say() { echo "[$BENCH_TAG] $*" >&2; }
die() {
  echo "[$BENCH_TAG] FAIL: $*" >&2
  exit 1
}

# bench_check_rig BINARY...: dies unless the rig can run (root, the tools,
# the given build outputs); warns on a one-CPU machine.
bench_check_rig() {
  local c b
  case $ORIGIN_IP in 127.*) ;; *) die "BENCH_ORIGIN_IP=$ORIGIN_IP is not in 127.0.0.0/8" ;; esac
  [ "$(id -u)" -eq 0 ] || die "needs root (ports, /etc/hosts, squid's user switch)"
  for c in curl nginx squid openssl taskset python3 flock awk; do
    command -v "$c" >/dev/null || die "$c not installed (make deps-bench)"
  done
  [ -x "$certgen" ] || die "$certgen missing (squid-openssl not installed?)"
  for b in "$@"; do
    [ -x "$b" ] || die "$b not built (run make bench)"
  done
  [ "$(nproc --all)" -ge 2 ] || say "only one CPU: proxy and clients share it; figures are not comparable"
  unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
}

# --- scratch directory, processes and cleanup ---------------------------------

# bench_scratch NAME RAWFILE LOGDIR: makes the scratch directory
# /tmp/NAME.XXXXXX ($W), empties $OUT/RAWFILE ($RAW) and sets the traps
# that stop every started process (bg_pids) and, on any exit, remove the
# hosts block and copy the logs to $OUT/LOGDIR before deleting $W.
bench_scratch() {
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$W"  # squid drops to the proxy user and must reach its files
  mkdir -p "$OUT"
  RAW=$OUT/$2
  : >"$RAW"
  LOGDIR=$OUT/$3
  bg_pids=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}
# shellcheck source=tests/fixtures/registry/hosts.sh
. "$root/tests/fixtures/registry/hosts.sh"

# stop_pid PID: SIGTERM (and SIGCONT, in case a bench left it stopped),
# then SIGKILL after 10 s; reaps it.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
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

# stop_tree PID: PID's children noted first (squid's helpers, nginx's
# worker), then PID, then any child that outlived it.
stop_tree() {
  local kids k
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ') || true
  stop_pid "$1"
  for k in $kids; do kill -0 "$k" 2>/dev/null && kill -TERM "$k" 2>/dev/null; done
  return 0
}

cleanup() {
  local rc=$? i f d
  set +e
  trap - EXIT INT TERM HUP
  # Children of what we started: note their PIDs first, and stop any that
  # outlive their parent.
  local kids=()
  for ((i = 0; i < ${#bg_pids[@]}; i++)); do
    mapfile -t -O "${#kids[@]}" kids < <(ps -o pid= --ppid "${bg_pids[i]}" 2>/dev/null | tr -d ' ')
  done
  for ((i = ${#bg_pids[@]} - 1; i >= 0; i--)); do stop_pid "${bg_pids[i]}"; done
  for i in "${kids[@]}"; do
    [ -n "$i" ] && kill -0 "$i" 2>/dev/null && kill -TERM "$i" 2>/dev/null
  done
  # The sourcing script's own clean-up (e.g. cgroups, sysctls), once the
  # processes it started are gone.
  if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
  hosts_remove_block "$W"
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
    say "kept $W"
  else
    # Keep the logs next to the results before the scratch directory goes:
    # $W/X/*.log and $W/X/log/* go to LOGDIR/X/, $W/*.log to LOGDIR/.
    rm -rf "$LOGDIR"
    mkdir -p "$LOGDIR"
    cp "$W"/*.log "$LOGDIR/" 2>/dev/null
    for f in "$W"/*/*.log "$W"/*/log/*; do
      [ -f "$f" ] || continue
      d=${f#"$W"/}
      d=$LOGDIR/${d%%/*}
      mkdir -p "$d" && cp "$f" "$d/"
    done
    rm -rf "$W"
  fi
  exit "$rc"
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago and not
# given before in this run (two binds in a row may get the same ephemeral
# port); the ports given are kept in the scratch directory.
free_port() {
  local p i given=${W:?bench_scratch first}/.ports-given
  for ((i = 0; i < 50; i++)); do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ! grep -qx "$p" "$given" 2>/dev/null; then
      echo "$p" >>"$given"
      echo "$p"
      return 0
    fi
  done
  die "free_port: no new port in 50 tries"
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

# round_order R ITEM...: the items in order in odd rounds, reversed in even
# ones, so that no proxy always runs first (or right after another) and
# drift over a round (page cache, thermal, other jobs) does not favour one.
round_order() {
  local r=$1 i
  shift
  if ((r % 2)); then
    echo "$@"
  else
    for ((i = $#; i >= 1; i--)); do printf '%s ' "${!i}"; done
    echo
  fi
}

# --- data: random files and certificates, reused across runs ------------------

# bench_data: $DATA/www/$BULK ($SIZE_MIB MiB random) and $SMALL (1 KiB),
# the origin's ECDSA CA and leaf (both bench names and the IP), the site CA.
bench_data() {
  mkdir -p "$DATA/www" "$DATA/origin"
  if [ ! -s "$DATA/www/$BULK" ] || [ "$(stat -c %s "$DATA/www/$BULK")" -ne "$SIZE" ]; then
    say "writing $SIZE_MIB MiB of random data to $DATA/www/$BULK (once)"
    openssl enc -aes-128-ctr -pass pass:"$(openssl rand -hex 16)" -nosalt -pbkdf2 </dev/zero 2>/dev/null |
      head -c "$SIZE" >"$DATA/www/$BULK.tmp" || true
    [ "$(stat -c %s "$DATA/www/$BULK.tmp")" -eq "$SIZE" ] || die "could not write $BULK"
    mv "$DATA/www/$BULK.tmp" "$DATA/www/$BULK"
  fi
  [ -s "$DATA/www/$SMALL" ] || head -c 1024 /dev/urandom >"$DATA/www/$SMALL"

  local ocnf=$DATA/origin/openssl.cnf
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
  # The site CA (RSA 2048, as Dragonfly's guide).
  if [ ! -s "$DATA/site/ca.key" ]; then
    "$root/tools/gen-ca.sh" "$DATA/site" --cn "Shoal bench site CA" >/dev/null || die "tools/gen-ca.sh failed"
  fi
}

# bench_snapshot_shoald: other engineers rebuild $BUILD/shoald while we run,
# so measure a copy ($SHOALD_BIN) and count the uncommitted files of the
# tree it came from ($dirty).
bench_snapshot_shoald() {
  cp "$BUILD/shoald" "$W/shoald.bin"
  SHOALD_BIN=$W/shoald.bin
  dirty=$(cd "$root" && git status --porcelain -- userspace include 2>/dev/null | wc -l) || dirty=unknown
  # The benches measure the explicit proxy. A shoald that has transparent
  # interception (transparent.mode, default auto) loads its eBPF programs and
  # binds its fixed listener port (transparent.port, 65003) at start, so a
  # second shoald on the machine cannot start: turn it off where the binary
  # knows the key (an older one rejects it as unknown).
  printf 'transparent:\n  mode: off\n' >"$W/transparent-check.yaml"
  transparent_off=0
  if "$SHOALD_BIN" -c "$W/transparent-check.yaml" --check-config >/dev/null 2>&1; then transparent_off=1; fi
}

# --- CPU accounting and idle waits ------------------------------------------------

# core_busy CPU: ticks CPU spent neither idle nor waiting for I/O so far.
core_busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# cpu_ticks PID: utime+stime of every thread of PID, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# hwm_kib PID: peak RSS since start or the last write of 5 to clear_refs.
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
# ticks_s N: N clock ticks as seconds.
ticks_s() { awk -v d="$1" -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }'; }

# background NAME: how busy both cores are over 2 s, as "info" in $RAW.
background() {
  local p0 c0 p1 c1
  p0=$(core_busy "$PCPU")
  c0=$(core_busy "$CCPU")
  sleep 2
  p1=$(core_busy "$PCPU")
  c1=$(core_busy "$CCPU")
  echo "info background_$1=proxy_cpu:$(((p1 - p0) * 100 / (2 * HZ)))%,client_cpu:$(((c1 - c0) * 100 / (2 * HZ)))%" >>"$RAW"
}

# wait_idle: before each measurement, waits (1 s samples) until both cores
# are under 10 % busy, so a burst from another job on the machine does not
# land in a run. Bounded: at most $BENCH_IDLE_WAIT seconds over the whole
# script (default 240); once spent, runs go ahead and "other %" in the
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

# --- servers --------------------------------------------------------------------

# start_nginx [DIRECTIVE...]: the origin, 1 worker, TLS 1.2 only, on
# $ORIGIN_IP:$ORIGIN_PORT for both bench names, serving $DATA/www; the
# directives go into its server block. Its access log ($W/nginx/access.log,
# flushed every second) has "METHOD URI STATUS BODY_BYTES PROTOCOL CIPHER".
start_nginx() {
  local d extra=
  for d in "$@"; do extra+="    $d"$'\n'; done
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
  log_format bench '\$request_method \$request_uri \$status \$body_bytes_sent \$ssl_protocol \$ssl_cipher';
  access_log $W/nginx/access.log bench buffer=256k flush=1s;
  server {
    listen $ORIGIN_IP:$ORIGIN_PORT ssl;
    server_name $TUNNEL_HOST $RELAY_HOST;
    ssl_certificate $DATA/origin/leaf.crt;
    ssl_certificate_key $DATA/origin/leaf.key;
    ssl_protocols TLSv1.2;
    root $DATA/www;
$extra  }
}
EOF
  taskset -c "$CCPU" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" \
    -g 'daemon off;' </dev/null >"$W/nginx/stdout.log" 2>&1 &
  NGINX_PID=$!
  bg_pids+=("$NGINX_PID")
  wait_port "$ORIGIN_IP" "$ORIGIN_PORT" "$NGINX_PID" nginx
}

# shoald_conf DIR FAST_RECORDS PROXY_LINE...: writes DIR/shoald.yaml: one
# worker, CONNECT allowed to the origin's port, relay.bench.shoal.test
# hijacked with leaves from the site CA, the origin's CA trusted, and
# tls.fastRecords set to FAST_RECORDS (true or false; empty leaves the
# default), transparent interception off (see bench_snapshot_shoald). The
# PROXY_LINEs go under "proxy:" as given (two-space indent).
shoald_conf() {
  local dir=$1 fast=$2 l
  shift 2
  mkdir -p "$dir"
  {
    echo "workers: 1"
    echo "proxy:"
    echo "  connectPorts: [$ORIGIN_PORT]"
    for l in "$@"; do echo "$l"; done
    cat <<EOF
hijackHTTPS:
  cert: $DATA/site/ca.crt
  key: $DATA/site/ca.key
  hosts:
    - regx: ^relay\\.bench\\.shoal\\.test\$
tls:
  trustStore: $OCA
EOF
    if [ -n "$fast" ]; then echo "  fastRecords: $fast"; fi
    if [ "$transparent_off" = 1 ]; then printf 'transparent:\n  mode: off\n'; fi
  } >"$dir/shoald.yaml"
}

# start_shoald DIR: runs $SHOALD_BIN on the proxy core with DIR/shoald.yaml,
# data in DIR/data, logs in DIR/log. Sets started_pid, started_port (its
# proxy port on 127.0.0.1) and started_metrics (host:port).
start_shoald() {
  local dir=$1
  started_port=$(free_port)
  started_metrics=127.0.0.1:$(free_port)
  mkdir -p "$dir/data" "$dir/log"
  taskset -c "$PCPU" "$SHOALD_BIN" -c "$dir/shoald.yaml" --data-dir "$dir/data" \
    --log-dir "$dir/log" --admin-socket "$dir/admin.sock" \
    --metrics-listen "$started_metrics" --proxy-listen "127.0.0.1:$started_port" \
    </dev/null >"$dir/log/shoald.out" 2>&1 &
  started_pid=$!
  bg_pids+=("$started_pid")
  wait_port 127.0.0.1 "$started_port" "$started_pid" "shoald ($dir)"
}

# metric ADDR NAME: the value of NAME on shoald's /metrics at ADDR (0 if absent).
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'; }

# squid_prepare DIR: DIR with the site CA's certificate and key and the
# certificate database security_file_certgen mints into.
squid_prepare() {
  mkdir -p "$1"
  cp "$DATA/site/ca.crt" "$1/site.crt"
  cp "$DATA/site/ca.key" "$1/site.key"
  "$certgen" -c -s "$1/ssl_db" -M 4MB >"$1/certgen-init.log" 2>&1 || die "security_file_certgen -c failed"
}

# squid_conf DIR BUMP_PORT [LINE...]: writes DIR/squid.conf: an ssl-bump
# port (bump all, leaves minted from the site CA, the origin's CA trusted),
# access for localhost to the origin's port only, logs in DIR (URLs with
# their query, so squid_codes can tell the bench's URLs apart); the LINEs
# (other ports, cache settings) are added as given.
squid_conf() {
  local dir=$1 port=$2 l
  shift 2
  {
    echo "workers 1"
    echo "http_port 127.0.0.1:$port ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert=$dir/site.crt tls-key=$dir/site.key"
    for l in "$@"; do echo "$l"; done
    cat <<EOF
sslcrtd_program $certgen -s $dir/ssl_db -M 4MB
sslcrtd_children 2 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$OCA
acl bench_ports port $ORIGIN_PORT
acl CONNECT method CONNECT
http_access deny CONNECT !bench_ports
http_access allow localhost
http_access deny all
cache_effective_user proxy
pid_filename $dir/squid.pid
cache_log $dir/cache.log
access_log stdio:$dir/access.log
strip_query_terms off
coredump_dir $dir
shutdown_lifetime 1 seconds
logfile_rotate 0
pinger_enable off
hosts_file /etc/hosts
EOF
  } >"$dir/squid.conf"
  chown -R proxy: "$dir"
}

# start_squid DIR PORT...: squid -N with DIR/squid.conf on the proxy core,
# until every PORT accepts. Sets started_pid.
start_squid() {
  local dir=$1 p
  shift
  taskset -c "$PCPU" squid -N -f "$dir/squid.conf" </dev/null >>"$dir/stdout.log" 2>&1 &
  started_pid=$!
  bg_pids+=("$started_pid")
  for p in "$@"; do wait_port 127.0.0.1 "$p" "$started_pid" "squid ($dir)"; done
}

# squid_codes DIR REGEX: squid's result codes, in order and comma-separated,
# for the URLs in DIR/access.log that match the awk REGEX.
squid_codes() {
  sleep 0.3  # squid writes its access log line after the reply
  awk -v re="$2" '$7 ~ re { s = s (s ? "," : "") $4 } END { print s }' "$1/access.log"
}

# --- measurements -------------------------------------------------------------------

# probe NAME URL CA [PROXY]: fetches the 1 KiB file with ?probe=NAME, checks
# it and records the suite curl negotiated as "suite path=NAME client=...".
probe() {
  local name=$1 url=$2 ca=$3 proxy=${4:-} log=$W/probe-$1.log suite
  taskset -c "$CCPU" curl -sS -v --max-time 30 --cacert "$ca" ${proxy:+--proxy "$proxy"} \
    -o "$W/probe-$name.body" "$url?probe=$name" 2>"$log" || die "probe $name ($url via ${proxy:-direct}) failed; see $log"
  cmp -s "$W/probe-$name.body" "$DATA/www/$SMALL" || die "probe $name: wrong body"
  suite=$(sed -n 's/^\* SSL connection using \(.*\)$/\1/p' "$log" | tr -d ' ' | tr '/' ' ')
  echo "suite path=$name client=${suite// /,}" >>"$RAW"
}

# origin_suites NAME...: for each probe NAME, the suite the origin logged
# for it, as "suite path=NAME origin=PROTOCOL,CIPHER".
origin_suites() {
  local p s
  sleep 1.5  # nginx flushes its buffered access log every second
  for p in "$@"; do
    s=$(awk -v q="probe=$p" 'index($2, q) { print $5 "," $6; exit }' "$W/nginx/access.log")
    echo "suite path=$p origin=${s:-unknown}" >>"$RAW"
  done
}

# bulk NAME RUN URL CA [PROXY PID]: one curl of the $SIZE-byte file to
# /dev/null, with the proxy's CPU time and peak RSS (VmHWM reset first) over
# the transfer and the proxy core's busy time; one "bulk" line in $RAW.
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
    hwm=$(hwm_kib "$pid")
  fi
  read -r code size speed secs <<<"$out"
  [ "$code" = 200 ] || die "bulk $name run $run: HTTP $code"
  [ "$size" = "$SIZE" ] || die "bulk $name run $run: got $size bytes, want $SIZE"
  echo "bulk name=$name run=$run bytes=$size seconds=$secs bps=$speed cpu_s=$(ticks_s $((t1 - t0))) hwm_kib=$hwm" \
    "measured=$([ -n "$pid" ] && echo 1 || echo 0) pcore_busy_s=$(ticks_s $((b1 - b0)))" >>"$RAW"
  say "  $name run $run: $(awk -v b="$speed" 'BEGIN { printf "%.0f MB/s", b / 1e6 }')"
}

# kload NAME RUN URL CA [PROXY_ADDR PID]: $CONNS keep-alive connections for
# $KSECS s after 1 s of warm-up; one "kload" line in $RAW with the proxy's
# CPU time over the whole run (warm-up included). The array kload_args (empty
# unless the caller sets it) is added to kload's arguments.
kload_args=()
kload() {
  local name=$1 run=$2 url=$3 ca=$4 paddr=${5:-} pid=${6:-} line t0=0 t1=0 rc=0 b0 b1
  wait_idle
  b0=$(core_busy "$PCPU")
  if [ -n "$pid" ]; then t0=$(cpu_ticks "$pid"); fi
  line=$(taskset -c "$CCPU" "$BUILD/bench/kload" --url "$url" --cacert "$ca" ${paddr:+--proxy "$paddr"} \
    -c "$CONNS" -d "$KSECS" --warmup 1 ${kload_args[@]+"${kload_args[@]}"} 2>"$W/kload-$name-$run.log") || rc=$?
  [ -n "$line" ] || die "kload $name printed nothing; see $W/kload-$name-$run.log"
  if [ -n "$pid" ]; then t1=$(cpu_ticks "$pid"); fi
  b1=$(core_busy "$PCPU")
  [ "$rc" -eq 0 ] || say "warning: kload $name reported errors: $(head -n 3 "$W/kload-$name-$run.log" | tr '\n' ' ')"
  echo "kload name=$name run=$run $line proxy_cpu_s=$(ticks_s $((t1 - t0))) pcore_busy_s=$(ticks_s $((b1 - b0)))" >>"$RAW"
  say "  $name run $run: $(cut -d' ' -f4-7 <<<"$line")"
}

# bench_info: the rig's description as "info" lines in $RAW.
bench_info() {
  {
    echo "info date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "info cpu=$(awk -F': ' '/^model name/ { gsub(/ /, "_", $2); print $2; exit }' /proc/cpuinfo)"
    echo "info kernel=$(uname -r)"
    echo "info shoald=$("$SHOALD_BIN" --version 2>&1 | head -n 1 | tr ' ' '_') shoald_dirty=$dirty" \
      "shoald_transparent_off=$transparent_off"
    echo "info squid=$(squid -v | sed -n 's/^Squid Cache: Version //p' | tr ' ' '_')"
    echo "info nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "info curl=$(curl -V | awk 'NR == 1 { print $2 }')"
    echo "info idle_waited_s=$idle_waited idle_budget_s=$idle_budget"
    echo "info size_mib=$SIZE_MIB runs=$RUNS conns=$CONNS kload_seconds=$KSECS proxy_cpu=$PCPU client_cpu=$CCPU"
  } >>"$RAW"
}
