// HttpCall over a LinkPool on a real loop: requests after the first to an
// address reuse the connection (plain and TLS, against the real upload
// server); a connection the server closed while idle, or just as a request
// reached it, costs no failed call; one the server answered "Connection:
// close" on, or that died in mid-answer, is never reused; idle connections
// expire; a cancelled call closes its connection. The scripted server below
// fakes what the upload server never does on purpose (closing in the middle
// of things).
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../cmocka_cpp.h"
#include "piece_file.h"
#include "shoal/http/http.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/http_call.h"
#include "shoal/p2p/peer_tls.h"
#include "shoal/p2p/upload_server.h"

namespace {

using shoal::p2p::CallResult;
using shoal::p2p::HttpCall;
using shoal::p2p::LinkPool;
using shoal::p2p::PeerTls;
using shoal::p2p::PieceRef;
using shoal::p2p::PieceSource;
using shoal::p2p::Signer;
using shoal::p2p::UploadServer;
using shoal::p2p::Verifier;

const char kSecret[] = "0123456789abcdef-http-call-secret";
const std::string kTask(64, 'c');
constexpr uint32_t kPiece = 300000;

PieceFile g_file;

class FileSource : public PieceSource {
 public:
  bool open_piece(const std::string& task_id, uint32_t index, PieceRef* out) override {
    if (task_id != kTask || index > 1) return false;
    out->fd = g_file.fd;
    out->offset = uint64_t{index} * kPiece;
    out->length = kPiece;
    out->token = ++opens;
    return true;
  }
  void release_piece(const PieceRef&) override { releases++; }
  int opens = 0, releases = 0;
};

// A keep-alive piece request (no "Connection: close"), signed afresh.
std::string piece_request(uint32_t index) {
  std::string path = "/v1/tasks/" + kTask + "/pieces/" + std::to_string(index);
  auto hs = Signer(kSecret).sign("GET", path, "", time(nullptr), nullptr);
  hs.push_back({"Host", "peer"});
  return shoal::http::serialize_request_head("GET", path, hs);
}

// Fails the test instead of hanging it.
struct Guard {
  explicit Guard(uv_loop_t* loop) {
    uv_timer_init(loop, &t);
    uv_timer_start(
        &t, [](uv_timer_t*) { fail_msg("the loop did not finish within 10 s"); }, 10000, 0);
    uv_unref(reinterpret_cast<uv_handle_t*>(&t));
  }
  void close() { uv_close(reinterpret_cast<uv_handle_t*>(&t), nullptr); }
  uv_timer_t t{};
};

// The real upload server, a pool, and calls made one after another: each
// next call starts from the previous one's done callback, as a peer asking
// its parent for the next piece does.
struct UploadRig {
  explicit UploadRig(bool tls_on) : verifier(kSecret), guard((uv_loop_init(&loop), &loop)) {
    std::string err;
    tls = PeerTls::create(kSecret, &err);
    assert_non_null(tls.get());
    UploadServer::Options o;
    if (tls_on) o.tls = tls->server();
    server = std::make_unique<UploadServer>(&loop, &source, &verifier, o);
    assert_int_equal(server->listen("127.0.0.1", 0, &err), 0);
    addr = "127.0.0.1:" + std::to_string(server->port());
    pool = std::make_unique<LinkPool>(&loop, LinkPool::Options{});
    cfg = tls_on ? tls->client() : nullptr;
  }
  void chain(int n) {
    if (n == 0) {
      opened = pool->opened();
      reused = pool->reused();
      pool->close([this] { server->close([this] { guard.close(); }); });
      return;
    }
    uint32_t index = static_cast<uint32_t>(n % 2);
    HttpCall::start(
        &loop, addr, piece_request(index), kPiece, 5000, 0,
        [this, n, index](CallResult& r) {
          if (r.error != 0) fail_msg("call %d: %s", n, r.why.c_str());
          assert_int_equal(r.status, 200);
          assert_true(r.body == g_file.data.substr(index * kPiece, kPiece));
          ++done;
          chain(n - 1);
        },
        cfg, pool.get());
  }
  void run() {
    uv_run(&loop, UV_RUN_DEFAULT);
    pool.reset();
    server.reset();
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(source.opens, source.releases);
  }
  uv_loop_t loop{};
  FileSource source;
  Verifier verifier;
  Guard guard;
  std::unique_ptr<PeerTls> tls;
  std::unique_ptr<UploadServer> server;
  std::unique_ptr<LinkPool> pool;
  shoal::tls::ClientConfig* cfg = nullptr;
  std::string addr;
  int done = 0;
  uint64_t opened = 0, reused = 0;
};

void test_pieces_reuse_one_connection(void**) {
  for (bool tls_on : {false, true}) {
    UploadRig rig(tls_on);
    rig.chain(5);
    rig.run();
    assert_int_equal(rig.done, 5);
    assert_int_equal(rig.opened, 1);
    assert_int_equal(rig.reused, 4);
  }
}

// --- a scripted server ----------------------------------------------------------------

// Answers each request (a head without a body) with what script(conn, req)
// returns; close_after closes the connection once that is written, and an
// empty answer with close_after closes without a word. hold: the answer
// is withheld (the request waits forever).
struct Scripted {
  struct Step {
    std::string answer;
    bool close_after = false;
    bool hold = false;
  };
  using Script = std::function<Step(int conn, int req)>;

