#!/bin/bash
# shoald's privileges after start-up (privileges.dropCapabilities, default on):
#
#   In each transparent mode (ebpf, iptables, off) every thread of the
#   running daemon has exactly the documented capabilities in CapEff, CapPrm
#   and CapBnd (README: ebpf cap_bpf, cap_net_admin, cap_net_raw; iptables
#   cap_net_admin, cap_net_raw; off none), no ambient ones, and
#   no_new_privs set; `shoalctl status` names the same set.
#   With that set everything that happens at run time still works: a cgroup
#   attached with `shoalctl attach` is intercepted (a blob pulled with no
#   proxy settings, seen hijacked), `shoalctl run` makes a job cgroup and
#   moves the caller in, detach, reload (reads the CA key again), cleanup,
#   and in iptables mode the spawned iptables adds and removes rules; the
#   explicit proxy in mode off; SIGTERM still removes hooks and rules.
#   The checker can fail: with privileges.dropCapabilities: false the daemon
#   holds everything the test shell has.
#   The CA key: --check-config refuses a key readable by group/other,
#   naming it; a key owned by another user gets a warning at start.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"

tp_init auto
tp_need_ebpf
tp_need_iptables
fixture_up
tp_setup_trust

# The documented sets (README, "Privileges"), by transparent mode.
declare -A WANT=([ebpf]="cap_net_admin cap_net_raw cap_bpf" [iptables]="cap_net_admin cap_net_raw" [off]="")

# cap_mask NAME...: the set as /proc/PID/status prints it (16 hex digits).
cap_mask() {
  local m=0 c
  for c in "$@"; do
    case $c in
      cap_net_admin) m=$((m | 1 << 12)) ;;
      cap_net_raw) m=$((m | 1 << 13)) ;;
      cap_bpf) m=$((m | 1 << 39)) ;;
      *) fail "cap_mask: add $c" ;;
    esac
  done
  printf '%016x' "$m"
}

# want_mask MODE: the documented set of MODE as a mask.
want_mask() {
  local -a caps
  read -ra caps <<<"${WANT[$1]}"
  cap_mask "${caps[@]}"
}

# status_field FILE KEY: the value of "KEY:" in a /proc status file ("" if
# the thread is gone).
status_field() { awk -v k="$2:" '$1 == k { print $2 }' "$1" 2>/dev/null || true; }

# assert_caps PID WANT_HEX WHAT: every thread of PID has CapEff, CapPrm and
# CapBnd equal to WANT_HEX, CapAmb and CapInh empty, and NoNewPrivs 1.
assert_caps() {
  local pid=$1 want=$2 what=$3 t f v n=0
  for t in /proc/"$pid"/task/*; do
    [ -n "$(status_field "$t/status" CapEff)" ] || continue
    for f in CapEff CapPrm CapBnd; do
      v=$(status_field "$t/status" $f)
      assert_eq "$v" "$want" "$what: $f of thread ${t##*/} ($(cat "$t/comm" 2>/dev/null))"
    done
    for f in CapAmb CapInh; do
      assert_eq "$(status_field "$t/status" $f)" 0000000000000000 "$what: $f of thread ${t##*/}"
    done
    assert_eq "$(status_field "$t/status" NoNewPrivs)" 1 "$what: NoNewPrivs of thread ${t##*/}"
    n=$((n + 1))
  done
  # main, the log writer and two workers at least
  [ "$n" -ge 4 ] || fail "$what: only $n threads of shoald $pid were checked"
  info "$what: $n threads, each CapEff=CapPrm=CapBnd=$want"
}

# names_of "a b c": the comma list shoalctl status prints ("none" if empty).
names_of() { if [ -z "$1" ]; then echo none; else tr ' ' ',' <<<"$1"; fi; }

# blob_pull WHAT RUNNER...: through RUNNER (an intercepted cgroup), a token
# from the token host, then the big layer with only the site CA trusted:
# it verifies only when shoald hijacked the registry.
blob_pull() {
  local what=$1 token code out=$TEST_TMP/blob.$RANDOM
  shift
  token=$("$@" curl -sSf --cacert "$TP_BUNDLE" \
    "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull" |
    jq -er .token) || fail "$what: token fetch failed"
  code=$("$@" curl -sS --cacert "$TP_SITE/ca.crt" -o "$out" -w '%{http_code}' -H "Authorization: Bearer $token" \
    "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST") ||
    fail "$what: blob GET failed (not hijacked?)"
  assert_eq "$code" 200 "$what: blob status"
  assert_eq "$(sha256_of "$out")" "$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST" "$what: blob digest"
  rm -f "$out"
}

# via_proxy CMD...: CMD (a curl) through the explicit proxy.
via_proxy() { "$@" -x "$SHOALD_PROXY"; }

# no_errors WHAT: core.log holds no error line.
no_errors() {
  local what=$1 n
  n=$(log_count '.level == "error"')
  [ "$n" -eq 0 ] || {
    jq -cR 'fromjson? | select(.level == "error")' "$(shoal_log)" >&2
    fail "$what: $n error lines in core.log"
  }
}

