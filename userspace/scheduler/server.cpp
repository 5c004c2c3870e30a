// The scheduler's HTTP server. A connection's life:
//
//            accept
//              |
//              v
//   +------> Reading ------ bytes ----> in_ (kept input)
//   |          |                          |
//   |          |              pump(): parse one request at a time, answer
//   |          |              it into out_ (State calls are synchronous,
//   |          |              so answers are queued in request order);
//   |          |              stop at the high mark or at the end of in_
//   |          v                          |
//   +---- write done <--- Writing <--- flush(): out_ -> one uv_write
//                          (no reading while a write is in flight)
//
//   Closing: EOF, a read or write error, a timeout, a parse error, an
//   over-long body, or "Connection: close" (after the last answer is
//   written). Both handles (tcp, timer) close; the last close callback
//   frees the Conn.
#include "shoal/scheduler/server.h"

#include <sys/socket.h>

#include <cstring>
#include <ctime>

#include "shoal/http/http.h"
#include "shoal/obs/log.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/protocol.h"
#include "shoal/scheduler/state.h"
#include "shoal/util/sockaddr.h"

namespace shoal::scheduler {
namespace {

constexpr size_t kReadBuffer = 64 * 1024;
// Parsing pauses while this much output waits for the socket.
constexpr size_t kOutHigh = 256 * 1024;
// Refused requests and State notes: at most this many log lines a second.
constexpr int kLogPerSecond = 10;

// Lets through kLogPerSecond lines a second and counts the rest, so a flood
// of forged requests cannot flood the log.
class LogLimiter {
 public:
  // True when a line may be written now; *suppressed receives how many were
  // held back since the last one written.
  bool allow(uint64_t now_ms, uint64_t* suppressed) {
    if (now_ms / 1000 != second_) {
      second_ = now_ms / 1000;
      used_ = 0;
    }
    if (used_ >= kLogPerSecond) {
      ++held_;
      return false;
    }
    ++used_;
    *suppressed = held_;
    held_ = 0;
    return true;
  }

 private:
  uint64_t second_ = 0, held_ = 0;
  int used_ = 0;
};

}  // namespace

struct Server::Impl {
  struct Conn;

  uv_loop_t* loop;
  State* state;
  p2p::Signer signer;
  p2p::Verifier verifier;
  ServerOptions opts;
  std::function<int64_t()> unix_now = [] { return static_cast<int64_t>(time(nullptr)); };
  uv_tcp_t* listener = nullptr;
  uv_timer_t expire_timer{}, stats_timer{};
  bool timers_started = false;
  Conn* conns = nullptr;
  size_t nconns = 0;
  int pending_closes = 0;
  bool closing = false;
  std::function<void()> on_closed;
  char read_buf[kReadBuffer];
  LogLimiter refused_log, note_log;

  Impl(uv_loop_t* l, State* s, const std::string& secret, ServerOptions o)
      : loop(l), state(s), signer(secret), verifier(secret, o.max_nonces), opts(o) {}

  void closed_one() {
    if (--pending_closes == 0 && closing && nconns == 0 && on_closed) {
      auto done = std::move(on_closed);
      on_closed = nullptr;
      done();
    }
  }

  static void on_connection(uv_stream_t* server, int status);
  static void on_expire(uv_timer_t* t);
  static void on_stats(uv_timer_t* t);
  void log_stats();
};

struct Server::Impl::Conn final : http::Handler {
  enum class TimerMode { None, Header, Idle };

  Impl* srv;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  http::Parser parser;
  std::string peer;  // remote address, for logs
  Conn *prev = nullptr, *next = nullptr;
  int pending_closes = 0;
  bool closing = false;
  bool reading = false;
  bool writing = false;
  bool stopped = false;  // no further request is parsed (an error or Connection: close)
  TimerMode tmode = TimerMode::None;

  http::MessageHead head;
  std::string body;
  bool body_too_large = false;
  std::string in;  // received bytes not yet parsed
  size_t in_off = 0;
  std::string out;        // answers waiting for the socket
  std::string wbuf;       // the answers in flight
  std::string req_nonce;  // the request being answered; a member to keep its buffer
  uv_write_t wreq{};

  explicit Conn(Impl* s) : srv(s), parser(http::Parser::Kind::Request, this) {}

