// libFuzzer target for Range header parsing (http::parse_range and
// http::resolve_range), which decides what part of a stored object the task
// engine sends. The first 8 input bytes are the object's length (little
// endian; the top bits masked so lengths up to 2^40 occur), the rest is the
// header value as a client sent it. Checked: an accepted value is a single
// byte range that reads back to what it says (the numbers printed back
// parse to the same range), resolution never yields bytes outside the
// object nor an empty or reversed range, and 416 only when nothing of the
// object is selected.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shoal/http/http.h"

using shoal::http::ByteRange;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t len = 0;
  std::memcpy(&len, data, 8);
  len &= (uint64_t{1} << ((data[7] & 1) != 0 ? 40 : 16)) - 1;
  const std::string value(reinterpret_cast<const char*>(data + 8), size - 8);
  ByteRange r;
  if (!shoal::http::parse_range(value, &r)) {
    check(r.first == -1 && r.last == -1 && r.suffix == -1);
    return 0;
  }
  check(value.find(',') == std::string::npos);
  if (r.suffix >= 0) {
    check(r.first == -1 && r.last == -1);
  } else {
    check(r.first >= 0 && (r.last == -1 || r.last >= r.first));
  }
  // Printed back in canonical form, it parses to the same range.
  std::string canon = "bytes=" + (r.suffix >= 0 ? "-" + std::to_string(r.suffix)
                                                : std::to_string(r.first) + "-" +
                                                      (r.last >= 0 ? std::to_string(r.last) : std::string()));
  ByteRange again;
  check(shoal::http::parse_range(canon, &again));
  check(again.first == r.first && again.last == r.last && again.suffix == r.suffix);

  uint64_t first = 0, last = 0;
  const bool ok = shoal::http::resolve_range(r, len, &first, &last);
  if (ok) {
    check(len > 0 && first <= last && last < len);
    if (r.suffix >= 0)
      check(last == len - 1 && last - first + 1 == std::min<uint64_t>(len, r.suffix));
    else
      check(first == static_cast<uint64_t>(r.first));
  } else {
    // Unsatisfiable only when no byte of the object is selected.
    check(len == 0 || r.suffix == 0 || (r.suffix < 0 && static_cast<uint64_t>(r.first) >= len));
  }
  return 0;
}
