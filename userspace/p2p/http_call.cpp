#include "shoal/p2p/http_call.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <memory>

#include "shoal/tls/session.h"

namespace shoal::p2p {

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

struct HttpCall::Handler : http::Handler {
  HttpCall* c;
  explicit Handler(HttpCall* call) : c(call) {}
  int on_head(http::MessageHead& head) override {
    if (head.status < 200) return 0;  // 100 Continue: the final answer follows
    c->result_.status = head.status;
    c->result_.headers = head.headers;
    if (head.content_length > 0) {
      if (static_cast<uint64_t>(head.content_length) > c->max_body_) return 1;
      c->result_.body.reserve(static_cast<size_t>(head.content_length));
    }
    return 0;
  }
  int on_body(const char* data, size_t len) override {
    c->received_ += len;
    if (c->result_.body.size() + len > c->max_body_) return 1;
    c->result_.body.append(data, len);
    return 0;
  }
  int on_message_complete() override {
    if (c->result_.status >= 200) c->finish(0, "");
    return 0;
  }
};

// TLS output (handshake flights, the sealed request, alerts) on its way to
// the socket. libuv runs write callbacks, cancelled ones included, before
// the close callback that frees the call, so call is valid in on_written.
struct HttpCall::TlsWrite {
  uv_write_t req{};
  std::vector<uint8_t> bytes;
  HttpCall* call = nullptr;
};

HttpCall::HttpCall() = default;
HttpCall::~HttpCall() = default;

HttpCall* HttpCall::start(uv_loop_t* loop, const std::string& addr, std::string request, size_t max_body,
                          uint64_t timeout_ms, uint32_t mark, Done done, tls::ClientConfig* tls) {
  auto* c = new HttpCall();
  c->tls_cfg_ = tls;
  c->request_ = std::move(request);
  c->max_body_ = max_body;
  c->done_ = std::move(done);
  c->handler_ = new Handler(c);
  c->parser_ = new http::Parser(http::Parser::Kind::Response, c->handler_);
  uv_tcp_init(loop, &c->tcp_);
  uv_timer_init(loop, &c->timer_);
  c->tcp_.data = c;
  c->timer_.data = c;
  c->closes_ = 2;
  uv_timer_start(&c->timer_, on_timer, timeout_ms, 0);
  sockaddr_storage ss{};
  int r = parse_addr(addr, &ss) ? 0 : UV_EINVAL;
  if (r == 0 && mark) {
    // SO_MARK must be on the socket before connect(): libuv creates it
    // inside uv_tcp_connect, so open it here.
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      r = -errno;
    } else {
      setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
      r = uv_tcp_open(&c->tcp_, fd);
    }
  }
  if (r == 0) {
    c->creq_.data = c;
    r = uv_tcp_connect(&c->creq_, &c->tcp_, reinterpret_cast<sockaddr*>(&ss), on_connect);
  }
  if (r != 0) {
    // Never call back from inside start(): report on the next loop turn.
    c->result_.why = r == UV_EINVAL ? "bad address " + addr : std::string("connect: ") + uv_strerror(r);
    c->result_.error = r;
    uv_timer_start(
        &c->timer_,
        [](uv_timer_t* t) {
          auto* cc = static_cast<HttpCall*>(t->data);
          cc->finish(cc->result_.error, cc->result_.why);
        },
        0, 0);
  }
  return c;
}

void HttpCall::on_connect(uv_connect_t* req, int status) {
  auto* c = static_cast<HttpCall*>(req->data);
  if (c->finished_) return;
  if (status != 0) {
    c->finish(status, std::string("connect: ") + uv_strerror(status));
    return;
  }
  int r = 0;
  if (c->tls_cfg_ != nullptr) {
    // The request waits for the handshake; the ClientHello goes first.
    c->tls_ = tls::Session::client(c->tls_cfg_);
    if (c->tls_ == nullptr) {
      c->finish(UV_ENOMEM, "TLS handshake: cannot set up a session");
      return;
    }
    if (c->tls_->handshake() == tls::Status::Error) {
      c->finish(UV_EPROTO, "TLS " + c->tls_->error_string());
      return;
    }
    r = c->flush_tls();
  } else {
    uv_buf_t b = uv_buf_init(c->request_.data(), static_cast<unsigned>(c->request_.size()));
    c->wreq_.data = c;
    r = uv_write(&c->wreq_, reinterpret_cast<uv_stream_t*>(&c->tcp_), &b, 1, [](uv_write_t* w, int st) {
      auto* cc = static_cast<HttpCall*>(w->data);
      if (st != 0 && !cc->finished_) cc->finish(st, std::string("write: ") + uv_strerror(st));
    });
  }
  if (r == 0)
    r = uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp_),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* cc = static_cast<HttpCall*>(h->data);
          if (cc->rbuf_.empty()) cc->rbuf_.resize(256 * 1024);
          *buf = uv_buf_init(cc->rbuf_.data(), static_cast<unsigned>(cc->rbuf_.size()));
        },
        on_read);
  if (r != 0) c->finish(r, std::string("write: ") + uv_strerror(r));
}