  // --- http::Handler ----------------------------------------------------------------
  int on_head(http::MessageHead& h) override {
    head = std::move(h);
    body.clear();
    body_too_large = false;
    if (head.content_length > 0 && static_cast<uint64_t>(head.content_length) > srv->opts.max_body) {
      body_too_large = true;
      refuse_and_close(413, "request body too large");
      return 1;
    }
    return 0;
  }
  int on_body(const char* data, size_t len) override {
    if (body.size() + len > srv->opts.max_body) {
      body_too_large = true;
      refuse_and_close(413, "request body too large");
      return 1;
    }
    body.append(data, len);
    return 0;
  }
  int on_message_complete() override {
    handle();
    // One request per feed(): pump() decides whether to go on.
    parser.pause();
    return 0;
  }

  // --- answers ------------------------------------------------------------------------
  void queue(int status, std::string_view ctype, std::string_view payload, const std::string* sig,
             bool close_conn) {
    out += "HTTP/1.1 ";
    out += std::to_string(status);
    out += ' ';
    out += http::reason_phrase(status);
    out += "\r\nContent-Type: ";
    out += ctype;
    out += "\r\nContent-Length: ";
    out += std::to_string(payload.size());
    out += "\r\n";
    if (sig) {
      out += "X-Shoal-Signature: ";
      out += *sig;
      out += "\r\n";
    }
    if (close_conn) out += "Connection: close\r\n";
    out += "\r\n";
    out += payload;
  }

  void queue_signed(int status, const std::string& payload, const std::string& nonce, bool close_conn) {
    std::string sig = srv->signer.sign_response(nonce, status, payload);
    queue(status, "application/json", payload, &sig, close_conn);
  }

  void refuse_and_close(int status, std::string_view why) {
    queue(status, "text/plain", why, nullptr, true);
    stopped = true;
  }

  void handle() {
    bool close_conn = !head.keep_alive;
    if (head.method == "GET" && head.target == "/healthz") {
      queue(200, "text/plain", "ok", nullptr, close_conn);
    } else {
      auto v =
          srv->verifier.verify(head.method, head.target, head.headers, body, srv->unix_now(), &req_nonce);
      if (v != p2p::Verifier::Verdict::Ok) {
        uint64_t held = 0;
        if (srv->refused_log.allow(uv_now(srv->loop), &held)) {
          obs::log_warn("scheduler request refused")
              .str("verdict", p2p::to_string(v))
              .str("peer", peer)
              .str("method", head.method)
              .str("path", head.target.substr(0, 64))
              .num("suppressed", static_cast<int64_t>(held));
        }
        queue(403, "text/plain", "forbidden", nullptr, close_conn);
      } else {
        dispatch(req_nonce, close_conn);
      }
    }
    if (close_conn) stopped = true;
  }

  template <typename Req>
  bool decode_or_400(Req* req, const std::string& nonce, bool close_conn) {
    std::string err;
    if (p2p::decode(body, req, &err)) return true;
    p2p::ErrorResp e;
    e.error = err;
    queue_signed(400, p2p::encode(e), nonce, close_conn);
    return false;
  }

  void answer(int status, const std::string& ok_body, const std::string& err, const std::string& nonce,
              bool close_conn) {
    if (status == 200) {
      queue_signed(200, ok_body, nonce, close_conn);
      return;
    }
    p2p::ErrorResp e;
    e.error = err;
    queue_signed(status, p2p::encode(e), nonce, close_conn);
  }

