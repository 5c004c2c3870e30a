#!/bin/bash
# The task engine against squid's disk cache, on the same rig as run.sh
# (proxy on $BENCH_PROXY_CPU, nginx origin and clients on $BENCH_CLIENT_CPU):
#
#   BUILD=/abs/build bench/task.sh        (or BENCH_TASK=1 at the end of run.sh)
#
# a. 1 GiB hijacked MISS: shoald (fresh --data-dir, a proxies rule matches the
#    file's URL, so it is a task) vs squid ssl-bump with cache_dir aufs.
# b. 1 GiB HIT: the second fetch, shoald's store vs squid's disk hit (squid is
#    restarted between a and b, so its memory cache is empty).
# c. a stored 1 KiB object, $BENCH_CONNS keep-alive connections (kload) vs
#    squid's 1 KiB hit.
# d. 16 concurrent curls of one fresh 1 GiB object through shoald: origin
#    bytes (nginx $body_bytes_sent) / object size.
# e. shoald's peak RSS (VmHWM) over a and b.
# shoald runs with proxy.authCheck: false (pure store hits, no HEAD to the
# origin). Writes $BUILD/bench/task-results.txt, task-results.md, task-raw.txt.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$root/build}
BUILD=$(cd "$BUILD" && pwd)
RUNS=${BENCH_RUNS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
KSECS=${BENCH_KLOAD_SECONDS:-10}
CONNS=${BENCH_CONNS:-16}
NCONC=16
ORIGIN_IP=${BENCH_ORIGIN_IP:-127.0.0.20}
ORIGIN_PORT=${BENCH_ORIGIN_PORT:-443}
PCPU=${BENCH_PROXY_CPU:-1}
CCPU=${BENCH_CLIENT_CPU:-0}
DATA=${BENCH_DATA:-$BUILD/bench-data}
OUT=$BUILD/bench
RELAY_HOST=relay.bench.shoal.test
BULK=bulk-${SIZE_MIB}M.bin
SMALL=1k.bin
SIZE=$((SIZE_MIB << 20))

say() { echo "[bench-task] $*" >&2; }
die() {
  echo "[bench-task] FAIL: $*" >&2
  exit 1
}

case $ORIGIN_IP in 127.*) ;; *) die "BENCH_ORIGIN_IP=$ORIGIN_IP is not in 127.0.0.0/8" ;; esac
[ "$(id -u)" -eq 0 ] || die "needs root (ports, /etc/hosts, squid's user switch)"
for c in curl nginx squid openssl taskset python3 flock awk; do
  command -v "$c" >/dev/null || die "$c not installed (make deps-bench)"
done
certgen=/usr/lib/squid/security_file_certgen
[ -x "$certgen" ] || die "$certgen missing (squid-openssl not installed?)"
for b in "$BUILD/shoald" "$BUILD/bench/kload"; do
  [ -x "$b" ] || die "$b not built (run make bench)"
done
# The data and certificates are made by run.sh (kept in $DATA across runs).
for f in "www/$BULK" "www/$SMALL" origin/ca.crt origin/leaf.crt origin/leaf.key site/ca.crt site/ca.key; do
  [ -s "$DATA/$f" ] || die "$DATA/$f missing: run bench/run.sh once (it writes $DATA)"
done
[ "$(stat -c %s "$DATA/www/$BULK")" -eq "$SIZE" ] || die "$DATA/www/$BULK is not $SIZE_MIB MiB (run bench/run.sh with BENCH_SIZE_MIB=$SIZE_MIB)"
grep -q "$RELAY_HOST" "$DATA/origin/openssl.cnf" 2>/dev/null || die "origin certificate lacks $RELAY_HOST (rerun bench/run.sh)"
OCA=$DATA/origin/ca.crt
SCA=$DATA/site/ca.crt

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# --- scratch, processes, cleanup (as run.sh) ----------------------------------

