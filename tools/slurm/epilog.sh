#!/bin/bash
# Slurm Epilog: the counterpart of prolog.sh (see there for slurm.conf).
# `shoalctl detach` of the job's cgroup; when slurmstepd already removed it,
# shoald has dropped it (it watches for removed cgroups) and the detach
# answers that it no longer exists, which is fine. A job cgroup the prolog
# made that is still there and empty (the job never started a step) is
# removed. Never fails the job: errors are logged and the script exits 0
# (SHOAL_SLURM_STRICT=1: exit 1, which drains the node). Settings: see
# common.sh.
set -u
shoal_what=epilog
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

shoal_job_cgroup
failed=""
if out=$(shoal_ctl detach "$shoal_job_dir"); then
  shoal_log "detach $shoal_job_dir: $out"
else
  failed="shoalctl detach $shoal_job_dir failed: $out"
fi
made=$shoal_state/job_$SLURM_JOB_ID.made
if [ -e "$made" ]; then
  # Only an empty leaf: processes or step cgroups left mean Slurm still
  # owns it.
  if [ -d "$shoal_job_dir" ] && grep -qx 'populated 0' "$shoal_job_dir/cgroup.events" 2>/dev/null &&
    [ -z "$(find "$shoal_job_dir" -mindepth 1 -maxdepth 1 -type d -print -quit 2>/dev/null)" ]; then
    rmdir "$shoal_job_dir" 2>/dev/null && shoal_log "removed $shoal_job_dir (made by the prolog, unused)"
  fi
  rm -f "$made"
fi
[ -z "$failed" ] || shoal_give_up "$failed"
exit 0
