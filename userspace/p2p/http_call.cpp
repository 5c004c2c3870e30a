#include "shoal/p2p/http_call.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "shoal/obs/metrics.h"
#include "shoal/tls/session.h"
#include "shoal/util/buffer_pool.h"

namespace shoal::p2p {

namespace {

constexpr size_t kReadBuffer = 256 * 1024;

// The loop thread's read buffer: every read callback moves its bytes on
// (into the TLS session, or the parser copies them into the answer) before
// it returns, so one buffer serves every connection of the loop. It is not
// zeroed per call, unlike a buffer of each call's own.
char* read_buffer() {
  thread_local std::unique_ptr<char[]> buf(new char[kReadBuffer]);
  return buf.get();
}

uv_stream_t* stream(uv_tcp_t* t) { return reinterpret_cast<uv_stream_t*>(t); }

struct CallMetrics {
  obs::Counter& fresh = obs::metrics().counter(
      "shoal_p2p_requests_total", "Requests to other Shoal nodes (upload servers, schedulers) by connection",
      "connection=\"new\"");
  obs::Counter& reused = obs::metrics().counter(
      "shoal_p2p_requests_total", "Requests to other Shoal nodes (upload servers, schedulers) by connection",
      "connection=\"reused\"");
  obs::Counter& retried = obs::metrics().counter(
      "shoal_p2p_request_retries_total",
      "Requests sent again on a new connection: the other side had closed the kept-alive one");
};

CallMetrics& cm() {
  static CallMetrics m;
  return m;
}

}  // namespace

bool parse_addr(const std::string& addr, sockaddr_storage* out) {
  std::string host, port;
  if (!addr.empty() && addr[0] == '[') {
    auto close = addr.find(']');
    if (close == std::string::npos || close + 1 >= addr.size() || addr[close + 1] != ':') return false;
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
  } else {
    auto colon = addr.rfind(':');
    if (colon == std::string::npos) return false;
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    return false;
  unsigned long p = std::stoul(port);
  if (p == 0 || p > 65535) return false;
  *out = sockaddr_storage{};
  if (uv_ip4_addr(host.c_str(), static_cast<int>(p), reinterpret_cast<sockaddr_in*>(out)) == 0) return true;
  return uv_ip6_addr(host.c_str(), static_cast<int>(p), reinterpret_cast<sockaddr_in6*>(out)) == 0;
}

// --- Link: one connection -------------------------------------------------------------

struct Link;

namespace {

// A write owns its bytes and points at the link, not at a call: a call may
// finish (and be freed) before its request's write callback runs.
struct LinkWrite {
  uv_write_t req{};
  std::vector<uint8_t> bytes;
  Link* link = nullptr;
};

}  // namespace

// A TCP connection and, on TLS links, its session (which outlives the
// request: a kept-alive link skips the handshake too). user is the call on
// it; while idle, pool is the pool holding it, and a pool that closes a link
// stays in pool until the handle is gone. Reads run for the link's whole
// life: a call gets them through user, an idle link treats any byte or EOF
// as the end of it.
struct Link {
  uv_tcp_t tcp{};
  uv_connect_t creq{};
  std::string key;
  std::unique_ptr<tls::Session> tls;
  HttpCall* user = nullptr;
  LinkPool* pool = nullptr;
  uint64_t idle_since = 0;
  bool closing = false;

  void close() {
    if (closing) return;
    closing = true;
    user = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp), [](uv_handle_t* h) {
      auto* l = static_cast<Link*>(h->data);
      LinkPool::on_link_closed(l);
      delete l;
    });
  }
  // 0, or a libuv error from uv_write (its callback then never runs).
  int write(std::vector<uint8_t> bytes) {
    auto* w = new LinkWrite;
    w->bytes = std::move(bytes);
    w->link = this;
    w->req.data = w;
    uv_buf_t b =
        uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), static_cast<unsigned>(w->bytes.size()));
    int r = uv_write(&w->req, stream(&tcp), &b, 1, [](uv_write_t* req, int st) {
      auto* lw = static_cast<LinkWrite*>(req->data);
      Link* link = lw->link;
      delete lw;
      // libuv runs write callbacks, cancelled ones included, before the
      // close callback that frees the link; a closing link's failures are
      // nobody's business any more.
      if (st != 0 && !link->closing && link->user != nullptr) link->user->on_write_error(st);
    });
    if (r != 0) delete w;
    return r;
  }
  static void on_alloc(uv_handle_t*, size_t, uv_buf_t* buf) {
    *buf = uv_buf_init(read_buffer(), static_cast<unsigned>(kReadBuffer));
  }
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* l = static_cast<Link*>(s->data);
    if (l->closing) return;
    if (l->user != nullptr) return l->user->on_read(n, buf);
    // Idle: the other side closed it (its idle timeout, a restart) or sent
    // bytes nobody asked for. Either way it cannot carry a request.
    if (n != 0 && l->pool != nullptr) l->pool->drop(l);
  }
};

