// sched_load: a load generator for the Shoal scheduler (`shoald scheduler`).
// Standalone: libuv and libcrypto only; it signs requests itself as
// include/shoal/p2p/auth.h describes (HMAC-SHA256 over method, path, time,
// nonce and the body's SHA-256) and checks the signature of a sample of the
// answers.
//
//   build/bench/sched_load --port PORT --secret-file FILE [--host IP]
//       [-c CONNS] [--depth N] [--peers N] [--tasks N] [--pieces N]
//       [-d SECONDS] [--warmup SECONDS] [--fill N] [--rate OPS] [--saturate 0|1]
//
// 1. CONNS (default 64) keep-alive connections register --peers (10,000)
//    peers, pipelining --depth (8) requests per connection.
//    "fill": --fill (default 0) announces of random (peer, task) pairs,
//    closed loop and not measured, so that the phases below meet tasks with
//    the holders a running cluster's have rather than a scheduler just
//    started: a parents query's cost grows with its task's holders (up to
//    the scheduler's scan bound). The mean holders per task is printed.
// 2. "rate": an open-loop run at --rate ops/s (default 50,000) for -d
//    seconds (default 10): requests are due on a fixed schedule, spread over
//    the connections (each sends while it has fewer than --depth in
//    flight), and latency runs from when a request was due to when its
//    answer was read, so a server that falls behind is charged for the
//    wait (no coordinated omission). --rate 0 skips it.
//    The generator paces by polling its event loop without sleeping (it
//    owns its core): each request leaves when it is due and each answer is
//    read when it arrives. A 1 ms timer released each millisecond's
//    requests together and added up to 1 ms of its own to every latency;
//    lag_p99_ms reports how late the requests left, the generator's share.
// 3. "saturate": closed loop for -d seconds, every connection keeping
//    --depth requests in flight: the most the server does. --saturate 0
//    skips it.
// The mix over --tasks (1,000) tasks of --pieces (32) pieces: 35% parents
// (a quarter with source, a fifth knowing no hash yet), 30% announce (the
// hash of one held piece), 25% heartbeat, 10% result. The first --warmup
// seconds (default 1) of each phase are not measured. One line per phase on
// stdout:
//
//   phase=rate conns=64 depth=8 seconds=10.00 ops=N ops_per_s=R p50_ms=..
//   p99_ms=.. max_ms=.. lag_p99_ms=.. errors=E bad_sig=B (one line; rate= for
//   the rate phase)
//
// Exits 0 when no request failed, 1 otherwise, 2 on bad arguments.
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string secret_file;
  int conns = 64;
  int depth = 8;
  uint32_t peers = 10000, tasks = 1000, pieces = 32;
  double seconds = 10, warmup = 1;
  double rate = 50000;
  uint64_t fill = 0;
  bool saturate = true;
};

constexpr uint32_t kPieceSize = 4u << 20;
constexpr size_t kMaxQueued = 20000;  // per connection, in the rate phase
constexpr uint64_t kGraceNs = 5'000'000'000;

std::string g_secret;

void hex(const uint8_t* p, size_t n, char* out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = d[p[i] >> 4];
    out[2 * i + 1] = d[p[i] & 15];
  }
}

std::string sha256_hex(const std::string& s) {
  uint8_t sum[32];
  SHA256(reinterpret_cast<const uint8_t*>(s.data()), s.size(), sum);
  char h[64];
  hex(sum, 32, h);
  return std::string(h, 64);
}

std::string hmac_hex(const std::string& msg) {
  uint8_t mac[32];
  unsigned len = 0;
  HMAC(EVP_sha256(), g_secret.data(), static_cast<int>(g_secret.size()),
       reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), mac, &len);
  char h[64];
  hex(mac, 32, h);
  return std::string(h, 64);
}

