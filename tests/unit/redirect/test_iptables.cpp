// The iptables backend against the real kernel and the installed iptables
// (root only), in a network namespace of the test's own so that no rule ever
// touches the host's tables (and a crash of the test takes its rules with
// it); cgroups are global, so the test cgroup lives under the host's cgroup2
// mount and is removed at the end.
//
// Addresses: origin listeners on 127.0.0.2:P and [::1]:P stand for the hosts
// a job means to reach; the transparent listeners are 127.0.0.1:L and
// [::1]:L. A child process joins the test cgroup (or not), connects to
// 127.0.0.2:P or [::1]:P, and the test sees which listener accepts it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "redirect_test.h"
#include "shoal/redirect/redirect.h"
// clang-format off
#include "../cmocka_cpp.h"
// clang-format on

namespace shoal::redirect::test {
namespace {

constexpr int kWaitMs = 5000;  // hang guard: a connect on loopback takes microseconds
constexpr uint32_t kMark = 0x5348;

struct Env {
  std::string skip_reason;
  int host_netns = -1;     // to return to after the group
  bool own_netns = false;  // in the test's namespace: rules may be swept
  std::string mount;       // the cgroup2 mount
  std::string cg_name;     // test cgroup, relative to the mount
  std::string cg;          // test cgroup, absolute
  std::string sub;         // a child cgroup of cg
  uint16_t port = 0;       // P
  uint16_t listen_port = 0;
  uint16_t mapped_port = 0;        // L2, for the dual-stack listener
  int origin4 = -1, origin6 = -1;  // 127.0.0.2:P, [::1]:P
  int lis4 = -1, lis6 = -1;        // 127.0.0.1:L, [::1]:L
  int lis_mapped = -1;             // AF_INET6 on ::ffff:127.0.0.1:L2
};
Env g;

// --- helpers ---------------------------------------------------------------

// Runs argv (looked up in PATH) and returns its stdout and stderr; *status
// gets the exit status.
std::string run_out(const std::vector<std::string>& argv, int* status = nullptr) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return "";
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  if (pid > 0) waitpid(pid, &st, 0);
  if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

// Every rule of both tables in both families.
std::string all_rules() {
  std::string s;
  for (const char* tool : {"iptables", "ip6tables"})
    for (const char* table : {"nat", "filter"}) s += run_out({tool, "-w", "-t", table, "-S"});
  return s;
}

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

void iptables_must(const std::vector<std::string>& args) {
  int st = -1;
  std::string out = run_out(args, &st);
  if (st != 0) fail_msg("%s failed: %s", args[0].c_str(), out.c_str());
}

sockaddr_storage make_addr(int family, const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
  }
  return ss;
}

socklen_t addr_len(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

std::string to_string(const sockaddr_storage& ss) {
  char ip[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    port = ntohs(a->sin_port);
    return std::string(ip) + ":" + std::to_string(port);
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    port = ntohs(a->sin6_port);
    return "[" + std::string(ip) + "]:" + std::to_string(port);
  }
  return "family " + std::to_string(ss.ss_family);
}

// A listening TCP socket on ip:port (port 0: any); the port it got.
int listen_on(int family, const char* ip, uint16_t port, uint16_t* got, bool v6only = true) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1, v6 = v6only ? 1 : 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6);
  sockaddr_storage ss = make_addr(family, ip, port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), addr_len(ss)) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *got = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                 : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return fd;
}

