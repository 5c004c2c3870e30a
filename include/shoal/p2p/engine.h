// The peer side of P2P on one host: talks to the schedulers, downloads
// tasks piece by piece from other peers (and from the origin for the pieces
// the scheduler hands it), and serves what it holds through the upload
// server.
//
//   proxy Conn (a client asks for a blob nobody here has)
//     └─ HEAD to the origin with the client's own headers (length, access)
//        └─ Engine::download(task, ...)       ─┐ on the engine's loop
//             PeerTask: scheduler ─ parents    │
//               pieces from ≥4 parents at once ├─ verified (SHA-256 per piece),
//               pieces the scheduler assigns   │  written into the task's file;
//                 us from the origin (Range,   │  the contiguous prefix goes to
//                 the client's headers)        │  the ActiveTask, whose readers
//             whole object hashed → commit     │  are the clients
//
// Credentials never leave this host: the origin request (with the client's
// Authorization) stays inside the PeerTask; the scheduler and other peers
// see task ids, piece indices and hashes only.
//
// Threads: Engine lives on one libuv loop (a proxy Worker without
// listeners); every member function is loop-thread only unless it says
// otherwise. ActiveTask is thread-safe and is how the proxy's loops see
// progress.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shoal/http/http.h"
#include "shoal/p2p/protocol.h"
#include "shoal/task/engine.h"

namespace shoal::tls {
class ClientConfig;
}  // namespace shoal::tls

namespace shoal::p2p {

// What the proxy module needs to repeat a client's GET to the origin.
struct OriginRequest {
  std::string host;
  uint16_t port = 443;
  bool https = true;
  std::string path;
  std::vector<http::Header> headers;  // the client's, minus Range and hop-by-hop
  std::string dial;                   // IP to connect to instead of resolving host (transparent)
};

// Fetches byte ranges from the origin; implemented by the proxy module
// (which owns the HTTPS client). Loop-thread only.
class OriginFetcher {
 public:
  virtual ~OriginFetcher() = default;
  // error 0: bytes holds exactly the range; else why says what went wrong.
  // bytes comes from the loop thread's util::BufferPool; done may keep it.
  using Done = std::function<void(int error, const std::string& why, std::string& bytes)>;
  // Sees the range's bytes as they arrive (redirect bodies excluded).
  using Observe = std::function<void(const char* data, size_t len)>;
  // Fetches [offset, offset + len) of an object of total bytes with a Range
  // request (following redirects). done runs once, never inside fetch(),
  // unless cancel(handle) ran first. *progress (may be null) counts bytes as
  // they arrive, for stall detection; it must outlive the fetch. observe
  // (may be empty) is not called after cancel(handle).
  virtual uint64_t fetch(const OriginRequest& req, uint64_t offset, uint64_t len, uint64_t total,
                         uint64_t* progress, Done done, Observe observe) = 0;
  virtual void cancel(uint64_t handle) = 0;
  // Closes kept-alive connections; fetches after this open their own and
  // keep none. Called when the engine stops, while the loop still runs.
  virtual void close_idle() {}
};

struct EngineOptions {
  std::string peer_id;
  std::vector<std::string> schedulers;  // "ip:port"
  std::string secret;
  std::string listen_addr = "0.0.0.0";
  uint16_t listen_port = 65002;
  std::string advertise;  // "ip:port"
  Labels labels;
  uint32_t upload_slots = 2;
  uint64_t upload_rate = 0;
  uint32_t parallel_parents = 4;
  uint64_t stall_rate = 64 * 1024;
  double stall_time_s = 5.0;
  uint32_t mark = 0;  // SO_MARK on peer and scheduler connections
  // p2p.tls: piece requests and the upload server speak TLS keyed by the
  // secret (peer_tls.h); every peer of a cluster must agree.
  bool tls = false;
  // p2p.keepAlive: how long an idle connection to a parent or scheduler is
  // kept for the next request; 0: a connection per request.
  uint64_t keepalive_ms = 20000;
  // p2p.pieceMemory: bytes of verified, written pieces kept in memory to
  // serve other peers from (hot_pieces.h); pieces not yet written are held
  // whatever this says.
  uint64_t piece_memory = 64u << 20;
};

class HotPieces;
class LinkPool;
class PeerTask;
class PeerTls;
class SchedulerClient;
class UploadServer;
class Verifier;
class Signer;

class Engine {
 public:
  Engine(uv_loop_t* loop, task::Engine* tasks, OriginFetcher* origin, EngineOptions opts);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Listens for peers and registers with the schedulers. 0 or a negative
  // libuv error with *err saying what.
  int start(std::string* err);
  // Stops downloads (their tasks fail; readers resume from the origin),
  // leaves the schedulers, closes the upload server; done runs when every
  // handle is closed.
  void stop(std::function<void()> done);

  // Downloads t, whose owner this host is (Starting): length and the
  // headers to serve are known from the origin's answer to a HEAD. The task
  // goes Streaming at once and Complete or Failed later; the engine retires
  // it from the task table.
  void download(std::shared_ptr<task::ActiveTask> t, const std::string& url, uint64_t length,
                task::ActiveTask::Headers headers, OriginRequest req);
  // A task the whole-object path stored: tell its scheduler we hold it.
  void announce_stored(const std::string& id);

  // For PeerTask and the upload server.
  uv_loop_t* loop() { return loop_; }
  task::Engine& tasks() { return *tasks_; }
  OriginFetcher& origin() { return *origin_; }
  SchedulerClient& scheduler() { return *sched_; }
  // Kept-alive connections to parents and schedulers (http_call.h); null
  // when p2p.keepAlive is 0 (a connection per request).
  LinkPool* links() { return opts_.keepalive_ms > 0 ? links_.get() : nullptr; }
  const EngineOptions& options() const { return opts_; }
  HotPieces& hot() { return *hot_; }
  Signer& signer() { return *signer_; }
  // The configuration piece requests speak TLS with; null when p2p.tls is
  // off.
  tls::ClientConfig* peer_tls();
  void task_finished(PeerTask* pt);  // PeerTask is done: the engine frees it
  size_t downloads() const { return downloads_.size(); }

  // What `shoalctl status` shows; any thread.
  struct Status {
    std::string listen, advertise;
    bool tls = false;
    size_t downloads = 0;
    std::vector<std::pair<std::string, bool>> schedulers;  // address, reachable
  };
  Status status() const;

 private:
  class Source;
  uv_loop_t* loop_;
  task::Engine* tasks_;
  OriginFetcher* origin_;
  EngineOptions opts_;
  std::unique_ptr<Signer> signer_;
  std::unique_ptr<PeerTls> tls_;  // with opts_.tls
  std::string tls_error_;         // why tls_ could not be built; start() reports it
  std::unique_ptr<Verifier> verifier_;
  std::unique_ptr<LinkPool> links_;  // before sched_: its calls use it
  std::unique_ptr<HotPieces> hot_;
  std::unique_ptr<SchedulerClient> sched_;
  std::unique_ptr<Source> source_;
  std::unique_ptr<UploadServer> upload_;
  std::map<std::string, PeerTask*> downloads_;  // each frees itself after finish()
  bool stopping_ = false;
  std::atomic<size_t> downloads_count_{0};
};

}  // namespace shoal::p2p
