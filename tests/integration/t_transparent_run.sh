#!/bin/bash
# `shoalctl run [--cgroup NAME] -- CMD ARGS` with transparent.mode: auto
# (eBPF here; iptables where eBPF cannot work):
#
#   exit status   CMD's own (7), 127 for a command that does not exist, 1
#                 for a refused job name
#   unprivileged  a throwaway user (not in admin.group) runs a job: CMD runs
#                 as that user, in a job cgroup NAME-… below
#                 transparent.jobParent; its curl is hijacked (only the site
#                 CA trusted) and getpeername() shows the registry; core.log
#                 names the job's tgid and cgroup id and "job cgroup made"
#                 the user's uid. The same user may not attach or cleanup.
#   lifecycle     the job cgroup is removed about a second after CMD ends;
#                 when a child outlives CMD the cgroup stays (and the child
#                 is still intercepted) until the child exits, then goes
#   cleanup       `shoalctl cleanup` removes an empty cgroup left below
#                 jobParent
#   detach        after `shoalctl detach <jobParent>`, the next run attaches
#                 it again (its job is intercepted)
#   restart       a job started before a daemon restart is intercepted
#                 again by the new daemon, whose sweep removes its cgroup
#                 once the job ends
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"

need_cmd useradd userdel su
tp_init auto
fixture_up
tp_setup_trust

config=$TEST_TMP/shoald.yaml
tp_write_config "$config" auto
tp_start_shoald "$config" any
mode=$TP_MODE_RUNNING
jobs=$TP_ROOT/jobs
reg=$SHOAL_TEST_REGISTRY_URL

info "exit status: CMD's own, 127 when CMD does not exist, 1 for a bad job name"
rc=0
tp_ctl run -- sh -c 'exit 7' || rc=$?
assert_eq "$rc" 7 "shoalctl run -- sh -c 'exit 7'"
rc=0
tp_ctl run -- "$TEST_TMP/no-such-command" 2>"$TEST_TMP/enoent.err" || rc=$?
assert_eq "$rc" 127 "shoalctl run of a missing command"
rc=0
tp_ctl run --cgroup ../escape -- true 2>"$TEST_TMP/badname.err" || rc=$?
assert_eq "$rc" 1 "shoalctl run --cgroup ../escape"
grep -q 'cgroup name' "$TEST_TMP/badname.err" || fail "bad job name not explained: $(cat "$TEST_TMP/badname.err")"
[ ! -e "$TP_ROOT/escape" ] || fail "a job cgroup escaped jobParent: $TP_ROOT/escape"

# --- an unprivileged user -----------------------------------------------------------
user=shoalr$$
getent passwd "$user" >/dev/null && fail "user $user exists already"
useradd -M -N -g nogroup -s /bin/sh "$user" || fail "useradd $user"
on_exit userdel "$user"
uid=$(id -u "$user")
# The user reaches the socket, a copy of shoalctl and the probe, the CAs and
# a directory to write in (the checkout itself may be out of its reach).
chmod o+x "$TEST_TMP" "$(dirname "$SHOALD_ADMIN_SOCKET")"
ctl=$TEST_TMP/shoalctl
install -m 0755 "$BUILD/shoalctl" "$ctl"
probe=$TEST_TMP/transparent_probe.py
install -m 0644 "$TP_PROBE" "$probe"
u=$TEST_TMP/user
mkdir -p "$u"
chmod 1777 "$u"
as_user() { su -s /bin/sh "$user" -c "$1"; }
sock=$SHOALD_ADMIN_SOCKET

