// UploadServer: a real loop on the main thread, real sockets on 127.0.0.1,
// a fake PieceSource over a temporary file, and small blocking clients in
// std::threads. Clients only record what they see; every assertion runs on
// the main thread after the loop has stopped (CMocka's asserts longjmp).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../cmocka_cpp.h"
#include "shoal/http/http.h"
#include "shoal/obs/metrics.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/upload_server.h"

namespace {

using shoal::p2p::PieceRef;
using shoal::p2p::PieceSource;
using shoal::p2p::Signer;
using shoal::p2p::UploadServer;
using shoal::p2p::Verifier;

const char kSecret[] = "0123456789abcdef-upload-test-secret";
const std::string kTask(64, 'a');
constexpr uint32_t kPieceSize = 4u << 20;
// Three pieces: two whole, the last short.
constexpr uint64_t kFileSize = 2ull * kPieceSize + 123457;
// A piece too large for the socket buffers, from a sparse file (zeros).
constexpr uint32_t kBigIndex = 7;
constexpr uint32_t kBigSize = 32u << 20;
// Pieces held in memory (PieceRef::data) instead of a file: a normal one
// and one too large for the socket buffers.
constexpr uint32_t kMemIndex = 10;
constexpr uint32_t kMemBigIndex = 11;

std::string g_data;  // the file's bytes
std::string g_dir;
int g_fd = -1;
int g_big_fd = -1;

char byte_at(uint64_t i) { return static_cast<char>((i * 2654435761u) >> 13); }

// Hands out pieces of the temporary file; counts opens and releases.
// open_piece/release_piece run on the loop thread; the counters are
// atomics so client threads may poll them.
class FakeSource : public PieceSource {
 public:
  bool open_piece(const std::string& task_id, uint32_t index, PieceRef* out) override {
    if (task_id != kTask) return false;
    PieceRef r;
    if (index == kMemIndex || index == kMemBigIndex) {
      r.data = index == kMemIndex ? mem : mem_big;
      r.length = static_cast<uint32_t>(r.data->size());
    } else if (index == kBigIndex) {
      r.fd = g_big_fd;
      r.offset = 0;
      r.length = kBigSize;
    } else if (index < 3) {
      r.fd = g_fd;
      r.offset = uint64_t{index} * kPieceSize;
      uint64_t end = std::min<uint64_t>(r.offset + kPieceSize, kFileSize);
      r.length = static_cast<uint32_t>(end - r.offset);
    } else {
      return false;
    }
    r.token = next_token++;
    std::lock_guard<std::mutex> lk(mu);
    held[r.token] = index;
    opens++;
    *out = r;
    return true;
  }
  void release_piece(const PieceRef& ref) override {
    std::lock_guard<std::mutex> lk(mu);
    if (held.erase(ref.token) != 1) bad_releases++;
    releases++;
  }

  // The server must hold these only while it sends them (use_count).
  std::shared_ptr<const std::string> mem = std::make_shared<const std::string>(mem_bytes(kPieceSize + 4321));
  std::shared_ptr<const std::string> mem_big = std::make_shared<const std::string>(mem_bytes(kBigSize));
  static std::string mem_bytes(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 40503u) >> 7);
    return s;
  }

  std::mutex mu;
  std::map<uint64_t, uint32_t> held;
  uint64_t next_token = 1;
  std::atomic<int> opens{0}, releases{0}, bad_releases{0};
};

// ---------------------------------------------------------------------------
// A blocking client.

int dial(uint16_t port, int rcvbuf = 0) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

struct Resp {
  int status = 0;
  std::string head;  // through the blank line
  std::string body;
  std::string raw() const { return head + body; }
  bool has_header(const std::string& line) const {
    return head.find("\r\n" + line + "\r\n") != std::string::npos;
  }
};

// Reads one response (head, then Content-Length bytes of body). carry holds
// bytes read past the previous response. max_body: stop early after this
// many body bytes (the rest stays unread).
bool read_response(int fd, std::string* carry, Resp* out, size_t max_body = SIZE_MAX) {
  *out = Resp();
  char buf[65536];
  size_t end;
  while ((end = carry->find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    carry->append(buf, static_cast<size_t>(n));
  }
  out->head = carry->substr(0, end + 4);
  carry->erase(0, end + 4);
  if (out->head.compare(0, 9, "HTTP/1.1 ") != 0) return false;
  out->status = std::atoi(out->head.c_str() + 9);
  size_t cl = 0;
  auto p = out->head.find("Content-Length: ");
  if (p != std::string::npos) cl = std::strtoul(out->head.c_str() + p + 16, nullptr, 10);
  size_t want = std::min(cl, max_body);
  while (carry->size() < want) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    carry->append(buf, static_cast<size_t>(n));
  }
  size_t take = std::min(carry->size(), cl);
  out->body = carry->substr(0, take);
  carry->erase(0, take);
  return true;
}

