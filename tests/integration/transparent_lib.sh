# shellcheck shell=bash
# Helpers shared by the transparent-interception tests (t_transparent_*.sh);
# source it after lib.sh:
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/transparent_lib.sh"
#   tp_init ebpf|iptables|auto
#
# Every cgroup a test makes lives below one cgroup of its own on the cgroup2
# mount ($TP_ROOT, "shoal-test-<test>-<pid>"), which tp_init registers for
# removal at exit: processes still inside are signalled by PID (TERM, then
# KILL), then the directories go, deepest first. Shoal iptables chains left
# in this network namespace (a failure between a kill -9 and `shoalctl
# cleanup`) are removed at exit too.
#
# The transparent listener has a fixed port (transparent.port, 65003), so
# only one of these daemons may run at a time: tp_start_shoald refuses to
# start while something listens there.

TP_PROBE=$SHOAL_ROOT/tests/integration/transparent_probe.py
TP_LISTEN_PORT=65003
TP_SITE_CN="Shoal site CA"
TP_ORIGIN_CN="Shoal test origin CA"
TP_V6_NAME=v6origin.shoal.test
TP_V6_SIZE=300000

# tp_cgroup2_mount: prints the cgroup2 mount point from /proc/self/mountinfo
# (fields after " - " are fstype, source, options; field 5 the mount point).
tp_cgroup2_mount() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
    /proc/self/mountinfo
}

# tp_kernel_at_least MAJOR MINOR
tp_kernel_at_least() {
  local v maj min
  v=$(uname -r)
  maj=${v%%.*}
  min=${v#*.}
  min=${min%%[!0-9]*}
  [ "$maj" -gt "$1" ] || { [ "$maj" -eq "$1" ] && [ "$min" -ge "$2" ]; }
}

# tp_need_ebpf: skips unless the kernel has what the eBPF backend uses:
# cgroup sock_addr programs (bpftool's probe), getpeername
# hooks (5.8), SO_NETNS_COOKIE (5.14) and, on a hybrid host, the cgroup
# fix of 5.15.
tp_need_ebpf() {
  local want_min=14
  [ "$TP_CG2" = /sys/fs/cgroup ] || want_min=15
  tp_kernel_at_least 5 "$want_min" || skip "kernel $(uname -r) lacks what the eBPF backend needs (5.$want_min or later)"
  if command -v bpftool >/dev/null; then
    local probe
    probe=$(bpftool feature probe kernel 2>/dev/null) || true
    local t
    for t in cgroup_sock_addr; do
      grep -q "^eBPF program_type $t is available" <<<"$probe" ||
        skip "kernel $(uname -r) has no BPF program type $t (bpftool feature probe kernel)"
    done
  fi
}

# tp_need_iptables: skips unless iptables and ip6tables accept what the
# backend inserts (-m cgroup --path, multiport), probed in a scratch chain
# no traffic reaches.
tp_need_iptables() {
  need_cmd iptables ip6tables iptables-save ip6tables-save
  local chain=shoaltp$$ ipt ok=1
  for ipt in iptables ip6tables; do
    "$ipt" -w -t nat -N "$chain" 2>/dev/null || { ok=0; continue; }
    "$ipt" -w -t nat -A "$chain" -p tcp -m cgroup --path / -m multiport --dports 443 -j RETURN 2>/dev/null || ok=0
    "$ipt" -w -t nat -F "$chain" 2>/dev/null
    "$ipt" -w -t nat -X "$chain" 2>/dev/null
  done
  [ "$ok" = 1 ] || skip "iptables/ip6tables here refuse '-m cgroup --path' or multiport in the nat table (kernel lacks xt_cgroup?)"
}

# tp_init MODE: checks prerequisites (root, tools, the kernel feature for
# MODE), finds the cgroup2 mount (TP_CG2) and makes the test's own cgroup
# TP_ROOT (TP_ROOT_REL relative to the mount).
tp_init() {
  TP_MODE=$1
  need_root
  need_cmd curl jq skopeo cmp diff python3 ss openssl
  [ -x "$BUILD/shoald" ] || skip "$BUILD/shoald not built yet"
  [ -x "$BUILD/shoalctl" ] || skip "$BUILD/shoalctl not built yet"
  TP_CG2=$(tp_cgroup2_mount)
  [ -n "$TP_CG2" ] || skip "no cgroup2 mount in /proc/self/mountinfo (transparent interception needs cgroup v2)"
  case $TP_MODE in
    ebpf) tp_need_ebpf ;;
    iptables) tp_need_iptables ;;
  esac
  TP_ROOT_REL=shoal-test-$TEST_NAME-$$
  TP_ROOT=$TP_CG2/$TP_ROOT_REL
  mkdir "$TP_ROOT" || fail "cannot make cgroup $TP_ROOT"
  on_exit tp_remove_cgroups
  on_exit tp_remove_stale_rules
  # The test shell's own cgroup, to come back to after starting a daemon
  # elsewhere.
  TP_SELF_CG=$TP_CG2$(awk -F: '$1 == "0" { print $3 }' /proc/$$/cgroup)
  TP_SELF_CG=${TP_SELF_CG%/}
  info "cgroup2 at $TP_CG2; test cgroups below $TP_ROOT; mode $TP_MODE"
}

