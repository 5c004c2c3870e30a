# shellcheck shell=bash
# A virtual cluster in network namespaces, for the multi-host P2P tests
# (tests/integration/t_p2p_swarm.sh) and the P2P benchmark (bench/p2p.sh).
#
#   switch ns  <prefix>sw: bridge br0, one port p<N> per host
#   host ns    <prefix><name>: lo up, eth0 = 198.18.0.<N>/24, the other end
#              of its veth is p<N> on br0; egress (eth0 → bridge) optionally
#              shaped with a TBF
#
# Every address lives inside these namespaces: the root namespace never gets
# an address or a route in 198.18.0.0/15, and no veth end is ever created
# there (`ip link add ... netns A type veth peer ... netns B`). Each host has
# its own loopback, so every daemon can bind its default loopback ports.
#
# Sourced, never run; it needs no other file (lib.sh and bench/lib.sh both
# work with it). The caller must make sure nl_teardown runs however it ends:
# tests register it with lib.sh's on_exit, the bench from bench_cleanup_hook.
#
#   nl_init                      makes the switch; NL_PREFIX=shoalt-<pid>-
#   nl_add_host NAME N [RATE]    host NAME at 198.18.0.N, eth0 shaped to RATE
#   nl_shape NAME RATE|none      (re)shapes NAME's egress
#   nl_ns NAME / nl_ip NAME      its namespace / its address
#   nl_exec NAME CMD...          runs CMD in NAME (foreground)
#   nl_spawn NAME LOG CMD...     starts CMD in NAME in the background, output
#                                to LOG; NL_PID is its PID, stopped at teardown
#   nl_stop PID [SIG [SECS]]     stops one PID started by nl_spawn
#   nl_tx_bytes NAME             bytes NAME has sent on eth0 (L2, with headers)
#   nl_rx_bytes NAME             bytes NAME has received on eth0
#   nl_wait_tcp NAME IP PORT SECS    until IP:PORT accepts, connecting from NAME
#   nl_origin_up NAME DIR        TLS registry (docker-registry) on NAME:443
#   nl_push_blob NAME REPO FILE  pushes FILE as a blob, from host NAME
#   nl_teardown                  stops everything, deletes the namespaces
#   nl_sweep_stale               deletes namespaces of dead earlier runs
#
# Failures print a line on stderr and return 1; the caller decides (fail,
# die). Safe under `set -euo pipefail`. Everything that nl_* starts is stopped by PID, never by name.

NL_NET=198.18.0
NL_PREFIX=
NL_SWITCH=
NL_PIDS=()
NL_NSES=()
declare -gA NL_HOST_N=()

_nl_err() { echo "[netns_lib] $*" >&2; }

# nl_rate_bps RATE: RATE in tc's syntax (e.g. 200mbit, 80Mbit, 10mbps,
# 5000kbit) as bits per second.
nl_rate_bps() {
  awk -v r="$1" 'BEGIN {
    r = tolower(r); n = r + 0; u = r; sub(/^[0-9.]+/, "", u)
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9
    m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9
    if (u == "") u = "bit"
    if (!(u in m)) exit 1
    printf "%.0f\n", n * m[u] }'
}

# nl_init: checks for root and ip/tc, then creates the switch namespace with
# its bridge. NL_PREFIX is shoalt-<this shell's pid>- (shoalt-<pid>-<tag>-
# with NL_TAG set), so parallel runs and leftovers of dead runs never clash.
nl_init() {
  [ "$(id -u)" -eq 0 ] || { _nl_err "needs root"; return 1; }
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then _nl_err "ip and tc (iproute2) needed"; return 1; fi
  NL_PREFIX=shoalt-$$-${NL_TAG:+$NL_TAG-}
  NL_SWITCH=${NL_PREFIX}sw
  ip netns add "$NL_SWITCH" || { _nl_err "ip netns add $NL_SWITCH failed"; return 1; }
  NL_NSES+=("$NL_SWITCH")
  if ! { ip -n "$NL_SWITCH" link set lo up &&
    ip -n "$NL_SWITCH" link add br0 type bridge stp_state 0 forward_delay 0 &&
    ip -n "$NL_SWITCH" link set br0 up; }; then
    _nl_err "bridge in $NL_SWITCH failed"
    return 1
  fi
  # A switch, not a firewall: with br_netfilter in the kernel (built in
  # here, on by default in every namespace) each bridged frame would also
  # go through the IPv4/IPv6/ARP hooks and a route lookup, host CPU that
  # the switch of a real cluster never costs. The files are missing where
  # br_netfilter is not loaded, which is the same thing.
  local f
  for f in /proc/sys/net/bridge/bridge-nf-call-{iptables,ip6tables,arptables}; do
    ip netns exec "$NL_SWITCH" sh -c "[ ! -e $f ] || echo 0 >$f" ||
      { _nl_err "cannot turn off bridge netfilter in $NL_SWITCH ($f)"; return 1; }
  done
}

