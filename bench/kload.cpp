// kload: a closed-loop HTTPS keep-alive load client that can go through an
// HTTP CONNECT proxy, which wrk cannot. One thread, epoll, mbedTLS.
//
//   build/bench/kload --url https://HOST[:PORT]/PATH --cacert FILE
//                     [--proxy IP:PORT] [-c CONNS] [-d SECONDS] [--warmup SECONDS]
//                     [--cgroup DIR]
//
// Each of CONNS connections connects (to the proxy, sending
// "CONNECT HOST:PORT" and expecting a 200, or straight to HOST), does a TLS
// 1.2 handshake verifying HOST against the CA file, then sends one GET at a
// time for PATH and reads the response (Content-Length or chunked) before
// the next. A response that says "Connection: close", or a connection that
// fails, is replaced by a new one. Latency is measured per request from the
// first byte handed to TLS to the last body byte read; requests started in
// the first --warmup seconds (default 1) are not counted. After -d seconds
// (default 10) of measurement no new request starts and kload prints one
// line to stdout:
//
//   conns=16 seconds=10.00 requests=N rps=R p50_ms=.. p90_ms=.. p99_ms=..
//   p999_ms=.. max_ms=.. errors=E reconnects=K bytes=B suite=NAME  (one line)
//
// and the first few errors to stderr. Exits 0 when at least one request
// completed and no error happened, 1 otherwise, 2 on bad arguments.
//
// --cgroup DIR first moves kload into the cgroup v2 directory DIR (writes 0
// to DIR/cgroup.procs), so that its connections are made from there:
// bench/connect.sh runs it without --proxy in a cgroup Shoal intercepts
// transparently, HOST resolving as usual (through /etc/hosts there), and
// its connects to HOST are redirected to shoald.
#include <arpa/inet.h>
#include <fcntl.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int kMaxErrorsShown = 5;
constexpr uint64_t kMaxErrors = 1000;         // stop reconnecting after this many
constexpr uint64_t kGraceNs = 5'000'000'000;  // in-flight requests may finish

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

std::string mbed_error(int ret) {
  char buf[160];
  mbedtls_strerror(ret, buf, sizeof buf);
  return buf;
}

bool iequals_prefix(const std::string& s, size_t at, const char* word) {
  size_t n = std::strlen(word);
  if (at + n > s.size()) return false;
  for (size_t i = 0; i < n; ++i)
    if (std::tolower(static_cast<unsigned char>(s[at + i])) !=
        std::tolower(static_cast<unsigned char>(word[i])))
      return false;
  return true;
}

struct Options {
  std::string host, path = "/", cacert;
  uint16_t port = 443;
  bool use_proxy = false;
  sockaddr_storage proxy{};
  socklen_t proxy_len = 0;
  int conns = 16;
  double seconds = 10, warmup = 1;
  std::string cgroup;  // join this cgroup v2 directory first ("" = stay)
};

struct Stats {
  std::vector<uint64_t> lat_ns;
  uint64_t errors = 0, reconnects = 0, bytes = 0;
  int shown = 0;
  std::string suite;
  void error(const std::string& what) {
    ++errors;
    if (shown++ < kMaxErrorsShown) std::fprintf(stderr, "kload: %s\n", what.c_str());
  }
};

enum class St { Connecting, ProxyWrite, ProxyRead, Handshake, Request, Response, Done };

struct Conn {
  int fd = -1;
  St st = St::Done;
  mbedtls_ssl_context ssl;
  bool ssl_inited = false;
  std::string out;  // CONNECT request or the HTTP request being written
  size_t out_off = 0;
  std::string in;        // CONNECT reply, then the decrypted response
  uint64_t t0 = 0;       // request start
  bool counted = false;  // started after the warmup
  bool want_write = false;
  uint32_t events = 0;  // what epoll currently watches
};

class Load {
 public:
  Load(const Options& o, Stats& st) : o_(o), stats_(st) {}
  ~Load() {
    for (auto& c : conns_) close_conn(*c);
    if (ep_ >= 0) close(ep_);
    mbedtls_ssl_config_free(&conf_);
    mbedtls_x509_crt_free(&ca_);
    mbedtls_ctr_drbg_free(&drbg_);
    mbedtls_entropy_free(&entropy_);
  }

