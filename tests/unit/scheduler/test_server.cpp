// scheduler::Server over a real loop and a loopback socket: the loop runs in
// a thread of its own, the test talks to it with a blocking socket.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "sched_test.h"
#include "shoal/http/http.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/protocol.h"
#include "shoal/scheduler/server.h"
#include "shoal/scheduler/state.h"
// clang-format off
#include "../cmocka_cpp.h"
// clang-format on

namespace shoal::scheduler::test {
namespace {

const std::string kSecret = "test-cluster-secret-0123456789";

struct Rig {
  uv_loop_t loop{};
  State state;
  std::unique_ptr<Server> server;
  uv_async_t stop{};
  std::thread th;
  uint16_t port = 0;

  explicit Rig(ServerOptions opts = {}) {
    assert_int_equal(uv_loop_init(&loop), 0);
    server = std::make_unique<Server>(&loop, &state, kSecret, opts);
    std::string err;
    assert_int_equal(server->listen("127.0.0.1", 0, &err), 0);
    port = server->port();
    assert_int_not_equal(port, 0);
    stop.data = this;
    uv_async_init(&loop, &stop, [](uv_async_t* a) {
      auto* r = static_cast<Rig*>(a->data);
      r->server->close([] {});
      uv_close(reinterpret_cast<uv_handle_t*>(&r->stop), nullptr);
    });
    th = std::thread([this] { uv_run(&loop, UV_RUN_DEFAULT); });
  }
  // Stops the server, waits for the loop to run out of handles.
  void finish() {
    uv_async_send(&stop);
    th.join();
    server.reset();
    assert_int_equal(uv_loop_close(&loop), 0);
  }
};

int connect_to(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    assert_true(n > 0);
    off += static_cast<size_t>(n);
  }
}

std::string request(const std::string& method, const std::string& path, const std::string& body,
                    std::string* nonce, bool sign = true, int64_t when = 0) {
  std::vector<http::Header> h;
  if (sign) {
    p2p::Signer signer(kSecret);
    h = signer.sign(method, path, body, when ? when : static_cast<int64_t>(time(nullptr)), nonce);
  }
  h.push_back({"Host", "scheduler"});
  h.push_back({"Content-Type", "application/json"});
  h.push_back({"Content-Length", std::to_string(body.size())});
  return http::serialize_request_head(method, path, h) + body;
}

struct Response {
  int status = 0;
  std::vector<http::Header> headers;
  std::string body;
};

// Reads until `want` responses arrived (or EOF / the 5 s timeout).
struct Reader : http::Handler {
  std::vector<Response> got;
  Response cur;
  bool eof = false;
  int on_head(http::MessageHead& h) override {
    cur = Response();
    cur.status = h.status;
    cur.headers = h.headers;
    return 0;
  }
  int on_body(const char* d, size_t n) override {
    cur.body.append(d, n);
    return 0;
  }
  int on_message_complete() override {
    got.push_back(cur);
    return 0;
  }
  void read(int fd, size_t want) {
    http::Parser p(http::Parser::Kind::Response, this);
    char buf[65536];
    while (got.size() < want) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) {
        eof = n == 0;
        p.feed_eof();
        return;
      }
      assert_int_equal(p.feed(buf, static_cast<size_t>(n)), static_cast<size_t>(n));
    }
  }
  // After the responses: true when the server closes the connection.
  static bool closed(int fd) {
    char c;
    return recv(fd, &c, 1, 0) == 0;
  }
};

std::string register_body(const std::string& peer) {
  p2p::RegisterReq r;
  r.peer = peer;
  r.addr = "127.0.0.1:65002";
  r.slots = 4;
  return p2p::encode(r);
}

bool signed_ok(const std::string& nonce, const Response& r) {
  p2p::Signer signer(kSecret);
  return signer.check_response(nonce, r.status, r.headers, r.body);
}

void test_signed_register(void**) {
  Rig rig;
  int fd = connect_to(rig.port);
  std::string nonce;
  send_all(fd, request("POST", "/v1/register", register_body("p1"), &nonce));
  Reader rd;
  rd.read(fd, 1);
  assert_int_equal(rd.got.size(), 1);
  assert_int_equal(rd.got[0].status, 200);
  assert_true(signed_ok(nonce, rd.got[0]));
  p2p::RegisterResp resp;
  std::string err;
  assert_true(p2p::decode(rd.got[0].body, &resp, &err));
  assert_int_equal(resp.heartbeat_ms, 5000);
  // A tampered body does not verify against the response signature.
  Response t = rd.got[0];
  t.body += " ";
  assert_false(signed_ok(nonce, t));
  // Keep-alive: a second request on the same connection.
  p2p::HeartbeatReq hb;
  hb.peer = "p1";
  send_all(fd, request("POST", "/v1/heartbeat", p2p::encode(hb), &nonce));
  rd.read(fd, 2);
  assert_int_equal(rd.got[1].status, 200);
  assert_true(signed_ok(nonce, rd.got[1]));
  close(fd);
  rig.finish();
  assert_int_equal(rig.state.counters().peers, 1);
}