// --- LinkPool -------------------------------------------------------------------------

LinkPool::LinkPool(uv_loop_t* loop, Options opts) : loop_(loop), opts_(opts) {
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  uint64_t every = std::max<uint64_t>(opts_.idle_ms / 4, 10);
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<LinkPool*>(t->data)->expire(); }, every, every);
  // Housekeeping alone does not keep a loop running.
  uv_unref(reinterpret_cast<uv_handle_t*>(&timer_));
}

LinkPool::~LinkPool() = default;

Link* LinkPool::take(const std::string& key) {
  if (closed_) return nullptr;
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  Link* l = it->second.back();  // the most recently used: the least likely to be timed out
  it->second.pop_back();
  if (it->second.empty()) idle_.erase(it);
  --idle_count_;
  l->pool = nullptr;
  ++reused_;
  return l;
}

void LinkPool::put(Link* l) {
  l->user = nullptr;
  l->pool = this;
  if (closed_) {
    ++closing_;
    l->close();
    return;
  }
  l->idle_since = uv_now(loop_);
  // An idle TLS link keeps its session, not the session's buffers (a
  // piece's read leaves up to 256 KiB of input capacity behind).
  if (l->tls != nullptr) l->tls->trim();
  auto& v = idle_[l->key];
  v.push_back(l);
  ++idle_count_;
  if (v.size() > opts_.per_address) drop(v.front());
  if (idle_count_ > opts_.max_idle) {
    // Over the total: the longest idle of all goes.
    Link* oldest = nullptr;
    for (auto& kv : idle_)
      if (!kv.second.empty() && (!oldest || kv.second.front()->idle_since < oldest->idle_since))
        oldest = kv.second.front();
    if (oldest) drop(oldest);
  }
}

void LinkPool::drop(Link* l) {
  auto it = idle_.find(l->key);
  if (it != idle_.end()) {
    auto& v = it->second;
    auto at = std::find(v.begin(), v.end(), l);
    if (at != v.end()) {
      v.erase(at);
      --idle_count_;
    }
    if (v.empty()) idle_.erase(it);
  }
  ++closing_;
  l->close();
}

void LinkPool::expire() {
  uint64_t now = uv_now(loop_);
  std::vector<Link*> old;
  for (auto& kv : idle_)
    for (Link* l : kv.second)
      if (now - l->idle_since >= opts_.idle_ms) old.push_back(l);
  for (Link* l : old) drop(l);
}

void LinkPool::close(std::function<void()> done) {
  closed_ = true;
  on_closed_ = std::move(done);
  std::vector<Link*> all;
  for (auto& kv : idle_) all.insert(all.end(), kv.second.begin(), kv.second.end());
  for (Link* l : all) drop(l);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) {
    auto* p = static_cast<LinkPool*>(h->data);
    p->timer_closed_ = true;
    p->maybe_done();
  });
}

void LinkPool::on_link_closed(Link* l) {
  if (l->pool == nullptr) return;
  --l->pool->closing_;
  l->pool->maybe_done();
}

void LinkPool::maybe_done() {
  if (!closed_ || !timer_closed_ || closing_ != 0 || !on_closed_) return;
  auto d = std::move(on_closed_);
  on_closed_ = nullptr;
  d();
}

// --- HttpCall -------------------------------------------------------------------------

