// Verified pieces kept in memory, so that this peer can pass a piece on as
// soon as its SHA-256 matches, before (and without) reading it back from
// disk. In a swarm most requests for a piece come within a second or two of
// its arrival: serving them from memory takes the disk read, the thread-pool
// round trip and the wait for the write off the path that decides how fast
// a piece spreads.
//
// A piece is pinned from put() until written(): until it is on disk, memory
// is its only copy. Written pieces stay while the byte budget allows, the
// oldest leaving first. Loop-thread only. The data's last reference must
// also go on the loop thread (its buffer returns to the loop's
// util::BufferPool); thread-pool jobs holding Data are deleted in their
// after-work callbacks, which run there.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

namespace shoal::p2p {

class HotPieces {
 public:
  using Data = std::shared_ptr<const std::string>;

  explicit HotPieces(uint64_t budget) : budget_(budget) {}
  ~HotPieces();
  HotPieces(const HotPieces&) = delete;
  HotPieces& operator=(const HotPieces&) = delete;

  // Wraps a piece's bytes (moved in) for put(); when the last reference
  // goes, the buffer returns to this thread's util::BufferPool.
  static Data wrap(std::string&& bytes);

  // Adds (or replaces) a verified piece, pinned.
  void put(const std::string& task, uint32_t index, Data data);
  // The piece is on disk: from now on it may be evicted.
  void written(const std::string& task, uint32_t index);
  // The piece's bytes, or null.
  Data get(const std::string& task, uint32_t index) const;
  // Forgets every piece of a task (a failed download).
  void drop_task(const std::string& task);

  uint64_t bytes() const { return bytes_; }
  uint64_t pinned_bytes() const { return pinned_; }
  size_t pieces() const { return map_.size(); }

 private:
  using Key = std::pair<std::string, uint32_t>;
  struct Entry {
    Data data;
    uint64_t seq = 0;  // 0 while pinned; else the key in evictable_
  };
  void erase(std::map<Key, Entry>::iterator it);
  void trim();

  const uint64_t budget_;
  std::map<Key, Entry> map_;
  std::map<uint64_t, Key> evictable_;  // oldest written first
  uint64_t next_seq_ = 1;
  uint64_t bytes_ = 0, pinned_ = 0;
};

}  // namespace shoal::p2p
