// The eBPF backend against the running kernel (root only): a test cgroup
// under the cgroup2 mount, the real object loaded and attached, listeners on
// 127.0.0.1:L and [::1]:L, and children that join the cgroup and connect.
//
// Addresses: 127.0.0.2:P and [::1]:P, where P is a port this process holds
// bound without listening, so a connect that is not redirected is refused
// (ECONNREFUSED) and one that is reaches the listener. Only 127.0.0.0/8 and
// ::1 are used. Every child is killed and reaped by PID, every cgroup removed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../cmocka_cpp.h"
#include "redirect_test.h"
#include "shoal/redirect/redirect.h"
#include "shoal/util/sockaddr.h"

namespace shoal::redirect::test {

namespace {

constexpr int kWaitMs = 10000;  // hang guard only; nothing here is timed

struct Env {
  std::string skip_reason;  // set when this kernel/host cannot run the tests
  std::string setup_error;  // set when setup failed on a host that should work
  std::string mount;        // cgroup2 mount
  std::string cg;           // test cgroup (absolute)
  uint64_t cg_id = 0;
  uint16_t port = 0;        // P: redirected, held bound, nothing listens
  uint16_t other_port = 0;  // not redirected, held bound, nothing listens
  uint16_t listen_port = 0;
  int hold_p = -1, hold_other = -1;  // the sockets holding P and other_port
  int l4 = -1, l6 = -1;              // listeners 127.0.0.1:L, [::1]:L
  Options opt;
  std::unique_ptr<Backend> be;
  std::vector<pid_t> children;  // alive or unreaped
  std::vector<std::string> extra_cgroups;
};
Env g;

// What a child did, sent back through a pipe.
struct Report {
  int rc[8];
  int err[8];
  sockaddr_storage peer;         // getpeername of the connected socket
  sockaddr_storage local;        // getsockname of the connected socket
  sockaddr_storage first_local;  // with ConnectOpts::reconnect_to: the first connection's local address
};

// --- addresses ---------------------------------------------------------------

sockaddr_storage v4(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  inet_pton(AF_INET, ip, &sin.sin_addr);
  std::memcpy(&ss, &sin, sizeof sin);
  return ss;
}

sockaddr_storage v6(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &sin6.sin6_addr);
  std::memcpy(&ss, &sin6, sizeof sin6);
  return ss;
}

socklen_t len_of(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

const sockaddr* sa(const sockaddr_storage& ss) { return reinterpret_cast<const sockaddr*>(&ss); }
sockaddr* sa(sockaddr_storage* ss) { return reinterpret_cast<sockaddr*>(ss); }

// Asserts a == b as printable addresses (family, address, port).
void assert_addr(const sockaddr_storage& got, const sockaddr_storage& want) {
  if (util::sockaddr_str(got) != util::sockaddr_str(want)) {
    print_error("address: got %s, want %s\n", util::sockaddr_str(got).c_str(),
                util::sockaddr_str(want).c_str());
    fail();
  }
}

// ss with an IPv4-mapped IPv6 address turned into AF_INET.
sockaddr_storage unmapped(const sockaddr_storage& ss) {
  if (ss.ss_family != AF_INET6) return ss;
  sockaddr_in6 sin6;
  std::memcpy(&sin6, &ss, sizeof sin6);
  if (!IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) return ss;
  sockaddr_storage out{};
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = sin6.sin6_port;
  std::memcpy(&sin.sin_addr, &sin6.sin6_addr.s6_addr[12], 4);
  std::memcpy(&out, &sin, sizeof sin);
  return out;
}

// --- setup helpers -------------------------------------------------------------

bool write_file(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = write(fd, text.data(), text.size());
  close(fd);
  return n == static_cast<ssize_t>(text.size());
}

// A TCP socket on [::]:0, dual-stack, bound but not listening: it holds a
// port on v4 and v6 so nothing else listens there. Returns the fd.
int hold_port(uint16_t* port) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int off = 0;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  sockaddr_storage any = v6("::", 0);
  socklen_t len = sizeof any;
  if (bind(fd, sa(any), len_of(any)) != 0 || getsockname(fd, sa(&any), &len) != 0) {
    close(fd);
    return -1;
  }
  sockaddr_in6 sin6;
  std::memcpy(&sin6, &any, sizeof sin6);
  *port = ntohs(sin6.sin6_port);
  return fd;
}

int listen_on(const sockaddr_storage& addr) {
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  if (addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, sa(addr), len_of(addr)) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// 127.0.0.1:L and [::1]:L on one free port L.
bool make_listeners() {
  for (int attempt = 0; attempt < 50; attempt++) {
    int l4 = listen_on(v4("127.0.0.1", 0));
    if (l4 < 0) return false;
    sockaddr_storage got{};
    socklen_t len = sizeof got;
    getsockname(l4, sa(&got), &len);
    sockaddr_in sin;
    std::memcpy(&sin, &got, sizeof sin);
    uint16_t port = ntohs(sin.sin_port);
    int l6 = listen_on(v6("::1", port));
    if (l6 >= 0) {
      g.l4 = l4;
      g.l6 = l6;
      g.listen_port = port;
      return true;
    }
    close(l4);
  }
  return false;
}

bool kernel_at_least(int major, int minor) {
  utsname u{};
  if (uname(&u) != 0) return false;
  int ma = 0, mi = 0;
  if (std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
  return ma > major || (ma == major && mi >= minor);
}

// The process's PID as the kernel's initial PID namespace sees it is what the
// hooks record; from inside a nested PID namespace it cannot be checked.
bool in_initial_pid_ns() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return false;
  char line[256];
  bool nested = false;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "NSpid:", 6) == 0)
      nested = std::strchr(line + 6, '\t') != std::strrchr(line, '\t');
  }
  std::fclose(f);
  return !nested;
}

