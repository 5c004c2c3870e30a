// The P2P wire protocol between peers and schedulers: message types and
// their JSON encoding (cJSON), piece bitmaps, and the rendezvous hash that
// picks a task's scheduler. Pure: no I/O, no clock; every decoder is fuzzed.
//
// Transport: HTTP/1.1 over TCP. Every request is signed (shoal/p2p/auth.h);
// scheduler answers are signed too. Every JSON body carries "v" (the sender's
// protocol version); a receiver accepts any v >= kMinProtocolVersion and
// ignores fields it does not know, so a cluster upgrades one node at a time.
//
// Scheduler endpoints (POST, JSON in, JSON out):
//   /v1/register   RegisterReq  -> RegisterResp
//   /v1/heartbeat  HeartbeatReq -> Ack            (404 + ErrorResp: unknown peer, register again)
//   /v1/announce   AnnounceReq  -> Ack
//   /v1/parents    ParentsReq   -> ParentsResp
//   /v1/result     ResultReq    -> Ack
//   /v1/leave      LeaveReq     -> Ack
// Peer upload server:
//   GET /v1/tasks/<task id>/pieces/<index>  -> 200, the piece's bytes
//       (403 for a bad signature and for a piece this peer does not hold,
//       alike; 503 + Retry-After when every upload slot is busy)
// Credentials never travel: no message has a URL, a header or a token of
// the registry's; a task is known by its id only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "shoal/task/store.h"  // task::Sha256

namespace shoal::p2p {

constexpr int kProtocolVersion = 1;
constexpr int kMinProtocolVersion = 1;

// Pieces held, one bit each: piece i is byte i / 8, mask 0x80 >> (i % 8)
// (BitTorrent's order). On the wire: lower-case hex, exactly
// ceil(size / 8) bytes, spare bits zero.
class Bitmap {
 public:
  Bitmap() = default;
  explicit Bitmap(uint32_t size) : size_(size), bytes_((size_t{size} + 7) / 8, 0) {}
  uint32_t size() const { return size_; }
  bool test(uint32_t i) const { return i < size_ && (bytes_[i / 8] & (0x80u >> (i % 8))) != 0; }
  void set(uint32_t i) {
    if (i < size_) bytes_[i / 8] = static_cast<uint8_t>(bytes_[i / 8] | (0x80u >> (i % 8)));
  }
  void clear(uint32_t i) {
    if (i < size_) bytes_[i / 8] = static_cast<uint8_t>(bytes_[i / 8] & ~(0x80u >> (i % 8)));
  }
  uint32_t count() const;
  bool all() const { return count() == size_; }
  std::string to_hex() const;
  // False (and *out untouched) unless hex is exactly 2 * ceil(size / 8)
  // lower-case hex digits with the spare bits zero.
  static bool from_hex(const std::string& hex, uint32_t size, Bitmap* out);
  bool operator==(const Bitmap& o) const { return size_ == o.size_ && bytes_ == o.bytes_; }