# nl_add_host NAME N [RATE]: host namespace <prefix>NAME whose eth0 has
# 198.18.0.N/24 (N in 1..254) and sits on the switch; with RATE its egress
# is shaped (nl_shape).
nl_add_host() {
  local name=$1 n=$2 rate=${3:-} ns
  [ -n "$NL_SWITCH" ] || { _nl_err "nl_init first"; return 1; }
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 254 ]; then _nl_err "host number $n not in 1..254"; return 1; fi
  [ -z "${NL_HOST_N[$name]:-}" ] || { _nl_err "host $name exists"; return 1; }
  ns=$NL_PREFIX$name
  ip netns add "$ns" || { _nl_err "ip netns add $ns failed"; return 1; }
  NL_NSES+=("$ns")
  NL_HOST_N[$name]=$n
  {
    ip -n "$ns" link set lo up &&
      ip link add name eth0 netns "$ns" type veth peer name "p$n" netns "$NL_SWITCH" &&
      ip -n "$NL_SWITCH" link set "p$n" master br0 &&
      ip -n "$NL_SWITCH" link set "p$n" up &&
      ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 &&
      ip -n "$ns" addr add "$NL_NET.$n/24" dev eth0 &&
      ip -n "$ns" link set eth0 up
  } || { _nl_err "wiring host $name ($ns) failed"; return 1; }
  [ -z "$rate" ] || nl_shape "$name" "$rate"
}

# nl_shape NAME RATE: a TBF at RATE as the root qdisc of NAME's eth0 (its
# egress into the switch), replacing any; "none" removes it. The bucket holds
# 4 ms at RATE (at least 32 KiB, so a GSO super-packet is split rather than
# dropped), the queue 20 ms.
nl_shape() {
  local name=$1 rate=$2 ns bps burst
  ns=$(nl_ns "$name") || return 1
  if [ "$rate" = none ]; then
    tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
    return 0
  fi
  bps=$(nl_rate_bps "$rate") || { _nl_err "bad rate $rate"; return 1; }
  burst=$((bps / 8 / 250))
  [ "$burst" -ge 32768 ] || burst=32768
  tc -n "$ns" qdisc replace dev eth0 root tbf rate "$bps"bit burst "$burst" latency 20ms ||
    { _nl_err "tc tbf on $ns eth0 failed"; return 1; }
}

# nl_ns NAME: prints the namespace of host NAME ("sw": the switch).
nl_ns() {
  if [ "$1" = sw ]; then echo "$NL_SWITCH"; return 0; fi
  [ -n "${NL_HOST_N[$1]:-}" ] || { _nl_err "no host $1"; return 1; }
  echo "$NL_PREFIX$1"
}

# nl_ip NAME: prints host NAME's address.
nl_ip() {
  [ -n "${NL_HOST_N[$1]:-}" ] || { _nl_err "no host $1"; return 1; }
  echo "$NL_NET.${NL_HOST_N[$1]}"
}

# nl_exec NAME CMD...: runs CMD inside host NAME.
nl_exec() {
  local ns
  ns=$(nl_ns "$1") || return 1
  shift
  ip netns exec "$ns" "$@"
}