struct HttpCall::Handler : http::Handler {
  HttpCall* c;
  explicit Handler(HttpCall* call) : c(call) {}
  int on_head(http::MessageHead& head) override {
    if (head.status < 200) return 0;  // 100 Continue: the final answer follows
    c->result_.status = head.status;
    c->result_.headers = head.headers;
    // Reusable only when the body's end is known without the connection's.
    c->keep_ = head.keep_alive &&
               (head.content_length >= 0 || head.chunked || head.status == 204 || head.status == 304);
    if (head.content_length > 0) {
      if (static_cast<uint64_t>(head.content_length) > c->max_body_) return 1;
      auto n = static_cast<size_t>(head.content_length);
      // A piece: into a buffer this loop has used before (buffer_pool.h).
      if (n >= util::BufferPool::kMinKept && c->result_.body.capacity() < n)
        c->result_.body = util::BufferPool::local().take(n);
      c->result_.body.reserve(n);
    }
    return 0;
  }
  int on_body(const char* data, size_t len) override {
    c->received_ += len;
    if (c->result_.body.size() + len > c->max_body_) return 1;
    c->result_.body.append(data, len);
    if (c->observe_) c->observe_(data, len);
    return 0;
  }
  int on_message_complete() override {
    if (c->result_.status >= 200) {
      c->complete_ = true;
      c->parser_->pause();  // what follows is not this answer's
    }
    return 0;
  }
};

HttpCall::HttpCall() = default;
// Deleted on the loop thread (close_now): a body nobody took (a cancelled
// or failed piece) goes back to the loop's pool.
HttpCall::~HttpCall() { util::BufferPool::local().give_back(std::move(result_.body)); }

HttpCall* HttpCall::start(uv_loop_t* loop, const std::string& addr, std::string request, size_t max_body,
                          uint64_t timeout_ms, uint32_t mark, Done done, tls::ClientConfig* tls,
                          LinkPool* pool) {
  auto* c = new HttpCall();
  c->loop_ = loop;
  c->addr_ = addr;
  c->key_ = addr + (tls != nullptr ? "/tls" : "/tcp");
  c->mark_ = mark;
  c->pool_ = pool;
  c->tls_cfg_ = tls;
  c->request_ = std::move(request);
  c->max_body_ = max_body;
  c->done_ = std::move(done);
  c->handler_ = new Handler(c);
  c->parser_ = new http::Parser(http::Parser::Kind::Response, c->handler_);
  uv_timer_init(loop, &c->timer_);
  c->timer_.data = c;
  uv_timer_start(&c->timer_, on_timer, timeout_ms, 0);
  if (pool != nullptr) c->link_ = pool->take(c->key_);
  if (c->link_ != nullptr) {
    c->reused_link_ = true;
    c->link_->user = c;
    cm().reused.inc();
    c->send_request();
  } else {
    c->open_link();
  }
  return c;
}

// A new connection for this call. Failures are reported on the next loop
// turn: never a callback from inside start().
void HttpCall::open_link() {
  auto* l = new Link;
  l->key = key_;
  l->user = this;
  uv_tcp_init(loop_, &l->tcp);
  l->tcp.data = l;
  link_ = l;
  reused_link_ = false;
  if (pool_ != nullptr) ++pool_->opened_;
  cm().fresh.inc();
  sockaddr_storage ss{};
  int r = parse_addr(addr_, &ss) ? 0 : UV_EINVAL;
  if (r == 0 && mark_) {
    // SO_MARK must be on the socket before connect(): libuv creates it
    // inside uv_tcp_connect, so open it here.
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      r = -errno;
    } else {
      setsockopt(fd, SOL_SOCKET, SO_MARK, &mark_, sizeof mark_);
      r = uv_tcp_open(&l->tcp, fd);
      if (r != 0) ::close(fd);
    }
  }
  if (r == 0) {
    l->creq.data = l;
    r = uv_tcp_connect(&l->creq, &l->tcp, reinterpret_cast<sockaddr*>(&ss), [](uv_connect_t* req, int st) {
      auto* link = static_cast<Link*>(req->data);
      if (!link->closing && link->user != nullptr) link->user->on_connected(st);
    });
  }
  if (r != 0)
    fail_later(r, r == UV_EINVAL ? "bad address " + addr_ : std::string("connect: ") + uv_strerror(r));
}

