#include "shoal/tls/record_layer.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

namespace shoal::tls {

namespace {

constexpr uint8_t kVersionMajor = 3;
constexpr uint8_t kVersionMinor = 3;  // TLS 1.2
constexpr size_t kNonce = 12;
constexpr size_t kAad = 13;

void put_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

std::string crypto_error(const char* what) {
  unsigned long e = ERR_get_error();
  char buf[256];
  if (e == 0) return std::string(what) + " failed";
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return std::string(what) + ": " + buf;
}

void make_aad(uint8_t* aad, uint64_t seq, uint8_t type, size_t plain_len) {
  put_be64(aad, seq);
  aad[8] = type;
  aad[9] = kVersionMajor;
  aad[10] = kVersionMinor;
  aad[11] = static_cast<uint8_t>(plain_len >> 8);
  aad[12] = static_cast<uint8_t>(plain_len);
}

}  // namespace

void RecordKeys::wipe() {
  OPENSSL_cleanse(write_key, sizeof write_key);
  OPENSSL_cleanse(read_key, sizeof read_key);
  OPENSSL_cleanse(write_iv, sizeof write_iv);
  OPENSSL_cleanse(read_iv, sizeof read_iv);
}

struct RecordLayer::CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};

std::unique_ptr<RecordLayer> RecordLayer::create(const RecordKeys& keys, std::string* err) {
  const EVP_CIPHER* cipher = keys.key_len == 16   ? EVP_aes_128_gcm()
                             : keys.key_len == 32 ? EVP_aes_256_gcm()
                                                  : nullptr;
  if (cipher == nullptr) {
    *err = "record layer: unsupported key length " + std::to_string(keys.key_len);
    return nullptr;
  }
  std::unique_ptr<RecordLayer> r(new RecordLayer());
  r->enc_ = std::make_unique<CipherCtx>();
  r->dec_ = std::make_unique<CipherCtx>();
  if (r->enc_->ctx == nullptr || r->dec_->ctx == nullptr) {
    *err = "record layer: out of memory";
    return nullptr;
  }
  // Keys once; each record then sets only its nonce.
  if (EVP_EncryptInit_ex(r->enc_->ctx, cipher, nullptr, keys.write_key, nullptr) != 1 ||
      EVP_DecryptInit_ex(r->dec_->ctx, cipher, nullptr, keys.read_key, nullptr) != 1) {
    *err = crypto_error("record layer: key set-up");
    return nullptr;
  }
  std::memcpy(r->write_iv_, keys.write_iv, sizeof r->write_iv_);
  std::memcpy(r->read_iv_, keys.read_iv, sizeof r->read_iv_);
  r->write_seq_ = keys.write_seq;
  r->read_seq_ = keys.read_seq;
  r->key_len_ = keys.key_len;
  return r;
}

RecordLayer::~RecordLayer() {
  OPENSSL_cleanse(write_iv_, sizeof write_iv_);
  OPENSSL_cleanse(read_iv_, sizeof read_iv_);
}

RecordLayer::Result RecordLayer::reject(Alert a, std::string why) {
  open_failed_ = true;
  alert_ = a;
  err_ = std::move(why);
  return Result::Error;
}

bool RecordLayer::seal(ContentType type, const uint8_t* data, size_t len, std::vector<uint8_t>* out) {
  if (seal_failed_) return false;
  const size_t records = (len + kMaxPlain - 1) / kMaxPlain;
  size_t pos = out->size();
  // One resize for the whole batch: the records are written in place.
  out->resize(pos + len + records * kOverhead);
  EVP_CIPHER_CTX* ctx = enc_->ctx;
  for (size_t off = 0; off < len;) {
    // The last sequence number is never used: a counter about to wrap ends
    // the connection instead of reusing a nonce.
    if (write_seq_ == UINT64_MAX) {
      out->resize(pos);
      seal_failed_ = true;
      err_ = "record layer: write sequence number exhausted";
      return false;
    }
    const size_t n = std::min(kMaxPlain, len - off);
    uint8_t* rec = out->data() + pos;
    const size_t body = kExplicitNonce + n + kTag;
    rec[0] = static_cast<uint8_t>(type);
    rec[1] = kVersionMajor;
    rec[2] = kVersionMinor;
    rec[3] = static_cast<uint8_t>(body >> 8);
    rec[4] = static_cast<uint8_t>(body);
    uint8_t* explicit_nonce = rec + kHeader;
    put_be64(explicit_nonce, write_seq_);
    uint8_t nonce[kNonce];
    std::memcpy(nonce, write_iv_, 4);
    std::memcpy(nonce + 4, explicit_nonce, kExplicitNonce);
    uint8_t aad[kAad];
    make_aad(aad, write_seq_, static_cast<uint8_t>(type), n);
    uint8_t* ct = explicit_nonce + kExplicitNonce;
    int outl = 0, fin = 0;
    if (EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, nullptr, &outl, aad, sizeof aad) != 1 ||
        EVP_EncryptUpdate(ctx, ct, &outl, data + off, static_cast<int>(n)) != 1 ||
        EVP_EncryptFinal_ex(ctx, ct + outl, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTag), ct + n) != 1) {
      out->resize(pos);
      seal_failed_ = true;
      err_ = crypto_error("record layer: seal");
      return false;
    }
    write_seq_++;
    pos += kHeader + body;
    off += n;
  }
  return true;
}

