// The proxy's implementation of p2p::OriginFetcher: a piece's bytes from
// the origin, with the client's own request headers and a Range request,
// over an Upstream (DNS or the transparent dial address, TLS verified as
// for the client's own requests), following redirects as the task engine
// does (at most 10; Authorization dropped when the host changes).
//
// Runs on one Worker's loop (the P2P worker): loop-thread only. done runs
// on a later loop turn, never inside fetch() or inside an Upstream callback.
#pragma once

#include <map>
#include <memory>

#include "shoal/p2p/engine.h"
#include "shoal/proxy/worker.h"

namespace shoal::proxy {

class RangeFetch;

class OriginRangeFetcher : public p2p::OriginFetcher {
 public:
  explicit OriginRangeFetcher(Worker& w) : w_(w) {}
  ~OriginRangeFetcher() override;
  uint64_t fetch(const p2p::OriginRequest& req, uint64_t offset, uint64_t len, uint64_t total,
                 uint64_t* progress, Done done, Observe observe) override;
  void cancel(uint64_t handle) override;
  void finished(uint64_t handle);  // RangeFetch: done has run

 private:
  Worker& w_;
  uint64_t next_ = 1;
  std::map<uint64_t, RangeFetch*> live_;
};

}  // namespace shoal::proxy