struct Rng {
  uint64_t s[2];
  uint64_t next() {
    uint64_t a = s[0], b = s[1];
    s[0] = b;
    a ^= a << 23;
    s[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return s[1] + b;
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
};

enum class Phase { Register, Fill, Rate, Saturate, Done };

struct Pending {
  uint64_t due_ns;  // when it was due (rate) or sent (others)
  std::string nonce;
  bool measured;
};

struct Stats {
  std::vector<uint32_t> lat_us;
  std::vector<uint32_t> lag_us;  // rate phase: from due to written
  uint64_t ops = 0, errors = 0, bad_sig = 0, checked = 0;
  uint64_t first_errors_shown = 0;
};

struct Conn;

struct Bench {
  Args a;
  uv_loop_t* loop = nullptr;
  std::vector<Conn*> conns;
  Phase phase = Phase::Register;
  uint64_t phase_start = 0, measure_start = 0, phase_end = 0;
  uint32_t next_register = 0;
  uint64_t scheduled = 0;  // rate phase: requests put on a schedule so far
  size_t rr = 0;           // next connection for a scheduled request
  Stats st;
  bool overload = false;
  int open_conns = 0;
  std::vector<std::string> task_ids;
  uint64_t fill_sent = 0;
  std::vector<uint64_t> held;  // bit peer * tasks + task: the pair was announced
  uint64_t pairs = 0;          // bits set in held
  int64_t unix_now = 0;
};

Bench g;

struct WriteReq {
  uv_write_t req;
  std::string buf;
};

struct Conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  Rng rng;
  std::deque<Pending> inflight;
  std::deque<uint64_t> queued;  // rate phase: due times not sent yet
  std::string in;
  size_t in_off = 0;
  bool dead = false;
  uint64_t sample = 0;
};

std::string peer_id(uint32_t i) { return "peer-" + std::to_string(i); }

std::string bitmap_hex(uint64_t bits, uint32_t n) {
  std::string s;
  uint32_t bytes = (n + 7) / 8;
  for (uint32_t b = 0; b < bytes; ++b) {
    uint8_t v = 0;
    for (uint32_t k = 0; k < 8; ++k) {
      uint32_t i = b * 8 + k;
      if (i < n && i < 64 && ((bits >> i) & 1)) v = static_cast<uint8_t>(v | (0x80u >> k));
    }
    char h[2];
    hex(&v, 1, h);
    s.append(h, 2);
  }
  return s;
}

std::string piece_hash(uint32_t task, uint32_t piece) {
  char h[65];
  snprintf(h, sizeof h, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, uint64_t{task} + 1,
           uint64_t{piece} + 1, uint64_t{task} * 31 + piece, uint64_t{0x5eed});
  return std::string(h, 64);
}

// Counts the (peer, task) pair as holding: the scheduler adds a holder on
// an announce or a parents query with pieces.
void note_holder(uint32_t peer, uint32_t task) {
  uint64_t bit = uint64_t{peer} * g.a.tasks + task;
  uint64_t& w = g.held[bit / 64];
  if (!((w >> (bit % 64)) & 1)) {
    w |= uint64_t{1} << (bit % 64);
    ++g.pairs;
  }
}

double holders_per_task() { return static_cast<double>(g.pairs) / g.a.tasks; }

void make_announce(Conn* c, uint32_t peer, uint32_t task, std::string* path, std::string* body) {
  Rng& r = c->rng;
  const Args& a = g.a;
  uint64_t length = uint64_t{a.pieces} * kPieceSize;
  uint64_t all = a.pieces >= 64 ? ~uint64_t{0} : (uint64_t{1} << a.pieces) - 1;
  uint64_t have = r.next() & all;
  uint32_t piece = r.below(a.pieces);
  have |= uint64_t{1} << (piece % 64);
  char buf[512];
  snprintf(buf, sizeof buf,
           "{\"v\":1,\"peer\":\"%s\",\"task\":\"%s\",\"length\":%" PRIu64
           ",\"piece_size\":%u,\"have\":\"%s\",\"hashes\":{\"%u\":\"%s\"},\"complete\":false}",
           peer_id(peer).c_str(), g.task_ids[task].c_str(), length, kPieceSize,
           bitmap_hex(have, a.pieces).c_str(), piece, piece_hash(task, piece).c_str());
  *path = "/v1/announce";
  *body = buf;
  note_holder(peer, task);
}

// One operation of the mix: path and JSON body.
void make_op(Conn* c, std::string* path, std::string* body) {
  Rng& r = c->rng;
  const Args& a = g.a;
  uint32_t peer = r.below(a.peers), task = r.below(a.tasks);
  uint64_t length = uint64_t{a.pieces} * kPieceSize;
  uint64_t all = a.pieces >= 64 ? ~uint64_t{0} : (uint64_t{1} << a.pieces) - 1;
  uint32_t kind = r.below(100);
  char buf[512];
  if (kind < 35) {
    uint64_t have = r.next() & all;
    if (have != 0) note_holder(peer, task);
    bool none_known = r.below(5) == 0;
    bool source = r.below(4) == 0;
    snprintf(buf, sizeof buf,
             "{\"v\":1,\"peer\":\"%s\",\"task\":\"%s\",\"length\":%" PRIu64
             ",\"piece_size\":%u,\"have\":\"%s\",\"hashes_known\":\"%s\",\"source\":%s,\"max_parents\":8}",
             peer_id(peer).c_str(), g.task_ids[task].c_str(), length, kPieceSize,
             bitmap_hex(have, a.pieces).c_str(), bitmap_hex(none_known ? 0 : all, a.pieces).c_str(),
             source ? "true" : "false");
    *path = "/v1/parents";
  } else if (kind < 65) {
    make_announce(c, peer, task, path, body);
    return;
  } else if (kind < 90) {
    snprintf(buf, sizeof buf, "{\"v\":1,\"peer\":\"%s\",\"free_slots\":%u}", peer_id(peer).c_str(),
             r.below(5));
    *path = "/v1/heartbeat";
  } else {
    bool ok = r.below(10) != 0;
    snprintf(buf, sizeof buf,
             "{\"v\":1,\"peer\":\"%s\",\"task\":\"%s\",\"parent\":\"%s\",\"piece\":%u,\"outcome\":\"%s\","
             "\"bytes\":%u,\"ms\":%u}",
             peer_id(peer).c_str(), g.task_ids[task].c_str(), peer_id(r.below(a.peers)).c_str(),
             r.below(a.pieces), ok ? "ok" : "stall", ok ? kPieceSize : 0u, r.below(500));
    *path = "/v1/result";
  }
  *body = buf;
}

void make_register(uint32_t i, std::string* path, std::string* body) {
  char buf[256];
  snprintf(
      buf, sizeof buf,
      "{\"v\":1,\"peer\":\"%s\",\"addr\":\"10.%u.%u.%u:65002\",\"labels\":{\"rack\":\"r%u\"},\"slots\":4}",
      peer_id(i).c_str(), (i >> 16) & 255, (i >> 8) & 255, i & 255, i % 40);
  *path = "/v1/register";
  *body = buf;
}

// Appends one signed request to *out; *nonce receives its nonce.
void append_request(Conn* c, const std::string& path, const std::string& body, std::string* out,
                    std::string* nonce) {
  uint8_t raw[16];
  uint64_t x = c->rng.next(), y = c->rng.next();
  memcpy(raw, &x, 8);
  memcpy(raw + 8, &y, 8);
  char nh[32];
  hex(raw, 16, nh);
  nonce->assign(nh, 32);
  std::string t = std::to_string(g.unix_now);
  std::string msg = "shoal-req-v1\nPOST\n" + path + "\n" + t + "\n" + *nonce + "\n" + sha256_hex(body);
  std::string sig = hmac_hex(msg);
  *out +=
      "POST " + path + " HTTP/1.1\r\nHost: scheduler\r\nContent-Type: application/json\r\nContent-Length: ";
  *out += std::to_string(body.size());
  *out += "\r\nX-Shoal-Protocol: 1\r\nX-Shoal-Time: " + t + "\r\nX-Shoal-Nonce: " + *nonce +
          "\r\nX-Shoal-Signature: " + sig + "\r\n\r\n";
  *out += body;
}

void on_write(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  if (status < 0 && g.phase != Phase::Done && g.st.errors++ < 5)
    fprintf(stderr, "sched_load: write: %s\n", uv_strerror(status));
  delete w;
}

bool measuring(uint64_t t) { return t >= g.measure_start && t < g.phase_end; }

// Sends what the phase allows on c: up to --depth in flight.
void fill(Conn* c) {
  if (c->dead || g.phase == Phase::Done) return;
  if (g.phase == Phase::Rate && c->queued.empty()) return;  // polled often: nothing to do
  auto* w = new WriteReq;
  std::string path, body;
  uint64_t now = uv_hrtime();
  while (static_cast<int>(c->inflight.size()) < g.a.depth) {
    uint64_t due = now;
    if (g.phase == Phase::Register) {
      if (g.next_register >= g.a.peers) break;
      make_register(g.next_register++, &path, &body);
    } else if (g.phase == Phase::Fill) {
      if (g.fill_sent >= g.a.fill) break;
      ++g.fill_sent;
      make_announce(c, c->rng.below(g.a.peers), c->rng.below(g.a.tasks), &path, &body);
    } else if (g.phase == Phase::Rate) {
      if (c->queued.empty()) break;
      due = c->queued.front();
      c->queued.pop_front();
      make_op(c, &path, &body);
    } else {
      if (now >= g.phase_end) break;
      make_op(c, &path, &body);
    }
    Pending p;
    p.due_ns = due;
    p.measured = (g.phase == Phase::Rate || g.phase == Phase::Saturate) && measuring(due);
    if (p.measured && g.phase == Phase::Rate)
      g.st.lag_us.push_back(static_cast<uint32_t>(std::min<uint64_t>((now - due) / 1000, UINT32_MAX)));
    append_request(c, path, body, &w->buf, &p.nonce);
    c->inflight.push_back(std::move(p));
  }
  if (w->buf.empty()) {
    delete w;
    return;
  }
  uv_buf_t b = uv_buf_init(w->buf.data(), static_cast<unsigned>(w->buf.size()));
  int r = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &b, 1, on_write);
  if (r != 0) {
    fprintf(stderr, "sched_load: write: %s\n", uv_strerror(r));
    ++g.st.errors;
    delete w;
  }
}