bool remove_cgroup(const std::string& dir) {
  // The cgroup empties when its last task exits; a reaped child is gone, but
  // allow the kernel a moment to finish releasing it.
  for (int i = 0; i < 200; i++) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != EBUSY) return false;
    usleep(10000);
  }
  return false;
}

// --- children -------------------------------------------------------------------

void reap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  for (auto it = g.children.begin(); it != g.children.end(); ++it) {
    if (*it == pid) {
      g.children.erase(it);
      break;
    }
  }
}

void reap_all() {
  while (!g.children.empty()) reap(g.children.back());
}

// Runs fn in a child process that first joins cgroup (unless it is ""), and
// returns the Report it filled. Fails the test if the child cannot report.
// linger: the child stays alive (its sockets open) after reporting, until
// reap(*linger) kills it: the eBPF backend finds a redirected client's
// destination on the client's socket, so it must still exist when the test
// looks.
Report run_child(const std::string& cgroup, const std::function<void(Report*)>& fn, pid_t* linger = nullptr) {
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(p[0]);
    Report r{};
    if (!cgroup.empty() && !write_file(cgroup + "/cgroup.procs", std::to_string(getpid()))) _exit(2);
    fn(&r);
    ssize_t n = write(p[1], &r, sizeof r);
    if (linger != nullptr)
      for (;;) pause();
    _exit(n == static_cast<ssize_t>(sizeof r) ? 0 : 3);
  }
  g.children.push_back(pid);
  close(p[1]);
  Report r{};
  size_t got = 0;
  while (got < sizeof r) {
    pollfd pfd{p[0], POLLIN, 0};
    if (poll(&pfd, 1, kWaitMs) != 1) break;
    ssize_t n = read(p[0], reinterpret_cast<char*>(&r) + got, sizeof r - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  close(p[0]);
  int status = 0;
  if (linger != nullptr && got == sizeof r) {
    *linger = pid;
    return r;
  }
  waitpid(pid, &status, 0);
  for (auto it = g.children.begin(); it != g.children.end(); ++it) {
    if (*it == pid) {
      g.children.erase(it);
      break;
    }
  }
  if (got != sizeof r) {
    print_error("child %d did not report (status 0x%x)\n", static_cast<int>(pid), status);
    fail();
  }
  return r;
}

// In a child: TCP connect to dst from a socket of family fam, record rc/errno
// in slot 0 and the socket's peer and local addresses. Optionally sets SO_MARK
// or moves to a new network namespace first.
struct ConnectOpts {
  int family = AF_INET;
  uint32_t mark = 0;
  bool new_netns = false;
  const char* bind_dev = nullptr;  // SO_BINDTODEVICE
  // If set: after the first connect, disconnect (AF_UNSPEC) and connect the
  // same socket here (rc/errno in slots 1 and 2); peer/local are then the
  // second connection's, first_local the first's.
  const sockaddr_storage* reconnect_to = nullptr;
};

std::function<void(Report*)> tcp_connect(const sockaddr_storage& dst, ConnectOpts o = {}) {
  return [dst, o](Report* r) {
    if (o.new_netns && unshare(CLONE_NEWNET) != 0) {
      r->rc[7] = -1;
      r->err[7] = errno;
      return;
    }
    int fd = socket(o.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (o.family == AF_INET6) {
      int off = 0;
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    }
    if ((o.mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &o.mark, sizeof o.mark) != 0) ||
        (o.bind_dev != nullptr && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, o.bind_dev,
                                             static_cast<socklen_t>(std::strlen(o.bind_dev))) != 0)) {
      r->rc[7] = -1;
      r->err[7] = errno;
      return;
    }
    r->rc[0] = connect(fd, sa(dst), len_of(dst));
    r->err[0] = r->rc[0] == 0 ? 0 : errno;
    if (o.reconnect_to != nullptr) {
      socklen_t flen = sizeof r->first_local;
      getsockname(fd, sa(&r->first_local), &flen);
      sockaddr unspec{};
      unspec.sa_family = AF_UNSPEC;
      r->rc[1] = connect(fd, &unspec, sizeof unspec);
      r->err[1] = r->rc[1] == 0 ? 0 : errno;
      r->rc[2] = connect(fd, sa(*o.reconnect_to), len_of(*o.reconnect_to));
      r->err[2] = r->rc[2] == 0 ? 0 : errno;
    }
    socklen_t len = sizeof r->peer;
    getpeername(fd, sa(&r->peer), &len);
    len = sizeof r->local;
    getsockname(fd, sa(&r->local), &len);
    close(fd);
  };
}

