// scheduler unit tests: one binary, three CMocka groups (State rules, the
// server over a real loop and socket, the flat maps).
#include "sched_test.h"

int main() {
  int failed = shoal::scheduler::test::run_state_tests();
  failed += shoal::scheduler::test::run_server_tests();
  failed += shoal::scheduler::test::run_flat_map_tests();
  return failed == 0 ? 0 : 1;
}