info "user $user ($uid): a job through shoalctl run"
cat >"$u/job.sh" <<EOF
#!/bin/sh
# Runs as $user inside the job cgroup.
id -u >$u/uid
sed -n 's/^0:://p' /proc/self/cgroup >$u/cgroup
stat -c %i "$TP_CG2\$(cat $u/cgroup)" >$u/cgid
curl -sS --cacert $TP_SITE/ca.crt -o /dev/null -w '%{http_code}' $reg/v2/ >$u/code 2>$u/curl.err
python3 $probe tls $SHOAL_TEST_REGISTRY_IP 443 $SHOAL_TEST_REGISTRY_HOST $TP_BUNDLE >$u/probe 2>&1
exit 3
EOF
chmod 0755 "$u/job.sh"
mark=$(log_mark "$(shoal_log)")
red0=$(tp_redirected_net)
rc=0
as_user "'$ctl' --socket '$sock' run --cgroup userjob -- $u/job.sh" || rc=$?
assert_eq "$rc" 3 "exit status of the user's job"
assert_eq "$(cat "$u/uid")" "$uid" "uid CMD ran as"
jobcg=$(cat "$u/cgroup")
[[ $jobcg == "/$TP_ROOT_REL/jobs/userjob-"* ]] || fail "the user's job ran in cgroup '$jobcg', want /$TP_ROOT_REL/jobs/userjob-*"
jobcgid=$(cat "$u/cgid")
assert_eq "$(cat "$u/code")" 401 "GET /v2/ from the user's job, only the site CA trusted (hijacked; curl: $(cat "$u/curl.err"))"
assert_eq "$(jq -c .peer "$u/probe")" "[\"$SHOAL_TEST_REGISTRY_IP\",443]" "getpeername() in the user's job ($(cat "$u/probe"))"
assert_eq "$(jq -r .issuer "$u/probe")" "$TP_SITE_CN" "issuer seen by the user's probe"
assert_log_has ".msg == \"job cgroup made\" and .cgroup == \"$TP_CG2$jobcg\" and .uid == $uid"
tp_wait_connects "$mark" "$red0" "user job"
assert_eq "$(tp_count "$mark" ".via == \"transparent\" and .route == \"hijack\" and .host == \"$SHOAL_TEST_REGISTRY_HOST:443\"")" 2 \
  "hijacked connections of the user's job"
tp_check_job_lines "$mark" "user job" "$jobcgid"
if [ "$mode" = ebpf ]; then
  pid=$(jq -r .pid "$u/probe")
  port=$(jq -r '.sock[1]' "$u/probe")
  assert_eq "$(tp_count "$mark" ".client == \"127.0.0.1:$port\" and .tgid == $pid")" 1 "connect line with the user probe's tgid"
fi

