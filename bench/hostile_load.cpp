// hostile_load: many hostile client connections to an HTTP proxy, held open
// by one thread on epoll, while a second thread times fresh 1 KiB requests
// through the same proxy. Used by bench/hostile.sh (10,000 connections, the
// p99 target) and tests/integration/t_hostile.sh (a functional check with
// fewer: timeouts close them, the limit answers, requests still work).
//
//   build/bench/hostile_load --proxy IP:PORT
//       [--idle N] [--slow N] [--kept N] [--hello N]   hostile connections
//       [--slow-gap MS]          slowloris: one byte per connection per MS (1000)
//       [--rate N]               new hostile connections per second (2000)
//       [--reconnect]            replace every hostile connection the proxy closes
//       [--url http://H:P/PATH]  plain probe: absolute-form GET through the proxy;
//                                also what --kept connections request
//       [--tls-url https://H:P/PATH --cacert FILE [--sni NAME]]
//                                hijacked probe: CONNECT H:P, TLS 1.2 (verified
//                                against FILE, SNI and name NAME), GET PATH;
//                                --hello connections CONNECT to H:P too
//       [--expect-bytes N]       a probe succeeds on a 200 with N body bytes (1024)
//       [--probe-seconds S]      probe for S seconds once the hostile set is up (0)
//       [--probe-gap MS]         pause between probes (20)
//       [--hold S]               after probing, keep the hostile connections S more
//                                seconds (0), or until the proxy closed them all
//
// Hostile kinds: idle connects and sends nothing; slow sends an endless
// request head one byte at a time ("byte-at-a-time" slowloris); kept sends
// one complete GET for --url, reads the answer and then sits idle on the
// keep-alive connection; hello sends "CONNECT H:P" for --tls-url's host and
// then nothing (an unfinished TLS handshake on the hijacked path).
//
// Each probe is a new TCP connection (and a new full TLS handshake, no
// session reuse), timed from connect() to the last body byte; plain and
// hijacked probes alternate. Output, one line each on stdout:
//
//   hostile kind=K wanted=N opened=.. established=.. connect_failed=..
//           open_at_ready=.. open_at_end=.. closed_eof=.. closed_reset=..
//           answered=.. status_408=.. status_429=.. status_other=..
//           life_ms_min=.. life_ms_p50=.. life_ms_max=..
//   probe kind=plain|tls n=.. ok=.. failed=.. p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..
//
// life_ms is how long a connection the proxy closed had been open. stderr
// gets progress and the first probe errors. Exits 0 when every probe
// succeeded, 1 otherwise, 2 on bad arguments. Raises RLIMIT_NOFILE to its
// hard limit first.
#include <arpa/inet.h>
#include <fcntl.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1000000u;
}

double now_s() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct Url {
  std::string host, path;
  uint16_t port = 0;
};

// "http://H:P/PATH" or "https://H:P/PATH" with an explicit port.
bool parse_url(const std::string& s, const char* scheme, Url* out) {
  std::string pre = std::string(scheme) + "://";
  if (s.compare(0, pre.size(), pre) != 0) return false;
  std::string rest = s.substr(pre.size());
  size_t slash = rest.find('/');
  std::string auth = slash == std::string::npos ? rest : rest.substr(0, slash);
  out->path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = auth.rfind(':');
  if (colon == std::string::npos) return false;
  out->host = auth.substr(0, colon);
  int p = atoi(auth.c_str() + colon + 1);
  if (out->host.empty() || p <= 0 || p > 65535) return false;
  out->port = static_cast<uint16_t>(p);
  return true;
}

struct Options {
  sockaddr_in proxy{};
  int idle = 0, slow = 0, kept = 0, hello = 0;
  int slow_gap_ms = 1000;
  int rate = 2000;
  bool reconnect = false;
  std::string url, tls_url, cacert, sni;
  Url plain, tls;
  size_t expect_bytes = 1024;
  double probe_seconds = 0;
  int probe_gap_ms = 20;
  double hold = 0;
};

// --- hostile connections (main thread) -------------------------------------

enum Kind { kIdle, kSlow, kKept, kHello, kKinds };
const char* kind_name(int k) {
  static const char* names[] = {"idle", "slow", "kept", "hello"};
  return names[k];
}

struct KindStats {
  int wanted = 0;
  uint64_t opened = 0, established = 0, connect_failed = 0, closed_eof = 0, closed_reset = 0, answered = 0;
  uint64_t s408 = 0, s429 = 0, s_other = 0;
  int open = 0, open_at_ready = 0;
  std::vector<uint64_t> life_ms;
};

