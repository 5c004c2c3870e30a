// Whole-piece byte buffers reused within one thread. A fresh allocation of
// a few MiB is mmapped by malloc: every 4 KiB page of it faults on first
// touch, and freeing it unmaps it again (with a TLB shootdown when other
// threads of the process run). A P2P peer receives every byte of a task
// into such a buffer, one piece at a time, so without reuse those faults
// cost more than copying the bytes. Header-only; each thread has its own
// pool, so a buffer goes back on the thread that will take it again (the
// event loop that receives pieces).
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace shoal::util {

class BufferPool {
 public:
  // Buffers below this are cheap from malloc; they are not kept.
  static constexpr size_t kMinKept = 256u << 10;
  // At most this many buffers and bytes of capacity wait in one pool.
  static constexpr size_t kMaxBuffers = 16;
  static constexpr size_t kMaxBytes = 48u << 20;

  // An empty string with at least capacity bytes reserved: the smallest
  // pooled one that fits, else a new one.
  std::string take(size_t capacity) {
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].capacity() >= capacity &&
          (best == free_.size() || free_[i].capacity() < free_[best].capacity()))
        best = i;
    std::string s;
    if (best != free_.size()) {
      s = std::move(free_[best]);
      free_[best] = std::move(free_.back());
      free_.pop_back();
      bytes_ -= s.capacity();
      s.clear();
    }
    s.reserve(capacity);
    return s;
  }

  // Keeps s for a later take() when it is large and the pool has room;
  // otherwise it is freed here. s is left empty either way.
  void give_back(std::string&& s) {
    std::string mine = std::move(s);
    s.clear();
    size_t cap = mine.capacity();
    if (cap < kMinKept || free_.size() >= kMaxBuffers || bytes_ + cap > kMaxBytes) return;
    bytes_ += cap;
    free_.push_back(std::move(mine));
  }

  // Frees every pooled buffer (the thread's work is done for now).
  void clear() {
    std::vector<std::string>().swap(free_);
    bytes_ = 0;
  }

  size_t buffers() const { return free_.size(); }
  size_t bytes() const { return bytes_; }

  // This thread's pool.
  static BufferPool& local() {
    thread_local BufferPool pool;
    return pool;
  }

 private:
  std::vector<std::string> free_;
  size_t bytes_ = 0;
};

}  // namespace shoal::util
