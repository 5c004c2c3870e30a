// Flat open-addressing maps for the scheduler's per-request lookups:
// linear probing in one array, at most half full, removals by backward
// shift (no tombstones). Header-only; not thread-safe (the scheduler's loop
// owns its maps).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace shoal::scheduler {

namespace detail {
// During a backward-shift removal with the hole at i: may the entry at j,
// whose home slot is h, stay where it is? Yes when h lies cyclically in
// (i, j]: its probe from h reaches j without passing the hole. Shared by
// both maps (their unit test exercises it through PosMap's dense tables).
inline bool stays_after_hole(size_t i, size_t j, size_t h) {
  return i <= j ? (i < h && h <= j) : (i < h || h <= j);
}
}  // namespace detail

// Peer slot -> index in a task's holder list, for every announce and
// parents call: open addressing with linear probing in one flat array of
// 8-byte slots, at most half full, removals by backward shift (no
// tombstones). The node-based map it replaces cost two cache misses a
// lookup (bucket, then node) across a thousand tasks of ~2,000 holders.
class PosMap {
 public:
  static constexpr uint32_t kAbsent = UINT32_MAX;

  // The index stored for key, or kAbsent.
  uint32_t find(uint32_t key) const {
    if (slots_.empty()) return kAbsent;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].value;
      if (slots_[i].key == kAbsent) return kAbsent;
    }
  }
  // Inserts or replaces. key != kAbsent.
  void set(uint32_t key, uint32_t value) {
    if ((count_ + 1) * 2 > slots_.size()) grow();
    size_t i = home(key);
    while (slots_[i].key != kAbsent && slots_[i].key != key) i = (i + 1) & mask_;
    if (slots_[i].key == kAbsent) ++count_;
    slots_[i] = Slot{key, value};
  }
  void erase(uint32_t key) {
    if (slots_.empty()) return;
    size_t i = home(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == kAbsent) return;
      i = (i + 1) & mask_;
    }
    // Move later entries of the probe run back into the hole unless they
    // are reachable from their home without it.
    for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      if (slots_[j].key == kAbsent) break;
      if (detail::stays_after_hole(i, j, home(slots_[j].key))) continue;
      slots_[i] = slots_[j];
      i = j;
    }
    slots_[i] = Slot{};
    --count_;
  }
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint32_t key = kAbsent, value = 0;
  };
  size_t home(uint32_t key) const {
    return static_cast<size_t>((uint64_t{key} * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    size_t n = old.empty() ? 16 : old.size() * 2;
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(n));
    count_ = 0;
    for (const Slot& s : old)
      if (s.key != kAbsent) set(s.key, s.value);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  unsigned shift_ = 64;
};

// Peer id -> slot. The ids live in the slots' own records: the table keeps
// a 64-bit hash of each id and its slot, so a lookup is a probe of the flat
// array and one comparison with the record's copy (key_of(slot) returns
// it), where the node-based map cost a bucket, a node and the node's string.
class IdMap {
 public:
  static constexpr uint32_t kAbsent = UINT32_MAX;

  template <typename KeyOf>
  uint32_t find(std::string_view id, const KeyOf& key_of) const {
    size_t i = index_of(id, key_of);
    return i == kNowhere ? kAbsent : slots_[i].slot;
  }
  // id must not be in the map yet; slot != kAbsent.
  void insert(std::string_view id, uint32_t slot) {
    if ((count_ + 1) * 2 > slots_.size()) grow();
    place(hash(id), slot);
    ++count_;
  }
  // Call while key_of still returns the id for its slot.
  template <typename KeyOf>
  void erase(std::string_view id, const KeyOf& key_of) {
    size_t i = index_of(id, key_of);
    if (i == kNowhere) return;
    for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      if (slots_[j].slot == kAbsent) break;
      if (detail::stays_after_hole(i, j, home(slots_[j].hash))) continue;
      slots_[i] = slots_[j];
      i = j;
    }
    slots_[i] = Slot{};
    --count_;
  }
  size_t size() const { return count_; }

 private:
  static constexpr size_t kNowhere = SIZE_MAX;
  struct Slot {
    uint64_t hash = 0;
    uint32_t slot = kAbsent;
  };
  static uint64_t hash(std::string_view id) { return std::hash<std::string_view>{}(id); }
  size_t home(uint64_t h) const { return static_cast<size_t>((h * 0x9E3779B97F4A7C15ull) >> shift_) & mask_; }
  template <typename KeyOf>
  size_t index_of(std::string_view id, const KeyOf& key_of) const {
    if (slots_.empty()) return kNowhere;
    const uint64_t h = hash(id);
    for (size_t i = home(h);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.slot == kAbsent) return kNowhere;
      if (s.hash == h && key_of(s.slot) == id) return i;
    }
  }
  void place(uint64_t h, uint32_t slot) {
    size_t i = home(h);
    while (slots_[i].slot != kAbsent) i = (i + 1) & mask_;
    slots_[i] = Slot{h, slot};
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    size_t n = old.empty() ? 16 : old.size() * 2;
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(n));
    for (const Slot& s : old)
      if (s.slot != kAbsent) place(s.hash, s.slot);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  unsigned shift_ = 64;
};

}  // namespace shoal::scheduler
