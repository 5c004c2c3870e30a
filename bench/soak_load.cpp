// soak_load: many concurrent HTTPS clients multiplexed on one thread (epoll,
// OpenSSL's libssl), each pulling a weighted mix of registry objects
// through an HTTP CONNECT proxy and verifying every body. bench/soak.sh runs
// it against shoald's hijacked path and the registry fixture.
//
//   build/bench/soak_load --proxy IP:PORT --host NAME[:PORT] --cacert FILE
//                         --items FILE [--token FILE] [-c CLIENTS]
//                         [-d SECONDS] [--ramp SECONDS] [--per-conn N]
//                         [--grace SECONDS] [--stall SECONDS] [--no-resume]
//
// Each of CLIENTS clients connects to the proxy, sends "CONNECT NAME:PORT",
// expects a 200, does a TLS handshake verifying NAME against the CA file
// (offering the last session it saw, so the proxy may resume it), then sends
// GETs one at a time over the kept-alive connection: between 1 and N
// (--per-conn, default 8, drawn per connection) before it closes and
// connects again, so handshakes keep happening. Every request is drawn from
// the items file, one object a line:
//
//   WEIGHT PATH SIZE sha256:HEX [ACCEPT]
//
// (ACCEPT "-" or absent: no Accept header; --token sends "Authorization:
// Bearer <file's first line>"). A response counts as good only with status
// 200, exactly SIZE body bytes (Content-Length or chunked) and that SHA-256.
// Clients start evenly over --ramp seconds (default 2); after -d seconds
// (default 60) no request starts, requests in flight may finish for --grace
// seconds (default 120), then whatever is left counts as failed. A client
// that sees no byte for --stall seconds (default 60) fails its request.
// Prints one line to stdout:
//
//   clients=C seconds=S ok=N failed=F short=H digest_mismatch=M bytes=B
//   rps=R mbps=X handshakes_full=A handshakes_resumed=B connects=K
//   p50_ms=.. p99_ms=.. max_ms=..  (one line)
//
// and up to 10 failure messages (and a count per kind) to stderr. Exits 0
// when at least one request was good and none failed, 1 otherwise, 2 on bad
// arguments or setup errors.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr size_t kMaxHead = 64 * 1024;
constexpr size_t kBuf = 64 * 1024;
constexpr int kMaxShown = 10;

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

struct Item {
  double weight = 0;
  std::string path;
  uint64_t size = 0;
  std::string digest;  // lower-case hex
  std::string accept;
};

struct Options {
  std::string proxy_ip;
  uint16_t proxy_port = 0;
  std::string host;
  uint16_t port = 443;
  std::string cacert, items_file, token;
  int clients = 100;
  double duration = 60, ramp = 2, grace = 120, stall = 60;
  int per_conn = 8;
  bool resume = true;
};

struct Stats {
  uint64_t ok = 0, failed = 0, short_bodies = 0, digest_mismatch = 0, bytes = 0;
  uint64_t hs_full = 0, hs_resumed = 0, connects = 0;
  std::map<std::string, uint64_t> kinds;
  int shown = 0;
  std::vector<double> lat_ms;
};

Options opt;
Stats st;
std::vector<Item> items;
std::discrete_distribution<size_t> pick;
std::mt19937_64 rng{12345};
SSL_CTX* ctx = nullptr;
SSL_SESSION* last_session = nullptr;  // the newest session, offered by every new connection
int ep = -1;
std::string token_header;

void fail_kind(const std::string& kind, const std::string& msg) {
  st.kinds[kind]++;
  if (st.shown++ < kMaxShown) std::fprintf(stderr, "soak_load: %s: %s\n", kind.c_str(), msg.c_str());
}

std::string ssl_errors() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail" : out;
}

enum class State { Idle, Connecting, ProxyHead, Handshake, Sending, Head, Body, Done };

