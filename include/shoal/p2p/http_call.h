// One HTTP/1.1 request to another Shoal node (a scheduler or a peer's
// upload server) over TCP to an IP literal, on one libuv loop: connect (or
// take a kept-alive connection from a LinkPool), write the request, parse
// the response. With a TLS configuration (p2p.tls, peer_tls.h) a TLS
// handshake comes first and the request and answer travel inside it;
// without, the bytes are plain. Bodies up to a cap are collected in memory
// (scheduler answers, pieces).
//
// Connections are kept alive through a LinkPool when the caller passes one:
// a peer asks the same parents for piece after piece and its scheduler
// every few hundred milliseconds, and a busy parent's 503 costs a request
// on an open connection instead of a TCP (and TLS) handshake of its own.
// A kept-alive connection the other side closed while the request was on
// its way (its idle timeout, a restart) is retried once on a new
// connection, as long as no byte of an answer came back; any other failure
// is the call's.
//
// Ownership: start() returns a call that frees itself after its done
// callback has run (or after cancel()). done runs exactly once unless the
// call is cancelled, never from inside start(). A connection (Link) belongs
// to the call using it, then to the pool while idle; either closes it, and
// it frees itself in its close callback.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "shoal/http/http.h"

namespace shoal::tls {
class ClientConfig;
class Session;
}  // namespace shoal::tls

namespace shoal::p2p {

struct CallResult {
  int error = 0;    // 0, or a negative libuv error / UV_EPROTO for a bad answer
  std::string why;  // for logs when error != 0
  int status = 0;   // HTTP status when error == 0
  std::vector<http::Header> headers;
  std::string body;
};

struct Link;

// Idle kept-alive connections by address (and TLS or not), most recently
// used first. Loop-thread only. close() before destruction: it closes the
// idle connections and reports when their handles are gone; connections
// handed back after that are closed at once.
class LinkPool {
 public:
  struct Options {
    size_t per_address = 4;  // idle connections kept per address
    size_t max_idle = 256;   // idle connections kept in all
    // Closed after this long idle: below the upload server's (60 s) and
    // the scheduler's (120 s) idle timeouts, so a connection is nearly
    // always closed by this side first.
    uint64_t idle_ms = 20000;
  };
  LinkPool(uv_loop_t* loop, Options opts);
  ~LinkPool();
  LinkPool(const LinkPool&) = delete;
  LinkPool& operator=(const LinkPool&) = delete;

  void close(std::function<void()> done);
  size_t idle() const { return idle_count_; }
  // Requests sent on a new connection, and on a kept-alive one.
  uint64_t opened() const { return opened_; }
  uint64_t reused() const { return reused_; }

 private:
  friend class HttpCall;
  friend struct Link;
  Link* take(const std::string& key);
  void put(Link* l);
  void drop(Link* l);  // an idle link that went bad: out of the pool, closed
  void expire();
  static void on_link_closed(Link* l);

  uv_loop_t* loop_;
  Options opts_;
  uv_timer_t timer_{};
  std::unordered_map<std::string, std::vector<Link*>> idle_;  // oldest first
  size_t idle_count_ = 0;
  size_t closing_ = 0;  // links this pool closed whose handles are not gone yet
  bool closed_ = false;
  bool timer_closed_ = false;
  std::function<void()> on_closed_;
  uint64_t opened_ = 0, reused_ = 0;
  void maybe_done();
};

class HttpCall {
 public:
  using Done = std::function<void(CallResult&)>;
  // addr: "ip:port" / "[v6]:port". request: the whole request (head and
  // body); without a pool it should say "Connection: close". max_body:
  // answers with a larger body fail. timeout_ms: the whole call, a retry
  // included. mark: SO_MARK for new sockets (0: none), so Shoal's own
  // connections are never redirected back to it. tls: a PSK configuration
  // (tls::ClientConfig::psk) to speak TLS with, or null for plain TCP; it
  // must outlive the call and the pool. A failed handshake ends the call
  // with UV_EPROTO and why starting "TLS handshake: ". pool: where to take
  // a kept-alive connection from and to leave this one after a complete
  // keep-alive answer; null for a connection of its own, closed after.
  static HttpCall* start(uv_loop_t* loop, const std::string& addr, std::string request, size_t max_body,
                         uint64_t timeout_ms, uint32_t mark, Done done, tls::ClientConfig* tls = nullptr,
                         LinkPool* pool = nullptr);
  // No callback after this; the call frees itself.
  void cancel();
  // fn sees the answer's body bytes as they arrive (whatever the status),
  // before done runs: a piece can be hashed while it comes in. Set it right
  // after start(), before the loop runs again.
  void observe_body(std::function<void(const char*, size_t)> fn) { observe_ = std::move(fn); }
  // Body bytes received so far (stall detection).
  uint64_t received() const { return received_; }

 private:
  HttpCall();
  ~HttpCall();
  struct Handler;
  friend struct Link;
  void open_link();
  void send_request();
  void finish(int error, const std::string& why);
  void fail_later(int error, std::string why);
  void release_link(bool keep);
  bool retry();
  void close_now();
  void feed_answer(const char* data, size_t len);
  void read_tls(const char* data, size_t len);
  int flush_tls();
  void on_connected(int status);
  void on_read(ssize_t n, const uv_buf_t* buf);
  void on_write_error(int status);
  static void on_timer(uv_timer_t* t);

  uv_loop_t* loop_ = nullptr;
  uv_timer_t timer_{};
  std::function<void(const char*, size_t)> observe_;
  std::string addr_, key_;
  uint32_t mark_ = 0;
  LinkPool* pool_ = nullptr;
  Link* link_ = nullptr;
  bool reused_link_ = false;  // link_ came from the pool
  bool retried_ = false;
  bool answered_ = false;  // a byte of an answer arrived on link_
  bool complete_ = false;  // the final answer is parsed
  bool keep_ = false;      // ...and leaves the connection reusable
  std::string request_;
  size_t max_body_ = 0;
  uint64_t received_ = 0;
  Done done_;
  bool finished_ = false;
  CallResult result_;
  Handler* handler_ = nullptr;
  http::Parser* parser_ = nullptr;
  tls::ClientConfig* tls_cfg_ = nullptr;
};

// Splits "ip:port" / "[v6]:port" into a sockaddr. False on junk.
bool parse_addr(const std::string& addr, sockaddr_storage* out);

}  // namespace shoal::p2p
