// The peer's upload server: serves verified pieces of the tasks this host
// holds to other peers (GET /v1/tasks/<id>/pieces/<n>, signed; see
// protocol.h and auth.h). Runs on one libuv loop; every member function is
// loop-thread only.
//
// Limits: at most `slots` pieces are sent at once (more get 503 with
// Retry-After: 1 right away, so the asker tries another parent instead of
// queueing behind us), and all uploads together stay under `rate` bytes per
// second (a token bucket; 0 = unlimited). A request without a valid
// signature and a request for a piece this host does not hold get the same
// 403, so an outsider learns nothing about what is here.
//
// With a TLS configuration (p2p.tls) every connection starts with a TLS
// handshake keyed by the cluster secret (peer_tls.h); a client that does
// not complete it (one that speaks plain HTTP, or holds another secret) is
// closed without an answer.
//
// Ownership: the server owns its connections; each frees itself in its
// last close callback. A file read in flight keeps its connection alive
// until it returns.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "shoal/p2p/auth.h"

namespace shoal::tls {
class ServerConfig;
}  // namespace shoal::tls

namespace shoal::p2p {

// Where the bytes of a piece are: in memory (data), or an fd to pread
// from. The source decides whether the piece is held (verified) and keeps
// the fd readable until release() (an in-progress download's file, or a
// stored task pinned against GC).
struct PieceRef {
  std::shared_ptr<const std::string> data;  // the whole piece; then fd is -1
  int fd = -1;
  uint64_t offset = 0;  // of the piece in the file
  uint32_t length = 0;  // the piece's length (the last piece may be short)
  uint64_t token = 0;   // the source's, handed back to release()
};

class PieceSource {
 public:
  virtual ~PieceSource() = default;
  // True and *out filled when this host holds the verified piece.
  virtual bool open_piece(const std::string& task_id, uint32_t index, PieceRef* out) = 0;
  virtual void release_piece(const PieceRef& ref) = 0;
  // True when this piece is already being sent to as many peers as it
  // should be at once: the asker gets 503 and fetches it from a peer that
  // got it meanwhile, so a fresh piece spreads as a tree instead of every
  // peer queueing at its only holder.
  virtual bool piece_busy(const std::string& task_id, uint32_t index) {
    (void)task_id;
    (void)index;
    return false;
  }
};

class UploadServer {
 public:
  struct Options {
    uint32_t slots = 16;
    uint64_t rate = 0;  // bytes per second, 0 = unlimited
    // A PSK configuration (tls::ServerConfig::psk) to speak TLS with, or
    // null for plain TCP. Must outlive the server.
    tls::ServerConfig* tls = nullptr;
  };
  UploadServer(uv_loop_t* loop, PieceSource* source, Verifier* verifier, Options opts);
  ~UploadServer();  // close() must have completed
  UploadServer(const UploadServer&) = delete;
  UploadServer& operator=(const UploadServer&) = delete;

  // Binds and listens; 0, or a negative libuv error with *err saying what.
  int listen(const std::string& addr, uint16_t port, std::string* err);
  // The port actually bound (useful with port 0).
  uint16_t port() const;
  // Stops listening and resets every connection; done runs once all handles
  // are closed.
  void close(std::function<void()> done);
  uint32_t busy_slots() const;
  uint32_t free_slots() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Tests only: the request-head and idle timeouts (30 s and 60 s), in ms, for
// servers on every loop. Call before the loop runs.
void set_upload_timeouts_for_test(uint64_t header_ms, uint64_t idle_ms);

}  // namespace shoal::p2p
