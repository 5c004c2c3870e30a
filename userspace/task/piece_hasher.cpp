#include "shoal/task/piece_hasher.h"

#include <openssl/evp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "shoal/task/task_id.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define SHOAL_SHA_NI 1
#endif

namespace shoal::task {
namespace {

std::atomic<bool> g_force_libcrypto{false};

EVP_MD_CTX* ctx(void* p) { return static_cast<EVP_MD_CTX*>(p); }

constexpr uint32_t kInit[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

void digest_out(const uint32_t h[8], Sha256* out) {
  for (int i = 0; i < 8; i++) {
    (*out)[4 * i] = static_cast<uint8_t>(h[i] >> 24);
    (*out)[4 * i + 1] = static_cast<uint8_t>(h[i] >> 16);
    (*out)[4 * i + 2] = static_cast<uint8_t>(h[i] >> 8);
    (*out)[4 * i + 3] = static_cast<uint8_t>(h[i]);
  }
}

#ifdef SHOAL_SHA_NI

alignas(16) constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

// Compresses nblocks 64-byte blocks into Lanes chaining values at once: the
// message schedule is computed once per block and each lane runs its own
// rounds, so the lanes' dependency chains interleave in the pipeline.
template <int Lanes>
__attribute__((target("sha,sse4.1"))) void sha_ni_blocks(uint32_t* const (&h)[Lanes], const uint8_t* p,
                                                         size_t nblocks) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i abef[Lanes], cdgh[Lanes];
  for (int l = 0; l < Lanes; l++) {
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h[l])), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h[l] + 4)), 0x1B);
    abef[l] = _mm_alignr_epi8(dcba, efgh, 8);
    cdgh[l] = _mm_blend_epi16(efgh, dcba, 0xF0);
  }
  for (; nblocks > 0; nblocks--, p += 64) {
    __m128i abef0[Lanes], cdgh0[Lanes];
    for (int l = 0; l < Lanes; l++) {
      abef0[l] = abef[l];
      cdgh0[l] = cdgh[l];
    }
    // The whole schedule first: it depends only on the block, so the
    // lanes' rounds below never wait for it.
    __m128i w[16];
    for (int i = 0; i < 4; i++)
      w[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), bswap);
    for (int g = 4; g < 16; g++) {
      __m128i t = _mm_sha256msg1_epu32(w[g - 4], w[g - 3]);
      t = _mm_add_epi32(t, _mm_alignr_epi8(w[g - 1], w[g - 2], 4));
      w[g] = _mm_sha256msg2_epu32(t, w[g - 1]);
    }
    for (int g = 0; g < 16; g++) {
      __m128i wk = _mm_add_epi32(w[g], _mm_load_si128(reinterpret_cast<const __m128i*>(kK + 4 * g)));
      __m128i wk_hi = _mm_shuffle_epi32(wk, 0x0E);
      for (int l = 0; l < Lanes; l++) cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], wk);
      for (int l = 0; l < Lanes; l++) abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], wk_hi);
    }
    for (int l = 0; l < Lanes; l++) {
      abef[l] = _mm_add_epi32(abef[l], abef0[l]);
      cdgh[l] = _mm_add_epi32(cdgh[l], cdgh0[l]);
    }
  }
  for (int l = 0; l < Lanes; l++) {
    __m128i feba = _mm_shuffle_epi32(abef[l], 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh[l], 0xB1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h[l]), _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h[l] + 4), _mm_alignr_epi8(dchg, feba, 8));
  }
}

bool cpu_has_sha_ni() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1)) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (b & bit_SHA) != 0;
}

// One lane's last blocks: tail (under 64 bytes), 0x80, zeros, and the
// message length in bits (len counts the tail too).
void finish_lane(uint32_t h[8], const uint8_t* tail, size_t tail_len, uint64_t len, Sha256* out) {
  uint8_t pad[128] = {};
  if (tail_len > 0) memcpy(pad, tail, tail_len);
  pad[tail_len] = 0x80;
  size_t n = tail_len < 56 ? 64 : 128;
  uint64_t bits = len * 8;
  for (int i = 0; i < 8; i++) pad[n - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  uint32_t* const lane[1] = {h};
  sha_ni_blocks<1>(lane, pad, n / 64);
  digest_out(h, out);
}

#endif  // SHOAL_SHA_NI

bool one_pass_supported() {
#ifdef SHOAL_SHA_NI
  static const bool yes = cpu_has_sha_ni();
  return yes;
#else
  return false;
#endif
}

}  // namespace