// In a child: join the cgroup at abs ("" = stay where the test runs).
bool join_cgroup(const std::string& abs) {
  if (abs.empty()) return true;
  int fd = open((abs + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "0", 1) == 1;
  close(fd);
  return ok;
}

void write_int(int fd, int v) {
  if (write(fd, &v, sizeof v) != sizeof v) _exit(3);
}

// The int a child writes to fd, waiting at most kWaitMs; a child that
// hangs is killed (and reaped by the caller), and -1 returned.
int read_report(int fd, pid_t child) {
  pollfd p{fd, POLLIN, 0};
  int v = -1;
  if (poll(&p, 1, kWaitMs) != 1 || read(fd, &v, sizeof v) != sizeof v) {
    kill(child, SIGKILL);
    return -1;
  }
  return v;
}

enum class Via { kListener, kOrigin, kNothing };

const char* to_string(Via v) {
  return v == Via::kListener ? "the transparent listener" : v == Via::kOrigin ? "the origin" : "nothing";
}

struct TcpResult {
  Via via = Via::kNothing;
  int child_errno = -1;  // the child's connect: 0 or errno
  sockaddr_storage peer{};
  bool od_ok = false;
  OriginalDst od;
  std::string od_err;
};

// A child in cgroup cg (with SO_MARK mark unless 0) connects over TCP to
// ip:port and exchanges one byte each way with whoever accepts. The test
// accepts on every listener; on a transparent one it asks b (if not null) for
// the original destination.
TcpResult tcp_from(const std::string& cg, int family, const char* ip, uint16_t port, Backend* b,
                   uint32_t mark = 0) {
  TcpResult res;
  int rep[2];
  if (pipe2(rep, O_CLOEXEC) != 0) fail_msg("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    close(rep[0]);
    if (!join_cgroup(cg)) _exit(2);
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) _exit(4);
    timeval tv{kWaitMs / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_storage dst = make_addr(family, ip, port);
    if (connect(fd, reinterpret_cast<sockaddr*>(&dst), addr_len(dst)) != 0) {
      write_int(rep[1], errno);
      _exit(0);
    }
    write_int(rep[1], 0);
    char c = 'x';
    if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1 || c != 'y') _exit(5);
    _exit(0);
  }
  close(rep[1]);
  struct Source {
    int fd;
    Via via;
  };
  std::vector<Source> sources = {{g.lis4, Via::kListener},
                                 {g.lis6, Via::kListener},
                                 {g.lis_mapped, Via::kListener},
                                 {g.origin4, Via::kOrigin},
                                 {g.origin6, Via::kOrigin}};
  int conn = -1;
  std::vector<pollfd> fds;
  for (const Source& s : sources) fds.push_back({s.fd, POLLIN, 0});
  fds.push_back({rep[0], POLLIN, 0});
  // The child reports its connect first; a failed connect ends the wait.
  res.child_errno = read_report(rep[0], pid);
  if (res.child_errno == 0 && poll(fds.data(), sources.size(), kWaitMs) > 0) {
    for (size_t i = 0; i < sources.size() && conn < 0; ++i) {
      if (!(fds[i].revents & POLLIN)) continue;
      socklen_t len = sizeof res.peer;
      conn = accept4(sources[i].fd, reinterpret_cast<sockaddr*>(&res.peer), &len, SOCK_CLOEXEC);
      if (conn >= 0) res.via = sources[i].via;
    }
  }
  if (conn >= 0) {
    char c = 0;
    pollfd p{conn, POLLIN, 0};
    if (poll(&p, 1, kWaitMs) == 1 && read(conn, &c, 1) == 1 && c == 'x') {
      if (res.via == Via::kListener && b) res.od_ok = b->original_dst(conn, res.peer, &res.od, &res.od_err);
      c = 'y';
      if (write(conn, &c, 1) != 1) res.via = Via::kNothing;
    }
    close(conn);
  } else {
    kill(pid, SIGKILL);  // nobody accepted: do not wait for its read to time out
  }
  close(rep[0]);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) fail_msg("waitpid: %s", strerror(errno));
  if (conn >= 0 && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
    fail_msg("connect child exited with status %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return res;
}

// A child in cgroup cg sends one UDP datagram to ip:port; 0 or its errno.
int udp_from(const std::string& cg, int family, const char* ip, uint16_t port, uint32_t mark = 0) {
  int rep[2];
  if (pipe2(rep, O_CLOEXEC) != 0) fail_msg("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    close(rep[0]);
    if (!join_cgroup(cg)) _exit(2);
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) _exit(4);
    sockaddr_storage dst = make_addr(family, ip, port);
    ssize_t n = sendto(fd, "q", 1, 0, reinterpret_cast<sockaddr*>(&dst), addr_len(dst));
    write_int(rep[1], n == 1 ? 0 : errno);
    _exit(0);
  }
  close(rep[1]);
  int e = read_report(rep[0], pid);
  close(rep[0]);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("udp child exited with status %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return e;
}

Options options(uint16_t listen_port) {
  Options o;
  o.ports = {g.port};
  o.listen_port = listen_port;
  o.mark = kMark;
  return o;
}

std::unique_ptr<Backend> must_open(uint16_t listen_port) {
  std::string err;
  auto b = open_iptables(options(listen_port), &err);
  if (!b) fail_msg("open_iptables: %s", err.c_str());
  return b;
}

void must_attach(Backend* b, const std::string& path) {
  std::string err;
  if (!b->attach(path, &err)) fail_msg("attach %s: %s", path.c_str(), err.c_str());
}

void need_env() {
  if (!g.skip_reason.empty()) {
    fprintf(stderr, "skipped: %s\n", g.skip_reason.c_str());
    skip();
  }
}

// Asserts that a child in cg connecting to ip:P lands where expected.
void expect_tcp(const std::string& cg, int family, const char* ip, Via want, Backend* b, uint32_t mark = 0) {
  TcpResult r = tcp_from(cg, family, ip, g.port, b, mark);
  if (r.child_errno != 0)
    fail_msg("connect from %s to %s: %s", cg.empty() ? "outside" : cg.c_str(), ip, strerror(r.child_errno));
  if (r.via != want)
    fail_msg("connect from %s to %s port %u reached %s, want %s", cg.empty() ? "outside" : cg.c_str(), ip,
             g.port, to_string(r.via), to_string(want));
}

// --- tests -----------------------------------------------------------------

void test_open_rejects_bad_options(void**) {
  struct Case {
    Options opt;
    const char* want;
  } cases[] = {
      {Options{}, ""}, {Options{}, ""}, {Options{}, ""}, {Options{}, ""}, {Options{}, ""},
  };
  cases[0].opt.ports.clear();
  cases[0].want = "no ports";
  cases[1].opt.ports = {443, 0};
  cases[1].want = "port 0";
  cases[2].opt.ports = {443, 65003};
  cases[2].want = "listener's own port";
  cases[3].opt.mark = 0;
  cases[3].want = "mark must not be 0";
  cases[4].opt.listen_port = 0;
  cases[4].want = "listen_port is 0";
  for (const Case& c : cases) {
    std::string err;
    assert_null(open_iptables(c.opt, &err).get());
    if (!has(err, c.want)) fail_msg("error \"%s\" does not say \"%s\"", err.c_str(), c.want);
  }
}

void test_chains_made_and_removed(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  assert_string_equal(b->name(), "iptables");
  for (const char* tool : {"iptables", "ip6tables"}) {
    std::string nat = run_out({tool, "-w", "-t", "nat", "-S"});
    std::string filter = run_out({tool, "-w", "-t", "filter", "-S"});
    if (!has(nat, "-N SHOAL-REDIRECT") || count_of(nat, "-A OUTPUT -j SHOAL-REDIRECT") != 1 ||
        !has(nat, "--mark 0x5348 -j RETURN"))
      fail_msg("%s nat:\n%s", tool, nat.c_str());
    if (!has(filter, "-N SHOAL-REJECT") || count_of(filter, "-A OUTPUT -j SHOAL-REJECT") != 1)
      fail_msg("%s filter:\n%s", tool, filter.c_str());
    // The jump comes first in OUTPUT.
    assert_true(nat.find("-A OUTPUT") == nat.find("-A OUTPUT -j SHOAL-REDIRECT"));
  }
  must_attach(b.get(), g.cg_name);
  assert_true(has(all_rules(), "--path"));
  b.reset();  // what the daemon does on stop
  std::string rules = all_rules();
  if (has(rules, "SHOAL")) fail_msg("left behind:\n%s", rules.c_str());
}

void test_tcp4_redirected(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  must_attach(b.get(), g.cg_name);
  std::vector<std::string> att = b->attached();
  assert_int_equal(att.size(), 1);
  assert_string_equal(att[0].c_str(), g.cg.c_str());

  TcpResult r = tcp_from(g.cg, AF_INET, "127.0.0.2", g.port, b.get());
  assert_int_equal(r.child_errno, 0);
  if (r.via != Via::kListener) fail_msg("reached %s", to_string(r.via));
  if (!r.od_ok) fail_msg("original_dst: %s", r.od_err.c_str());
  assert_string_equal(to_string(r.od.addr).c_str(), ("127.0.0.2:" + std::to_string(g.port)).c_str());
  assert_int_equal(r.od.tgid, 0);
  assert_int_equal(r.od.cgroup_id, 0);
  assert_int_equal(r.peer.ss_family, AF_INET);

  // Outside the cgroup, and inside with the daemon's mark: direct.
  expect_tcp("", AF_INET, "127.0.0.2", Via::kOrigin, b.get());
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kOrigin, b.get(), kMark);

  // A connection made to the listener itself was not redirected.
  TcpResult d = tcp_from("", AF_INET, "127.0.0.1", g.listen_port, b.get());
  assert_int_equal(d.child_errno, 0);
  assert_true(d.via == Via::kListener);
  assert_false(d.od_ok);
  assert_true(has(d.od_err, "not redirected"));

  Stats s = b->stats();
  assert_int_equal(s.redirected, 1);
  assert_int_equal(s.skipped, 1);
}