struct HConn {
  int fd = -1;
  int kind = kIdle;
  bool connected = false;
  bool status_seen = false;
  uint64_t opened_ms = 0;
  size_t sent = 0;    // bytes of the kind's script sent
  std::string first;  // the answer's first bytes, for its status code
};

class Pool {
 public:
  explicit Pool(const Options& o) : o_(o) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    for (int k = 0; k < kKinds; ++k) stats_[k].wanted = wanted(k);
    if (!o_.url.empty())
      kept_req_ = "GET " + o_.url + " HTTP/1.1\r\nHost: " + o_.plain.host + ":" +
                  std::to_string(o_.plain.port) + "\r\n\r\n";
    hello_req_ = "CONNECT " + o_.tls.host + ":" + std::to_string(o_.tls.port) +
                 " HTTP/1.1\r\nHost: " + o_.tls.host + ":" + std::to_string(o_.tls.port) + "\r\n\r\n";
    // An endless head: the request line, then one long header value that
    // never ends (64 KiB at one byte a second takes 18 hours).
    slow_req_ = "GET http://" + (o_.plain.host.empty() ? std::string("127.0.0.1") : o_.plain.host) +
                "/slow HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
  }

  int wanted(int k) const {
    switch (k) {
      case kIdle:
        return o_.idle;
      case kSlow:
        return o_.slow;
      case kKept:
        return o_.kept;
      default:
        return o_.hello;
    }
  }
  int total_wanted() const { return o_.idle + o_.slow + o_.kept + o_.hello; }
  int open_total() const {
    int n = 0;
    for (auto& s : stats_) n += s.open;
    return n;
  }

  // Runs the loop until stop says so; tick runs about every 10 ms.
  template <typename F>
  void run(F stop) {
    std::vector<epoll_event> evs(1024);
    uint64_t last_open = now_ms();
    double credit = 0;
    while (!stop()) {
      uint64_t t = now_ms();
      // Open new connections at the configured rate, at most 256 connects
      // in flight so the listener's backlog never overflows.
      credit = std::min(credit + static_cast<double>(t - last_open) * o_.rate / 1000.0, 512.0);
      last_open = t;
      while (credit >= 1 && connecting_ < 256 && open_one()) credit -= 1;
      slow_tick(t);
      int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 10);
      for (int i = 0; i < n; ++i) event(evs[static_cast<size_t>(i)]);
    }
  }

  // True once every wanted connection is (or was) established; without
  // --reconnect, a connect that failed counts as settled too.
  bool all_up() const {
    for (int k = 0; k < kKinds; ++k) {
      const KindStats& s = stats_[k];
      uint64_t settled = s.established + (o_.reconnect ? 0 : s.connect_failed);
      if (settled < static_cast<uint64_t>(s.wanted)) return false;
    }
    return true;
  }
  void mark_ready() {
    for (auto& s : stats_) s.open_at_ready = s.open;
  }
  void report() {
    for (int k = 0; k < kKinds; ++k) {
      KindStats& s = stats_[k];
      if (s.wanted == 0) continue;
      std::sort(s.life_ms.begin(), s.life_ms.end());
      auto at = [&](double q) -> uint64_t {
        if (s.life_ms.empty()) return 0;
        return s.life_ms[std::min(s.life_ms.size() - 1,
                                  static_cast<size_t>(q * static_cast<double>(s.life_ms.size())))];
      };
      printf(
          "hostile kind=%s wanted=%d opened=%llu established=%llu connect_failed=%llu open_at_ready=%d "
          "open_at_end=%d closed_eof=%llu closed_reset=%llu answered=%llu status_408=%llu status_429=%llu "
          "status_other=%llu life_ms_min=%llu life_ms_p50=%llu life_ms_max=%llu\n",
          kind_name(k), s.wanted, ull(s.opened), ull(s.established), ull(s.connect_failed), s.open_at_ready,
          s.open, ull(s.closed_eof), ull(s.closed_reset), ull(s.answered), ull(s.s408), ull(s.s429),
          ull(s.s_other), ull(s.life_ms.empty() ? 0 : s.life_ms.front()), ull(at(0.5)),
          ull(s.life_ms.empty() ? 0 : s.life_ms.back()));
    }
    fflush(stdout);
  }

 private:
  static unsigned long long ull(uint64_t v) { return static_cast<unsigned long long>(v); }

  // Opens one connection of a kind that lacks some; false when none does.
  bool open_one() {
    int kind = -1;
    for (int k = 0; k < kKinds; ++k) {
      const KindStats& s = stats_[k];
      bool lacks = o_.reconnect ? s.open + pending_[k] < s.wanted : static_cast<int>(s.opened) < s.wanted;
      if (lacks) {
        kind = k;
        break;
      }
    }
    if (kind < 0) return false;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      if (!fd_warned_) fprintf(stderr, "hostile_load: socket: %s\n", strerror(errno));
      fd_warned_ = true;
      return false;
    }
    stats_[kind].opened++;
    int r = connect(fd, reinterpret_cast<const sockaddr*>(&o_.proxy), sizeof o_.proxy);
    if (r != 0 && errno != EINPROGRESS) {
      stats_[kind].connect_failed++;
      close(fd);
      return true;
    }
    if (static_cast<size_t>(fd) >= conns_.size()) conns_.resize(static_cast<size_t>(fd) + 1024);
    HConn& c = conns_[static_cast<size_t>(fd)];
    c = HConn{};
    c.fd = fd;
    c.kind = kind;
    c.opened_ms = now_ms();
    pending_[kind]++;
    connecting_++;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    return true;
  }

  void established(HConn& c) {
    c.connected = true;
    connecting_--;
    pending_[c.kind]--;
    KindStats& s = stats_[c.kind];
    s.established++;
    s.open++;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = c.fd;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
    if (c.kind == kKept) send_script(c, kept_req_);
    if (c.kind == kHello) send_script(c, hello_req_);
    if (c.kind == kSlow)
      slow_queue_.push_back({now_ms() + static_cast<uint64_t>(o_.slow_gap_ms), c.fd, c.opened_ms});
  }

  void send_script(HConn& c, const std::string& s) {
    ssize_t n = send(c.fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n > 0) c.sent = static_cast<size_t>(n);
  }

  // Slowloris: the next byte of the endless head for every connection due.
  void slow_tick(uint64_t t) {
    while (!slow_queue_.empty() && slow_queue_.front().due <= t) {
      SlowEntry e = slow_queue_.front();
      slow_queue_.pop_front();
      HConn& c = conns_[static_cast<size_t>(e.fd)];
      if (c.fd != e.fd || c.opened_ms != e.opened_ms || !c.connected) continue;  // closed meanwhile
      char b = c.sent < slow_req_.size() ? slow_req_[c.sent] : 'a';
      if (send(c.fd, &b, 1, MSG_NOSIGNAL) == 1) c.sent++;
      e.due = t + static_cast<uint64_t>(o_.slow_gap_ms);
      slow_queue_.push_back(e);
    }
  }

  void event(const epoll_event& ev) {
    HConn& c = conns_[static_cast<size_t>(ev.data.fd)];
    if (!c.connected) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (ev.events & (EPOLLERR | EPOLLHUP))) {
        connecting_--;
        pending_[c.kind]--;
        stats_[c.kind].connect_failed++;
        drop(c);
        return;
      }
      established(c);
      if (!(ev.events & (EPOLLIN | EPOLLRDHUP))) return;
    }
    char buf[4096];
    for (;;) {
      ssize_t n = recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        if (!c.status_seen) {
          c.first.append(buf, static_cast<size_t>(std::min<ssize_t>(n, 64)));
          if (c.first.size() >= 12) status(c);
        }
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      closed(c, n == 0);
      return;
    }
  }

  void status(HConn& c) {
    c.status_seen = true;
    KindStats& s = stats_[c.kind];
    s.answered++;
    if (c.first.compare(0, 5, "HTTP/") != 0) {
      s.s_other++;
      return;
    }
    int code = atoi(c.first.c_str() + 9);
    // A kept connection's own answer and a hello's "200 Connection
    // Established" are expected; anything else is what the proxy said
    // about the connection itself.
    if ((c.kind == kKept || c.kind == kHello) && code == 200) {
      s.answered--;
      c.first.clear();
      if (c.kind == kKept) c.status_seen = true;  // the rest is the body
      return;
    }
    if (code == 408)
      s.s408++;
    else if (code == 429)
      s.s429++;
    else
      s.s_other++;
  }

  void closed(HConn& c, bool eof) {
    KindStats& s = stats_[c.kind];
    if (!c.status_seen && !c.first.empty()) status(c);
    (eof ? s.closed_eof : s.closed_reset)++;
    s.open--;
    s.life_ms.push_back(now_ms() - c.opened_ms);
    drop(c);
  }

  void drop(HConn& c) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c = HConn{};
  }

  struct SlowEntry {
    uint64_t due;
    int fd;
    uint64_t opened_ms;  // tells a reused descriptor from the one queued
  };

  const Options& o_;
  int ep_ = -1;
  std::vector<HConn> conns_;  // indexed by descriptor
  KindStats stats_[kKinds];
  int pending_[kKinds] = {};
  int connecting_ = 0;
  bool fd_warned_ = false;
  std::deque<SlowEntry> slow_queue_;
  std::string kept_req_, hello_req_, slow_req_;
};

