// PosMap against std::unordered_map as the oracle: random inserts,
// replacements and erases (backward-shift deletion across probe runs that
// wrap around the table's end), growth from empty, and lookups of absent
// keys.
#include <cstdint>
#include <random>
#include <unordered_map>

#include "../cmocka_cpp.h"
#include "sched_test.h"
#include "shoal/scheduler/pos_map.h"

namespace shoal::scheduler::test {
namespace {

void check_same(const PosMap& m, const std::unordered_map<uint32_t, uint32_t>& ref, uint32_t key_space) {
  assert_int_equal(m.size(), ref.size());
  for (uint32_t k = 0; k < key_space; ++k) {
    auto it = ref.find(k);
    uint32_t want = it == ref.end() ? PosMap::kAbsent : it->second;
    if (m.find(k) != want) fail_msg("key %u: got %u, want %u", k, m.find(k), want);
  }
}

void test_pos_map_against_oracle(void**) {
  // Small key spaces keep the table dense with long, wrapping probe runs;
  // the large one spreads keys like peer slots do.
  for (uint32_t key_space : {7u, 64u, 1000u, 50000u}) {
    std::mt19937 rng(key_space);
    PosMap m;
    std::unordered_map<uint32_t, uint32_t> ref;
    assert_int_equal(m.find(3), PosMap::kAbsent);
    m.erase(3);  // on an empty map: nothing
    for (int op = 0; op < 60000; ++op) {
      uint32_t k = static_cast<uint32_t>(rng() % key_space);
      if (rng() % 3 == 0) {
        m.erase(k);
        ref.erase(k);
      } else {
        uint32_t v = static_cast<uint32_t>(rng());
        if (v == PosMap::kAbsent) v = 0;
        m.set(k, v);
        ref[k] = v;
      }
      if (op % 5000 == 0) check_same(m, ref, key_space);
    }
    check_same(m, ref, key_space);
    // Empty it completely, then use it again.
    for (uint32_t k = 0; k < key_space; ++k) {
      m.erase(k);
      ref.erase(k);
    }
    check_same(m, ref, key_space);
    m.set(key_space - 1, 42);
    assert_int_equal(m.find(key_space - 1), 42);
    assert_int_equal(m.size(), 1);
  }
}

}  // namespace

int run_pos_map_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pos_map_against_oracle),
  };
  return cmocka_run_group_tests_name("scheduler_pos_map", tests, nullptr, nullptr);
}

}  // namespace shoal::scheduler::test