struct Client {
  int id = 0;
  int fd = -1;
  SSL* ssl = nullptr;
  State state = State::Idle;
  uint64_t start_at = 0;  // when to (re)connect, in Idle
  uint64_t last_io = 0;   // last byte moved, for the stall check
  std::string out;        // bytes to send (proxy request or HTTP request)
  size_t out_off = 0;
  std::string head;         // response head being collected
  int left_on_conn = 0;     // requests this connection may still send
  bool in_request = false;  // a request was sent and not yet answered
  const Item* item = nullptr;
  uint64_t req_start = 0;
  // Body.
  EVP_MD_CTX* md = nullptr;
  uint64_t got = 0;
  int64_t content_length = -1;
  bool chunked = false, conn_close = false;
  int status = 0;
  // Chunked decoding: 0 size line, 1 data, 2 CRLF after data, 3 trailers.
  int cstate = 0;
  uint64_t chunk_left = 0;
  std::string line;
  uint32_t events = 0;
};

std::vector<Client> clients;
bool stopping = false;  // the duration is over: no new request

void set_events(Client& c, uint32_t ev) {
  if (c.fd < 0 || ev == c.events) return;
  epoll_event e{};
  e.events = ev;
  e.data.u32 = static_cast<uint32_t>(c.id);
  if (epoll_ctl(ep, c.events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd, &e) != 0) {
    std::perror("epoll_ctl");
    std::exit(2);
  }
  c.events = ev;
}

void close_conn(Client& c, bool clean) {
  if (c.ssl != nullptr) {
    if (clean) SSL_shutdown(c.ssl);  // best effort: one close_notify
    SSL_free(c.ssl);
    c.ssl = nullptr;
  }
  if (c.fd >= 0) {
    close(c.fd);  // also leaves the epoll set
    c.fd = -1;
  }
  c.events = 0;
  c.state = State::Idle;
  c.start_at = now_ns();
  c.in_request = false;
  c.out.clear();
  c.out_off = 0;
  c.head.clear();
}

// A request (or the connection before any request) failed.
void fail(Client& c, const std::string& kind, const std::string& msg) {
  st.failed++;
  fail_kind(kind, "client " + std::to_string(c.id) + ": " + msg);
  close_conn(c, false);
}

void start_connect(Client& c) {
  c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    fail(c, "socket", std::strerror(errno));
    return;
  }
  int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(opt.proxy_port);
  inet_pton(AF_INET, opt.proxy_ip.c_str(), &sa.sin_addr);
  st.connects++;
  c.last_io = now_ns();
  int r = connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (r != 0 && errno != EINPROGRESS) {
    fail(c, "connect", std::strerror(errno));
    return;
  }
  c.state = State::Connecting;
  c.out = "CONNECT " + opt.host + ":" + std::to_string(opt.port) + " HTTP/1.1\r\nHost: " + opt.host + ":" +
          std::to_string(opt.port) + "\r\n\r\n";
  c.out_off = 0;
  c.head.clear();
  std::uniform_int_distribution<int> n(1, opt.per_conn);
  c.left_on_conn = n(rng);
  set_events(c, EPOLLOUT);
}

void begin_request(Client& c) {
  if (stopping || c.left_on_conn <= 0) {
    close_conn(c, true);
    return;
  }
  c.left_on_conn--;
  c.item = &items[pick(rng)];
  c.out = "GET " + c.item->path + " HTTP/1.1\r\nHost: " + opt.host +
          (opt.port == 443 ? "" : ":" + std::to_string(opt.port)) + "\r\nUser-Agent: shoal-soak\r\n" +
          token_header + (c.item->accept.empty() ? "" : "Accept: " + c.item->accept + "\r\n") + "\r\n";
  c.out_off = 0;
  c.head.clear();
  c.in_request = true;
  c.req_start = now_ns();
  c.got = 0;
  c.content_length = -1;
  c.chunked = c.conn_close = false;
  c.status = 0;
  c.cstate = 0;
  c.chunk_left = 0;
  c.line.clear();
  EVP_DigestInit_ex(c.md, EVP_sha256(), nullptr);
  c.state = State::Sending;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Parses the response head in c.head (up to and including the blank line).
bool parse_head(Client& c, std::string* why) {
  std::istringstream in(c.head);
  std::string line;
  std::getline(in, line);
  if (line.size() < 12 || line.compare(0, 5, "HTTP/") != 0) {
    *why = "bad status line: " + line.substr(0, 80);
    return false;
  }
  c.status = std::atoi(line.c_str() + 9);
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) break;
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = lower(line.substr(0, colon));
    std::string v = line.substr(colon + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    if (k == "content-length") c.content_length = std::strtoll(v.c_str(), nullptr, 10);
    if (k == "transfer-encoding" && lower(v).find("chunked") != std::string::npos) c.chunked = true;
    if (k == "connection" && lower(v).find("close") != std::string::npos) c.conn_close = true;
  }
  return true;
}

