// Request and response signing between peers and schedulers (see
// shoal/p2p/auth.h). Every refusal is a Verdict, never an exception; MACs are
// compared in constant time so that a forger learns nothing from timing.
#include "shoal/p2p/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>

#include "shoal/p2p/protocol.h"
#include "shoal/util/hex.h"

namespace shoal::p2p {

namespace {

constexpr std::string_view kProtocolHeader = "X-Shoal-Protocol";
constexpr std::string_view kTimeHeader = "X-Shoal-Time";
constexpr std::string_view kNonceHeader = "X-Shoal-Nonce";
constexpr std::string_view kSignatureHeader = "X-Shoal-Signature";
constexpr size_t kNonceBytes = 16;
constexpr size_t kMinSecret = 16;
// A secret is a line of text; anything this large is the wrong file.
constexpr size_t kMaxSecretFile = 64 * 1024;

using Mac = std::array<uint8_t, 32>;

using util::hex;
using util::hex_encode;

// Exactly 2 * n lower-case hex digits into n bytes; the sender writes
// lower-case, so anything else is malformed.
bool hex_decode(std::string_view in, size_t n, uint8_t* out) {
  return in.size() == 2 * n && util::hex_decode(in.data(), n, out);
}

// The always-on check for what cannot happen (the CSPRNG or HMAC-SHA256
// failing): signing on regardless would send a predictable nonce or a
// garbage signature, so the process stops instead.
[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "shoal: p2p auth: %s failed\n", what);
  std::abort();
}

// SHA-256, fetched from the provider once: EVP_sha256() names a legacy
// object that every digest initialisation looks up again. Never freed.
const EVP_MD* sha256() {
  static const EVP_MD* const md = [] {
    EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (m == nullptr) die("EVP_MD_fetch(SHA256)");
    return m;
  }();
  return md;
}

// A digest context for the calling thread, reused by every hash it computes
// so that none allocates one. Callers run one hash at a time on it.
EVP_MD_CTX* scratch_ctx() {
  struct Owner {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Owner() { EVP_MD_CTX_free(ctx); }
  };
  thread_local Owner owner;
  if (owner.ctx == nullptr) die("EVP_MD_CTX_new");
  return owner.ctx;
}

// hex(SHA-256(body)) into out[0..63].
bool body_hash_hex(std::string_view body, char* out) {
  EVP_MD_CTX* c = scratch_ctx();
  uint8_t sum[32];
  unsigned int len = 0;
  if (EVP_DigestInit_ex2(c, sha256(), nullptr) != 1 || EVP_DigestUpdate(c, body.data(), body.size()) != 1 ||
      EVP_DigestFinal_ex(c, sum, &len) != 1 || len != sizeof sum) {
    return false;
  }
  hex_encode(sum, sizeof sum, out);
  return true;
}

}  // namespace

// HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once, here:
// a MAC then copies those states and hashes only the message, with no
// lookup and no key schedule per call. The states are only read after
// construction, so threads share them.
class MacKey {
 public:
  explicit MacKey(std::string_view secret) {
    constexpr size_t kBlock = 64;  // SHA-256's block size
    uint8_t key[kBlock] = {};
    if (secret.size() > kBlock) {
      unsigned int len = 0;
      if (EVP_Digest(secret.data(), secret.size(), key, &len, sha256(), nullptr) != 1) die("SHA-256");
    } else {
      std::memcpy(key, secret.data(), secret.size());
    }
    uint8_t pad[kBlock];
    for (size_t i = 0; i < kBlock; i++) pad[i] = static_cast<uint8_t>(key[i] ^ 0x36);
    init(&inner_, pad);
    for (size_t i = 0; i < kBlock; i++) pad[i] = static_cast<uint8_t>(key[i] ^ 0x5c);
    init(&outer_, pad);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
  }
  ~MacKey() {
    // Freeing clears the states, which are as good as the secret.
    EVP_MD_CTX_free(inner_);
    EVP_MD_CTX_free(outer_);
  }
  MacKey(const MacKey&) = delete;
  MacKey& operator=(const MacKey&) = delete;