// --- probes (second thread, blocking sockets) -------------------------------

struct ProbeStats {
  std::vector<double> ms;
  uint64_t failed = 0;
};

class Prober {
 public:
  explicit Prober(const Options& o) : o_(o) {}
  ~Prober() {
    if (!tls_ready_) return;
    mbedtls_ssl_config_free(&conf_);
    mbedtls_x509_crt_free(&ca_);
    mbedtls_ctr_drbg_free(&drbg_);
    mbedtls_entropy_free(&entropy_);
  }

  bool init_tls(std::string* err) {
    mbedtls_entropy_init(&entropy_);
    mbedtls_ctr_drbg_init(&drbg_);
    mbedtls_x509_crt_init(&ca_);
    mbedtls_ssl_config_init(&conf_);
    tls_ready_ = true;
    static const unsigned char kPers[] = "hostile_load";
    int r = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, kPers, sizeof kPers - 1);
    if (r == 0) r = mbedtls_x509_crt_parse_file(&ca_, o_.cacert.c_str());
    if (r == 0)
      r = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                      MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
      *err = mbed_error(r);
      return false;
    }
    mbedtls_ssl_conf_rng(&conf_, mbedtls_ctr_drbg_random, &drbg_);
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&conf_, &ca_, nullptr);
    mbedtls_ssl_conf_min_version(&conf_, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    return true;
  }

  // Probes until the deadline; plain and TLS alternate.
  void run(double until) {
    bool turn_tls = o_.url.empty();
    while (now_s() < until) {
      bool use_tls = turn_tls && !o_.tls_url.empty();
      double t0 = now_s();
      std::string err;
      bool ok = use_tls ? probe_tls(&err) : probe_plain(&err);
      double ms = (now_s() - t0) * 1000.0;
      ProbeStats& s = use_tls ? tls_ : plain_;
      if (ok) {
        s.ms.push_back(ms);
      } else {
        s.failed++;
        if (errors_shown_++ < 5)
          fprintf(stderr, "hostile_load: %s probe failed: %s\n", use_tls ? "tls" : "plain", err.c_str());
      }
      if (!o_.url.empty() && !o_.tls_url.empty()) turn_tls = !turn_tls;
      if (o_.probe_gap_ms > 0) usleep(static_cast<useconds_t>(o_.probe_gap_ms) * 1000u);
    }
  }

  bool report() {
    bool ok = true;
    if (!o_.url.empty()) ok = print("plain", plain_) && ok;
    if (!o_.tls_url.empty()) ok = print("tls", tls_) && ok;
    return ok;
  }

 private:
  static std::string mbed_error(int r) {
    char b[160];
    mbedtls_strerror(r, b, sizeof b);
    return b;
  }

  static bool print(const char* kind, ProbeStats& s) {
    std::sort(s.ms.begin(), s.ms.end());
    auto at = [&](double q) {
      if (s.ms.empty()) return 0.0;
      return s.ms[std::min(s.ms.size() - 1, static_cast<size_t>(q * static_cast<double>(s.ms.size())))];
    };
    printf("probe kind=%s n=%zu ok=%zu failed=%llu p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n", kind,
           s.ms.size() + s.failed, s.ms.size(), static_cast<unsigned long long>(s.failed), at(0.5), at(0.9),
           at(0.99), s.ms.empty() ? 0.0 : s.ms.back());
    fflush(stdout);
    return s.failed == 0 && !s.ms.empty();
  }

  int dial(std::string* err) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *err = std::string("socket: ") + strerror(errno);
      return -1;
    }
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&o_.proxy), sizeof o_.proxy) != 0) {
      *err = std::string("connect: ") + strerror(errno);
      close(fd);
      return -1;
    }
    return fd;
  }

  // Checks a whole response in buf: a 200 with exactly expect_bytes of body
  // (Content-Length framing). Returns 1 when complete and right, 0 when more
  // is needed, -1 when wrong.
  int check(const std::string& buf, std::string* err) const {
    size_t end = buf.find("\r\n\r\n");
    if (end == std::string::npos) return buf.size() > 65536 ? -1 : 0;
    if (buf.compare(0, 12, "HTTP/1.1 200") != 0) {
      *err = "answer: " + buf.substr(0, buf.find("\r\n"));
      return -1;
    }
    size_t body = buf.size() - end - 4;
    if (body < o_.expect_bytes) return 0;
    if (body > o_.expect_bytes) {
      *err = "body of " + std::to_string(body) + " bytes";
      return -1;
    }
    return 1;
  }

  bool probe_plain(std::string* err) {
    int fd = dial(err);
    if (fd < 0) return false;
    std::string req = "GET " + o_.url + " HTTP/1.1\r\nHost: " + o_.plain.host + ":" +
                      std::to_string(o_.plain.port) + "\r\nConnection: close\r\n\r\n";
    bool ok = send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
    std::string buf;
    char b[16384];
    int st = 0;
    while (ok && st == 0) {
      ssize_t n = recv(fd, b, sizeof b, 0);
      if (n <= 0) {
        *err =
            n == 0 ? "closed after " + std::to_string(buf.size()) + " bytes" : std::string(strerror(errno));
        ok = false;
        break;
      }
      buf.append(b, static_cast<size_t>(n));
      st = check(buf, err);
    }
    close(fd);
    return ok && st == 1;
  }

  bool probe_tls(std::string* err) {
    int fd = dial(err);
    if (fd < 0) return false;
    std::string hp = o_.tls.host + ":" + std::to_string(o_.tls.port);
    std::string req = "CONNECT " + hp + " HTTP/1.1\r\nHost: " + hp + "\r\n\r\n";
    std::string buf;
    char b[16384];
    bool ok = send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
    while (ok && buf.find("\r\n\r\n") == std::string::npos) {
      // Byte by byte: nothing after the CONNECT answer may be consumed here.
      ssize_t n = recv(fd, b, 1, 0);
      if (n <= 0) {
        *err = "CONNECT: no answer";
        ok = false;
      } else {
        buf.append(b, 1);
      }
    }
    if (ok && buf.compare(0, 12, "HTTP/1.1 200") != 0) {
      *err = "CONNECT answered " + buf.substr(0, buf.find("\r\n"));
      ok = false;
    }
    if (!ok) {
      close(fd);
      return false;
    }
    mbedtls_net_context net;
    net.fd = fd;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_init(&ssl);
    int r = mbedtls_ssl_setup(&ssl, &conf_);
    const std::string& name = o_.sni.empty() ? o_.tls.host : o_.sni;
    if (r == 0) r = mbedtls_ssl_set_hostname(&ssl, name.c_str());
    mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, nullptr);
    while (r == 0 && (r = mbedtls_ssl_handshake(&ssl)) != 0) {
      if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) break;
      r = 0;
    }
    if (r != 0) *err = "TLS handshake: " + mbed_error(r);
    std::string get = "GET " + o_.tls.path + " HTTP/1.1\r\nHost: " + hp + "\r\nConnection: close\r\n\r\n";
    size_t off = 0;
    while (r == 0 && off < get.size()) {
      int n =
          mbedtls_ssl_write(&ssl, reinterpret_cast<const unsigned char*>(get.data() + off), get.size() - off);
      if (n < 0) {
        *err = "TLS write: " + mbed_error(n);
        r = n;
      } else {
        off += static_cast<size_t>(n);
      }
    }
    buf.clear();
    int st = 0;
    while (r == 0 && st == 0) {
      int n = mbedtls_ssl_read(&ssl, reinterpret_cast<unsigned char*>(b), sizeof b);
      if (n == MBEDTLS_ERR_SSL_WANT_READ) continue;
      if (n <= 0) {
        *err =
            "TLS read after " + std::to_string(buf.size()) + " bytes: " + (n == 0 ? "closed" : mbed_error(n));
        r = -1;
        break;
      }
      buf.append(b, static_cast<size_t>(n));
      st = check(buf, err);
    }
    mbedtls_ssl_free(&ssl);
    close(fd);
    return r == 0 && st == 1;
  }

  const Options& o_;
  bool tls_ready_ = false;
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  mbedtls_x509_crt ca_;
  mbedtls_ssl_config conf_;
  ProbeStats plain_, tls_;
  int errors_shown_ = 0;
};

