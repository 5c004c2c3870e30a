// The P2P wire protocol: JSON encoding of the scheduler messages, piece
// bitmaps and rendezvous hashing (see shoal/p2p/protocol.h).
//
// Encoders write JSON by hand rather than through cJSON: cJSON prints a
// number with 15 significant digits whenever that reads back "close enough"
// (9007199254740991 becomes 9.00719925474099e+15, a different length), and
// building a tree only to print it costs an allocation per field, which the
// scheduler would pay on every answer. Decoders parse with cJSON and check every
// field; they see bytes from the network, so nothing here asserts or throws
// on input, and every failure is a message naming the field.
#include "shoal/p2p/protocol.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

#include "shoal/util/hex.h"

namespace shoal::p2p {

namespace {

constexpr size_t kMaxBody = 4u << 20;
// JSON numbers are doubles: integers above 2^53 - 1 are not exact, so none
// is accepted (none is needed: 2^53 bytes is 8 PiB).
constexpr uint64_t kMaxJsonInt = (uint64_t{1} << 53) - 1;
constexpr size_t kMaxPeerId = 128;

using util::hex_decode;
using util::hex_encode;
using util::kHexDigits;

struct PeerIdTable {
  bool ok[256];
};
constexpr PeerIdTable make_peer_id_table() {
  PeerIdTable t{};
  for (int c = 'a'; c <= 'z'; c++) t.ok[c] = true;
  for (int c = 'A'; c <= 'Z'; c++) t.ok[c] = true;
  for (int c = '0'; c <= '9'; c++) t.ok[c] = true;
  t.ok[static_cast<uint8_t>('.')] = t.ok[static_cast<uint8_t>('_')] = true;
  t.ok[static_cast<uint8_t>(':')] = t.ok[static_cast<uint8_t>('-')] = true;
  return t;
}
constexpr PeerIdTable kPeerIdChars = make_peer_id_table();

void sha256(std::string_view data, uint8_t out[32]) {
  unsigned int len = 0;
  // EVP_Digest cannot fail for SHA-256 short of memory exhaustion; a zero
  // hash then only makes a scheduler order less even, never wrong for
  // security.
  if (EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr) != 1) std::memset(out, 0, 32);
}

// ---- Encoding ----

void append_uint(std::string* s, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  s->append(buf, static_cast<size_t>(r.ptr - buf));
}

// JSON string with the escapes RFC 8259 requires; bytes >= 0x80 pass
// through as they are (labels and errors are expected to be UTF-8 already).
void append_string(std::string* s, std::string_view v) {
  s->push_back('"');
  size_t start = 0;
  for (size_t i = 0; i < v.size(); i++) {
    const auto c = static_cast<uint8_t>(v[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    s->append(v.data() + start, i - start);
    start = i + 1;
    switch (c) {
      case '"':
        s->append("\\\"");
        break;
      case '\\':
        s->append("\\\\");
        break;
      case '\n':
        s->append("\\n");
        break;
      case '\r':
        s->append("\\r");
        break;
      case '\t':
        s->append("\\t");
        break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHexDigits[c >> 4], kHexDigits[c & 0xf]};
        s->append(esc, sizeof esc);
      }
    }
  }
  s->append(v.data() + start, v.size() - start);
  s->push_back('"');
}

// One message object: starts with "v", then each key in call order. Keys
// are string literals of this file, so they need no escaping.
class Writer {
 public:
  explicit Writer(size_t reserve) {
    s_.reserve(reserve + 16);
    s_.append("{\"v\":");
    append_uint(&s_, kProtocolVersion);
  }
  Writer& key(const char* k) {
    s_.append(",\"");
    s_.append(k);
    s_.append("\":");
    return *this;
  }
  Writer& str(const char* k, std::string_view v) {
    key(k);
    append_string(&s_, v);
    return *this;
  }
  Writer& num(const char* k, uint64_t v) {
    key(k);
    append_uint(&s_, v);
    return *this;
  }
  Writer& boolean(const char* k, bool v) {
    key(k);
    s_.append(v ? "true" : "false");
    return *this;
  }
  Writer& bitmap(const char* k, const Bitmap& b) {
    key(k);
    s_.push_back('"');
    s_.append(b.to_hex());
    s_.push_back('"');
    return *this;
  }
  Writer& hashes(const char* k, const Hashes& h) {
    key(k);
    s_.push_back('{');
    bool first = true;
    for (const auto& [index, hash] : h) {
      if (!first) s_.push_back(',');
      first = false;
      s_.push_back('"');
      append_uint(&s_, index);
      s_.append("\":\"");
      char hex[64];
      hex_encode(hash.data(), hash.size(), hex);
      s_.append(hex, sizeof hex);
      s_.push_back('"');
    }
    s_.push_back('}');
    return *this;
  }
  std::string* raw() { return &s_; }
  std::string finish() {
    s_.push_back('}');
    return std::move(s_);
  }