  bool init() {
    mbedtls_entropy_init(&entropy_);
    mbedtls_ctr_drbg_init(&drbg_);
    mbedtls_x509_crt_init(&ca_);
    mbedtls_ssl_config_init(&conf_);
    static const unsigned char kPers[] = "kload";
    int r = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, kPers, sizeof kPers - 1);
    if (r != 0) return fail("seeding the DRBG", r);
    r = mbedtls_x509_crt_parse_file(&ca_, o_.cacert.c_str());
    if (r != 0) return fail(("loading " + o_.cacert).c_str(), r);
    r = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) return fail("TLS config", r);
    mbedtls_ssl_conf_rng(&conf_, mbedtls_ctr_drbg_random, &drbg_);
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&conf_, &ca_, nullptr);
    mbedtls_ssl_conf_min_version(&conf_, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      std::perror("kload: epoll_create1");
      return false;
    }
    if (!o_.use_proxy && !resolve_origin()) return false;
    std::string hp = o_.host + ":" + std::to_string(o_.port);
    connect_req_ = "CONNECT " + hp + " HTTP/1.1\r\nHost: " + hp + "\r\nUser-Agent: kload\r\n\r\n";
    get_req_ = "GET " + o_.path + " HTTP/1.1\r\nHost: " + (o_.port == 443 ? o_.host : hp) +
               "\r\nUser-Agent: kload\r\nAccept: */*\r\n\r\n";
    return true;
  }

  void run() {
    const uint64_t start = now_ns();
    measure_from_ = start + static_cast<uint64_t>(o_.warmup * 1e9);
    stop_at_ = measure_from_ + static_cast<uint64_t>(o_.seconds * 1e9);
    for (int i = 0; i < o_.conns; ++i) {
      conns_.push_back(std::make_unique<Conn>());
      open_conn(*conns_.back());
    }
    epoll_event evs[64];
    for (;;) {
      uint64_t t = now_ns();
      if (t >= stop_at_ + kGraceNs) break;
      bool any = false;
      for (auto& c : conns_) any = any || c->st != St::Done;
      if (!any) break;
      int n = epoll_wait(ep_, evs, 64, 100);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("kload: epoll_wait");
        break;
      }
      for (int i = 0; i < n; ++i) {
        Conn& c = *static_cast<Conn*>(evs[i].data.ptr);
        if (c.st == St::Done) continue;
        if (c.st == St::Connecting) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            conn_error(c, std::string("connect: ") + std::strerror(err));
            continue;
          }
          c.st = o_.use_proxy ? St::ProxyWrite : St::Handshake;
          if (o_.use_proxy) {
            c.out = connect_req_;
            c.out_off = 0;
          }
        }
        advance(c);
      }
    }
    measured_ns_ = std::min(now_ns(), stop_at_) - measure_from_;
  }

  double measured_seconds() const { return static_cast<double>(measured_ns_) / 1e9; }

 private:
  bool fail(const char* what, int r) {
    std::fprintf(stderr, "kload: %s: %s\n", what, mbed_error(r).c_str());
    return false;
  }

  bool resolve_origin() {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int r = getaddrinfo(o_.host.c_str(), std::to_string(o_.port).c_str(), &hints, &res);
    if (r != 0 || res == nullptr) {
      std::fprintf(stderr, "kload: cannot resolve %s: %s\n", o_.host.c_str(), gai_strerror(r));
      return false;
    }
    std::memcpy(&origin_, res->ai_addr, res->ai_addrlen);
    origin_len_ = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
  }

  static int bio_send(void* ctx, const unsigned char* buf, size_t len) {
    int fd = *static_cast<int*>(ctx);
    ssize_t n = ::send(fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<int>(n);
    if (errno == EAGAIN || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_WRITE;
    return MBEDTLS_ERR_NET_SEND_FAILED;
  }

  static int bio_recv(void* ctx, unsigned char* buf, size_t len) {
    int fd = *static_cast<int*>(ctx);
    ssize_t n = ::recv(fd, buf, len, 0);
    if (n >= 0) return static_cast<int>(n);
    if (errno == EAGAIN || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_READ;
    return MBEDTLS_ERR_NET_RECV_FAILED;
  }

  void open_conn(Conn& c) {
    close_conn(c);
    if (now_ns() >= stop_at_ || stats_.errors >= kMaxErrors) return;
    const sockaddr* sa = o_.use_proxy ? reinterpret_cast<const sockaddr*>(&o_.proxy)
                                      : reinterpret_cast<const sockaddr*>(&origin_);
    socklen_t len = o_.use_proxy ? o_.proxy_len : origin_len_;
    c.fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      stats_.error(std::string("socket: ") + std::strerror(errno));
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.in.clear();
    c.out.clear();
    c.out_off = 0;
    c.st = St::Connecting;
    c.want_write = true;
    c.events = 0;
    mbedtls_ssl_init(&c.ssl);
    c.ssl_inited = true;
    int r = mbedtls_ssl_setup(&c.ssl, &conf_);
    if (r == 0) r = mbedtls_ssl_set_hostname(&c.ssl, o_.host.c_str());
    if (r != 0) {
      conn_error(c, "TLS setup: " + mbed_error(r));
      return;
    }
    mbedtls_ssl_set_bio(&c.ssl, &c.fd, bio_send, bio_recv, nullptr);
    if (connect(c.fd, sa, len) != 0 && errno != EINPROGRESS) {
      conn_error(c, std::string("connect: ") + std::strerror(errno));
      return;
    }
    watch(c);
  }

  void close_conn(Conn& c) {
    if (c.ssl_inited) {
      mbedtls_ssl_free(&c.ssl);
      c.ssl_inited = false;
    }
    if (c.fd >= 0) {
      close(c.fd);  // also leaves the epoll set
      c.fd = -1;
    }
    c.st = St::Done;
  }

  void conn_error(Conn& c, const std::string& what) {
    stats_.error(what);
    close_conn(c);
    ++stats_.reconnects;
    open_conn(c);
  }

  void watch(Conn& c) {
    uint32_t ev = EPOLLIN | (c.want_write ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    if (ev == c.events) return;
    epoll_event e{};
    e.events = ev;
    e.data.ptr = &c;
    int op = c.events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(ep_, op, c.fd, &e) != 0) {
      conn_error(c, std::string("epoll_ctl: ") + std::strerror(errno));
      return;
    }
    c.events = ev;
  }

  // Runs the connection's state machine until it must wait for the socket.
  void advance(Conn& c) {
    for (;;) {
      c.want_write = false;
      switch (c.st) {
        case St::Done:
          return;
        case St::Connecting:
          c.want_write = true;
          watch(c);
          return;
        case St::ProxyWrite: {
          ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EAGAIN) {
              c.want_write = true;
              watch(c);
              return;
            }
            return conn_error(c, std::string("send CONNECT: ") + std::strerror(errno));
          }
          c.out_off += static_cast<size_t>(n);
          if (c.out_off == c.out.size()) c.st = St::ProxyRead;
          break;
        }
        case St::ProxyRead: {
          char buf[4096];
          ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
          if (n < 0) {
            if (errno == EAGAIN) {
              watch(c);
              return;
            }
            return conn_error(c, std::string("read CONNECT reply: ") + std::strerror(errno));
          }
          if (n == 0) return conn_error(c, "proxy closed the connection after CONNECT");
          c.in.append(buf, static_cast<size_t>(n));
          size_t end = c.in.find("\r\n\r\n");
          if (end == std::string::npos) {
            if (c.in.size() > 16384) return conn_error(c, "CONNECT reply too long");
            break;
          }
          if (c.in.compare(0, 9, "HTTP/1.1 ") != 0 && c.in.compare(0, 9, "HTTP/1.0 ") != 0)
            return conn_error(c, "CONNECT reply is not HTTP");
          if (c.in.compare(9, 3, "200") != 0)
            return conn_error(c, "CONNECT refused: " + c.in.substr(0, c.in.find('\r')));
          if (end + 4 != c.in.size()) return conn_error(c, "bytes after the CONNECT reply");
          c.in.clear();
          c.st = St::Handshake;
          break;
        }
        case St::Handshake: {
          int r = mbedtls_ssl_handshake(&c.ssl);
          if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
            c.want_write = r == MBEDTLS_ERR_SSL_WANT_WRITE;
            watch(c);
            return;
          }
          if (r != 0) {
            std::string why = "TLS handshake: " + mbed_error(r);
            uint32_t flags = mbedtls_ssl_get_verify_result(&c.ssl);
            if (flags != 0 && flags != static_cast<uint32_t>(-1)) {
              char vi[512];
              mbedtls_x509_crt_verify_info(vi, sizeof vi, "", flags);
              why += " (" + std::string(vi) + ")";
            }
            return conn_error(c, why);
          }
          if (stats_.suite.empty()) stats_.suite = mbedtls_ssl_get_ciphersuite(&c.ssl);
          c.st = St::Request;
          c.out.clear();
          break;
        }
        case St::Request: {
          if (c.out.empty()) {
            uint64_t t = now_ns();
            if (t >= stop_at_) {
              close_conn(c);
              return;
            }
            c.out = get_req_;
            c.out_off = 0;
            c.t0 = t;
            c.counted = t >= measure_from_;
          }
          // mbedTLS wants the same arguments again after WANT_WRITE.
          int r = mbedtls_ssl_write(&c.ssl, reinterpret_cast<const unsigned char*>(c.out.data()) + c.out_off,
                                    c.out.size() - c.out_off);
          if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ) {
            c.want_write = r == MBEDTLS_ERR_SSL_WANT_WRITE;
            watch(c);
            return;
          }
          if (r < 0) return conn_error(c, "TLS write: " + mbed_error(r));
          c.out_off += static_cast<size_t>(r);
          if (c.out_off == c.out.size()) {
            c.out.clear();
            c.in.clear();
            c.st = St::Response;
          }
          break;
        }
        case St::Response: {
          unsigned char buf[16384];
          int r = mbedtls_ssl_read(&c.ssl, buf, sizeof buf);
          if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
            c.want_write = r == MBEDTLS_ERR_SSL_WANT_WRITE;
            watch(c);
            return;
          }
          if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
            return conn_error(c, "connection closed in the middle of a response");
          if (r < 0) return conn_error(c, "TLS read: " + mbed_error(r));
          c.in.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(r));
          int done = response_complete(c);
          if (done < 0) return;  // conn_error already ran
          if (done == 0) break;
          break;
        }
      }
    }
  }

  // Parses c.in as one response. Returns 0 while incomplete, 1 when a
  // complete response was consumed (and the connection moved on), -1 after
  // an error replaced the connection.
  int response_complete(Conn& c) {
    size_t hend = c.in.find("\r\n\r\n");
    if (hend == std::string::npos) {
      if (c.in.size() > 65536) {
        conn_error(c, "response head too long");
        return -1;
      }
      return 0;
    }
    if (c.in.compare(0, 5, "HTTP/") != 0 || c.in.size() < 12) {
      conn_error(c, "response is not HTTP");
      return -1;
    }
    int status = std::atoi(c.in.c_str() + 9);
    long long clen = -1;
    bool chunked = false, close_after = false;
    for (size_t p = c.in.find("\r\n") + 2; p < hend;) {
      size_t e = c.in.find("\r\n", p);
      if (iequals_prefix(c.in, p, "content-length:")) clen = std::atoll(c.in.c_str() + p + 15);
      if (iequals_prefix(c.in, p, "transfer-encoding:") && c.in.find("chunked", p) < e) chunked = true;
      if (iequals_prefix(c.in, p, "connection:") && c.in.find("close", p) < e) close_after = true;
      p = e + 2;
    }
    size_t body = hend + 4, end = 0;
    if (chunked) {
      size_t p = body;
      for (;;) {
        size_t le = c.in.find("\r\n", p);
        if (le == std::string::npos) return 0;
        unsigned long long n = std::strtoull(c.in.c_str() + p, nullptr, 16);
        if (n == 0) {
          // Last chunk; no trailers expected, just the final CRLF.
          if (c.in.size() < le + 4) return 0;
          end = le + 4;
          break;
        }
        if (c.in.size() < le + 2 + n + 2) return 0;
        p = le + 2 + n + 2;
      }
    } else if (clen >= 0) {
      if (c.in.size() < body + static_cast<size_t>(clen)) return 0;
      end = body + static_cast<size_t>(clen);
    } else {
      conn_error(c, "response without Content-Length or chunked encoding");
      return -1;
    }
    uint64_t t = now_ns();
    if (status != 200) {
      conn_error(c, "status " + std::to_string(status));
      return -1;
    }
    if (end != c.in.size()) {
      conn_error(c, "bytes after the response");
      return -1;
    }
    if (c.counted && t <= stop_at_) {
      stats_.lat_ns.push_back(t - c.t0);
      stats_.bytes += end - body;
    }
    c.in.clear();
    if (close_after) {
      ++stats_.reconnects;
      open_conn(c);
    } else {
      c.st = St::Request;
    }
    return 1;
  }

  const Options& o_;
  Stats& stats_;
  int ep_ = -1;
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  mbedtls_x509_crt ca_;
  mbedtls_ssl_config conf_;
  sockaddr_storage origin_{};
  socklen_t origin_len_ = 0;
  std::string connect_req_, get_req_;
  std::vector<std::unique_ptr<Conn>> conns_;
  uint64_t measure_from_ = 0, stop_at_ = 0, measured_ns_ = 0;
};