W=$(mktemp -d /tmp/shoal-bench-task.XXXXXX)
chmod 755 "$W"
mkdir -p "$OUT"
RAW=$OUT/task-raw.txt
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
    rm -rf "$OUT/task-logs"
    mkdir -p "$OUT/task-logs"
    cp "$W"/*/*.log "$W"/shoald/log/* "$OUT/task-logs/" 2>/dev/null
    rm -rf "$W"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  local i
  for ((i = 0; i < 150; i++)); do
    if timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || die "$4 exited during startup (see its log under $W)"
    sleep 0.1
  done
  die "$4 does not accept on $1:$2 after 15 s"
}

cp "$BUILD/shoald" "$W/shoald.bin"
SHOALD_BIN=$W/shoald.bin
dirty=$(cd "$root" && git status --porcelain -- userspace include 2>/dev/null | wc -l) || dirty=unknown

hosts_add_block "$W" "$ORIGIN_IP $RELAY_HOST" || die "cannot edit /etc/hosts"
getent hosts "$RELAY_HOST" | grep -q "^$ORIGIN_IP " || die "$RELAY_HOST does not resolve to $ORIGIN_IP"

core_busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)
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
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# --- the origin: as run.sh, plus cacheable headers (expires 1h: Expires and
# Cache-Control: max-age=3600) so squid stores the objects ---------------------

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
    server_name $RELAY_HOST;
    ssl_certificate $DATA/origin/leaf.crt;
    ssl_certificate_key $DATA/origin/leaf.key;
    ssl_protocols TLSv1.2;
    root $DATA/www;
    expires 1h;
  }
}
EOF
taskset -c "$CCPU" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" \
  -g 'daemon off;' </dev/null >"$W/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
bg_pids+=("$NGINX_PID")
wait_port "$ORIGIN_IP" "$ORIGIN_PORT" "$NGINX_PID" nginx

# --- shoald: a fresh data dir, a rule that makes the bench files tasks ----------

SHOALD_PORT=$(free_port)
METRICS=127.0.0.1:$(free_port)
mkdir -p "$W/shoald/data" "$W/shoald/log"
cat >"$W/shoald/shoald.yaml" <<EOF
workers: 1
proxy:
  connectPorts: [$ORIGIN_PORT]
  # Pure store hits: no credential HEAD to the origin before serving stored bytes.
  authCheck: false
  proxies:
    - regx: relay\\.bench\\.shoal\\.test(:$ORIGIN_PORT)?/(bulk-[0-9]+M|1k)\\.bin
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
  --metrics-listen "$METRICS" --proxy-listen "127.0.0.1:$SHOALD_PORT" \
  </dev/null >"$W/shoald/log/shoald.out" 2>&1 &
SHOALD_PID=$!
bg_pids+=("$SHOALD_PID")
wait_port 127.0.0.1 "$SHOALD_PORT" "$SHOALD_PID" shoald
metric() { curl -s "http://$METRICS/metrics" | awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'; }

# --- squid: ssl-bump with the disk cache of design.md §7 -------------------------

SQB_PORT=$(free_port)
SQ=$W/squid
mkdir -p "$SQ/cache"
cp "$DATA/site/ca.crt" "$SQ/site.crt"
cp "$DATA/site/ca.key" "$SQ/site.key"
"$certgen" -c -s "$SQ/ssl_db" -M 4MB >"$SQ/certgen-init.log" 2>&1 || die "security_file_certgen -c failed"
cat >"$SQ/squid.conf" <<EOF
workers 1
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
cache_dir aufs $SQ/cache 16000 16 256
maximum_object_size 2 GB
cache_mem 256 MB
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
squid -N -z -f "$SQ/squid.conf" </dev/null >"$SQ/squid-z.log" 2>&1 || die "squid -z failed; see $SQ/squid-z.log"
SQUID_PID=
start_squid() {
  taskset -c "$PCPU" squid -N -f "$SQ/squid.conf" </dev/null >>"$SQ/stdout.log" 2>&1 &
  SQUID_PID=$!
  bg_pids+=("$SQUID_PID")
  wait_port 127.0.0.1 "$SQB_PORT" "$SQUID_PID" squid
}
# stop_squid: its helpers first noted, as cleanup does.
stop_squid() {
  local kids k
  kids=$(ps -o pid= --ppid "$SQUID_PID" 2>/dev/null | tr -d ' ') || true
  stop_pid "$SQUID_PID"
  for k in $kids; do kill -0 "$k" 2>/dev/null && kill -TERM "$k" 2>/dev/null; done
  return 0
}
start_squid

SHOALD=http://127.0.0.1:$SHOALD_PORT
SQB=http://127.0.0.1:$SQB_PORT
# squid_last PATH: the result code of squid's last access.log line for PATH.
squid_last() { sleep 0.3; awk -v p="$1" 'index($7, p) { r = $4 } END { print r }' "$SQ/access.log"; }
# origin_gets PATH: GETs nginx logged for PATH (flushed every second).
origin_gets() { sleep 1.5; awk -v p="$1" '$1 == "GET" && $2 == p { n++ } END { print n + 0 }' "$W/nginx/access.log"; }

# bulk NAME URL PROXY PID: one curl of the big file, with the proxy's CPU
# time; VmHWM is not reset here (e. is over a and b together).
bulk() {
  local name=$1 url=$2 proxy=$3 pid=$4 t0 t1 out code size speed secs
  wait_idle
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$CCPU" curl -sS --max-time 600 --cacert "$SCA" --proxy "$proxy" -o /dev/null \
    -w '%{http_code} %{size_download} %{speed_download} %{time_total}' "$url") ||
    die "bulk $name: curl failed ($out)"
  t1=$(cpu_ticks "$pid")
  read -r code size speed secs <<<"$out"
  [ "$code" = 200 ] || die "bulk $name: HTTP $code"
  [ "$size" = "$SIZE" ] || die "bulk $name: got $size bytes, want $SIZE"
  echo "bulk name=$name bytes=$size seconds=$secs bps=$speed cpu_s=$(awk -v d=$((t1 - t0)) -v hz="$HZ" \
    'BEGIN { printf "%.3f", d / hz }') hwm_kib=$(hwm_kib "$pid")" >>"$RAW"
  say "  $name: $(awk -v b="$speed" 'BEGIN { printf "%.0f MB/s", b / 1e6 }')"
}

# --- a. miss, b. hit ----------------------------------------------------------------

say "a. 1 GiB miss"
echo 5 >"/proc/$SHOALD_PID/clear_refs"  # VmHWM := current RSS, before a
bulk shoald-miss "https://$RELAY_HOST/$BULK" "$SHOALD" "$SHOALD_PID"
bulk squid-miss "https://$RELAY_HOST/$BULK" "$SQB" "$SQUID_PID"
echo "check squid_miss=$(squid_last "/$BULK")" >>"$RAW"
grep -q '"route":"p2p"' "$W/shoald/log/core.log" || die "shoald did not route the bulk GET to the task engine (core.log)"

say "b. 1 GiB hit (squid restarted first: an empty memory cache, so a disk hit)"
stop_squid
start_squid
reuse0=$(metric shoal_task_reuse_total)
bulk shoald-hit "https://$RELAY_HOST/$BULK" "$SHOALD" "$SHOALD_PID"
bulk squid-hit "https://$RELAY_HOST/$BULK" "$SQB" "$SQUID_PID"
reuse1=$(metric shoal_task_reuse_total)
echo "check squid_hit=$(squid_last "/$BULK") shoald_reuse=$((reuse1 - reuse0)) origin_gets_bulk=$(origin_gets "/$BULK") \
shoald_hwm_ab_kib=$(hwm_kib "$SHOALD_PID")" >>"$RAW"

# --- c. 1 KiB stored object ------------------------------------------------------------

say "c. 1 KiB hit: $CONNS keep-alive connections, $KSECS s x $RUNS runs per proxy"
for p in "$SHOALD" "$SQB" "$SQB"; do  # store it in shoald, squid: miss then hit
  taskset -c "$CCPU" curl -sS --max-time 30 --cacert "$SCA" --proxy "$p" -o /dev/null "https://$RELAY_HOST/$SMALL" ||
    die "1 KiB fetch via $p failed"
done
echo "check squid_small_second=$(squid_last "/$SMALL")" >>"$RAW"
sq_lines0=$(wc -l <"$SQ/access.log")
reuse0=$(metric shoal_task_reuse_total)
kload() {
  local name=$1 run=$2 paddr=$3 pid=$4 line t0 t1 rc=0
  wait_idle
  t0=$(cpu_ticks "$pid")
  line=$(taskset -c "$CCPU" "$BUILD/bench/kload" --url "https://$RELAY_HOST/$SMALL" --cacert "$SCA" --proxy "$paddr" \
    -c "$CONNS" -d "$KSECS" --warmup 1 2>"$W/kload-$name-$run.log") || rc=$?
  [ -n "$line" ] || die "kload $name printed nothing; see $W/kload-$name-$run.log"
  t1=$(cpu_ticks "$pid")
  [ "$rc" -eq 0 ] || say "warning: kload $name reported errors: $(head -n 3 "$W/kload-$name-$run.log" | tr '\n' ' ')"
  echo "kload name=$name run=$run $line proxy_cpu_s=$(awk -v d=$((t1 - t0)) -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }')" >>"$RAW"
  say "  $name run $run: $(cut -d' ' -f4-7 <<<"$line")"
}
for ((r = 1; r <= RUNS; r++)); do
  kload shoald-hit "$r" "127.0.0.1:$SHOALD_PORT" "$SHOALD_PID"
  kload squid-hit "$r" "127.0.0.1:$SQB_PORT" "$SQUID_PID"
done
reuse1=$(metric shoal_task_reuse_total)
sleep 0.5
sq_small=$(tail -n +"$((sq_lines0 + 1))" "$SQ/access.log" | awk -v p="/$SMALL" 'index($7, p) { n++; if ($4 ~ /HIT/) h++ } END { printf "%d/%d", h, n }')
echo "check small_origin_gets=$(origin_gets "/$SMALL") shoald_small_reuse=$((reuse1 - reuse0)) squid_small_hits=$sq_small" >>"$RAW"

# --- d. 16 concurrent clients, one fresh object ---------------------------------------

say "d. $NCONC concurrent curls of a fresh $SIZE_MIB MiB object through shoald"
FRESH="/$BULK?fresh=$$"
wait_idle
echo 5 >"/proc/$SHOALD_PID/clear_refs"
t0=$(cpu_ticks "$SHOALD_PID")
s0=$(date +%s.%N)
cpids=()
for ((i = 0; i < NCONC; i++)); do
  taskset -c "$CCPU" curl -sS --max-time 900 --cacert "$SCA" --proxy "$SHOALD" -o /dev/null \
    -w '%{http_code} %{size_download}\n' "https://$RELAY_HOST$FRESH" >"$W/conc-$i.out" 2>"$W/conc-$i.err" &
  cpids+=("$!")
done
bad=0
for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
s1=$(date +%s.%N)
t1=$(cpu_ticks "$SHOALD_PID")
ok=$(cat "$W"/conc-*.out | awk -v s="$SIZE" '$1 == 200 && $2 == s { n++ } END { print n + 0 }')
sleep 1.5
obytes=$(awk -v p="$FRESH" '$2 == p { b += $4 } END { printf "%d", b }' "$W/nginx/access.log")
ogets=$(awk -v p="$FRESH" '$1 == "GET" && $2 == p { n++ } END { print n + 0 }' "$W/nginx/access.log")
echo "conc clients=$NCONC ok=$ok failed=$bad origin_bytes=$obytes origin_gets=$ogets size=$SIZE \
seconds=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }') cpu_s=$(awk -v d=$((t1 - t0)) -v hz="$HZ" \
'BEGIN { printf "%.3f", d / hz }') hwm_kib=$(hwm_kib "$SHOALD_PID")" >>"$RAW"
[ "$ok" = "$NCONC" ] || say "warning: only $ok of $NCONC concurrent clients got the whole object (see $W/conc-*.err)"

kill -0 "$SHOALD_PID" 2>/dev/null || die "shoald died during the bench"
kill -0 "$SQUID_PID" 2>/dev/null || die "squid died during the bench"
{
  echo "info date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "info shoald=$("$SHOALD_BIN" --version 2>&1 | head -n 1 | tr ' ' '_') shoald_dirty=$dirty"
  echo "info squid=$(squid -v | sed -n 's/^Squid Cache: Version //p' | tr ' ' '_')"
  echo "info size_mib=$SIZE_MIB kload_runs=$RUNS conns=$CONNS kload_seconds=$KSECS proxy_cpu=$PCPU client_cpu=$CCPU idle_waited_s=$idle_waited"
} >>"$RAW"

# --- report -------------------------------------------------------------------------------

python3 - "$RAW" "$OUT/task-results.txt" "$OUT/task-results.md" <<'PY'
import statistics, sys
raw, txt, md = sys.argv[1:4]
recs = []
for line in open(raw):
    kind, *kv = line.split()
    recs.append((kind, dict(x.split("=", 1) for x in kv if "=" in x)))
def one(kind, **m):
    return next(d for k, d in recs if k == kind and all(d.get(a) == b for a, b in m.items()))
chk = {}
for k, d in recs:
    if k in ("check", "info"): chk.update(d)
GiB = 1 << 30
obj = f"{chk['size_mib']} MiB" if chk['size_mib'] != "1024" else "1 GiB"
bulk = {n: one("bulk", name=n) for n in ("shoald-miss", "squid-miss", "shoald-hit", "squid-hit")}
mbs = {n: float(d["bps"]) / 1e6 for n, d in bulk.items()}
cpg = {n: float(d["cpu_s"]) / (int(d["bytes"]) / GiB) for n, d in bulk.items()}
kl = {n: [d for k, d in recs if k == "kload" and d["name"] == n] for n in ("shoald-hit", "squid-hit")}
rps = {n: statistics.median(float(d["rps"]) for d in v) for n, v in kl.items()}
p50 = {n: statistics.median(float(d["p50_ms"]) for d in v) for n, v in kl.items()}
p99 = {n: max(float(d["p99_ms"]) for d in v) for n, v in kl.items()}
err = {n: sum(int(d["errors"]) for d in v) for n, v in kl.items()}
conc = one("conc")
cratio = int(conc["origin_bytes"]) / int(conc["size"])
hwm = max(int(bulk[n]["hwm_kib"]) for n in ("shoald-miss", "shoald-hit")) / 1024
hwm = max(hwm, int(chk["shoald_hwm_ab_kib"]) / 1024)
pf = lambda ok: "PASS" if ok else "MISS"
hit_r = mbs["shoald-hit"] / mbs["squid-hit"]
rps_r = rps["shoald-hit"] / rps["squid-hit"]
rows = [
    (f"a. {obj} miss MB/s", f"{mbs['shoald-miss']:.0f}", f"{mbs['squid-miss']:.0f}", f"{mbs['shoald-miss']/mbs['squid-miss']:.2f}x", "report only"),
    ("a. miss CPU-s/GiB", f"{cpg['shoald-miss']:.2f}", f"{cpg['squid-miss']:.2f}", f"{cpg['shoald-miss']/cpg['squid-miss']:.2f}x", "report only"),
    (f"b. {obj} hit MB/s", f"{mbs['shoald-hit']:.0f}", f"{mbs['squid-hit']:.0f} (disk)", f"{hit_r:.2f}x", f"{pf(hit_r >= 1.5)} (>= 1.5x)"),
    ("b. hit CPU-s/GiB", f"{cpg['shoald-hit']:.2f}", f"{cpg['squid-hit']:.2f}", f"{cpg['shoald-hit']/cpg['squid-hit']:.2f}x", "report only"),
    ("c. 1 KiB hit req/s", f"{rps['shoald-hit']:.0f}", f"{rps['squid-hit']:.0f}", f"{rps_r:.2f}x", f"{pf(rps_r >= 1.0)} (>= 1.0x)"),
    ("c. 1 KiB p50 ms", f"{p50['shoald-hit']:.3f}", f"{p50['squid-hit']:.3f}", "", ""),
    ("c. 1 KiB p99 ms (worst)", f"{p99['shoald-hit']:.3f}", f"{p99['squid-hit']:.3f}", "", f"{pf(p99['shoald-hit'] <= 1.0)} (<= 1 ms)"),
    (f"d. {conc['clients']} concurrent: origin bytes/object", f"{cratio:.2f}x", "-", "", f"{pf(abs(cratio - 1.0) < 1e-9 and conc['ok'] == conc['clients'])} (= 1.0x)"),
    ("e. shoald peak RSS (a+b) MiB", f"{hwm:.1f}", "-", "", f"{pf(hwm <= 64)} (<= 64 MiB)"),
]
notes = [
    f"shoald: proxy.authCheck=false (pure store hits, no HEAD to the origin); fresh --data-dir; {chk.get('shoald', '?')} dirty_files={chk.get('shoald_dirty', '?')}",
    f"squid {chk.get('squid', '?')}: ssl-bump, cache_dir aufs 16000 16 256, maximum_object_size 2 GB, cache_mem 256 MB; restarted between a and b (empty memory cache)",
    f"checks: squid {obj} miss={chk.get('squid_miss')} hit={chk.get('squid_hit')}; shoald store reuses in b={chk.get('shoald_reuse')}; origin GETs of the {obj} path over a+b={chk.get('origin_gets_bulk')} (2 = one per proxy)",
    f"1 KiB: squid hits during kload={chk.get('squid_small_hits')}; shoald store reuses={chk.get('shoald_small_reuse')}; origin GETs of 1k.bin={chk.get('small_origin_gets')}; kload errors shoald={err['shoald-hit']} squid={err['squid-hit']}",
    f"d: {conc['ok']}/{conc['clients']} clients got {conc['size']} bytes in {conc['seconds']} s; origin GETs={conc['origin_gets']} bytes={conc['origin_bytes']}; shoald CPU {conc['cpu_s']} s, peak RSS {int(conc['hwm_kib'])/1024:.1f} MiB",
    f"{chk.get('date')}; bulk: 1 run each; 1 KiB: median req/s and p50 of {chk.get('kload_runs')} runs x {chk.get('kload_seconds')} s, {chk.get('conns')} conns; proxy cpu {chk.get('proxy_cpu')}, clients cpu {chk.get('client_cpu')}",
]
hdr = ("row", "shoald", "squid", "ratio", "target")
w = [max(len(r[i]) for r in rows + [hdr]) for i in range(5)]
with open(txt, "w") as f:
    f.write("Task engine vs squid disk cache (bench/task.sh)\n")
    for r in [hdr] + rows:
        f.write("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() + "\n")
    f.write("".join(f"- {n}\n" for n in notes))
with open(md, "w") as f:
    f.write("| " + " | ".join(hdr) + " |\n|" + "---|" * 5 + "\n")
    for r in rows:
        f.write("| " + " | ".join(r) + " |\n")
    f.write("\n" + "".join(f"- {n}\n" for n in notes))
PY
cat "$OUT/task-results.txt"
