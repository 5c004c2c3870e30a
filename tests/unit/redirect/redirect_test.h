// The CMocka groups of the redirect module's unit-test binary, one per
// source file; test_main.cpp runs them all. Each returns the number of
// failed tests in its group.
#pragma once

namespace shoal::redirect::test {

int run_cgroup_tests();    // test_cgroup.cpp: mountinfo parsing, paths, ids
int run_iptables_tests();  // test_iptables.cpp: the iptables backend (root)
int run_ebpf_tests();      // test_ebpf.cpp: the eBPF backend (root)

}  // namespace shoal::redirect::test
