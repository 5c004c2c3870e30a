// libFuzzer target for the HTTP/1.1 response parser (shoal/http/http.h), as
// the proxy runs it on bytes from origins and parents, and the P2P engine on
// scheduler answers: status lines, 1xx, bodies framed by Content-Length,
// chunked (sizes, extensions, trailers) or EOF, HEAD and CONNECT answers.
// Byte 0 picks options (small header cap, expect_no_body,
// expect_connect_response, pausing, EOF at the end), byte 1 the split
// points; the rest is the stream. See http_harness.h for what is checked.
#include <cstdint>

#include "http_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz_http::one_input(shoal::http::Parser::Kind::Response, data, size);
  return 0;
}
