// p2p unit tests: one binary, one CMocka group per file; each file exports
// its group runner and main adds up the failures.
#include "../cmocka_cpp.h"

int run_protocol_tests();       // test_protocol.cpp
int run_auth_tests();           // test_auth.cpp
int run_upload_server_tests();  // test_upload_server.cpp

int main() { return run_protocol_tests() + run_auth_tests() + run_upload_server_tests(); }