# check_transparent MODE: the run-time features of MODE with the drop.
check_transparent() {
  local mode=$1 config=$TEST_TMP/shoald-$1.yaml rel=$TP_ROOT_REL/job-$1 cg=$TP_ROOT/job-$1 out code n
  tp_write_config "$config" "$mode"
  echo "workers: 2" >>"$config"
  tp_start_shoald "$config" "$mode"
  assert_caps "$SHOALD_PID" "$(want_mask "$mode")" "mode $mode"
  assert_eq "$(tp_ctl --json status | jq -r .capabilities)" "$(names_of "${WANT[$mode]}")" "mode $mode: shoalctl status capabilities"
  assert_log_has ".msg == \"capabilities dropped\" and .transparent == \"$mode\""

  info "mode $mode: attach at run time, pull from the cgroup"
  tp_mkcg "job-$mode"
  out=$(tp_ctl attach "$rel") || fail "mode $mode: shoalctl attach $rel: $out"
  if [ "$mode" = iptables ]; then
    tp_rules | grep -q -- "--path \"\\?/$rel\"\\? .*REDIRECT" || fail "mode $mode: no REDIRECT rule for /$rel after attach:
$(tp_rules)"
  else
    n=$(tp_bpf_progs "$cg")
    [ "$n" = "?" ] || assert_eq "$n" 6 "mode $mode: programs attached to $cg"
  fi
  blob_pull "mode $mode, attached at run time" tp_in "$cg"
  assert_log_has ".msg == \"connect\" and .via == \"transparent\" and .route == \"hijack\""

  info "mode $mode: shoalctl run (a job cgroup made, the caller moved in)"
  blob_pull "mode $mode, shoalctl run" "$BUILD/shoalctl" --socket "$SHOALD_ADMIN_SOCKET" run --
  assert_log_has '.msg == "job cgroup made"'

  info "mode $mode: detach, reload, cleanup"
  out=$(tp_ctl detach "$cg") || fail "mode $mode: shoalctl detach: $out"
  code=$(tp_in "$cg" curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" "$SHOAL_TEST_REGISTRY_URL/v2/") ||
    fail "mode $mode: curl in the detached cgroup failed (still intercepted?)"
  assert_eq "$code" 401 "mode $mode: GET /v2/ from the detached cgroup (direct)"
  if [ "$mode" = iptables ]; then
    tp_rules | grep -q -- "/$rel" && fail "mode $mode: a rule for /$rel is left after detach:
$(tp_rules)"
  fi
  tp_ctl reload >/dev/null || fail "mode $mode: shoalctl reload failed"
  assert_log_has '.msg == "configuration reloaded"'
  out=$(tp_ctl --json cleanup) || fail "mode $mode: shoalctl cleanup: $out"
  no_errors "mode $mode"
  assert_caps "$SHOALD_PID" "$(want_mask "$mode")" "mode $mode, after the run-time features"
  tp_stop_clean "$cg"
}

check_transparent ebpf
check_transparent iptables

info "mode off: explicit proxy only"
config=$TEST_TMP/shoald-off.yaml
tp_write_config "$config" off
echo "workers: 2" >>"$config"
start_shoald "$config"
assert_caps "$SHOALD_PID" "$(cap_mask)" "mode off"
assert_eq "$(tp_ctl --json status | jq -r .capabilities)" none "mode off: shoalctl status capabilities"
blob_pull "mode off, explicit proxy" via_proxy
assert_log_has '.msg == "connect" and .route == "hijack"'
tp_ctl reload >/dev/null || fail "mode off: shoalctl reload failed"
assert_log_has '.msg == "configuration reloaded"'
no_errors "mode off"
stop_shoald "$SHOALD_PID"

info "privileges.dropCapabilities: false keeps what the shell has (the checker sees it)"
config=$TEST_TMP/shoald-keep.yaml
tp_write_config "$config" off
printf 'workers: 2\nprivileges:\n  dropCapabilities: false\n' >>"$config"
start_shoald "$config"
assert_eq "$(status_field "/proc/$SHOALD_PID/status" CapEff)" "$(status_field /proc/$$/status CapEff)" "CapEff without the drop"
[ "$(status_field "/proc/$SHOALD_PID/status" CapEff)" != "$(cap_mask)" ] || fail "the shell has no capabilities: this check proves nothing"
assert_eq "$(tp_ctl --json status | jq -r .capabilities)" "all (privileges.dropCapabilities: false)" "status without the drop"
stop_shoald "$SHOALD_PID"

info "the CA key: group-readable refused by --check-config; another owner warned about"
loose=$TEST_TMP/loose
mkdir -p "$loose"
cp "$TP_SITE/ca.crt" "$TP_SITE/ca.key" "$loose/"
chmod 0640 "$loose/ca.key"
sed "s#$TP_SITE/#$loose/#g" "$TEST_TMP/shoald-off.yaml" >"$loose/shoald.yaml"
rc=0
out=$("$BUILD/shoald" --check-config -c "$loose/shoald.yaml" 2>&1) || rc=$?
assert_eq "$rc" 2 "--check-config with a group-readable CA key"
grep -q "$loose/ca.key: permissions 0640 are too open" <<<"$out" || fail "--check-config does not name the key: $out"
chmod 0600 "$loose/ca.key"
chown 65534 "$loose/ca.key"
start_shoald "$loose/shoald.yaml"
assert_log_has ".msg == \"CA key readable by another user\" and (.warning | contains(\"$loose/ca.key is owned by uid 65534\"))"
stop_shoald "$SHOALD_PID"
info "ok"
