// The backward-shift rule on its own, then PosMap and IdMap against
// std::unordered_map as the oracle: random
// inserts, replacements and erases (backward-shift deletion across probe
// runs that wrap around the table's end), growth from empty, and lookups of
// absent keys.
#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "../cmocka_cpp.h"
#include "sched_test.h"
#include "shoal/scheduler/flat_maps.h"

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

// The removal rule itself, both sides of the table's end.
void test_stays_after_hole(void**) {
  using detail::stays_after_hole;
  // Hole at 3, entry at 6: it stays only if its home is 4, 5 or 6.
  for (size_t h = 0; h < 16; ++h) assert_int_equal(stays_after_hole(3, 6, h), h >= 4 && h <= 6);
  // Hole at 14, entry wrapped to 1: it stays if its home is 15, 0 or 1.
  for (size_t h = 0; h < 16; ++h) assert_int_equal(stays_after_hole(14, 1, h), h == 15 || h <= 1);
}

// Ids live in records indexed by slot, as peers do in the scheduler: a
// slot freed by an erase is reused by a later insert.
void test_id_map_against_oracle(void**) {
  for (uint32_t id_space : {5u, 15u, 31u, 300u, 20000u}) {
    std::mt19937 rng(id_space + 1);
    IdMap m;
    std::vector<std::string> records;
    std::vector<uint32_t> free_slots;
    std::unordered_map<std::string, uint32_t> ref;
    auto key_of = [&](uint32_t slot) -> const std::string& { return records[slot]; };
    auto check = [&] {
      assert_int_equal(m.size(), ref.size());
      for (uint32_t n = 0; n < id_space; ++n) {
        std::string id = "peer-" + std::to_string(n);
        auto it = ref.find(id);
        uint32_t want = it == ref.end() ? IdMap::kAbsent : it->second;
        if (m.find(id, key_of) != want) fail_msg("%s: got %u, want %u", id.c_str(), m.find(id, key_of), want);
      }
    };
    assert_int_equal(m.find("nobody", key_of), IdMap::kAbsent);
    for (int op = 0; op < 30000; ++op) {
      std::string id = "peer-" + std::to_string(rng() % id_space);
      auto it = ref.find(id);
      if (it != ref.end()) {
        if (rng() % 2 == 0) {
          m.erase(id, key_of);
          free_slots.push_back(it->second);
          ref.erase(it);
        }
        continue;
      }
      uint32_t slot;
      if (!free_slots.empty()) {
        slot = free_slots.back();
        free_slots.pop_back();
        records[slot] = id;
      } else {
        slot = static_cast<uint32_t>(records.size());
        records.push_back(id);
      }
      m.insert(id, slot);
      ref[id] = slot;
      if (op % (id_space < 100 ? 7 : 3000) == 0) check();
    }
    check();
  }
}

}  // namespace

int run_flat_map_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stays_after_hole),
      cmocka_unit_test(test_pos_map_against_oracle),
      cmocka_unit_test(test_id_map_against_oracle),
  };
  return cmocka_run_group_tests_name("scheduler_flat_maps", tests, nullptr, nullptr);
}

}  // namespace shoal::scheduler::test