bool check_sig(const std::string& nonce, int status, const std::string& sig, const char* body, size_t n) {
  std::string msg =
      "shoal-resp-v1\n" + nonce + "\n" + std::to_string(status) + "\n" + sha256_hex(std::string(body, n));
  return hmac_hex(msg) == sig;
}

void conn_failed(Conn* c, const char* what, int err) {
  if (c->dead) return;
  c->dead = true;
  if (g.phase != Phase::Done) {
    fprintf(stderr, "sched_load: connection %s: %s\n", what, uv_strerror(err));
    ++g.st.errors;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
}

// Parses every complete answer in c->in.
void parse(Conn* c) {
  for (;;) {
    const char* base = c->in.data() + c->in_off;
    size_t avail = c->in.size() - c->in_off;
    const char* end = static_cast<const char*>(memmem(base, avail, "\r\n\r\n", 4));
    if (!end) break;
    size_t head_len = static_cast<size_t>(end - base) + 4;
    std::string head(base, head_len);
    int status = avail > 12 ? atoi(base + 9) : 0;
    size_t cl = 0;
    std::string sig;
    std::string lower = head;
    for (auto& ch : lower) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
    size_t p = lower.find("\r\ncontent-length:");
    if (p != std::string::npos) cl = strtoul(head.c_str() + p + 17, nullptr, 10);
    p = lower.find("\r\nx-shoal-signature:");
    if (p != std::string::npos) {
      size_t v = head.find_first_not_of(' ', p + 20);
      sig = head.substr(v, head.find("\r\n", v) - v);
    }
    if (avail < head_len + cl) break;
    if (c->inflight.empty()) {
      conn_failed(c, "answer without a request", UV_EPROTO);
      return;
    }
    Pending req = std::move(c->inflight.front());
    c->inflight.pop_front();
    uint64_t now = uv_hrtime();
    bool ok = status == 200;
    if (ok && (c->sample++ % 64) == 0) {
      ++g.st.checked;
      if (!check_sig(req.nonce, status, sig, base + head_len, cl)) {
        ++g.st.bad_sig;
        ok = false;
      }
    }
    if (!ok && g.st.first_errors_shown++ < 5)
      fprintf(stderr, "sched_load: answer %d: %.*s\n", status, static_cast<int>(std::min<size_t>(cl, 200)),
              base + head_len);
    if (!ok) ++g.st.errors;
    if (req.measured) {
      ++g.st.ops;
      g.st.lat_us.push_back(static_cast<uint32_t>(std::min<uint64_t>((now - req.due_ns) / 1000, UINT32_MAX)));
    }
    c->in_off += head_len + cl;
  }
  if (c->in_off > 0 && c->in_off * 2 >= c->in.size()) {
    c->in.erase(0, c->in_off);
    c->in_off = 0;
  }
}

void on_alloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  static char mem[256 * 1024];
  *buf = uv_buf_init(mem, sizeof mem);
}