bool PieceHasher::one_pass_available() { return one_pass_supported() && !g_force_libcrypto.load(); }

void PieceHasher::force_libcrypto_for_test(bool on) { g_force_libcrypto.store(on); }

PieceHasher::PieceHasher(uint32_t piece_size)
    : piece_size_(piece_size), one_pass_(one_pass_available() && piece_size % 64 == 0 && piece_size > 0) {
  memcpy(whole_h_, kInit, sizeof whole_h_);
  memcpy(piece_h_, kInit, sizeof piece_h_);
  if (one_pass_) return;
  whole_ctx_ = EVP_MD_CTX_new();
  piece_ctx_ = EVP_MD_CTX_new();
  // Only allocation can fail here; without a context nothing can be hashed.
  if (whole_ctx_ == nullptr || piece_ctx_ == nullptr ||
      EVP_DigestInit_ex(ctx(whole_ctx_), sha256_md(), nullptr) != 1 ||
      EVP_DigestInit_ex(ctx(piece_ctx_), sha256_md(), nullptr) != 1)
    abort();
}

PieceHasher::~PieceHasher() {
  if (whole_ctx_) EVP_MD_CTX_free(ctx(whole_ctx_));
  if (piece_ctx_) EVP_MD_CTX_free(ctx(piece_ctx_));
}

void PieceHasher::update(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (!one_pass_) return portable_update(p, n);
  while (n > 0) {
    if (buf_len_ > 0 || n < 64) {
      size_t k = 64 - buf_len_ < n ? 64 - buf_len_ : n;
      memcpy(buf_ + buf_len_, p, k);
      buf_len_ += k;
      p += k;
      n -= k;
      if (buf_len_ == 64) {
        buf_len_ = 0;
        blocks(buf_, 1);
      }
      continue;
    }
    // piece_len_ is a multiple of 64, so the piece ends on a block boundary.
    size_t to_piece_end = (piece_size_ - piece_len_) / 64;
    size_t nb = n / 64 < to_piece_end ? n / 64 : to_piece_end;
    blocks(p, nb);
    p += nb * 64;
    n -= nb * 64;
  }
}

void PieceHasher::blocks(const uint8_t* p, size_t nblocks) {
#ifdef SHOAL_SHA_NI
  uint32_t* const lanes[2] = {whole_h_, piece_h_};
  sha_ni_blocks<2>(lanes, p, nblocks);
  whole_len_ += nblocks * 64;
  piece_len_ += nblocks * 64;
  if (piece_len_ == piece_size_) end_piece(0, nullptr);
#else
  (void)p;
  (void)nblocks;
#endif
}

void PieceHasher::end_piece(size_t tail_len, const uint8_t* tail) {
#ifdef SHOAL_SHA_NI
  Sha256 d{};
  finish_lane(piece_h_, tail, tail_len, piece_len_ + tail_len, &d);
  pieces_.push_back(d);
  memcpy(piece_h_, kInit, sizeof piece_h_);
  piece_len_ = 0;
#else
  (void)tail_len;
  (void)tail;
#endif
}

void PieceHasher::portable_update(const uint8_t* p, size_t n) {
  EVP_DigestUpdate(ctx(whole_ctx_), p, n);
  while (n > 0) {
    uint64_t room = piece_size_ - piece_len_;
    size_t k = n < room ? n : static_cast<size_t>(room);
    EVP_DigestUpdate(ctx(piece_ctx_), p, k);
    piece_len_ += k;
    p += k;
    n -= k;
    if (piece_len_ == piece_size_) {
      Sha256 d{};
      EVP_DigestFinal_ex(ctx(piece_ctx_), d.data(), nullptr);
      pieces_.push_back(d);
      EVP_DigestInit_ex(ctx(piece_ctx_), sha256_md(), nullptr);
      piece_len_ = 0;
    }
  }
}

Sha256 PieceHasher::finish() {
  Sha256 whole{};
  if (!one_pass_) {
    if (piece_len_ > 0) {
      Sha256 d{};
      EVP_DigestFinal_ex(ctx(piece_ctx_), d.data(), nullptr);
      pieces_.push_back(d);
      piece_len_ = 0;
    }
    EVP_DigestFinal_ex(ctx(whole_ctx_), whole.data(), nullptr);
    return whole;
  }
#ifdef SHOAL_SHA_NI
  if (piece_len_ + buf_len_ > 0) end_piece(buf_len_, buf_);
  finish_lane(whole_h_, buf_, buf_len_, whole_len_ + buf_len_, &whole);
  buf_len_ = 0;
#endif
  return whole;
}

}  // namespace shoal::task