  // The MAC of the concatenated parts, on the calling thread's context.
  bool mac(const std::string_view* parts, size_t n, Mac* out) const {
    EVP_MD_CTX* c = scratch_ctx();
    uint8_t in[32];
    unsigned int len = 0;
    if (EVP_MD_CTX_copy_ex(c, inner_) != 1) return false;
    for (size_t i = 0; i < n; i++) {
      if (EVP_DigestUpdate(c, parts[i].data(), parts[i].size()) != 1) return false;
    }
    if (EVP_DigestFinal_ex(c, in, &len) != 1 || len != sizeof in) return false;
    if (EVP_MD_CTX_copy_ex(c, outer_) != 1 || EVP_DigestUpdate(c, in, sizeof in) != 1) return false;
    return EVP_DigestFinal_ex(c, out->data(), &len) == 1 && len == out->size();
  }

 private:
  static void init(EVP_MD_CTX** ctx, const uint8_t* block) {
    *ctx = EVP_MD_CTX_new();
    if (*ctx == nullptr || EVP_DigestInit_ex2(*ctx, sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(*ctx, block, 64) != 1) {
      die("HMAC-SHA256 key");
    }
  }

  EVP_MD_CTX* inner_ = nullptr;
  EVP_MD_CTX* outer_ = nullptr;
};

namespace {

bool request_mac(const MacKey& key, std::string_view method, std::string_view path, std::string_view time,
                 std::string_view nonce, std::string_view body, Mac* out) {
  char body_hex[64];
  if (!body_hash_hex(body, body_hex)) return false;
  const std::string_view parts[] = {
      "shoal-req-v1\n", method, "\n", path, "\n", time, "\n", nonce, "\n", {body_hex, sizeof body_hex}};
  return key.mac(parts, std::size(parts), out);
}

bool response_mac(const MacKey& key, std::string_view nonce, int status, std::string_view body, Mac* out) {
  char body_hex[64];
  if (!body_hash_hex(body, body_hex)) return false;
  char digits[16];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, status);
  if (ec != std::errc()) return false;
  const std::string_view parts[] = {
      "shoal-resp-v1\n",          nonce, "\n", {digits, static_cast<size_t>(end - digits)}, "\n",
      {body_hex, sizeof body_hex}};
  return key.mac(parts, std::size(parts), out);
}

// Decimal digits only, at most max_digits (so the value fits an int64_t).
bool parse_digits(std::string_view s, size_t max_digits, int64_t* out) {
  if (s.empty() || s.size() > max_digits) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

bool fail(std::string* err, const std::string& path, std::string_view what) {
  if (err != nullptr) {
    *err = path;
    err->append(": ");
    err->append(what);
  }
  return false;
}

}  // namespace

bool load_secret_file(const std::string& path, std::string* secret, std::string* err) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return fail(err, path, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  // fstat on the open file, not stat on the name: the mode checked is the
  // mode of the bytes read.
  struct stat st;
  if (fstat(fd, &st) != 0) return fail(err, path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return fail(err, path, "not a regular file");
  if ((st.st_mode & 077) != 0) {
    return fail(err, path, "group or others may access the cluster secret; chmod 600 it");
  }
  std::string s;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(err, path, std::strerror(errno));
    if (n == 0) break;
    s.append(buf, static_cast<size_t>(n));
    if (s.size() > kMaxSecretFile) return fail(err, path, "over 64 KiB: not a secret file");
  }
  // Editors add a final newline; it is not part of the secret.
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t' ||
                        s.back() == '\v' || s.back() == '\f')) {
    s.pop_back();
  }
  if (s.size() < kMinSecret) return fail(err, path, "secret shorter than 16 bytes");
  *secret = std::move(s);
  return true;
}

Signer::Signer(std::string secret) : key_(std::make_shared<const MacKey>(secret)) {}