// Reads the rest of a body whose first bytes read_response already took.
bool read_rest(int fd, Resp* r, size_t total, int sleep_ms_per_read = 0) {
  char buf[65536];
  while (r->body.size() < total) {
    size_t want = std::min(sizeof buf, total - r->body.size());
    ssize_t n = ::recv(fd, buf, want, 0);
    if (n <= 0) return false;
    r->body.append(buf, static_cast<size_t>(n));
    if (sleep_ms_per_read) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_per_read));
  }
  return true;
}

// True when the server closed the connection (EOF or reset) within the
// socket's receive timeout.
bool closed_by_server(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

std::string piece_path(uint32_t index, const std::string& task = kTask) {
  return "/v1/tasks/" + task + "/pieces/" + std::to_string(index);
}

std::string signed_request(const std::string& path, bool close = false) {
  Signer signer(kSecret);
  std::string nonce;
  auto hs = signer.sign("GET", path, "", time(nullptr), &nonce);
  hs.insert(hs.begin(), {"Host", "peer"});
  if (close) hs.push_back({"Connection", "close"});
  return shoal::http::serialize_request_head("GET", path, hs);
}

std::string unsigned_request(const std::string& path) {
  return shoal::http::serialize_request_head("GET", path, {{"Host", "peer"}});
}

std::string expected_piece(uint32_t index) {
  uint64_t off = uint64_t{index} * kPieceSize;
  return g_data.substr(off, std::min<uint64_t>(kPieceSize, kFileSize - off));
}

// ---------------------------------------------------------------------------
// The loop side.

uint64_t counter(const std::string& name) {
  for (auto& [k, v] : shoal::obs::metrics().snapshot())
    if (k == name) return static_cast<uint64_t>(v);
  return 0;
}

struct Harness {
  explicit Harness(UploadServer::Options opts) : verifier(kSecret) {
    assert_int_equal(uv_loop_init(&loop), 0);
    server.reset(new UploadServer(&loop, &source, &verifier, opts));
    std::string err;
    assert_int_equal(server->listen("127.0.0.1", 0, &err), 0);
    port = server->port();
    assert_true(port != 0);
    uv_async_init(&loop, &stop, [](uv_async_t* a) {
      auto* h = static_cast<Harness*>(a->data);
      h->busy_at_stop = h->server->busy_slots();
      h->server->close([h] { h->closed = true; });
      uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
    });
    stop.data = this;
  }

  // Runs the loop until the client (on its own thread) is done, then closes
  // the server (transfers may still be in flight) and lets the loop drain.
  void run(const std::function<void()>& client) {
    std::thread t([&] {
      client();
      uv_async_send(&stop);
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    t.join();
    assert_true(closed);
    server.reset();
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(source.bad_releases.load(), 0);
    assert_int_equal(source.opens.load(), source.releases.load());
    assert_true(source.held.empty());
    assert_int_equal(counter("shoal_upload_active"), 0);
  }

  uv_loop_t loop{};
  FakeSource source;
  Verifier verifier;
  std::unique_ptr<UploadServer> server;
  uv_async_t stop{};
  uint16_t port = 0;
  bool closed = false;
  uint32_t busy_at_stop = 0;
};

bool wait_until(const std::function<bool()>& cond, int ms = 5000) {
  for (int i = 0; i < ms / 5; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

// ---------------------------------------------------------------------------
// Tests.

void test_signed_pieces(void**) {
  Harness h({});
  uint64_t bytes_before = counter("shoal_upload_bytes_total");
  uint64_t pieces_before = counter("shoal_upload_pieces_total");
  Resp middle, last;
  bool ok = false;
  h.run([&] {
    int fd = dial(h.port);
    std::string carry;
    ok = fd >= 0 && send_all(fd, signed_request(piece_path(1))) && read_response(fd, &carry, &middle) &&
         send_all(fd, signed_request(piece_path(2), true)) && read_response(fd, &carry, &last) &&
         closed_by_server(fd);
    ::close(fd);
  });
  assert_true(ok);
  assert_int_equal(middle.status, 200);
  assert_true(middle.has_header("Content-Length: " + std::to_string(kPieceSize)));
  assert_true(middle.body == expected_piece(1));
  assert_int_equal(last.status, 200);
  assert_int_equal(last.body.size(), 123457);
  assert_true(last.body == expected_piece(2));
  assert_true(last.has_header("Connection: close"));
  assert_int_equal(h.source.opens.load(), 2);
  assert_int_equal(counter("shoal_upload_bytes_total") - bytes_before, kPieceSize + 123457);
  assert_int_equal(counter("shoal_upload_pieces_total") - pieces_before, 2);
}

// Two requests sent together: the answers come back in order, whole.
void test_pipelined(void**) {
  Harness h({});
  Resp a, b;
  bool ok = false;
  h.run([&] {
    int fd = dial(h.port);
    std::string carry;
    ok = fd >= 0 && send_all(fd, signed_request(piece_path(0)) + signed_request(piece_path(2))) &&
         read_response(fd, &carry, &a) && read_response(fd, &carry, &b);
    ::close(fd);
  });
  assert_true(ok);
  assert_int_equal(a.status, 200);
  assert_true(a.body == expected_piece(0));
  assert_int_equal(b.status, 200);
  assert_true(b.body == expected_piece(2));
}

// Unsigned, badly signed, a malformed path, a piece not held and a replayed
// signature all get the same bytes, and the connection stays usable.
void test_forbidden_alike(void**) {
  Harness h({});
  uint64_t rejected_before = counter("shoal_upload_rejected_total{reason=\"forbidden\"}");
  std::vector<Resp> rs(7);
  bool ok = false;
  h.run([&] {
    int fd = dial(h.port);
    std::string carry;
    std::string good = signed_request(piece_path(0));
    std::string tampered = good;
    tampered.replace(tampered.find("/pieces/0"), 9, "/pieces/1");
    ok = fd >= 0 && send_all(fd, unsigned_request(piece_path(0))) && read_response(fd, &carry, &rs[0]) &&
         send_all(fd, signed_request(piece_path(5))) && read_response(fd, &carry, &rs[1]) &&
         send_all(fd, signed_request("/v1/tasks/" + std::string(64, 'A') + "/pieces/0")) &&
         read_response(fd, &carry, &rs[2]) &&
         send_all(fd, signed_request(piece_path(0, std::string(64, 'b')))) &&
         read_response(fd, &carry, &rs[3]) && send_all(fd, tampered) && read_response(fd, &carry, &rs[4]) &&
         send_all(fd, good) && read_response(fd, &carry, &rs[5]) && send_all(fd, good) &&
         read_response(fd, &carry, &rs[6]);
    ::close(fd);
  });
  assert_true(ok);
  assert_int_equal(rs[0].status, 403);
  assert_true(rs[0].body == "forbidden\n");
  for (int i : {1, 2, 3, 4, 6}) assert_true(rs[i].raw() == rs[0].raw());
  assert_int_equal(rs[5].status, 200);
  assert_true(rs[5].body == expected_piece(0));
  assert_int_equal(h.source.opens.load(), 1);
  assert_int_equal(counter("shoal_upload_rejected_total{reason=\"forbidden\"}") - rejected_before, 6);
}

// The replay on a second connection is refused as well.
void test_replay_other_connection(void**) {
  Harness h({});
  Resp first, second;
  bool ok = false;
  h.run([&] {
    std::string req = signed_request(piece_path(2));
    int a = dial(h.port);
    int b = dial(h.port);
    std::string ca, cb;
    ok = a >= 0 && b >= 0 && send_all(a, req) && read_response(a, &ca, &first) && send_all(b, req) &&
         read_response(b, &cb, &second);
    ::close(a);
    ::close(b);
  });
  assert_true(ok);
  assert_int_equal(first.status, 200);
  assert_int_equal(second.status, 403);
}

// slots = 1: while a slow reader holds the slot, another request gets 503
// at once; the slow reader still gets every byte.
void test_busy(void**) {
  Harness h({1, 0});
  uint64_t busy_before = counter("shoal_upload_rejected_total{reason=\"busy\"}");
  Resp slow, other, after;
  bool ok = false;
  h.run([&] {
    int a = dial(h.port, 16 * 1024);
    std::string ca;
    ok = a >= 0 && send_all(a, signed_request(piece_path(kBigIndex))) && read_response(a, &ca, &slow, 4096);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int b = dial(h.port);
    std::string cb;
    ok = ok && b >= 0 && send_all(b, signed_request(piece_path(0))) && read_response(b, &cb, &other);
    // Read slowly for a while, then the rest at full speed.
    ok = ok && read_rest(a, &slow, 256 * 1024, 5) && read_rest(a, &slow, kBigSize);
    // The slot is free again.
    ok = ok && send_all(b, signed_request(piece_path(2))) && read_response(b, &cb, &after);
    ::close(a);
    ::close(b);
  });
  assert_true(ok);
  assert_int_equal(slow.status, 200);
  assert_int_equal(slow.body.size(), kBigSize);
  assert_true(slow.body == std::string(kBigSize, '\0'));
  assert_int_equal(other.status, 503);
  assert_true(other.has_header("Retry-After: 1"));
  assert_int_equal(after.status, 200);
  assert_true(after.body == expected_piece(2));
  assert_int_equal(counter("shoal_upload_rejected_total{reason=\"busy\"}") - busy_before, 1);
}

// One piece on a new connection, timed from the request to its last byte.
bool timed_fetch(Harness& h, uint32_t index, Resp* r, double* seconds) {
  bool ok = false;
  h.run([&] {
    int fd = dial(h.port);
    std::string carry;
    auto t0 = std::chrono::steady_clock::now();
    ok = fd >= 0 && send_all(fd, signed_request(piece_path(index))) && read_response(fd, &carry, r);
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ::close(fd);
  });
  return ok;
}

// 4 MiB at 8 MiB/s: the burst (0.8 MiB) goes at once, the rest takes 0.4 s.
void test_rate_limit(void**) {
  Harness h({16, 8u << 20});
  Resp r;
  double seconds = 0;
  assert_true(timed_fetch(h, 0, &r, &seconds));
  assert_int_equal(r.status, 200);
  assert_true(r.body == expected_piece(0));
  std::printf("  4 MiB at 8 MiB/s took %.3f s\n", seconds);
  // The bucket starts full with a tenth of a second's worth (0.8 MiB): the
  // other 3.2 MiB wait for tokens (0.4 s).
  assert_true(seconds >= 0.36);
  assert_true(seconds < 3.0);
}

// Two connections share the bucket: 2 x 4 MiB at 16 MiB/s takes about
// (8 - 1.6) / 16 = 0.4 s too.
void test_rate_limit_shared(void**) {
  Harness h({16, 16u << 20});
  Resp r1, r2;
  bool ok1 = false, ok2 = false;
  double seconds = 0;
  h.run([&] {
    auto t0 = std::chrono::steady_clock::now();
    std::thread other([&] {
      int fd = dial(h.port);
      std::string carry;
      ok2 = fd >= 0 && send_all(fd, signed_request(piece_path(1))) && read_response(fd, &carry, &r2);
      ::close(fd);
    });
    int fd = dial(h.port);
    std::string carry;
    ok1 = fd >= 0 && send_all(fd, signed_request(piece_path(0))) && read_response(fd, &carry, &r1);
    ::close(fd);
    other.join();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  assert_true(ok1 && ok2);
  assert_true(r1.body == expected_piece(0));
  assert_true(r2.body == expected_piece(1));
  std::printf("  2 x 4 MiB at 16 MiB/s took %.3f s\n", seconds);
  assert_true(seconds >= 0.36);
}

// Under a slow limit the steps are small: two pieces at 1 MiB/s both start
// flowing at once. Whole-MiB steps made the second connection wait a second
// for its first byte, and its peer dropped the parent as stalled.
void test_rate_limit_small_steps(void**) {
  Harness h({16, 1u << 20});
  double first[2] = {0, 0};
  bool ok[2] = {false, false};
  h.run([&] {
    auto t0 = std::chrono::steady_clock::now();
    int fds[2];
    for (int i = 0; i < 2; ++i) {
      fds[i] = dial(h.port);
      ok[i] = fds[i] >= 0 && send_all(fds[i], signed_request(piece_path(static_cast<uint32_t>(i))));
    }
    // Each connection: the head and 32 KiB of body, then close.
    std::vector<std::thread> readers;
    for (int i = 0; i < 2; ++i)
      readers.emplace_back([&, i] {
        std::string got;
        char buf[16384];
        size_t end = std::string::npos;
        while (ok[i]) {
          ssize_t n = ::recv(fds[i], buf, sizeof buf, 0);
          if (n <= 0) {
            ok[i] = false;
            break;
          }
          got.append(buf, static_cast<size_t>(n));
          if (end == std::string::npos) end = got.find("\r\n\r\n");
          if (end != std::string::npos && got.size() >= end + 4 + (32u << 10)) break;
        }
        first[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ::close(fds[i]);
      });
    for (auto& t : readers) t.join();
  });
  assert_true(ok[0] && ok[1]);
  std::printf("  32 KiB of each of two pieces at 1 MiB/s: %.3f s and %.3f s\n", first[0], first[1]);
  assert_true(first[0] < 0.5);
  assert_true(first[1] < 0.5);
}

// A piece held in memory goes out without a file read, whole, counted as
// from memory; once it is out the server keeps no reference to it.
void test_memory_piece(void**) {
  Harness h({});
  uint64_t mem_before = counter("shoal_upload_started_total{from=\"memory\"}");
  uint64_t disk_before = counter("shoal_upload_started_total{from=\"disk\"}");
  Resp a, b;
  bool ok = false;
  long refs_after = -1;
  h.run([&] {
    int fd = dial(h.port);
    std::string carry;
    ok = fd >= 0 && send_all(fd, signed_request(piece_path(kMemIndex))) && read_response(fd, &carry, &a);
    // The connection stays open, idle: it must not pin the piece.
    ok = ok && wait_until([&] { return h.source.releases.load() == 1; });
    refs_after = h.source.mem.use_count();
    ok = ok && send_all(fd, signed_request(piece_path(1))) && read_response(fd, &carry, &b);
    ::close(fd);
  });
  assert_true(ok);
  assert_int_equal(a.status, 200);
  assert_true(a.has_header("Content-Length: " + std::to_string(h.source.mem->size())));
  assert_true(a.body == *h.source.mem);
  assert_true(b.body == expected_piece(1));
  assert_int_equal(counter("shoal_upload_started_total{from=\"memory\"}") - mem_before, 1);
  assert_int_equal(counter("shoal_upload_started_total{from=\"disk\"}") - disk_before, 1);
  assert_int_equal(refs_after, 1);
  assert_int_equal(h.source.bad_releases.load(), 0);
}

// From memory the rate limit holds as from a file: 4 MiB at 8 MiB/s.
void test_memory_rate_limit(void**) {
  Harness h({16, 8u << 20});
  Resp r;
  double seconds = 0;
  assert_true(timed_fetch(h, kMemIndex, &r, &seconds));
  assert_true(r.body == *h.source.mem);
  std::printf("  4 MiB from memory at 8 MiB/s took %.3f s\n", seconds);
  assert_true(seconds >= 0.36);
  assert_true(seconds < 3.0);
}

// A client that goes away in the middle of a piece from memory: released
// once, and no reference is left behind.
void test_memory_disconnect(void**) {
  Harness h({1, 0});
  Resp part;
  bool ok = false, released = false;
  long refs_after = -1;
  h.run([&] {
    int a = dial(h.port, 16 * 1024);
    std::string ca;
    ok =
        a >= 0 && send_all(a, signed_request(piece_path(kMemBigIndex))) && read_response(a, &ca, &part, 1000);
    ::close(a);
    released = wait_until([&] { return h.source.releases.load() == 1; });
    refs_after = h.source.mem_big.use_count();
  });
  assert_true(ok);
  assert_true(released);
  assert_int_equal(part.status, 200);
  assert_int_equal(refs_after, 1);
  assert_int_equal(h.source.bad_releases.load(), 0);
}

// A client that goes away mid-piece: the piece is released once, the slot
// comes back, and the server keeps serving.
void test_client_disconnect(void**) {
  Harness h({1, 0});
  Resp part, next;
  bool ok = false, released = false;
  h.run([&] {
    int a = dial(h.port, 16 * 1024);
    std::string ca;
    ok = a >= 0 && send_all(a, signed_request(piece_path(kBigIndex))) && read_response(a, &ca, &part, 1000);
    ::close(a);
    released = wait_until([&] { return h.source.releases.load() == 1; });
    int b = dial(h.port);
    std::string cb;
    ok = ok && b >= 0 && send_all(b, signed_request(piece_path(1))) && read_response(b, &cb, &next);
    ::close(b);
  });
  assert_true(ok);
  assert_true(released);
  assert_int_equal(part.status, 200);
  assert_int_equal(next.status, 200);
  assert_true(next.body == expected_piece(1));
  assert_int_equal(h.source.releases.load(), 2);
}

// close() while two pieces are being sent (at 1 MiB/s, so each is waiting
// for tokens, or has a read or a write in flight) and a connection sits idle: everything is released
// and every handle closed.
void test_close_in_flight(void**) {
  Harness h({4, 1u << 20});
  bool ok = false;
  int a = -1, b = -1, c = -1;
  h.run([&] {
    a = dial(h.port, 16 * 1024);
    b = dial(h.port, 16 * 1024);
    c = dial(h.port);
    ok = a >= 0 && b >= 0 && c >= 0 && send_all(a, signed_request(piece_path(kBigIndex))) &&
         send_all(b, signed_request(piece_path(0)));
    ok = ok && wait_until([&] { return h.source.opens.load() == 2; });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  });
  assert_true(ok);
  assert_int_equal(h.busy_at_stop, 2);
  assert_int_equal(h.source.releases.load(), 2);
  // The server reset its side.
  assert_true(closed_by_server(c));
  ::close(a);
  ::close(b);
  ::close(c);
}

// Keeps every thread-pool thread busy until release(), so that a file read
// the server queues stays in flight as long as the test wants.
struct PoolBlocker {
  explicit PoolBlocker(uv_loop_t* loop) {
    const char* env = std::getenv("UV_THREADPOOL_SIZE");
    size_t n = env && std::atoi(env) > 0 ? static_cast<size_t>(std::atoi(env)) : 4;
    works.resize(n);
    for (auto& w : works) {
      w.data = this;
      uv_queue_work(
          loop, &w,
          [](uv_work_t* req) {
            auto* b = static_cast<PoolBlocker*>(req->data);
            while (!b->go.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          },
          nullptr);
    }
  }
  void release() { go = true; }
  std::vector<uv_work_t> works;
  std::atomic<bool> go{false};
};

// A client goes away while the server's read of its piece is still in the
// thread pool: the slot comes back at once, the piece only once the read
// has returned (the source's fd must stay readable until then).
void test_disconnect_during_read(void**) {
  Harness h({1, 0});
  PoolBlocker blocker(&h.loop);
  bool opened = false, released_early = true, released = false;
  Resp next;
  bool ok = false;
  h.run([&] {
    int a = dial(h.port);
    opened = a >= 0 && send_all(a, signed_request(piece_path(1))) &&
             wait_until([&] { return h.source.opens.load() == 1; });
    ::close(a);
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    released_early = h.source.releases.load() != 0;
    // The slot is free although the read is still pending.
    int b = dial(h.port);
    std::string cb;
    std::thread later([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      blocker.release();
    });
    ok = b >= 0 && send_all(b, signed_request(piece_path(2))) && read_response(b, &cb, &next);
    later.join();
    released = wait_until([&] { return h.source.releases.load() == 2; });
    ::close(b);
  });
  assert_true(opened);
  assert_false(released_early);
  assert_true(ok);
  assert_int_equal(next.status, 200);
  assert_true(next.body == expected_piece(2));
  assert_true(released);
}

// close() while a read is in the thread pool: done waits for the read.
void test_close_during_read(void**) {
  Harness h({});
  PoolBlocker blocker(&h.loop);
  bool opened = false;
  std::thread later;
  h.run([&] {
    int a = dial(h.port);
    opened = a >= 0 && send_all(a, signed_request(piece_path(0))) &&
             wait_until([&] { return h.source.opens.load() == 1; });
    later = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      blocker.release();
    });
    ::close(a);
  });
  later.join();
  assert_true(opened);
  assert_int_equal(h.source.releases.load(), 1);
}

// A connection with nothing to say is closed after the idle timeout, one
// that never finishes its head after the header timeout.
void test_timeouts(void**) {
  shoal::p2p::set_upload_timeouts_for_test(200, 400);
  Harness h({});
  bool idle_closed = false, head_closed = false;
  double idle_s = 0, head_s = 0;
  h.run([&] {
    auto t0 = std::chrono::steady_clock::now();
    int a = dial(h.port);
    int b = dial(h.port);
    send_all(b, "GET /v1/tasks/");
    head_closed = closed_by_server(b);
    head_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    idle_closed = closed_by_server(a);
    idle_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ::close(a);
    ::close(b);
  });
  shoal::p2p::set_upload_timeouts_for_test(30 * 1000, 60 * 1000);
  assert_true(head_closed);
  assert_true(idle_closed);
  assert_true(head_s >= 0.15 && head_s < 0.4);
  assert_true(idle_s >= 0.35 && idle_s < 2.0);
}

// Junk gets a 400 and a close; a body on a GET is forbidden.
void test_bad_requests(void**) {
  Harness h({});
  Resp junk, with_body;
  bool ok = false;
  h.run([&] {
    int a = dial(h.port);
    std::string ca;
    ok = a >= 0 && send_all(a, "NOT HTTP\r\n\r\n") && read_response(a, &ca, &junk) && closed_by_server(a);
    ::close(a);
    int b = dial(h.port);
    std::string cb;
    Signer signer(kSecret);
    std::string nonce;
    auto hs = signer.sign("GET", piece_path(0), "", time(nullptr), &nonce);
    hs.push_back({"Content-Length", "3"});
    ok = ok && b >= 0 && send_all(b, shoal::http::serialize_request_head("GET", piece_path(0), hs) + "abc") &&
         read_response(b, &cb, &with_body);
    ::close(b);
  });
  assert_true(ok);
  assert_int_equal(junk.status, 400);
  assert_int_equal(with_body.status, 403);
}

void test_listen_errors(void**) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  FakeSource source;
  Verifier verifier(kSecret);
  {
    UploadServer s(&loop, &source, &verifier, {});
    std::string err;
    assert_true(s.listen("not-an-ip", 0, &err) < 0);
    assert_false(err.empty());
    bool done = false;
    s.close([&] { done = true; });
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(done);
  }
  {
    // IPv6 loopback, when the host has it.
    UploadServer s(&loop, &source, &verifier, {});
    std::string err;
    if (s.listen("::1", 0, &err) == 0) assert_true(s.port() != 0);
    bool done = false;
    s.close([&] { done = true; });
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(done);
  }
  assert_int_equal(uv_loop_close(&loop), 0);
}

int setup(void**) {
  char tmpl[] = "/tmp/shoal-upload-XXXXXX";
  if (!mkdtemp(tmpl)) return -1;
  g_dir = tmpl;
  g_data.resize(kFileSize);
  for (uint64_t i = 0; i < kFileSize; ++i) g_data[i] = byte_at(i);
  std::string path = g_dir + "/task";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(g_data.data(), 1, g_data.size(), f) != g_data.size()) return -1;
  std::fclose(f);
  g_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  std::string big = g_dir + "/big";
  int w = ::open(big.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (w < 0 || ::ftruncate(w, kBigSize) != 0) return -1;
  ::close(w);
  g_big_fd = ::open(big.c_str(), O_RDONLY | O_CLOEXEC);
  return g_fd >= 0 && g_big_fd >= 0 ? 0 : -1;
}

int teardown(void**) {
  ::close(g_fd);
  ::close(g_big_fd);
  ::unlink((g_dir + "/task").c_str());
  ::unlink((g_dir + "/big").c_str());
  ::rmdir(g_dir.c_str());
  return 0;
}

}  // namespace

int run_upload_server_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_signed_pieces),
      cmocka_unit_test(test_pipelined),
      cmocka_unit_test(test_forbidden_alike),
      cmocka_unit_test(test_replay_other_connection),
      cmocka_unit_test(test_busy),
      cmocka_unit_test(test_rate_limit),
      cmocka_unit_test(test_rate_limit_shared),
      cmocka_unit_test(test_rate_limit_small_steps),
      cmocka_unit_test(test_client_disconnect),
      cmocka_unit_test(test_memory_piece),
      cmocka_unit_test(test_memory_rate_limit),
      cmocka_unit_test(test_memory_disconnect),
      cmocka_unit_test(test_close_in_flight),
      cmocka_unit_test(test_disconnect_during_read),
      cmocka_unit_test(test_close_during_read),
      cmocka_unit_test(test_timeouts),
      cmocka_unit_test(test_bad_requests),
      cmocka_unit_test(test_listen_errors),
  };
  return cmocka_run_group_tests_name("p2p upload server", tests, setup, teardown);
}
