// The scheduler's bookkeeping: which peers are alive, which pieces of which
// task each holds, which piece hashes are known, who fetches what from the
// origin, and which parents misbehaved. Pure: no I/O and no clock (every call
// takes now_ms, a monotonic millisecond clock of the caller's choosing), so
// every rule is unit-tested without a loop. Not thread-safe: one thread (the
// server's loop) owns a State.
//
// Every operation answers an HTTP-like status and fills the response
// message on 200; otherwise *err says why (for ErrorResp):
//   200 done; 404 unknown peer (it registers again); 409 the task's length
//   or piece size differ from what the scheduler knows; 400 a request that
//   decoded but does not fit (a bitmap or piece index outside the task).
//
// Cost: every operation is proportional to the task's piece count and the
// task's holder list (capped, see kMaxScan in state.cpp), never to the
// number of peers or tasks; expire() pops expired peers and tasks off
// queues ordered by time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "shoal/p2p/protocol.h"

namespace shoal::scheduler {

struct Options {
  int64_t peer_timeout_ms = 15000;  // forgotten after this long without a request
  uint32_t origin_concurrency = 2;  // live origin assignments per task
  uint32_t max_parents = 8;         // at most this many parents per answer
  int64_t assignment_ms = 60000;    // an origin assignment lapses after this long without renewal
  int64_t task_idle_ms = 600000;    // a task nobody takes part in is forgotten after this long
};

enum class Op { Register, Heartbeat, Announce, Parents, Result, Leave, Count };
const char* to_string(Op op);

struct Counters {
  uint64_t peers = 0;        // registered now
  uint64_t tasks = 0;        // known now
  uint64_t assignments = 0;  // origin assignments held now (live or not yet swept)
  uint64_t ops[static_cast<int>(Op::Count)] = {};
  uint64_t errors = 0;           // operations answered other than 200
  uint64_t hash_conflicts = 0;   // announced hashes refused
  uint64_t bad_pieces = 0;       // BadPiece results
  uint64_t peers_expired = 0;    // forgotten by expire()
  uint64_t tasks_expired = 0;    // forgotten by expire()
  uint64_t origin_assigned = 0;  // pieces handed out for back-to-source
};

// Something worth a log line, handed to the note sink (the server logs it).
struct Note {
  const char* what = "";  // "hash conflict", "peer excluded", "hash replaced"
  std::string peer, task, other;
  int64_t piece = -1;
};

class State {
 public:
  explicit State(Options opts = {});
  ~State();
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  const Options& options() const { return opts_; }
  // Called synchronously from inside an operation for each Note.
  void set_note_sink(std::function<void(const Note&)> sink);

  int register_peer(const p2p::RegisterReq& req, int64_t now_ms, p2p::RegisterResp* out, std::string* err);
  int heartbeat(const p2p::HeartbeatReq& req, int64_t now_ms, std::string* err);
  int announce(const p2p::AnnounceReq& req, int64_t now_ms, std::string* err);
  // A query ranks at most kParentScan of the task's holders: a task with
  // more starts each query where the last one stopped, so every holder gets
  // its turn and a query costs the same however large the swarm.
  static constexpr size_t kParentScan = 256;
  int parents(const p2p::ParentsReq& req, int64_t now_ms, p2p::ParentsResp* out, std::string* err);
  int result(const p2p::ResultReq& req, int64_t now_ms, std::string* err);
  int leave(const p2p::LeaveReq& req, int64_t now_ms, std::string* err);
  // Forgets peers not seen for peer_timeout_ms (with their holdings and
  // assignments) and tasks nobody has taken part in for task_idle_ms.
  void expire(int64_t now_ms);

  Counters counters() const;

  // Tests: the live origin assignments of a task (0 for an unknown task).
  uint32_t live_assignments_for_test(const std::string& task, int64_t now_ms) const;
  bool has_task_for_test(const std::string& task) const;

 private:
  struct Impl;
  Options opts_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal::scheduler