 private:
  std::string s_;
};

// ---- Decoding ----

struct JsonDeleter {
  void operator()(cJSON* j) const { cJSON_Delete(j); }
};
using Json = std::unique_ptr<cJSON, JsonDeleter>;

bool fail(std::string* err, std::string_view field, std::string_view what) {
  if (err != nullptr) {
    err->assign(field);
    err->append(": ");
    err->append(what);
  }
  return false;
}

// Prefixes an error a nested decoder produced, e.g. "parents[2].addr: ...".
bool fail_in(std::string* err, std::string_view prefix) {
  if (err != nullptr) err->insert(0, prefix);
  return false;
}

// The body as a JSON object with an acceptable "v", or nullptr.
Json parse(const std::string& body, std::string* err) {
  if (body.size() > kMaxBody) {
    fail(err, "body", "over 4 MiB");
    return nullptr;
  }
  // cJSON reads C strings: a NUL would end the document early and hide
  // whatever follows it.
  if (std::memchr(body.data(), '\0', body.size()) != nullptr) {
    fail(err, "body", "NUL byte");
    return nullptr;
  }
  // Length + 1 takes in std::string's terminating NUL, which is how cJSON
  // is told to refuse trailing bytes after the document.
  Json root(cJSON_ParseWithLengthOpts(body.c_str(), body.size() + 1, nullptr, 1));
  if (root == nullptr) {
    fail(err, "body", "not JSON");
    return nullptr;
  }
  if (!cJSON_IsObject(root.get())) {
    fail(err, "body", "expected a JSON object");
    return nullptr;
  }
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(root.get(), "v");
  if (v == nullptr) {
    fail(err, "v", "missing");
    return nullptr;
  }
  const double d = cJSON_IsNumber(v) ? v->valuedouble : 0.0;
  if (!(d >= kMinProtocolVersion && d <= static_cast<double>(kMaxJsonInt) && d == std::floor(d))) {
    fail(err, "v", "expected an integer >= 1");
    return nullptr;
  }
  return root;
}

const cJSON* field(const cJSON* o, const char* name) { return cJSON_GetObjectItemCaseSensitive(o, name); }

bool int_value(const cJSON* j, uint64_t max, uint64_t* out) {
  if (!cJSON_IsNumber(j)) return false;
  const double d = j->valuedouble;
  // The negated comparison also refuses NaN.
  if (!(d >= 0.0 && d <= static_cast<double>(max)) || d != std::floor(d)) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

bool get_u64(const cJSON* o, const char* name, uint64_t* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  if (!int_value(j, kMaxJsonInt, out)) return fail(err, name, "expected an integer 0..2^53-1");
  return true;
}

bool get_u32(const cJSON* o, const char* name, uint32_t* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  uint64_t v = 0;
  if (!int_value(j, UINT32_MAX, &v)) return fail(err, name, "expected an integer 0..4294967295");
  *out = static_cast<uint32_t>(v);
  return true;
}

// A field senders of an older version leave out: *out stays as it was.
bool get_u32_opt(const cJSON* o, const char* name, uint32_t* out, std::string* err) {
  return field(o, name) == nullptr || get_u32(o, name, out, err);
}

bool get_bool(const cJSON* o, const char* name, bool* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  if (!cJSON_IsBool(j)) return fail(err, name, "expected true or false");
  *out = cJSON_IsTrue(j) != 0;
  return true;
}

bool get_string(const cJSON* o, const char* name, std::string* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  if (!cJSON_IsString(j) || j->valuestring == nullptr) return fail(err, name, "expected a string");
  out->assign(j->valuestring);
  return true;
}

bool get_peer(const cJSON* o, const char* name, std::string* out, std::string* err) {
  if (!get_string(o, name, out, err)) return false;
  if (!valid_peer_id(*out)) return fail(err, name, "expected 1..128 of [A-Za-z0-9._:-]");
  return true;
}

bool get_addr(const cJSON* o, const char* name, std::string* out, std::string* err) {
  if (!get_string(o, name, out, err)) return false;
  if (!valid_peer_addr(*out)) return fail(err, name, "expected ip:port or [v6]:port");
  return true;
}

bool get_task(const cJSON* o, const char* name, std::string* out, std::string* err) {
  if (!get_string(o, name, out, err)) return false;
  if (!task::valid_task_id(*out)) return fail(err, name, "expected 64 lower-case hex");
  return true;
}

// length and piece_size, and the piece count they imply (1..kMaxPieces).
bool get_geometry(const cJSON* o, uint64_t* length, uint32_t* piece_size, uint32_t* count, std::string* err) {
  if (!get_u64(o, "length", length, err)) return false;
  if (*length == 0) return fail(err, "length", "expected an integer 1..2^53-1");
  if (!get_u32(o, "piece_size", piece_size, err)) return false;
  if (*piece_size == 0) return fail(err, "piece_size", "expected an integer 1..4294967295");
  const uint64_t n = task::piece_count(*length, *piece_size);
  if (n == 0 || n > kMaxPieces) return fail(err, "piece_size", "too small: over 1048576 pieces");
  *count = static_cast<uint32_t>(n);
  return true;
}

bool get_bitmap(const cJSON* o, const char* name, uint32_t count, Bitmap* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  // Bitmap::from_hex takes a std::string; its length is checked first, so
  // an oversized string is refused before being copied.
  const size_t want = 2 * ((size_t{count} + 7) / 8);
  if (!cJSON_IsString(j) || j->valuestring == nullptr || std::strlen(j->valuestring) != want ||
      !Bitmap::from_hex(j->valuestring, count, out)) {
    return fail(err, name, "expected a bitmap: lower-case hex of the piece count, spare bits zero");
  }
  return true;
}

// A JSON object key naming a piece: decimal without sign or leading zeros,
// below count.
bool parse_index(const char* s, uint32_t count, uint32_t* out) {
  if (s == nullptr || s[0] == '\0' || (s[0] == '0' && s[1] != '\0')) return false;
  uint64_t v = 0;
  for (size_t i = 0; s[i] != '\0'; i++) {
    if (i >= 8 || s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + static_cast<uint64_t>(s[i] - '0');
  }
  if (v >= count) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

bool get_hashes(const cJSON* o, const char* name, uint32_t count, Hashes* out, std::string* err) {
  const cJSON* j = field(o, name);
  if (j == nullptr) return fail(err, name, "missing");
  if (!cJSON_IsObject(j)) return fail(err, name, "expected an object of piece index -> 64 hex");
  Hashes h;
  for (const cJSON* c = j->child; c != nullptr; c = c->next) {
    uint32_t index = 0;
    if (!parse_index(c->string, count, &index)) return fail(err, name, "piece index out of range");
    task::Sha256 sum;
    if (!cJSON_IsString(c) || c->valuestring == nullptr || std::strlen(c->valuestring) != 64 ||
        !hex_decode(c->valuestring, sum.size(), sum.data())) {
      return fail(err, name, "expected 64 lower-case hex per piece");
    }
    // Encoders write ascending indices, so the hint makes each insert O(1).
    const size_t before = h.size();
    h.emplace_hint(h.end(), index, sum);
    if (h.size() == before) return fail(err, name, "duplicate piece index");
  }
  *out = std::move(h);
  return true;
}

bool get_labels(const cJSON* o, Labels* out, std::string* err) {
  const cJSON* j = field(o, "labels");
  if (j == nullptr) return fail(err, "labels", "missing");
  if (!cJSON_IsObject(j)) return fail(err, "labels", "expected an object of strings");
  Labels l;
  for (const cJSON* c = j->child; c != nullptr; c = c->next) {
    if (c->string == nullptr || !cJSON_IsString(c) || c->valuestring == nullptr) {
      return fail(err, "labels", "expected an object of strings");
    }
    if (!l.emplace(c->string, c->valuestring).second) return fail(err, "labels", "duplicate key");
  }
  *out = std::move(l);
  return true;
}

bool parse_outcome(std::string_view s, ResultReq::Outcome* out) {
  using O = ResultReq::Outcome;
  for (O o : {O::Ok, O::BadPiece, O::Stall, O::Error, O::OriginFailed}) {
    if (s == to_string(o)) {
      *out = o;
      return true;
    }
  }
  return false;
}

bool valid_port(std::string_view p) {
  if (p.empty() || p.size() > 5 || p[0] == '0') return false;
  uint32_t v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  return v >= 1 && v <= 65535;
}

}  // namespace

// ---- Bitmap ----

uint32_t Bitmap::count() const {
  uint32_t n = 0;
  size_t i = 0;
  for (; i + 8 <= bytes_.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes_.data() + i, 8);
    n += static_cast<uint32_t>(__builtin_popcountll(w));
  }
  for (; i < bytes_.size(); i++) n += static_cast<uint32_t>(__builtin_popcount(bytes_[i]));
  return n;
}

std::string Bitmap::to_hex() const {
  std::string s(2 * bytes_.size(), '\0');
  hex_encode(bytes_.data(), bytes_.size(), s.data());
  return s;
}

bool Bitmap::from_hex(const std::string& hex, uint32_t size, Bitmap* out) {
  const size_t n = (size_t{size} + 7) / 8;
  if (hex.size() != 2 * n) return false;
  Bitmap b(size);
  if (!hex_decode(hex.data(), n, b.bytes_.data())) return false;
  // Spare bits must be zero, or two encodings would mean one bitmap and
  // count() would see pieces that do not exist.
  if (size % 8 != 0 && (b.bytes_[n - 1] & (0xffu >> (size % 8))) != 0) return false;
  *out = std::move(b);
  return true;
}

// ---- Identities ----

bool valid_peer_id(const std::string& id) {
  if (id.empty() || id.size() > kMaxPeerId) return false;
  for (char c : id) {
    if (!kPeerIdChars.ok[static_cast<uint8_t>(c)]) return false;
  }
  return true;
}

bool valid_peer_addr(const std::string& addr) {
  // "[" + 45 (the longest IPv6 text) + "]:" + 5.
  if (addr.size() > 53) return false;
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || !valid_port(std::string_view(addr).substr(colon + 1))) return false;
  std::string_view host(addr.data(), colon);
  // inet_pton reads a C string: an embedded NUL would hide a suffix.
  if (host.find('\0') != std::string_view::npos) return false;
  char buf[64];
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return false;
    host = host.substr(1, host.size() - 2);
    std::memcpy(buf, host.data(), host.size());
    buf[host.size()] = '\0';
    in6_addr a6;
    return inet_pton(AF_INET6, buf, &a6) == 1;
  }
  std::memcpy(buf, host.data(), host.size());
  buf[host.size()] = '\0';
  in_addr a4;
  return inet_pton(AF_INET, buf, &a4) == 1;
}