// Connects from cgroup ("" = outside any test cgroup) and checks the connect
// went direct: nothing listens at dst, so it is refused. A failed socket
// option (slot 7) fails the test with its name.
Report expect_direct(const std::string& cgroup, const sockaddr_storage& dst, ConnectOpts o = {}) {
  Report r = run_child(cgroup, tcp_connect(dst, o));
  if (r.rc[7] != 0) {
    print_error("socket option before connect: %s\n", std::strerror(r.err[7]));
    fail();
  }
  assert_int_equal(r.rc[0], -1);
  assert_int_equal(r.err[0], ECONNREFUSED);
  return r;
}

// One UDP datagram to dst from cgroup (bound to dev when given); returns
// sendto's result, with its errno in *err.
int udp_send(const std::string& cgroup, const sockaddr_storage& dst, const char* dev = nullptr,
             int* err = nullptr) {
  Report r = run_child(cgroup, [dst, dev](Report* rep) {
    int fd = socket(dst.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (dev != nullptr)
      setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, static_cast<socklen_t>(std::strlen(dev)));
    rep->rc[0] = static_cast<int>(sendto(fd, "x", 1, 0, sa(dst), len_of(dst)));
    rep->err[0] = errno;
    close(fd);
  });
  if (err != nullptr) *err = r.err[0];
  return r.rc[0];
}

// Accepts one connection on listener (waiting at most kWaitMs); returns the
// fd and its peer, or -1.
int accept_one(int listener, sockaddr_storage* peer) {
  pollfd pfd{listener, POLLIN, 0};
  if (poll(&pfd, 1, kWaitMs) != 1) return -1;
  socklen_t len = sizeof *peer;
  return accept4(listener, sa(peer), &len, SOCK_CLOEXEC);
}

// True when a connection is waiting on listener right now.
bool pending(int listener) {
  pollfd pfd{listener, POLLIN, 0};
  return poll(&pfd, 1, 0) == 1;
}