void test_unsigned_and_forged(void**) {
  Rig rig;
  int fd = connect_to(rig.port);
  std::string nonce;
  send_all(fd, request("POST", "/v1/register", register_body("p1"), &nonce, false));
  // Signed for another path.
  std::string body = register_body("p1");
  std::vector<http::Header> h = p2p::Signer(kSecret).sign("POST", "/v1/leave", body, time(nullptr), &nonce);
  h.push_back({"Content-Length", std::to_string(body.size())});
  send_all(fd, http::serialize_request_head("POST", "/v1/register", h) + body);
  // Signed with another secret.
  h = p2p::Signer("another-secret-0123456789").sign("POST", "/v1/register", body, time(nullptr), &nonce);
  h.push_back({"Content-Length", std::to_string(body.size())});
  send_all(fd, http::serialize_request_head("POST", "/v1/register", h) + body);
  // Too old.
  send_all(fd, request("POST", "/v1/register", body, &nonce, true, time(nullptr) - 3600));
  Reader rd;
  rd.read(fd, 4);
  assert_int_equal(rd.got.size(), 4);
  for (const auto& r : rd.got) {
    assert_int_equal(r.status, 403);
    assert_string_equal(r.body.c_str(), "forbidden");
  }
  close(fd);
  rig.finish();
  assert_int_equal(rig.state.counters().peers, 0);
}

void test_replay(void**) {
  Rig rig;
  std::string nonce;
  std::string req = request("POST", "/v1/register", register_body("p1"), &nonce);
  int fd = connect_to(rig.port);
  send_all(fd, req);
  Reader rd;
  rd.read(fd, 1);
  assert_int_equal(rd.got[0].status, 200);
  close(fd);
  // The same bytes again, on a new connection.
  fd = connect_to(rig.port);
  send_all(fd, req);
  Reader rd2;
  rd2.read(fd, 1);
  assert_int_equal(rd2.got.size(), 1);
  assert_int_equal(rd2.got[0].status, 403);
  assert_string_equal(rd2.got[0].body.c_str(), "forbidden");
  close(fd);
  rig.finish();
}

void test_pipelined_in_order(void**) {
  Rig rig;
  int fd = connect_to(rig.port);
  std::string n1, n2, n3;
  p2p::HeartbeatReq hb;
  hb.peer = "p1";
  p2p::ParentsReq pq;
  pq.peer = "p1";
  pq.task = std::string(64, 'c');
  pq.length = 3ull << 22;
  pq.piece_size = 4u << 20;
  pq.have = p2p::Bitmap(3);
  pq.hashes_known = p2p::Bitmap(3);
  pq.source = true;
  // One write, three requests: answers come back in order.
  std::string all = request("POST", "/v1/register", register_body("p1"), &n1) +
                    request("POST", "/v1/heartbeat", p2p::encode(hb), &n2) +
                    request("POST", "/v1/parents", p2p::encode(pq), &n3);
  send_all(fd, all);
  Reader rd;
  rd.read(fd, 3);
  assert_int_equal(rd.got.size(), 3);
  std::string err;
  p2p::RegisterResp rr;
  assert_int_equal(rd.got[0].status, 200);
  assert_true(signed_ok(n1, rd.got[0]));
  assert_true(p2p::decode(rd.got[0].body, &rr, &err));
  assert_int_equal(rd.got[1].status, 200);
  assert_true(signed_ok(n2, rd.got[1]));
  assert_true(p2p::decode_ack(rd.got[1].body, &err));
  assert_int_equal(rd.got[2].status, 200);
  assert_true(signed_ok(n3, rd.got[2]));
  p2p::ParentsResp pr;
  assert_true(p2p::decode(rd.got[2].body, 3, &pr, &err));
  assert_true(pr.origin == std::vector<uint32_t>({0, 1}));
  // The same, byte by byte.
  std::string again = request("POST", "/v1/heartbeat", p2p::encode(hb), &n1) +
                      request("POST", "/v1/heartbeat", p2p::encode(hb), &n2);
  for (char c : again) send_all(fd, std::string(1, c));
  rd.read(fd, 5);
  assert_int_equal(rd.got.size(), 5);
  assert_true(signed_ok(n1, rd.got[3]));
  assert_true(signed_ok(n2, rd.got[4]));
  close(fd);
  rig.finish();
}