  void dispatch(const std::string& nonce, bool close_conn) {
    const std::string& path = head.target;
    static constexpr std::string_view kPrefix = "/v1/";
    if (path.compare(0, kPrefix.size(), kPrefix) != 0) {
      p2p::ErrorResp e;
      e.error = "no such endpoint";
      queue_signed(404, p2p::encode(e), nonce, close_conn);
      return;
    }
    std::string_view op = std::string_view(path).substr(kPrefix.size());
    bool known = op == "register" || op == "heartbeat" || op == "announce" || op == "parents" ||
                 op == "result" || op == "leave";
    if (!known) {
      p2p::ErrorResp e;
      e.error = "no such endpoint";
      queue_signed(404, p2p::encode(e), nonce, close_conn);
      return;
    }
    if (head.method != "POST") {
      p2p::ErrorResp e;
      e.error = "method not allowed: use POST";
      queue_signed(405, p2p::encode(e), nonce, close_conn);
      return;
    }
    int64_t now = static_cast<int64_t>(uv_now(srv->loop));
    State& st = *srv->state;
    std::string err;
    if (op == "register") {
      p2p::RegisterReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      p2p::RegisterResp resp;
      int s = st.register_peer(req, now, &resp, &err);
      answer(s, s == 200 ? p2p::encode(resp) : std::string(), err, nonce, close_conn);
    } else if (op == "heartbeat") {
      p2p::HeartbeatReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      int s = st.heartbeat(req, now, &err);
      answer(s, p2p::encode_ack(), err, nonce, close_conn);
    } else if (op == "announce") {
      p2p::AnnounceReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      int s = st.announce(req, now, &err);
      answer(s, p2p::encode_ack(), err, nonce, close_conn);
    } else if (op == "parents") {
      p2p::ParentsReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      p2p::ParentsResp resp;
      int s = st.parents(req, now, &resp, &err);
      answer(s, s == 200 ? p2p::encode(resp) : std::string(), err, nonce, close_conn);
    } else if (op == "result") {
      p2p::ResultReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      int s = st.result(req, now, &err);
      answer(s, p2p::encode_ack(), err, nonce, close_conn);
    } else {
      p2p::LeaveReq req;
      if (!decode_or_400(&req, nonce, close_conn)) return;
      int s = st.leave(req, now, &err);
      answer(s, p2p::encode_ack(), err, nonce, close_conn);
    }
  }

  // --- I/O ----------------------------------------------------------------------------
  void start(uv_stream_t* server) {
    uv_tcp_init(srv->loop, &tcp);
    tcp.data = this;
    uv_timer_init(srv->loop, &timer);
    timer.data = this;
    pending_closes = 2;
    // Linked before accept, so a failure below closes through the usual path.
    next = srv->conns;
    if (next) next->prev = this;
    srv->conns = this;
    ++srv->nconns;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&tcp)) != 0) {
      close();
      return;
    }
    uv_tcp_nodelay(&tcp, 1);
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getpeername(&tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) peer = util::sockaddr_str(ss);
    pump();
  }

  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(h->data);
    // One loop, and on_read consumes the bytes before the next read: the
    // server's buffer serves every connection.
    *buf = uv_buf_init(c->srv->read_buf, kReadBuffer);
  }

  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(s->data);
    if (nread == 0 || c->closing) return;
    if (nread < 0) {
      // EOF: answer what was asked already, then close.
      c->stopped = true;
      if (nread != UV_EOF) {
        c->close();
        return;
      }
      c->pump();
      return;
    }
    c->in.append(buf->base, static_cast<size_t>(nread));
    c->pump();
  }

  // Parses kept input one request at a time while the queued answers stay
  // under the high mark, then writes and decides about reading and timers.
  void pump() {
    for (;;) {
      while (!closing && !stopped && in_off < in.size() && out.size() < kOutHigh) {
        if (parser.paused()) parser.resume();
        size_t n = parser.feed(in.data() + in_off, in.size() - in_off);
        in_off += n;
        if (parser.error() != http::Error::None) {
          if (!stopped) {
            // The parser gives a status for each error; Callback errors were
            // answered by the handler already.
            int st = http::status_for(parser.error());
            refuse_and_close(st, http::to_string(parser.error()));
          }
          break;
        }
        if (parser.upgraded()) {
          // CONNECT or Upgrade: answered (refused) already; nothing may follow.
          stopped = true;
          break;
        }
        if (n == 0) break;
      }
      if (in_off == in.size()) {
        in.clear();
        in_off = 0;
      }
      // Answers up to the high mark, written at once: room again for the
      // rest of the kept input (no write callback will come to resume).
      const bool full = out.size() >= kOutHigh;
      flush();
      if (closing) return;
      if (!full || writing || stopped || in_off == in.size()) break;
    }
    if (stopped && !writing && out.empty()) {
      close();
      return;
    }
    bool want = !stopped && !writing && in_off == in.size();
    if (want && !reading) {
      if (uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp), on_alloc, on_read) != 0) {
        close();
        return;
      }
      reading = true;
    } else if (!want && reading) {
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
      reading = false;
    }
    arm_timer();
  }

  void flush() {
    if (writing || out.empty() || closing) return;
    // The answers usually fit the socket buffer: written at once, they need
    // no write request, no callback and no pause in reading (each pause is
    // an epoll_ctl pair).
    uv_buf_t now = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp), &now, 1);
    if (n < 0 && n != UV_EAGAIN) {
      close();
      return;
    }
    size_t done = n > 0 ? static_cast<size_t>(n) : 0;
    if (done == out.size()) {
      out.clear();
      return;
    }
    wbuf.swap(out);
    out.clear();
    uv_buf_t b = uv_buf_init(wbuf.data() + done, static_cast<unsigned>(wbuf.size() - done));
    wreq.data = this;
    if (uv_write(&wreq, reinterpret_cast<uv_stream_t*>(&tcp), &b, 1, on_write) != 0) {
      close();
      return;
    }
    writing = true;
  }

  static void on_write(uv_write_t* req, int status) {
    auto* c = static_cast<Conn*>(req->data);
    c->writing = false;
    c->wbuf.clear();
    if (c->closing) return;
    if (status < 0) {
      c->close();
      return;
    }
    c->pump();
  }

  // A request under way must complete within the header timeout (counted
  // from its first byte, not re-armed by later bytes, so a trickle cannot
  // hold the connection); otherwise the idle timeout runs from the last
  // activity.
  void arm_timer() {
    if (parser.in_message() || in_off < in.size()) {
      if (tmode != TimerMode::Header) {
        tmode = TimerMode::Header;
        uv_timer_start(&timer, on_timer, srv->opts.header_timeout_ms, 0);
      }
      return;
    }
    tmode = TimerMode::Idle;
    uv_timer_start(&timer, on_timer, srv->opts.idle_timeout_ms, 0);
  }

  static void on_timer(uv_timer_t* t) {
    auto* c = static_cast<Conn*>(t->data);
    obs::log_debug("scheduler connection timed out")
        .str("peer", c->peer)
        .str("phase", c->tmode == TimerMode::Header ? "request" : "idle");
    c->close();
  }

  void close() {
    if (closing) return;
    closing = true;
    auto cb = [](uv_handle_t* h) {
      auto* c = static_cast<Conn*>(h->data);
      if (--c->pending_closes == 0) c->destroy();
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp), cb);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), cb);
  }

  void destroy() {
    if (prev)
      prev->next = next;
    else
      srv->conns = next;
    if (next) next->prev = prev;
    --srv->nconns;
    Impl* s = srv;
    delete this;
    if (s->closing && s->nconns == 0 && s->pending_closes == 0 && s->on_closed) {
      auto done = std::move(s->on_closed);
      s->on_closed = nullptr;
      done();
    }
  }
};

