# shellcheck shell=bash disable=SC2119,SC2120
# Helpers for tests/integration/t_*.sh; source it first thing:
#
#   . "$(dirname "$0")/lib.sh"
#
# A test exits 0 to pass, 77 to skip (skip MSG) and anything else to fail
# (fail MSG). Cleanups registered with on_exit run in reverse order however
# the test ends, including on SIGTERM from run.sh's per-test timeout.
#
# Environment:
#   BUILD            build directory holding shoald (default <repo>/build)
#   SHOAL_FIXTURE    WORKDIR of a running tests/fixtures/registry fixture
#                    (run.sh brings one up for the whole run); unset, the
#                    test brings up its own with fixture_up
#   SHOAL_KEEP_TMP=1 keep the test's temporary directory for inspection

set -euo pipefail

SHOAL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$SHOAL_ROOT/build}
if [ -d "$BUILD" ]; then BUILD=$(cd "$BUILD" && pwd); fi
TEST_NAME=$(basename "$0" .sh)
export BUILD SHOAL_ROOT

# Tests decide per command whether a proxy is used; an inherited one would
# silently turn a direct check into a proxied one.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# info MSG: a progress line on stderr (run.sh keeps it in the test's log).
info() { echo "[$TEST_NAME] $*" >&2; }

# skip MSG: ends the test as skipped (exit 77), running the cleanups.
skip() {
  echo "SKIP: $*" >&2
  exit 77
}

# fail MSG: ends the test as failed (exit 1), running the cleanups.
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

need_root() { [ "$(id -u)" -eq 0 ] || skip "needs root"; }

# need_cmd CMD...: skips unless every CMD is installed.
need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || skip "$c not installed (make deps-test)"
  done
}

# --- cleanup stack ------------------------------------------------------------

_shoal_cleanups=()

# on_exit CMD...: runs CMD (one shell command, its words joined) when the test
# exits; the last registered runs first. A failing cleanup is reported and
# does not stop the others or change the test's result.
on_exit() { _shoal_cleanups+=("$*"); }

