// libFuzzer target for the HTTP/1.1 request parser (shoal/http/http.h), as
// the explicit proxy, the hijacked path and the peer upload server run it on
// bytes from clients. Byte 0 picks options (a small header cap, pausing
// after each message, EOF at the end), byte 1 the split points; the rest is
// the stream. See http_harness.h for what is checked. Request targets also
// go through the URL and authority splitters the proxy applies to them.
#include <cstdint>

#include "http_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz_http::one_input(shoal::http::Parser::Kind::Request, data, size);
  if (size > 2) {
    // The splitters on the raw rest: they must refuse junk, and what they
    // accept has a host without NUL and a port in range when one is given.
    const std::string_view t(reinterpret_cast<const char*>(data + 2), size - 2);
    shoal::http::Url u;
    if (shoal::http::parse_absolute_url(t, &u)) {
      fuzz_http::check(!u.host.empty() && !u.path.empty() && u.path[0] == '/');
      fuzz_http::check(u.scheme == "http" || u.scheme == "https");
      fuzz_http::check(u.host.find('\0') == std::string::npos);
    }
    std::string host;
    uint16_t port = 0;
    bool v6 = false;
    if (shoal::http::parse_authority(t, &host, &port, &v6)) fuzz_http::check(!host.empty() && port != 0);
  }
  return 0;
}