bool parse_url(const std::string& url, Options* o) {
  const std::string pre = "https://";
  if (url.compare(0, pre.size(), pre) != 0) return false;
  size_t hs = pre.size();
  size_t ps = url.find('/', hs);
  std::string auth = url.substr(hs, ps == std::string::npos ? std::string::npos : ps - hs);
  o->path = ps == std::string::npos ? "/" : url.substr(ps);
  size_t colon = auth.rfind(':');
  if (colon != std::string::npos && auth.find(']') == std::string::npos) {
    o->port = static_cast<uint16_t>(std::atoi(auth.c_str() + colon + 1));
    auth.resize(colon);
  }
  o->host = auth;
  return !o->host.empty() && o->port != 0;
}

bool parse_proxy(const std::string& s, Options* o) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  std::string ip = s.substr(0, colon);
  int port = std::atoi(s.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return false;
  auto* sin = reinterpret_cast<sockaddr_in*>(&o->proxy);
  if (inet_pton(AF_INET, ip.c_str(), &sin->sin_addr) != 1) return false;
  sin->sin_family = AF_INET;
  sin->sin_port = htons(static_cast<uint16_t>(port));
  o->proxy_len = sizeof(sockaddr_in);
  o->use_proxy = true;
  return true;
}

double pct_ms(const std::vector<uint64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(i, v.size() - 1)]) / 1e6;
}

