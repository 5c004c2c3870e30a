#include "shoal/ctl/http_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "shoal/tls/session.h"

namespace shoal::ctl {

std::string HostPort::str() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

bool parse_host_port(const std::string& s, HostPort* out) {
  std::string t = s;
  if (t.rfind("http://", 0) == 0) t = t.substr(7);
  while (!t.empty() && t.back() == '/') t.pop_back();
  std::string host;
  uint16_t port = 0;
  bool v6 = false;
  if (!http::parse_authority(t, &host, &port, &v6)) return false;
  out->host = host;
  out->port = port;
  return true;
}

const std::string* Response::find(const char* name) const {
  for (const auto& h : headers)
    if (http::iequals(h.name, name)) return &h.value;
  return nullptr;
}

namespace {

constexpr size_t kMaxErrorBody = 64 * 1024;

// One TCP connection, optionally wrapped in TLS, used blockingly with
// SO_RCVTIMEO/SO_SNDTIMEO as the silence limit.
class Conn {
 public:
  explicit Conn(int timeout_s) : timeout_s_(timeout_s) {}
  ~Conn() {
    if (fd_ >= 0) close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool connect_tcp(const std::string& host, uint16_t port, std::string* err) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string what = HostPort{host, port}.str();
    int r = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (r != 0) {
      *err = "cannot resolve " + host + ": " + gai_strerror(r);
      return false;
    }
    std::string last = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
      int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) {
        last = strerror(errno);
        continue;
      }
      int c = connect(fd, a->ai_addr, a->ai_addrlen);
      if (c != 0 && errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        int pr;
        do pr = poll(&p, 1, timeout_s_ * 1000);
        while (pr < 0 && errno == EINTR);
        if (pr == 0) {
          last = "connect timed out after " + std::to_string(timeout_s_) + " s";
          close(fd);
          continue;
        }
        int soerr = 0;
        socklen_t len = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        c = soerr == 0 ? 0 : -1;
        errno = soerr;
      }
      if (c != 0) {
        last = strerror(errno);
        close(fd);
        continue;
      }
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      timeval tv{timeout_s_, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      fd_ = fd;
      break;
    }
    freeaddrinfo(res);
    if (fd_ < 0) {
      *err = "cannot connect to " + what + ": " + last;
      return false;
    }
    return true;
  }

  bool start_tls(tls::ClientConfig* cfg, const std::string& host, std::string* err) {
    tls_ = tls::Session::client(cfg, host);
    if (!tls_) {
      *err = "TLS: cannot set up a session for " + host;
      return false;
    }
    char buf[16 * 1024];
    for (;;) {
      tls::Status st = tls_->handshake();
      if (!flush(err)) return false;
      if (st == tls::Status::Ok) return true;
      if (st != tls::Status::WantRead) {
        *err = "TLS: " + tls_->error_string();
        if (!tls_->verify_info().empty() || tls_->error_string().find("verif") != std::string::npos)
          *err += " (does shoalctl trust the CA that signed it? add it with --cacert)";
        return false;
      }
      ssize_t n = raw_recv(buf, sizeof buf, err);
      if (n < 0) return false;
      if (n == 0) {
        *err = "TLS: connection closed during the handshake";
        return false;
      }
      tls_->feed(reinterpret_cast<const uint8_t*>(buf), static_cast<size_t>(n));
    }
  }

  bool send_all(const std::string& data, std::string* err) {
    if (!tls_) return raw_send(reinterpret_cast<const uint8_t*>(data.data()), data.size(), err);
    if (tls_->write(reinterpret_cast<const uint8_t*>(data.data()), data.size()) != tls::Status::Ok) {
      *err = "TLS: " + tls_->error_string();
      return false;
    }
    return flush(err);
  }

  // >0 bytes, 0 at the end of the stream, -1 on error (with *err).
  ssize_t recv_some(char* buf, size_t cap, std::string* err) {
    if (!tls_) return raw_recv(buf, cap, err);
    char in[16 * 1024];
    for (;;) {
      size_t n = 0;
      tls::Status st = tls_->read(reinterpret_cast<uint8_t*>(buf), cap, &n);
      if (!flush(err)) return -1;
      if (st == tls::Status::Ok) return static_cast<ssize_t>(n);
      if (st == tls::Status::Closed) return 0;
      if (st == tls::Status::Error) {
        *err = "TLS: " + tls_->error_string();
        return -1;
      }
      ssize_t got = raw_recv(in, sizeof in, err);
      if (got <= 0) return got;  // a close without close_notify: HTTP framing judges
      tls_->feed(reinterpret_cast<const uint8_t*>(in), static_cast<size_t>(got));
    }
  }

  // Reads an HTTP head byte by byte (a CONNECT answer: nothing after it may
  // be consumed), at most 64 KiB.
  bool read_head(std::string* head, std::string* err) {
    char c;
    while (head->size() < 64 * 1024) {
      ssize_t n = raw_recv(&c, 1, err);
      if (n < 0) return false;
      if (n == 0) {
        *err = "the proxy closed the connection";
        return false;
      }
      *head += c;
      if (head->size() >= 4 && head->compare(head->size() - 4, 4, "\r\n\r\n") == 0) return true;
    }
    *err = "the proxy's answer head is over 64 KiB";
    return false;
  }