void finish_response(Client& c) {
  const Item& it = *c.item;
  c.in_request = false;
  if (c.status != 200) {
    st.failed++;
    fail_kind("status",
              "client " + std::to_string(c.id) + ": " + it.path + ": status " + std::to_string(c.status));
  } else if (c.got != it.size) {
    if (c.got < it.size)
      st.short_bodies++;
    else
      st.failed++;
    fail_kind(c.got < it.size ? "short" : "long", "client " + std::to_string(c.id) + ": " + it.path + ": " +
                                                      std::to_string(c.got) + " bytes, want " +
                                                      std::to_string(it.size));
  } else {
    unsigned char d[32];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(c.md, d, &dl);
    char hex[65];
    for (int i = 0; i < 32; i++) std::snprintf(hex + 2 * i, 3, "%02x", d[i]);
    if (it.digest != hex) {
      st.digest_mismatch++;
      fail_kind("digest", "client " + std::to_string(c.id) + ": " + it.path + ": sha256:" + hex);
    } else {
      st.ok++;
      st.lat_ms.push_back(static_cast<double>(now_ns() - c.req_start) / 1e6);
    }
  }
  if (c.conn_close) {
    close_conn(c, true);
    return;
  }
  begin_request(c);
}

void body_bytes(Client& c, const unsigned char* p, size_t n) {
  EVP_DigestUpdate(c.md, p, n);
  c.got += n;
  st.bytes += n;
}

// Feeds decrypted body bytes; returns true once the body is complete.
bool feed_body(Client& c, const unsigned char* p, size_t n, std::string* why) {
  if (!c.chunked) {
    size_t take = n;
    if (c.content_length >= 0) take = std::min<uint64_t>(n, static_cast<uint64_t>(c.content_length) - c.got);
    body_bytes(c, p, take);
    if (take < n) {
      *why = "bytes after the body";
      return false;
    }
    return c.content_length >= 0 && c.got == static_cast<uint64_t>(c.content_length);
  }
  size_t i = 0;
  while (i < n) {
    if (c.cstate == 1) {
      size_t take = std::min<uint64_t>(n - i, c.chunk_left);
      body_bytes(c, p + i, take);
      i += take;
      c.chunk_left -= take;
      if (c.chunk_left == 0) c.cstate = 2;
      continue;
    }
    char ch = static_cast<char>(p[i++]);
    if (ch != '\n') {
      if (c.line.size() > 1024) {
        *why = "chunk framing line too long";
        return false;
      }
      c.line.push_back(ch);
      continue;
    }
    std::string l = c.line;
    c.line.clear();
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (c.cstate == 0) {
      c.chunk_left = std::strtoull(l.c_str(), nullptr, 16);
      c.cstate = c.chunk_left == 0 ? 3 : 1;
    } else if (c.cstate == 2) {
      c.cstate = 0;
    } else if (c.cstate == 3 && l.empty()) {
      if (i != n) {
        *why = "bytes after the chunked body";
        return false;
      }
      return true;
    }
  }
  return false;
}

void drive(Client& c);

// Moves c.out to the socket (plain) or into TLS; true when all is sent.
bool send_out(Client& c, bool tls) {
  while (c.out_off < c.out.size()) {
    const char* p = c.out.data() + c.out_off;
    size_t n = c.out.size() - c.out_off;
    if (!tls) {
      ssize_t w = send(c.fd, p, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) {
          set_events(c, EPOLLOUT);
          return false;
        }
        fail(c, "send", std::strerror(errno));
        return false;
      }
      c.out_off += static_cast<size_t>(w);
    } else {
      int w = SSL_write(c.ssl, p, static_cast<int>(n));
      if (w <= 0) {
        int e = SSL_get_error(c.ssl, w);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
          set_events(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
          return false;
        }
        fail(c, "tls-write", ssl_errors());
        return false;
      }
      c.out_off += static_cast<size_t>(w);
    }
    c.last_io = now_ns();
  }
  return true;
}