void require_env() {
  if (!g.skip_reason.empty()) {
    print_message("[ SKIPPED  ] %s\n", g.skip_reason.c_str());
    skip();
  }
  if (!g.setup_error.empty()) {
    static bool printed = false;
    print_error("setup: %s\n", printed ? "failed (see above)" : g.setup_error.c_str());
    printed = true;
    fail();
  }
  // Whatever an earlier failed test left behind must not leak into this one.
  reap_all();
  for (int l : {g.l4, g.l6}) {
    while (pending(l)) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      int fd = accept4(l, sa(&peer), &len, SOCK_CLOEXEC);
      if (fd < 0) break;
      OriginalDst od;
      std::string err;
      g.be->original_dst(fd, peer, &od, &err);
      close(fd);
    }
  }
}

Stats stats() { return g.be->stats(); }

void assert_stats_delta(const Stats& before, uint64_t redirected, uint64_t skipped, uint64_t blocked) {
  Stats now = stats();
  assert_int_equal(now.redirected - before.redirected, redirected);
  assert_int_equal(now.skipped - before.skipped, skipped);
  assert_int_equal(now.blocked - before.blocked, blocked);
}

// A child in the test cgroup connects to dst (socket family fam); the
// connection must arrive on listener with original_dst() == want_orig and the
// child's getpeername() == want_peer.
void check_redirect(const sockaddr_storage& dst, int fam, int listener, const sockaddr_storage& want_orig,
                    const sockaddr_storage& want_peer) {
  Stats before = stats();
  ConnectOpts o;
  o.family = fam;
  pid_t child = -1;
  Report r = run_child(g.cg, tcp_connect(dst, o), &child);
  if (r.rc[0] != 0) {
    print_error("connect %s from the cgroup: %s\n", util::sockaddr_str(dst).c_str(), std::strerror(r.err[0]));
    fail();
  }
  sockaddr_storage peer{};
  int fd = accept_one(listener, &peer);
  assert_true(fd >= 0);
  assert_addr(peer, unmapped(r.local));  // the accepted connection is the child's

  OriginalDst od;
  std::string err;
  if (!g.be->original_dst(fd, peer, &od, &err)) {
    print_error("original_dst(%s): %s\n", util::sockaddr_str(peer).c_str(), err.c_str());
    fail();
  }
  assert_addr(od.addr, want_orig);
  assert_int_equal(od.cgroup_id, g.cg_id);
  assert_true(od.tgid != 0);
  // Asked again for the same connection: the same answer.
  OriginalDst again;
  assert_true(g.be->original_dst(fd, peer, &again, &err));
  assert_addr(again.addr, want_orig);
  close(fd);
  reap(child);

  assert_addr(r.peer, want_peer);
  assert_stats_delta(before, 1, 0, 0);
}

// --- tests --------------------------------------------------------------------------

void test_attached(void**) {
  require_env();
  std::vector<std::string> a = g.be->attached();
  assert_int_equal(a.size(), 1);
  assert_string_equal(a[0].c_str(), g.cg.c_str());
  std::string err;
  // Attaching again (absolute or relative to the mount) is not an error and
  // adds nothing.
  assert_true(g.be->attach(g.cg, &err));
  assert_true(g.be->attach(g.cg.substr(g.mount.size() + 1), &err));
  assert_int_equal(g.be->attached().size(), 1);
  // A missing cgroup: the error names it.
  const std::string missing = g.mount + "/shoal-no-such-cgroup";
  assert_false(g.be->attach(missing, &err));
  assert_non_null(std::strstr(err.c_str(), "shoal-no-such-cgroup"));
  assert_false(g.be->detach(missing, &err));
  assert_int_equal(g.be->attached().size(), 1);
}

void test_tcp4_redirected(void**) {
  require_env();
  check_redirect(v4("127.0.0.2", g.port), AF_INET, g.l4, v4("127.0.0.2", g.port), v4("127.0.0.2", g.port));
}

