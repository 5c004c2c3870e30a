// p2p unit tests: one binary, one CMocka group per file; each file exports
// its group runner and main adds up the failures.
#include <signal.h>

#include "../cmocka_cpp.h"

int run_protocol_tests();       // test_protocol.cpp
int run_auth_tests();           // test_auth.cpp
int run_upload_server_tests();  // test_upload_server.cpp
int run_peer_tls_tests();       // test_peer_tls.cpp
int run_http_call_tests();      // test_http_call.cpp
int run_hot_pieces_tests();     // test_hot_pieces.cpp

int main() {
  // As in shoald: a write to a peer that has already reset the connection
  // (a client gone mid-piece, a TLS alert after a failed handshake) must be
  // an EPIPE for libuv, not the end of the process.
  signal(SIGPIPE, SIG_IGN);
  return run_protocol_tests() + run_auth_tests() + run_upload_server_tests() + run_peer_tls_tests() +
         run_http_call_tests() + run_hot_pieces_tests();
}
