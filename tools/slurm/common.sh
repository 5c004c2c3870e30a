# shellcheck shell=bash disable=SC2034,SC2154
# (the variables set here are the scripts'; they set shoal_what)
# Shared by tools/slurm/prolog.sh and epilog.sh (sourced; not run alone).
#
# Settings, from the environment or from the file $SHOAL_SLURM_ENV
# (default /etc/shoal/slurm.env, KEY=value lines sourced by bash; slurmd
# gives prologs a bare environment, so the file is the usual place):
#   SHOAL_SLURM_CGROUP_BASE  where Slurm's cgroup/v2 plugin makes job cgroups,
#                            absolute or relative to the cgroup2 mount
#                            (default system.slice/slurmstepd.scope)
#   SHOALCTL                 the shoalctl program (default: shoalctl in PATH,
#                            else /usr/local/bin/shoalctl)
#   SHOAL_SOCKET             shoald's admin socket (default: shoalctl's own)
#   SHOAL_SLURM_TIMEOUT      seconds one shoalctl call may take (default 10)
#   SHOAL_SLURM_STATE        where the prolog notes the job cgroups it made
#                            (default /run/shoal/slurm)
#   SHOAL_SLURM_STRICT       1: exit 1 when shoald cannot be told, which makes
#                            Slurm drain the node; default 0: log and exit 0,
#                            so the job runs and pulls directly
# Messages go to syslog (tag shoal-slurm) and to stderr.

shoal_env=${SHOAL_SLURM_ENV:-/etc/shoal/slurm.env}
if [ -r "$shoal_env" ]; then
  # shellcheck disable=SC1090
  . "$shoal_env"
fi
shoal_base=${SHOAL_SLURM_CGROUP_BASE:-system.slice/slurmstepd.scope}
shoal_timeout=${SHOAL_SLURM_TIMEOUT:-10}
shoal_state=${SHOAL_SLURM_STATE:-/run/shoal/slurm}
shoal_strict=${SHOAL_SLURM_STRICT:-0}
shoal_ctl_bin=${SHOALCTL:-}
if [ -z "$shoal_ctl_bin" ]; then
  shoal_ctl_bin=$(command -v shoalctl 2>/dev/null || echo /usr/local/bin/shoalctl)
fi

shoal_log() {
  echo "shoal-slurm $shoal_what job ${SLURM_JOB_ID:-?}: $*" >&2
  logger -t shoal-slurm -- "$shoal_what job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null || true
}

# shoal_give_up MSG: a failure that must not cost the job (unless strict).
shoal_give_up() {
  shoal_log "$*"
  if [ "$shoal_strict" = 1 ]; then exit 1; fi
  exit 0
}

# shoal_ctl ARGS...: shoalctl against the daemon, bounded in time; prints
# its output, returns its status.
shoal_ctl() {
  local args=()
  [ -n "${SHOAL_SOCKET:-}" ] && args+=(--socket "$SHOAL_SOCKET")
  timeout "$shoal_timeout" "$shoal_ctl_bin" "${args[@]}" "$@" 2>&1
}

# Sets shoal_job_dir, the job's cgroup directory (absolute), from
# SLURM_JOB_ID, the cgroup2 mount and SHOAL_SLURM_CGROUP_BASE; gives up on
# anything odd.
shoal_job_cgroup() {
  local job=${SLURM_JOB_ID:-} mount base
  [[ $job =~ ^[0-9]+$ ]] || shoal_give_up "SLURM_JOB_ID '$job' is not a job id"
  # The cgroup2 mount: /sys/fs/cgroup on pure-v2 hosts, /sys/fs/cgroup/unified
  # on hybrid ones (the fields after " - " are fstype, source, options).
  mount=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
    /proc/self/mountinfo)
  [ -n "$mount" ] || shoal_give_up "no cgroup2 file system is mounted"
  case $shoal_base in
    *..*) shoal_give_up "SHOAL_SLURM_CGROUP_BASE '$shoal_base' must not contain '..'" ;;
    "$mount" | "$mount"/*) base=$shoal_base ;;
    /*) shoal_give_up "SHOAL_SLURM_CGROUP_BASE '$shoal_base' is not under the cgroup2 mount $mount" ;;
    *) base=$mount/$shoal_base ;;
  esac
  base=${base%/}
  shoal_job_dir=$base/job_$job
  shoal_base_dir=$base
}
