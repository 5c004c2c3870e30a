// Upstream: one connection from Shoal to an origin (resolve, connect, TLS
// client handshake, one write in flight, reads into the worker's shared
// buffer), and Side, one socket with its write queue. Internal to the proxy
// module: a client Conn forwards requests through one, and the task engine's
// back-to-source fetch uses another.
//
// With a site proxy configured (upstreamProxy) and the origin not on its
// noProxy list, the TCP connection goes to the proxy, which is asked with
// CONNECT host:port (Proxy-Authorization: Basic when credentials are
// configured) to open a tunnel; TLS and HTTP then run inside it as they
// would on a direct connection. The proxy's refusal (407, 403, 502...), a
// refused connect or a bad answer fail the Upstream with a reason naming the
// proxy by its URL without credentials, and a log line says the same.
//
// Ownership: an Upstream is owned by its UpstreamOwner until release(); it
// then closes itself and frees itself in its close callback (or when a DNS
// lookup it is waiting for returns) and never calls the owner again.
// Callbacks into the owner happen on the owner's loop thread only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shoal/http/http.h"
#include "shoal/proxy/worker.h"
#include "shoal/tls/session.h"

namespace shoal::proxy {

// One TCP socket, optionally with TLS, and its write queue.
struct Side {
  uv_tcp_t tcp{};
  std::unique_ptr<tls::Session> tls;
  std::vector<char> wbuf;   // bytes of the uv_write in flight
  std::vector<char> queue;  // bytes waiting for the next uv_write
  uv_write_t wreq{};
  uv_shutdown_t sreq{};
  bool inited = false;
  bool reading = false;
  bool wpending = false;
  bool eof = false;        // the peer sent FIN
  bool shut = false;       // we sent FIN
  bool want_shut = false;  // send FIN once the queue is flushed
  bool corked = false;     // flush() waits: a batch is being built
  // The write in flight went straight into the kernel (libuv writes at once
  // when it can; only its callback is deferred). Such a side is not "busy":
  // stopping and restarting the other side's reads for it cost several
  // epoll_ctl calls per small request. Memory stays bounded: while wpending
  // nothing more is written, so at most one read's worth queues up.
  bool in_kernel = false;
  uint64_t bytes_in = 0, bytes_out = 0;
  bool busy() const { return (wpending && !in_kernel) || !queue.empty(); }
  void note_written() {
    in_kernel = uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp)) == 0;
  }
};

struct Upstream;

// What an Upstream reports to whoever owns it.
class UpstreamOwner {
 public:
  virtual ~UpstreamOwner() = default;
  virtual void upstream_ready(Upstream* u) = 0;                             // connected (and TLS done)
  virtual void upstream_failed(Upstream* u, const std::string& why) = 0;    // owner must release()
  virtual void upstream_data(Upstream* u, const char* data, size_t n) = 0;  // raw bytes read
  virtual void upstream_eof(Upstream* u) = 0;
  virtual void upstream_written(Upstream* u, int status) = 0;  // a uv_write finished
};

struct Upstream {
  // ProxyConnect: connected to the site proxy, waiting for its answer to
  // CONNECT.
  enum class St { Resolving, Connecting, ProxyConnect, Handshaking, Ready, Closed };
  // Starts resolving/connecting; never returns null. A failure found before
  // open() returns is left in fail_reason (the caller must check it and
  // release); later ones reach owner->upstream_failed().
  // dial: an IP literal to connect to instead of resolving host (the
  // original destination of a transparently intercepted connection: TLS
  // still verifies host). Through a site proxy (upstreamProxy) the proxy is
  // asked for host, or for name when given (the TLS server name of a
  // transparently intercepted connection that is spliced to its address:
  // proxies' access rules are written for names); dial then only matters to
  // the noProxy check, which looks at host, name and dial.
  static Upstream* open(Worker& w, UpstreamOwner* owner, const std::string& host, uint16_t port, bool use_tls,
                        std::shared_ptr<tls::ClientConfig> tls_cfg, http::Handler* response_handler,
                        const std::string& dial = "", const std::string& name = "");

  // Queues plaintext for the origin (buffered until Ready) and flushes.
  void send(const char* data, size_t n);
  void flush();
  void set_reading(bool on);
  void release();

  UpstreamOwner* owner = nullptr;  // null once released
  Worker* w = nullptr;
  Side side;
  std::string host;
  uint16_t port = 0;
  bool use_tls = false;
  St st = St::Resolving;
  uv_getaddrinfo_t gai{};
  uv_connect_t creq{};
  bool gai_pending = false;
  bool connect_pending = false;
  std::vector<char> early;  // plaintext queued before Ready
  std::shared_ptr<tls::ClientConfig> tls_cfg;
  std::unique_ptr<http::Parser> parser;  // responses
  bool busy_exchange = false;            // a request is outstanding
  int exchanges = 0;                     // requests completed on this connection
  std::string fail_reason;
  // The site proxy this connection goes through; empty when direct.
  std::string proxy;  // its URL without credentials, e.g. "http://proxy.example.org:3128"

  // Internals used by the libuv callbacks.
  void connect_addr(const sockaddr* sa);
  void connected();  // TCP is up: CONNECT through the proxy, or start TLS / report ready
  void proxy_bytes(const char* data, size_t n);
  void proxy_failed(const std::string& why, int status);
  void start_origin(const char* early_bytes, size_t n);  // the path to the origin is open
  void handshake_step();
  void fail(const std::string& why);
  bool opening = false;
  std::string proxy_auth;    // Proxy-Authorization value; secret
  std::string proxy_target;  // what CONNECT asks for: host:port, or name:port
  struct ProxyReply;
  std::unique_ptr<ProxyReply> proxy_reply;  // the CONNECT answer's parser, while ProxyConnect
  ~Upstream();
};

// Helpers shared by Conn and the fetcher.
void append(std::vector<char>& v, const char* p, size_t n);
// Moves what the TLS session produced into the side's write queue.
void append_tls_output(Side& s);
// Decrypts as many records as fit into buf (cap bytes), so parsers and the
// other side's TLS layer see large runs instead of one record at a time.
// *n bytes are in buf; the return value is what ended the run: Ok when buf
// is full, else WantRead, Closed or Error — which the caller must act on
// after it has used the *n bytes (a close_notify right behind the last data
// is reported only once).
tls::Status read_records(tls::Session& tls, uint8_t* buf, size_t cap, size_t* n);
// Drops a write buffer that grew large, so idle connections stay small.
void release_wbuf(Side& s);
std::string host_port(const std::string& host, uint16_t port);

// Where an origin's redirect points, and the headers to send there. A
// relative Location keeps the origin. Across hosts the registry's
// Authorization is dropped (object stores reject a request carrying it, and
// it must not leak); Host is rewritten. False for a Location that is
// neither absolute http(s) nor absolute-path.
struct Target {
  std::string host;
  uint16_t port = 443;
  bool https = true;
  std::string path;
};
bool redirect_target(const std::string& location, Target* t, std::vector<http::Header>* headers);

}  // namespace shoal::proxy