void test_tcp6_redirected(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  must_attach(b.get(), g.cg_name);
  TcpResult r = tcp_from(g.cg, AF_INET6, "::1", g.port, b.get());
  assert_int_equal(r.child_errno, 0);
  if (r.via != Via::kListener) fail_msg("reached %s", to_string(r.via));
  if (!r.od_ok) fail_msg("original_dst: %s", r.od_err.c_str());
  assert_int_equal(r.od.addr.ss_family, AF_INET6);
  assert_string_equal(to_string(r.od.addr).c_str(), ("[::1]:" + std::to_string(g.port)).c_str());
  expect_tcp("", AF_INET6, "::1", Via::kOrigin, b.get());
  expect_tcp(g.cg, AF_INET6, "::1", Via::kOrigin, b.get(), kMark);

  TcpResult d = tcp_from("", AF_INET6, "::1", g.listen_port, b.get());
  assert_true(d.via == Via::kListener);
  assert_false(d.od_ok);
}

// An IPv4 client accepted by a dual-stack AF_INET6 listener: the original
// destination is still IPv4, reported as AF_INET.
void test_tcp4_on_dual_stack_listener(void**) {
  need_env();
  auto b = must_open(g.mapped_port);
  must_attach(b.get(), g.cg_name);
  TcpResult r = tcp_from(g.cg, AF_INET, "127.0.0.2", g.port, b.get());
  assert_int_equal(r.child_errno, 0);
  if (r.via != Via::kListener) fail_msg("reached %s", to_string(r.via));
  assert_int_equal(r.peer.ss_family, AF_INET6);  // ::ffff:127.0.0.1
  if (!r.od_ok) fail_msg("original_dst: %s", r.od_err.c_str());
  assert_int_equal(r.od.addr.ss_family, AF_INET);
  assert_string_equal(to_string(r.od.addr).c_str(), ("127.0.0.2:" + std::to_string(g.port)).c_str());
}

