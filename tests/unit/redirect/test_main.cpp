// Unit tests for shoal::redirect: runs every group, whatever the one before
// it did, and fails when any test failed.
#include "redirect_test.h"

int main(void) {
  namespace t = shoal::redirect::test;
  int failed = 0;
  failed += t::run_cgroup_tests();
  failed += t::run_iptables_tests();
  failed += t::run_ebpf_tests();
  return failed == 0 ? 0 : 1;
}