// Moves this process into the cgroup v2 directory dir. False (printed) on
// failure.
bool join_cgroup(const std::string& dir) {
  std::string path = dir + "/cgroup.procs";
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0\n", 2) != 2) {
    std::fprintf(stderr, "kload: joining %s: %s\n", dir.c_str(), std::strerror(errno));
    if (fd >= 0) close(fd);
    return false;
  }
  close(fd);
  return true;
}

int usage() {
  std::fprintf(stderr,
               "usage: kload --url https://HOST[:PORT]/PATH --cacert FILE [--proxy IP:PORT]\n"
               "             [-c CONNS] [-d SECONDS] [--warmup SECONDS] [--cgroup DIR]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return usage();
    std::string v = argv[++i];
    if (a == "--url") {
      if (!parse_url(v, &o)) return usage();
    } else if (a == "--cacert") {
      o.cacert = v;
    } else if (a == "--proxy") {
      if (!parse_proxy(v, &o)) return usage();
    } else if (a == "-c") {
      o.conns = std::atoi(v.c_str());
    } else if (a == "-d") {
      o.seconds = std::atof(v.c_str());
    } else if (a == "--warmup") {
      o.warmup = std::atof(v.c_str());
    } else if (a == "--cgroup") {
      o.cgroup = v;
    } else {
      return usage();
    }
  }
  if (o.host.empty() || o.cacert.empty() || o.conns <= 0 || o.conns > 10000 || o.seconds <= 0 || o.warmup < 0)
    return usage();
  if (!o.cgroup.empty() && !join_cgroup(o.cgroup)) return 1;
  Stats stats;
  {
    Load load(o, stats);
    if (!load.init()) return 1;
    load.run();
    auto& v = stats.lat_ns;
    std::sort(v.begin(), v.end());
    double secs = load.measured_seconds();
    std::printf(
        "conns=%d seconds=%.2f requests=%zu rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f "
        "max_ms=%.3f errors=%llu reconnects=%llu bytes=%llu suite=%s\n",
        o.conns, secs, v.size(), secs > 0 ? static_cast<double>(v.size()) / secs : 0.0, pct_ms(v, 0.50),
        pct_ms(v, 0.90), pct_ms(v, 0.99), pct_ms(v, 0.999),
        v.empty() ? 0.0 : static_cast<double>(v.back()) / 1e6, static_cast<unsigned long long>(stats.errors),
        static_cast<unsigned long long>(stats.reconnects), static_cast<unsigned long long>(stats.bytes),
        stats.suite.empty() ? "-" : stats.suite.c_str());
  }
  return !stats.lat_ns.empty() && stats.errors == 0 ? 0 : 1;
}