std::vector<http::Header> Signer::sign(std::string_view method, std::string_view path, std::string_view body,
                                       int64_t now, std::string* nonce) const {
  uint8_t raw[kNonceBytes];
  if (RAND_bytes(raw, sizeof raw) != 1) die("RAND_bytes");
  std::string n = hex(raw, sizeof raw);
  std::string t = std::to_string(now);
  Mac mac;
  if (!request_mac(*key_, method, path, t, n, body, &mac)) die("HMAC-SHA256");
  std::vector<http::Header> headers;
  headers.reserve(4);
  headers.push_back({std::string(kProtocolHeader), std::to_string(kProtocolVersion)});
  headers.push_back({std::string(kTimeHeader), std::move(t)});
  headers.push_back({std::string(kNonceHeader), n});
  headers.push_back({std::string(kSignatureHeader), hex(mac.data(), mac.size())});
  if (nonce != nullptr) *nonce = std::move(n);
  return headers;
}

std::string Signer::sign_response(std::string_view nonce, int status, std::string_view body) const {
  Mac mac;
  if (!response_mac(*key_, nonce, status, body, &mac)) die("HMAC-SHA256");
  return hex(mac.data(), mac.size());
}

bool Signer::check_response(std::string_view nonce, int status, const std::vector<http::Header>& headers,
                            std::string_view body) const {
  const std::string* sig = nullptr;
  for (const http::Header& h : headers) {
    if (!http::iequals(h.name, kSignatureHeader)) continue;
    // Two signatures: which one a proxy on the way would act on is unclear,
    // so neither is trusted.
    if (sig != nullptr) return false;
    sig = &h.value;
  }
  Mac got, want;
  if (sig == nullptr || !hex_decode(*sig, got.size(), got.data())) return false;
  if (!response_mac(*key_, nonce, status, body, &want)) return false;
  return CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
}

// The replay cache: the remembered nonces in a ring in the order they were
// accepted, and an open-addressing index (linear probing, at most half
// full) of their ring positions. Both are mapped at construction for the
// whole bound, so remembering a nonce never rehashes, moves or allocates
// anything, however full the cache; the kernel commits a page when it is
// first written, so an idle cache costs next to nothing. Not thread-safe:
// the Verifier's mutex guards it.
class Verifier::NonceCache {
 public:
  // A nonce's 16 bytes.
  struct NonceKey {
    uint64_t hi, lo;
    bool operator==(const NonceKey& o) const { return hi == o.hi && lo == o.lo; }
  };

  explicit NonceCache(size_t max) : cap_(std::min(max, kMaxNonceBound)) {
    size_t slots = 16;
    shift_ = 60;
    while (slots < 2 * cap_) {
      slots *= 2;
      --shift_;
    }
    mask_ = slots - 1;
    ring_ = map<Entry>(std::max<size_t>(cap_, 1), &ring_bytes_);
    index_ = map<uint32_t>(slots, &index_bytes_);
  }
  ~NonceCache() {
    munmap(ring_, ring_bytes_);
    munmap(index_, index_bytes_);
  }
  NonceCache(const NonceCache&) = delete;
  NonceCache& operator=(const NonceCache&) = delete;

  // Starts loading key's home slot, so that the lookup after the MAC check
  // finds it in cache. Reads only what the constructor set: any thread may
  // call it without the lock.
  void prefetch(const NonceKey& key) const { __builtin_prefetch(&index_[home(key)]); }

  // Forgets the nonces accepted before t: at once for lookups (cutoff_),
  // and out of the ring and index at most `budget` of them now. Forgetting
  // a whole second's nonces in one go stalled the caller for milliseconds
  // at 50,000 requests/s (each removal is a random probe of a large index);
  // a few per request keep up with any rate that fills the cache.
  void forget_before(int64_t t, size_t budget) {
    cutoff_ = std::max(cutoff_, t);
    for (; budget > 0 && count_ > 0 && ring_[head_].at < cutoff_; --budget) drop_head();
    if (count_ == 0) {
      head_ = 0;
      // A burst that filled many pages leaves none of them in use: give them
      // back, so an idle cache holds no memory.
      if (touched_ > kReleaseAfter) release();
    }
  }

