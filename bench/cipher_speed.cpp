// cipher_speed: how fast mbedTLS seals and opens TLS 1.2 AEAD records on this
// machine, so the hijacked relay's CPU cost can be compared with what the
// cipher alone allows.
//
//   build/bench/cipher_speed [--seconds S] [--record BYTES] [--suite NAME]...
//
// For each suite (default: chacha20-poly1305, aes-128-gcm, aes-256-gcm) it
// runs mbedtls_cipher_auth_encrypt_ext / mbedtls_cipher_auth_decrypt_ext,
// the calls mbedTLS 2.28's record layer makes (ssl_msg.c), on RECORD-byte
// records (default 16384, TLS's maximum) with a 13-byte additional data
// block and a per-record nonce, for S seconds each way (default 2), and
// prints one line per suite:
//
//   suite=chacha20-poly1305 record=16384 seal_MBps=... open_MBps=...
//     seal_s_per_GiB=... open_s_per_GiB=...   (all on one line)
//
// MB is 10^6 bytes. A relay that opens the origin's records and seals the
// client's spends at least open_s_per_GiB + seal_s_per_GiB CPU-seconds per
// GiB. Exits 1 if a suite is unknown or a record fails to open.
#include <mbedtls/cipher.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Suite {
  const char* name;
  mbedtls_cipher_type_t type;
  size_t key_bits;
  size_t iv_len;  // TLS 1.2: 12 for both (fixed IV + explicit nonce or XORed seq)
};

const Suite kSuites[] = {
    {"chacha20-poly1305", MBEDTLS_CIPHER_CHACHA20_POLY1305, 256, 12},
    {"aes-128-gcm", MBEDTLS_CIPHER_AES_128_GCM, 128, 12},
    {"aes-256-gcm", MBEDTLS_CIPHER_AES_256_GCM, 256, 12},
};

constexpr size_t kTagLen = 16;
constexpr size_t kAddLen = 13;  // seq_num(8) type(1) version(2) length(2)

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void put_seq(unsigned char* p, uint64_t seq) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<unsigned char>(seq & 0xff);
    seq >>= 8;
  }
}