// ---- Scheduler choice ----

std::vector<size_t> scheduler_order(const std::string& task_id, const std::vector<std::string>& schedulers) {
  struct Weight {
    uint8_t hash[32];
    size_t index;
  };
  std::vector<Weight> w(schedulers.size());
  std::string buf;
  for (size_t i = 0; i < schedulers.size(); i++) {
    buf.assign(schedulers[i]);
    buf.push_back('\n');
    buf.append(task_id);
    sha256(buf, w[i].hash);
    w[i].index = i;
  }
  // Highest hash first; a tie (only a duplicate name) falls back to list
  // order so that every peer still agrees.
  std::sort(w.begin(), w.end(), [](const Weight& a, const Weight& b) {
    const int c = std::memcmp(a.hash, b.hash, sizeof a.hash);
    return c != 0 ? c > 0 : a.index < b.index;
  });
  std::vector<size_t> order(w.size());
  for (size_t i = 0; i < w.size(); i++) order[i] = w[i].index;
  return order;
}

const char* to_string(ResultReq::Outcome o) {
  switch (o) {
    case ResultReq::Outcome::Ok:
      return "ok";
    case ResultReq::Outcome::BadPiece:
      return "bad-piece";
    case ResultReq::Outcome::Stall:
      return "stall";
    case ResultReq::Outcome::Error:
      return "error";
    case ResultReq::Outcome::OriginFailed:
      return "origin-failed";
  }
  return "unknown";
}

