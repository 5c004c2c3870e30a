#!/bin/bash
# Slurm, node-wide wiring: transparent.cgroups names slurmd's
# system.slice/slurmstepd.scope, so every job below it is intercepted
# without per-job work (eBPF backend; Slurm's cgroup/v2 layout built from
# real cgroup directories, see slurm_lib.sh):
#
#   shoald starts before the scope exists (slurmd not up yet): not attached,
#   logged; once the scope is made, shoald attaches it within seconds.
#   Two jobs' step cgroups: curls inside, with no proxy variables, pull a
#   blob through shoald (connect lines carry each task cgroup's id).
#   A job's cgroups vanish: nothing changes in shoald's list (the scope
#   stays attached), the other job still pulls.
#   The scope removed and made again (slurmd restarted): dropped, then
#   attached anew; a job in the new scope pulls through shoald.
#   shoalctl detach of the scope: stays detached (the sweep does not undo
#   it); jobs connect directly. SIGTERM leaves no program attached.
# The node reaches origins only through a site proxy (upstreamProxy, a real
# tinyproxy on loopback): its log shows the registry asked for by name, and
# the token host (not hijacked: spliced to the address the job connected
# to) asked for by the TLS server name the job sent, never by address.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"
. "$(dirname "$0")/slurm_lib.sh"

sl_init ebpf
need_cmd tinyproxy
mkdir -p "$TP_ROOT/system.slice" || fail "cannot make $TP_ROOT/system.slice"
start_tinyproxy SITE
config=$TEST_TMP/shoald.yaml
tp_write_config "$config" ebpf "$SL_SCOPE_REL"
printf 'upstreamProxy:\n  url: http://127.0.0.1:%s\n' "$SITE_PORT" >>"$config"
tp_start_shoald "$config" ebpf
links0=$(sl_links)

info "the scope does not exist yet"
assert_eq "$(tp_t 'cgroups | length')" 0 "attached cgroups before the scope exists"
assert_log_has ".msg == \"cgroup not attached; attached once it exists\" and .cgroup == \"$SL_SCOPE_REL\""
mkdir "$SL_SCOPE" || fail "cannot make $SL_SCOPE"
sl_wait_attached "$SL_SCOPE" yes "after slurmd made its scope"
assert_log_has ".msg == \"cgroup attached\" and .cgroup == \"$SL_SCOPE\" and .reason == \"transparent.cgroups\""
assert_eq "$(sl_links)" "$((links0 + 6))" "shoald's BPF links with the scope attached"

A=$((200000 + RANDOM))
B=$((A + 1))
task_a=$(sl_step "$A" 0)
task_b=$(sl_step "$B" batch)
sl_pull "$task_a" "job $A"
sl_pull "$task_b" "job $B"
n=$(tinyproxy_connects "$SITE_LOG" 0 "$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT")
[ "$n" -ge 2 ] || { cat "$SITE_LOG" >&2; fail "the site proxy saw $n CONNECTs to the registry, want 2 or more"; }
n=$(tinyproxy_connects "$SITE_LOG" 0 "$SHOAL_TEST_AUTH_HOST:$SHOAL_TEST_PORT")
[ "$n" -ge 2 ] || { cat "$SITE_LOG" >&2; fail "the site proxy saw $n CONNECTs to the token host by name, want 2 or more"; }
n=$(grep -cE '\): CONNECT [0-9.]+:[0-9]+ ' "$SITE_LOG" || true)
assert_eq "$n" 0 "CONNECTs by address at the site proxy"

info "job $A's cgroups vanish"
sl_end_job "$A"
sleep 1.5 # a sweep or more
assert_eq "$(sl_attached | tr '\n' ' ')" "$SL_SCOPE " "attached cgroups after job $A ended"
assert_eq "$(sl_links)" "$((links0 + 6))" "shoald's BPF links after job $A ended"
sl_pull "$task_b" "job $B after job $A ended"

info "slurmd restarted: its scope removed and made again"
sl_end_job "$B"
rmdir "$SL_SCOPE" || fail "cannot remove $SL_SCOPE"
mkdir "$SL_SCOPE" || fail "cannot make $SL_SCOPE again"
sl_wait_attached "$SL_SCOPE" yes "after the scope was made again"
# The same path, a new cgroup: attached afresh (the old links released).
assert_log_has ".msg == \"attached cgroup removed; detached\" and .cgroup == \"$SL_SCOPE\""
assert_eq "$(sl_links)" "$((links0 + 6))" "shoald's BPF links after the scope was made again"
task_c=$(sl_step "$((A + 2))" 0)
sl_pull "$task_c" "job $((A + 2)) in the new scope"

info "shoalctl detach of the scope: it stays detached"
out=$(tp_ctl detach "$SL_SCOPE_REL") || fail "shoalctl detach $SL_SCOPE_REL: $out"
sleep 1.5
sl_is_attached "$SL_SCOPE" && fail "the sweep attached $SL_SCOPE again after shoalctl detach"
assert_eq "$(sl_links)" "$links0" "shoald's BPF links after detach"
sl_direct "$task_c" "job $((A + 2)) after detach"
out=$(tp_ctl attach "$SL_SCOPE_REL") || fail "shoalctl attach $SL_SCOPE_REL: $out"
tp_stop_clean "$SL_SCOPE"
info "ok"
