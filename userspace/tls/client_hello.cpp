// ClientHello peek: finds the SNI, ALPN list and TLS 1.2 support in the
// first handshake record(s) of a connection without consuming them.
//
// Layout parsed (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, RFC 6066 §3, RFC 7301):
//
//   record:      type(1)=22 version(2) length(2) fragment
//   handshake:   msg_type(1)=1 length(3) body          (may span records)
//   body:        legacy_version(2) random(32) session_id<0..32>
//                cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
//                [extensions<0..2^16-1>]
//
// Every read goes through Reader, which never moves past its end, so
// hostile input can only produce NeedMore, NotTls or Malformed.
#include "shoal/tls/client_hello.h"

#include <cstring>

namespace shoal::tls {

namespace {

constexpr uint8_t kContentHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr size_t kRecordHeader = 5;
constexpr size_t kHandshakeHeader = 4;
// RFC 8446 §5.1: a plaintext record fragment is at most 2^14 bytes.
constexpr size_t kMaxRecordPayload = 16384;
// A ClientHello larger than one maximal record is not something any real
// client sends; refusing it keeps the reassembly buffer on the stack.
constexpr size_t kMaxHelloMessage = kMaxRecordPayload;

constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint8_t kNameTypeHostName = 0;
constexpr size_t kMaxHostName = 255;

// Bounds-checked big-endian cursor over [p, end).
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  bool u8(uint8_t* v) {
    if (left() < 1) return false;
    *v = *p_++;
    return true;
  }
  bool u16(uint16_t* v) {
    if (left() < 2) return false;
    *v = static_cast<uint16_t>((p_[0] << 8) | p_[1]);
    p_ += 2;
    return true;
  }
  bool skip(size_t n) {
    if (left() < n) return false;
    p_ += n;
    return true;
  }
  // Splits off the next n bytes as their own Reader.
  bool sub(size_t n, Reader* out) {
    if (left() < n) return false;
    *out = Reader(p_, n);
    p_ += n;
    return true;
  }
  const uint8_t* data() const { return p_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

bool record_version_plausible_prefix(const uint8_t* data, size_t len) {
  // SSL 3.0 through TLS 1.3 all use major version 3; ClientHello records
  // carry 0x0301 (or 0x0300/0x0303) in practice.
  if (len >= 2 && data[1] != 3) return false;
  if (len >= 3 && data[2] > 4) return false;
  return true;
}

// Host names become certificate CNs, cache keys and log fields: accept only
// the characters DNS names (and underscore-using service names) contain.
bool host_char_ok(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_';
}

PeekStatus parse_server_name(Reader ext, ClientHelloInfo* out) {
  uint16_t list_len = 0;
  if (!ext.u16(&list_len) || list_len != ext.left() || list_len == 0) return PeekStatus::Malformed;
  bool have_host = false;
  while (ext.left() > 0) {
    uint8_t type = 0;
    uint16_t name_len = 0;
    Reader name(nullptr, 0);
    if (!ext.u8(&type) || !ext.u16(&name_len) || !ext.sub(name_len, &name)) return PeekStatus::Malformed;
    if (type != kNameTypeHostName) continue;  // unknown name types are skipped
    // RFC 6066: at most one name of each type.
    if (have_host || name_len == 0 || name_len > kMaxHostName) return PeekStatus::Malformed;
    have_host = true;
    out->sni.resize(name_len);
    for (size_t i = 0; i < name_len; i++) {
      uint8_t c = name.data()[i];
      if (!host_char_ok(c)) return PeekStatus::Malformed;
      if (c >= 'A' && c <= 'Z') c = static_cast<uint8_t>(c - 'A' + 'a');
      out->sni[i] = static_cast<char>(c);
    }
    // RFC 6066 forbids the final dot, but some clients send "host.": it
    // names the same host, and certificates and cache keys never carry it.
    if (out->sni.back() == '.') out->sni.pop_back();
    // No empty label anywhere else ("host..", ".host", "a..b"): one host
    // must give one cache key and one certificate name.
    if (out->sni.empty() || out->sni.front() == '.' || out->sni.back() == '.' ||
        out->sni.find("..") != std::string::npos)
      return PeekStatus::Malformed;
  }
  return PeekStatus::Ok;
}

PeekStatus parse_alpn(Reader ext, ClientHelloInfo* out) {
  uint16_t list_len = 0;
  if (!ext.u16(&list_len) || list_len != ext.left() || list_len == 0) return PeekStatus::Malformed;
  while (ext.left() > 0) {
    uint8_t len = 0;
    Reader proto(nullptr, 0);
    // RFC 7301: empty protocol names are not allowed.
    if (!ext.u8(&len) || len == 0 || !ext.sub(len, &proto)) return PeekStatus::Malformed;
    out->alpn.emplace_back(reinterpret_cast<const char*>(proto.data()), len);
  }
  return PeekStatus::Ok;
}

PeekStatus parse_supported_versions(Reader ext, bool* tls12) {
  uint8_t list_len = 0;
  if (!ext.u8(&list_len) || list_len != ext.left() || list_len < 2 || list_len % 2 != 0)
    return PeekStatus::Malformed;
  *tls12 = false;
  while (ext.left() > 0) {
    uint16_t v = 0;
    ext.u16(&v);
    if (v == 0x0303) *tls12 = true;
  }
  return PeekStatus::Ok;
}

PeekStatus parse_body(Reader body, ClientHelloInfo* out) {
  uint8_t sid_len = 0, comp_len = 0;
  uint16_t suites_len = 0;
  if (!body.u16(&out->legacy_version) || !body.skip(32)) return PeekStatus::Malformed;
  if ((out->legacy_version >> 8) != 3) return PeekStatus::Malformed;
  if (!body.u8(&sid_len) || sid_len > 32 || !body.skip(sid_len)) return PeekStatus::Malformed;
  if (!body.u16(&suites_len) || suites_len < 2 || suites_len % 2 != 0 || !body.skip(suites_len))
    return PeekStatus::Malformed;
  if (!body.u8(&comp_len) || comp_len < 1 || !body.skip(comp_len)) return PeekStatus::Malformed;

  bool tls12 = out->legacy_version >= 0x0303;
  if (body.left() == 0) {  // no extensions at all: an old but valid client
    out->offers_tls12 = tls12;
    return PeekStatus::Ok;
  }
  uint16_t ext_total = 0;
  if (!body.u16(&ext_total) || ext_total != body.left()) return PeekStatus::Malformed;

  bool seen_sni = false, seen_alpn = false, seen_versions = false;
  while (body.left() > 0) {
    uint16_t type = 0, len = 0;
    Reader ext(nullptr, 0);
    if (!body.u16(&type) || !body.u16(&len) || !body.sub(len, &ext)) return PeekStatus::Malformed;
    PeekStatus st = PeekStatus::Ok;
    bool* seen = nullptr;
    switch (type) {
      case kExtServerName:
        seen = &seen_sni;
        if (!seen_sni) st = parse_server_name(ext, out);
        break;
      case kExtAlpn:
        seen = &seen_alpn;
        if (!seen_alpn) st = parse_alpn(ext, out);
        break;
      case kExtSupportedVersions:
        seen = &seen_versions;
        // RFC 8446 §4.2.1: when present, this list alone says which
        // versions the client speaks; legacy_version is then frozen at 1.2.
        if (!seen_versions) st = parse_supported_versions(ext, &tls12);
        break;
      default:
        break;
    }
    // RFC 8446 §4.2: an extension type must not appear twice.
    if (seen != nullptr) {
      if (*seen) return PeekStatus::Malformed;
      *seen = true;
    }
    if (st != PeekStatus::Ok) return st;
  }
  out->offers_tls12 = tls12;
  return PeekStatus::Ok;
}

}  // namespace

const char* to_string(PeekStatus s) {
  switch (s) {
    case PeekStatus::NeedMore:
      return "need more bytes";
    case PeekStatus::Ok:
      return "ok";
    case PeekStatus::NotTls:
      return "not a TLS handshake";
    case PeekStatus::Malformed:
      return "malformed ClientHello";
  }
  return "unknown";
}

PeekStatus peek_client_hello(const uint8_t* data, size_t len, ClientHelloInfo* out) {
  *out = ClientHelloInfo();
  if (len == 0) return PeekStatus::NeedMore;
  if (data[0] != kContentHandshake) return PeekStatus::NotTls;
  if (!record_version_plausible_prefix(data, len)) return PeekStatus::NotTls;

  // Walk the records, noting where the handshake message's bytes live. The
  // common case is one record holding the whole message: parse it in place.
  // Otherwise copy the fragments into a stack buffer.
  uint8_t hdr[kHandshakeHeader];
  size_t hdr_have = 0;
  bool have_msg_len = false;
  size_t msg_len = 0;               // body length from the handshake header
  size_t msg_have = 0;              // body bytes seen so far
  const uint8_t* single = nullptr;  // body in place when it sits in one record
  uint8_t joined[kMaxHelloMessage];
  bool split = false;

  size_t off = 0;
  for (;;) {
    if (off > 0 && off < len) {
      // A later record: it must continue the handshake.
      if (data[off] != kContentHandshake) return PeekStatus::Malformed;
      if (!record_version_plausible_prefix(data + off, len - off)) return PeekStatus::Malformed;
    }
    if (len - off < kRecordHeader) {
      // Would the header and at least one payload byte still fit?
      return off + kRecordHeader < kMaxClientHelloBytes ? PeekStatus::NeedMore : PeekStatus::Malformed;
    }
    size_t rec_len = (static_cast<size_t>(data[off + 3]) << 8) | data[off + 4];
    if (rec_len == 0 || rec_len > kMaxRecordPayload) return PeekStatus::Malformed;
    if (off + kRecordHeader + rec_len > kMaxClientHelloBytes) return PeekStatus::Malformed;
    const uint8_t* frag = data + off + kRecordHeader;
    size_t frag_have = len - off - kRecordHeader;
    if (frag_have > rec_len) frag_have = rec_len;

    size_t i = 0;
    while (hdr_have < kHandshakeHeader && i < frag_have) hdr[hdr_have++] = frag[i++];
    if (hdr_have > 0 && hdr[0] != kHandshakeClientHello) return PeekStatus::Malformed;
    if (hdr_have == kHandshakeHeader && !have_msg_len) {
      have_msg_len = true;
      msg_len = (static_cast<size_t>(hdr[1]) << 16) | (static_cast<size_t>(hdr[2]) << 8) | hdr[3];
      // The fixed part of a ClientHello alone is 38 bytes.
      if (msg_len < 38 || msg_len > kMaxHelloMessage) return PeekStatus::Malformed;
    }
    if (have_msg_len) {
      size_t take = frag_have - i;
      if (take > msg_len - msg_have) take = msg_len - msg_have;
      if (msg_have == 0 && take == msg_len) {
        single = frag + i;  // the whole body in this record
      } else if (take > 0) {
        split = true;
        std::memcpy(joined + msg_have, frag + i, take);
      }
      msg_have += take;
      if (msg_have == msg_len) break;
    }
    if (frag_have < rec_len) return PeekStatus::NeedMore;  // record incomplete
    off += kRecordHeader + rec_len;
    if (off == len) {
      return off + kRecordHeader < kMaxClientHelloBytes ? PeekStatus::NeedMore : PeekStatus::Malformed;
    }
  }
  const uint8_t* body = split ? joined : single;
  return parse_body(Reader(body, msg_len), out);
}

}  // namespace shoal::tls