# nl_spawn NAME LOG CMD...: starts CMD in host NAME in the background (stdin
# /dev/null, stdout and stderr appended to LOG) and records its PID (NL_PID)
# for nl_teardown. `ip netns exec` execs CMD, so NL_PID is CMD's own PID and
# a signal to it reaches CMD itself. Call it in the script's own shell, not
# in $(...), or the PID is lost.
nl_spawn() {
  local ns log=$2
  ns=$(nl_ns "$1") || return 1
  shift 2
  ip netns exec "$ns" "$@" </dev/null >>"$log" 2>&1 &
  NL_PID=$!
  NL_PIDS+=("$NL_PID")
}

# nl_stop PID [SIG [SECS]]: sends SIG (default TERM) to PID if it runs,
# SIGKILL after SECS (default 5), and reaps it.
nl_stop() {
  local pid=$1 sig=${2:-TERM} secs=${3:-5} i
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < secs * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
  return 0
}

# nl_tx_bytes NAME / nl_rx_bytes NAME: eth0's byte counters in host NAME
# (every frame, Ethernet, IP and TCP headers included).
nl_tx_bytes() { nl_exec "$1" cat /sys/class/net/eth0/statistics/tx_bytes; }
nl_rx_bytes() { nl_exec "$1" cat /sys/class/net/eth0/statistics/rx_bytes; }

# nl_wait_tcp NAME IP PORT SECS [PID]: returns 0 once IP:PORT accepts a
# connection made from host NAME, 1 after SECS or as soon as PID (the
# server, if given) is gone.
nl_wait_tcp() {
  local name=$1 ip=$2 port=$3 deadline=$((SECONDS + $4)) pid=${5:-}
  while :; do
    nl_exec "$name" timeout 1 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# nl_make_cert DIR SAN CN: a throwaway CA (DIR/ca.crt, DIR/ca.key) and an
# EC P-256 leaf it signs (DIR/leaf.crt, DIR/leaf.key) for SAN, e.g.
# "IP:198.18.0.1,DNS:origin.p2p.shoal.test".
nl_make_cert() {
  local d=$1 san=$2 cn=$3
  mkdir -p "$d"
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=$cn CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
        -keyout "$d/leaf.key" -out "$d/leaf.csr" &&
      printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" >"$d/ext.cnf" &&
      openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/leaf.crt"
  } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; _nl_err "certificates in $d failed"; return 1; }
  chmod 600 "$d/ca.key" "$d/leaf.key"
}

