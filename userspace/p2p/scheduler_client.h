// The peer's side of the scheduler protocol: registration and heartbeats
// with every configured scheduler, and signed calls routed per task by
// rendezvous hashing (protocol.h's scheduler_order). A scheduler that fails
// a call is marked down for a few seconds and the call goes to the next one
// in the task's order; a scheduler that forgot us (404) is registered again.
//
// Loop-thread only. A call's reply callback runs exactly once unless the
// call is cancelled, never from inside call().
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "shoal/p2p/auth.h"
#include "shoal/p2p/engine.h"
#include "shoal/p2p/http_call.h"

namespace shoal::p2p {

class SchedulerClient {
 public:
  // status: the HTTP status of a signed answer, or -1 when no scheduler
  // could be reached (every one refused, timed out or answered unsigned).
  // sched: the index of the scheduler that answered (-1 with status -1).
  using Reply = std::function<void(int status, const std::string& body, int sched)>;

  // links: kept-alive connections to the schedulers (may be null); it must
  // stay open until stop()'s done has run.
  SchedulerClient(uv_loop_t* loop, const EngineOptions& opts, Signer& signer, LinkPool* links);
  ~SchedulerClient();
  void start();
  // Leaves every scheduler (best effort) and closes the timers; done runs
  // when they are closed.
  void stop(std::function<void()> done);
  bool configured() const { return !scheds_.empty(); }
  size_t count() const { return scheds_.size(); }
  const std::string& addr(int i) const { return scheds_[static_cast<size_t>(i)].addr; }

  uint64_t call(const std::string& task_id, const std::string& path, std::string body, Reply cb);
  void cancel(uint64_t id);

  // Runs when a scheduler has (re)registered us: it may have forgotten what
  // we hold, so the engine announces its stored tasks again.
  std::function<void(int sched)> on_registered;
  // Upload slots free right now, for heartbeats (the scheduler ranks
  // parents by it); unset: all of them.
  std::function<uint32_t()> free_slots;
  // The first scheduler in task_id's order that is not marked down (-1: none).
  int pick(const std::string& task_id) const;
  // Any thread: scheduler i answered our last registration or heartbeat.
  bool reachable(size_t i) const { return i < scheds_.size() && up_[i].load(std::memory_order_relaxed); }

 private:
  struct Sched {
    std::string addr;
    uint64_t down_until = 0;  // uv_now ms
    bool registered = false;
    bool registering = false;
    bool heartbeat_inflight = false;
    bool logged_down = false;
  };
  struct Pending {
    uint64_t id = 0;
    std::string task, path, body;
    Reply cb;
    std::set<int> tried;
    HttpCall* http = nullptr;
  };
  void attempt(uint64_t id);
  void deliver_later(uint64_t id);
  void mark_down(int i, const std::string& why);
  void register_with(int i);
  void heartbeat();
  // A scheduler call that has not completed within this is failed.
  static constexpr uint64_t kCallTimeoutMs = 3000;
  HttpCall* send(int i, const std::string& path, const std::string& body,
                 std::function<void(CallResult&, bool signed_ok)> done, uint64_t timeout_ms = kCallTimeoutMs);
  void one_closed();  // a timer closed or a leave ended while stopping

  uv_loop_t* loop_;
  const EngineOptions& opts_;
  Signer& signer_;
  LinkPool* links_;
  std::vector<Sched> scheds_;
  std::unique_ptr<std::atomic<bool>[]> up_;  // per scheduler, for status on other threads
  std::map<uint64_t, Pending> pending_;
  std::set<HttpCall*> internal_;  // register/heartbeat/leave calls in flight
  uint64_t next_id_ = 1;
  uv_timer_t hb_timer_{};
  uv_timer_t kick_timer_{};
  std::deque<uint64_t> failed_;  // calls to answer with -1 on the next turn
  uint32_t heartbeat_ms_ = 5000;
  int closes_ = 0;
  std::function<void()> stopped_;
};

}  // namespace shoal::p2p
