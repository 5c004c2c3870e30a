// The proxy's implementation of p2p::OriginFetcher: a piece's bytes from
// the origin, with the client's own request headers and a Range request,
// over an Upstream (DNS or the transparent dial address, TLS verified as
// for the client's own requests), following redirects as the task engine
// does (at most 10; Authorization dropped when the host changes).
//
// Runs on one Worker's loop (the P2P worker): loop-thread only. done runs
// on a later loop turn, never inside fetch() or inside an Upstream callback.
//
// Connections are kept alive: after a complete answer that allows it, the
// connection waits (reading, so a close is seen) for the next piece of the
// same origin, at most kIdlePerKey per origin and kIdleMax in all; each
// piece of a task then costs a request, not a TCP and TLS handshake. One
// idle for kIdleMs is not used again: it is closed the next time the
// fetcher is used, if the origin has not closed it first. A request that
// meets a connection the origin closed just then is sent again once on a
// new one, if no byte of an answer came.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "shoal/p2p/engine.h"
#include "shoal/proxy/worker.h"

namespace shoal::proxy {

class RangeFetch;
struct Upstream;

class OriginRangeFetcher : public p2p::OriginFetcher {
 public:
  static constexpr size_t kIdlePerKey = 4, kIdleMax = 16;
  static constexpr uint64_t kIdleMs = 10 * 1000;

  explicit OriginRangeFetcher(Worker& w);
  ~OriginRangeFetcher() override;
  uint64_t fetch(const p2p::OriginRequest& req, uint64_t offset, uint64_t len, uint64_t total,
                 uint64_t* progress, Done done, Observe observe) override;
  void cancel(uint64_t handle) override;
  void close_idle() override;
  void finished(uint64_t handle);  // RangeFetch: done has run

  // RangeFetch: an idle connection for key (null when none), and one to keep
  // after a complete answer (the fetcher owns it from then on).
  Upstream* take_idle(const std::string& key);
  void park(Upstream* u, const std::string& key);
  size_t idle() const { return idle_.size(); }

 private:
  class IdleOwner;
  struct Idle {
    Upstream* u;
    std::string key;
    uint64_t since_ms;
  };
  void drop(Upstream* u);  // an idle one closed or misbehaved
  void expire();

  Worker& w_;
  uint64_t next_ = 1;
  std::map<uint64_t, RangeFetch*> live_;
  std::unique_ptr<IdleOwner> idle_owner_;
  std::deque<Idle> idle_;  // oldest first
  bool closed_ = false;
};

}  // namespace shoal::proxy