void test_udp_refused(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  must_attach(b.get(), g.cg_name);
  assert_int_equal(udp_from(g.cg, AF_INET, "127.0.0.2", g.port), EPERM);
  assert_int_equal(udp_from(g.cg, AF_INET6, "::1", g.port), EPERM);
  // Other ports, other processes and the daemon's own sockets may send.
  assert_int_equal(udp_from(g.cg, AF_INET, "127.0.0.2", static_cast<uint16_t>(g.port + 1)), 0);
  assert_int_equal(udp_from("", AF_INET, "127.0.0.2", g.port), 0);
  assert_int_equal(udp_from("", AF_INET6, "::1", g.port), 0);
  assert_int_equal(udp_from(g.cg, AF_INET, "127.0.0.2", g.port, kMark), 0);
  assert_int_equal(b->stats().blocked, 2);
}

void test_descendant_redirected(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  must_attach(b.get(), g.cg);  // absolute form
  expect_tcp(g.sub, AF_INET, "127.0.0.2", Via::kListener, b.get());
  assert_int_equal(udp_from(g.sub, AF_INET, "127.0.0.2", g.port), EPERM);
}

void test_detach(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  must_attach(b.get(), g.cg_name);
  must_attach(b.get(), g.sub);
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kListener, b.get());
  std::string err;
  assert_true(b->detach(g.cg_name, &err));
  std::vector<std::string> att = b->attached();
  assert_int_equal(att.size(), 1);
  assert_string_equal(att[0].c_str(), g.sub.c_str());
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kOrigin, b.get());
  expect_tcp(g.cg, AF_INET6, "::1", Via::kOrigin, b.get());
  assert_int_equal(udp_from(g.cg, AF_INET, "127.0.0.2", g.port), 0);
  expect_tcp(g.sub, AF_INET, "127.0.0.2", Via::kListener, b.get());  // still attached

  assert_true(b->detach(g.sub, &err));
  assert_int_equal(b->attached().size(), 0);
  expect_tcp(g.sub, AF_INET, "127.0.0.2", Via::kOrigin, b.get());
  std::string rules = all_rules();
  if (has(rules, "--path")) fail_msg("per-cgroup rules left:\n%s", rules.c_str());

  err.clear();
  assert_false(b->detach(g.cg_name, &err));
  assert_true(has(err, "not attached"));
}

