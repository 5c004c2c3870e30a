// libFuzzer target for the P2P message decoders (protocol.h). The first
// input byte picks a decoder; the rest is a message body from a hostile peer
// or scheduler. For ParentsResp the next two bytes give the piece count the
// request implied (1..65536). Nothing may crash, leak or read out of bounds;
// a refusal must say why; and whatever decodes must survive a round trip:
// encode, decode again, encode again gives the same bytes, so the encoder
// never writes what its own decoder refuses or reads differently.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "shoal/p2p/protocol.h"

using namespace shoal::p2p;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

template <class M>
void round_trip(const std::string& body) {
  M m;
  std::string err;
  if (!decode(body, &m, &err)) {
    check(!err.empty());
    return;
  }
  const std::string once = encode(m);
  M again;
  check(decode(once, &again, &err));
  check(encode(again) == once);
}

void parents_resp(const std::string& body, uint32_t pieces) {
  ParentsResp m;
  std::string err;
  if (!decode(body, pieces, &m, &err)) {
    check(!err.empty());
    return;
  }
  for (const Parent& p : m.parents) check(p.pieces.size() == pieces && p.pieces.count() <= pieces);
  for (uint32_t i : m.origin) check(i < pieces);
  for (const auto& h : m.hashes) check(h.first < pieces);
  const std::string once = encode(m);
  ParentsResp again;
  check(decode(once, pieces, &again, &err));
  check(encode(again) == once);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string err;
  switch (mode % 12) {
    case 0:
      round_trip<RegisterReq>(body);
      break;
    case 1:
      round_trip<RegisterResp>(body);
      break;
    case 2:
      round_trip<HeartbeatReq>(body);
      break;
    case 3:
      round_trip<AnnounceReq>(body);
      break;
    case 4:
      round_trip<ParentsReq>(body);
      break;
    case 5:
      if (body.size() < 2) return 0;
      parents_resp(body.substr(2), 1 + (static_cast<uint32_t>(static_cast<uint8_t>(body[0])) << 8 |
                                        static_cast<uint8_t>(body[1])));
      break;
    case 6:
      round_trip<ResultReq>(body);
      break;
    case 7:
      round_trip<LeaveReq>(body);
      break;
    case 8:
      round_trip<ErrorResp>(body);
      break;
    case 9:
      if (!decode_ack(body, &err)) check(!err.empty());
      break;
    case 10: {
      // Addresses and ids go straight into connect() and logs.
      if (valid_peer_addr(body)) check(body.size() <= 53 && body.find('\0') == std::string::npos);
      if (valid_peer_id(body)) check(!body.empty() && body.size() <= 128);
      break;
    }
    default: {
      // A bitmap of the size the low bits say: from_hex and to_hex agree.
      const uint32_t bits = mode >> 4;
      Bitmap b;
      if (Bitmap::from_hex(body, bits * 4, &b)) {
        check(b.to_hex() == body && b.count() <= b.size());
      }
      break;
    }
  }
  return 0;
}
