// HotPieces (verified pieces kept in memory) and util::BufferPool (the
// buffers they come in and go back to).
#include <string>
#include <vector>

#include "../cmocka_cpp.h"
#include "shoal/obs/metrics.h"
#include "shoal/p2p/hot_pieces.h"
#include "shoal/util/buffer_pool.h"

namespace {

using shoal::p2p::HotPieces;
using shoal::util::BufferPool;

const std::string kA(64, 'a'), kB(64, 'b');

HotPieces::Data piece(size_t n, char c) { return HotPieces::wrap(std::string(n, c)); }

int64_t gauge() {
  for (auto& [k, v] : shoal::obs::metrics().snapshot())
    if (k == "shoal_p2p_piece_memory_bytes") return static_cast<int64_t>(v);
  return -1;
}

// Pinned pieces stay whatever the budget; written ones go oldest first.
void test_pinned_then_evicted(void**) {
  int64_t g0 = gauge() < 0 ? 0 : gauge();
  {
    HotPieces h(3000);
    h.put(kA, 0, piece(1000, '0'));
    h.put(kA, 1, piece(1000, '1'));
    h.put(kA, 2, piece(1000, '2'));
    h.put(kA, 3, piece(1000, '3'));  // over budget, but all pinned
    assert_int_equal(h.pieces(), 4);
    assert_int_equal(h.bytes(), 4000);
    assert_int_equal(h.pinned_bytes(), 4000);
    assert_int_equal(gauge() - g0, 4000);
    h.written(kA, 2);  // evictable and over budget: goes at once
    assert_null(h.get(kA, 2).get());
    assert_int_equal(h.pieces(), 3);
    h.written(kA, 0);
    h.written(kA, 1);  // 3000 within budget: both stay
    assert_non_null(h.get(kA, 0).get());
    assert_non_null(h.get(kA, 1).get());
    h.put(kA, 4, piece(1000, '4'));  // the oldest written (0) makes room
    assert_null(h.get(kA, 0).get());
    assert_non_null(h.get(kA, 1).get());
    assert_non_null(h.get(kA, 3).get());  // still pinned
    assert_int_equal(h.pinned_bytes(), 2000);
    h.written(kA, 1);  // twice: no change
    assert_int_equal(h.bytes(), 3000);
    assert_int_equal((*h.get(kA, 4))[999], '4');
  }
  assert_int_equal(gauge() - g0, 0);  // gone with the store
}

// A reference taken before eviction keeps the bytes; drop_task forgets one
// task only; a budget of 0 keeps pieces only until written.
void test_refs_drop_and_zero_budget(void**) {
  HotPieces h(0);
  h.put(kA, 0, piece(100, 'x'));
  h.put(kB, 0, piece(100, 'y'));
  h.put(kB, 1, piece(100, 'z'));
  HotPieces::Data held = h.get(kA, 0);
  h.written(kA, 0);
  assert_null(h.get(kA, 0).get());
  assert_int_equal(held->size(), 100);
  assert_int_equal((*held)[0], 'x');
  h.put(kA, 1, piece(100, 'w'));
  h.drop_task(kB);
  assert_null(h.get(kB, 0).get());
  assert_null(h.get(kB, 1).get());
  assert_non_null(h.get(kA, 1).get());
  assert_int_equal(h.bytes(), 100);
  assert_int_equal(h.pinned_bytes(), 100);
  h.put(kA, 1, piece(50, 'v'));  // replaced, not added
  assert_int_equal(h.bytes(), 50);
  assert_int_equal(h.pieces(), 1);
}

// The pool hands back the same memory, smallest fit first, keeps only
// large buffers, and stays within its bounds.
void test_buffer_pool(void**) {
  BufferPool pool;
  std::string a = pool.take(1u << 20);
  assert_true(a.capacity() >= 1u << 20);
  assert_int_equal(a.size(), 0);
  a.append(1000, 'q');
  const char* where = a.data();
  pool.give_back(std::move(a));
  assert_int_equal(pool.buffers(), 1);
  std::string b = pool.take(512u << 10);  // fits: the same buffer, emptied
  assert_ptr_equal(b.data(), where);
  assert_int_equal(b.size(), 0);
  assert_int_equal(pool.buffers(), 0);
  std::string big = pool.take(4u << 20);  // nothing fits: new
  pool.give_back(std::move(b));
  pool.give_back(std::move(big));
  std::string pick = pool.take(2u << 20);  // the smallest that fits: the 4 MiB one
  assert_true(pick.capacity() >= 4u << 20);
  pool.give_back(std::move(pick));
  std::string small(100, 's');
  pool.give_back(std::move(small));  // below kMinKept: freed
  assert_int_equal(pool.buffers(), 2);
  std::vector<std::string> many;
  for (size_t i = 0; i < BufferPool::kMaxBuffers + 4; ++i) many.push_back(pool.take(BufferPool::kMinKept));
  for (auto& m : many) pool.give_back(std::move(m));
  assert_int_equal(pool.buffers(), BufferPool::kMaxBuffers);
  assert_true(pool.bytes() <= BufferPool::kMaxBytes);
  std::string huge;
  huge.reserve(BufferPool::kMaxBytes + 1);
  pool.give_back(std::move(huge));  // over the byte bound: freed
  assert_true(pool.bytes() <= BufferPool::kMaxBytes);
  pool.clear();
  assert_int_equal(pool.buffers(), 0);
  assert_int_equal(pool.bytes(), 0);
}

// A wrapped piece's buffer returns to this thread's pool when its last
// reference goes.
void test_wrap_returns_buffer(void**) {
  BufferPool& pool = BufferPool::local();
  while (pool.buffers() > 0) (void)pool.take(0);
  std::string s = pool.take(1u << 20);
  s.append(10, 'p');
  const char* where = s.data();
  {
    HotPieces::Data d = HotPieces::wrap(std::move(s));
    HotPieces::Data copy = d;
    assert_int_equal(pool.buffers(), 0);
  }
  assert_int_equal(pool.buffers(), 1);
  std::string again = pool.take(1u << 20);
  assert_ptr_equal(again.data(), where);
}

}  // namespace

int run_hot_pieces_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pinned_then_evicted),
      cmocka_unit_test(test_refs_drop_and_zero_budget),
      cmocka_unit_test(test_buffer_pool),
      cmocka_unit_test(test_wrap_returns_buffer),
  };
  return cmocka_run_group_tests_name("p2p hot pieces", tests, nullptr, nullptr);
}
