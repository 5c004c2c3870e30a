// A flat uint32 -> uint32 hash map for the scheduler's hot lookups.
// Header-only; not thread-safe (the scheduler's loop owns its maps).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace shoal::scheduler {

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
    // Move later entries of the probe run back into the hole unless their
    // home lies cyclically in (i, j]: then they are reachable already.
    for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      if (slots_[j].key == kAbsent) break;
      size_t h = home(slots_[j].key);
      bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
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

}  // namespace shoal::scheduler