void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(s->data);
  if (n < 0) {
    conn_failed(c, "read", static_cast<int>(n));
    return;
  }
  c->in.append(buf->base, static_cast<size_t>(n));
  parse(c);
  fill(c);
}

void on_connect(uv_connect_t* req, int status) {
  auto* c = static_cast<Conn*>(req->data);
  if (status < 0) {
    conn_failed(c, "connect", status);
    return;
  }
  ++g.open_conns;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
  fill(c);
}

size_t total_inflight() {
  size_t n = 0;
  for (Conn* c : g.conns) n += c->dead ? 0 : c->inflight.size() + c->queued.size();
  return n;
}

double pct(std::vector<uint32_t>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i] / 1000.0;
}

void report(const char* name) {
  double secs = g.a.seconds;
  std::vector<uint32_t>& v = g.st.lat_us;
  double mx = v.empty() ? 0 : *std::max_element(v.begin(), v.end()) / 1000.0;
  double p50 = pct(v, 0.50), p99 = pct(v, 0.99), lag99 = pct(g.st.lag_us, 0.99);
  printf("phase=%s conns=%d depth=%d", name, g.a.conns, g.a.depth);
  if (g.phase == Phase::Rate) printf(" rate=%.0f", g.a.rate);
  printf(" seconds=%.2f ops=%" PRIu64 " ops_per_s=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f", secs, g.st.ops,
         static_cast<double>(g.st.ops) / secs, p50, p99, mx);
  if (g.phase == Phase::Rate) printf(" lag_p99_ms=%.3f", lag99);
  printf(" holders_per_task=%.0f", holders_per_task());
  printf(" errors=%" PRIu64 " bad_sig=%" PRIu64 " sig_checked=%" PRIu64 " overload=%d\n", g.st.errors,
         g.st.bad_sig, g.st.checked, g.overload ? 1 : 0);
  fflush(stdout);
}

