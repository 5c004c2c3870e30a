// Worker: one thread, one libuv loop, its own SO_REUSEPORT listener on each
// proxy address, and every per-thread resource a connection needs (Hyperscan
// scratch, RNG, TLS configurations). Connections never move between
// workers. Other threads talk to a worker only through post() (uv_async).
#pragma once

#include <uv.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shoal/proxy/runtime.h"
#include "shoal/redirect/redirect.h"
#include "shoal/rules/rules.h"
#include "shoal/task/engine.h"
#include "shoal/tls/session.h"

namespace shoal::p2p {
class Engine;
class OriginFetcher;
}  // namespace shoal::p2p

namespace shoal::proxy {

class Conn;
class Shared;

class Worker {
 public:
  Worker(Shared& shared, int index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds the listener on the calling thread (so bind errors reach start-up)
  // and returns 0, or a negative libuv error with *err set. A transparent
  // listener's connections were redirected by the kernel: their target is
  // the original destination, not a CONNECT.
  int listen(const std::string& addr, uint16_t port, std::string* err, bool transparent = false);
  void start();  // runs the loop on a new thread
  void join();

  // Thread-safe requests, executed on the worker's loop.
  void post(std::function<void()> fn);
  // Loop-thread only: runs fn on a later iteration of this loop, before it
  // next waits for I/O. No lock and no syscall, unlike post().
  void defer(std::function<void()> fn);
  void stop_accepting();  // close listeners; idle connections close, busy ones finish
  void abort_all();       // reset every connection that is left

  // Loop-thread only.
  uv_loop_t* loop() { return &loop_; }
  Shared& shared() { return shared_; }
  int index() const { return index_; }
  // The current runtime, with this thread's scratch sized for it.
  std::shared_ptr<const Runtime> runtime();
  rules::Scratch& scratch() { return scratch_; }
  tls::Rng& rng() { return rng_; }
  // TLS configurations of this loop, with or without fast records
  // (tls.fastRecords, which a reload may change). A server configuration
  // issues and accepts session tickets with tickets when it is not null.
  // Server configurations live as long as the worker (sessions point at
  // them); there is one per (fast_records, tickets) ever asked for.
  tls::ServerConfig& server_config(bool fast_records, const std::shared_ptr<tls::TicketKeys>& tickets);
  std::shared_ptr<tls::ClientConfig> client_config(const TrustChoice& trust, bool fast_records);
  // A 256 KiB buffer every read on this loop lands in; readers consume it
  // before returning, so one per loop is enough whatever the connection
  // count. Large reads halve the syscalls of a bulk tunnel against 64 KiB.
  char* read_buffer() { return read_buf_.get(); }
  static constexpr size_t kReadBufferSize = 256 * 1024;
  // Where decrypted bytes land before they are parsed; same rule as above.
  uint8_t* plain_buffer() { return plain_buf_.get(); }
  static constexpr size_t kPlainBufferSize = 64 * 1024;
  bool draining() const { return draining_; }
  // Leaf minting, coalesced per key: add_mint_waiter() returns true when c
  // is the first for key (it must start the mint); take_mint_waiters() hands
  // every waiter (the first included) to the finished mint.
  bool add_mint_waiter(const std::string& key, Conn* c);
  void remove_mint_waiter(const std::string& key, Conn* c);
  std::vector<Conn*> take_mint_waiters(const std::string& key);
  void add_conn(Conn* c);
  void remove_conn(Conn* c);
  size_t conn_count() const { return conn_count_.load(); }

 private:
  static void on_async(uv_async_t* a);
  static void on_connection(uv_stream_t* server, int status);
  static void on_transparent_connection(uv_stream_t* server, int status);
  static void on_relisten(uv_timer_t* t);

  // What it takes to open a listener again.
  struct ListenSpec {
    std::string addr;
    uint16_t port = 0;
    bool transparent = false;
  };
  int open_listener(const ListenSpec& spec, std::string* err);
  // Out of descriptors (accept failed with EMFILE/ENFILE although libuv's
  // reserve-descriptor trick ran): closes this listener and opens it again
  // after kRelistenMs, instead of letting libuv retry accept() in a busy
  // loop. Meanwhile SO_REUSEPORT hands new connections to the other
  // workers' listeners, or the kernel refuses them once none is left.
  void pause_listener(uv_stream_t* server, int status);
  static constexpr uint64_t kRelistenMs = 500;

  Shared& shared_;
  int index_;
  uv_loop_t loop_{};
  uv_async_t async_{};
  std::vector<uv_tcp_t*> listeners_;
  std::map<const uv_tcp_t*, ListenSpec> listen_specs_;  // of every open listener
  std::vector<ListenSpec> paused_;                      // listeners closed by pause_listener()
  uv_timer_t relisten_timer_{};
  uint64_t pauses_ = 0, pauses_logged_ = 0;  // pause_listener() calls; those the log saw
  uint64_t pause_logged_ms_ = 0;
  std::thread thread_;
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  uv_idle_t defer_idle_{};
  std::vector<std::function<void()>> deferred_;
  rules::Scratch scratch_;
  uint64_t scratch_gen_ = 0;
  std::shared_ptr<const Runtime> rt_;
  tls::Rng rng_;
  std::map<std::pair<bool, const tls::TicketKeys*>, std::unique_ptr<tls::ServerConfig>> server_cfgs_;
  struct CachedClientConfig {
    std::shared_ptr<tls::TrustStore> store;  // keeps the key's pointer alive
    std::shared_ptr<tls::ClientConfig> cfg;
  };
  std::map<std::tuple<const tls::TrustStore*, bool, bool>, CachedClientConfig> client_cfgs_;
  bool async_closed_ = false;  // guarded by post_mu_
  void maybe_finish();
  std::unique_ptr<char[]> read_buf_;
  std::unique_ptr<uint8_t[]> plain_buf_;
  Conn* conns_ = nullptr;  // intrusive list of live connections
  std::map<std::string, std::vector<Conn*>> mint_waiters_;
  std::atomic<size_t> conn_count_{0};
  bool draining_ = false;
};

// State every worker shares: the current runtime, the concurrency limit,
// counters. Owned by the daemon; outlives the workers.
class Shared {
 public:
  std::shared_ptr<const Runtime> runtime() const { return std::atomic_load(&rt_); }
  void set_runtime(std::shared_ptr<const Runtime> rt) { std::atomic_store(&rt_, std::move(rt)); }
  // Admission for proxy.maxConcurrency: true when the connection may proceed.
  bool admit(int64_t limit);
  void release();
  int64_t active() const { return active_.load(); }
  std::string peer_id;
  // Transparent interception: the backend that redirects attached cgroups
  // (null when transparent.mode is off or no backend works here), and the
  // SO_MARK every socket Shoal opens carries so no hook redirects it (0:
  // none). Set before the workers start; the backend locks internally.
  std::unique_ptr<redirect::Backend> redirect;
  uint32_t mark = 0;
  // The task engine; null when the data directory could not be opened (then
  // p2p-routed requests are forwarded to the origin and a warning says why).
  std::unique_ptr<task::Engine> engine;
  // P2P (null when p2p.schedulers is empty): the engine runs on its own
  // worker's loop; proxy loops reach it with p2p_worker->post().
  p2p::Engine* p2p = nullptr;
  Worker* p2p_worker = nullptr;
  // proxy.authCheck answers: key (origin, repository, credential hash) ->
  // when the "allowed" answer expires (uv time, ms). Allowed answers only.
  bool auth_cached(const std::string& key, uint64_t now_ms);
  void auth_remember(const std::string& key, uint64_t until_ms);

 private:
  std::mutex auth_mu_;
  std::map<std::string, uint64_t> auth_ok_;

 public:
 private:
  std::shared_ptr<const Runtime> rt_;
  std::atomic<int64_t> active_{0};
};

// The P2P engine's way to the origin (Range GETs with a client's own
// headers, TLS verified as for the client), running on w's loop.
std::unique_ptr<p2p::OriginFetcher> make_origin_fetcher(Worker& w);

}  // namespace shoal::proxy
