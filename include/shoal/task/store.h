// The on-disk task store: complete, digest-verified objects ("tasks") under
// the daemon's data dir, downloads in progress, an in-memory index, pinning
// and GC.
//
//   <data_dir>/version                   "1\n"
//   <data_dir>/tasks/<id[0:2]>/<id>/data       the object, byte for byte
//                                   /meta.json  TaskMeta as JSON
//                                   /verified   marker, written last
//   <data_dir>/tmp/<id>.<random>/           one Writer (download in progress)
//
// Crash safety: a task directory only ever appears in tasks/ by one rename
// of a complete, fsynced tmp directory, and counts only once its `verified`
// marker (written and fsynced after the rename) holds the expected text.
// Store::open() deletes tmp/ and every task directory that fails that test,
// so after a crash at any point only fully committed tasks exist.
//
// Threads: every Store function is synchronous (file I/O, fsync) and
// thread-safe; call them from the libuv thread pool, never on an event loop.
// Errors are values: negative errno, plus a message naming the path in *err
// (err may be nullptr). Nothing throws.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace shoal::task {

// Pieces are what peers pass on, each only once verified, so a blob's last
// pieces reach the whole swarm one piece-time per hop after the origin
// sends them. 2 MiB (4 MiB before, Dragonfly's own minimum) brought
// bench/p2p.sh's 128 MiB blob to 8 peers from 1.27-1.31 to 1.23-1.27 T*;
// 1 MiB did as well there but cost a fifth more CPU per byte, which 16
// peers on one 2-core VM felt. Blobs over 1 GiB still get ~500 pieces.
// Peers that cut a task another way form their own swarm at the scheduler
// (scheduler/state.cpp).
constexpr uint32_t kMinPieceSize = 2u << 20;
constexpr uint32_t kMaxPieceSize = 64u << 20;
constexpr int kStoreVersion = 1;

using Sha256 = std::array<uint8_t, 32>;

struct TaskMeta {
  std::string id;      // 64 lower-case hex characters
  std::string url;     // stored without query or fragment (they carry signatures)
  std::string digest;  // "sha256:<64 hex>" or ""
  uint64_t length = 0;
  uint32_t piece_size = 0;
  std::vector<Sha256> pieces;                                // piece_count(length, piece_size) entries
  std::vector<std::pair<std::string, std::string>> headers;  // selected response headers
  int64_t created = 0;                                       // unix seconds
  int64_t last_access = 0;                                   // unix seconds
};

// True for exactly 64 characters of [0-9a-f]. No path is ever built from
// anything else.
bool valid_task_id(const std::string& id);
// clamp(next_pow2(ceil(length / 500)), kMinPieceSize, kMaxPieceSize).
uint32_t piece_size_for(uint64_t length);
// ceil(length / piece_size); 0 for an empty object or piece_size 0.
uint64_t piece_count(uint64_t length, uint32_t piece_size);

class Store;

// One download in progress, in tmp/<id>.<random>/data. Created by
// Store::begin(); must be destroyed before its Store. write() may run on
// several threads at once (disjoint ranges); commit(), abort(), open_data()
// and the destructor must not overlap any other call on the same Writer.
// After any failed write() or commit() the Writer is unusable: every later
// call returns the first error; abort() (or destroy) it. Destroying a Writer
// that was not committed aborts it.
//
// A direct Writer (Store::begin with direct = true) writes around the page
// cache (O_DIRECT) where the file system allows it: an object fetched on a
// miss is streamed to its client from disk and read again rarely, and
// filling the page cache with it costs more than the disk write (measured:
// 2.3-2.6 s of system time per GiB once the cache grows into memory the host
// has not touched lately, 0.1 s for O_DIRECT). Writes are staged through an
// aligned buffer, a partial last block is written padded and rewritten by
// the next write (so ranges written concurrently must not share a
// kDirectAlign block: pieces start on block boundaries), and commit() cuts
// the padding off. Readers of an open_data(direct = true) fd must read
// aligned (kDirectAlign: buffer, offset and length); reading whole blocks
// past what was written is harmless and returns what is on disk. Readers
// through the page cache (direct = false) stay coherent with the direct
// writes (the kernel drops cached pages a direct write covers); to be safe
// from a read racing the rewrite of the padded last block, they read only
// whole blocks below what was written until the writing is over.
constexpr size_t kDirectAlign = 4096;
class Writer {
 public:
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Writes all len bytes at offset (pwrite; any order, holes allowed).
  // 0, or -errno (-ENOSPC, -EDQUOT, -EIO, ...).
  int write(const void* buf, size_t len, uint64_t offset, std::string* err);

  // Call only after the caller has verified the bytes. meta.length must equal
  // the bytes written (the file size), meta.pieces must hold
  // piece_count(length, piece_size) hashes, meta.id must be "" or this id,
  // meta.digest "" or "sha256:<64 hex>" (else -EINVAL). created/last_access
  // of 0 mean now. Makes the task durable and visible: fsync data, write
  // meta.json, rename into tasks/, write the marker. If the id became
  // complete meanwhile (another Writer), this one is discarded and commit()
  // returns 0. After 0 the Writer holds nothing.
  int commit(const TaskMeta& meta, std::string* err);