  bool raw_send_str(const std::string& s, std::string* err) {
    return raw_send(reinterpret_cast<const uint8_t*>(s.data()), s.size(), err);
  }

 private:
  bool flush(std::string* err) {
    std::vector<uint8_t>& out = tls_->output();
    if (out.empty()) return true;
    bool ok = raw_send(out.data(), out.size(), err);
    out.clear();
    return ok;
  }
  bool raw_send(const uint8_t* p, size_t len, std::string* err) {
    size_t off = 0;
    while (off < len) {
      ssize_t w = send(fd_, p + off, len - off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        *err = errno == EAGAIN ? "send timed out after " + std::to_string(timeout_s_) + " s"
                               : std::string("send: ") + strerror(errno);
        return false;
      }
      off += static_cast<size_t>(w);
    }
    return true;
  }
  ssize_t raw_recv(char* buf, size_t cap, std::string* err) {
    for (;;) {
      ssize_t n = recv(fd_, buf, cap, 0);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      *err = errno == EAGAIN ? "no data for " + std::to_string(timeout_s_) + " s (timed out)"
                             : std::string("recv: ") + strerror(errno);
      return -1;
    }
  }

  int fd_ = -1;
  int timeout_s_;
  std::unique_ptr<tls::Session> tls_;
};

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::string authority(const http::Url& u) {
  std::string h = u.ipv6_literal ? "[" + u.host + "]" : u.host;
  if (u.port != 0) h += ":" + std::to_string(u.port);
  return h;
}

uint16_t effective_port(const http::Url& u) { return u.port ? u.port : (u.scheme == "https" ? 443 : 80); }

// Location may be absolute, scheme-relative, absolute-path or relative.
std::string resolve(const http::Url& base, const std::string& loc) {
  if (loc.find("://") != std::string::npos) return loc;
  if (loc.rfind("//", 0) == 0) return base.scheme + ":" + loc;
  std::string root = base.scheme + "://" + authority(base);
  if (!loc.empty() && loc[0] == '/') return root + loc;
  std::string dir = base.path.substr(0, base.path.find('?'));
  dir = dir.substr(0, dir.rfind('/') + 1);
  return root + dir + loc;
}

struct RespHandler : http::Handler {
  Response* resp = nullptr;
  const HttpClient::HeadFn* head_fn = nullptr;
  const HttpClient::BodyFn* body_fn = nullptr;
  bool final = false, complete = false, stopped = false, redirect = false;

  int on_head(http::MessageHead& h) override {
    if (h.status < 200) return 0;  // 100 Continue and friends: the real answer follows
    final = true;
    resp->status = h.status;
    resp->reason = h.reason;
    resp->headers = h.headers;
    resp->content_length = h.content_length;
    redirect = is_redirect(h.status) && h.find("Location") != nullptr;
    if (h.status / 100 == 2 && *head_fn && !(*head_fn)(*resp)) {
      stopped = true;
      return 1;
    }
    return 0;
  }
  int on_body(const char* d, size_t n) override {
    if (!final) return 0;
    if (redirect || resp->status / 100 != 2) {
      if (resp->body.size() < kMaxErrorBody)
        resp->body.append(d, std::min(n, kMaxErrorBody - resp->body.size()));
      return 0;
    }
    if (*body_fn && !(*body_fn)(d, n)) {
      stopped = true;
      return 1;
    }
    return 0;
  }
  int on_message_complete() override {
    if (final) complete = true;
    return 0;
  }
};

}  // namespace

struct HttpClient::Impl {
  ClientOptions opts;
  tls::Rng rng;
  tls::TrustStore trust;
  std::unique_ptr<tls::ClientConfig> cfg;

  bool once(const std::string& method, const http::Url& u, const std::string& url,
            const std::vector<http::Header>& headers, Response* resp, const HeadFn& on_head,
            const BodyFn& on_body, std::string* err);
};

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClient::~HttpClient() = default;

std::unique_ptr<HttpClient> HttpClient::create(const ClientOptions& opts, std::string* err) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  if (impl->opts.timeout_s <= 0) impl->opts.timeout_s = 60;
  for (const auto& f : opts.ca_files)
    if (!impl->trust.add(f, err)) return nullptr;
  if (opts.system_store) {
    std::string serr;
    const char* env = getenv("SSL_CERT_FILE");
    bool ok = env && *env ? impl->trust.add(env, &serr) : impl->trust.add_system(&serr);
    // A host without a system bundle still reaches hijacked hosts through
    // the site CA; only say so when nothing at all is trusted.
    if (!ok && impl->trust.count() == 0) {
      *err = "no trusted CA certificates: " + serr;
      return nullptr;
    }
  }
  impl->cfg = std::make_unique<tls::ClientConfig>(&impl->rng, &impl->trust, false);
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(impl)));
}

