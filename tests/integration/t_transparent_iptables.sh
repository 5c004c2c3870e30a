#!/bin/bash
# Transparent interception with the iptables backend (transparent.mode:
# iptables): the same suite as t_transparent_ebpf.sh (transparent_lib.sh,
# tp_suite) except the fail-open step. Connect lines carry no tgid or
# cgroup id (iptables cannot tell); getpeername() shows the original peer
# through NAT. After SIGTERM no Shoal rule is left (iptables-save,
# ip6tables-save, nft and legacy). kill -9 leaves the rules (fail-closed):
# the job's connections are refused until `shoalctl cleanup`, which removes
# every chain; then they go direct.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/transparent_lib.sh"

tp_init iptables
fixture_up
tp_setup
tp_suite iptables
tp_assert_no_rules "at the end of the test"
info "ok"
