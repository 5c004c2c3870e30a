// One HTTP/1.1 request to another Shoal node (a scheduler or a peer's
// upload server) over TCP to an IP literal, on one libuv loop: connect,
// write the request, parse the response, close. With a TLS configuration
// (p2p.tls, peer_tls.h) a TLS handshake comes first and the request and
// answer travel inside it; without, the bytes are plain. Bodies up to a cap are
// collected in memory (scheduler answers, pieces). Connections are not
// reused: a piece is megabytes, a scheduler call a few per second.
//
// Ownership: start() returns a call that frees itself after its done
// callback has run (or after cancel()). done runs exactly once unless the
// call is cancelled, never from inside start().
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

class HttpCall {
 public:
  using Done = std::function<void(CallResult&)>;
  // addr: "ip:port" / "[v6]:port". request: the whole request (head and
  // body). max_body: answers with a larger body fail. timeout_ms: the whole
  // call. mark: SO_MARK for the socket (0: none), so Shoal's own
  // connections are never redirected back to it. tls: a PSK configuration
  // (tls::ClientConfig::psk) to speak TLS with, or null for plain TCP; it
  // must outlive the call. A failed handshake ends the call with UV_EPROTO
  // and why starting "TLS handshake: ".
  static HttpCall* start(uv_loop_t* loop, const std::string& addr, std::string request, size_t max_body,
                         uint64_t timeout_ms, uint32_t mark, Done done, tls::ClientConfig* tls = nullptr);
  // No callback after this; the call frees itself.
  void cancel();
  // Body bytes received so far (stall detection).
  uint64_t received() const { return received_; }

 private:
  HttpCall();
  ~HttpCall();
  struct Handler;
  struct TlsWrite;
  void finish(int error, const std::string& why);
  void close_now();
  void feed_answer(const char* data, size_t len);
  void read_tls(const char* data, size_t len);
  int flush_tls();
  static void on_connect(uv_connect_t* req, int status);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_timer(uv_timer_t* t);

  uv_tcp_t tcp_{};
  uv_timer_t timer_{};
  uv_connect_t creq_{};
  uv_write_t wreq_{};
  std::string request_;
  std::vector<char> rbuf_;
  size_t max_body_ = 0;
  uint64_t received_ = 0;
  Done done_;
  bool finished_ = false;
  int closes_ = 0;
  CallResult result_;
  Handler* handler_ = nullptr;
  http::Parser* parser_ = nullptr;
  tls::ClientConfig* tls_cfg_ = nullptr;
  std::unique_ptr<tls::Session> tls_;  // from the connect on, with tls_cfg_
};

// Splits "ip:port" / "[v6]:port" into a sockaddr. False on junk.
bool parse_addr(const std::string& addr, sockaddr_storage* out);

}  // namespace shoal::p2p
