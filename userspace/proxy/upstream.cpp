#include "upstream.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "shoal/config/upstream_proxy.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"

namespace shoal::proxy {

// The site proxy's answer to CONNECT: only its status line matters; a
// refusal's body is never read.
struct Upstream::ProxyReply : http::Handler {
  ProxyReply() : parser(http::Parser::Kind::Response, this, 16 * 1024) { parser.expect_connect_response(); }
  int on_head(http::MessageHead& head) override {
    if (head.status < 200) return 0;  // an interim 1xx; the final answer follows
    status = head.status;
    reason = head.reason;
    return 0;
  }
  int on_body(const char*, size_t) override { return 0; }
  int on_message_complete() override { return 0; }
  http::Parser parser;
  int status = 0;
  std::string reason;
};

Upstream::~Upstream() = default;

void append(std::vector<char>& v, const char* p, size_t n) { v.insert(v.end(), p, p + n); }

void append_tls_output(Side& s) {
  auto& out = s.tls->output();
  if (out.empty()) return;
  // Through char pointers: iterator ranges of another element type compile
  // to a byte-at-a-time loop here, which cost 5-8 % of relay CPU.
  append(s.queue, reinterpret_cast<const char*>(out.data()), out.size());
  out.clear();
}

tls::Status read_records(tls::Session& tls, uint8_t* buf, size_t cap, size_t* n) {
  constexpr size_t kRecord = 16 * 1024;
  *n = 0;
  for (;;) {
    size_t got = 0;
    tls::Status st = tls.read(buf + *n, cap - *n, &got);
    if (st != tls::Status::Ok) return st;
    *n += got;
    if (cap - *n < kRecord) return tls::Status::Ok;
  }
}

void release_wbuf(Side& s) {
  // Large objects stream through in 64 KiB steps; don't keep a big buffer
  // per idle connection.
  if (s.wbuf.capacity() > 256 * 1024)
    std::vector<char>().swap(s.wbuf);
  else
    s.wbuf.clear();
}

std::string host_port(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

namespace {

struct ProxyMetrics {
  obs::Counter& ok =
      obs::metrics().counter("shoal_upstream_proxy_connects_total",
                             "CONNECTs through the site proxy (upstreamProxy), by outcome", "result=\"ok\"");
  obs::Counter& failed = obs::metrics().counter("shoal_upstream_proxy_connects_total",
                                                "CONNECTs through the site proxy (upstreamProxy), by outcome",
                                                "result=\"error\"");
};

ProxyMetrics& proxy_metrics() {
  static ProxyMetrics m;
  return m;
}

// What a site proxy's refusal usually means, for the operator.
const char* proxy_status_hint(int status) {
  switch (status) {
    case 401:  // tinyproxy's answer to wrong credentials (407 when there are none)
    case 407:
      return "upstreamProxy credentials missing or wrong";
    case 403:
      return "the proxy does not allow this host or port";
    case 502:
    case 503:
    case 504:
      return "the proxy could not reach the origin";
    default:
      return "";
  }
}

void on_close(uv_handle_t* h) { delete static_cast<Upstream*>(h->data); }

void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* u = static_cast<Upstream*>(h->data);
  *buf = uv_buf_init(u->w->read_buffer(), static_cast<unsigned>(Worker::kReadBufferSize));
}

void on_write(uv_write_t* req, int status) {
  auto* u = static_cast<Upstream*>(req->data);
  u->side.wpending = false;
  u->side.in_kernel = false;
  release_wbuf(u->side);
  if (u->owner) u->owner->upstream_written(u, status);
}

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* u = static_cast<Upstream*>(s->data);
  if (!u->owner || nread == 0) return;
  if (u->st == Upstream::St::ProxyConnect && nread < 0) {
    u->proxy_failed(nread == UV_EOF
                        ? "closed the connection before answering CONNECT"
                        : std::string("connection error: ") + uv_strerror(static_cast<int>(nread)),
                    0);
    return;
  }
  if (nread == UV_EOF) {
    u->side.eof = true;
    u->owner->upstream_eof(u);
    return;
  }
  if (nread < 0) {
    u->owner->upstream_failed(
        u, std::string("origin connection error: ") + uv_strerror(static_cast<int>(nread)));
    return;
  }
  u->side.bytes_in += static_cast<uint64_t>(nread);
  if (u->st == Upstream::St::ProxyConnect) {
    u->proxy_bytes(buf->base, static_cast<size_t>(nread));
    return;
  }
  if (u->st == Upstream::St::Handshaking) {
    u->side.tls->feed(reinterpret_cast<const uint8_t*>(buf->base), static_cast<size_t>(nread));
    u->handshake_step();
    return;
  }
  u->owner->upstream_data(u, buf->base, static_cast<size_t>(nread));
}

void on_connect(uv_connect_t* req, int status) {
  auto* u = static_cast<Upstream*>(req->data);
  u->connect_pending = false;
  if (!u->owner) return;
  if (status != 0) {
    if (!u->proxy.empty()) {
      u->proxy_failed(std::string("connect: ") + uv_strerror(status), 0);
      return;
    }
    u->owner->upstream_failed(u, "connect to " + host_port(u->host, u->port) + ": " + uv_strerror(status));
    return;
  }
  u->connected();
}

void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
  auto* u = static_cast<Upstream*>(req->data);
  u->gai_pending = false;
  if (!u->owner) {
    if (res) uv_freeaddrinfo(res);
    u->release();
    return;
  }
  if (status != 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    if (!u->proxy.empty()) {
      u->proxy_failed(std::string("cannot resolve its host: ") + uv_strerror(status), 0);
      return;
    }
    u->owner->upstream_failed(u, "cannot resolve " + u->host + ": " + uv_strerror(status));
    return;
  }
  // The first address; resolvers order them by RFC 6724 preference.
  u->connect_addr(res->ai_addr);
  uv_freeaddrinfo(res);
}

}  // namespace