bool HttpClient::Impl::once(const std::string& method, const http::Url& u, const std::string& url,
                            const std::vector<http::Header>& headers, Response* resp, const HeadFn& on_head,
                            const BodyFn& on_body, std::string* err) {
  Conn c(opts.timeout_s);
  uint16_t port = effective_port(u);
  HostPort origin{u.host, port};
  bool https = u.scheme == "https";
  if (opts.proxy) {
    if (!c.connect_tcp(opts.proxy->host, opts.proxy->port, err)) {
      *err += " (the proxy; is shoald running?)";
      return false;
    }
  } else if (!c.connect_tcp(u.host, port, err)) {
    return false;
  }
  if (https && opts.proxy) {
    std::string req = "CONNECT " + origin.str() + " HTTP/1.1\r\nHost: " + origin.str() +
                      "\r\nUser-Agent: " + opts.user_agent + "\r\n\r\n";
    std::string head;
    if (!c.raw_send_str(req, err) || !c.read_head(&head, err)) {
      *err = "CONNECT " + origin.str() + " through " + opts.proxy->str() + ": " + *err;
      return false;
    }
    std::string line = head.substr(0, head.find("\r\n"));
    size_t sp = line.find(' ');
    int code = sp == std::string::npos ? 0 : atoi(line.c_str() + sp + 1);
    if (code / 100 != 2) {
      *err = "CONNECT " + origin.str() + " through " + opts.proxy->str() + ": " +
             (sp == std::string::npos ? line : line.substr(sp + 1));
      return false;
    }
  }
  if (https && !c.start_tls(cfg.get(), u.host, err)) {
    *err = origin.str() + ": " + *err;
    return false;
  }
  std::vector<http::Header> hs;
  hs.push_back({"Host", authority(u)});
  bool have_ua = false;
  for (const auto& h : headers) {
    if (http::iequals(h.name, "Host") || http::iequals(h.name, "Connection")) continue;
    if (http::iequals(h.name, "User-Agent")) have_ua = true;
    hs.push_back(h);
  }
  if (!have_ua) hs.push_back({"User-Agent", opts.user_agent});
  hs.push_back({"Connection", "close"});
  std::string target = opts.proxy && !https ? url.substr(0, url.find('#')) : u.path;
  if (!c.send_all(http::serialize_request_head(method, target, hs), err)) {
    *err = origin.str() + ": " + *err;
    return false;
  }
  RespHandler h;
  h.resp = resp;
  h.head_fn = &on_head;
  h.body_fn = &on_body;
  http::Parser p(http::Parser::Kind::Response, &h);
  if (method == "HEAD") p.expect_no_body();
  std::vector<char> buf(256 * 1024);
  uint64_t got = 0;
  while (!h.complete) {
    ssize_t n = c.recv_some(buf.data(), buf.size(), err);
    if (n < 0) {
      *err = origin.str() + ": " + *err;
      return false;
    }
    if (n == 0) {
      p.feed_eof();
      if (!h.complete) {
        *err = origin.str() + ": connection closed before the response ended";
        if (h.final && resp->content_length >= 0)
          *err += " (" + std::to_string(got) + " of " + std::to_string(resp->content_length) + " body bytes)";
        return false;
      }
      break;
    }
    p.feed(buf.data(), static_cast<size_t>(n));
    got += static_cast<uint64_t>(n);
    if (h.stopped) {
      *err = "stopped";
      return false;
    }
    if (p.error() != http::Error::None) {
      *err = origin.str() + ": malformed response: " + p.error_detail();
      return false;
    }
  }
  return true;
}

bool HttpClient::request(const std::string& method, const std::string& url,
                         const std::vector<http::Header>& headers, Response* resp, const HeadFn& on_head,
                         const BodyFn& on_body, std::string* err) {
  std::string cur = url;
  std::vector<http::Header> hs = headers;
  std::string first_host;
  for (int hop = 0; hop <= 10; ++hop) {
    http::Url u;
    if (!http::parse_absolute_url(cur, &u)) {
      *err = "not an http:// or https:// URL: " + cur;
      return false;
    }
    if (hop == 0) first_host = u.host;
    *resp = Response{};
    if (!impl_->once(method, u, cur, hs, resp, on_head, on_body, err)) return false;
    const std::string* loc = resp->find("Location");
    if (!is_redirect(resp->status) || !loc) {
      resp->url = cur;
      return true;
    }
    std::string next = resolve(u, *loc);
    http::Url nu;
    if (!http::parse_absolute_url(next, &nu)) {
      *err = "redirect to an unusable location: " + *loc;
      return false;
    }
    // Object stores refuse (S3: 400) a request carrying the registry's
    // token, and it must not leak to another host anyway.
    if (!http::iequals(nu.host, first_host)) {
      std::vector<http::Header> kept;
      for (auto& h : hs)
        if (!http::iequals(h.name, "Authorization")) kept.push_back(h);
      hs = std::move(kept);
    }
    cur = next;
  }
  *err = "more than 10 redirects, last to " + cur;
  return false;
}

}  // namespace shoal::ctl
