#include "shoal/p2p/http_call.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <memory>

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

HttpCall* HttpCall::start(uv_loop_t* loop, const std::string& addr, std::string request, size_t max_body,
                          uint64_t timeout_ms, uint32_t mark, Done done) {
  auto* c = new HttpCall();
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
  uv_buf_t b = uv_buf_init(c->request_.data(), static_cast<unsigned>(c->request_.size()));
  c->wreq_.data = c;
  int r = uv_write(&c->wreq_, reinterpret_cast<uv_stream_t*>(&c->tcp_), &b, 1, [](uv_write_t* w, int st) {
    auto* cc = static_cast<HttpCall*>(w->data);
    if (st != 0 && !cc->finished_) cc->finish(st, std::string("write: ") + uv_strerror(st));
  });
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
  size_t used = c->parser_->feed(buf->base, len);
  if (c->finished_) return;
  if (used < len || c->parser_->error() != http::Error::None)
    c->finish(UV_EPROTO, "bad answer: " + c->parser_->error_detail());
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