  struct Conn {
    uv_tcp_t tcp{};
    Scripted* s = nullptr;
    int index = 0, reqs = 0;
    std::string in;
    bool closing = false;
  };

  Scripted(uv_loop_t* l, Script sc) : loop(l), script(std::move(sc)) {
    uv_tcp_init(loop, &listener);
    listener.data = this;
    sockaddr_in sa{};
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&listener, reinterpret_cast<sockaddr*>(&sa), 0), 0);
    assert_int_equal(uv_listen(reinterpret_cast<uv_stream_t*>(&listener), 16, on_conn), 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&sa), &len);
    addr = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  }
  static void on_conn(uv_stream_t* l, int status) {
    assert_int_equal(status, 0);
    auto* s = static_cast<Scripted*>(l->data);
    auto* c = new Conn;
    c->s = s;
    c->index = s->conns++;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, reinterpret_cast<uv_stream_t*>(&c->tcp)), 0);
    s->open.push_back(c);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t*, size_t, uv_buf_t* b) {
          static char buf[4096];
          *b = uv_buf_init(buf, sizeof buf);
        },
        on_read);
  }
  static void on_read(uv_stream_t* st, ssize_t n, const uv_buf_t* b) {
    auto* c = static_cast<Conn*>(st->data);
    if (n < 0) return close_conn(c);
    c->in.append(b->base, static_cast<size_t>(n));
    size_t end;
    while (!c->closing && (end = c->in.find("\r\n\r\n")) != std::string::npos) {
      c->in.erase(0, end + 4);
      Step step = c->s->script(c->index, c->reqs++);
      if (step.hold) continue;
      if (!step.answer.empty()) {
        auto* w = new uv_write_t;
        auto* bytes = new std::string(step.answer);
        w->data = bytes;
        uv_buf_t wb = uv_buf_init(bytes->data(), static_cast<unsigned>(bytes->size()));
        uv_write(w, st, &wb, 1, [](uv_write_t* req, int) {
          delete static_cast<std::string*>(req->data);
          delete req;
        });
      }
      if (step.close_after) close_conn(c);
    }
  }
  static void close_conn(Conn* c) {
    if (c->closing) return;
    c->closing = true;
    auto& v = c->s->open;
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] == c) v.erase(v.begin() + static_cast<long>(i));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
             [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
  }
  void close() {
    while (!open.empty()) close_conn(open.back());
    uv_close(reinterpret_cast<uv_handle_t*>(&listener), nullptr);
  }

  uv_loop_t* loop;
  Script script;
  uv_tcp_t listener{};
  std::string addr;
  std::vector<Conn*> open;
  int conns = 0;
};

std::string ok(const std::string& body, bool close = false) {
  return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         (close ? "Connection: close\r\n" : "") + "\r\n" + body;
}