void test_errors(void**) {
  Rig rig;
  int fd = connect_to(rig.port);
  std::string n1, n2, n3, n4;
  p2p::HeartbeatReq hb;
  hb.peer = "nobody";
  send_all(fd, request("POST", "/v1/heartbeat", p2p::encode(hb), &n1) +
                   request("POST", "/v1/announce", "{\"v\":1,\"peer\":\"p1\"}", &n2) +
                   request("POST", "/v1/nothing", "{}", &n3) +
                   request("GET", "/healthz", "", nullptr, false) + request("GET", "/v1/register", "", &n4));
  Reader rd;
  rd.read(fd, 5);
  assert_int_equal(rd.got.size(), 5);
  std::string err;
  p2p::ErrorResp e;
  // Unknown peer: 404 with a reason, signed.
  assert_int_equal(rd.got[0].status, 404);
  assert_true(signed_ok(n1, rd.got[0]));
  assert_true(p2p::decode(rd.got[0].body, &e, &err));
  // A body that does not decode: 400 naming the problem, signed.
  assert_int_equal(rd.got[1].status, 400);
  assert_true(signed_ok(n2, rd.got[1]));
  assert_true(p2p::decode(rd.got[1].body, &e, &err));
  assert_true(e.error.find("task") != std::string::npos);
  assert_int_equal(rd.got[2].status, 404);
  assert_true(signed_ok(n3, rd.got[2]));
  assert_int_equal(rd.got[3].status, 200);
  assert_string_equal(rd.got[3].body.c_str(), "ok");
  assert_int_equal(rd.got[4].status, 405);
  // An oversized body: 413 and the connection closes.
  std::string head = "POST /v1/announce HTTP/1.1\r\nHost: s\r\nContent-Length: 5000000\r\n\r\n";
  send_all(fd, head);
  rd.read(fd, 6);
  assert_int_equal(rd.got.size(), 6);
  assert_int_equal(rd.got[5].status, 413);
  assert_true(Reader::closed(fd));
  close(fd);
  // Garbage: 400 and close.
  fd = connect_to(rig.port);
  send_all(fd, "NOT HTTP AT ALL\r\n\r\n");
  Reader rd2;
  rd2.read(fd, 1);
  assert_int_equal(rd2.got.size(), 1);
  assert_int_equal(rd2.got[0].status, 400);
  assert_true(Reader::closed(fd));
  close(fd);
  // Connection: close is honoured after the answer.
  fd = connect_to(rig.port);
  send_all(fd, "GET /healthz HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
  Reader rd3;
  rd3.read(fd, 1);
  assert_int_equal(rd3.got.size(), 1);
  assert_true(Reader::closed(fd));
  close(fd);
  rig.finish();
}

void test_timeouts(void**) {
  ServerOptions o;
  o.header_timeout_ms = 100;
  o.idle_timeout_ms = 200;
  Rig rig(o);
  // A request head that never ends.
  int fd = connect_to(rig.port);
  send_all(fd, "POST /v1/register HTTP/1.1\r\nHost: s\r\n");
  assert_true(Reader::closed(fd));
  close(fd);
  // An idle keep-alive connection.
  fd = connect_to(rig.port);
  send_all(fd, "GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n");
  Reader rd;
  rd.read(fd, 1);
  assert_int_equal(rd.got.size(), 1);
  assert_true(Reader::closed(fd));
  close(fd);
  rig.finish();
}

// Many pipelined requests whose answers pass the output high mark while
// the client does not read: the server stops reading, then catches up.
void test_backpressure(void**) {
  Rig rig;
  int fd = connect_to(rig.port);
  std::string nonce;
  send_all(fd, request("POST", "/v1/register", register_body("p1"), &nonce));
  Reader rd;
  rd.read(fd, 1);
  p2p::ParentsReq pq;
  pq.peer = "p1";
  pq.task = std::string(64, 'd');
  pq.length = 2000ull << 22;
  pq.piece_size = 4u << 20;
  pq.have = p2p::Bitmap(2000);
  pq.hashes_known = p2p::Bitmap(2000);
  p2p::AnnounceReq a;
  a.peer = "p1";
  a.task = pq.task;
  a.length = pq.length;
  a.piece_size = pq.piece_size;
  a.have = p2p::Bitmap(2000);
  for (uint32_t i = 0; i < 2000; ++i) {
    task::Sha256 h{};
    h.fill(static_cast<uint8_t>(i));
    a.hashes[i] = h;
  }
  send_all(fd, request("POST", "/v1/announce", p2p::encode(a), &nonce));
  // Each parents answer carries 2000 hashes (about 150 KB).
  const size_t n = 40;
  std::string all;
  for (size_t i = 0; i < n; ++i) all += request("POST", "/v1/parents", p2p::encode(pq), &nonce);
  std::thread writer([&] { send_all(fd, all); });
  usleep(200 * 1000);
  rd.read(fd, 2 + n);
  writer.join();
  assert_int_equal(rd.got.size(), 2 + n);
  for (const auto& r : rd.got) assert_int_equal(r.status, 200);
  assert_true(rd.got.back().body.size() > 100000);
  close(fd);
  rig.finish();
}

}  // namespace

int run_server_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_signed_register), cmocka_unit_test(test_unsigned_and_forged),
      cmocka_unit_test(test_replay),          cmocka_unit_test(test_pipelined_in_order),
      cmocka_unit_test(test_errors),          cmocka_unit_test(test_timeouts),
      cmocka_unit_test(test_backpressure),
  };
  return cmocka_run_group_tests_name("scheduler_server", tests, nullptr, nullptr);
}

}  // namespace shoal::scheduler::test