Upstream* Upstream::open(Worker& w, UpstreamOwner* owner, const std::string& host, uint16_t port,
                         bool use_tls, std::shared_ptr<tls::ClientConfig> tls_cfg,
                         http::Handler* response_handler, const std::string& dial, const std::string& name) {
  auto* u = new Upstream;
  u->owner = owner;
  u->w = &w;
  u->host = host;
  u->port = port;
  u->use_tls = use_tls;
  u->tls_cfg = std::move(tls_cfg);
  u->parser = std::make_unique<http::Parser>(http::Parser::Kind::Response, response_handler);
  u->opening = true;
  // The site proxy, unless this origin is on its noProxy list (checked on
  // the name and on the address a transparent client connected to).
  std::string conn_host = dial.empty() ? host : dial;
  uint16_t conn_port = port;
  {
    std::shared_ptr<const Runtime> rt = w.runtime();
    const config::UpstreamProxy& up = rt->cfg->upstream_proxy;
    const bool bypass = config::no_proxy_match(up.no_proxy, host, port, dial) ||
                        (!name.empty() && config::no_proxy_match(up.no_proxy, name, port, dial));
    if (up.enabled && !bypass) {
      u->proxy = up.display;
      u->proxy_target = host_port(name.empty() ? host : name, port);
      u->proxy_auth = rt->upstream_proxy_auth;
      conn_host = up.host;
      conn_port = up.port;
    }
  }
  sockaddr_in6 a6{};
  sockaddr_in a4{};
  if (uv_ip4_addr(conn_host.c_str(), conn_port, &a4) == 0) {
    u->connect_addr(reinterpret_cast<sockaddr*>(&a4));
  } else if (uv_ip6_addr(conn_host.c_str(), conn_port, &a6) == 0) {
    u->connect_addr(reinterpret_cast<sockaddr*>(&a6));
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    u->gai.data = u;
    u->gai_pending = true;
    int r = uv_getaddrinfo(w.loop(), &u->gai, on_resolved, conn_host.c_str(),
                           std::to_string(conn_port).c_str(), &hints);
    if (r != 0) {
      u->gai_pending = false;
      if (u->proxy.empty())
        u->fail("cannot resolve " + host + ": " + uv_strerror(r));
      else
        u->proxy_failed(std::string("cannot resolve its host: ") + uv_strerror(r), 0);
    }
  }
  u->opening = false;
  return u;
}