// A cgroup removed while attached loses its rules at the next prune();
// the --path text still deletes them although the cgroup is gone. One made
// again under the same name is pruned as well, and attach() replaces a stale
// attachment rather than keeping rules that no longer match anything.
void test_prune_vanished(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  const std::string job = g.cg + "/job_9";
  if (mkdir(job.c_str(), 0755) != 0) fail_msg("mkdir %s: %s", job.c_str(), strerror(errno));
  must_attach(b.get(), g.cg_name);
  const size_t per = count_of(all_rules(), "--path");  // nat + filter, v4 (+ v6)
  assert_true(per >= 2);
  must_attach(b.get(), job);
  assert_int_equal(count_of(all_rules(), "/job_9"), per);
  std::vector<std::string> errs;
  assert_int_equal(b->prune(&errs).size(), 0);

  assert_int_equal(rmdir(job.c_str()), 0);
  std::vector<std::string> gone = b->prune(&errs);
  if (!errs.empty()) fail_msg("prune: %s", errs[0].c_str());
  assert_int_equal(gone.size(), 1);
  assert_string_equal(gone[0].c_str(), job.c_str());
  std::string rules = all_rules();
  if (has(rules, "/job_9")) fail_msg("rules of the removed cgroup left:\n%s", rules.c_str());
  assert_int_equal(count_of(rules, "--path"), per);  // the test cgroup's
  assert_int_equal(b->attached().size(), 1);

  // Made again: attach replaces the stale attachment, one set of rules.
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  must_attach(b.get(), job);
  assert_int_equal(rmdir(job.c_str()), 0);
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  must_attach(b.get(), job);
  assert_int_equal(count_of(all_rules(), "/job_9"), per);
  expect_tcp(job, AF_INET, "127.0.0.2", Via::kListener, b.get());
  // Removed and made again between two prunes.
  assert_int_equal(rmdir(job.c_str()), 0);
  assert_int_equal(mkdir(job.c_str(), 0755), 0);
  assert_int_equal(b->prune(&errs).size(), 1);
  assert_int_equal(count_of(all_rules(), "/job_9"), 0);
  assert_int_equal(rmdir(job.c_str()), 0);
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kListener, b.get());
}

void test_attach_errors(void**) {
  need_env();
  auto b = must_open(g.listen_port);
  std::string err;
  assert_false(b->attach(g.cg_name + "/nonexistent", &err));
  if (!has(err, g.cg + "/nonexistent") || !has(err, "No such file")) fail_msg("%s", err.c_str());
  err.clear();
  assert_false(b->attach(g.cg_name + "/../..", &err));
  assert_true(has(err, ".."));
  err.clear();
  assert_false(b->attach("/etc", &err));
  assert_true(has(err, "not under the cgroup2 mount"));
  err.clear();
  assert_false(b->attach(g.cg_name + "/cgroup.procs", &err));
  assert_true(has(err, "not a cgroup2 directory"));
  assert_int_equal(b->attached().size(), 0);

  // Twice, and in both forms: one attachment, one set of rules.
  must_attach(b.get(), g.cg_name);
  must_attach(b.get(), g.cg);
  must_attach(b.get(), g.cg + "/");
  assert_int_equal(b->attached().size(), 1);
  assert_int_equal(count_of(run_out({"iptables", "-w", "-t", "nat", "-S"}), "--path"), 1);
}

