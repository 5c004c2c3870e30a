// Peeks at a TLS ClientHello without consuming it: Shoal must know the SNI
// before the handshake starts, because mbedTLS 2.28 runs the SNI callback
// synchronously and a missing leaf certificate is minted off the event loop.
// Pure, no allocation beyond the output strings; safe on hostile bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shoal::tls {

enum class PeekStatus {
  NeedMore,   // a valid prefix: read more bytes (up to kMaxClientHelloBytes)
  Ok,         // a complete ClientHello was parsed
  NotTls,     // the first byte(s) are not a TLS handshake record
  Malformed,  // looks like TLS but the ClientHello is broken or too large
};
const char* to_string(PeekStatus s);

constexpr size_t kMaxClientHelloBytes = 16 * 1024 + 5;

struct ClientHelloInfo {
  std::string sni;                // lower-cased host_name without a final dot; empty when absent
  std::vector<std::string> alpn;  // protocols offered, in order
  uint16_t legacy_version = 0;    // e.g. 0x0303
  // supported_versions lists 0x0303 when the extension is present (it is
  // authoritative: a TLS 1.3-only client also sends legacy_version 0x0303),
  // else legacy_version >= 0x0303.
  bool offers_tls12 = false;
};

// Parses the first record(s) of a connection (the ClientHello may span
// several handshake records). Only looks at data[0..len); bytes after the
// ClientHello are ignored. Resets *out first; it is meaningful on Ok only.
// NotTls as soon as byte 0 is not 22 or the record version is not 3.0-3.4
// (e.g. plain HTTP, SSLv2); Malformed for bad lengths, a record over 2^14,
// a non-ClientHello first message, duplicate extensions, an SNI host_name
// with characters outside [A-Za-z0-9._-] or an empty label (one final dot
// is allowed and dropped), or a ClientHello that would not
// be complete within kMaxClientHelloBytes. Pure; any thread.
PeekStatus peek_client_hello(const uint8_t* data, size_t len, ClientHelloInfo* out);

}  // namespace shoal::tls