void Server::Impl::on_connection(uv_stream_t* server, int status) {
  auto* s = static_cast<Impl*>(server->data);
  if (status < 0) {
    obs::log_warn("scheduler accept failed").str("error", uv_strerror(status));
    return;
  }
  auto* c = new Conn(s);
  c->start(server);
}

void Server::Impl::on_expire(uv_timer_t* t) {
  auto* s = static_cast<Impl*>(t->data);
  s->state->expire(static_cast<int64_t>(uv_now(s->loop)));
  s->verifier.tidy(s->unix_now());
}

void Server::Impl::on_stats(uv_timer_t* t) { static_cast<Impl*>(t->data)->log_stats(); }

void Server::Impl::log_stats() {
  Counters c = state->counters();
  obs::log_info("scheduler stats")
      .num("peers", static_cast<int64_t>(c.peers))
      .num("tasks", static_cast<int64_t>(c.tasks))
      .num("connections", static_cast<int64_t>(nconns))
      .num("assignments", static_cast<int64_t>(c.assignments))
      .num("register", static_cast<int64_t>(c.ops[static_cast<int>(Op::Register)]))
      .num("heartbeat", static_cast<int64_t>(c.ops[static_cast<int>(Op::Heartbeat)]))
      .num("announce", static_cast<int64_t>(c.ops[static_cast<int>(Op::Announce)]))
      .num("parents", static_cast<int64_t>(c.ops[static_cast<int>(Op::Parents)]))
      .num("result", static_cast<int64_t>(c.ops[static_cast<int>(Op::Result)]))
      .num("leave", static_cast<int64_t>(c.ops[static_cast<int>(Op::Leave)]))
      .num("errors", static_cast<int64_t>(c.errors))
      .num("hash_conflicts", static_cast<int64_t>(c.hash_conflicts))
      .num("bad_pieces", static_cast<int64_t>(c.bad_pieces))
      .num("peers_expired", static_cast<int64_t>(c.peers_expired))
      .num("tasks_expired", static_cast<int64_t>(c.tasks_expired))
      .num("origin_assigned", static_cast<int64_t>(c.origin_assigned));
}

