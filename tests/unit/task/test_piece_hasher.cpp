// PieceHasher against libcrypto's one-shot SHA-256: the whole object's and
// every piece's digest, over lengths around block and piece ends and random
// chunkings, on the one-pass path (when this CPU has the SHA extensions)
// and on the libcrypto path.
#include <openssl/evp.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "shoal/task/piece_hasher.h"
#include "shoal/task/task_id.h"
#include "shoal/util/hex.h"

// Last: cmocka.h defines macros (fail, skip) that clash with C++ names.
#include "../cmocka_cpp.h"

namespace {

using shoal::task::PieceHasher;
using shoal::task::Sha256;

Sha256 one_shot(const uint8_t* p, size_t n) {
  Sha256 d{};
  unsigned len = 0;
  assert_int_equal(EVP_Digest(p, n, d.data(), &len, shoal::task::sha256_md(), nullptr), 1);
  return d;
}

// Feeds data in random chunk sizes (1 byte up to 3 pieces) and compares.
void check(const std::vector<uint8_t>& data, uint32_t piece_size, std::mt19937& rng) {
  PieceHasher h(piece_size);
  size_t at = 0;
  std::uniform_int_distribution<size_t> chunk(0, 3 * static_cast<size_t>(piece_size) + 130);
  while (at < data.size()) {
    size_t n = rng() % 4 == 0 ? 1 + rng() % 70 : chunk(rng);
    if (n > data.size() - at) n = data.size() - at;
    h.update(data.data() + at, n);
    at += n;
  }
  Sha256 whole = h.finish();
  if (whole != one_shot(data.data(), data.size()))
    fail_msg("whole digest differs: length %zu, piece size %u", data.size(), piece_size);
  size_t want_pieces = (data.size() + piece_size - 1) / piece_size;
  if (h.pieces().size() != want_pieces)
    fail_msg("%zu piece digests for length %zu, piece size %u", h.pieces().size(), data.size(), piece_size);
  for (size_t i = 0; i < want_pieces; i++) {
    size_t off = i * piece_size, n = data.size() - off < piece_size ? data.size() - off : piece_size;
    if (h.pieces()[i] != one_shot(data.data() + off, n))
      fail_msg("piece %zu differs: length %zu, piece size %u", i, data.size(), piece_size);
  }
}

void sweep(std::mt19937& rng) {
  for (uint32_t ps : {64u, 128u, 100u, 4096u, 65536u}) {
    std::vector<size_t> lengths = {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129};
    for (size_t k : {1u, 2u, 3u})
      for (long d : {-65L, -64L, -56L, -55L, -1L, 0L, 1L, 55L, 56L, 64L})
        if (static_cast<long>(k * ps) + d >= 0)
          lengths.push_back(static_cast<size_t>(static_cast<long>(k * ps) + d));
    for (int i = 0; i < 6; i++) lengths.push_back(rng() % (5 * ps + 1000));
    for (size_t len : lengths) {
      std::vector<uint8_t> data(len);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      check(data, ps, rng);
    }
  }
}

void test_known_answers(void**) {
  // FIPS 180-2 examples and the empty message.
  struct {
    std::string msg, hex;
  } cases[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  for (bool forced : {false, true}) {
    PieceHasher::force_libcrypto_for_test(forced);
    for (auto& c : cases) {
      PieceHasher h(64);
      h.update(c.msg.data(), c.msg.size());
      Sha256 d = h.finish();
      assert_string_equal(shoal::util::hex(d.data(), d.size()).c_str(), c.hex.c_str());
      // Under 64 bytes the single piece is the whole message.
      if (!c.msg.empty()) assert_memory_equal(h.pieces().at(0).data(), d.data(), 32);
    }
  }
  PieceHasher::force_libcrypto_for_test(false);
}

void test_one_pass_matches_libcrypto(void**) {
  if (!PieceHasher::one_pass_available()) {
    print_message("skipped: this CPU has no SHA extensions; only the libcrypto path runs here\n");
    return;
  }
  std::mt19937 rng(7);
  sweep(rng);
}

void test_libcrypto_path(void**) {
  PieceHasher::force_libcrypto_for_test(true);
  std::mt19937 rng(11);
  sweep(rng);
  PieceHasher::force_libcrypto_for_test(false);
}

// One byte at a time across several pieces: every partial-block path.
void test_byte_at_a_time(void**) {
  std::mt19937 rng(3);
  std::vector<uint8_t> data(64 * 9 + 31);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  PieceHasher h(192);
  for (uint8_t b : data) h.update(&b, 1);
  Sha256 whole = h.finish();
  assert_memory_equal(whole.data(), one_shot(data.data(), data.size()).data(), 32);
  assert_int_equal(h.pieces().size(), 4);
  assert_memory_equal(h.pieces()[3].data(), one_shot(data.data() + 576, 31).data(), 32);
}

}  // namespace

// Run from test_store.cpp's main: one binary per module.
int run_piece_hasher_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_known_answers),
      cmocka_unit_test(test_one_pass_matches_libcrypto),
      cmocka_unit_test(test_libcrypto_path),
      cmocka_unit_test(test_byte_at_a_time),
  };
  return cmocka_run_group_tests_name("piece hasher", tests, nullptr, nullptr);
}
