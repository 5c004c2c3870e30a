#!/bin/bash
# Slurm with the iptables backend: a job cgroup attached by
# tools/slurm/prolog.sh gets its REDIRECT and REJECT rules; when
# slurmstepd removes the job's cgroups while they are attached, shoald
# deletes those rules on its own (xt_cgroup resolved --path when the rule was
# added: left behind, they would match nothing, or a dead cgroup) and drops
# the cgroup from its list; the epilog is a clean no-op; after SIGTERM no
# Shoal rule is left.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"
. "$(dirname "$0")/slurm_lib.sh"

sl_init iptables
mkdir -p "$SL_SCOPE" || fail "cannot make $SL_SCOPE"
config=$TEST_TMP/shoald.yaml
tp_write_config "$config" iptables
tp_start_shoald "$config" iptables
export SHOAL_SLURM_ENV=/nonexistent SHOAL_SLURM_CGROUP_BASE=$SL_SCOPE_REL SHOALCTL=$BUILD/shoalctl \
  SHOAL_SOCKET=$SHOALD_ADMIN_SOCKET SHOAL_SLURM_STATE=$TEST_TMP/slurm-state
A=$((300000 + RANDOM))

out=$(SLURM_JOB_ID=$A "$SHOAL_ROOT/tools/slurm/prolog.sh" 2>&1) || fail "prolog for job $A failed: $out"
sl_is_attached "$SL_SCOPE/job_$A" || fail "job_$A not attached after the prolog"
n=$(tp_rules | grep -c -- "/$SL_SCOPE_REL/job_$A" || true)
[ "$n" -ge 2 ] || fail "want REDIRECT and REJECT rules for job_$A, found $n:
$(tp_rules)"
task=$(sl_step "$A" 0)
sl_pull "$task" "job $A (iptables)"

info "job $A ends: its cgroups vanish while attached"
sl_end_job "$A"
sl_wait_attached "$SL_SCOPE/job_$A" no "after job_$A vanished"
assert_log_has ".msg == \"attached cgroup removed; detached\" and .cgroup == \"$SL_SCOPE/job_$A\""
r=$(tp_rules | grep -- "job_$A" || true)
[ -z "$r" ] || fail "rules of the removed job_$A remain:
$r"
tp_rules | grep -q 'SHOAL-REDIRECT' || fail "shoald's own chains went too (they must stay while it runs)"
out=$(SLURM_JOB_ID=$A "$SHOAL_ROOT/tools/slurm/epilog.sh" 2>&1) || fail "epilog for job $A failed: $out"
[[ $out == *"no longer exists"* ]] || fail "epilog for the vanished job: $out"
stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"
tp_assert_no_rules "after shoald stopped"
info "ok"
