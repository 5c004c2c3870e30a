#!/bin/bash
# Slurm, per-job wiring: tools/slurm/prolog.sh and epilog.sh attach and
# detach each job's cgroup through shoalctl (eBPF backend), in Slurm's
# cgroup/v2 layout built from real cgroup directories
# (.../system.slice/slurmstepd.scope/job_<id>/step_0/user/task_0, see
# slurm_lib.sh):
#
#   job A: the prolog makes job_A (slurmstepd has not yet) and attaches it;
#          a curl in step_0's task cgroup, with no proxy variables, pulls a
#          blob through shoald. Then the job's cgroups vanish while
#          attached, as slurmstepd removes them: shoald drops job_A from its
#          list and status and releases its six links on its own; the
#          epilog afterwards is a clean no-op (exit 0, "no longer exists").
#   job B: the usual order, epilog before the cgroup goes: detached, and the
#          empty job cgroup the prolog made is removed.
#   a sibling job's cgroup, never attached, is not intercepted.
#   shoald down: prolog and epilog log and exit 0 (the job runs, pulling
#   directly); SHOAL_SLURM_STRICT=1 makes them exit 1.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"
. "$(dirname "$0")/slurm_lib.sh"

sl_init ebpf
mkdir -p "$SL_SCOPE" || fail "cannot make $SL_SCOPE"
config=$TEST_TMP/shoald.yaml
tp_write_config "$config" ebpf
tp_start_shoald "$config" ebpf

export SHOAL_SLURM_ENV=/nonexistent SHOAL_SLURM_CGROUP_BASE=$SL_SCOPE_REL SHOALCTL=$BUILD/shoalctl \
  SHOAL_SOCKET=$SHOALD_ADMIN_SOCKET SHOAL_SLURM_STATE=$TEST_TMP/slurm-state
prolog=$SHOAL_ROOT/tools/slurm/prolog.sh
epilog=$SHOAL_ROOT/tools/slurm/epilog.sh
A=$((100000 + RANDOM))
B=$((A + 1))
C=$((A + 2))

# --- job A: attached by the prolog, vanishes while attached ----------------------------
links0=$(sl_links)
out=$(SLURM_JOB_ID=$A "$prolog" 2>&1) || fail "prolog for job $A failed: $out"
info "prolog: $out"
[ -d "$SL_SCOPE/job_$A" ] || fail "the prolog did not make job_$A"
[ -e "$SHOAL_SLURM_STATE/job_$A.made" ] || fail "the prolog did not note that it made job_$A"
sl_is_attached "$SL_SCOPE/job_$A" || fail "job_$A not attached after the prolog: $(sl_attached)"
assert_eq "$(sl_links)" "$((links0 + 6))" "shoald's BPF links after attaching job_$A"
assert_log_has ".msg == \"cgroup attached\" and .cgroup == \"$SL_SCOPE/job_$A\" and .by == \"shoalctl\""

task=$(sl_step "$A" 0)
sl_pull "$task" "job $A step 0"
# A sibling job nobody attached: direct.
sl_direct "$(sl_step "$C" 0)" "job $C (not attached)"

info "job $A ends: slurmstepd removes its cgroups while they are attached"
sl_end_job "$A"
sl_wait_attached "$SL_SCOPE/job_$A" no "after job_$A vanished"
assert_log_has ".msg == \"attached cgroup removed; detached\" and .cgroup == \"$SL_SCOPE/job_$A\""
assert_eq "$(sl_links)" "$links0" "shoald's BPF links after job_$A vanished"
assert_eq "$(tp_t 'cgroups | length')" 0 "attached cgroups after job_$A vanished"
out=$(SLURM_JOB_ID=$A "$epilog" 2>&1) || fail "epilog for the vanished job $A failed: $out"
info "epilog: $out"
[[ $out == *"no longer exists"* ]] || fail "epilog for the vanished job: $out"
[ -e "$SHOAL_SLURM_STATE/job_$A.made" ] && fail "the epilog left the prolog's note for job $A"
out=$(tp_ctl detach "$SL_SCOPE_REL/job_$A" 2>&1) || fail "shoalctl detach of the vanished job_$A: $out"
assert_eq "$out" "$SL_SCOPE/job_$A: not attached: the cgroup no longer exists" "shoalctl detach of a vanished cgroup"
# A cgroup made again under the same name is a new one: not intercepted.
sl_direct "$(sl_step "$A" 1)" "job_$A made again"
sl_end_job "$A"

# --- job B: epilog first -------------------------------------------------------------
out=$(SLURM_JOB_ID=$B "$prolog" 2>&1) || fail "prolog for job $B failed: $out"
sl_is_attached "$SL_SCOPE/job_$B" || fail "job_$B not attached after the prolog"
out=$(SLURM_JOB_ID=$B "$epilog" 2>&1) || fail "epilog for job $B failed: $out"
info "epilog: $out"
sl_is_attached "$SL_SCOPE/job_$B" && fail "job_$B still attached after the epilog"
[ -d "$SL_SCOPE/job_$B" ] && fail "the epilog left the unused job_$B the prolog made"
assert_eq "$(sl_links)" "$links0" "shoald's BPF links after job $B"
sl_end_job "$C"

# --- shoald down ----------------------------------------------------------------------
info "shoald down: the scripts log and let the job run"
stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"
out=$(SLURM_JOB_ID=$C "$prolog" 2>&1) || fail "prolog with shoald down exited non-zero: $out"
[[ $out == *"shoalctl attach"*"failed"* ]] || fail "prolog with shoald down said: $out"
out=$(SLURM_JOB_ID=$C "$epilog" 2>&1) || fail "epilog with shoald down exited non-zero: $out"
[[ $out == *"shoalctl detach"*"failed"* ]] || fail "epilog with shoald down said: $out"
[ -d "$SL_SCOPE/job_$C" ] && fail "the epilog left the unused job_$C the prolog made"
rc=0
SHOAL_SLURM_STRICT=1 SLURM_JOB_ID=$C "$prolog" >/dev/null 2>&1 || rc=$?
assert_eq "$rc" 1 "strict prolog with shoald down"
rc=0
SLURM_JOB_ID=x1 "$prolog" >/dev/null 2>&1 || rc=$?
assert_eq "$rc" 0 "prolog with a bad SLURM_JOB_ID (logged, not fatal)"
SHOAL_SLURM_STRICT=1 SLURM_JOB_ID=$C "$epilog" >/dev/null 2>&1 && fail "strict epilog with shoald down exited 0"
sl_end_job "$C"
info "ok"