// Two calls, the second started from the first's done callback (or after
// gap_ms), against a scripted server; returns both results.
struct TwoCalls {
  TwoCalls(Scripted::Script script, uint64_t gap_ms = 0, LinkPool::Options po = {})
      : guard((uv_loop_init(&loop), &loop)) {
    server = std::make_unique<Scripted>(&loop, std::move(script));
    pool = std::make_unique<LinkPool>(&loop, po);
    uv_timer_init(&loop, &gap);
    gap.data = this;
    start(0, [this, gap_ms] {
      idle_after_first = pool->idle();
      if (gap_ms == 0) return second();
      uv_timer_start(
          &gap, [](uv_timer_t* t) { static_cast<TwoCalls*>(t->data)->second(); }, gap_ms, 0);
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
  }
  void second() {
    idle_before_second = pool->idle();
    start(1, [this] {
      opened = pool->opened();
      reused = pool->reused();
      pool->close([this] {
        server->close();
        uv_close(reinterpret_cast<uv_handle_t*>(&gap), nullptr);
        guard.close();
      });
    });
  }
  void start(int i, std::function<void()> next) {
    HttpCall::start(
        &loop, server->addr, "GET /x HTTP/1.1\r\nHost: s\r\n\r\n", 1 << 20, 3000, 0,
        [this, i, next](CallResult& r) {
          res[i] = r;
          next();
        },
        nullptr, pool.get());
  }
  uv_loop_t loop{};
  Guard guard;
  uv_timer_t gap{};
  std::unique_ptr<Scripted> server;
  std::unique_ptr<LinkPool> pool;
  CallResult res[2];
  size_t idle_after_first = 0, idle_before_second = 0;
  uint64_t opened = 0, reused = 0;
};

// The server closes the kept-alive connection just as the second request
// reaches it (its idle timeout firing then): the request goes again on a
// new connection, and the caller never hears of it.
void test_closed_on_arrival_is_retried(void**) {
  TwoCalls t([](int conn, int req) {
    if (conn == 0 && req == 1) return Scripted::Step{"", true};
    return Scripted::Step{ok("conn" + std::to_string(conn))};
  });
  assert_int_equal(t.res[0].error, 0);
  assert_string_equal(t.res[0].body.c_str(), "conn0");
  if (t.res[1].error != 0) fail_msg("second call: %s", t.res[1].why.c_str());
  assert_string_equal(t.res[1].body.c_str(), "conn1");
  assert_int_equal(t.opened, 2);
  assert_int_equal(t.reused, 1);
}

// An answer that had begun is never sent again: the call fails.
void test_no_retry_once_answered(void**) {
  TwoCalls t([](int, int req) {
    if (req == 1) return Scripted::Step{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true};
    return Scripted::Step{ok("first")};
  });
  assert_int_equal(t.res[0].error, 0);
  assert_int_equal(t.res[1].error, UV_EPROTO);
  // The body holds what came, not the length the answer announced.
  assert_true(t.res[1].body == "abc");
  assert_int_equal(t.opened, 1);
  assert_int_equal(t.reused, 1);
}

// "Connection: close", and an answer delimited by the close: neither
// connection goes back to the pool.
void test_close_answers_not_kept(void**) {
  TwoCalls a([](int conn, int) { return Scripted::Step{ok("c" + std::to_string(conn), true), true}; });
  assert_int_equal(a.res[0].error, 0);
  assert_int_equal(a.res[1].error, 0);
  assert_string_equal(a.res[1].body.c_str(), "c1");
  assert_int_equal(a.idle_after_first, 0);
  assert_int_equal(a.opened, 2);
  assert_int_equal(a.reused, 0);

  TwoCalls b([](int, int) { return Scripted::Step{"HTTP/1.1 200 OK\r\n\r\nuntil-close", true}; });
  assert_int_equal(b.res[0].error, 0);
  assert_string_equal(b.res[0].body.c_str(), "until-close");
  assert_int_equal(b.opened, 2);
  assert_int_equal(b.reused, 0);
}

// Bytes after the answer: the connection is not trusted with another.
void test_trailing_bytes_not_kept(void**) {
  TwoCalls t([](int, int) { return Scripted::Step{ok("x") + "HTTP/1.1 200 OK\r\n"}; });
  assert_int_equal(t.res[0].error, 0);
  assert_string_equal(t.res[0].body.c_str(), "x");
  assert_int_equal(t.idle_after_first, 0);
  assert_int_equal(t.opened, 2);
}

// The server closes an idle connection: the pool drops it on the EOF, and
// the next call connects anew (no retry needed).
void test_idle_close_dropped(void**) {
  TwoCalls t(
      [](int conn, int) {
        // Answer, then close the connection right away (as after its idle timeout).
        return Scripted::Step{ok("c" + std::to_string(conn)), true};
      },
      100);
  assert_int_equal(t.idle_after_first, 1);  // kept: its answer said keep-alive
  assert_int_equal(t.idle_before_second, 0);
  assert_int_equal(t.res[1].error, 0);
  assert_string_equal(t.res[1].body.c_str(), "c1");
  assert_int_equal(t.opened, 2);
  assert_int_equal(t.reused, 0);
}

// Idle longer than idle_ms: closed by the pool.
void test_idle_expiry(void**) {
  LinkPool::Options po;
  po.idle_ms = 40;
  TwoCalls t([](int conn, int) { return Scripted::Step{ok("c" + std::to_string(conn))}; }, 200, po);
  assert_int_equal(t.idle_after_first, 1);
  assert_int_equal(t.idle_before_second, 0);
  assert_int_equal(t.opened, 2);
  assert_int_equal(t.reused, 0);
}

// At most per_address idle connections per address.
void test_per_address_cap(void**) {
  uv_loop_t loop{};
  Guard guard((uv_loop_init(&loop), &loop));
  Scripted server(&loop, [](int, int) { return Scripted::Step{ok("y")}; });
  LinkPool::Options po;
  po.per_address = 2;
  LinkPool pool(&loop, po);
  int left = 5;
  size_t idle_max = 0;
  for (int i = 0; i < 5; ++i)
    HttpCall::start(
        &loop, server.addr, "GET / HTTP/1.1\r\nHost: s\r\n\r\n", 100, 3000, 0,
        [&](CallResult& r) {
          assert_int_equal(r.error, 0);
          idle_max = std::max(idle_max, pool.idle());
          if (--left == 0)
            pool.close([&] {
              server.close();
              guard.close();
            });
        },
        nullptr, &pool);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(pool.opened(), 5);  // all at once: nothing idle to take
  assert_int_equal(idle_max, 2);
  assert_int_equal(uv_loop_close(&loop), 0);
}

// A cancelled call's connection is closed, never pooled; the pool closes
// with nothing left behind.
void test_cancel_closes(void**) {
  uv_loop_t loop{};
  Guard guard((uv_loop_init(&loop), &loop));
  Scripted server(&loop, [](int, int) { return Scripted::Step{"", false, true}; });
  LinkPool pool(&loop, LinkPool::Options{});
  bool called = false;
  HttpCall* c = HttpCall::start(
      &loop, server.addr, "GET / HTTP/1.1\r\nHost: s\r\n\r\n", 100, 3000, 0,
      [&](CallResult&) { called = true; }, nullptr, &pool);
  uv_timer_t t{};
  uv_timer_init(&loop, &t);
  struct Ctx {
    HttpCall* c;
    LinkPool* pool;
    Scripted* server;
    Guard* guard;
    size_t idle_after = 99;
  } ctx{c, &pool, &server, &guard};
  t.data = &ctx;
  uv_timer_start(
      &t,
      [](uv_timer_t* tt) {
        auto* x = static_cast<Ctx*>(tt->data);
        x->c->cancel();
        x->idle_after = x->pool->idle();
        x->pool->close([x] {
          x->server->close();
          x->guard->close();
        });
        uv_close(reinterpret_cast<uv_handle_t*>(tt), nullptr);
      },
      50, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_false(called);
  assert_int_equal(ctx.idle_after, 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int setup(void**) { return g_file.make("http-call", 2 * kPiece); }

int teardown(void**) {
  g_file.remove();
  return 0;
}

}  // namespace

int run_http_call_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pieces_reuse_one_connection),
      cmocka_unit_test(test_closed_on_arrival_is_retried),
      cmocka_unit_test(test_no_retry_once_answered),
      cmocka_unit_test(test_close_answers_not_kept),
      cmocka_unit_test(test_trailing_bytes_not_kept),
      cmocka_unit_test(test_idle_close_dropped),
      cmocka_unit_test(test_idle_expiry),
      cmocka_unit_test(test_per_address_cap),
      cmocka_unit_test(test_cancel_closes),
  };
  return cmocka_run_group_tests_name("p2p http call", tests, setup, teardown);
}
