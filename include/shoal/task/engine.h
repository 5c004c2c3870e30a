// The task engine's shared state: the table of tasks being downloaded and
// the store of complete ones. A task is fetched once per host however many
// clients ask for it: the first client's connection fetches it from the
// origin and writes it through the store (the "owner"); every client,
// the owner's included, is served from the task's file as it grows. The last
// bytes are held back until the whole object has been verified against its
// digest, so no client ever sees a complete response that failed.
//
// Threads: ActiveTask and Engine are used from every event loop and from the
// thread pool; every member function is thread-safe. Notifications run the
// subscribers' callbacks on the calling thread, outside the lock; callers
// hand them to their own loop (Worker::post).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "shoal/task/store.h"

namespace shoal::task {

// Bytes at the end of an object that readers get only after verification.
constexpr uint64_t kHoldBack = 64 * 1024;

class ActiveTask {
 public:
  enum class Phase { Starting, Streaming, Complete, Failed };
  using Headers = std::vector<std::pair<std::string, std::string>>;
  struct View {
    Phase phase = Phase::Starting;
    uint64_t length = 0;
    uint64_t stored = 0;    // contiguous bytes from offset 0 on disk
    uint64_t readable = 0;  // what a reader may send now (hold-back applied)
    // Every byte is stored and matches the digest (or, without a digest,
    // was read in full): readers may finish before the store commits.
    bool verified = false;
    std::string failure;
    // Bytes by where they came from (the owner reports them as they are
    // stored): the origin, or other peers.
    uint64_t bytes_origin = 0, bytes_peer = 0;
  };

  ActiveTask(std::string id, bool by_digest);
  ~ActiveTask();
  ActiveTask(const ActiveTask&) = delete;
  ActiveTask& operator=(const ActiveTask&) = delete;

  const std::string& id() const { return id_; }
  bool by_digest() const { return by_digest_; }
  // Unix seconds when the task was created (for `shoalctl tasks`).
  int64_t started() const { return started_; }
  // The URL it was created for, without query or fragment (they carry
  // signatures), for `shoalctl tasks`; "" until set.
  void set_url(const std::string& url);
  std::string url() const;
  View view() const;
  Headers headers() const;
  // The data file (shared by readers, pread only); -1 before Streaming.
  int fd() const;

  // Owner side.
  void set_streaming(uint64_t length, Headers headers, int fd);  // takes fd
  void add_stored(uint64_t n);
  // Counts stored bytes by source; no notification (readers wait on
  // add_stored).
  void add_source_bytes(uint64_t origin, uint64_t peer);
  // Thread-safe, like the other setters: the verifying job calls it from
  // the thread pool before the commit's fsync, so clients do not wait on
  // the disk.
  void set_verified();
  void set_complete();
  // passthrough: the origin's answer was not a storable object (an error
  // status, no length): waiting clients ask the origin themselves. Otherwise
  // the download failed and must not be relayed unchecked.
  // prefix_ok: the bytes already on disk are the origin's (the download
  // stopped, or the disk filled) rather than wrong (a digest mismatch), so a
  // reader that has some of them may fetch the rest with a Range request.
  void set_failed(const std::string& why, bool passthrough = false, bool prefix_ok = false);
  bool passthrough() const;
  bool prefix_ok() const;

  // Readers: fn runs on every change (on whichever thread made it).
  uint64_t subscribe(std::function<void()> fn);
  void unsubscribe(uint64_t token);

 private:
  void notify();
  const std::string id_;
  const bool by_digest_;
  const int64_t started_;
  mutable std::mutex mu_;
  std::string url_;
  uint64_t bytes_origin_ = 0, bytes_peer_ = 0;
  Phase phase_ = Phase::Starting;
  uint64_t length_ = 0, stored_ = 0;
  Headers headers_;
  int fd_ = -1;
  std::string failure_;
  bool passthrough_ = false;
  bool prefix_ok_ = false;
  bool verified_ = false;
  uint64_t next_token_ = 1;
  std::map<uint64_t, std::function<void()>> subs_;
};

// Bytes of small stored objects (manifests, configs) kept in memory, so a
// hit on one costs no open(2), no read through the thread pool and no
// close(2). LRU, bounded in bytes; thread-safe.
class SmallCache {
 public:
  static constexpr uint64_t kMaxObject = 64 * 1024;
  explicit SmallCache(uint64_t capacity = 64u << 20) : capacity_(capacity) {}
  std::shared_ptr<const std::string> get(const std::string& id);
  void put(const std::string& id, std::shared_ptr<const std::string> bytes);
  void erase(const std::string& id);

 private:
  using Entry = std::pair<std::string, std::shared_ptr<const std::string>>;
  std::mutex mu_;
  uint64_t capacity_, bytes_ = 0;
  std::list<Entry> lru_;  // front = most recent
  std::map<std::string, std::list<Entry>::iterator> index_;
};

class Engine {
 public:
  explicit Engine(std::unique_ptr<Store> store) : store_(std::move(store)) {}
  Store& store() { return *store_; }
  SmallCache& small() { return small_; }
  // The task being downloaded under id; created (Starting) when there is
  // none, then *created is true and the caller is its owner.
  std::shared_ptr<ActiveTask> acquire(const std::string& id, bool by_digest, bool* created);
  // Only the owner calls this, once its task is Complete or Failed, so later
  // requests go to the store (or start afresh).
  void retire(const std::shared_ptr<ActiveTask>& t);
  size_t active() const;
  // The tasks being downloaded now, ordered by id.
  std::vector<std::shared_ptr<ActiveTask>> active_tasks() const;

  // Where a stored task's bytes came from, counted since the daemon started
  // (the store keeps no such history): what its download took from the
  // origin and from peers (recorded when a Complete task is retired), and
  // how often and how many bytes it was served again from the store.
  struct Sources {
    bool fetched = false;  // downloaded since the start: origin and peer are known
    uint64_t origin = 0, peer = 0;
    uint64_t reuse_count = 0, reuse_bytes = 0;
  };
  void note_reuse(const std::string& id, uint64_t bytes);
  bool sources(const std::string& id, Sources* out) const;
  // GC removed the task.
  void forget(const std::string& id);

 private:
  static constexpr size_t kMaxSources = 1 << 20;  // entries; beyond, the oldest ids are dropped
  std::unique_ptr<Store> store_;
  SmallCache small_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ActiveTask>> active_;
  std::map<std::string, Sources> sources_;  // under mu_
  std::list<std::string> sources_order_;    // insertion order, for the bound
};

}  // namespace shoal::task
