#!/bin/bash
# The watchdog (watchdog.stallTimeout) and systemd's notify protocol:
#
#   A fake service manager (a Unix datagram socket in NOTIFY_SOCKET, with
#   WATCHDOG_USEC=1 s) receives READY=1 once shoald is up and WATCHDOG=1
#   pings while its loops turn. Without SHOAL_DEBUG_HOOKS=1 the freeze hook
#   is refused. With it, a 1 s freeze of the control loop (below the 2 s
#   stallTimeout) changes nothing; a freeze of a worker loop past the
#   stallTimeout makes shoald exit (SIGABRT) with a log line naming the
#   loop, and a job in the cgroup it had attached (eBPF) then connects
#   directly (fail-open): its programs went with the process.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"

tp_init ebpf
fixture_up
tp_setup_trust

# notify_listen SOCK OUT: a stand-in for systemd's notify socket; every
# datagram becomes one line of OUT ('\n' inside it shown as '|').
notify_listen() {
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        out.write(s.recv(4096).decode().replace("\n", "|") + "\n")
' "$1" "$2" &
  NOTIFY_PID=$!
  on_exit stop_pid "$NOTIFY_PID"
  local i
  for ((i = 0; i < 50; i++)); do
    [ -S "$1" ] && return 0
    sleep 0.1
  done
  fail "the notify listener did not bind $1"
}

# freeze LOOP SECONDS: the debug hook through the admin socket; prints the answer.
freeze() {
  python3 -c '
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((json.dumps({"cmd": "debug-freeze-loop", "loop": sys.argv[2], "seconds": float(sys.argv[3])}) + "\n").encode())
print(s.recv(4096).decode().strip())
' "$SHOALD_ADMIN_SOCKET" "$1" "$2"
}

# wait_lines FILE PATTERN N WHAT: waits (10 s) until FILE has N lines matching PATTERN.
wait_lines() {
  local deadline=$((SECONDS + 10)) n
  while :; do
    n=$(grep -c -- "$2" "$1" 2>/dev/null || true)
    [ "$n" -ge "$3" ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || fail "$4: $n lines of $1 match '$2' after 10 s, want $3"
    sleep 0.1
  done
}

info "without SHOAL_DEBUG_HOOKS the hook is refused"
config=$TEST_TMP/shoald-plain.yaml
tp_write_config "$config" off
start_shoald "$config"
out=$(freeze worker-0 5)
assert_eq "$(jq -r .ok <<<"$out")" false "debug-freeze-loop without SHOAL_DEBUG_HOOKS"
jq -r .error <<<"$out" | grep -q 'SHOAL_DEBUG_HOOKS=1' || fail "refusal does not say how to enable the hook: $out"
shoald_alive "after a refused freeze"
stop_shoald "$SHOALD_PID"

info "eBPF mode, notify socket, stallTimeout 2s, debug hooks on"
tp_mkcg job
config=$TEST_TMP/shoald.yaml
tp_write_config "$config" ebpf "$TP_ROOT_REL/job"
printf 'workers: 2\nwatchdog:\n  stallTimeout: 2s\n' >>"$config"
notes=$TEST_TMP/notify.log
notify_listen "$TEST_TMP/notify.sock" "$notes"
ulimit -c unlimited 2>/dev/null || info "cannot raise the core size limit; the core check below proves less"
NOTIFY_SOCKET=$TEST_TMP/notify.sock WATCHDOG_USEC=1000000 SHOAL_DEBUG_HOOKS=1 tp_start_shoald "$config" ebpf
ulimit -c 0
shoald_cwd=$(readlink "/proc/$SHOALD_PID/cwd")
wait_lines "$notes" '^READY=1|STATUS=proxy ' 1 "READY=1 with a STATUS"
wait_lines "$notes" '^WATCHDOG=1$' 3 "WATCHDOG=1 pings"
assert_log_has '.msg == "watchdog started" and .stall_timeout_ms == 2000 and .systemd_ping_ms == 500 and .loops == 3'

tp_job_start tp_in "$TP_ROOT/job"
tp_job_ask
assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_SITE_CN 401" \
  "the job's connection while shoald runs (hijacked): $TP_JOB_LINE"

info "a 1 s freeze of the control loop: below stallTimeout, shoald stays"
out=$(freeze main 1)
assert_eq "$(jq -r .ok <<<"$out")" true "debug-freeze-loop main: $out"
sleep 1.5
pings=$(grep -c '^WATCHDOG=1$' "$notes")
shoald_alive "after a 1 s freeze"
wait_lines "$notes" '^WATCHDOG=1$' "$((pings + 2))" "pings after the short freeze"

info "worker-1 frozen for 60 s: shoald exits after stallTimeout"
out=$(freeze worker-1 60)
assert_eq "$(jq -r .ok <<<"$out")" true "debug-freeze-loop worker-1: $out"
t0=$SECONDS
wait_exit "$SHOALD_PID" 15
[ "$WAIT_RC" != timeout ] || fail "shoald still runs 15 s after worker-1 froze (stallTimeout 2s)"
assert_eq "$WAIT_RC" 134 "shoald's exit status (SIGABRT)"
info "shoald exited $((SECONDS - t0)) s after the freeze, status $WAIT_RC"
assert_log_has '.msg == "watchdog: event loop stalled; exiting" and .loop == "worker-1" and .stall_timeout_ms == 2000'
grep -q 'event loop worker-1 stalled for [0-9]* ms (watchdog.stallTimeout 2000 ms)' "$SHOALD_LOG_DIR/shoald.out" ||
  fail "no stall line on shoald's stderr: $(tail -n 5 "$SHOALD_LOG_DIR/shoald.out")"
wait_lines "$notes" '^STATUS=event loop worker-1 stalled' 1 "the stall STATUS sent to the service manager"
# With core files allowed, none is written: shoald is not dumpable (a core
# would hold the CA key). Only checkable with a plain core_pattern and
# suid_dumpable 0.
if [ "$(cat /proc/sys/fs/suid_dumpable)" = 0 ] && [ "$(cut -c1 /proc/sys/kernel/core_pattern)" != "|" ]; then
  core=$(sed "s/%p/$SHOALD_PID/g; s/%[a-zA-Z]/*/g" /proc/sys/kernel/core_pattern)
  [[ $core == /* ]] || core=$shoald_cwd/$core
  # shellcheck disable=SC2086 # the pattern's * are meant to expand
  for f in $core $core.$SHOALD_PID; do
    [ ! -e "$f" ] || fail "a core file $f was written (it would hold the CA key)"
  done
else
  info "core_pattern or suid_dumpable here make the core check moot; skipped"
fi

info "fail-open: the job's next connection is direct"
n=$(tp_bpf_progs "$TP_ROOT/job")
[ "$n" = "?" ] || assert_eq "$n" 0 "Shoal programs on the job cgroup after the watchdog exit"
tp_job_ask
assert_eq "$(jq -r '.issuer + " " + (.status | tostring)' <<<"$TP_JOB_LINE")" "$TP_ORIGIN_CN 401" \
  "the job's connection after the watchdog exit (direct): $TP_JOB_LINE"
tp_job_stop
info "ok"
