// TLS 1.2 AES-GCM record protection on OpenSSL libcrypto (RFC 5288), which
// takes over from mbedTLS's own record layer once a handshake is complete:
// mbedTLS 2.28 runs GCM one 16-byte block at a time (~215 MB/s per core
// here), libcrypto uses AES-NI and carry-less multiply (several GB/s).
//
// Wire format of one record: type(1) version(2, always 3,3) length(2) |
// explicit nonce(8) | ciphertext | tag(16). nonce = implicit IV(4) ||
// explicit nonce(8); the explicit part sent is the record's sequence number,
// as mbedTLS does, so a nonce is never reused while sequence numbers are not.
// AAD = sequence number(8) || type(1) || version(2) || plaintext length(2).
//
// Pure: no sockets, no mbedTLS. Session (session.cpp) decides when to switch
// and what records mean; this class only seals and opens them.
// Not thread-safe: owned by one Session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shoal::tls {

// Record content types (RFC 5246 §6.2.1).
enum class ContentType : uint8_t {
  ChangeCipherSpec = 20,
  Alert = 21,
  Handshake = 22,
  ApplicationData = 23,
};

// Alert descriptions this layer sends or names (RFC 5246 §7.2).
enum class Alert : uint8_t {
  CloseNotify = 0,
  UnexpectedMessage = 10,
  BadRecordMac = 20,
  RecordOverflow = 22,
  DecodeError = 50,
  ProtocolVersion = 70,
  InternalError = 80,
  NoRenegotiation = 100,
};
constexpr uint8_t kAlertWarning = 1;
constexpr uint8_t kAlertFatal = 2;

// Traffic keys for one connection, from this endpoint's point of view.
struct RecordKeys {
  size_t key_len = 0;  // 16 (AES-128-GCM) or 32 (AES-256-GCM)
  uint8_t write_key[32] = {};
  uint8_t write_iv[4] = {};  // the implicit ("salt") part of the nonce
  uint8_t read_key[32] = {};
  uint8_t read_iv[4] = {};
  uint64_t write_seq = 0;  // sequence number of the next record sealed
  uint64_t read_seq = 0;   // sequence number of the next record opened
  // Overwrites the secrets (they must not linger in freed memory).
  void wipe();
};

class RecordLayer {
 public:
  static constexpr size_t kHeader = 5;
  static constexpr size_t kExplicitNonce = 8;
  static constexpr size_t kTag = 16;
  static constexpr size_t kOverhead = kHeader + kExplicitNonce + kTag;
  static constexpr size_t kMaxPlain = 16384;  // 2^14, RFC 5246 §6.2.1

  // nullptr with *err set when the key length is not 16/32 or libcrypto
  // cannot set up a cipher context.
  static std::unique_ptr<RecordLayer> create(const RecordKeys& keys, std::string* err);
  ~RecordLayer();
  RecordLayer(const RecordLayer&) = delete;
  RecordLayer& operator=(const RecordLayer&) = delete;

  // Appends len bytes of `type` to out as records of at most kMaxPlain
  // plaintext bytes each (len 0 seals nothing). False, with error(), when a
  // sequence number would wrap or libcrypto fails; nothing is then appended
  // for the record that failed and later seals fail too.
  bool seal(ContentType type, const uint8_t* data, size_t len, std::vector<uint8_t>* out);

  struct Record {
    uint8_t type = 0;
    const uint8_t* plain = nullptr;  // dst, or inside the caller's buf
    size_t len = 0;                  // plaintext bytes
    size_t consumed = 0;             // wire bytes the record took from buf
  };
  enum class Result { Ok, NeedMore, Error };
  // Opens the record at the start of buf[0, avail). The plaintext goes to
  // dst when it fits in dst_cap, else it is decrypted in place inside buf.
  // NeedMore: no complete record yet (header checks have passed). Error:
  // alert() is the fatal alert to send and error() says why; on Error the
  // bytes written to dst or buf are garbage and later opens fail too
  // (sealing, e.g. of the alert, still works).
  Result open(uint8_t* buf, size_t avail, uint8_t* dst, size_t dst_cap, Record* rec);

  Alert alert() const { return alert_; }
  const std::string& error() const { return err_; }
  uint64_t write_seq() const { return write_seq_; }
  uint64_t read_seq() const { return read_seq_; }
  size_t key_len() const { return key_len_; }

 private:
  RecordLayer() = default;
  Result reject(Alert a, std::string why);  // not "fail": CMocka defines that macro

  struct CipherCtx;
  std::unique_ptr<CipherCtx> enc_, dec_;
  uint8_t write_iv_[4] = {};
  uint8_t read_iv_[4] = {};
  uint64_t write_seq_ = 0;
  uint64_t read_seq_ = 0;
  size_t key_len_ = 0;
  Alert alert_ = Alert::InternalError;
  std::string err_;
  // Each direction fails on its own: after a bad record the fatal alert must
  // still be sealed.
  bool seal_failed_ = false;
  bool open_failed_ = false;
};

const char* alert_name(int desc);

}  // namespace shoal::tls
