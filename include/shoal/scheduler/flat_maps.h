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
// (i, j]: its probe from h reaches j without passing the hole.
inline bool stays_after_hole(size_t i, size_t j, size_t h) {
  return i <= j ? (i < h && h <= j) : (i < h || h <= j);
}

// The table under both maps: a power-of-two array of Slot, where
// Slot::empty() marks a free slot and Slot::mix() is the 64-bit value whose
// golden-ratio product picks an entry's home slot.
template <typename Slot>
class FlatTable {
 public:
  size_t size() const { return count_; }

 protected:
  size_t home(uint64_t mix) const {
    return static_cast<size_t>((mix * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }
  size_t next(size_t i) const { return (i + 1) & mask_; }
  // Room for one more entry: doubles the table (16 slots at first) rather
  // than let it get over half full.
  void reserve_one() {
    if ((count_ + 1) * 2 > slots_.size()) grow();
  }
  // Puts s into the first free slot of its probe run; its key must be
  // absent. Does not count it.
  void place(const Slot& s) {
    size_t i = home(s.mix());
    while (!slots_[i].empty()) i = next(i);
    slots_[i] = s;
  }
  // Removes the entry at i: later entries of its probe run move back into
  // the hole unless they are reachable from their home without it.
  void remove_at(size_t i) {
    for (size_t j = next(i); !slots_[j].empty(); j = next(j)) {
      if (stays_after_hole(i, j, home(slots_[j].mix()))) continue;
      slots_[i] = slots_[j];
      i = j;
    }
    slots_[i] = Slot{};
    --count_;
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;

 private:
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    size_t n = old.empty() ? 16 : old.size() * 2;
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(n));
    for (const Slot& s : old)
      if (!s.empty()) place(s);
  }
  unsigned shift_ = 64;
};

struct PosSlot {
  uint32_t key = UINT32_MAX, value = 0;
  bool empty() const { return key == UINT32_MAX; }
  uint64_t mix() const { return key; }
};

struct IdSlot {
  uint64_t hash = 0;
  uint32_t slot = UINT32_MAX;
  bool empty() const { return slot == UINT32_MAX; }
  uint64_t mix() const { return hash; }
};

}  // namespace detail

// Peer slot -> index in a task's holder list, for every announce and
// parents call, in 8-byte slots. The node-based map it replaces cost two
// cache misses a lookup (bucket, then node) across a thousand tasks of
// ~2,000 holders.
class PosMap : public detail::FlatTable<detail::PosSlot> {
 public:
  static constexpr uint32_t kAbsent = UINT32_MAX;

  // The index stored for key, or kAbsent.
  uint32_t find(uint32_t key) const {
    size_t i = index_of(key);
    return i == kNowhere ? kAbsent : slots_[i].value;
  }
  // Inserts or replaces. key != kAbsent.
  void set(uint32_t key, uint32_t value) {
    size_t i = index_of(key);
    if (i != kNowhere) {
      slots_[i].value = value;
      return;
    }
    reserve_one();
    place(detail::PosSlot{key, value});
    ++count_;
  }
  void erase(uint32_t key) {
    size_t i = index_of(key);
    if (i != kNowhere) remove_at(i);
  }

 private:
  static constexpr size_t kNowhere = SIZE_MAX;
  size_t index_of(uint32_t key) const {
    if (slots_.empty()) return kNowhere;
    for (size_t i = home(key);; i = next(i)) {
      if (slots_[i].key == key) return i;
      if (slots_[i].empty()) return kNowhere;
    }
  }
};

// Peer id -> slot. The ids live in the slots' own records: the table keeps
// a 64-bit hash of each id and its slot, so a lookup is a probe of the flat
// array and one comparison with the record's copy (key_of(slot) returns
// it), where the node-based map cost a bucket, a node and the node's string.
class IdMap : public detail::FlatTable<detail::IdSlot> {
 public:
  static constexpr uint32_t kAbsent = UINT32_MAX;

  template <typename KeyOf>
  uint32_t find(std::string_view id, const KeyOf& key_of) const {
    size_t i = index_of(id, key_of);
    return i == kNowhere ? kAbsent : slots_[i].slot;
  }
  // id must not be in the map yet; slot != kAbsent.
  void insert(std::string_view id, uint32_t slot) {
    reserve_one();
    place(detail::IdSlot{hash(id), slot});
    ++count_;
  }
  // Call while key_of still returns the id for its slot.
  template <typename KeyOf>
  void erase(std::string_view id, const KeyOf& key_of) {
    size_t i = index_of(id, key_of);
    if (i != kNowhere) remove_at(i);
  }

 private:
  static constexpr size_t kNowhere = SIZE_MAX;
  static uint64_t hash(std::string_view id) { return std::hash<std::string_view>{}(id); }
  template <typename KeyOf>
  size_t index_of(std::string_view id, const KeyOf& key_of) const {
    if (slots_.empty()) return kNowhere;
    const uint64_t h = hash(id);
    for (size_t i = home(h);; i = next(i)) {
      const detail::IdSlot& s = slots_[i];
      if (s.empty()) return kNowhere;
      if (s.hash == h && key_of(s.slot) == id) return i;
    }
  }
};

}  // namespace shoal::scheduler