info "the job cgroup goes once CMD has ended"
deadline=$((SECONDS + 4))
while [ -d "$TP_CG2$jobcg" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "job cgroup $TP_CG2$jobcg still exists 4 s after its command ended"
  sleep 0.1
done
assert_log_has ".msg == \"job cgroup removed\" and .cgroup == \"$TP_CG2$jobcg\""

info "the user may not use the admin commands"
for cmd in "attach /" "detach $TP_ROOT_REL/jobs" cleanup; do
  rc=0
  as_user "'$ctl' --socket '$sock' $cmd" >"$TEST_TMP/denied.out" 2>&1 || rc=$?
  assert_eq "$rc" 1 "shoalctl $cmd as $user"
  grep -qi 'permission denied' "$TEST_TMP/denied.out" || fail "shoalctl $cmd as $user: $(cat "$TEST_TMP/denied.out")"
done
assert_eq "$(tp_t "cgroups | any(. == \"$TP_CG2\")")" false "the user attached the cgroup root"

info "a child that outlives CMD keeps the job cgroup (and is intercepted) until it exits"
cat >"$u/outlive.sh" <<EOF
#!/bin/sh
sed -n 's/^0:://p' /proc/self/cgroup >$u/cg2
# The child connects after CMD has ended, then lingers a little.
(sleep 1.5; curl -sS --cacert $TP_SITE/ca.crt -o /dev/null -w '%{http_code}' $reg/v2/ >$u/late 2>&1; sleep 1) \
  </dev/null >/dev/null 2>&1 &
echo \$! >$u/child
exit 5
EOF
chmod 0755 "$u/outlive.sh"
rc=0
as_user "'$ctl' --socket '$sock' run -- $u/outlive.sh" || rc=$?
assert_eq "$rc" 5 "exit status of a CMD that leaves a child behind"
child=$(cat "$u/child")
on_exit "kill $child 2>/dev/null || true"
cg2=$TP_CG2$(cat "$u/cg2")
[[ $cg2 == "$jobs/job-"* ]] || fail "the job ran in $cg2, want $jobs/job-*"
sleep 1.2
kill -0 "$child" 2>/dev/null || fail "the child $child exited early"
[ -d "$cg2" ] || fail "job cgroup $cg2 removed while its child $child still runs"
grep -qx "$child" "$cg2/cgroup.procs" || fail "child $child is not in $cg2: $(cat "$cg2/cgroup.procs")"
[ "$(tp_t jobs)" -ge 1 ] || fail "shoalctl status counts no job while $cg2 is populated"
deadline=$((SECONDS + 10))
while kill -0 "$child" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "child $child still runs after 10 s"
  sleep 0.1
done
assert_eq "$(cat "$u/late")" 401 "GET /v2/ by the child after CMD ended (hijacked)"
deadline=$((SECONDS + 4))
while [ -d "$cg2" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "job cgroup $cg2 still exists 4 s after its last process ended"
  sleep 0.1
done
assert_log_has ".msg == \"job cgroup removed\" and .cgroup == \"$cg2\""

info "shoalctl cleanup removes an empty cgroup left below jobParent"
mkdir "$jobs/stale-job" || fail "cannot make $jobs/stale-job"
out=$(tp_ctl --json cleanup) || fail "shoalctl cleanup: $out"
[ "$(jq -r .cgroups_removed <<<"$out")" -ge 1 ] || fail "shoalctl cleanup removed no cgroup: $out"
[ ! -d "$jobs/stale-job" ] || fail "shoalctl cleanup left $jobs/stale-job"
if [ "$mode" = ebpf ]; then
  tp_assert_no_rules "with an eBPF daemon, after shoalctl cleanup"
else
  # A running iptables daemon's own rules are left alone.
  assert_eq "$(jq -r .iptables <<<"$out")" "in use by this daemon; left alone" "shoalctl cleanup's iptables answer"
  tp_rules | grep -q SHOAL-REDIRECT || fail "shoalctl cleanup removed the running daemon's rules"
fi
shoald_alive "end of test"

info "shoalctl run after jobParent was detached"
tp_ctl detach "$TP_ROOT_REL/jobs" >/dev/null || fail "shoalctl detach $TP_ROOT_REL/jobs"
code=$(tp_ctl run -- curl -sS -o /dev/null -w '%{http_code}' --cacert "$TP_SITE/ca.crt" "$reg/v2/") || code="curl failed"
assert_eq "$code" 401 "shoalctl run after jobParent was detached, only the site CA trusted (intercepted)"

info "a shoalctl run job across a daemon restart"
mark=$(log_mark "$(shoal_log)")
tp_job_start tp_ctl run --cgroup across-restart --
tp_job_ask
assert_eq "$(jq -r .issuer <<<"$TP_JOB_LINE")" "$TP_SITE_CN" "the job before the restart: $TP_JOB_LINE"
assert_log_has '.msg == "job cgroup made" and (.cgroup | test("/across-restart-"))'
jobcg=$(log_since "$(shoal_log)" "$mark" | jq -rR 'fromjson? | select(.msg == "job cgroup made") | .cgroup' | tail -n 1)
stop_shoald "$SHOALD_PID" "$SHOALD_LOG_DIR/shoald.out"
tp_start_shoald "$config" "$mode"
tp_job_ask
assert_eq "$(jq -r .issuer <<<"$TP_JOB_LINE")" "$TP_SITE_CN" "the job's connection after the restart (intercepted again): $TP_JOB_LINE"
tp_job_stop
deadline=$((SECONDS + 4))
while [ -d "$jobcg" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "job cgroup $jobcg still exists 4 s after its job ended (made before the restart)"
  sleep 0.1
done
info "ok"