void drive(Client& c) {
  for (;;) {
    switch (c.state) {
      case State::Idle:
      case State::Done:
        return;
      case State::Connecting: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(c, "connect", std::strerror(err));
          return;
        }
        if (!send_out(c, false)) return;
        c.state = State::ProxyHead;
        set_events(c, EPOLLIN);
        break;
      }
      case State::ProxyHead: {
        // Byte by byte up to the blank line: nothing past it may be eaten,
        // it is the start of TLS.
        char ch;
        for (;;) {
          ssize_t r = recv(c.fd, &ch, 1, 0);
          if (r < 0 && errno == EAGAIN) return;
          if (r <= 0) {
            fail(c, "proxy", r == 0 ? "closed before answering CONNECT" : std::strerror(errno));
            return;
          }
          c.last_io = now_ns();
          c.head.push_back(ch);
          if (c.head.size() >= 4 && c.head.compare(c.head.size() - 4, 4, "\r\n\r\n") == 0) break;
          if (c.head.size() > kMaxHead) {
            fail(c, "proxy", "CONNECT answer too long");
            return;
          }
        }
        if (c.head.compare(0, 12, "HTTP/1.1 200") != 0 && c.head.compare(0, 12, "HTTP/1.0 200") != 0) {
          fail(c, "proxy", "CONNECT answered " + c.head.substr(0, c.head.find('\r')));
          return;
        }
        c.ssl = SSL_new(ctx);
        SSL_set_fd(c.ssl, c.fd);
        // SSL_set_tlsext_host_name() without its macro's C-style cast.
        SSL_ctrl(c.ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                 const_cast<char*>(opt.host.c_str()));
        SSL_set1_host(c.ssl, opt.host.c_str());
        if (opt.resume && last_session != nullptr) SSL_set_session(c.ssl, last_session);
        c.state = State::Handshake;
        break;
      }
      case State::Handshake: {
        int r = SSL_connect(c.ssl);
        if (r != 1) {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            set_events(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
            c.last_io = now_ns();
            return;
          }
          fail(c, "handshake", ssl_errors());
          return;
        }
        c.last_io = now_ns();
        if (SSL_session_reused(c.ssl)) {
          st.hs_resumed++;
        } else {
          st.hs_full++;
        }
        if (opt.resume) {
          SSL_SESSION* s = SSL_get1_session(c.ssl);
          if (s != nullptr) {
            if (last_session != nullptr) SSL_SESSION_free(last_session);
            last_session = s;
          }
        }
        begin_request(c);
        break;
      }
      case State::Sending:
        if (!send_out(c, true)) return;
        c.state = State::Head;
        set_events(c, EPOLLIN);
        break;
      case State::Head:
      case State::Body: {
        unsigned char buf[kBuf];
        int r = SSL_read(c.ssl, buf, sizeof buf);
        if (r <= 0) {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            set_events(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
            return;
          }
          // The peer closed: between requests that is normal; inside one
          // it is a short response (or no response).
          std::string why = e == SSL_ERROR_ZERO_RETURN ? "close_notify"
                            : e == SSL_ERROR_SYSCALL   ? "EOF/reset"
                                                       : ssl_errors();
          if (c.state == State::Body && c.content_length < 0 && !c.chunked && c.status == 200) {
            finish_response(c);  // body delimited by the close
            close_conn(c, false);
            return;
          }
          if (c.state == State::Body || !c.head.empty()) {
            st.short_bodies++;
            fail_kind("short", "client " + std::to_string(c.id) + ": " + c.item->path + ": " + why +
                                   " after " + std::to_string(c.got) + " body bytes");
            close_conn(c, false);
            return;
          }
          fail(c, "no-response", c.item->path + ": " + why);
          return;
        }
        c.last_io = now_ns();
        size_t n = static_cast<size_t>(r);
        size_t off = 0;
        if (c.state == State::Head) {
          size_t before = c.head.size();
          c.head.append(reinterpret_cast<char*>(buf), n);
          size_t end = c.head.find("\r\n\r\n");
          if (end == std::string::npos) {
            if (c.head.size() > kMaxHead) fail(c, "response", "head too long");
            break;
          }
          c.head.resize(end + 4);
          off = c.head.size() - before;
          std::string why;
          if (!parse_head(c, &why)) {
            fail(c, "response", why);
            return;
          }
          c.state = State::Body;
          if (!c.chunked && c.content_length == 0) {
            if (off != n) {
              fail(c, "response", "bytes after an empty body");
              return;
            }
            finish_response(c);
            break;
          }
        }
        if (off < n) {
          std::string why;
          bool done = feed_body(c, buf + off, n - off, &why);
          if (!why.empty()) {
            fail(c, "response", c.item->path + ": " + why);
            return;
          }
          if (done) finish_response(c);
        }
        break;
      }
    }
  }
}