// The tgid recorded is the connecting process's.
void test_tgid(void**) {
  require_env();
  if (!in_initial_pid_ns()) {
    print_message("[ SKIPPED  ] running in a nested PID namespace: tgids not comparable\n");
    skip();
  }
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  sockaddr_storage dst = v4("127.0.0.2", g.port);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(p[0]);
    if (!write_file(g.cg + "/cgroup.procs", std::to_string(getpid()))) _exit(2);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char ok = connect(fd, sa(dst), len_of(dst)) == 0 ? 'y' : 'n';
    if (write(p[1], &ok, 1) != 1) _exit(3);
    for (;;) pause();  // the socket must exist when the parent looks
  }
  g.children.push_back(pid);
  close(p[1]);
  char ok = 0;
  pollfd pfd{p[0], POLLIN, 0};
  assert_int_equal(poll(&pfd, 1, kWaitMs), 1);
  assert_int_equal(read(p[0], &ok, 1), 1);
  close(p[0]);
  assert_int_equal(ok, 'y');
  sockaddr_storage peer{};
  int fd = accept_one(g.l4, &peer);
  assert_true(fd >= 0);
  OriginalDst od;
  std::string err;
  assert_true(g.be->original_dst(fd, peer, &od, &err));
  close(fd);
  assert_int_equal(od.tgid, static_cast<uint32_t>(pid));
  reap(pid);
}

void test_tcp6_redirected(void**) {
  require_env();
  check_redirect(v6("::1", g.port), AF_INET6, g.l6, v6("::1", g.port), v6("::1", g.port));
}

// A dual-stack AF_INET6 socket reaching IPv4 as ::ffff:a.b.c.d goes to the
// IPv4 listener; original_dst reports AF_INET, getpeername the mapped form.
void test_v4mapped_redirected(void**) {
  require_env();
  check_redirect(v6("::ffff:127.0.0.2", g.port), AF_INET6, g.l4, v4("127.0.0.2", g.port),
                 v6("::ffff:127.0.0.2", g.port));
}

void test_udp_blocked(void**) {
  require_env();
  Stats before = stats();
  const uint16_t port = g.port, other = g.other_port;
  Report r = run_child(g.cg, [port, other](Report* rep) {
    const char byte = 'x';
    struct Try {
      int family;
      sockaddr_storage dst;
      bool use_connect;
    } tries[] = {
        {AF_INET, v4("127.0.0.2", port), false},          // sendto
        {AF_INET, v4("127.0.0.2", port), true},           // connect
        {AF_INET6, v6("::1", port), false},               // sendto over IPv6
        {AF_INET6, v6("::ffff:127.0.0.2", port), true},   // connect, v4-mapped
        {AF_INET6, v6("::ffff:127.0.0.2", port), false},  // sendto, v4-mapped
        {AF_INET, v4("127.0.0.2", other), false},         // another port: allowed
    };
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
      int fd = socket(tries[i].family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (tries[i].family == AF_INET6) {
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
      }
      const sockaddr_storage& d = tries[i].dst;
      int rc = tries[i].use_connect ? connect(fd, sa(d), len_of(d))
                                    : static_cast<int>(sendto(fd, &byte, 1, 0, sa(d), len_of(d)));
      rep->rc[i] = rc < 0 ? -1 : 0;
      rep->err[i] = rc < 0 ? errno : 0;
      close(fd);
    }
  });
  for (int i = 0; i < 5; i++) {
    if (r.rc[i] != -1 || r.err[i] != EPERM) {
      print_error("UDP try %d: rc %d errno %s, want EPERM\n", i, r.rc[i], std::strerror(r.err[i]));
      fail();
    }
  }
  assert_int_equal(r.rc[5], 0);
  assert_stats_delta(before, 0, 0, 5);
}

void test_other_port_untouched(void**) {
  require_env();
  Stats before = stats();
  expect_direct(g.cg, v4("127.0.0.2", g.other_port));
  assert_stats_delta(before, 0, 0, 0);
  assert_false(pending(g.l4));
}

