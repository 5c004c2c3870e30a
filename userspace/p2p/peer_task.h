// One task being downloaded piece by piece on this host (see engine.h).
//
//   start ─► tick (every 250 ms, and on every event):
//              announce what we hold (when it changed), then ask the
//              task's scheduler for parents and origin pieces
//              origin pieces (assigned, or every piece no parent holds
//                when no scheduler answers): ≤ 2 Range fetches at once
//              parent pieces, rarest first: ≤ 2 per parent, ≤ 2 × parallelParents
//              end game: the last pieces are also asked of a second parent
//              stalls (< stallRate over stallTime): cancel, avoid the parent
//            piece fetched (SHA-256 fed as its bytes arrive) ─► checked
//              against the scheduler's hash (parent pieces) or published
//              (origin pieces) ─► have: announced, served to other peers
//              from memory (HotPieces) ─► thread pool: pwrite ─► on disk;
//              the contiguous prefix on disk goes to the ActiveTask; the
//              whole-object hash follows it (from memory where it can)
//            all pieces + whole hash ok ─► verified ─► commit ─► Complete
//
// Ownership: the Engine creates it and lets go of it in finish(); from then
// on it frees itself once its thread-pool jobs and its timer are done.
#pragma once

#include <openssl/evp.h>
#include <uv.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "shoal/p2p/engine.h"
#include "shoal/p2p/hot_pieces.h"
#include "shoal/p2p/http_call.h"
#include "shoal/task/engine.h"

namespace shoal::p2p {

class PeerTask {
 public:
  PeerTask(Engine& e, std::shared_ptr<task::ActiveTask> t, std::string url, uint64_t length,
           task::ActiveTask::Headers headers, OriginRequest req);
  // False (and the task failed) when the store cannot take it.
  bool start();
  // Ends the download now: the task fails (readers go to the origin for the
  // rest) and the PeerTask frees itself when it can.
  void abort(const std::string& why);

  const std::string& id() const { return id_; }
  bool holds(uint32_t i) const { return have_.test(i); }
  int read_fd() const { return read_fd_; }
  uint32_t piece_size() const { return psize_; }
  uint32_t pieces() const { return n_; }
  uint32_t piece_len(uint32_t i) const;

 private:
  ~PeerTask();
  enum class State { Running, Finalizing, Done };
  struct Fetch {
    uint32_t piece = 0;
    std::string parent;  // empty: the origin
    HttpCall* call = nullptr;
    uint64_t origin_handle = 0;
    uint64_t progress = 0;  // origin fetches: bytes so far
    uint64_t start_ms = 0, mark_ms = 0, mark_bytes = 0;
    // SHA-256 of the body so far, fed as the bytes arrive: the piece's hash
    // is ready the moment its last byte is.
    std::shared_ptr<EVP_MD_CTX> sha;
  };
  struct ParentInfo {
    std::string addr;
    Bitmap pieces;
    int inflight = 0;
    int errors = 0;
    uint64_t avoid_until = 0;
    bool stalled = false;  // avoid_until is a stall's (30 s), not a 503's
    bool banned = false;
  };

  void tick();
  void maybe_announce();
  void maybe_query();
  void on_parents(int status, const std::string& body, int sched);
  void conflict(const std::string& body);
  void schedule();
  int fetch_limit() const;
  bool usable(const ParentInfo& p, uint32_t piece, uint64_t now) const;
  void start_parent(uint32_t piece, const std::string& parent);
  void start_origin(uint32_t piece);
  void on_parent_done(uint64_t fid, CallResult& r);
  void on_origin_done(uint64_t fid, int error, const std::string& why, std::string& bytes);
  void piece_arrived(const Fetch& f, std::string data);
  void write_piece(uint32_t piece, HotPieces::Data bytes);
  void piece_written(uint32_t piece);
  void cancel_fetch(uint64_t fid);
  void stall_check();
  void report(const std::string& parent, uint32_t piece, ResultReq::Outcome o, uint64_t bytes = 0,
              uint32_t ms = 0);
  void hash_more();
  void finalize();
  void fail(const std::string& why);
  void finish();
  void maybe_free();
  uint64_t offset_of(uint32_t i) const { return static_cast<uint64_t>(i) * psize_; }

  Engine& e_;
  std::shared_ptr<task::ActiveTask> t_;
  std::string id_, url_;
  uint64_t length_;
  uint32_t psize_, n_;
  task::ActiveTask::Headers headers_;
  OriginRequest req_;
  std::unique_ptr<task::Writer> writer_;
  int read_fd_ = -1;
  State state_ = State::Running;
  bool detached_ = false;  // the Engine let go: free when idle
  int jobs_ = 0;           // thread-pool jobs in flight
  bool timer_closed_ = false;
  uv_timer_t timer_{};

  // have_: verified (in memory until written, then on disk too); on_disk_:
  // written, what the client and the whole-object hash may read.
  Bitmap have_, on_disk_, hash_known_, from_origin_;
  std::vector<task::Sha256> hashes_;
  std::vector<uint8_t> fetching_;
  std::vector<uint32_t> rank_;  // tie-break among equally rare pieces
  std::minstd_rand rng_;        // and among equally loaded parents
  std::map<uint64_t, Fetch> fetches_;
  uint64_t next_fetch_ = 1;
  std::map<std::string, ParentInfo> parents_;
  std::set<uint32_t> assigned_;
  std::map<uint32_t, int> origin_tries_;
  int origin_inflight_ = 0, parent_inflight_ = 0;
  bool fallback_ = false, warned_fallback_ = false;
  bool conflict_ = false;  // the scheduler's swarm has another length: origin only
  int last_sched_ = -2;
  uint64_t query_id_ = 0, announce_id_ = 0;
  bool announce_dirty_ = false;
  uint64_t next_query_ms_ = 0, next_announce_ms_ = 0;

  uint64_t unwritten_bytes_ = 0;  // verified pieces whose write is not done
  uint32_t contig_piece_ = 0;     // pieces [0, contig_piece_) are all on disk
  uint64_t reported_ = 0;         // bytes passed to ActiveTask::add_stored
  void* whole_ = nullptr;         // EVP_MD_CTX of the whole object
  uint64_t hashed_ = 0;
  bool hash_job_ = false;
  std::string failure_;

  uint64_t start_ms_ = 0;
  uint64_t bytes_origin_ = 0, bytes_peer_ = 0;
  std::set<std::string> parents_used_;
  uint32_t bad_pieces_ = 0;
};

}  // namespace shoal::p2p