# tp_remove_cgroups: the exit cleanup of TP_ROOT (see the top of the file).
tp_remove_cgroups() {
  local d pid pids i
  [ -d "$TP_ROOT" ] || return 0
  # A failure while the test shell sat in a test cgroup (starting a daemon
  # there) must not leave it inside.
  echo $$ >"$TP_SELF_CG/cgroup.procs" 2>/dev/null
  while IFS= read -r d; do
    for ((i = 0; i < 60; i++)); do
      pids=$(cat "$d/cgroup.procs" 2>/dev/null) || break
      [ -n "$pids" ] || break
      for pid in $pids; do
        [ "$pid" != $$ ] || continue
        if [ "$i" -lt 30 ]; then kill -TERM "$pid" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
      done
      sleep 0.1
    done
    for ((i = 0; i < 30; i++)); do
      rmdir "$d" 2>/dev/null && break
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ -d "$d" ] && info "cleanup: cannot remove cgroup $d"
  done < <(find "$TP_ROOT" -depth -type d)
  return 0
}

# tp_rules: prints every Shoal line of iptables-save and ip6tables-save
# (nft and legacy variants) in this network namespace.
tp_rules() {
  local t
  for t in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save; do
    command -v "$t" >/dev/null || continue
    "$t" 2>/dev/null | grep -i shoal | sed "s/^/$t: /"
  done
  return 0
}

# tp_assert_no_rules WHAT: fails if any Shoal chain or rule exists.
tp_assert_no_rules() {
  local r
  r=$(tp_rules)
  [ -z "$r" ] || fail "Shoal iptables rules remain $1:
$r"
}

# tp_remove_stale_rules: exit cleanup; only acts when Shoal rules exist
# (then they are this test's: only one iptables backend fits a namespace).
tp_remove_stale_rules() {
  [ -n "$(tp_rules)" ] || return 0
  info "cleanup: Shoal iptables rules left; shoalctl cleanup"
  "$BUILD/shoalctl" --socket "$TEST_TMP/no-daemon.sock" cleanup >&2
}

# tp_mkcg REL...: makes cgroups $TP_ROOT/REL (parents first).
tp_mkcg() {
  local r
  for r in "$@"; do mkdir -p "$TP_ROOT/$r" || fail "cannot make cgroup $TP_ROOT/$r"; done
}

# tp_cgid ABS: the cgroup id the kernel reports for a cgroup (its inode).
tp_cgid() { stat -c %i "$1"; }

# tp_in CGROUP CMD...: runs CMD inside CGROUP (absolute path), as an
# unmodified job would be: the shell moves itself in, then execs CMD.
tp_in() {
  local cg=$1
  shift
  sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}

# tp_ctl ARGS...: shoalctl against the running test daemon.
tp_ctl() { "$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" "$@"; }

# tp_t FIELD: one field of `shoalctl --json status`'s "transparent" object.
tp_t() {
  local out
  out=$(tp_ctl --json status) || fail "shoalctl status failed"
  jq -r ".transparent.$1" <<<"$out"
}

tp_listener_busy() { [ -n "$(ss -Hltn "sport = :$TP_LISTEN_PORT")" ]; }

# --- set-up -----------------------------------------------------------------------

# tp_setup_trust: the site CA (TP_SITE), client trust (TP_BUNDLE: site CA +
# the fixture's origin CA, for hijacked and tunnelled hosts; TP_CERTDIR the
# same for skopeo) and the IPv6 origin's certificate (TP_V6).
tp_setup_trust() {
  TP_SITE=$TEST_TMP/site-ca
  make_ca "$TP_SITE"
  TP_BUNDLE=$TEST_TMP/client-cas.pem
  cat "$TP_SITE/ca.crt" "$SHOAL_TEST_ORIGIN_CA" >"$TP_BUNDLE"
  TP_CERTDIR=$TEST_TMP/client-certdir
  mkdir -p "$TP_CERTDIR"
  cp "$TP_SITE/ca.crt" "$TP_CERTDIR/site.crt"
  cp "$SHOAL_TEST_ORIGIN_CA" "$TP_CERTDIR/origin.crt"
  TP_V6=$TEST_TMP/v6-origin
  make_origin_cert "$TP_V6" "DNS:$TP_V6_NAME,IP:::1"
}

# tp_setup: tp_setup_trust, and the direct reference pulls (TP_DIRECT) that
# intercepted pulls must equal.
tp_setup() {
  tp_setup_trust
  TP_DIRECT=$TEST_TMP/direct
  mkdir -p "$TP_DIRECT"
  info "direct reference pulls (outside any intercepted cgroup)"
  skopeo --insecure-policy copy --quiet --src-cert-dir "$SHOAL_TEST_ORIGIN_CERT_DIR" --src-no-creds \
    "docker://$SHOAL_TEST_HELLO_REF" "dir:$TP_DIRECT/skopeo" || fail "direct skopeo copy failed"
  SSL_CERT_FILE=$SHOAL_TEST_ORIGIN_CA "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$TP_DIRECT/oras" >/dev/null ||
    fail "direct oras pull failed"
  assert_same_file "$TP_DIRECT/oras/$SHOAL_TEST_SIF_NAME" "$SHOAL_TEST_SIF_FILE" "direct SIF vs pushed"
}