// A process outside the cgroup is not redirected: the hooks do not even run.
void test_outside_cgroup_untouched(void**) {
  require_env();
  Stats before = stats();
  expect_direct("", v4("127.0.0.2", g.port));
  ConnectOpts o6;
  o6.family = AF_INET6;
  expect_direct("", v6("::1", g.port), o6);
  assert_int_equal(udp_send("", v4("127.0.0.2", g.port)), 1);
  assert_stats_delta(before, 0, 0, 0);
  assert_false(pending(g.l4));
  assert_false(pending(g.l6));
}

// A socket carrying the daemon's mark is left alone (counted as skipped).
void test_mark_skipped(void**) {
  require_env();
  Stats before = stats();
  ConnectOpts o;
  o.mark = g.opt.mark;
  expect_direct(g.cg, v4("127.0.0.2", g.port), o);
  assert_stats_delta(before, 0, 1, 0);
  assert_false(pending(g.l4));
}

// A socket bound to a device is left alone (the loopback listener may be
// unreachable from it), but its UDP to a configured port is still refused.
void test_bound_device_skipped(void**) {
  require_env();
  Stats before = stats();
  ConnectOpts o;
  o.bind_dev = "lo";
  expect_direct(g.cg, v4("127.0.0.2", g.port), o);
  assert_stats_delta(before, 0, 1, 0);
  int err = 0;
  assert_int_equal(udp_send(g.cg, v4("127.0.0.2", g.port), "lo", &err), -1);
  assert_int_equal(err, EPERM);
  assert_stats_delta(before, 0, 1, 1);
  assert_false(pending(g.l4));
}

// A redirected socket that disconnects (AF_UNSPEC) and connects to the
// listener directly forgets its original destination: no map entry for the
// second connection, and getpeername() tells the truth.
void test_reconnect_forgets(void**) {
  require_env();
  Stats before = stats();
  const sockaddr_storage listener = v4("127.0.0.1", g.listen_port);
  ConnectOpts o;
  o.reconnect_to = &listener;
  Report r = run_child(g.cg, tcp_connect(v4("127.0.0.2", g.port), o));
  assert_int_equal(r.rc[0], 0);
  assert_int_equal(r.rc[1], 0);
  if (r.rc[2] != 0) {
    print_error("reconnect: %s\n", std::strerror(r.err[2]));
    fail();
  }
  assert_addr(r.peer, listener);
  assert_stats_delta(before, 1, 1, 0);
  // Accept until the second connection shows up (the first, reset by the
  // disconnect, may or may not still be queued ahead of it).
  bool found = false;
  for (int i = 0; i < 2 && !found; i++) {
    sockaddr_storage peer{};
    int fd = accept_one(g.l4, &peer);
    assert_true(fd >= 0);
    found = util::sockaddr_str(peer) == util::sockaddr_str(r.local);
    close(fd);
  }
  assert_true(found);
  OriginalDst od;
  std::string err;
  assert_false(g.be->original_dst(-1, r.local, &od, &err));
  // Consume the first connection's entry if its port differed.
  if (util::sockaddr_str(r.first_local) != util::sockaddr_str(r.local))
    g.be->original_dst(-1, r.first_local, &od, &err);
  while (pending(g.l4)) {
    sockaddr_storage peer{};
    int fd = accept_one(g.l4, &peer);
    if (fd >= 0) close(fd);
  }
}

// A connect to the listener itself (its port is configured too, in these
// tests) is left alone: it arrives directly and has no map entry.
void test_listener_skipped(void**) {
  require_env();
  struct Case {
    int family;
    sockaddr_storage dst;
    int listener;
  } cases[] = {
      {AF_INET, v4("127.0.0.1", g.listen_port), g.l4},
      {AF_INET6, v6("::1", g.listen_port), g.l6},
      {AF_INET6, v6("::ffff:127.0.0.1", g.listen_port), g.l4},
  };
  for (const Case& c : cases) {
    Stats before = stats();
    ConnectOpts o;
    o.family = c.family;
    Report r = run_child(g.cg, tcp_connect(c.dst, o));
    assert_int_equal(r.rc[0], 0);
    sockaddr_storage peer{};
    int fd = accept_one(c.listener, &peer);
    assert_true(fd >= 0);
    OriginalDst od;
    std::string err;
    assert_false(g.be->original_dst(fd, peer, &od, &err));
    close(fd);
    assert_stats_delta(before, 0, 1, 0);
    assert_addr(r.peer, c.dst);  // getpeername untouched
  }
}