// ---- Encoders ----

std::string encode(const RegisterReq& m) {
  Writer w(64 + m.peer.size() + m.addr.size() + 32 * m.labels.size());
  w.str("peer", m.peer).str("addr", m.addr).key("labels");
  std::string* s = w.raw();
  s->push_back('{');
  bool first = true;
  for (const auto& [k, v] : m.labels) {
    if (!first) s->push_back(',');
    first = false;
    append_string(s, k);
    s->push_back(':');
    append_string(s, v);
  }
  s->push_back('}');
  return w.num("slots", m.slots).finish();
}

std::string encode(const RegisterResp& m) { return Writer(24).num("heartbeat_ms", m.heartbeat_ms).finish(); }

std::string encode(const HeartbeatReq& m) {
  return Writer(32 + m.peer.size()).str("peer", m.peer).num("free_slots", m.free_slots).finish();
}

std::string encode(const AnnounceReq& m) {
  Writer w(160 + m.peer.size() + 2 * ((size_t{m.have.size()} + 7) / 8) + 76 * m.hashes.size());
  w.str("peer", m.peer).str("task", m.task).num("length", m.length).num("piece_size", m.piece_size);
  return w.bitmap("have", m.have).hashes("hashes", m.hashes).boolean("complete", m.complete).finish();
}