void Upstream::fail(const std::string& why) {
  if (opening) {
    fail_reason = why;
    return;
  }
  owner->upstream_failed(this, why);
}

void Upstream::connect_addr(const sockaddr* sa) {
  int r = uv_tcp_init_ex(w->loop(), &side.tcp, sa->sa_family);
  if (r != 0) {
    fail(std::string("socket: ") + uv_strerror(r));
    return;
  }
  side.inited = true;
  side.tcp.data = this;
  if (uint32_t mark = w->shared().mark) {
    // Shoal's own connections must never be redirected back to itself.
    uv_os_fd_t fd;
    uv_fileno(reinterpret_cast<uv_handle_t*>(&side.tcp), &fd);
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
      fail(std::string("setsockopt(SO_MARK): ") + strerror(errno));
      return;
    }
  }
  uv_tcp_nodelay(&side.tcp, 1);
  creq.data = this;
  st = St::Connecting;
  r = uv_tcp_connect(&creq, &side.tcp, sa, on_connect);
  if (r != 0) {
    if (!proxy.empty())
      proxy_failed(std::string("connect: ") + uv_strerror(r), 0);
    else
      fail("connect to " + host_port(host, port) + ": " + uv_strerror(r));
    return;
  }
  connect_pending = true;
}

void Upstream::connected() {
  if (proxy.empty()) {
    start_origin(nullptr, 0);
    return;
  }
  // RFC 9110 9.3.6: CONNECT's target is the authority, and Host repeats it.
  std::vector<http::Header> hs{{"Host", proxy_target}};
  if (!proxy_auth.empty()) hs.push_back({"Proxy-Authorization", proxy_auth});
  const std::string req = http::serialize_request_head("CONNECT", proxy_target, hs);
  proxy_reply = std::make_unique<ProxyReply>();
  st = St::ProxyConnect;
  append(side.queue, req.data(), req.size());
  flush();
  if (owner) set_reading(true);
}

void Upstream::proxy_bytes(const char* data, size_t n) {
  http::Parser& p = proxy_reply->parser;
  const size_t used = p.feed(data, n);
  const int status = proxy_reply->status;
  if (status != 0 && (status < 200 || status > 299)) {
    std::string why = "refused CONNECT " + proxy_target + ": " + std::to_string(status);
    if (!proxy_reply->reason.empty()) why += " " + proxy_reply->reason;
    if (*proxy_status_hint(status)) why += std::string(" (") + proxy_status_hint(status) + ")";
    proxy_failed(why, status);
    return;
  }
  if (p.error() != http::Error::None) {
    proxy_failed("bad answer to CONNECT: " + p.error_detail(), 0);
    return;
  }
  if (!p.upgraded()) return;  // the head is not complete yet
  proxy_metrics().ok.inc();
  proxy_reply.reset();
  // Bytes behind the head already belong to the origin. They sit in the
  // worker's read buffer, which the owner's callbacks may reuse: copy.
  std::vector<char> rest(data + used, data + n);
  start_origin(rest.data(), rest.size());
}

void Upstream::proxy_failed(const std::string& why, int status) {
  proxy_metrics().failed.inc();
  {
    // Names the proxy by its URL without credentials; never the
    // Proxy-Authorization value.
    auto line = obs::log_warn("site proxy error");
    line.str("proxy", proxy).str("target", proxy_target).str("error", why);
    if (status != 0) line.num("status", status);
  }
  fail("site proxy " + proxy + " " + why);
}

void Upstream::start_origin(const char* early_bytes, size_t n) {
  if (!owner) return;
  if (use_tls) {
    side.tls = tls::Session::client(tls_cfg.get(), host);
    if (!side.tls) {
      owner->upstream_failed(this, "cannot create a TLS session for " + host);
      return;
    }
    side.tls->set_log_label("origin " + host_port(host, port));
    st = St::Handshaking;
    set_reading(true);
    if (n > 0) side.tls->feed(reinterpret_cast<const uint8_t*>(early_bytes), n);
    handshake_step();
    return;
  }
  st = St::Ready;
  owner->upstream_ready(this);
  if (n > 0 && owner && st == St::Ready) owner->upstream_data(this, early_bytes, n);
}