// Finishes the call with error on the next loop turn (through its timer):
// for failures found inside start(), whose callback must not run there.
void HttpCall::fail_later(int error, std::string why) {
  result_.error = error;
  result_.why = std::move(why);
  uv_timer_start(
      &timer_,
      [](uv_timer_t* t) {
        auto* cc = static_cast<HttpCall*>(t->data);
        cc->finish(cc->result_.error, cc->result_.why);
      },
      0, 0);
}

// The request on a link whose handshake (if any) is done. A write the link
// refuses at once is a stale link: retried on a new one.
void HttpCall::send_request() {
  int r;
  if (link_->tls != nullptr) {
    r = link_->tls->write(reinterpret_cast<const uint8_t*>(request_.data()), request_.size()) ==
                tls::Status::Ok
            ? flush_tls()
            : UV_EPROTO;
  } else {
    r = link_->write(std::vector<uint8_t>(request_.begin(), request_.end()));
  }
  // Not failing here as long as only start() sends on a reused link (which
  // may always retry); reported on the next turn like any failure in start().
  if (r != 0 && !retry()) fail_later(r, std::string("write: ") + uv_strerror(r));
}

void HttpCall::on_connected(int status) {
  if (finished_) return;
  if (status != 0) return finish(status, std::string("connect: ") + uv_strerror(status));
  int r = uv_read_start(stream(&link_->tcp), Link::on_alloc, Link::on_read);
  if (r == 0 && tls_cfg_ != nullptr) {
    // The request waits for the handshake; the ClientHello goes first.
    link_->tls = tls::Session::client(tls_cfg_);
    if (link_->tls == nullptr) return finish(UV_ENOMEM, "TLS handshake: cannot set up a session");
    if (link_->tls->handshake() == tls::Status::Error)
      return finish(UV_EPROTO, "TLS " + link_->tls->error_string());
    r = flush_tls();
  } else if (r == 0) {
    r = link_->write(std::vector<uint8_t>(request_.begin(), request_.end()));
  }
  if (r != 0) finish(r, std::string("write: ") + uv_strerror(r));
}

// A kept-alive link that failed before any answer: the other side closed it
// while the request was on its way. Once, on a new connection; false when
// that does not apply (the failure is the call's).
bool HttpCall::retry() {
  if (!reused_link_ || retried_ || answered_ || finished_) return false;
  retried_ = true;
  cm().retried.inc();
  release_link(false);
  open_link();
  return true;
}

void HttpCall::on_write_error(int status) {
  if (finished_ || retry()) return;
  finish(status, std::string("write: ") + uv_strerror(status));
}

void HttpCall::on_read(ssize_t n, const uv_buf_t* buf) {
  if (finished_ || n == 0) return;
  if (n < 0) {
    if (retry()) return;
    if (n == UV_EOF) parser_->feed_eof();  // an answer delimited by the close
    if (complete_) {
      keep_ = false;
      return finish(0, "");
    }
    if (!finished_)
      finish(n == UV_EOF ? UV_EPROTO : static_cast<int>(n),
             n == UV_EOF ? "connection closed before the answer was complete"
                         : std::string("read: ") + uv_strerror(static_cast<int>(n)));
    return;
  }
  size_t len = static_cast<size_t>(n);
  if (link_->tls != nullptr) return read_tls(buf->base, len);
  feed_answer(buf->base, len);
  if (!finished_ && complete_) finish(0, "");
}

// Plaintext of the answer. Finishes the call on a bad answer; once the
// answer is complete, bytes after it make the link unfit for another.
void HttpCall::feed_answer(const char* data, size_t len) {
  if (len > 0) answered_ = true;
  size_t used = parser_->feed(data, len);
  if (finished_) return;
  if (complete_) {
    keep_ = keep_ && used == len;
    return;
  }
  if (used < len || parser_->error() != http::Error::None)
    finish(UV_EPROTO, "bad answer: " + parser_->error_detail());
}

