#!/bin/bash
# Slurm Prolog: has shoald intercept the job's cgroup, so every process of
# the job (apptainer, skopeo, curl...) pulls through Shoal without proxy
# variables. slurm.conf:
#
#   Prolog=/usr/local/lib/shoal/slurm/prolog.sh
#   Epilog=/usr/local/lib/shoal/slurm/epilog.sh
#   PrologFlags=Alloc
#
# Slurm's cgroup/v2 plugin puts the job at
# <cgroup2>/system.slice/slurmstepd.scope/job_<id> (steps below it) and
# makes that directory when the job's first step starts, which may be after
# the prolog. So the prolog makes it when it is missing (slurmstepd then
# uses it as it is) and notes that it did, so the epilog can remove it if
# the job never ran; then `shoalctl attach`. Hooks attached to the job
# cgroup cover every step below it.
#
# A failure (shoald not running, no such base cgroup) is logged and the job
# runs all the same, pulling directly: Shoal is a cache, and a failed prolog
# would drain the node. SHOAL_SLURM_STRICT=1 makes it exit 1 instead.
# Settings: see common.sh.
set -u
shoal_what=prolog
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

shoal_job_cgroup
[ -d "$shoal_base_dir" ] ||
  shoal_give_up "$shoal_base_dir does not exist (Slurm's cgroup/v2 plugin not in use, or SHOAL_SLURM_CGROUP_BASE wrong)"
if [ ! -d "$shoal_job_dir" ]; then
  mkdir "$shoal_job_dir" 2>/dev/null || [ -d "$shoal_job_dir" ] ||
    shoal_give_up "cannot make $shoal_job_dir"
  if mkdir -p "$shoal_state" 2>/dev/null; then
    : >"$shoal_state/job_$SLURM_JOB_ID.made" 2>/dev/null || true
  fi
fi
if ! out=$(shoal_ctl attach "$shoal_job_dir"); then
  shoal_give_up "shoalctl attach $shoal_job_dir failed: $out"
fi
shoal_log "$out"
exit 0
