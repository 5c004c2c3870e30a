// Lower-case hexadecimal, as every Shoal wire format and log writes it.
// Header-only and allocation-free on the hot paths (request signing, piece
// bitmaps and hashes on the scheduler).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shoal::util {

inline constexpr char kHexDigits[] = "0123456789abcdef";

namespace detail {
struct HexTable {
  int8_t value[256];
};
constexpr HexTable make_hex_table() {
  HexTable t{};
  for (int i = 0; i < 256; i++) t.value[i] = -1;
  for (int i = 0; i < 10; i++) t.value['0' + i] = static_cast<int8_t>(i);
  for (int i = 0; i < 6; i++) t.value['a' + i] = static_cast<int8_t>(10 + i);
  return t;
}
inline constexpr HexTable kHexValue = make_hex_table();
}  // namespace detail

// Writes 2 * n characters to out (no terminator).
inline void hex_encode(const uint8_t* in, size_t n, char* out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = kHexDigits[in[i] >> 4];
    out[2 * i + 1] = kHexDigits[in[i] & 0xf];
  }
}

inline std::string hex(const uint8_t* in, size_t n) {
  std::string s(2 * n, '\0');
  hex_encode(in, n, s.data());
  return s;
}

// Reads exactly 2 * n characters of lower-case hex into n bytes. False on
// anything else (upper case included: the formats are canonical).
inline bool hex_decode(const char* in, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    const int hi = detail::kHexValue.value[static_cast<uint8_t>(in[2 * i])];
    const int lo = detail::kHexValue.value[static_cast<uint8_t>(in[2 * i + 1])];
    if ((hi | lo) < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

}  // namespace shoal::util