// Ciphertext from the socket: finishes the handshake (then sends the
// request), and hands the answer's plaintext to the parser.
void HttpCall::read_tls(const char* data, size_t len) {
  tls::Session* s = link_->tls.get();
  s->feed(reinterpret_cast<const uint8_t*>(data), len);
  if (!s->handshake_done()) {
    tls::Status st = s->handshake();
    int r = flush_tls();  // our next flight, or an alert
    if (st == tls::Status::Error) return finish(UV_EPROTO, "TLS " + s->error_string());
    if (r != 0) return finish(r, std::string("write: ") + uv_strerror(r));
    if (st != tls::Status::Ok) return;
    if (s->write(reinterpret_cast<const uint8_t*>(request_.data()), request_.size()) != tls::Status::Ok)
      return finish(UV_EPROTO, "TLS " + s->error_string());
    r = flush_tls();
    if (r != 0) return finish(r, std::string("write: ") + uv_strerror(r));
  }
  // data has been copied into the session: the buffer takes the plaintext.
  auto* plain = reinterpret_cast<uint8_t*>(read_buffer());
  for (;;) {
    size_t n = 0;
    tls::Status st = s->read(plain, kReadBuffer, &n);
    int r = flush_tls();  // e.g. a refused renegotiation
    if (st == tls::Status::Ok && complete_) {
      keep_ = false;  // records after the answer
      return finish(0, "");
    }
    if (st == tls::Status::Ok) {
      feed_answer(reinterpret_cast<const char*>(plain), n);
      if (finished_) return;
      continue;  // when complete, one more read says whether anything follows
    }
    if (st == tls::Status::WantRead) {
      if (r != 0) return finish(r, std::string("write: ") + uv_strerror(r));
      if (complete_) {
        keep_ = keep_ && s->pending_input() == 0;
        finish(0, "");
      }
      return;
    }
    if (st == tls::Status::Closed) {
      // close_notify before any answer on a kept-alive link: as an EOF.
      if (retry()) return;
      if (complete_) {
        keep_ = false;
        return finish(0, "");
      }
      parser_->feed_eof();
      if (complete_) {
        keep_ = false;
        return finish(0, "");
      }
      return finish(UV_EPROTO, "connection closed before the answer was complete");
    }
    return finish(UV_EPROTO, "TLS " + s->error_string());
  }
}

// Writes whatever the session has produced. 0, or a libuv error from
// uv_write (its callback then never runs).
int HttpCall::flush_tls() {
  std::vector<uint8_t>& out = link_->tls->output();
  if (out.empty()) return 0;
  std::vector<uint8_t> bytes = std::move(out);
  out.clear();
  return link_->write(std::move(bytes));
}

void HttpCall::on_timer(uv_timer_t* t) {
  auto* c = static_cast<HttpCall*>(t->data);
  if (!c->finished_) c->finish(UV_ETIMEDOUT, "timed out");
}

// Hands the link on: to the pool after a complete answer that leaves it
// reusable, else closed.
void HttpCall::release_link(bool keep) {
  Link* l = link_;
  if (l == nullptr) return;
  link_ = nullptr;
  l->user = nullptr;
  if (keep && pool_ != nullptr && !l->closing)
    pool_->put(l);
  else
    l->close();
}

void HttpCall::finish(int error, const std::string& why) {
  if (finished_) return;
  finished_ = true;
  result_.error = error;
  if (error != 0) result_.why = why;
  // Before done: a call it starts to the same address can take the link.
  release_link(error == 0 && complete_ && keep_);
  Done d = std::move(done_);
  done_ = nullptr;
  close_now();
  if (d) d(result_);
}

void HttpCall::cancel() {
  done_ = nullptr;
  if (!finished_) {
    finished_ = true;
    release_link(false);
    close_now();
  }
}

// The parser is deleted with the call, in the timer's close callback:
// finish() may run inside one of its callbacks.
void HttpCall::close_now() {
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer_))) return;
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) {
    auto* c = static_cast<HttpCall*>(h->data);
    delete c->parser_;
    delete c->handler_;
    delete c;
  });
}

}  // namespace shoal::p2p