std::string encode(const ParentsReq& m) {
  Writer w(200 + m.peer.size() + 4 * ((size_t{m.have.size()} + 7) / 8));
  w.str("peer", m.peer).str("task", m.task).num("length", m.length).num("piece_size", m.piece_size);
  w.bitmap("have", m.have).bitmap("hashes_known", m.hashes_known).boolean("source", m.source);
  return w.num("max_parents", m.max_parents).finish();
}

std::string encode(const ParentsResp& m) {
  size_t reserve = 64 + 76 * m.hashes.size() + 8 * m.origin.size();
  for (const Parent& p : m.parents) reserve += 40 + p.peer.size() + p.addr.size() + (p.pieces.size() + 7) / 4;
  Writer w(reserve);
  w.hashes("hashes", m.hashes).key("parents");
  std::string* s = w.raw();
  s->push_back('[');
  for (size_t i = 0; i < m.parents.size(); i++) {
    const Parent& p = m.parents[i];
    if (i != 0) s->push_back(',');
    s->append("{\"peer\":");
    append_string(s, p.peer);
    s->append(",\"addr\":");
    append_string(s, p.addr);
    s->append(",\"pieces\":\"");
    s->append(p.pieces.to_hex());
    s->append("\"}");
  }
  s->append("]");
  w.key("origin");
  s->push_back('[');
  for (size_t i = 0; i < m.origin.size(); i++) {
    if (i != 0) s->push_back(',');
    append_uint(s, m.origin[i]);
  }
  s->push_back(']');
  return w.num("retry_ms", m.retry_ms).finish();
}

std::string encode(const ResultReq& m) {
  Writer w(200 + m.peer.size() + m.parent.size());
  w.str("peer", m.peer).str("task", m.task).str("parent", m.parent).num("piece", m.piece);
  if (m.piece_size != 0) w.num("piece_size", m.piece_size);
  return w.str("outcome", to_string(m.outcome)).num("bytes", m.bytes).num("ms", m.ms).finish();
}

std::string encode(const LeaveReq& m) { return Writer(16 + m.peer.size()).str("peer", m.peer).finish(); }

std::string encode(const ErrorResp& m) { return Writer(16 + m.error.size()).str("error", m.error).finish(); }

std::string encode_ack() { return Writer(0).finish(); }

// ---- Decoders ----
// Each fills a local copy and moves it into *out only when every field
// passed, so a refused message leaves *out as it was.

bool decode(const std::string& body, RegisterReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  const cJSON* o = root.get();
  RegisterReq m;
  if (!get_peer(o, "peer", &m.peer, err) || !get_addr(o, "addr", &m.addr, err) ||
      !get_labels(o, &m.labels, err) || !get_u32(o, "slots", &m.slots, err)) {
    return false;
  }
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, RegisterResp* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  RegisterResp m;
  if (!get_u32(root.get(), "heartbeat_ms", &m.heartbeat_ms, err)) return false;
  // A zero interval would have the peer heartbeat in a busy loop.
  if (m.heartbeat_ms == 0) return fail(err, "heartbeat_ms", "expected an integer 1..4294967295");
  *out = m;
  return true;
}