bool parse_hostport(const std::string& s, std::string* host, uint16_t* port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) {
    *host = s;
    return true;
  }
  *host = s.substr(0, colon);
  long p = std::strtol(s.c_str() + colon + 1, nullptr, 10);
  if (p <= 0 || p > 65535) return false;
  *port = static_cast<uint16_t>(p);
  return true;
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr,
      "soak_load: %s\nusage: soak_load --proxy IP:PORT --host NAME[:PORT] --cacert FILE --items FILE "
      "[--token FILE] [-c CLIENTS] [-d SECONDS] [--ramp S] [--per-conn N] [--grace S] [--stall S] "
      "[--no-resume]\n",
      why);
  std::exit(2);
}

void load_items() {
  std::ifstream in(opt.items_file);
  if (!in) usage(("cannot read " + opt.items_file).c_str());
  std::string line;
  std::vector<double> w;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Item it;
    std::string digest;
    if (!(ls >> it.weight >> it.path >> it.size >> digest) || digest.compare(0, 7, "sha256:") != 0)
      usage(("bad items line: " + line).c_str());
    it.digest = digest.substr(7);
    if (ls >> it.accept && it.accept == "-") it.accept.clear();
    items.push_back(it);
    w.push_back(it.weight);
  }
  if (items.empty()) usage("no items");
  pick = std::discrete_distribution<size_t>(w.begin(), w.end());
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--proxy") {
      if (!parse_hostport(val(), &opt.proxy_ip, &opt.proxy_port)) usage("bad --proxy");
    } else if (a == "--host") {
      if (!parse_hostport(val(), &opt.host, &opt.port)) usage("bad --host");
    } else if (a == "--cacert") {
      opt.cacert = val();
    } else if (a == "--items") {
      opt.items_file = val();
    } else if (a == "--token") {
      std::ifstream t(val());
      std::getline(t, opt.token);
      if (opt.token.empty()) usage("empty --token file");
    } else if (a == "-c") {
      opt.clients = std::atoi(val().c_str());
    } else if (a == "-d") {
      opt.duration = std::atof(val().c_str());
    } else if (a == "--ramp") {
      opt.ramp = std::atof(val().c_str());
    } else if (a == "--per-conn") {
      opt.per_conn = std::atoi(val().c_str());
    } else if (a == "--grace") {
      opt.grace = std::atof(val().c_str());
    } else if (a == "--stall") {
      opt.stall = std::atof(val().c_str());
    } else if (a == "--no-resume") {
      opt.resume = false;
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (opt.proxy_port == 0 || opt.host.empty() || opt.cacert.empty() || opt.items_file.empty())
    usage("--proxy, --host, --cacert and --items are required");
  if (opt.clients < 1 || opt.per_conn < 1 || opt.duration <= 0) usage("bad -c, -d or --per-conn");
  load_items();
  if (!opt.token.empty()) token_header = "Authorization: Bearer " + opt.token + "\r\n";
  signal(SIGPIPE, SIG_IGN);

  // A descriptor per client and some to spare.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t want = static_cast<rlim_t>(opt.clients) + 64;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = std::min(want, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < want) usage("RLIMIT_NOFILE too low for this many clients");
  }

  ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr || SSL_CTX_load_verify_locations(ctx, opt.cacert.c_str(), nullptr) != 1) {
    std::fprintf(stderr, "soak_load: %s: %s\n", opt.cacert.c_str(), ssl_errors().c_str());
    return 2;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  static const unsigned char kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof kAlpn);
  // Sessions are kept by hand (last_session); tickets only, as shoald issues.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  if (!opt.resume) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

  ep = epoll_create1(EPOLL_CLOEXEC);
  clients.resize(static_cast<size_t>(opt.clients));
  const uint64_t t0 = now_ns();
  for (int i = 0; i < opt.clients; i++) {
    Client& c = clients[static_cast<size_t>(i)];
    c.id = i;
    c.md = EVP_MD_CTX_new();
    c.start_at = t0 + static_cast<uint64_t>(opt.ramp * 1e9 * i / opt.clients);
  }
  const uint64_t end_at = t0 + static_cast<uint64_t>(opt.duration * 1e9);
  const uint64_t hard_end = end_at + static_cast<uint64_t>(opt.grace * 1e9);
  const uint64_t stall_ns = static_cast<uint64_t>(opt.stall * 1e9);
  std::vector<epoll_event> evs(1024);
  uint64_t last_sweep = 0;
  for (;;) {
    uint64_t now = now_ns();
    if (!stopping && now >= end_at) stopping = true;
    bool busy = false;
    if (now - last_sweep >= 10'000'000 || stopping) {
      last_sweep = now;
      for (auto& c : clients) {
        if (c.state == State::Idle) {
          if (!stopping && now >= c.start_at) {
            start_connect(c);
            if (c.state != State::Idle) drive(c);
          }
        } else if (now - c.last_io > stall_ns) {
          fail(c, "stall",
               "no byte for " + std::to_string(opt.stall) + " s in state " +
                   std::to_string(static_cast<int>(c.state)));
        }
        if (c.state != State::Idle) busy = true;
      }
      if (stopping && !busy) break;
    }
    if (now >= hard_end) {
      for (auto& c : clients)
        if (c.state != State::Idle) {
          if (c.in_request)
            fail(c, "unfinished", "still in flight after the grace period");
          else
            close_conn(c, false);
        }
      break;
    }
    int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 10);
    for (int i = 0; i < n; i++) {
      Client& c = clients[evs[static_cast<size_t>(i)].data.u32];
      drive(c);
    }
  }
  const double secs = static_cast<double>(now_ns() - t0) / 1e9;
  std::sort(st.lat_ms.begin(), st.lat_ms.end());
  auto q = [&](double p) {
    if (st.lat_ms.empty()) return 0.0;
    return st.lat_ms[std::min(st.lat_ms.size() - 1,
                              static_cast<size_t>(p * static_cast<double>(st.lat_ms.size())))];
  };
  for (const auto& [k, v] : st.kinds)
    std::fprintf(stderr, "soak_load: %llu x %s\n", static_cast<unsigned long long>(v), k.c_str());
  std::printf(
      "clients=%d seconds=%.1f ok=%llu failed=%llu short=%llu digest_mismatch=%llu bytes=%llu rps=%.1f "
      "mbps=%.1f "
      "handshakes_full=%llu handshakes_resumed=%llu connects=%llu p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
      opt.clients, secs, static_cast<unsigned long long>(st.ok), static_cast<unsigned long long>(st.failed),
      static_cast<unsigned long long>(st.short_bodies), static_cast<unsigned long long>(st.digest_mismatch),
      static_cast<unsigned long long>(st.bytes), static_cast<double>(st.ok) / secs,
      static_cast<double>(st.bytes) / secs / 1e6, static_cast<unsigned long long>(st.hs_full),
      static_cast<unsigned long long>(st.hs_resumed), static_cast<unsigned long long>(st.connects), q(0.5),
      q(0.99), st.lat_ms.empty() ? 0.0 : st.lat_ms.back());
  for (auto& c : clients) EVP_MD_CTX_free(c.md);
  if (last_session != nullptr) SSL_SESSION_free(last_session);
  SSL_CTX_free(ctx);
  close(ep);
  const bool good = st.ok > 0 && st.failed == 0 && st.short_bodies == 0 && st.digest_mismatch == 0;
  return good ? 0 : 1;
}
