// The two SHA-256 digests a stored object needs, from one pass over its
// bytes: the whole object's (checked against the digest it is named by) and
// each piece's (what peers verify a piece against). A miss used to hash
// every byte twice, a third of the owner's CPU. On CPUs with the x86 SHA
// extensions both hashes advance together block by block and share each
// block's message schedule, so the second costs a fraction of the first;
// elsewhere two libcrypto contexts do the same work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/task/store.h"

namespace shoal::task {

class PieceHasher {
 public:
  // piece_size > 0. The one-pass path needs a multiple of 64 (every size
  // piece_size_for() picks is); any other size takes the libcrypto path.
  explicit PieceHasher(uint32_t piece_size);
  ~PieceHasher();
  PieceHasher(const PieceHasher&) = delete;
  PieceHasher& operator=(const PieceHasher&) = delete;

  void update(const void* data, size_t n);
  // Ends both hashes: the whole object's digest is returned, and the last
  // piece (if any byte of it came) joins pieces(). Call once.
  Sha256 finish();
  const std::vector<Sha256>& pieces() const { return pieces_; }

  // True when this process uses the one-pass path.
  static bool one_pass_available();
  // Tests: force the libcrypto path for hashers made afterwards.
  static void force_libcrypto_for_test(bool on);

 private:
  void blocks(const uint8_t* p, size_t nblocks);  // never crosses a piece end
  void end_piece(size_t tail_len, const uint8_t* tail);
  void portable_update(const uint8_t* p, size_t n);

  uint32_t piece_size_;
  bool one_pass_;
  std::vector<Sha256> pieces_;
  // One-pass state: both chaining values, bytes hashed in whole blocks
  // (object and current piece) and a partial block.
  uint32_t whole_h_[8];
  uint32_t piece_h_[8];
  uint64_t whole_len_ = 0, piece_len_ = 0;
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  // libcrypto path (EVP_MD_CTX*).
  void* whole_ctx_ = nullptr;
  void* piece_ctx_ = nullptr;
};

}  // namespace shoal::task