RecordLayer::Result RecordLayer::open(uint8_t* buf, size_t avail, uint8_t* dst, size_t dst_cap, Record* rec) {
  if (open_failed_) return Result::Error;
  if (avail < kHeader) return Result::NeedMore;
  const uint8_t type = buf[0];
  if (type < static_cast<uint8_t>(ContentType::ChangeCipherSpec) ||
      type > static_cast<uint8_t>(ContentType::ApplicationData))
    return reject(Alert::UnexpectedMessage, "record of unknown content type " + std::to_string(type));
  if (buf[1] != kVersionMajor || buf[2] != kVersionMinor)
    return reject(Alert::ProtocolVersion, "record with version " + std::to_string(buf[1]) + "." +
                                              std::to_string(buf[2]) + ", not 3.3");
  const size_t body = (static_cast<size_t>(buf[3]) << 8) | buf[4];
  // Checked before the body arrives, so a peer cannot make us buffer more
  // than one maximal record.
  if (body > kMaxPlain + kExplicitNonce + kTag)
    return reject(Alert::RecordOverflow, "record of " + std::to_string(body) + " bytes exceeds 2^14 + 24");
  if (body < kExplicitNonce + kTag)
    return reject(Alert::BadRecordMac,
                  "record of " + std::to_string(body) + " bytes is too short for AES-GCM");
  if (avail < kHeader + body) return Result::NeedMore;
  if (read_seq_ == UINT64_MAX) return reject(Alert::InternalError, "read sequence number exhausted");

  const size_t n = body - kExplicitNonce - kTag;
  uint8_t* explicit_nonce = buf + kHeader;
  uint8_t* ct = explicit_nonce + kExplicitNonce;
  uint8_t* tag = ct + n;
  uint8_t nonce[kNonce];
  std::memcpy(nonce, read_iv_, 4);
  std::memcpy(nonce + 4, explicit_nonce, kExplicitNonce);
  uint8_t aad[kAad];
  make_aad(aad, read_seq_, type, n);
  uint8_t* plain = (dst != nullptr && n <= dst_cap) ? dst : ct;
  EVP_CIPHER_CTX* ctx = dec_->ctx;
  int outl = 0, fin = 0;
  if (EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) != 1 ||
      EVP_DecryptUpdate(ctx, nullptr, &outl, aad, sizeof aad) != 1 ||
      EVP_DecryptUpdate(ctx, plain, &outl, ct, static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTag), tag) != 1)
    return reject(Alert::InternalError, crypto_error("record layer: open"));
  if (EVP_DecryptFinal_ex(ctx, plain + outl, &fin) != 1) {
    ERR_clear_error();
    return reject(Alert::BadRecordMac, "record " + std::to_string(read_seq_) +
                                           " failed authentication (bad tag, sequence number or key)");
  }
  read_seq_++;
  rec->type = type;
  rec->plain = plain;
  rec->len = n;
  rec->consumed = kHeader + body;
  return Result::Ok;
}

const char* alert_name(int desc) {
  switch (desc) {
    case 0:
      return "close_notify";
    case 10:
      return "unexpected_message";
    case 20:
      return "bad_record_mac";
    case 22:
      return "record_overflow";
    case 40:
      return "handshake_failure";
    case 42:
      return "bad_certificate";
    case 43:
      return "unsupported_certificate";
    case 45:
      return "certificate_expired";
    case 46:
      return "certificate_unknown";
    case 47:
      return "illegal_parameter";
    case 48:
      return "unknown_ca";
    case 49:
      return "access_denied";
    case 50:
      return "decode_error";
    case 51:
      return "decrypt_error";
    case 70:
      return "protocol_version";
    case 71:
      return "insufficient_security";
    case 80:
      return "internal_error";
    case 90:
      return "user_canceled";
    case 100:
      return "no_renegotiation";
    case 112:
      return "unrecognized_name";
    case 120:
      return "no_application_protocol";
    default:
      return "unknown";
  }
}

}  // namespace shoal::tls