# nl_registry_up NAME DIR [CONFIG_LINE...]: Debian's docker-registry
# (distribution 2.8) over TLS on NAME's address, port 443, no auth, storage
# in DIR/data, certificate for IP:<address> made in DIR/cert (its CA:
# DIR/cert/ca.crt). CONFIG_LINEs are appended to its YAML at top level (e.g.
# a proxy: section). Output: DIR/registry.log (stderr, application log),
# DIR/access.log (stdout, combined access log). Sets NL_REG_PID, NL_REG_URL
# (https://<ip>), NL_REG_CA; waits until GET /v2/ answers 200.
nl_registry_up() {
  local name=$1 d=$2 ip l code i
  shift 2
  command -v docker-registry >/dev/null || { _nl_err "docker-registry not installed"; return 1; }
  ip=$(nl_ip "$name") || return 1
  mkdir -p "$d/data"
  [ -s "$d/cert/leaf.crt" ] || nl_make_cert "$d/cert" "IP:$ip" "Shoal p2p $name" || return 1
  {
    cat <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ip:443
  secret: shoal-p2p-$(openssl rand -hex 8)
  tls:
    certificate: $d/cert/leaf.crt
    key: $d/cert/leaf.key
health:
  storagedriver:
    enabled: false
EOF
    for l in "$@"; do echo "$l"; done
  } >"$d/registry.yml"
  # Go reads extra CAs (a pull-through cache's upstream) from SSL_CERT_FILE.
  ip netns exec "$(nl_ns "$name")" env ${NL_REG_SSL_CERT_FILE:+SSL_CERT_FILE=$NL_REG_SSL_CERT_FILE} \
    docker-registry serve "$d/registry.yml" </dev/null >>"$d/access.log" 2>>"$d/registry.log" &
  NL_REG_PID=$!
  NL_PIDS+=("$NL_REG_PID")
  NL_REG_URL=https://$ip
  NL_REG_CA=$d/cert/ca.crt
  for ((i = 0; i < 150; i++)); do
    code=$(nl_exec "$name" curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$NL_REG_CA" \
      "$NL_REG_URL/v2/" 2>/dev/null) || true
    [ "$code" = 200 ] && return 0
    kill -0 "$NL_REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$d/registry.log" >&2
  _nl_err "docker-registry on $name not ready (last /v2/ answer: ${code:-none})"
  return 1
}

# nl_push_blob NAME URL CA REPO FILE: pushes FILE to the registry at URL as a
# blob of REPO (monolithic upload: POST /v2/REPO/blobs/uploads/, then PUT
# ?digest=), from host NAME; prints its digest "sha256:<hex>" once a HEAD of
# the blob answers 200 with FILE's size.
nl_push_blob() {
  local name=$1 url=$2 ca=$3 repo=$4 file=$5 digest loc size got
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  loc=$(nl_exec "$name" curl -sS --max-time 30 --cacert "$ca" -X POST -o /dev/null -D - \
    "$url/v2/$repo/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1) == "location" { print $2 }') ||
    { _nl_err "upload POST to $url failed"; return 1; }
  [ -n "$loc" ] || { _nl_err "upload POST to $url gave no Location"; return 1; }
  case $loc in http*) ;; *) loc=$url$loc ;; esac
  case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  got=$(nl_exec "$name" curl -sS --max-time 300 --cacert "$ca" -X PUT -o /dev/null -w '%{http_code}' \
    -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$loc") ||
    { _nl_err "upload PUT to $url failed"; return 1; }
  [ "$got" = 201 ] || { _nl_err "upload PUT answered $got, want 201"; return 1; }
  got=$(nl_exec "$name" curl -sS --max-time 10 --cacert "$ca" -I -o /dev/null -w '%{http_code} %header{content-length}' \
    "$url/v2/$repo/blobs/$digest" 2>/dev/null) || got=
  [ "$got" = "200 $size" ] || { _nl_err "HEAD of the pushed blob gave '$got', want '200 $size'"; return 1; }
  echo "$digest"
}

# nl_teardown: stops every recorded PID (SIGTERM, SIGKILL after 3 s; in
# parallel), then any process still inside one of our namespaces (children
# of what we started, by their PIDs from `ip netns pids`), then deletes the
# namespaces (their veths, bridge and qdiscs go with them). Safe to call
# twice.
nl_teardown() {
  local pid ns i left
  for pid in "${NL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for ((i = 0; i < 30; i++)); do
    left=0
    for pid in "${NL_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 1 ] || break
    sleep 0.1
  done
  for pid in "${NL_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
  NL_PIDS=()
  for ns in "${NL_NSES[@]}"; do _nl_kill_ns_pids "$ns"; done
  for ns in "${NL_NSES[@]}"; do
    ip netns del "$ns" 2>/dev/null || { ip netns list | grep -q "^$ns\b" && _nl_err "ip netns del $ns failed"; }
  done
  NL_NSES=()
  NL_HOST_N=()
  return 0
}

# _nl_kill_ns_pids NS: SIGKILL to every process in NS, by PID.
_nl_kill_ns_pids() {
  local pid pids i
  for ((i = 0; i < 20; i++)); do
    pids=$(ip netns pids "$1" 2>/dev/null) || return 0
    [ -n "$pids" ] || return 0
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  _nl_err "processes still in $1: $(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')"
}

# nl_sweep_stale: deletes shoalt-<pid>-* namespaces whose <pid> no longer
# runs (a run killed with SIGKILL could not tear down), with any process
# left inside them.
nl_sweep_stale() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E '^shoalt-[0-9]+-'); do
    pid=${ns#shoalt-}
    pid=${pid%%-*}
    [ "$pid" = $$ ] && continue
    kill -0 "$pid" 2>/dev/null && continue
    _nl_kill_ns_pids "$ns"
    ip netns del "$ns" 2>/dev/null && _nl_err "removed stale namespace $ns"
  done
  return 0
}