  // Nonces still remembered (not yet forgotten in time). The ring is in
  // order of acceptance, so the forgotten ones it still holds are a prefix.
  size_t live() const { return count_ - forgotten_held(); }
  // Entries in the ring: remembered, or forgotten and not yet removed.
  size_t held() const { return count_; }

  // Remembers key, accepted at `at` (never before the newest entry's time).
  // False when the key is remembered already or the cache is full.
  bool insert(const NonceKey& key, int64_t at) {
    size_t i = home(key);
    for (uint32_t s; (s = index_[i]) != 0; i = (i + 1) & mask_) {
      if (!(ring_[s - 1].key == key)) continue;
      if (ring_[s - 1].at >= cutoff_) return false;
      // Forgotten in time but still held (a nonce used again past its
      // window): remove every forgotten entry, then look again. Only a
      // holder of the secret can get here.
      while (count_ > 0 && ring_[head_].at < cutoff_) drop_head();
      return insert(key, at);
    }
    if (count_ >= cap_) return false;
    size_t tail = head_ + count_;
    if (tail >= cap_) tail -= cap_;
    ring_[tail] = Entry{at, key};
    index_[i] = static_cast<uint32_t>(tail + 1);
    ++count_;
    touched_ = std::max(touched_, tail + 1);
    return true;
  }

  int64_t newest() const {
    size_t last = head_ + count_ - 1;
    if (last >= cap_) last -= cap_;
    return ring_[last].at;
  }

 private:
  struct Entry {
    int64_t at;
    NonceKey key;
  };
  // An emptied cache gives its pages back once its ring reached this far.
  static constexpr size_t kReleaseAfter = 64 * 1024;