// Another network namespace has its own loopback: nothing is redirected there.
void test_other_netns_skipped(void**) {
  require_env();
  Stats before = stats();
  ConnectOpts o;
  o.new_netns = true;
  Report r = run_child(g.cg, tcp_connect(v4("127.0.0.2", g.port), o));
  if (r.rc[7] != 0) {
    print_error("unshare(CLONE_NEWNET): %s\n", std::strerror(r.err[7]));
    fail();
  }
  // The new namespace's loopback is down: the connect fails on its own.
  assert_int_equal(r.rc[0], -1);
  assert_stats_delta(before, 0, 1, 0);
}

// Tasks in the daemon's own cgroup are left alone. A second object with the
// test cgroup as "the daemon's" is attached to a second cgroup.
void test_daemon_cgroup_skipped(void**) {
  require_env();
  const std::string cg2 = g.mount + "/shoal-test-ebpf-daemon-" + std::to_string(getpid());
  assert_int_equal(mkdir(cg2.c_str(), 0755), 0);
  g.extra_cgroups.push_back(cg2);
  std::string err;
  uint64_t id2 = cgroup_id(cg2, &err);
  assert_true(id2 != 0);
  Options o = g.opt;
  o.daemon_cgroup_id = id2;
  std::unique_ptr<Backend> be2 = open_ebpf(o, &err);
  if (be2 == nullptr) {
    print_error("open_ebpf: %s\n", err.c_str());
    fail();
  }
  assert_true(be2->attach(cg2, &err));
  expect_direct(cg2, v4("127.0.0.2", g.port));
  Stats s = be2->stats();
  assert_int_equal(s.redirected, 0);
  assert_int_equal(s.skipped, 1);
  be2.reset();
  assert_true(remove_cgroup(cg2));
  g.extra_cgroups.pop_back();
}

// After detach, connects go direct (refused) and UDP is allowed again.
void test_detach(void**) {
  require_env();
  std::string err;
  assert_true(g.be->detach(g.cg, &err));
  assert_int_equal(g.be->attached().size(), 0);
  assert_false(g.be->detach(g.cg, &err));
  Stats before = stats();
  expect_direct(g.cg, v4("127.0.0.2", g.port));
  assert_int_equal(udp_send(g.cg, v4("127.0.0.2", g.port)), 1);
  assert_stats_delta(before, 0, 0, 0);
  assert_false(pending(g.l4));
}

// A cgroup removed while attached (a batch job's, by its batch system) is
// dropped by prune(), links and all; one removed and made again under the
// same name is a new cgroup: pruned too, and attach() replaces a stale
// attachment instead of calling it done. The still-attached one is kept.
void test_prune_vanished(void**) {
  require_env();
  std::string err;
  const std::string job = g.cg + "/job_7";
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  g.extra_cgroups.push_back(job);
  assert_true(g.be->attach(job, &err));
  assert_int_equal(g.be->attached().size(), 2);
  std::vector<std::string> errs;
  assert_int_equal(g.be->prune(&errs).size(), 0);

  assert_true(remove_cgroup(job));
  std::vector<std::string> gone = g.be->prune(&errs);
  assert_int_equal(gone.size(), 1);
  assert_string_equal(gone[0].c_str(), job.c_str());
  assert_int_equal(errs.size(), 0);
  std::vector<std::string> a = g.be->attached();
  assert_int_equal(a.size(), 1);
  assert_string_equal(a[0].c_str(), g.cg.c_str());
  assert_false(g.be->detach(job, &err));  // nothing left to detach
  assert_int_equal(g.be->prune(&errs).size(), 0);

  // Made again: a new cgroup id.
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  assert_true(g.be->attach(job, &err));
  assert_true(remove_cgroup(job));
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  assert_true(g.be->attach(job, &err));  // replaces the stale attachment
  assert_int_equal(g.be->attached().size(), 2);
  assert_int_equal(g.be->prune(&errs).size(), 0);
  // Removed and made again between two prunes: pruned, not kept.
  assert_true(remove_cgroup(job));
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  gone = g.be->prune(&errs);
  assert_int_equal(gone.size(), 1);
  assert_int_equal(g.be->attached().size(), 1);
  assert_true(remove_cgroup(job));
  g.extra_cgroups.pop_back();
  // The test cgroup itself still redirects.
  check_redirect(v4("127.0.0.2", g.port), AF_INET, g.l4, v4("127.0.0.2", g.port), v4("127.0.0.2", g.port));
}