// Runs one suite; returns false on an mbedTLS error.
bool run_suite(const Suite& s, size_t record, double secs) {
  const mbedtls_cipher_info_t* info = mbedtls_cipher_info_from_type(s.type);
  if (info == nullptr) {
    std::fprintf(stderr, "cipher_speed: %s not compiled into mbedTLS\n", s.name);
    return false;
  }
  mbedtls_cipher_context_t enc, dec;
  mbedtls_cipher_init(&enc);
  mbedtls_cipher_init(&dec);
  unsigned char key[32];
  for (size_t i = 0; i < sizeof key; ++i) key[i] = static_cast<unsigned char>(i * 7 + 1);
  const int kb = static_cast<int>(s.key_bits);
  bool ok = mbedtls_cipher_setup(&enc, info) == 0 && mbedtls_cipher_setup(&dec, info) == 0 &&
            mbedtls_cipher_setkey(&enc, key, kb, MBEDTLS_ENCRYPT) == 0 &&
            mbedtls_cipher_setkey(&dec, key, kb, MBEDTLS_DECRYPT) == 0;
  std::vector<unsigned char> plain(record), sealed(record + kTagLen), opened(record);
  for (size_t i = 0; i < record; ++i) plain[i] = static_cast<unsigned char>(i * 31 + 7);
  unsigned char iv[12] = {0};
  unsigned char add[kAddLen] = {0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                23,
                                3,
                                3,
                                static_cast<unsigned char>(record >> 8),
                                static_cast<unsigned char>(record & 0xff)};
  double seal_mbps = 0, open_mbps = 0;
  if (ok) {
    // Seal: a fresh nonce per record, as the record layer does.
    uint64_t seq = 0, bytes = 0;
    size_t olen = 0;
    auto t0 = Clock::now();
    double el = 0;
    while (ok) {
      for (int k = 0; k < 64 && ok; ++k, ++seq) {
        put_seq(iv + 4, seq);
        put_seq(add, seq);
        ok = mbedtls_cipher_auth_encrypt_ext(&enc, iv, s.iv_len, add, kAddLen, plain.data(), record,
                                             sealed.data(), sealed.size(), &olen, kTagLen) == 0;
        bytes += record;
      }
      el = seconds_since(t0);
      if (el >= secs) break;
    }
    seal_mbps = static_cast<double>(bytes) / el / 1e6;
  }
  if (ok) {
    // Open one sealed record over and over (same nonce and additional data
    // it was sealed with), so every call verifies its tag for real.
    put_seq(iv + 4, 1);
    put_seq(add, 1);
    size_t olen = 0;
    ok = mbedtls_cipher_auth_encrypt_ext(&enc, iv, s.iv_len, add, kAddLen, plain.data(), record,
                                         sealed.data(), sealed.size(), &olen, kTagLen) == 0;
    uint64_t bytes = 0;
    auto t0 = Clock::now();
    double el = 0;
    while (ok) {
      for (int k = 0; k < 64 && ok; ++k) {
        ok =
            mbedtls_cipher_auth_decrypt_ext(&dec, iv, s.iv_len, add, kAddLen, sealed.data(), record + kTagLen,
                                            opened.data(), opened.size(), &olen, kTagLen) == 0 &&
            olen == record;
        bytes += record;
      }
      el = seconds_since(t0);
      if (el >= secs) break;
    }
    if (ok && std::memcmp(opened.data(), plain.data(), record) != 0) ok = false;
    open_mbps = static_cast<double>(bytes) / el / 1e6;
  }
  mbedtls_cipher_free(&enc);
  mbedtls_cipher_free(&dec);
  if (!ok) {
    std::fprintf(stderr, "cipher_speed: %s: an mbedTLS call failed\n", s.name);
    return false;
  }
  const double gib = 1073741824.0 / 1e6;  // GiB in MB
  std::printf("suite=%s record=%zu seal_MBps=%.1f open_MBps=%.1f seal_s_per_GiB=%.4f open_s_per_GiB=%.4f\n",
              s.name, record, seal_mbps, open_mbps, gib / seal_mbps, gib / open_mbps);
  std::fflush(stdout);
  return true;
}

void usage() {
  std::fprintf(stderr, "usage: cipher_speed [--seconds S] [--record BYTES] [--suite NAME]...\n  suites:");
  for (const auto& s : kSuites) std::fprintf(stderr, " %s", s.name);
  std::fprintf(stderr, "\n");
}

}  // namespace

int main(int argc, char** argv) {
  double secs = 2.0;
  size_t record = 16384;
  std::vector<const Suite*> want;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--seconds" && v) {
      secs = std::atof(v);
      ++i;
    } else if (a == "--record" && v) {
      record = static_cast<size_t>(std::strtoul(v, nullptr, 10));
      ++i;
    } else if (a == "--suite" && v) {
      const Suite* found = nullptr;
      for (const auto& s : kSuites)
        if (std::strcmp(s.name, v) == 0) found = &s;
      if (found == nullptr) {
        std::fprintf(stderr, "cipher_speed: unknown suite %s\n", v);
        usage();
        return 1;
      }
      want.push_back(found);
      ++i;
    } else {
      usage();
      return a == "-h" || a == "--help" ? 0 : 2;
    }
  }
  if (secs <= 0 || record == 0 || record > 16384) {
    std::fprintf(stderr, "cipher_speed: need --seconds > 0 and 0 < --record <= 16384\n");
    return 2;
  }
  if (want.empty())
    for (const auto& s : kSuites) want.push_back(&s);
  bool ok = true;
  for (const Suite* s : want) ok = run_suite(*s, record, secs) && ok;
  return ok ? 0 : 1;
}