[[noreturn]] void usage(const char* why) {
  fprintf(stderr, "hostile_load: %s (see the top of bench/hostile_load.cpp)\n", why);
  exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string proxy;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--proxy")
      proxy = val();
    else if (a == "--idle")
      o.idle = atoi(val().c_str());
    else if (a == "--slow")
      o.slow = atoi(val().c_str());
    else if (a == "--kept")
      o.kept = atoi(val().c_str());
    else if (a == "--hello")
      o.hello = atoi(val().c_str());
    else if (a == "--slow-gap")
      o.slow_gap_ms = atoi(val().c_str());
    else if (a == "--rate")
      o.rate = atoi(val().c_str());
    else if (a == "--reconnect")
      o.reconnect = true;
    else if (a == "--url")
      o.url = val();
    else if (a == "--tls-url")
      o.tls_url = val();
    else if (a == "--cacert")
      o.cacert = val();
    else if (a == "--sni")
      o.sni = val();
    else if (a == "--expect-bytes")
      o.expect_bytes = static_cast<size_t>(atol(val().c_str()));
    else if (a == "--probe-seconds")
      o.probe_seconds = atof(val().c_str());
    else if (a == "--probe-gap")
      o.probe_gap_ms = atoi(val().c_str());
    else if (a == "--hold")
      o.hold = atof(val().c_str());
    else
      usage(("unknown argument " + a).c_str());
  }
  size_t colon = proxy.rfind(':');
  if (colon == std::string::npos ||
      inet_pton(AF_INET, proxy.substr(0, colon).c_str(), &o.proxy.sin_addr) != 1)
    usage("--proxy IP:PORT (IPv4) is required");
  o.proxy.sin_family = AF_INET;
  o.proxy.sin_port = htons(static_cast<uint16_t>(atoi(proxy.c_str() + colon + 1)));
  if (!o.url.empty() && !parse_url(o.url, "http", &o.plain)) usage("--url must be http://HOST:PORT/PATH");
  if (!o.tls_url.empty() && !parse_url(o.tls_url, "https", &o.tls))
    usage("--tls-url must be https://HOST:PORT/PATH");
  if (!o.tls_url.empty() && o.cacert.empty()) usage("--tls-url needs --cacert");
  if (o.kept > 0 && o.url.empty()) usage("--kept needs --url");
  if (o.hello > 0 && o.tls_url.empty()) usage("--hello needs --tls-url");
  if (o.rate <= 0 || o.slow_gap_ms <= 0) usage("--rate and --slow-gap must be positive");

  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  int need = o.idle + o.slow + o.kept + o.hello + 64;
  if (rl.rlim_cur < static_cast<rlim_t>(need))
    fprintf(stderr, "hostile_load: RLIMIT_NOFILE %llu is below the %d descriptors needed\n",
            static_cast<unsigned long long>(rl.rlim_cur), need);

  Prober prober(o);
  std::string err;
  if (!o.tls_url.empty() && !prober.init_tls(&err)) {
    fprintf(stderr, "hostile_load: TLS setup: %s\n", err.c_str());
    return 2;
  }

  Pool pool(o);
  double t0 = now_s();
  // Phase 1: bring the hostile set up (give up after 60 s).
  pool.run([&] { return pool.all_up() || now_s() - t0 > 60; });
  pool.mark_ready();
  fprintf(stderr, "hostile_load: ready after %.1f s with %d hostile connections open\n", now_s() - t0,
          pool.open_total());
  // Phase 2: probes in their own thread while the loop keeps the set busy.
  std::atomic<bool> probing{o.probe_seconds > 0 && (!o.url.empty() || !o.tls_url.empty())};
  std::thread th;
  if (probing) {
    double until = now_s() + o.probe_seconds;
    // until by value: this block ends while the thread still runs.
    th = std::thread([&, until] {
      prober.run(until);
      probing = false;
    });
  }
  pool.run([&] { return !probing; });
  if (th.joinable()) th.join();
  // Phase 3: hold, until the time is up or the proxy closed everything.
  double hold_until = now_s() + o.hold;
  pool.run([&] { return now_s() >= hold_until || (!o.reconnect && pool.open_total() == 0); });
  pool.report();
  bool ok = true;
  if (o.probe_seconds > 0) ok = prober.report();
  return ok ? 0 : 1;
}