# tp_write_config OUT MODE [CGROUP...]: a shoald config for the registry
# fixture (the guide's rules, registry and blob hosts hijacked, the IPv6
# origin's name hijacked with its own CA) with a transparent section: MODE,
# the CGROUPs (relative to the mount) to attach at start, job cgroups below
# $TP_ROOT/jobs.
tp_write_config() {
  local out=$1 mode=$2 cg
  shift 2
  {
    echo "proxy:"
    echo "  proxies:"
    echo "    - regx: blobs/sha256.*"
    echo "    - regx: manifests/sha256.*"
    echo "hijackHTTPS:"
    echo "  cert: $TP_SITE/ca.crt"
    echo "  key: $TP_SITE/ca.key"
    echo "  hosts:"
    echo "    - regx: $SHOAL_TEST_REGISTRY_HOST"
    echo "    - regx: $SHOAL_TEST_BLOBS_HOST"
    echo "    - regx: $TP_V6_NAME"
    echo "      certs: [$TP_V6/ca.crt]"
    echo "tls:"
    echo "  trustStore: $SHOAL_TEST_ORIGIN_CA"
    echo "transparent:"
    echo "  mode: $mode"
    echo "  ports: [443]"
    echo "  jobParent: $TP_ROOT_REL/jobs"
    if [ $# -eq 0 ]; then
      echo "  cgroups: []"
    else
      echo "  cgroups:"
      for cg in "$@"; do echo "    - $cg"; done
    fi
  } >"$out"
  local chk
  chk=$("$BUILD/shoald" --check-config -c "$out" 2>&1) || fail "--check-config rejects $out: $chk"
}

# tp_start_shoald CONFIG MODE: start_shoald, then waits until the admin
# socket answers and reports transparent mode MODE (the transparent set-up
# runs after the explicit listener accepts). MODE "any" (for mode auto)
# accepts ebpf or iptables and skips when auto found neither. Sets
# TP_MODE_RUNNING to the mode the daemon reports.
tp_start_shoald() {
  local config=$1 want=$2 m="" deadline
  if tp_listener_busy; then
    ss -Hltnp "sport = :$TP_LISTEN_PORT" >&2
    fail "port $TP_LISTEN_PORT is busy: another transparent shoald runs here"
  fi
  start_shoald "$config"
  deadline=$((SECONDS + 15))
  while :; do
    m=$(tp_ctl --json status 2>/dev/null | jq -r '.transparent.mode // empty' 2>/dev/null) || m=""
    [ "$m" = "$want" ] && break
    if [ "$want" = any ] && [ -n "$m" ]; then
      [ "$m" != off ] && break
      skip "transparent.mode auto found no backend on this kernel: $(tp_t reason)"
    fi
    if ! kill -0 "$SHOALD_PID" 2>/dev/null; then
      tail -n 30 "$SHOALD_LOG_DIR/shoald.out" >&2
      fail "shoald exited during startup"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$SHOALD_LOG_DIR/shoald.out" >&2
      fail "shoald reports transparent mode '$m' after 15 s, want $want"
    fi
    sleep 0.1
  done
  tp_listener_busy || fail "nothing listens on the transparent port $TP_LISTEN_PORT"
  TP_MODE_RUNNING=$m
  info "shoald $SHOALD_PID up, transparent mode $m"
}

# tp_kill9: SIGKILL to the test daemon (by PID) and reaps it.
tp_kill9() {
  kill -KILL "$SHOALD_PID" 2>/dev/null || fail "shoald $SHOALD_PID is not running"
  wait "$SHOALD_PID" 2>/dev/null || true
  kill -0 "$SHOALD_PID" 2>/dev/null && fail "shoald $SHOALD_PID survived SIGKILL"
  return 0
}

# tp_bpf_progs CGROUP: how many Shoal programs are attached to CGROUP
# (bpftool; prints "?" without bpftool).
tp_bpf_progs() {
  command -v bpftool >/dev/null || { echo "?"; return 0; }
  bpftool cgroup show "$1" 2>/dev/null | grep -c 'shoal_' || true
}

# --- checks -----------------------------------------------------------------------

# tp_connects MARK: the "connect" lines core.log gained since MARK, one JSON
# object per line.
tp_connects() { log_since "$(shoal_log)" "$1" | jq -c 'fromjson? | select(.msg == "connect")' -R; }

# tp_count MARK JQ: how many of those satisfy JQ.
tp_count() { tp_connects "$1" | jq -s "[.[] | select($2)] | length"; }

# tp_redirected_net: connects the hooks redirected, less those shoald found
# already closed by their client when it took them (eBPF: a probe that
# connects, asks getpeername() and closes can be gone before a slow shoald
# looks; it gets no "connect" line, only the client_gone counter).
tp_redirected_net() {
  echo $(($(tp_t redirected) - $(metric 'shoal_transparent_connections_total{result="client_gone"}')))
}

# tp_wait_connects MARK RED0 WHAT: waits (10 s at most) until the number of
# transparent connect lines since MARK equals the growth of
# tp_redirected_net since it read RED0, and is not zero: every redirected
# connect reached shoald and was logged (lines are written at close).
tp_wait_connects() {
  local mark=$1 red0=$2 what=$3 n red deadline=$((SECONDS + 10))
  while :; do
    n=$(tp_count "$mark" '.via == "transparent"')
    red=$(($(tp_redirected_net) - red0))
    [ "$n" -gt 0 ] && [ "$n" -eq "$red" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      tp_connects "$mark" >&2
      fail "$what: $red connects redirected but $n transparent connect lines"
    fi
    sleep 0.2
  done
  info "$what: $n connects redirected and logged"
}

# tp_check_job_lines MARK WHAT CGID: every connect line since MARK came
# through the transparent listener (no explicit proxy use); with eBPF each
# names the job's cgroup (CGID, or "any": some cgroup other than shoald's)
# and a process other than shoald; iptables cannot tell.
tp_check_job_lines() {
  local mark=$1 what=$2 cgid=$3 dcg
  assert_eq "$(tp_count "$mark" '.via != "transparent"')" 0 "$what: connect lines not via transparent"
  if [ "$TP_MODE_RUNNING" = ebpf ]; then
    assert_eq "$(tp_count "$mark" "(.tgid // 0) == 0 or .tgid == $SHOALD_PID")" 0 \
      "$what: connect lines without the job's tgid, or with shoald's own"
    if [ "$cgid" = any ]; then
      dcg=$(tp_cgid "$TP_CG2$(awk -F: '$1 == "0" { print $3 }' "/proc/$SHOALD_PID/cgroup")")
      assert_eq "$(tp_count "$mark" "(.cgroup_id // 0) == 0 or .cgroup_id == $dcg")" 0 \
        "$what: connect lines without a job cgroup id, or with shoald's"
    else
      assert_eq "$(tp_count "$mark" ".cgroup_id != $cgid")" 0 "$what: connect lines whose cgroup_id is not $cgid"
    fi
  else
    assert_eq "$(tp_count "$mark" '.tgid != null or .cgroup_id != null')" 0 \
      "$what: iptables connect lines claiming a tgid or cgroup id"
  fi
}

# tp_pulls WHAT CGID RUNNER...: the product check. RUNNER (a command prefix
# that starts its arguments inside an intercepted cgroup) runs, with no
# proxy variables: curl for a token (token host: tunnelled) and a blob
# (registry: hijacked; shoald's task engine follows the 307 to the blob
# store itself), skopeo copy docker://… and the ORAS pull program. Results
# must equal the direct pulls; core.log must show the registry hijacked,
# the token host tunnelled to its original address, every connection via
# the transparent listener, and the counters must agree with the lines.
# CGID: the cgroup id the clients run in, or "any" for `shoalctl run`
# (then four job cgroups, one per client).
tp_pulls() {
  local what=$1 cgid=$2 dir mark red0 token code reg_hp auth_hp
  shift 2
  dir=$TEST_TMP/pull-$what
  mkdir -p "$dir"
  mark=$(log_mark "$(shoal_log)")
  red0=$(tp_redirected_net)
  reg_hp=$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT
  auth_hp=$SHOAL_TEST_AUTH_IP:$SHOAL_TEST_PORT

  info "$what: curl token + blob, skopeo copy, oras pull"
  token=$("$@" curl -sSf --cacert "$TP_BUNDLE" \
    "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull" |
    jq -er .token) || fail "$what: token fetch failed"
  code=$("$@" curl -sS -L --cacert "$TP_BUNDLE" -o "$dir/blob" -w '%{http_code}' \
    -H "Authorization: Bearer $token" \
    "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST") ||
    fail "$what: curl of the blob failed"
  assert_eq "$code" 200 "$what: blob GET status"
  assert_eq "$(sha256_of "$dir/blob")" "$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST" "$what: blob digest"
  "$@" skopeo --insecure-policy copy --quiet --src-cert-dir "$TP_CERTDIR" --src-no-creds \
    "docker://$SHOAL_TEST_HELLO_REF" "dir:$dir/skopeo" || fail "$what: skopeo copy failed"
  diff -r "$TP_DIRECT/skopeo" "$dir/skopeo" >&2 || fail "$what: skopeo copy differs from the direct one"
  "$@" env SSL_CERT_FILE="$TP_BUNDLE" "$SHOAL_TEST_ORAS" pull "$SHOAL_TEST_SIF_REF" "$dir/oras" >/dev/null ||
    fail "$what: oras pull failed"
  assert_same_file "$dir/oras/$SHOAL_TEST_SIF_NAME" "$TP_DIRECT/oras/$SHOAL_TEST_SIF_NAME" "$what: SIF vs direct pull"

  tp_wait_connects "$mark" "$red0" "$what"
  local c
  c=$(tp_count "$mark" ".host == \"$reg_hp\" and .route == \"hijack\" and .status == 200")
  [ "$c" -ge 3 ] || fail "$what: $c hijacked connections to $reg_hp (curl, skopeo, oras: want 3 or more)"
  c=$(tp_count "$mark" ".host == \"$auth_hp\" and .sni == \"$SHOAL_TEST_AUTH_HOST\" and .route == \"tunnel\" and .status == 200")
  [ "$c" -ge 3 ] || fail "$what: $c tunnelled connections to the token host's address $auth_hp (want 3 or more)"
  assert_eq "$(tp_count "$mark" "(.sni == \"$SHOAL_TEST_AUTH_HOST\" and .route != \"tunnel\")
    or ((.sni == \"$SHOAL_TEST_REGISTRY_HOST\" or .sni == \"$SHOAL_TEST_BLOBS_HOST\") and .route != \"hijack\")")" 0 \
    "$what: connections routed against hijackHTTPS.hosts"
  tp_check_job_lines "$mark" "$what" "$cgid"
  if [ "$cgid" = any ]; then
    # `shoalctl run` made one job cgroup per client started (four), and
    # each client's connections name their own.
    assert_eq "$(log_since "$(shoal_log)" "$mark" | jq -R 'fromjson? | select(.msg == "job cgroup made")' | jq -s length)" 4 \
      "$what: job cgroups made"
    if [ "$TP_MODE_RUNNING" = ebpf ]; then
      assert_eq "$(tp_connects "$mark" | jq -s '[.[].cgroup_id] | unique | length')" 4 "$what: distinct cgroup ids in connect lines"
    fi
  fi
  # Hijacked HTTP: the task engine saw the digest requests.
  local on_reg=".msg == \"request\" and ((.host // \"\") | sub(\":$SHOAL_TEST_PORT\$\"; \"\")) == \"$SHOAL_TEST_REGISTRY_HOST\""
  [ "$(log_since "$(shoal_log)" "$mark" | jq -R "fromjson? | select($on_reg and ((.path // \"\") | test(\"/blobs/sha256:\")) and .route == \"p2p\")" | jq -s length)" -ge 1 ] ||
    fail "$what: no hijacked blobs/sha256 request routed p2p"
  assert_eq "$(log_since "$(shoal_log)" "$mark" | jq -R 'fromjson? | select(.msg == "transparent connection without an original destination")' | jq -s length)" 0 \
    "$what: transparent connections without an original destination"
}

# tp_probe ARGS...: transparent_probe.py with the interpreter the test uses.
tp_probe() { python3 "$TP_PROBE" "$@"; }

# tp_closed_clients CG: two clients in CG that close right after connecting
# (a port probe, the loser of a Happy Eyeballs race), the second after
# sending 10 bytes. Each is either looked up in time (redirected) or, with
# the eBPF backend, found closed already (client_gone, its bytes dropped with
# a warning that counts them); never "without an original destination".
tp_closed_clients() {
  local cg=$1 r0 g0 u0 r g u i mark
  local red='shoal_transparent_connections_total{result="redirected"}'
  local gone='shoal_transparent_connections_total{result="client_gone"}'
  local unk='shoal_transparent_connections_total{result="no_original_destination"}'
  mark=$(log_mark "$(shoal_log)")
  r0=$(metric "$red") g0=$(metric "$gone") u0=$(metric "$unk")
  info "clients that close at once, from inside"
  tp_in "$cg" python3 -c '
import socket, sys
for payload in (b"", b"0123456789"):
    s = socket.create_connection((sys.argv[1], 443), timeout=5)
    if payload:
        s.sendall(payload)
    s.close()' "$SHOAL_TEST_REGISTRY_IP" || fail "connect-and-close clients failed"
  for i in $(seq 50); do
    r=$(metric "$red") g=$(metric "$gone") u=$(metric "$unk")
    [ $((r - r0 + g - g0)) -ge 2 ] && break
    sleep 0.1
  done
  assert_eq "$((r - r0 + g - g0))" 2 "closed clients counted redirected ($((r - r0))) or client_gone ($((g - g0)))"
  assert_eq "$((u - u0))" 0 "closed clients counted without an original destination"
  log_since "$(shoal_log)" "$mark" | jq -r 'fromjson? | select(.msg | startswith("transparent client closed")) | .bytes' -R |
    while read -r b; do assert_eq "$b" 10 "bytes reported dropped for a closed client"; done
}

# tp_inside_probes CG: getpeername, UDP and the IPv6 loopback origin, from a
# job in the attached cgroup CG (absolute).
tp_inside_probes() {
  local cg=$1 cgid mark red0 blk0 out port pid code
  cgid=$(tp_cgid "$cg")
  mark=$(log_mark "$(shoal_log)")
  red0=$(tp_redirected_net)
  blk0=$(tp_t blocked)

  info "getpeername inside: IPv4, and IPv4 through a dual-stack socket"
  out=$(tp_in "$cg" python3 "$TP_PROBE" tls "$SHOAL_TEST_REGISTRY_IP" 443 "$SHOAL_TEST_REGISTRY_HOST" "$TP_BUNDLE") ||
    fail "TLS probe to $SHOAL_TEST_REGISTRY_IP:443 failed: $out"
  assert_eq "$(jq -c .peer <<<"$out")" "[\"$SHOAL_TEST_REGISTRY_IP\",443]" "getpeername() of a redirected IPv4 connect"
  assert_eq "$(jq -r .issuer <<<"$out")" "$TP_SITE_CN" "issuer of the registry's certificate seen inside (hijacked)"
  assert_eq "$(jq -r .status <<<"$out")" 401 "GET /v2/ through the hijacked connection"
  port=$(jq -r '.sock[1]' <<<"$out")
  pid=$(jq -r .pid <<<"$out")
  assert_log_has ".msg == \"connect\" and .via == \"transparent\" and .route == \"hijack\"
    and .client == \"127.0.0.1:$port\" and .host == \"$SHOAL_TEST_REGISTRY_HOST:443\""
  if [ "$TP_MODE_RUNNING" = ebpf ]; then
    assert_eq "$(tp_count "$mark" ".client == \"127.0.0.1:$port\" and .tgid == $pid and .cgroup_id == $cgid")" 1 \
      "connect line naming the probe's tgid $pid and cgroup id $cgid"
  fi
  out=$(tp_in "$cg" python3 "$TP_PROBE" peer "::ffff:$SHOAL_TEST_REGISTRY_IP" 443) || fail "dual-stack probe failed: $out"
  assert_eq "$(jq -c .peer <<<"$out")" "[\"::ffff:$SHOAL_TEST_REGISTRY_IP\",443]" "getpeername() of a redirected v4-mapped connect"

  info "UDP to 443 inside: EPERM (IPv4 and IPv6); to 444: sent"
  local a e
  for a in "$SHOAL_TEST_REGISTRY_IP" ::1; do
    out=$(tp_in "$cg" python3 "$TP_PROBE" udp "$a" 443) || fail "UDP probe failed: $out"
    assert_eq "$(jq -r .sendto <<<"$out")" EPERM "UDP sendto $a:443 inside"
    # eBPF refuses the connect itself, iptables the datagram it sends.
    e=$(jq -r 'if .connect == "ok" then .send else .connect end' <<<"$out")
    assert_eq "$e" EPERM "UDP connect+send $a:443 inside ($out)"
    if [ "$TP_MODE_RUNNING" = ebpf ]; then assert_eq "$(jq -r .connect <<<"$out")" EPERM "UDP connect $a:443 (eBPF)"; fi
  done
  out=$(tp_in "$cg" python3 "$TP_PROBE" udp "$SHOAL_TEST_REGISTRY_IP" 444) || fail "UDP probe failed: $out"
  assert_eq "$(jq -r .sendto <<<"$out")" ok "UDP sendto port 444 inside (not a configured port)"
  assert_eq "$(($(tp_t blocked) - blk0))" 4 "UDP sends/connects counted as blocked"

  info "IPv6 loopback origin [::1]:443: hijacked by name, tunnelled by address"
  ss -Hltn 'sport = :443' | grep -q '\[::1\]:443' && fail "something already listens on [::1]:443"
  python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --listen "::1:443" --cert "$TP_V6/leaf.crt" \
    --key "$TP_V6/leaf.key" --log "$TEST_TMP/v6.requests" >"$TEST_TMP/v6.out" 2>&1 &
  local v6pid=$!
  on_exit stop_pid "$v6pid"
  wait_port ::1 443 10 || { cat "$TEST_TMP/v6.out" >&2; fail "IPv6 origin did not start"; }
  python3 "$SHOAL_ROOT/tests/fixtures/fault_origin.py" --emit "$TP_V6_SIZE" >"$TEST_TMP/v6.want"
  # Only the site CA trusted: succeeds only if Shoal minted the leaf.
  code=$(tp_in "$cg" curl -sS --cacert "$TP_SITE/ca.crt" --resolve "$TP_V6_NAME:443:[::1]" \
    -o "$TEST_TMP/v6.hijack" -w '%{http_code}' "https://$TP_V6_NAME/bytes/$TP_V6_SIZE") || fail "curl $TP_V6_NAME via [::1] failed"
  assert_eq "$code" 200 "GET from the IPv6 origin, hijacked"
  assert_same_file "$TEST_TMP/v6.hijack" "$TEST_TMP/v6.want" "IPv6 origin body, hijacked"
  # Only the origin's CA trusted: succeeds only if the bytes were spliced.
  code=$(tp_in "$cg" curl -sS --cacert "$TP_V6/ca.crt" -o "$TEST_TMP/v6.tunnel" -w '%{http_code}' \
    "https://[::1]/bytes/$TP_V6_SIZE") || fail "curl https://[::1]/ failed"
  assert_eq "$code" 200 "GET from the IPv6 origin, tunnelled"
  assert_same_file "$TEST_TMP/v6.tunnel" "$TEST_TMP/v6.want" "IPv6 origin body, tunnelled"
  out=$(tp_in "$cg" python3 "$TP_PROBE" peer ::1 443) || fail "IPv6 probe failed: $out"
  assert_eq "$(jq -c .peer <<<"$out")" '["::1",443]' "getpeername() of a redirected IPv6 connect"
  assert_log_has ".msg == \"connect\" and .via == \"transparent\" and .host == \"$TP_V6_NAME:443\" and .route == \"hijack\" and .status == 200"
  assert_log_has ".msg == \"connect\" and .via == \"transparent\" and .host == \"[::1]:443\" and .route == \"tunnel\" and .bytes_down > $TP_V6_SIZE"
  assert_eq "$(jq -s '[.[] | select(.target == "/bytes/'"$TP_V6_SIZE"'")] | length' "$TEST_TMP/v6.requests")" 2 \
    "requests that reached the IPv6 origin"
  stop_pid "$v6pid"

  tp_wait_connects "$mark" "$red0" "probes inside"
  tp_check_job_lines "$mark" "probes inside" "$cgid"
}

# tp_outside_probes CG: a process outside every attached cgroup is not
# intercepted: it sees the registry's own certificate, its UDP goes out, no
# connect line appears and no counter moves. CG (an attached cgroup) is
# only named in messages.
tp_outside_probes() {
  local mark red0 blk0 out code
  mark=$(log_mark "$(shoal_log)")
  red0=$(tp_t redirected)
  blk0=$(tp_t blocked)
  info "outside the attached cgroup: not intercepted"
  # Only the origin CA trusted: a hijacked connection would fail.
  code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" "$SHOAL_TEST_REGISTRY_URL/v2/") ||
    fail "curl outside the cgroup failed (intercepted?)"
  assert_eq "$code" 401 "GET /v2/ outside the cgroup"
  out=$(tp_probe tls "$SHOAL_TEST_REGISTRY_IP" 443 "$SHOAL_TEST_REGISTRY_HOST" "$TP_BUNDLE") || fail "TLS probe outside failed: $out"
  assert_eq "$(jq -r .issuer <<<"$out")" "$TP_ORIGIN_CN" "issuer seen outside the cgroup"
  out=$(tp_probe udp "$SHOAL_TEST_REGISTRY_IP" 443) || fail "UDP probe outside failed: $out"
  assert_eq "$(jq -c '[.sendto, .connect, .send]' <<<"$out")" '["ok","ok","ok"]' "UDP to 443 outside the cgroup"
  sleep 0.5
  assert_eq "$(tp_t redirected)" "$red0" "redirected counter after connects outside $1"
  assert_eq "$(tp_t blocked)" "$blk0" "blocked counter after UDP outside $1"
  assert_eq "$(tp_count "$mark" true)" 0 "connect lines for connections outside $1"
}

# tp_detach_attach CG REL: shoalctl detach stops the interception of CG at
# once, shoalctl attach REL (relative to the mount) brings it back.
tp_detach_attach() {
  local cg=$1 rel=$2 red0 code out
  info "shoalctl detach / attach $rel"
  out=$(tp_ctl detach "$cg") || fail "shoalctl detach $cg: $out"
  assert_eq "$(tp_t "cgroups | any(. == \"$cg\")")" false "$cg still listed as attached after detach"
  [ "$TP_MODE_RUNNING" != ebpf ] || [ "$(tp_bpf_progs "$cg")" = "?" ] || assert_eq "$(tp_bpf_progs "$cg")" 0 "programs on $cg after detach"
  red0=$(tp_t redirected)
  code=$(tp_in "$cg" curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" "$SHOAL_TEST_REGISTRY_URL/v2/") ||
    fail "curl in detached $cg failed (still intercepted?)"
  assert_eq "$code" 401 "GET /v2/ from the detached cgroup (direct)"
  assert_eq "$(tp_t redirected)" "$red0" "redirected counter after a connect from the detached cgroup"
  out=$(tp_ctl attach "$rel") || fail "shoalctl attach $rel: $out"
  assert_eq "$out" "attached $rel" "shoalctl attach output"
  assert_eq "$(tp_t "cgroups | any(. == \"$cg\")")" true "$cg (absolute) listed as attached after attach $rel"
  code=$(tp_in "$cg" curl -sS -o /dev/null -w '%{http_code}' --cacert "$TP_SITE/ca.crt" "$SHOAL_TEST_REGISTRY_URL/v2/") ||
    fail "curl in re-attached $cg failed (not intercepted?)"
  assert_eq "$code" 401 "GET /v2/ from the re-attached cgroup (hijacked)"
  assert_eq "$(tp_t redirected)" "$((red0 + 1))" "redirected counter after re-attaching"
}

# tp_stop_clean CG: stops the daemon with SIGTERM; afterwards nothing of it
# is left (no programs on CG, no iptables rules, no listener) and a job in CG
# connects directly.
tp_stop_clean() {
  local cg=$1 code
  info "SIGTERM: hooks and rules go with the daemon"
  stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"
  kill -0 "$SHOALD_PID" 2>/dev/null && fail "shoald still runs after stop"
  assert_log_has '.msg == "transparent interception stopped"'
  tp_assert_no_rules "after shoald stopped"
  local n
  n=$(tp_bpf_progs "$cg")
  [ "$n" = "?" ] || assert_eq "$n" 0 "Shoal programs attached to $cg after shoald stopped"
  tp_listener_busy && fail "port $TP_LISTEN_PORT still listens after shoald stopped"
  code=$(tp_in "$cg" curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" "$SHOAL_TEST_REGISTRY_URL/v2/") ||
    fail "curl in $cg after the daemon stopped failed"
  assert_eq "$code" 401 "GET /v2/ from $cg after the daemon stopped (direct)"
}

# --- the job that lives through a daemon's death ---------------------------------

# tp_job_start RUNNER...: starts transparent_probe.py's "job" as a
# coprocess through RUNNER (e.g. tp_in CG, or tp_ctl run --).
tp_job_start() {
  coproc TPJOB { "$@" python3 "$TP_PROBE" job "$SHOAL_TEST_REGISTRY_HOST" "$TP_BUNDLE" 2>&1; }
  # shellcheck disable=SC2153 # TPJOB_PID is set by coproc
  TP_JOB_PID=$TPJOB_PID
  TP_JOB_IN=${TPJOB[1]}
  TP_JOB_OUT=${TPJOB[0]}
  on_exit stop_pid "$TP_JOB_PID"
}

# tp_job_stop: closes the job's input and waits for it to exit (status 0).
tp_job_stop() {
  exec {TP_JOB_IN}>&-
  wait_exit "$TP_JOB_PID" 10
  assert_eq "$WAIT_RC" 0 "the job's exit status"
}

# tp_job_ask: one connection from the job; sets TP_JOB_LINE to its result.
tp_job_ask() {
  echo go >&"$TP_JOB_IN"
  TP_JOB_LINE=""
  read -r -t 20 TP_JOB_LINE <&"$TP_JOB_OUT" || fail "the job gave no answer within 20 s"
}

# tp_suite MODE: the whole suite against one backend (eBPF or iptables):
#   A. shoald (outside the cgroups) attaches $TP_ROOT/job at start: pulls
#      from inside, `shoalctl run` pulls, getpeername, UDP, IPv6 origin, a
#      process outside, detach/attach, SIGTERM leaves nothing behind.
#   B. shoald started inside $TP_ROOT/p/daemon attaches its own parent
#      $TP_ROOT/p: a job in p/job pulls fine, shoald's own connects are
#      left alone (no loop).
#   C. kill -9 with a job alive in p/job: eBPF fails open (the next connect
#      is direct; a restart intercepts again), iptables fails closed until
#      `shoalctl cleanup`, which leaves no rule behind.
tp_suite() {
  local mode=$1 config job p out n
  tp_mkcg job p/daemon p/job
  job=$TP_ROOT/job
  p=$TP_ROOT/p

  # --- A ---
  config=$TEST_TMP/shoald-a.yaml
  tp_write_config "$config" "$mode" "$TP_ROOT_REL/job"
  tp_start_shoald "$config" "$mode"
  assert_eq "$(tp_t 'cgroups | join(",")')" "$job" "attached cgroups at start"
  assert_eq "$(tp_t cgroup2)" "$TP_CG2" "cgroup2 mount the daemon found"
  if [ "$mode" = ebpf ]; then
    n=$(tp_bpf_progs "$job")
    [ "$n" = "?" ] || assert_eq "$n" 6 "Shoal programs attached to $job"
    # The daemon's side: accepted4/6 on its own cgroup, and no sock_ops
    # program anywhere (one would cost every TCP connection on the host).
    if command -v bpftool >/dev/null; then
      dcg=$TP_CG2$(awk -F: '$1 == "0" { print $3 }' "/proc/$SHOALD_PID/cgroup")
      assert_eq "$(bpftool cgroup show "$dcg" 2>/dev/null | grep -c 'shoal_accepted[46]')" 2 \
        "accepted4/6 attached to the daemon's cgroup $dcg"
      assert_eq "$(bpftool cgroup tree 2>/dev/null | grep -c 'sock_ops.*shoal_')" 0 "Shoal sock_ops programs attached"
    fi
  else
    tp_rules | grep -q -- "--path \"\\?/$TP_ROOT_REL/job\"\\? .*REDIRECT" || fail "no REDIRECT rule for /$TP_ROOT_REL/job:
$(tp_rules)"
  fi
  tp_ctl status | grep -q "^transparent  $mode" || fail "shoalctl status does not show 'transparent  $mode': $(tp_ctl status)"

  tp_pulls "in-cgroup" "$(tp_cgid "$job")" tp_in "$job"
  tp_pulls "shoalctl-run" any "$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" run --
  tp_inside_probes "$job"
  tp_closed_clients "$job"
  tp_outside_probes "$job"
  tp_detach_attach "$job" "$TP_ROOT_REL/job"
  tp_stop_clean "$job"

  # --- B ---
  info "shoald started inside $p/daemon, attached at $p"
  config=$TEST_TMP/shoald-b.yaml
  tp_write_config "$config" "$mode" "$TP_ROOT_REL/p"
  # The daemon inherits the cgroup of the shell that starts it.
  echo $$ >"$p/daemon/cgroup.procs" || fail "cannot move the test shell into $p/daemon"
  tp_start_shoald "$config" "$mode"
  echo $$ >"$TP_SELF_CG/cgroup.procs" || fail "cannot move the test shell back to $TP_SELF_CG"
  assert_eq "$(awk -F: '$1 == "0" { print $3 }' "/proc/$SHOALD_PID/cgroup")" "/$TP_ROOT_REL/p/daemon" "shoald's cgroup"
  assert_eq "$(tp_t 'cgroups | join(",")')" "$p" "attached cgroups"
  local skip0 acc
  skip0=$(tp_t skipped)
  acc=$(log_mark "$SHOAL_TEST_REGISTRY_ACCESS_LOG")
  tp_pulls "parent-attached" "$(tp_cgid "$p/job")" tp_in "$p/job"
  # shoald's own connects to 443 pass the hooks (rules) of its parent and
  # are left alone: counted as skipped, and they reached the registry.
  n=$(($(tp_t skipped) - skip0))
  [ "$n" -ge 1 ] || fail "shoald's own origin connects were not seen as skipped ($n)"
  n=$(log_since "$SHOAL_TEST_REGISTRY_ACCESS_LOG" "$acc" | grep -c '"GET /v2/' || true)
  [ "$n" -ge 3 ] || fail "the registry logged $n GETs during the pulls through a parent-attached shoald"
  info "no loop: $((n)) registry GETs, shoald's own connects skipped"

  # --- C ---
  info "kill -9 while a job in $p/job lives on"
  tp_job_start tp_in "$p/job"
  tp_job_ask
  assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_SITE_CN 401" \
    "the job's connection before the kill (hijacked): $TP_JOB_LINE"
  tp_kill9
  if [ "$mode" = ebpf ]; then
    n=$(tp_bpf_progs "$p")
    [ "$n" = "?" ] || assert_eq "$n" 0 "Shoal programs on $p after kill -9"
    tp_job_ask
    assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_ORIGIN_CN 401" \
      "the job's next connection after kill -9 (fail-open, direct): $TP_JOB_LINE"
    info "restart: the configured cgroup is intercepted again"
    tp_start_shoald "$config" ebpf
    tp_job_ask
    assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_SITE_CN 401" \
      "the job's connection after the restart (hijacked again): $TP_JOB_LINE"
    stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"
  else
    tp_rules | grep -q 'SHOAL-REDIRECT' || fail "no Shoal rule left after kill -9 (expected fail-closed)"
    tp_job_ask
    jq -e '.error | startswith("ECONNREFUSED")' <<<"$TP_JOB_LINE" >/dev/null ||
      fail "the job's connection after kill -9 should be refused (fail-closed): $TP_JOB_LINE"
    tp_job_ask
    jq -e '.error | startswith("ECONNREFUSED")' <<<"$TP_JOB_LINE" >/dev/null ||
      fail "the job's second connection after kill -9 should be refused too: $TP_JOB_LINE"
    out=$(tp_ctl cleanup) || fail "shoalctl cleanup without a daemon failed: $out"
    [[ $out =~ ^shoald\ not\ running:\ removed\ ([0-9]+)\ iptables ]] || fail "shoalctl cleanup said: $out"
    [ "${BASH_REMATCH[1]}" -ge 2 ] || fail "shoalctl cleanup removed ${BASH_REMATCH[1]} chains, want 2 or more: $out"
    tp_assert_no_rules "after shoalctl cleanup"
    tp_job_ask
    assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_ORIGIN_CN 401" \
      "the job's connection after shoalctl cleanup (direct): $TP_JOB_LINE"
    out=$(tp_ctl --json cleanup) || fail "second shoalctl cleanup failed: $out"
    assert_eq "$(jq -r .iptables_chains_removed <<<"$out")" 0 "chains removed by a second cleanup"
  fi
  tp_job_stop
}
