# shellcheck shell=bash
# Helpers for the Slurm tests (t_slurm_*.sh); source after lib.sh and
# transparent_lib.sh:
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/transparent_lib.sh"
#   . "$(dirname "$0")/slurm_lib.sh"
#   sl_init ebpf|iptables
#
# Slurm's cgroup/v2 layout is built with real cgroup directories below the
# test's own cgroup (transparent_lib's $TP_ROOT, removed at exit with every
# process still inside):
#   $SL_SCOPE = $TP_ROOT/system.slice/slurmstepd.scope   (slurmd's scope)
#   $SL_SCOPE/job_<id>/step_<n>/user/task_0              (made by "slurmstepd",
#                                                        i.e. the test)
# and the clients are real curls started inside a task cgroup with no proxy
# variables.

# sl_init MODE: tp_init MODE, the fixture, the site CA and client trust;
# SL_SCOPE (absolute) and SL_SCOPE_REL (relative to the cgroup2 mount).
sl_init() {
  tp_init "$1"
  need_cmd timeout
  fixture_up
  tp_setup_trust
  SL_SCOPE_REL=$TP_ROOT_REL/system.slice/slurmstepd.scope
  SL_SCOPE=$TP_CG2/$SL_SCOPE_REL
}

# sl_step JOB [STEP]: makes the step's task cgroup, as slurmstepd would, and
# prints its path.
sl_step() {
  local d=$SL_SCOPE/job_$1/step_${2:-0}/user/task_0
  mkdir -p "$d" || fail "cannot make $d"
  echo "$d"
}

# sl_end_job JOB: the job ends: slurmstepd signals what is left of it and
# removes its cgroups, deepest first.
sl_end_job() {
  local j=$SL_SCOPE/job_$1 d pid
  [ -d "$j" ] || return 0
  while IFS= read -r d; do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$d/cgroup.procs"
  done < <(find "$j" -type d)
  while IFS= read -r d; do
    local i
    for ((i = 0; i < 50; i++)); do
      rmdir "$d" 2>/dev/null && break
      sleep 0.1
    done
    [ -d "$d" ] && fail "cannot remove $d (as slurmstepd would)"
  done < <(find "$j" -depth -type d)
  return 0
}

# sl_attached: the attached cgroups shoald reports, one per line.
sl_attached() { tp_ctl --json status | jq -r '.transparent.cgroups[]?'; }

# sl_is_attached ABS: true when shoald lists ABS.
sl_is_attached() { sl_attached | grep -qxF -- "$1"; }

# sl_wait_attached ABS yes|no WHAT: waits (5 s at most; shoald looks every
# second) until ABS is, or is not, in shoald's list.
sl_wait_attached() {
  local abs=$1 want=$2 deadline=$((SECONDS + 5)) now
  while :; do
    now=no
    sl_is_attached "$abs" && now=yes
    [ "$now" = "$want" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$(shoal_log)" >&2
      fail "$3: $abs attached=$now after 5 s, want $want (attached: $(sl_attached | tr '\n' ' '))"
    fi
    sleep 0.2
  done
}

# sl_links: how many BPF links shoald holds (its bpf_link descriptors).
sl_links() {
  local n
  n=$(find "/proc/$SHOALD_PID/fd" -mindepth 1 -maxdepth 1 -lname 'anon_inode:bpf_link' 2>/dev/null | wc -l)
  echo "$n"
}

# sl_pull CG WHAT: a curl inside CG, no proxy variables, fetches the token
# (the token host: tunnelled) and the big layer (the registry: hijacked;
# shoald follows the 307 to the blob store); the blob must be exact, and
# core.log must show the registry connection hijacked via the transparent
# listener from CG (eBPF: by CG's cgroup id).
sl_pull() {
  local cg=$1 what=$2 token code mark dir=$TEST_TMP/pull-$2
  mkdir -p "$dir"
  mark=$(log_mark "$(shoal_log)")
  token=$(tp_in "$cg" curl -sSf --cacert "$TP_BUNDLE" \
    "$SHOAL_TEST_TOKEN_URL?service=$SHOAL_TEST_SERVICE&scope=repository:$SHOAL_TEST_HELLO_REPO:pull" |
    jq -er .token) || fail "$what: token fetch from $cg failed"
  code=$(tp_in "$cg" curl -sS --cacert "$TP_BUNDLE" -o "$dir/blob" -w '%{http_code}' \
    -H "Authorization: Bearer $token" \
    "$SHOAL_TEST_REGISTRY_URL/v2/$SHOAL_TEST_HELLO_REPO/blobs/$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST") ||
    fail "$what: curl of the blob from $cg failed"
  assert_eq "$code" 200 "$what: blob GET status"
  assert_eq "$(sha256_of "$dir/blob")" "$SHOAL_TEST_HELLO_BIG_LAYER_DIGEST" "$what: blob digest"
  local reg="\"$SHOAL_TEST_REGISTRY_HOST:$SHOAL_TEST_PORT\"" sel deadline=$((SECONDS + 5))
  sel=".host == $reg and .via == \"transparent\" and .route == \"hijack\" and .status == 200"
  [ "$TP_MODE_RUNNING" = ebpf ] && sel="$sel and .cgroup_id == $(tp_cgid "$cg")"
  # Connect lines are written when the connection closes.
  until [ "$(tp_count "$mark" "$sel")" -ge 1 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { tp_connects "$mark" >&2; fail "$what: no connect line with $sel"; }
    sleep 0.2
  done
  assert_eq "$(tp_count "$mark" '.via != "transparent"')" 0 "$what: connect lines not via the transparent listener"
  info "$what: blob pulled from $cg through shoald"
}

# sl_direct CG WHAT: a connection from CG is not intercepted: the registry's
# own certificate (only the origin CA trusted) answers /v2/ with 401.
sl_direct() {
  local code
  code=$(tp_in "$1" curl -sS -o /dev/null -w '%{http_code}' --cacert "$SHOAL_TEST_ORIGIN_CA" \
    "$SHOAL_TEST_REGISTRY_URL/v2/") || fail "$2: curl from $1 failed (intercepted?)"
  assert_eq "$code" 401 "$2: GET /v2/ from $1 (direct)"
}