  template <typename T>
  static T* map(size_t n, size_t* bytes) {
    *bytes = n * sizeof(T);
    void* p =
        mmap(nullptr, *bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("mmap of the nonce cache");
    return static_cast<T*>(p);
  }

  // The nonces are random (only holders of the secret choose them, see
  // auth.h), so mixing their bits once is enough.
  size_t home(const NonceKey& k) const {
    return static_cast<size_t>(((k.hi ^ k.lo * 0xff51afd7ed558ccdull) * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  void drop_head() {
    erase_slot(find_slot(ring_[head_].key, static_cast<uint32_t>(head_ + 1)));
    head_ = head_ + 1 == cap_ ? 0 : head_ + 1;
    --count_;
  }

  // How many of the held entries, from the oldest, were accepted before
  // cutoff_: a binary search over the ring's order.
  size_t forgotten_held() const {
    size_t lo = 0, hi = count_;
    while (lo < hi) {
      const size_t mid = lo + (hi - lo) / 2;
      size_t pos = head_ + mid;
      if (pos >= cap_) pos -= cap_;
      if (ring_[pos].at < cutoff_)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo;
  }

  // The index slot holding value (a ring position + 1, known to be there).
  size_t find_slot(const NonceKey& key, uint32_t value) const {
    size_t i = home(key);
    while (index_[i] != value) i = (i + 1) & mask_;
    return i;
  }

  // Empties slot i and moves later entries of its probe run back, so that
  // every entry stays reachable from its home slot without tombstones.
  void erase_slot(size_t i) {
    for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      const uint32_t s = index_[j];
      if (s == 0) break;
      const size_t h = home(ring_[s - 1].key);
      // The entry at j may move to i unless its home lies cyclically in
      // (i, j]: then the probe from its home reaches j without passing i.
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      index_[i] = s;
      i = j;
    }
    index_[i] = 0;
  }

  void release() {
    madvise(ring_, ring_bytes_, MADV_DONTNEED);
    madvise(index_, index_bytes_, MADV_DONTNEED);  // all zero already
    touched_ = 0;
  }

  size_t cap_;
  size_t mask_ = 0;
  unsigned shift_ = 0;  // 64 - log2(index slots): home() keeps the top bits
  Entry* ring_ = nullptr;
  uint32_t* index_ = nullptr;  // 0: empty; else a ring position + 1
  size_t ring_bytes_ = 0, index_bytes_ = 0;
  size_t head_ = 0;             // the oldest entry's ring position
  size_t count_ = 0;            // entries from head_ on, wrapping
  size_t touched_ = 0;          // ring positions written since the last release()
  int64_t cutoff_ = INT64_MIN;  // entries accepted before this are forgotten
};

Verifier::Verifier(std::string secret, size_t max_nonces)
    : key_(std::make_shared<const MacKey>(secret)), nonces_(std::make_unique<NonceCache>(max_nonces)) {}

Verifier::~Verifier() = default;

Verifier::Verdict Verifier::verify(std::string_view method, std::string_view path,
                                   const std::vector<http::Header>& headers, std::string_view body,
                                   int64_t now, std::string* nonce) {
  const std::string* values[4] = {nullptr, nullptr, nullptr, nullptr};
  const std::string_view names[4] = {kProtocolHeader, kTimeHeader, kNonceHeader, kSignatureHeader};
  bool repeated = false;
  for (const http::Header& h : headers) {
    for (size_t i = 0; i < 4; i++) {
      if (!http::iequals(h.name, names[i])) continue;
      if (values[i] != nullptr) repeated = true;
      values[i] = &h.value;
      break;
    }
  }
  for (const std::string* v : values) {
    if (v == nullptr) return Verdict::Missing;
  }
  if (repeated) return Verdict::BadSignature;

  int64_t version = 0;
  if (!parse_digits(*values[0], 9, &version) || version < kMinProtocolVersion) return Verdict::BadVersion;

  // 18 digits keep t and t +- kMaxClockSkew inside int64_t.
  int64_t t = 0;
  if (!parse_digits(*values[1], 18, &t)) return Verdict::BadSignature;
  if (now < t - kMaxClockSkew || now > t + kMaxClockSkew) return Verdict::Expired;

  uint8_t raw_nonce[kNonceBytes];
  Mac got, want;
  if (!hex_decode(*values[2], sizeof raw_nonce, raw_nonce)) return Verdict::BadSignature;
  if (!hex_decode(*values[3], got.size(), got.data())) return Verdict::BadSignature;
  NonceCache::NonceKey key;
  std::memcpy(&key.hi, raw_nonce, 8);
  std::memcpy(&key.lo, raw_nonce + 8, 8);
  nonces_->prefetch(key);
  if (!request_mac(*key_, method, path, *values[1], *values[2], body, &want)) return Verdict::BadSignature;
  if (CRYPTO_memcmp(got.data(), want.data(), want.size()) != 0) return Verdict::BadSignature;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A request is accepted only while now is within kMaxClockSkew of its
    // time, a span of 2 * kMaxClockSkew: a nonce first seen at `now` cannot
    // pass the time check later than that, so it may be forgotten then.
    nonces_->forget_before(now - 2 * kMaxClockSkew, kForgetPerRequest);
    // Full: refusing is the only safe answer, since making room would
    // forget a nonce that may still be replayed.
    const int64_t at = nonces_->held() == 0 ? now : std::max(now, nonces_->newest());
    if (!nonces_->insert(key, at)) return Verdict::Replayed;
  }
  if (nonce != nullptr) nonce->assign(*values[2]);
  return Verdict::Ok;
}

size_t Verifier::remembered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nonces_->live();
}

size_t Verifier::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nonces_->held();
}

void Verifier::tidy(int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  nonces_->forget_before(now - 2 * kMaxClockSkew, kTidyBudget);
}

const char* to_string(Verifier::Verdict v) {
  switch (v) {
    case Verifier::Verdict::Ok:
      return "ok";
    case Verifier::Verdict::Missing:
      return "missing";
    case Verifier::Verdict::BadVersion:
      return "bad-version";
    case Verifier::Verdict::Expired:
      return "expired";
    case Verifier::Verdict::BadSignature:
      return "bad-signature";
    case Verifier::Verdict::Replayed:
      return "replayed";
  }
  return "unknown";
}

}  // namespace shoal::p2p