_shoal_run_cleanups() {
  local rc=$? i
  set +e
  trap - EXIT INT TERM HUP
  for ((i = ${#_shoal_cleanups[@]} - 1; i >= 0; i--)); do
    eval "${_shoal_cleanups[i]}" || echo "[$TEST_NAME] cleanup failed: ${_shoal_cleanups[i]}" >&2
  done
  _shoal_cleanups=()
  if [ "${_shoal_cleanup_failed:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
    echo "FAIL: shoald reported a sanitizer error" >&2
    rc=1
  fi
  exit "$rc"
}
trap _shoal_run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# TEST_TMP: the test's scratch directory, removed at exit unless SHOAL_KEEP_TMP=1.
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-$TEST_NAME.XXXXXX")
if [ "${SHOAL_KEEP_TMP:-0}" = 1 ]; then
  on_exit "echo '[$TEST_NAME] kept $TEST_TMP' >&2"
else
  on_exit "rm -rf '$TEST_TMP'"
fi

# --- small utilities ------------------------------------------------------------

# wait_port HOST PORT TIMEOUT_SECONDS: returns 0 once HOST:PORT accepts a TCP
# connection, 1 if it still does not after TIMEOUT_SECONDS.
wait_port() {
  local host=$1 port=$2 deadline=$((SECONDS + $3))
  while :; do
    if timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then return 0; fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago and
# that this test has not been given before (the kernel may hand the same
# ephemeral port to two binds in a row: a daemon's proxy and metrics
# listeners once got the same one). Ports given are kept in $TEST_TMP.
free_port() {
  local p i given=$TEST_TMP/.ports-given
  for ((i = 0; i < 50; i++)); do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ! grep -qx "$p" "$given" 2>/dev/null; then
      echo "$p" >>"$given"
      echo "$p"
      return 0
    fi
  done
  echo "free_port: no new port in 50 tries" >&2
  return 1
}

# sha256_of FILE: prints "sha256:<hex>" of FILE.
sha256_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# assert_same_file A B WHAT: fails unless A and B are byte for byte equal.
assert_same_file() {
  [ -f "$1" ] || fail "$3: $1 missing"
  [ -f "$2" ] || fail "$3: $2 missing"
  cmp -s "$1" "$2" || fail "$3: $1 and $2 differ ($(sha256_of "$1") vs $(sha256_of "$2"))"
}

# assert_eq GOT WANT WHAT
assert_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }

# log_mark FILE: prints FILE's current line count, for log_since.
log_mark() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# log_since FILE MARK: prints the lines FILE gained after log_mark printed MARK.
log_since() { if [ -f "$1" ]; then tail -n +"$(($2 + 1))" "$1"; fi; }

# --- the registry fixture ---------------------------------------------------------

# fixture_up: makes the fixture's variables (see tests/fixtures/registry/up.sh,
# WORKDIR/env) available: reuses $SHOAL_FIXTURE when run.sh started one, else
# starts a private one torn down at exit. Skips when the fixture cannot run
# here (not root, a tool missing).
fixture_up() {
  if [ -n "${SHOAL_FIXTURE_SKIP:-}" ]; then skip "fixture: $SHOAL_FIXTURE_SKIP"; fi
  if [ -n "${SHOAL_FIXTURE_ERROR:-}" ]; then fail "fixture: $SHOAL_FIXTURE_ERROR"; fi
  if [ -n "${SHOAL_FIXTURE:-}" ]; then
    [ -f "$SHOAL_FIXTURE/env" ] || fail "SHOAL_FIXTURE=$SHOAL_FIXTURE has no env file"
    # shellcheck disable=SC1091
    . "$SHOAL_FIXTURE/env"
    kill -0 "$SHOAL_TEST_REGISTRY_PID" 2>/dev/null || fail "fixture registry (pid $SHOAL_TEST_REGISTRY_PID) is not running"
    kill -0 "$SHOAL_TEST_NGINX_PID" 2>/dev/null || fail "fixture nginx (pid $SHOAL_TEST_NGINX_PID) is not running"
    return 0
  fi
  need_root
  local w rc=0
  w=$(mktemp -d "${TMPDIR:-/tmp}/shoal-fixture.XXXXXX")
  _shoal_own_fixture=$w
  on_exit fixture_down
  info "starting the registry fixture in $w"
  "$SHOAL_ROOT/tests/fixtures/registry/up.sh" "$w" || rc=$?
  [ "$rc" -eq 77 ] && skip "registry fixture cannot run here (see above)"
  [ "$rc" -eq 0 ] || fail "registry fixture failed to start (rc=$rc)"
  # shellcheck disable=SC1091
  . "$w/env"
}

# fixture_down: stops and removes the fixture this test started (a no-op for
# a fixture shared through SHOAL_FIXTURE).
fixture_down() {
  local w=${_shoal_own_fixture:-}
  [ -n "$w" ] || return 0
  "$SHOAL_ROOT/tests/fixtures/registry/down.sh" "$w"
  if [ "${SHOAL_KEEP_TMP:-0}" = 1 ]; then
    info "kept fixture $w"
  else
    rm -rf "$w"
  fi
  _shoal_own_fixture=
}

# registry_token: prints the bearer token by the anonymous flow against the
# fixture's realm, as clients do (the fixture's token is static).
registry_token() {
  curl -sSf --cacert "$SHOAL_TEST_ORIGIN_CA" \
    "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:${1:-$SHOAL_TEST_HELLO_REPO}:pull" |
    jq -er .token
}

# --- shoald ---------------------------------------------------------------------

# make_ca DIR: creates a site CA (DIR/ca.crt, DIR/ca.key mode 0600) with
# tools/gen-ca.sh (or $SHOAL_GEN_CA); skips while that tool does not exist yet.
make_ca() {
  local gen=${SHOAL_GEN_CA:-$SHOAL_ROOT/tools/gen-ca.sh}
  [ -x "$gen" ] || skip "tools/gen-ca.sh not available yet"
  mkdir -p "$1"
  "$gen" "$1" >"$1/gen-ca.log" 2>&1 || { cat "$1/gen-ca.log" >&2; fail "tools/gen-ca.sh $1 failed"; }
  if [ ! -s "$1/ca.crt" ] || [ ! -s "$1/ca.key" ]; then
    fail "tools/gen-ca.sh did not write $1/ca.crt and $1/ca.key"
  fi
  [ "$(stat -c %a "$1/ca.key")" = 600 ] || fail "tools/gen-ca.sh left $1/ca.key mode $(stat -c %a "$1/ca.key"), want 600"
}

_shoald_count=0

# start_shoald CONFIG [ARGS...]: runs
#   $BUILD/shoald -c CONFIG --data-dir D --log-dir L --admin-socket S
#                 --metrics-listen 127.0.0.1:PORT [--proxy-listen 127.0.0.1:PORT] [ARGS]
# in the background (stdout and stderr to L/shoald.out), waits up to 15 s
# until the proxy port accepts, and stops it at exit (SIGTERM, SIGKILL after
# 10 s). A free --proxy-listen port is picked unless ARGS give one. Sets
# SHOALD_PID, SHOALD_PROXY_PORT, SHOALD_PROXY (http://127.0.0.1:PORT),
# SHOALD_DATA_DIR, SHOALD_LOG_DIR, SHOALD_ADMIN_SOCKET, SHOALD_METRICS_PORT.
# Skips when $BUILD/shoald does not exist. With SHOAL_TEST_FAST_RECORDS=0
# (run.sh's "fast-records-off" variant) the daemon gets a copy of CONFIG
# that sets tls.fastRecords: false.
start_shoald() {
  local config=$1 bin=$BUILD/shoald dir a listen="" i j
  shift
  [ -x "$bin" ] || skip "$bin not built yet"
  _shoald_count=$((_shoald_count + 1))
  dir=$TEST_TMP/shoald.$_shoald_count
  mkdir -p "$dir/data" "$dir/log"
  if [ "${SHOAL_TEST_FAST_RECORDS:-1}" = 0 ]; then
    # Same directory, so relative paths in the file still resolve.
    local off
    off=$(dirname "$config")/.fast-records-off.$_shoald_count.yaml
    awk '{ print } /^tls:[[:space:]]*$/ { print "  fastRecords: false"; done = 1 }
         END { if (!done) { print "tls:"; print "  fastRecords: false" } }' "$config" >"$off" ||
      fail "cannot write $off"
    on_exit rm -f "$off"
    config=$off
  fi
  SHOALD_DATA_DIR=$dir/data
  SHOALD_LOG_DIR=$dir/log
  SHOALD_ADMIN_SOCKET=$dir/admin.sock
  SHOALD_METRICS_PORT=$(free_port)
  local args=(-c "$config" --data-dir "$SHOALD_DATA_DIR" --log-dir "$SHOALD_LOG_DIR"
    --admin-socket "$SHOALD_ADMIN_SOCKET" --metrics-listen "127.0.0.1:$SHOALD_METRICS_PORT")
  # Daemons stay out of transparent interception (its fixed listener port,
  # kernel hooks) unless the test's configuration has a transparent section.
  grep -q '^transparent:' "$config" || args+=(--transparent off)
  for ((i = 1; i <= $#; i++)); do
    a=${!i}
    case $a in
      --proxy-listen=*) listen=${a#--proxy-listen=} ;;
      --proxy-listen) j=$((i + 1)); listen=${!j-} ;;
    esac
  done
  if [ -z "$listen" ]; then
    listen=127.0.0.1:$(free_port)
    args+=(--proxy-listen "$listen")
  fi
  SHOALD_PROXY_PORT=${listen##*:}
  SHOALD_PROXY=http://127.0.0.1:$SHOALD_PROXY_PORT
  info "starting shoald: $bin ${args[*]} $*"
  "$bin" "${args[@]}" "$@" </dev/null >"$SHOALD_LOG_DIR/shoald.out" 2>&1 &
  SHOALD_PID=$!
  on_exit stop_shoald "$SHOALD_PID" "'$SHOALD_LOG_DIR/shoald.out'"
  local deadline=$((SECONDS + 15))
  until timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SHOALD_PROXY_PORT" 2>/dev/null; do
    if ! kill -0 "$SHOALD_PID" 2>/dev/null; then
      tail -n 30 "$SHOALD_LOG_DIR/shoald.out" >&2
      fail "shoald exited during startup (see $SHOALD_LOG_DIR)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "shoald does not accept on $listen after 15 s"
    sleep 0.1
  done
  export SHOALD_PID SHOALD_PROXY_PORT SHOALD_PROXY SHOALD_DATA_DIR SHOALD_LOG_DIR \
    SHOALD_ADMIN_SOCKET SHOALD_METRICS_PORT
}

# stop_shoald PID: SIGTERM, SIGKILL after 10 s; reports a nonzero exit status.
stop_shoald() {
  local pid=$1 i rc=0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    info "shoald $pid ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || info "shoald $pid exited with status $rc"
  # Under make san a sanitizer report fails the test, whatever else passed.
  if [ -n "${2:-}" ] && grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$2" 2>/dev/null; then
    echo "[$TEST_NAME] sanitizer report from shoald $pid:" >&2
    head -n 60 "$2" >&2
    _shoal_cleanup_failed=1
  fi
  return 0
}

# shoal_log [NAME]: prints the path of shoald's log NAME (default core.log).
shoal_log() { echo "${SHOALD_LOG_DIR:?start_shoald first}/${1:-core.log}"; }

# log_count JQ_FILTER [FILE]: prints how many JSON lines of FILE (default
# core.log) JQ_FILTER selects; lines that are not JSON are ignored.
log_count() {
  local file=${2:-$(shoal_log)}
  [ -f "$file" ] || { echo 0; return 0; }
  jq -R "fromjson? | select($1)" "$file" | jq -s length
}

# assert_log_has JQ_FILTER [FILE]: fails unless some JSON line of FILE
# (default core.log) satisfies JQ_FILTER, e.g.
#   assert_log_has '.msg == "connect" and .route == "hijack"'
# Waits up to 5 s, since a line may be written after the client finished.
assert_log_has() {
  local file=${2:-$(shoal_log)} deadline=$((SECONDS + 5))
  while [ "$(log_count "$1" "$file")" -eq 0 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "--- last lines of $file:" >&2
      tail -n 20 "$file" >&2 2>/dev/null || echo "(missing)" >&2
      fail "no line of $file matches: $(tr -s '\n ' '  ' <<<"$1")"
    fi
    sleep 0.2
  done
}

# --- origins, raw clients and process helpers (proxy behaviour tests) -----------

# stop_pid PID [SIGNAL]: sends SIGNAL (default TERM) to PID if it still
# runs, SIGKILL after 5 s, and reaps it. Never signals by name.
stop_pid() {
  local pid=$1 sig=${2:-TERM} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# make_origin_cert DIR SAN: a throwaway origin CA (DIR/ca.crt, DIR/ca.key)
# and a leaf it signs (DIR/leaf.crt, DIR/leaf.key, EC P-256) whose
# subjectAltName is SAN, e.g. "IP:127.0.0.1,DNS:origin.test".
make_origin_cert() {
  local d=$1 san=$2
  mkdir -p "$d"
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=Shoal test origin CA $(basename "$d")" -keyout "$d/ca.key" -out "$d/ca.crt" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=origin" \
        -keyout "$d/leaf.key" -out "$d/leaf.csr" &&
      printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" >"$d/ext.cnf" &&
      openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/leaf.crt"
  } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; fail "make_origin_cert $d failed"; }
}

# start_fault_origin NAME [fault_origin.py ARGS...]: starts
# tests/fixtures/fault_origin.py on 127.0.0.1 and a free port, logging its
# requests to $TEST_TMP/NAME.requests; sets NAME_PORT and NAME_PID and stops
# it at exit. Pass --cert/--key for TLS.
start_fault_origin() {
  local name=$1 port pid
  shift
  port=$(free_port)
  python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --listen "127.0.0.1:$port" \
    --log "$TEST_TMP/$name.requests" "$@" >"$TEST_TMP/$name.out" 2>&1 &
  pid=$!
  on_exit stop_pid "$pid"
  wait_port 127.0.0.1 "$port" 10 || { cat "$TEST_TMP/$name.out" >&2; fail "fault origin $name did not start"; }
  printf -v "${name}_PORT" %s "$port"
  printf -v "${name}_PID" %s "$pid"
}

# start_tinyproxy NAME [USER PASS]: a site proxy for upstreamProxy tests:
# tinyproxy in the foreground (-d) on 127.0.0.1 and a free port, allowing
# CONNECT to the fixture's port, with BasicAuth USER PASS if given; its
# config and log (LogLevel Connect: one "Request (file descriptor N):
# CONNECT host:port HTTP/1.1" line per CONNECT) in $TEST_TMP. Sets
# NAME_PORT, NAME_PID and NAME_LOG; stopped by PID at exit.
start_tinyproxy() {
  local name=$1 port pid conf=$TEST_TMP/$1.conf log=$TEST_TMP/$1.log
  port=$(free_port)
  {
    echo "Port $port"
    echo "Listen 127.0.0.1"
    echo "Timeout 60"
    echo "LogFile \"$log\""
    echo "LogLevel Connect"
    echo "MaxClients 64"
    echo "ConnectPort ${SHOAL_TEST_PORT:-443}"
    if [ $# -ge 3 ]; then echo "BasicAuth $2 $3"; fi
  } >"$conf"
  tinyproxy -d -c "$conf" >"$TEST_TMP/$name.out" 2>&1 &
  pid=$!
  on_exit stop_pid "$pid"
  wait_port 127.0.0.1 "$port" 10 || { cat "$TEST_TMP/$name.out" >&2; fail "tinyproxy $name did not start"; }
  printf -v "${name}_PORT" %s "$port"
  printf -v "${name}_PID" %s "$pid"
  printf -v "${name}_LOG" %s "$log"
}

# tinyproxy_connects LOG MARK HOSTPORT: how many CONNECTs to HOSTPORT the
# tinyproxy log LOG gained since log_mark printed MARK.
tinyproxy_connects() {
  log_since "$1" "$2" | grep -cF "): CONNECT $3 HTTP/1" || true
}

# proxy_client ARGS...: runs tests/integration/proxy_client.py (raw and
# multiplexed clients that curl cannot play; see its --help).
proxy_client() { python3 "$SHOAL_ROOT/tests/integration/proxy_client.py" "$@"; }

# rss_kib PID: prints VmRSS of PID in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# shoald_alive WHAT: fails unless shoald still runs and answers /healthz.
shoald_alive() {
  kill -0 "$SHOALD_PID" 2>/dev/null || fail "shoald died ($1)"
  local h
  h=$(curl -sS --max-time 5 "http://127.0.0.1:$SHOALD_METRICS_PORT/healthz") || fail "shoald /healthz unreachable ($1)"
  assert_eq "$h" ok "shoald /healthz ($1)"
}

# wait_exit PID SECONDS: waits for PID (a background child of this shell;
# call it directly, not in $(...), whose subshell cannot reap it) to exit
# and sets WAIT_RC to its exit status, or to "timeout" if it still runs
# after SECONDS.
# shellcheck disable=SC2034 # WAIT_RC is read by the caller
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  WAIT_RC=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      WAIT_RC=timeout
      return 0
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || WAIT_RC=$?
}

# --- task engine helpers (t_task_*.sh) ---------------------------------------------

# metric SERIES: prints the value of one /metrics series of the running
# shoald, e.g. metric 'shoal_tasks_total{result="success"}'; 0 when absent.
metric() {
  local out
  out=$(curl -sS --max-time 5 "http://127.0.0.1:${SHOALD_METRICS_PORT:?start_shoald first}/metrics") ||
    fail "GET /metrics failed"
  awk -v s="$1" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }' <<<"$out"
}

# origin_count PATTERN [NAME [METHOD]]: prints how many METHOD (default GET)
# requests fault origin NAME (default ORIGIN, started with
# start_fault_origin) logged whose target contains PATTERN.
origin_count() {
  local f=$TEST_TMP/${2:-ORIGIN}.requests
  [ -f "$f" ] || { echo 0; return 0; }
  jq -r --arg p "$1" --arg m "${3:-GET}" 'select(.method == $m and (.target | contains($p))) | .target' "$f" | wc -l
}

# task_files DATA_DIR: prints the files under DATA_DIR/tmp and the complete
# task directories (tasks/*/*) of a shoald data dir, one per line.
task_files() {
  find "$1/tmp" -mindepth 1 2>/dev/null
  find "$1/tasks" -mindepth 2 -maxdepth 2 2>/dev/null
}

# registry_config OUT SITE_CA_DIR [PROXY_LINE...]: writes a shoald config for
# the registry fixture: the guide's two rules, registry and blob hosts
# hijacked with the site CA, origins verified against the fixture's CA. Each
# PROXY_LINE (e.g. "authCheck: false") is added under proxy:.
registry_config() {
  local out=$1 ca=$2 line
  shift 2
  {
    echo "proxy:"
    for line in "$@"; do echo "  $line"; done
    echo "  proxies:"
    echo "    - regx: blobs/sha256.*"
    echo "    - regx: manifests/sha256.*"
    echo "hijackHTTPS:"
    echo "  cert: $ca/ca.crt"
    echo "  key: $ca/ca.key"
    echo "  hosts:"
    echo "    - regx: $SHOAL_TEST_REGISTRY_HOST"
    echo "    - regx: $SHOAL_TEST_BLOBS_HOST"
    echo "tls:"
    echo "  trustStore: $SHOAL_TEST_ORIGIN_CA"
  } >"$out"
}
