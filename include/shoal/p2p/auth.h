// Request signing between peers and schedulers: a cluster secret shared by
// every node, an HMAC-SHA256 over method, path, time, nonce and the body's
// SHA-256. A request is accepted within 60 s of its time and only once (its
// nonce is remembered for twice that). Everything else is a 403 that says
// nothing more. Answers from schedulers are signed over the request's
// nonce, so a forged or replayed answer is refused by the peer.
//
// Request headers:
//   X-Shoal-Protocol: 1
//   X-Shoal-Time: <unix seconds>
//   X-Shoal-Nonce: <32 lower-case hex, random>
//   X-Shoal-Signature: hex(HMAC-SHA256(secret,
//       "shoal-req-v1\n" METHOD "\n" PATH "\n" TIME "\n" NONCE "\n" hex(SHA-256(body))))
// Response header:
//   X-Shoal-Signature: hex(HMAC-SHA256(secret,
//       "shoal-resp-v1\n" NONCE "\n" STATUS "\n" hex(SHA-256(body))))
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/http/http.h"

namespace shoal::p2p {

constexpr int64_t kMaxClockSkew = 60;  // seconds
// Nonces a Verifier remembers at most: 1M over the 120 s window is a
// sustained 8,300 signed requests/s; beyond that requests are refused.
constexpr size_t kMaxNonces = 1000000;

// Reads a cluster secret: the file's bytes minus trailing whitespace, at
// least 16 bytes. Refuses (false, *err naming the file) a missing or
// unreadable file, a short secret, and a file that group or others may read.
bool load_secret_file(const std::string& path, std::string* secret, std::string* err);

// HMAC-SHA256 keyed with a cluster secret, defined in auth.cpp. Immutable
// once built, so one key serves every thread and every copy of a Signer.
class MacKey;

class Signer {
 public:
  explicit Signer(std::string secret);
  // Headers for a request; *nonce receives the nonce (to check the answer).
  // now: unix seconds.
  std::vector<http::Header> sign(std::string_view method, std::string_view path, std::string_view body,
                                 int64_t now, std::string* nonce) const;
  std::string sign_response(std::string_view nonce, int status, std::string_view body) const;
  // The answer carries a valid signature for our nonce.
  bool check_response(std::string_view nonce, int status, const std::vector<http::Header>& headers,
                      std::string_view body) const;

 private:
  std::shared_ptr<const MacKey> key_;
};

class Verifier {
 public:
  enum class Verdict { Ok, Missing, BadVersion, Expired, BadSignature, Replayed };
  // max_nonces above kMaxNonceBound is taken as kMaxNonceBound. The cache's
  // address space is reserved here for the whole bound, so remembering a
  // nonce never rehashes or allocates: 24 bytes a remembered nonce, plus an
  // index of 8 to 16 bytes per nonce of the bound that fills in as nonces
  // arrive; an idle cache gives its pages back.
  explicit Verifier(std::string secret, size_t max_nonces = kMaxNonces);
  ~Verifier();
  Verifier(const Verifier&) = delete;
  Verifier& operator=(const Verifier&) = delete;
  // Checks in this order. Missing: a signing header is absent. BadVersion:
  // X-Shoal-Protocol is not an integer >= 1. Expired: X-Shoal-Time is over
  // kMaxClockSkew from now. BadSignature: the MAC does not match, or a
  // signing header is repeated or malformed. Replayed: the nonce was seen.
  // Thread-safe. On Ok the nonce is recorded and *nonce receives it (for the
  // response signature). A nonce is forgotten 2 * kMaxClockSkew after it
  // was accepted, when its request can no longer pass the time check. The
  // cache is bounded by max_nonces: when full, valid requests are refused
  // as Replayed rather than evicting a nonce that may still be replayed
  // (only holders of the secret can fill it: nothing is recorded before the
  // MAC checks).
  Verdict verify(std::string_view method, std::string_view path, const std::vector<http::Header>& headers,
                 std::string_view body, int64_t now, std::string* nonce = nullptr);
  // Nonces remembered: accepted within the last 2 * kMaxClockSkew.
  size_t remembered() const;
  // Nonces the cache holds: the remembered ones and forgotten ones not yet
  // removed. Each verify() removes at most kForgetPerRequest of the latter,
  // so no request pays for forgetting a whole second's worth at once.
  size_t held() const;
  // Removes up to kTidyBudget forgotten nonces: for a timer, so that a cache
  // left idle after a burst empties and gives its memory back.
  void tidy(int64_t now);

  // The most nonces a Verifier can remember (its index holds 32-bit slots).
  static constexpr size_t kMaxNonceBound = 0xfffffffe;
  static constexpr size_t kForgetPerRequest = 8;
  static constexpr size_t kTidyBudget = 4096;

 private:
  class NonceCache;  // auth.cpp

  std::shared_ptr<const MacKey> key_;
  mutable std::mutex mu_;
  std::unique_ptr<NonceCache> nonces_;  // guarded by mu_
};
const char* to_string(Verifier::Verdict v);

}  // namespace shoal::p2p