// A daemon killed with SIGKILL leaves its rules (fail-closed);
// cleanup_iptables() removes them and every other Shoal chain, and a second
// run finds nothing.
void test_cleanup_after_crash(void**) {
  need_env();
  int ready[2];
  assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    std::string err;
    auto b = open_iptables(options(g.listen_port), &err);
    char ok = b && b->attach(g.cg_name, &err) ? 'y' : 'n';
    if (ok != 'y') fprintf(stderr, "crash child: %s\n", err.c_str());
    if (write(ready[1], &ok, 1) != 1) _exit(1);
    raise(SIGKILL);  // no destructor runs
    _exit(1);
  }
  close(ready[1]);
  char ok = 0;
  ssize_t n = read(ready[0], &ok, 1);
  close(ready[0]);
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_int_equal(n, 1);
  assert_int_equal(ok, 'y');
  assert_true(WIFSIGNALED(st));

  // By hand, as an older version or an operator might have left them.
  iptables_must({"iptables", "-w", "-t", "nat", "-N", "SHOAL-OLD"});
  iptables_must({"iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "comment", "--comment",
                 "left by \"shoal\" 0.1", "-j", "SHOAL-OLD"});
  iptables_must({"iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-j", "SHOAL-REDIRECT"});  // a second jump
  // And in the other variant (nft vs legacy) than the one `iptables` runs:
  // the alternative may have been switched since. In this namespace only.
  int expected = 5;  // nat and filter, v4 and v6, and SHOAL-OLD
  int st_legacy = -1, st_nft = -1;
  std::string version = run_out({"iptables", "-V"});
  run_out({"iptables-legacy", "-V"}, &st_legacy);
  run_out({"iptables-nft", "-V"}, &st_nft);
  const char* other = has(version, "nf_tables") ? (st_legacy == 0 ? "iptables-legacy" : nullptr)
                                                : (st_nft == 0 ? "iptables-nft" : nullptr);
  if (other) {
    iptables_must({other, "-w", "-t", "filter", "-N", "SHOAL-OTHER"});
    iptables_must({other, "-w", "-t", "filter", "-I", "OUTPUT", "-p", "udp", "-j", "SHOAL-OTHER"});
    ++expected;
  } else {
    fprintf(stderr, "note: only one iptables variant installed; the other is not swept\n");
  }

  // Still redirected: nobody removed the rules.
  TcpResult r = tcp_from(g.cg, AF_INET, "127.0.0.2", g.port, nullptr);
  assert_true(r.via == Via::kListener);

  std::string err;
  int removed = cleanup_iptables(&err);
  if (removed < 0) fail_msg("cleanup_iptables: %s", err.c_str());
  assert_int_equal(removed, expected);
  std::string rules = all_rules();
  if (other) rules += run_out({other, "-w", "-t", "filter", "-S"});
  if (has(rules, "SHOAL")) fail_msg("left behind:\n%s", rules.c_str());
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kOrigin, nullptr);
  assert_int_equal(udp_from(g.cg, AF_INET, "127.0.0.2", g.port), 0);
  assert_int_equal(cleanup_iptables(&err), 0);
}

// A restarted daemon takes over what a killed one left.
void test_open_replaces_stale_chains(void**) {
  need_env();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    std::string err;
    auto b = open_iptables(options(g.listen_port), &err);
    if (!b || !b->attach(g.cg_name, &err)) _exit(1);
    raise(SIGKILL);
    _exit(1);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFSIGNALED(st));
  assert_true(has(all_rules(), "--path"));

  auto b = must_open(g.listen_port);
  std::string rules = all_rules();
  assert_int_equal(count_of(rules, "-A OUTPUT -j SHOAL-REDIRECT"), 2);  // one per family
  assert_int_equal(count_of(rules, "-A OUTPUT -j SHOAL-REJECT"), 2);
  assert_false(has(rules, "--path"));
  expect_tcp(g.cg, AF_INET, "127.0.0.2", Via::kOrigin, b.get());
  b.reset();
  assert_false(has(all_rules(), "SHOAL"));
}

// --- group -----------------------------------------------------------------

bool bring_loopback_up(std::string* err) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = fd >= 0 && ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  if (!ok) *err = std::string("bringing lo up: ") + strerror(errno);
  if (fd >= 0) close(fd);
  return ok;
}

int group_teardown(void**);

// CMocka does not run the teardown of a group whose setup failed; this
// one must still leave the namespace and remove the cgroups.
int setup_failed() {
  group_teardown(nullptr);
  return -1;
}

