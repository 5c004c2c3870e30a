// Range requests (RFC 9110 section 14): the one form the task engine serves
// from its store, a single range of bytes. Everything else is the origin's
// to answer, so parse_range() refuses rather than guesses. Pure; any thread.

#include <cstdint>
#include <string_view>

#include "shoal/http/http.h"

namespace shoal::http {
namespace {

// 1..18 decimal digits (so the value fits an int64_t without a check).
bool parse_digits(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

bool parse_range(std::string_view value, ByteRange* out) {
  *out = ByteRange{};
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  if (value.size() < 6 || !iequals(value.substr(0, 6), "bytes=")) return false;
  std::string_view spec = value.substr(6);
  if (spec.find(',') != std::string_view::npos) return false;
  const size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return false;
  std::string_view a = spec.substr(0, dash), b = spec.substr(dash + 1);
  ByteRange r;
  if (a.empty()) {
    if (!parse_digits(b, &r.suffix)) return false;
  } else {
    if (!parse_digits(a, &r.first)) return false;
    if (!b.empty() && !parse_digits(b, &r.last)) return false;
    if (r.last >= 0 && r.last < r.first) return false;
  }
  *out = r;
  return true;
}

bool resolve_range(const ByteRange& r, uint64_t len, uint64_t* first, uint64_t* last) {
  if (len == 0) return false;
  if (r.suffix >= 0) {
    if (r.suffix == 0) return false;
    const uint64_t n = static_cast<uint64_t>(r.suffix);
    *first = n >= len ? 0 : len - n;
    *last = len - 1;
    return true;
  }
  if (r.first < 0 || static_cast<uint64_t>(r.first) >= len) return false;
  *first = static_cast<uint64_t>(r.first);
  *last = r.last < 0 || static_cast<uint64_t>(r.last) >= len ? len - 1 : static_cast<uint64_t>(r.last);
  return true;
}

}  // namespace shoal::http