uint64_t g_total_errors = 0;

void start_phase(Phase p, uint64_t now) {
  g_total_errors += g.st.errors;
  g.st = Stats();
  g.phase = p;
  g.phase_start = now;
  g.measure_start = now + static_cast<uint64_t>(g.a.warmup * 1e9);
  g.phase_end = g.measure_start + static_cast<uint64_t>(g.a.seconds * 1e9);
  g.scheduled = 0;
  g.overload = false;
  for (Conn* c : g.conns) fill(c);
}

// Called between event-loop polls: schedules what is due, moves phases on.
void tick() {
  uint64_t now = uv_hrtime();
  g.unix_now = static_cast<int64_t>(time(nullptr));
  if (g.phase == Phase::Register) {
    if (g.next_register >= g.a.peers && total_inflight() == 0) {
      fprintf(stderr, "sched_load: %u peers registered in %.2f s\n", g.a.peers,
              static_cast<double>(now - g.phase_start) / 1e9);
      if (g.st.errors) {
        g_total_errors += g.st.errors;
        g.phase = Phase::Done;
      } else {
        start_phase(g.a.fill > 0 ? Phase::Fill : g.a.rate > 0 ? Phase::Rate : Phase::Saturate, now);
      }
    }
  } else if (g.phase == Phase::Fill) {
    if (g.fill_sent >= g.a.fill && total_inflight() == 0) {
      fprintf(stderr, "sched_load: %" PRIu64 " announces in %.2f s; %.0f holders per task\n", g.a.fill,
              static_cast<double>(now - g.phase_start) / 1e9, holders_per_task());
      if (g.st.errors) {
        g_total_errors += g.st.errors;
        g.phase = Phase::Done;
      } else {
        start_phase(g.a.rate > 0 ? Phase::Rate : Phase::Saturate, now);
      }
    }
  } else if (g.phase == Phase::Rate) {
    // Put the requests due by now on the schedule, round robin.
    uint64_t until = std::min(now, g.phase_end);
    uint64_t due_total = static_cast<uint64_t>(static_cast<double>(until - g.phase_start) * g.a.rate / 1e9);
    while (g.scheduled < due_total) {
      uint64_t t = g.phase_start + static_cast<uint64_t>(static_cast<double>(g.scheduled) * 1e9 / g.a.rate);
      Conn* c = g.conns[g.rr++ % g.conns.size()];
      ++g.scheduled;
      if (c->dead) continue;
      if (c->queued.size() >= kMaxQueued) {
        g.overload = true;
        continue;
      }
      c->queued.push_back(t);
    }
    for (Conn* c : g.conns) fill(c);
    if (now >= g.phase_end && (total_inflight() == 0 || now >= g.phase_end + kGraceNs)) {
      report("rate");
      if (g.a.saturate) {
        start_phase(Phase::Saturate, now);
      } else {
        g_total_errors += g.st.errors;
        g.phase = Phase::Done;
      }
    }
  } else if (g.phase == Phase::Saturate) {
    if (now >= g.phase_end && (total_inflight() == 0 || now >= g.phase_end + kGraceNs)) {
      report("saturate");
      g_total_errors += g.st.errors;
      g.phase = Phase::Done;
    }
  }
  if (g.phase == Phase::Done) {
    for (Conn* c : g.conns)
      uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
               [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
  }
}

int usage() {
  fprintf(stderr,
          "usage: sched_load --port PORT --secret-file FILE [--host IP] [-c CONNS] [--depth N]\n"
          "                  [--peers N] [--tasks N] [--pieces N] [-d SECONDS] [--warmup SECONDS]\n"
          "                  [--fill N] [--rate OPS] [--saturate 0|1]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args& a = g.a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) return usage();
    const char* v = argv[++i];
    if (k == "--host")
      a.host = v;
    else if (k == "--port")
      a.port = atoi(v);
    else if (k == "--secret-file")
      a.secret_file = v;
    else if (k == "-c")
      a.conns = atoi(v);
    else if (k == "--depth")
      a.depth = atoi(v);
    else if (k == "--peers")
      a.peers = static_cast<uint32_t>(atol(v));
    else if (k == "--tasks")
      a.tasks = static_cast<uint32_t>(atol(v));
    else if (k == "--pieces")
      a.pieces = static_cast<uint32_t>(atol(v));
    else if (k == "-d")
      a.seconds = atof(v);
    else if (k == "--warmup")
      a.warmup = atof(v);
    else if (k == "--rate")
      a.rate = atof(v);
    else if (k == "--fill")
      a.fill = strtoull(v, nullptr, 10);
    else if (k == "--saturate")
      a.saturate = atoi(v) != 0;
    else
      return usage();
  }
  if (a.port <= 0 || a.port > 65535 || a.secret_file.empty() || a.conns < 1 || a.depth < 1 || a.peers < 1 ||
      a.tasks < 1 || a.pieces < 1 || a.pieces > 64 || a.seconds <= 0 || a.rate < 0 ||
      (a.rate == 0 && !a.saturate))
    return usage();
  std::ifstream f(a.secret_file, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  g_secret = ss.str();
  while (!g_secret.empty() && isspace(static_cast<unsigned char>(g_secret.back()))) g_secret.pop_back();
  if (g_secret.size() < 16) {
    fprintf(stderr, "sched_load: %s: no secret of 16 bytes or more\n", a.secret_file.c_str());
    return 2;
  }
  g.held.assign((uint64_t{a.peers} * a.tasks + 63) / 64, 0);
  for (uint32_t t = 0; t < a.tasks; ++t) {
    char id[65];
    snprintf(id, sizeof id, "%056x%08x", 0x5c4edu, t);
    g.task_ids.emplace_back(id, 64);
  }
  sockaddr_in sin{};
  if (uv_ip4_addr(a.host.c_str(), a.port, &sin) != 0) return usage();

  g.loop = uv_default_loop();
  g.unix_now = static_cast<int64_t>(time(nullptr));
  uint64_t seed = uv_hrtime();
  for (int i = 0; i < a.conns; ++i) {
    auto* c = new Conn;
    c->rng.s[0] = seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1));
    c->rng.s[1] = (seed << 1) ^ static_cast<uint64_t>(getpid()) ^ (uint64_t{0xD1B54A32D192ED03} * (i + 7u));
    for (int k = 0; k < 8; ++k) c->rng.next();
    uv_tcp_init(g.loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    uv_tcp_connect(&c->creq, &c->tcp, reinterpret_cast<sockaddr*>(&sin), on_connect);
    g.conns.push_back(c);
  }
  g.phase_start = uv_hrtime();
  while (g.phase != Phase::Done) {
    uv_run(g.loop, UV_RUN_NOWAIT);
    tick();
  }
  uv_run(g.loop, UV_RUN_DEFAULT);  // the connections' close callbacks
  uv_loop_close(g.loop);
  return g_total_errors == 0 ? 0 : 1;
}