int group_setup(void**) {
  if (geteuid() != 0) {
    g.skip_reason = "the iptables backend tests need root";
    return 0;
  }
  int st = -1;
  run_out({"iptables", "-V"}, &st);
  if (st != 0) {
    g.skip_reason = "iptables is not installed";
    return 0;
  }
  std::string err;
  if (!cgroup2_mount(&g.mount, &err)) {
    g.skip_reason = err;
    return 0;
  }
  // A network namespace of our own: the rules, the listeners and the
  // conntrack entries stay out of the host's.
  g.host_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (g.host_netns < 0 || unshare(CLONE_NEWNET) != 0) {
    fprintf(stderr, "iptables tests: unshare(CLONE_NEWNET): %s\n", strerror(errno));
    return setup_failed();
  }
  g.own_netns = true;
  if (!bring_loopback_up(&err)) {
    fprintf(stderr, "iptables tests: %s\n", err.c_str());
    return setup_failed();
  }
  g.cg_name = "shoal-test-iptables-" + std::to_string(getpid());
  g.cg = g.mount + "/" + g.cg_name;
  g.sub = g.cg + "/job";
  if (mkdir(g.cg.c_str(), 0755) != 0 || mkdir(g.sub.c_str(), 0755) != 0) {
    fprintf(stderr, "iptables tests: mkdir %s: %s\n", g.sub.c_str(), strerror(errno));
    return setup_failed();
  }
  // A fresh namespace has every port free; ::1 may need a moment after lo
  // comes up.
  g.origin4 = listen_on(AF_INET, "127.0.0.2", 0, &g.port);
  for (int i = 0; i < 100 && g.origin6 < 0; ++i) {
    uint16_t p = 0;
    g.origin6 = listen_on(AF_INET6, "::1", g.port, &p);
    if (g.origin6 < 0) usleep(10000);
  }
  g.lis4 = listen_on(AF_INET, "127.0.0.1", 0, &g.listen_port);
  uint16_t p6 = 0;
  g.lis6 = listen_on(AF_INET6, "::1", g.listen_port, &p6);
  g.lis_mapped = listen_on(AF_INET6, "::ffff:127.0.0.1", 0, &g.mapped_port, false);
  if (g.origin4 < 0 || g.origin6 < 0 || g.lis4 < 0 || g.lis6 < 0 || g.lis_mapped < 0) {
    fprintf(stderr, "iptables tests: cannot listen on loopback: %s\n", strerror(errno));
    return setup_failed();
  }
  return 0;
}

int group_teardown(void**) {
  for (int* fd : {&g.origin4, &g.origin6, &g.lis4, &g.lis6, &g.lis_mapped}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  int rc = 0;
  if (g.own_netns) {
    std::string err;
    if (cleanup_iptables(&err) < 0) fprintf(stderr, "iptables tests: cleanup: %s\n", err.c_str());
    if (setns(g.host_netns, CLONE_NEWNET) != 0) {
      fprintf(stderr, "iptables tests: back to the host network namespace: %s\n", strerror(errno));
      rc = -1;
    }
    g.own_netns = false;
  }
  if (g.host_netns >= 0) close(g.host_netns);
  g.host_netns = -1;
  for (const std::string& d : {g.sub, g.cg}) {
    if (d.empty()) continue;
    if (rmdir(d.c_str()) != 0 && errno != ENOENT) {
      fprintf(stderr, "iptables tests: rmdir %s: %s\n", d.c_str(), strerror(errno));
      rc = -1;
    }
  }
  return rc;
}

}  // namespace

int run_iptables_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_rejects_bad_options),
      cmocka_unit_test(test_chains_made_and_removed),
      cmocka_unit_test(test_tcp4_redirected),
      cmocka_unit_test(test_tcp6_redirected),
      cmocka_unit_test(test_tcp4_on_dual_stack_listener),
      cmocka_unit_test(test_udp_refused),
      cmocka_unit_test(test_descendant_redirected),
      cmocka_unit_test(test_detach),
      cmocka_unit_test(test_attach_errors),
      cmocka_unit_test(test_prune_vanished),
      cmocka_unit_test(test_cleanup_after_crash),
      cmocka_unit_test(test_open_replaces_stale_chains),
  };
  return cmocka_run_group_tests_name("redirect/iptables", tests, group_setup, group_teardown);
}

}  // namespace shoal::redirect::test