// open_ebpf rejects bad options and says why.
void test_open_errors(void**) {
  require_env();
  std::string err;
  Options o = g.opt;
  o.ports.clear();
  assert_null(open_ebpf(o, &err).get());
  assert_false(err.empty());
  o = g.opt;
  o.cgroup_root = "/proc";
  assert_null(open_ebpf(o, &err).get());
  assert_non_null(std::strstr(err.c_str(), "/proc"));
}

// --- group ----------------------------------------------------------------------

int group_setup(void**) {
  if (geteuid() != 0) {
    g.skip_reason = "the eBPF backend tests need root";
    return 0;
  }
  if (!kernel_at_least(5, 14)) {
    g.skip_reason = "kernel older than 5.14 (no SO_NETNS_COOKIE)";
    return 0;
  }
  std::string err;
  if (!cgroup2_mount(&g.mount, &err)) {
    g.skip_reason = "no cgroup2 mount: " + err;
    return 0;
  }
  g.hold_p = hold_port(&g.port);
  g.hold_other = hold_port(&g.other_port);
  if (g.hold_p < 0 || g.hold_other < 0 || !make_listeners()) {
    g.setup_error = std::string("test sockets: ") + std::strerror(errno);
    return 0;
  }
  g.cg = g.mount + "/shoal-test-ebpf-" + std::to_string(getpid());
  if (mkdir(g.cg.c_str(), 0755) != 0) {
    g.setup_error = "mkdir " + g.cg + ": " + std::strerror(errno);
    g.cg.clear();
    return 0;
  }
  g.cg_id = cgroup_id(g.cg, &err);
  if (g.cg_id == 0) {
    g.setup_error = err;
    return 0;
  }
  g.opt.ports = {g.port, g.listen_port};
  g.opt.listen_port = g.listen_port;
  g.be = open_ebpf(g.opt, &g.setup_error);
  if (g.be == nullptr) return 0;
  if (!g.be->attach(g.cg, &g.setup_error)) return 0;
  g.setup_error.clear();
  return 0;
}

int group_teardown(void**) {
  reap_all();
  g.be.reset();
  for (const std::string& c : g.extra_cgroups) remove_cgroup(c);
  int rc = 0;
  if (!g.cg.empty() && !remove_cgroup(g.cg)) {
    std::fprintf(stderr, "could not remove %s: %s\n", g.cg.c_str(), std::strerror(errno));
    rc = -1;
  }
  for (int fd : {g.l4, g.l6, g.hold_p, g.hold_other})
    if (fd >= 0) close(fd);
  return rc;
}

}  // namespace

int run_ebpf_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attached),
      cmocka_unit_test(test_tcp4_redirected),
      cmocka_unit_test(test_tgid),
      cmocka_unit_test(test_tcp6_redirected),
      cmocka_unit_test(test_v4mapped_redirected),
      cmocka_unit_test(test_udp_blocked),
      cmocka_unit_test(test_other_port_untouched),
      cmocka_unit_test(test_outside_cgroup_untouched),
      cmocka_unit_test(test_mark_skipped),
      cmocka_unit_test(test_bound_device_skipped),
      cmocka_unit_test(test_listener_skipped),
      cmocka_unit_test(test_reconnect_forgets),
      cmocka_unit_test(test_other_netns_skipped),
      cmocka_unit_test(test_daemon_cgroup_skipped),
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test(test_prune_vanished),
      cmocka_unit_test(test_detach),
  };
  return cmocka_run_group_tests_name("redirect/ebpf", tests, group_setup, group_teardown);
}

}  // namespace shoal::redirect::test