Server::Server(uv_loop_t* loop, State* state, const std::string& secret, ServerOptions opts)
    : impl_(std::make_unique<Impl>(loop, state, secret, opts)) {
  Impl* s = impl_.get();
  state->set_note_sink([s](const Note& n) {
    uint64_t held = 0;
    if (!s->note_log.allow(uv_now(s->loop), &held)) return;
    obs::log_warn(n.what)
        .str("peer", n.peer)
        .str("task", n.task)
        .num("piece", n.piece)
        .str("detail", n.other)
        .num("suppressed", static_cast<int64_t>(held));
  });
}

Server::~Server() { impl_->state->set_note_sink(nullptr); }

int Server::listen(const std::string& addr, uint16_t port, std::string* err) {
  Impl* s = impl_.get();
  sockaddr_storage ss{};
  if (uv_ip4_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in*>(&ss)) != 0 &&
      uv_ip6_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) {
    *err = "not an IP address: " + addr;
    return UV_EINVAL;
  }
  auto* t = new uv_tcp_t;
  uv_tcp_init(s->loop, t);
  t->data = s;
  int r = uv_tcp_bind(t, reinterpret_cast<sockaddr*>(&ss), 0);
  if (r == 0) r = uv_listen(reinterpret_cast<uv_stream_t*>(t), 1024, Impl::on_connection);
  if (r != 0) {
    *err = "cannot listen on " + addr + ":" + std::to_string(port) + ": " + uv_strerror(r);
    uv_close(reinterpret_cast<uv_handle_t*>(t),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    return r;
  }
  s->listener = t;
  if (!s->timers_started) {
    s->timers_started = true;
    uv_timer_init(s->loop, &s->expire_timer);
    s->expire_timer.data = s;
    uv_timer_start(&s->expire_timer, Impl::on_expire, s->opts.expire_interval_ms, s->opts.expire_interval_ms);
    uv_timer_init(s->loop, &s->stats_timer);
    s->stats_timer.data = s;
    uv_timer_start(&s->stats_timer, Impl::on_stats, s->opts.stats_interval_ms, s->opts.stats_interval_ms);
  }
  return 0;
}

uint16_t Server::port() const {
  if (!impl_->listener) return 0;
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getsockname(impl_->listener, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  return util::sockaddr_port(ss);
}

void Server::close(std::function<void()> done) {
  Impl* s = impl_.get();
  s->closing = true;
  s->on_closed = std::move(done);
  auto closed = [](uv_handle_t* h) { static_cast<Impl*>(h->data)->closed_one(); };
  // Counted before any uv_close: a callback must not see zero early.
  s->pending_closes = 1 + (s->listener ? 1 : 0) + (s->timers_started ? 2 : 0);
  if (s->listener) {
    uv_close(reinterpret_cast<uv_handle_t*>(s->listener), [](uv_handle_t* h) {
      auto* impl = static_cast<Impl*>(h->data);
      delete reinterpret_cast<uv_tcp_t*>(h);
      impl->closed_one();
    });
    s->listener = nullptr;
  }
  if (s->timers_started) {
    uv_close(reinterpret_cast<uv_handle_t*>(&s->expire_timer), closed);
    uv_close(reinterpret_cast<uv_handle_t*>(&s->stats_timer), closed);
    s->timers_started = false;
  }
  for (Impl::Conn* c = s->conns; c; c = c->next) c->close();
  // The extra count keeps done() from running before every close above was
  // requested; with nothing left to close, done() runs right here.
  s->closed_one();
}

size_t Server::connections() const { return impl_->nconns; }

void Server::set_clock_for_test(std::function<int64_t()> unix_now) { impl_->unix_now = std::move(unix_now); }

}  // namespace shoal::scheduler
