// Shared by the scheduler unit tests: the CMocka groups each file defines.
#pragma once

namespace shoal::scheduler::test {

int run_state_tests();
int run_server_tests();
int run_flat_map_tests();

}  // namespace shoal::scheduler::test