  // Removes the tmp directory. Idempotent; never fails (best effort).
  void abort();

  // An O_RDONLY|O_CLOEXEC fd on the bytes written so far, for serving a task
  // while it downloads; the caller closes it. It stays readable after commit
  // or abort. -EINVAL once committed or aborted. direct: O_DIRECT too, when
  // this Writer is direct (reads around the page cache; aligned only).
  int open_data(std::string* err, bool direct = false) const;

  const std::string& id() const { return id_; }
  // Whether writes bypass the page cache (false after a fallback).
  bool direct() const { return direct_.load(); }

 private:
  friend class Store;
  Writer(Store* store, std::string id, std::string tmp_rel, int fd, bool direct);
  int set_failed(int e, std::string msg, std::string* err);
  int write_direct(const char* buf, size_t len, uint64_t offset, std::string* err);
  int fall_back_to_buffered();
  Store* store_;
  std::string id_;
  std::string tmp_rel_;  // "tmp/<id>.<random>", relative to the data dir
  int fd_;
  std::atomic<int> error_{0};  // first failure, sticky
  bool done_ = false;          // committed or aborted
  std::atomic<bool> direct_;
  std::atomic<uint64_t> end_{0};  // highest offset written + 1 (the file may be padded past it)
  std::atomic<bool> padded_{false};
  // The last partial block a direct write padded, so the next sequential
  // write need not read it back. Guarded by tail_mu_.
  std::mutex tail_mu_;
  uint64_t tail_off_ = UINT64_MAX;
  std::unique_ptr<char[]> tail_;
};

// What listing a store needs of a task: TaskMeta without the piece hashes
// and headers, so listing thousands of tasks copies little.
struct TaskSummary {
  std::string id, url, digest;
  uint64_t length = 0;
  int64_t created = 0, last_access = 0;
  int pins = 0;  // clients being served from it right now
};

struct GcResult {
  std::vector<std::string> ids;  // in removal order
  uint64_t bytes = 0;
};

class Store {
 public:
  // Opens (creating it, with parents, if missing) a data dir and takes an
  // exclusive flock on it (-EBUSY if another Store holds it). Refuses a
  // non-empty directory without a version file (-ENOTEMPTY: not a Shoal data
  // dir) and another store version (-ENOTSUP). Empties tmp/, deletes every
  // task directory that is not complete and consistent (marker, meta.json,
  // data size), and indexes the rest. Call once at startup, off the loop.
  static int open(const std::string& data_dir, std::unique_ptr<Store>* out, std::string* err);
  ~Store();  // persists pending touch() times; every Writer must be gone
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Starts a download of id. -EINVAL for an invalid id, -EEXIST when the
  // task is already complete, else -errno from creating the tmp files.
  // direct: write around the page cache (see Writer) where the file system
  // supports it.
  int begin(const std::string& id, std::unique_ptr<Writer>* out, std::string* err, bool direct = false);

  // Complete tasks only. out may be nullptr (existence test).
  bool lookup(const std::string& id, TaskMeta* out) const;
  // O_RDONLY|O_CLOEXEC fd on a complete task's data, or -EINVAL / -ENOENT /
  // -errno. The caller closes it; it stays readable even if GC removes the
  // task meanwhile (pin() the task to keep it on disk).
  int open_data(const std::string& id, std::string* err) const;
  // Sets last access to now in memory. Persisted lazily, as the mtime of the
  // task's `verified` marker, by gc() and ~Store(); after a crash a task may
  // look older than it is (meta.json is never rewritten). False if absent.
  bool touch(const std::string& id);

  // Reference counts for tasks being served; GC never removes a pinned task.
  // pin() is 0 or -EINVAL / -ENOENT (not complete). unpin() of an unpinned or
  // absent id does nothing.
  int pin(const std::string& id);
  void unpin(const std::string& id);

  // Removes unpinned tasks, least recently accessed first: those with
  // now - last_access >= expire_seconds, then more while total_bytes() >
  // quota_bytes. expire_seconds <= 0 disables expiry; quota_bytes 0 disables
  // the quota. A removed task disappears atomically (its directory is
  // renamed into tmp/, then deleted).
  GcResult gc(uint64_t quota_bytes, int64_t expire_seconds, int64_t now);

  uint64_t total_bytes() const;  // sum of complete tasks' lengths
  size_t task_count() const;
  std::vector<TaskMeta> list() const;  // ordered by id
  // Every complete task, most recently created first (ties by id).
  std::vector<TaskSummary> summaries() const;
  // Entries open() deleted: tmp/ contents and incomplete or corrupt tasks.
  size_t discarded_at_open() const;
  const std::string& dir() const;

  // Unix seconds for touch() and commit(); defaults to time(nullptr).
  void set_clock_for_test(int64_t (*clock)());

 private:
  friend class Writer;
  struct Impl;
  Store();
  std::unique_ptr<Impl> impl_;
};

// Called with a step name ("data-synced", "meta-written", "renamed",
// "marker-written", "committed", "gc-renamed") as commit() and gc() pass
// each point, so crash tests can kill the process exactly there.
void set_crash_hook_for_test(void (*hook)(const char* step));

}  // namespace shoal::task
