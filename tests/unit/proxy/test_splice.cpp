// Unit tests for Splice (userspace/proxy/splice.*): real TCP connections on
// 127.0.0.1, the test playing the client and the origin on their far ends.
// Bytes both ways at once arrive intact and in order; a half-close reaches
// the other side as EOF after every byte and both ends finishing is a clean
// done; a reset end is a failed done naming it; close() frees it (no handle
// left on the loop); start() on a bad fd fails and leaves nothing open.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "../../../userspace/proxy/splice.h"

// Last: cmocka.h defines macros (fail, skip) that clash with C++ names.
#include "../cmocka_cpp.h"

namespace {

using shoal::proxy::Splice;

// A connected pair of TCP sockets on loopback: *near is what the proxy would
// hold (non-blocking, as libuv leaves it), *far the other end (the test's).
void tcp_pair(int* near, int* far) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(l >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  assert_int_equal(listen(l, 1), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
  *far = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_int_equal(connect(*far, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  *near = accept4(l, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  assert_true(*near >= 0);
  close(l);
  int fl = fcntl(*far, F_GETFL);
  fcntl(*far, F_SETFL, fl | O_NONBLOCK);
}

std::string pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

struct End {
  End(int f, std::string o) : fd(f), out(std::move(o)) {}
  int fd;
  std::string out;  // to send
  size_t sent = 0;
  bool shut_after = false, shut = false;
  std::string in;  // received
  bool eof = false;
  // Moves what it can without blocking.
  void step() {
    while (sent < out.size()) {
      ssize_t n = send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    if (sent == out.size() && shut_after && !shut) {
      shutdown(fd, SHUT_WR);
      shut = true;
    }
    char buf[65536];
    while (!eof) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        in.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        eof = true;
      } else {
        break;
      }
    }
  }
};

struct Seen {
  size_t moved[2] = {0, 0};
  int done = 0;
  bool ok = false;
  std::string why;
  int closed = 0;
};

Splice::Events events(Seen* s) {
  Splice::Events ev;
  ev.moved = [s](int dir, size_t n) { s->moved[dir] += n; };
  ev.done = [s](bool ok, const std::string& why) {
    s->done++;
    s->ok = ok;
    s->why = why;
  };
  ev.closed = [s] { s->closed++; };
  return ev;
}

// Runs the loop and both far ends until pred() or ~10 s.
template <typename Pred>
bool run_until(uv_loop_t* loop, End* a, End* b, Pred pred) {
  for (int i = 0; i < 100000 && !pred(); ++i) {
    a->step();
    b->step();
    uv_run(loop, UV_RUN_NOWAIT);
    if (i > 1000) usleep(50);  // past the burst, do not spin
  }
  return pred();
}

// A loop and two loopback TCP pairs with a Splice between their near ends
// (as a Conn would have it: client side a, origin side b).
struct Rig {
  uv_loop_t loop;
  int a_near = -1, a_far = -1, b_near = -1, b_far = -1;
  Seen seen;
  Splice* sp = nullptr;
  Rig() {
    uv_loop_init(&loop);
    tcp_pair(&a_near, &a_far);
    tcp_pair(&b_near, &b_far);
    std::string err;
    sp = Splice::start(&loop, a_near, b_near, events(&seen), &err);
    assert_non_null(sp);
  }
  // Closes the Splice and checks it frees itself and leaves no handle.
  void finish() {
    sp->close();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(seen.closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (int fd : {a_near, a_far, b_near, b_far})
      if (fd >= 0) close(fd);
  }
};

void test_both_ways_and_half_close(void**) {
  Rig r;
  // The proxy's own fds stay its own: Splice works on dups.
  close(r.a_near);
  close(r.b_near);
  r.a_near = r.b_near = -1;
  End a{r.a_far, pattern(6u << 20, 1)}, b{r.b_far, pattern(5u << 20, 2)};
  a.shut_after = true;  // the client half-closes after its bytes
  assert_true(run_until(&r.loop, &a, &b, [&] { return b.eof; }));
  assert_true(b.in == a.out);        // every byte before the EOF
  assert_int_equal(r.seen.done, 0);  // the other way still runs
  b.shut_after = true;
  assert_true(run_until(&r.loop, &a, &b, [&] { return a.eof && r.seen.done > 0; }));
  assert_true(a.in == b.out);
  assert_int_equal(r.seen.done, 1);
  assert_true(r.seen.ok);
  assert_int_equal(r.seen.moved[0], a.out.size());
  assert_int_equal(r.seen.moved[1], b.out.size());
  assert_int_equal(r.sp->moved(0), a.out.size());
  r.finish();
}

void test_reset_fails(void**) {
  Rig r;
  End a{r.a_far, pattern(64u << 20, 3)}, b{r.b_far, ""};
  // The origin resets after a little: the client's upload cannot go on.
  assert_true(run_until(&r.loop, &a, &b, [&] { return b.in.size() > (1u << 20); }));
  linger lg{1, 0};
  setsockopt(r.b_far, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(r.b_far);
  r.b_far = b.fd = -1;
  close(r.b_near);  // the proxy's own fd too: only Splice's dup holds it now
  r.b_near = -1;
  assert_true(run_until(&r.loop, &a, &b, [&] { return r.seen.done > 0; }));
  assert_int_equal(r.seen.done, 1);
  assert_false(r.seen.ok);
  assert_true(r.seen.why.find("origin") != std::string::npos);
  r.finish();
}

void test_close_while_idle_and_bad_start(void**) {
  Rig r;
  uv_run(&r.loop, UV_RUN_NOWAIT);
  Seen bad;
  std::string err;
  assert_null(Splice::start(&r.loop, r.a_near, -1, events(&bad), &err));
  assert_false(err.empty());
  r.finish();  // closed while idle: nothing moved, nothing reported
  assert_int_equal(r.seen.done, 0);
  assert_int_equal(bad.closed, 0);  // a failed start reports nothing
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_both_ways_and_half_close),
      cmocka_unit_test(test_reset_fails),
      cmocka_unit_test(test_close_while_idle_and_bad_start),
  };
  return cmocka_run_group_tests_name("proxy", tests, nullptr, nullptr);
}
