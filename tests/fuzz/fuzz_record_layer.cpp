// libFuzzer target for the fast path's TLS record parser (RecordLayer::open).
// The first input byte picks a mode:
//   even: the rest is wire bytes from a hostile peer, opened record by
//         record (alternately into a small buffer and in place) until the
//         layer wants more or refuses; nothing may crash or read out of
//         bounds, and a refusal must name an alert.
//   odd:  the rest is plaintext; a peer layer seals it (content type and
//         split from the input), one byte of the wire may be flipped, and the
//         result must either open to exactly the plaintext or be refused
//         (a flipped byte can never open to different data).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "shoal/tls/record_layer.h"

using shoal::tls::ContentType;
using shoal::tls::RecordKeys;
using shoal::tls::RecordLayer;

namespace {

RecordKeys keys(bool peer) {
  RecordKeys k;
  k.key_len = 16;
  for (int i = 0; i < 32; i++) {
    k.write_key[i] = static_cast<uint8_t>(peer ? i : 0x40 + i);
    k.read_key[i] = static_cast<uint8_t>(peer ? 0x40 + i : i);
  }
  std::memcpy(peer ? k.write_iv : k.read_iv, "abcd", 4);
  std::memcpy(peer ? k.read_iv : k.write_iv, "wxyz", 4);
  return k;
}

void check(bool ok) {
  if (!ok) std::abort();
}

void open_all(RecordLayer* layer, std::vector<uint8_t>& wire, std::vector<uint8_t>* plain) {
  std::vector<uint8_t> dst(RecordLayer::kMaxPlain);
  size_t off = 0;
  for (int i = 0;; i++) {
    RecordLayer::Record rec;
    size_t cap = (i % 2) != 0 ? dst.size() : 7;
    RecordLayer::Result r = layer->open(wire.data() + off, wire.size() - off, dst.data(), cap, &rec);
    if (r == RecordLayer::Result::NeedMore) return;
    if (r == RecordLayer::Result::Error) {
      check(!layer->error().empty());
      return;
    }
    check(rec.consumed >= RecordLayer::kOverhead && rec.consumed <= wire.size() - off);
    check(rec.len <= RecordLayer::kMaxPlain);
    if (plain != nullptr) plain->insert(plain->end(), rec.plain, rec.plain + rec.len);
    off += rec.consumed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string err;
  auto ours = RecordLayer::create(keys(false), &err);
  check(ours != nullptr);
  const uint8_t mode = data[0];
  data++;
  size--;
  if ((mode & 1) == 0) {
    std::vector<uint8_t> wire(data, data + size);
    open_all(ours.get(), wire, nullptr);
    return 0;
  }
  auto peer = RecordLayer::create(keys(true), &err);
  check(peer != nullptr);
  if (size < 3) return 0;
  const uint8_t type = static_cast<uint8_t>(20 + data[0] % 4);
  const size_t flip_at = static_cast<size_t>(data[1]) << 8 | data[2];
  const bool flip = (mode & 2) != 0;
  std::vector<uint8_t> msg(data + 3, data + size);
  // Two seal calls split where the mode says, so records of odd sizes occur.
  size_t cut = msg.empty() ? 0 : (mode >> 2) % (msg.size() + 1);
  std::vector<uint8_t> wire;
  check(peer->seal(static_cast<ContentType>(type), msg.data(), cut, &wire));
  check(peer->seal(static_cast<ContentType>(type), msg.data() + cut, msg.size() - cut, &wire));
  if (flip && !wire.empty()) wire[flip_at % wire.size()] ^= 0x01;
  std::vector<uint8_t> got;
  open_all(ours.get(), wire, &got);
  if (!flip) check(got == msg);
  // Whatever opened is a prefix of what was sealed: flips never forge data.
  check(got.size() <= msg.size() && std::equal(got.begin(), got.end(), msg.begin()));
  return 0;
}
