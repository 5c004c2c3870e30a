// libFuzzer target for the ClientHello/SNI peek (shoal/tls/client_hello.h),
// which reads the first bytes of every hijacked or transparent connection
// before any TLS library sees them. The input is the connection's first
// bytes. Checked: nothing crashes or reads out of bounds; what Ok returns
// keeps the header's promises (SNI lower-case, DNS characters, no final
// dot, ALPN names non-empty); the answer is stable as bytes arrive: every
// prefix of an input that parses answers NeedMore, a verdict other than
// NeedMore never changes when more bytes follow, and NeedMore is never the
// answer once kMaxClientHelloBytes are in (the caller would wait forever).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "shoal/tls/client_hello.h"

using shoal::tls::ClientHelloInfo;
using shoal::tls::PeekStatus;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool same(const ClientHelloInfo& a, const ClientHelloInfo& b) {
  return a.sni == b.sni && a.alpn == b.alpn && a.legacy_version == b.legacy_version &&
         a.offers_tls12 == b.offers_tls12;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly size bytes, so ASan sees any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  ClientHelloInfo info;
  const PeekStatus st = peek_client_hello(buf.data(), buf.size(), &info);
  check(to_string(st) != nullptr);
  if (size >= shoal::tls::kMaxClientHelloBytes) check(st != PeekStatus::NeedMore);
  if (st == PeekStatus::Ok) {
    check(info.sni.size() <= 255);
    if (!info.sni.empty()) check(info.sni.back() != '.');
    for (char c : info.sni)
      check((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_');
    for (const std::string& a : info.alpn) check(!a.empty() && a.size() <= 255);
    check((info.legacy_version >> 8) == 3);
  }
  // Stability: a few prefixes (each a fresh heap copy) and one extension.
  for (size_t cut : {size / 2, size > 0 ? size - 1 : 0, size > 5 ? size_t{5} : size}) {
    if (cut >= size) continue;
    std::vector<uint8_t> pre(data, data + cut);
    ClientHelloInfo pi;
    const PeekStatus ps = peek_client_hello(pre.data(), pre.size(), &pi);
    if (ps != PeekStatus::NeedMore) check(ps == st && (ps != PeekStatus::Ok || same(pi, info)));
    if (st == PeekStatus::NeedMore) check(ps == PeekStatus::NeedMore);
  }
  if (st != PeekStatus::NeedMore) {
    std::vector<uint8_t> more(buf);
    more.insert(more.end(), {0x16, 0x03, 0x01, 0x00, 0x01, 0x00});
    ClientHelloInfo mi;
    const PeekStatus ms = peek_client_hello(more.data(), more.size(), &mi);
    check(ms == st && (ms != PeekStatus::Ok || same(mi, info)));
  }
  return 0;
}