void HttpCall::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<HttpCall*>(s->data);
  if (c->finished_ || n == 0) return;
  if (n < 0) {
    if (n == UV_EOF) c->parser_->feed_eof();
    if (!c->finished_)
      c->finish(n == UV_EOF ? UV_EPROTO : static_cast<int>(n),
                n == UV_EOF ? "connection closed before the answer was complete"
                            : std::string("read: ") + uv_strerror(static_cast<int>(n)));
    return;
  }
  size_t len = static_cast<size_t>(n);
  if (c->tls_ != nullptr)
    c->read_tls(buf->base, len);
  else
    c->feed_answer(buf->base, len);
}

void HttpCall::feed_answer(const char* data, size_t len) {
  size_t used = parser_->feed(data, len);
  if (finished_) return;
  if (used < len || parser_->error() != http::Error::None)
    finish(UV_EPROTO, "bad answer: " + parser_->error_detail());
}

// Ciphertext from the socket: finishes the handshake (then sends the
// request), and hands the answer's plaintext to the parser.
void HttpCall::read_tls(const char* data, size_t len) {
  tls_->feed(reinterpret_cast<const uint8_t*>(data), len);
  if (!tls_->handshake_done()) {
    tls::Status st = tls_->handshake();
    int r = flush_tls();  // our next flight, or an alert
    if (st == tls::Status::Error) return finish(UV_EPROTO, "TLS " + tls_->error_string());
    if (r != 0) return finish(r, std::string("write: ") + uv_strerror(r));
    if (st != tls::Status::Ok) return;
    if (tls_->write(reinterpret_cast<const uint8_t*>(request_.data()), request_.size()) != tls::Status::Ok)
      return finish(UV_EPROTO, "TLS " + tls_->error_string());
    r = flush_tls();
    if (r != 0) return finish(r, std::string("write: ") + uv_strerror(r));
  }
  // data has been copied into the session: rbuf_ takes the plaintext.
  auto* plain = reinterpret_cast<uint8_t*>(rbuf_.data());
  while (!finished_) {
    size_t n = 0;
    tls::Status st = tls_->read(plain, rbuf_.size(), &n);
    int r = flush_tls();  // e.g. a refused renegotiation
    if (st == tls::Status::Ok) {
      feed_answer(rbuf_.data(), n);
      continue;
    }
    if (st == tls::Status::WantRead) {
      if (r != 0) finish(r, std::string("write: ") + uv_strerror(r));
      return;
    }
    if (st == tls::Status::Closed) {
      parser_->feed_eof();
      if (!finished_) finish(UV_EPROTO, "connection closed before the answer was complete");
      return;
    }
    return finish(UV_EPROTO, "TLS " + tls_->error_string());
  }
}

// Writes whatever the session has produced. 0, or a libuv error from
// uv_write (its callback then never runs).
int HttpCall::flush_tls() {
  std::vector<uint8_t>& out = tls_->output();
  if (out.empty()) return 0;
  auto* w = new TlsWrite;
  w->bytes = std::move(out);
  out.clear();
  w->call = this;
  w->req.data = w;
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), static_cast<unsigned>(w->bytes.size()));
  int r = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1, [](uv_write_t* req, int st) {
    auto* tw = static_cast<TlsWrite*>(req->data);
    HttpCall* cc = tw->call;
    delete tw;
    if (st != 0 && !cc->finished_) cc->finish(st, std::string("write: ") + uv_strerror(st));
  });
  if (r != 0) delete w;
  return r;
}

void HttpCall::on_timer(uv_timer_t* t) {
  auto* c = static_cast<HttpCall*>(t->data);
  if (!c->finished_) c->finish(UV_ETIMEDOUT, "timed out");
}

void HttpCall::finish(int error, const std::string& why) {
  if (finished_) return;
  finished_ = true;
  result_.error = error;
  if (error != 0) result_.why = why;
  Done d = std::move(done_);
  done_ = nullptr;
  close_now();
  if (d) d(result_);
}

void HttpCall::cancel() {
  done_ = nullptr;
  if (!finished_) {
    finished_ = true;
    close_now();
  }
}

// The parser is deleted with the call, in the last close callback: finish()
// may run inside one of its callbacks.
void HttpCall::close_now() {
  auto on_close = [](uv_handle_t* h) {
    auto* c = static_cast<HttpCall*>(h->data);
    if (--c->closes_ == 0) {
      delete c->parser_;
      delete c->handler_;
      delete c;
    }
  };
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&tcp_)))
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer_)))
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
}

}  // namespace shoal::p2p
