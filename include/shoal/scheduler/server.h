// The scheduler's HTTP/1.1 server: POST /v1/{register,heartbeat,announce,
// parents,result,leave} (shoal/p2p/protocol.h) on one libuv loop, answered
// from a State it does not own. Every request but GET /healthz must carry a
// valid signature (shoal/p2p/auth.h); anything else gets 403 "forbidden"
// and nothing more. Answers are signed over the request's nonce.
//
// Connections are keep-alive and may pipeline: requests are answered in
// order. Memory per connection stays bounded: one write in flight, no
// reading while it is, and request parsing pauses once the queued answers
// pass a high mark. A request body over max_body gets 413 and the
// connection closes; a request head not complete within header_timeout_ms
// and a connection idle for idle_timeout_ms are closed.
//
// Every member function is loop-thread only. The Server runs
// state->expire() every expire_interval_ms with uv_now() as the clock.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace shoal::scheduler {

class State;

struct ServerOptions {
  size_t max_body = 4u << 20;
  uint64_t header_timeout_ms = 30000;
  uint64_t idle_timeout_ms = 120000;
  uint64_t expire_interval_ms = 1000;
  uint64_t stats_interval_ms = 60000;  // a "scheduler stats" log line
  // Request nonces remembered for replay checks (auth.h: 120 s window).
  // p2p::kMaxNonces (1M) would cap a scheduler at a sustained 8,300
  // requests/s; 8M allows 66,000/s at about 32 bytes a nonce (about
  // 256 MB when full; pages are touched only as the cache fills).
  size_t max_nonces = 8000000;
};

class Server {
 public:
  // secret: the cluster secret (see p2p::load_secret_file).
  Server(uv_loop_t* loop, State* state, const std::string& secret, ServerOptions opts = {});
  ~Server();  // close() must have completed (or listen() never succeeded)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens on an IP literal; 0, or a negative libuv error with
  // *err saying what.
  int listen(const std::string& addr, uint16_t port, std::string* err);
  uint16_t port() const;  // the port bound (useful with port 0)
  // Stops listening, closes every connection and the timers; done runs
  // once every handle is closed.
  void close(std::function<void()> done);
  size_t connections() const;

  // Tests: the unix-seconds clock used to check request times.
  void set_clock_for_test(std::function<int64_t()> unix_now);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal::scheduler
