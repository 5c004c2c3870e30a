#!/bin/bash
# Transparent interception with the eBPF backend (transparent.mode: ebpf),
# real clients with no proxy variables (tests/integration/transparent_lib.sh,
# tp_suite, has the details):
#
#   curl, skopeo and the ORAS pull program inside an attached cgroup and
#   under `shoalctl run` get exactly what a direct pull gets; the registry
#   and blob store are hijacked, the token host is tunnelled to its original
#   address; every connect line says via transparent and names the job's
#   tgid and cgroup id; getpeername() shows the original peer (IPv4, v4
#   through a dual-stack socket, IPv6); UDP to 443 gets EPERM; an origin on
#   [::1]:443 works hijacked and tunnelled; a process outside the cgroup is
#   not intercepted; detach/attach; SIGTERM leaves no program attached.
#   shoald started inside cgroup P/daemon with P attached: no loop.
#   kill -9: the job's next connection goes direct (fail-open); a restart
#   intercepts it again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"

tp_init ebpf
fixture_up
tp_setup
tp_suite ebpf
info "ok"