bool decode(const std::string& body, HeartbeatReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  HeartbeatReq m;
  if (!get_peer(root.get(), "peer", &m.peer, err) || !get_u32(root.get(), "free_slots", &m.free_slots, err)) {
    return false;
  }
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, AnnounceReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  const cJSON* o = root.get();
  AnnounceReq m;
  uint32_t count = 0;
  if (!get_peer(o, "peer", &m.peer, err) || !get_task(o, "task", &m.task, err) ||
      !get_geometry(o, &m.length, &m.piece_size, &count, err) ||
      !get_bitmap(o, "have", count, &m.have, err) || !get_hashes(o, "hashes", count, &m.hashes, err) ||
      !get_bool(o, "complete", &m.complete, err)) {
    return false;
  }
  // A complete sender becomes a seed for every piece: it must hold them all
  // and vouch for every hash, or others would wait on pieces nobody has.
  if (m.complete && (!m.have.all() || m.hashes.size() != count)) {
    return fail(err, "complete", "true without every piece in have and hashes");
  }
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, ParentsReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  const cJSON* o = root.get();
  ParentsReq m;
  uint32_t count = 0;
  if (!get_peer(o, "peer", &m.peer, err) || !get_task(o, "task", &m.task, err) ||
      !get_geometry(o, &m.length, &m.piece_size, &count, err) ||
      !get_bitmap(o, "have", count, &m.have, err) ||
      !get_bitmap(o, "hashes_known", count, &m.hashes_known, err) || !get_bool(o, "source", &m.source, err) ||
      !get_u32(o, "max_parents", &m.max_parents, err)) {
    return false;
  }
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, uint32_t pieces, ParentsResp* out, std::string* err) {
  if (pieces == 0 || pieces > kMaxPieces) return fail(err, "pieces", "expected 1..1048576");
  Json root = parse(body, err);
  if (root == nullptr) return false;
  const cJSON* o = root.get();
  ParentsResp m;
  if (!get_hashes(o, "hashes", pieces, &m.hashes, err)) return false;

  const cJSON* parents = field(o, "parents");
  if (parents == nullptr) return fail(err, "parents", "missing");
  if (!cJSON_IsArray(parents)) return fail(err, "parents", "expected an array");
  size_t i = 0;
  for (const cJSON* p = parents->child; p != nullptr; p = p->next, i++) {
    const auto prefix = [i] { return "parents[" + std::to_string(i) + "]"; };
    if (!cJSON_IsObject(p)) return fail(err, prefix(), "expected an object");
    Parent parent;
    if (!get_peer(p, "peer", &parent.peer, err) || !get_addr(p, "addr", &parent.addr, err) ||
        !get_bitmap(p, "pieces", pieces, &parent.pieces, err)) {
      return fail_in(err, prefix() + ".");
    }
    m.parents.push_back(std::move(parent));
  }

  const cJSON* origin = field(o, "origin");
  if (origin == nullptr) return fail(err, "origin", "missing");
  if (!cJSON_IsArray(origin)) return fail(err, "origin", "expected an array of piece indices");
  for (const cJSON* e = origin->child; e != nullptr; e = e->next) {
    uint64_t index = 0;
    if (!int_value(e, pieces - 1, &index)) return fail(err, "origin", "piece index out of range");
    m.origin.push_back(static_cast<uint32_t>(index));
  }

  if (!get_u32(o, "retry_ms", &m.retry_ms, err)) return false;
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, ResultReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  const cJSON* o = root.get();
  ResultReq m;
  std::string outcome;
  if (!get_peer(o, "peer", &m.peer, err) || !get_task(o, "task", &m.task, err) ||
      !get_string(o, "parent", &m.parent, err) || !get_u32(o, "piece", &m.piece, err) ||
      !get_string(o, "outcome", &outcome, err) || !get_u64(o, "bytes", &m.bytes, err) ||
      !get_u32(o, "ms", &m.ms, err) || !get_u32_opt(o, "piece_size", &m.piece_size, err)) {
    return false;
  }
  if (m.piece >= kMaxPieces) return fail(err, "piece", "expected an integer below 1048576");
  if (!parse_outcome(outcome, &m.outcome)) {
    return fail(err, "outcome", "expected ok, bad-piece, stall, error or origin-failed");
  }
  // Only an origin failure may come without a parent: every other outcome
  // is about a transfer from one.
  const bool no_parent_ok = m.outcome == ResultReq::Outcome::OriginFailed && m.parent.empty();
  if (!no_parent_ok && !valid_peer_id(m.parent))
    return fail(err, "parent", "expected 1..128 of [A-Za-z0-9._:-]");
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, LeaveReq* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  LeaveReq m;
  if (!get_peer(root.get(), "peer", &m.peer, err)) return false;
  *out = std::move(m);
  return true;
}

bool decode(const std::string& body, ErrorResp* out, std::string* err) {
  Json root = parse(body, err);
  if (root == nullptr) return false;
  ErrorResp m;
  if (!get_string(root.get(), "error", &m.error, err)) return false;
  *out = std::move(m);
  return true;
}

bool decode_ack(const std::string& body, std::string* err) { return parse(body, err) != nullptr; }

}  // namespace shoal::p2p