void Upstream::handshake_step() {
  tls::Status s = side.tls->handshake();
  append_tls_output(side);
  flush();
  if (s == tls::Status::Ok) {
    st = St::Ready;
    owner->upstream_ready(this);
    return;
  }
  if (s == tls::Status::WantRead) return;
  std::string why = side.tls->error_string();
  std::string vi = side.tls->verify_info();
  if (!vi.empty() && why.find(vi) == std::string::npos) why += " (" + vi + ")";
  owner->upstream_failed(this, "TLS handshake with " + host_port(host, port) + " failed: " + why);
}

void Upstream::send(const char* data, size_t n) {
  if (st != St::Ready) {
    append(early, data, n);
    return;
  }
  if (side.tls) {
    if (side.tls->write(reinterpret_cast<const uint8_t*>(data), n) != tls::Status::Ok) {
      owner->upstream_failed(this, "TLS write to origin failed: " + side.tls->error_string());
      return;
    }
    append_tls_output(side);
  } else {
    append(side.queue, data, n);
  }
  flush();
}

void Upstream::flush() {
  if (side.corked || !side.inited || side.wpending || side.queue.empty() || st == St::Closed) return;
  side.wbuf.swap(side.queue);
  side.queue.clear();
  uv_buf_t b = uv_buf_init(side.wbuf.data(), static_cast<unsigned>(side.wbuf.size()));
  side.wreq.data = this;
  int r = uv_write(&side.wreq, reinterpret_cast<uv_stream_t*>(&side.tcp), &b, 1, on_write);
  if (r != 0) {
    release_wbuf(side);
    owner->upstream_failed(this, std::string("write to origin: ") + uv_strerror(r));
    return;
  }
  side.wpending = true;
  side.note_written();
  side.bytes_out += b.len;
}

void Upstream::set_reading(bool on) {
  if (!side.inited || on == side.reading || st == St::Closed) return;
  auto* s = reinterpret_cast<uv_stream_t*>(&side.tcp);
  if (on)
    uv_read_start(s, on_alloc, on_read);
  else
    uv_read_stop(s);
  side.reading = on;
}

void Upstream::release() {
  owner = nullptr;
  st = St::Closed;
  if (gai_pending) {
    // A lookup still queued in the thread pool is cancelled; one already
    // running cannot be. Either way on_resolved runs and frees this.
    uv_cancel(reinterpret_cast<uv_req_t*>(&gai));
    return;
  }
  if (side.inited) {
    auto* h = reinterpret_cast<uv_handle_t*>(&side.tcp);
    if (!uv_is_closing(h)) uv_close(h, on_close);
    return;
  }
  delete this;
}

bool redirect_target(const std::string& location, Target* t, std::vector<http::Header>* headers) {
  Target to = *t;
  http::Url u;
  if (http::parse_absolute_url(location, &u)) {
    to.host = u.host;
    to.https = u.scheme == "https";
    to.port = u.port ? u.port : (to.https ? 443 : 80);
    to.path = u.path;
  } else if (!location.empty() && location[0] == '/') {
    to.path = location;
  } else {
    return false;
  }
  bool same = http::iequals(to.host, t->host) && to.port == t->port && to.https == t->https;
  std::vector<http::Header> hs;
  for (auto& h : *headers) {
    if (!same && http::iequals(h.name, "Authorization")) continue;
    if (http::iequals(h.name, "Host")) {
      bool def = (to.https && to.port == 443) || (!to.https && to.port == 80);
      hs.push_back({h.name, def ? to.host : host_port(to.host, to.port)});
      continue;
    }
    hs.push_back(h);
  }
  *headers = std::move(hs);
  *t = std::move(to);
  return true;
}

}  // namespace shoal::proxy