 private:
  uint32_t size_ = 0;
  std::vector<uint8_t> bytes_;
};

using Hashes = std::map<uint32_t, task::Sha256>;  // piece index -> SHA-256; JSON {"3": "<64 hex>"}
using Labels = std::map<std::string, std::string>;

struct RegisterReq {
  std::string peer;    // peer id: 1..128 of [A-Za-z0-9._:-]
  std::string addr;    // upload address to advertise, "ip:port" or "[v6]:port"
  Labels labels;       // e.g. {"rack": "r12"}
  uint32_t slots = 0;  // upload slots
};
struct RegisterResp {
  uint32_t heartbeat_ms = 0;  // send a heartbeat this often; forgotten after 3 missed
};
struct HeartbeatReq {
  std::string peer;
  uint32_t free_slots = 0;
};
// The sender's whole state for one task (not a delta), so a scheduler that
// takes a task over from another learns everything from one message.
struct AnnounceReq {
  std::string peer, task;  // task: 64 lower-case hex
  uint64_t length = 0;
  uint32_t piece_size = 0;  // pieces = ceil(length / piece_size), at most kMaxPieces
  Bitmap have;              // verified pieces the sender serves
  // SHA-256 of pieces the sender fetched from the origin (or of every
  // piece, when complete): the hashes every other peer verifies against.
  Hashes hashes;
  // The sender verified the whole object against its digest; decoders
  // refuse it unless have is full and hashes holds every piece.
  bool complete = false;
};
struct ParentsReq {
  std::string peer, task;
  uint64_t length = 0;
  uint32_t piece_size = 0;
  Bitmap have;          // pieces the sender holds
  Bitmap hashes_known;  // piece hashes the sender already has (the answer omits them)
  bool source = false;  // the sender may fetch from the origin (it downloads for a client of its own)
  uint32_t max_parents = 8;
};
struct Parent {
  std::string peer, addr;
  Bitmap pieces;  // what it holds (only pieces whose hash the scheduler knows)
};
struct ParentsResp {
  Hashes hashes;                // known hashes the sender lacks
  std::vector<Parent> parents;  // best first
  // Pieces the sender is to fetch from the origin now: nobody holds them
  // and nobody else is fetching them.
  std::vector<uint32_t> origin;
  uint32_t retry_ms = 0;  // ask again after this long (nothing offered, or an origin piece soon)
};
struct ResultReq {
  enum class Outcome { Ok, BadPiece, Stall, Error, OriginFailed };
  std::string peer, task, parent;  // parent empty for OriginFailed
  // Names the swarm with the task id (0: not sent; peers before the piece
  // size went down to 2 MiB sent none).
  uint32_t piece_size = 0;
  uint32_t piece = 0;
  Outcome outcome = Outcome::Ok;
  uint64_t bytes = 0;
  uint32_t ms = 0;
};
struct LeaveReq {
  std::string peer;
};
struct ErrorResp {
  std::string error;
};

constexpr uint32_t kMaxPieces = 1u << 20;
const char* to_string(ResultReq::Outcome o);  // "ok", "bad-piece", "stall", "error", "origin-failed"

// Encoders: compact JSON with "v": kProtocolVersion.
std::string encode(const RegisterReq& m);
std::string encode(const RegisterResp& m);
std::string encode(const HeartbeatReq& m);
std::string encode(const AnnounceReq& m);
std::string encode(const ParentsReq& m);
std::string encode(const ParentsResp& m);
std::string encode(const ResultReq& m);
std::string encode(const LeaveReq& m);
std::string encode(const ErrorResp& m);
std::string encode_ack();  // {"v":1}

// Decoders: false with *err saying which field is missing or wrong ("peer:
// expected 1..128 of [A-Za-z0-9._:-]"), for bodies over 4 MiB, for v below
// kMinProtocolVersion or missing, for an invalid task id, a piece count of 0
// or over kMaxPieces, a bitmap or hash of the wrong size, a piece index out of
// range. Unknown fields are ignored. ParentsResp needs the piece count the
// request implied to check bitmaps and indices. err may be nullptr. On
// failure *out is left as it was.
bool decode(const std::string& body, RegisterReq* out, std::string* err);
bool decode(const std::string& body, RegisterResp* out, std::string* err);
bool decode(const std::string& body, HeartbeatReq* out, std::string* err);
bool decode(const std::string& body, AnnounceReq* out, std::string* err);
bool decode(const std::string& body, ParentsReq* out, std::string* err);
bool decode(const std::string& body, uint32_t pieces, ParentsResp* out, std::string* err);
bool decode(const std::string& body, ResultReq* out, std::string* err);
bool decode(const std::string& body, LeaveReq* out, std::string* err);
bool decode(const std::string& body, ErrorResp* out, std::string* err);
bool decode_ack(const std::string& body, std::string* err);

bool valid_peer_id(const std::string& id);
// "ip:port" / "[v6]:port" with an IP literal and port 1..65535.
bool valid_peer_addr(const std::string& addr);

// Rendezvous (highest-random-weight) hashing: the schedulers in the order a
// peer tries them for this task. Every peer computes the same order from
// the same list; when the first is down the next takes over, and only the
// tasks of the scheduler that went away move.
std::vector<size_t> scheduler_order(const std::string& task_id, const std::vector<std::string>& schedulers);

}  // namespace shoal::p2p
