// connlat: TCP connect latency on loopback for bench/connect.sh, several
// cases interleaved connect by connect so that drift and other jobs on the
// machine hit every case alike.
//
//   build/bench/connlat --home DIR --case LABEL,CGROUP,IP:PORT[,SERVER_PID[,NETNS]] ...
//                       [--state LABEL,COMMAND ...] [-n COUNT] [--batch K]
//                       [--warmup COUNT]
//   build/bench/connlat --serve IP:PORT
//
// A case is a kind of connect: LABEL names it in the output, CGROUP is the
// cgroup v2 directory its sockets are made in ("-": the home cgroup),
// IP:PORT is where it connects, and NETNS (a /proc/PID/ns/net or
// /run/netns/NAME file; default: connlat's own) the network namespace its
// sockets are made in. A socket's cgroup and network namespace are fixed
// when it is created, so for each batch connlat joins each case's cgroup
// (and namespace) in turn, makes K+1 sockets there, goes back to --home
// (and its own namespace), and then runs connect i of every case before
// connect i+1 of any (the case that goes first rotates). The process
// itself sits in --home while it connects.
//
// --state is for a difference no interleaving of sockets can show, because
// it is a state of the whole machine (e.g. a hook attached somewhere or
// nowhere): with states given there must be exactly one --case, and batches
// take turns between the states; before its batch, a state's COMMAND runs
// (/bin/sh -c, must exit 0) to put the machine in that state, and the
// batch's connects count for that state, whose LABEL the output line
// carries. COUNT and the warm-up are per state.
//
// Only the connect() system call of a blocking socket is timed
// (CLOCK_MONOTONIC just before and just after it). On loopback the whole
// handshake (SYN, SYN-ACK, ACK) is processed inside connect(): when it
// returns, the connection is in the listener's accept queue.
//
// The server behind IP:PORT (shoald's transparent listener, or connlat
// --serve) is handled in one of two ways, the same for every case of a run:
//   SERVER_PID given, not "-" ("stopped"): the server is sent SIGSTOP for the length
//     of each batch (connlat waits until every thread of it has stopped)
//     and SIGCONT after it, so no connect pays for waking a server on the
//     other core: what is measured is the connect path itself (the hooks,
//     NAT, the listener's SYN and ACK handling). Each socket is closed
//     right after its connect; the server takes them off its queue after
//     SIGCONT. Then one more connect per case (not timed) waits for the
//     server's close, so the queue is empty before the next batch
//     (K must stay under the listener's backlog).
//   no SERVER_PID, or "-" ("awake"): after each connect connlat half-closes and
//     waits (up to 3 s) for the server's close before the next connect, so
//     exactly one connection is in flight; every connect then also pays
//     for waking the server.
// Either way, a server close seen as EOF counts as "eof", a reset as
// "resets", no answer within 3 s as "timeouts".
//
// Prints one line per case to stdout:
//
//   label=NAME n=N p50_us=.. p90_us=.. p99_us=.. mean_us=.. min_us=..
//   connects=C eof=E resets=R timeouts=T errors=X     (one line)
//
// (C: every connect of the case, warm-up and drain connects included, for
// dividing BPF program run time by.) Exits 0 when every connect succeeded
// and every awaited server close was an EOF, 1 otherwise, 2 on bad
// arguments.
//
// --serve is the server the cases that are not redirected connect to,
// standing in for shoald's listener: one thread blocked in accept(), then
// in read() until EOF, then close(), until a signal ends it.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
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
#include <string>
#include <vector>

namespace {

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

struct State {
  std::string label, command;
};

struct Case {
  std::string label, cgroup;  // cgroup "" = home
  sockaddr_in addr{};
  pid_t server = 0;   // 0: awake mode
  std::string netns;  // "" = connlat's own
  std::vector<uint64_t> lat;
  uint64_t connects = 0, eof = 0, resets = 0, timeouts = 0, errors = 0;
  std::vector<int> socks;
};

int g_shown = 0;

void error(Case* c, const char* what, int e) {
  ++c->errors;
  if (g_shown++ < 5) std::fprintf(stderr, "connlat: %s: %s: %s\n", c->label.c_str(), what, std::strerror(e));
}

bool parse_addr(const std::string& s, sockaddr_in* out) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  int port = std::atoi(s.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return false;
  *out = sockaddr_in{};
  out->sin_family = AF_INET;
  out->sin_port = htons(static_cast<uint16_t>(port));
  return inet_pton(AF_INET, s.substr(0, colon).c_str(), &out->sin_addr) == 1;
}

// LABEL,CGROUP,IP:PORT[,PID[,NETNS]]
bool parse_case(const std::string& s, Case* c) {
  std::vector<std::string> f;
  size_t start = 0;
  for (;;) {
    size_t comma = s.find(',', start);
    f.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (f.size() < 3 || f.size() > 5 || f[0].empty() || f[1].empty()) return false;
  c->label = f[0];
  c->cgroup = f[1] == "-" ? "" : f[1];
  if (!parse_addr(f[2], &c->addr)) return false;
  if (f.size() >= 4 && f[3] != "-" && (c->server = static_cast<pid_t>(std::atol(f[3].c_str()))) <= 0)
    return false;
  if (f.size() == 5) c->netns = f[4];
  return true;
}

bool join_cgroup(const std::string& dir) {
  std::string path = dir + "/cgroup.procs";
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0\n", 2) != 2) {
    std::fprintf(stderr, "connlat: joining %s: %s\n", dir.c_str(), std::strerror(errno));
    if (fd >= 0) close(fd);
    return false;
  }
  close(fd);
  return true;
}

// Enters the network namespace of the file path (a /proc/PID/ns/net or
// /run/netns/NAME), or of the open namespace file fd when path is empty.
bool enter_netns(const std::string& path, int fd) {
  int nfd = path.empty() ? fd : open(path.c_str(), O_RDONLY | O_CLOEXEC);
  bool ok = nfd >= 0 && setns(nfd, CLONE_NEWNET) == 0;
  if (!ok)
    std::fprintf(stderr, "connlat: entering network namespace %s: %s\n",
                 path.empty() ? "(own)" : path.c_str(), std::strerror(errno));
  if (!path.empty() && nfd >= 0) close(nfd);
  return ok;
}

// True once every thread of pid is stopped ('T' in /proc/PID/task/*/stat).
bool all_stopped(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return false;
  bool all = true;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string path = dir + "/" + e->d_name + "/stat";
    FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) continue;  // the thread just ended
    char buf[512];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');
    if (p == nullptr || p[1] != ' ' || (p[2] != 'T' && p[2] != 't')) all = false;
  }
  closedir(d);
  return all;
}

// Stops the servers and waits (up to 1 s) until they have. False on failure
// (then they are continued again).
bool stop_servers(const std::vector<pid_t>& pids) {
  for (pid_t p : pids)
    if (kill(p, SIGSTOP) != 0) {
      std::fprintf(stderr, "connlat: SIGSTOP %d: %s\n", static_cast<int>(p), std::strerror(errno));
      for (pid_t q : pids) kill(q, SIGCONT);
      return false;
    }
  uint64_t until = now_ns() + 1'000'000'000u;
  for (pid_t p : pids)
    while (!all_stopped(p)) {
      if (now_ns() > until) {
        std::fprintf(stderr, "connlat: pid %d did not stop within 1 s\n", static_cast<int>(p));
        for (pid_t q : pids) kill(q, SIGCONT);
        return false;
      }
      usleep(100);
    }
  return true;
}

void cont_servers(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) kill(p, SIGCONT);
}

// Half-closes fd and waits for the server's close.
void await_server_close(Case* c, int fd) {
  shutdown(fd, SHUT_WR);
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 3000) == 0) {
    ++c->timeouts;
    return;
  }
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof buf, 0);
  if (n == 0)
    ++c->eof;
  else if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
    ++c->resets;
  else if (n < 0)
    error(c, "recv", errno);
  else
    error(c, "recv (the server sent bytes)", EPROTO);
}

// One connect of c on fd; the latency is kept when timed.
bool do_connect(Case* c, int fd, bool timed) {
  ++c->connects;
  uint64_t t0 = now_ns();
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&c->addr), sizeof c->addr);
  uint64_t t1 = now_ns();
  if (r != 0) {
    error(c, "connect", errno);
    return false;
  }
  if (timed) c->lat.push_back(t1 - t0);
  return true;
}

// --serve: accept, read to EOF, close; one connection at a time. Returns
// only on a listener error.
int serve(const sockaddr_in& addr) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(lfd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || listen(lfd, 4096) != 0) {
    std::perror("connlat: listener");
    return 1;
  }
  char buf[4096];
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      std::perror("connlat: accept");
      return 1;
    }
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
  }
}

double pct_us(const std::vector<uint64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(i, v.size() - 1)]) / 1e3;
}

int usage() {
  std::fprintf(stderr,
               "usage: connlat --home DIR --case LABEL,CGROUP,IP:PORT[,SERVER_PID[,NETNS]] ...\n"
               "               [--state LABEL,COMMAND ...] [-n COUNT] [--batch K] [--warmup COUNT]\n"
               "       connlat --serve IP:PORT\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  std::vector<State> states;
  std::string home;
  long count = 20000, warmup = 1000, batch = 500;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return usage();
    std::string v = argv[++i];
    if (a == "--serve") {
      sockaddr_in addr{};
      if (!parse_addr(v, &addr)) return usage();
      return serve(addr);
    }
    if (a == "--case") {
      cases.emplace_back();
      if (!parse_case(v, &cases.back())) return usage();
    } else if (a == "--state") {
      size_t comma = v.find(',');
      if (comma == std::string::npos || comma == 0 || comma + 1 == v.size()) return usage();
      states.push_back(State{v.substr(0, comma), v.substr(comma + 1)});
    } else if (a == "--home") {
      home = v;
    } else if (a == "-n") {
      count = std::atol(v.c_str());
    } else if (a == "--warmup") {
      warmup = std::atol(v.c_str());
    } else if (a == "--batch") {
      batch = std::atol(v.c_str());
    } else {
      return usage();
    }
  }
  if (cases.empty() || home.empty() || count <= 0 || warmup < 0 || batch <= 0 || batch > 1000) return usage();
  if (!states.empty()) {
    if (cases.size() != 1) return usage();
    // One Case per state, all alike but for the label.
    Case proto = cases[0];
    cases.clear();
    for (const State& st : states) {
      cases.push_back(proto);
      cases.back().label = st.label;
    }
  }
  const bool stopped = cases[0].server != 0;
  std::vector<pid_t> servers;
  for (const Case& c : cases) {
    if ((c.server != 0) != stopped) return usage();  // all stopped or all awake
    if (stopped && std::find(servers.begin(), servers.end(), c.server) == servers.end())
      servers.push_back(c.server);
  }
  // Every case holds K+1 sockets at once.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  for (Case& c : cases) c.lat.reserve(static_cast<size_t>(count));
  int own_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (own_netns < 0) {
    std::perror("connlat: /proc/self/ns/net");
    return 1;
  }

  // A group is what one batch runs: every case, or (with states) the one
  // case of the state whose turn it is.
  const size_t groups = states.empty() ? 1 : states.size();
  bool failed = false;
  for (long done = 0; done < warmup + count && !failed;) {
    const long k = std::min(batch, warmup + count - done);
    for (size_t g = 0; g < groups && !failed; ++g) {
      std::vector<Case*> act;
      if (states.empty()) {
        for (Case& c : cases) act.push_back(&c);
      } else {
        act.push_back(&cases[g]);
        int rc = std::system(states[g].command.c_str());
        if (rc != 0) {
          std::fprintf(stderr, "connlat: state %s: command failed (%d): %s\n", states[g].label.c_str(), rc,
                       states[g].command.c_str());
          return 1;
        }
      }
      const size_t n = act.size();
      for (Case* c : act) {
        if (!join_cgroup(c->cgroup.empty() ? home : c->cgroup)) return 1;
        if (!c->netns.empty() && !enter_netns(c->netns, -1)) return 1;
        for (long i = 0; i <= k; ++i) {
          int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          if (fd < 0) {
            std::perror("connlat: socket");
            return 1;
          }
          c->socks.push_back(fd);
        }
        if (!c->netns.empty() && !enter_netns("", own_netns)) return 1;
      }
      if (!join_cgroup(home)) return 1;
      if (stopped && !stop_servers(servers)) return 1;
      for (long i = 0; i < k; ++i) {
        for (size_t j = 0; j < n; ++j) {
          Case* c = act[(static_cast<size_t>(i) + j) % n];
          int fd = c->socks[static_cast<size_t>(i)];
          if (do_connect(c, fd, done + i >= warmup) && !stopped) await_server_close(c, fd);
          close(fd);
        }
      }
      if (stopped) {
        cont_servers(servers);
        for (Case* c : act) {
          int fd = c->socks[static_cast<size_t>(k)];
          if (do_connect(c, fd, false)) await_server_close(c, fd);
          close(fd);
        }
      } else {
        for (Case* c : act) close(c->socks[static_cast<size_t>(k)]);
      }
      for (Case* c : act) {
        c->socks.clear();
        if (c->errors > 100) failed = true;
      }
    }
    done += k;
  }

  bool ok = !failed;
  for (Case& c : cases) {
    uint64_t sum = 0;
    for (uint64_t v : c.lat) sum += v;
    std::sort(c.lat.begin(), c.lat.end());
    std::printf(
        "label=%s n=%zu p50_us=%.3f p90_us=%.3f p99_us=%.3f mean_us=%.3f min_us=%.3f connects=%llu eof=%llu "
        "resets=%llu timeouts=%llu errors=%llu\n",
        c.label.c_str(), c.lat.size(), pct_us(c.lat, 0.50), pct_us(c.lat, 0.90), pct_us(c.lat, 0.99),
        c.lat.empty() ? 0.0 : static_cast<double>(sum) / static_cast<double>(c.lat.size()) / 1e3,
        c.lat.empty() ? 0.0 : static_cast<double>(c.lat.front()) / 1e3,
        static_cast<unsigned long long>(c.connects), static_cast<unsigned long long>(c.eof),
        static_cast<unsigned long long>(c.resets), static_cast<unsigned long long>(c.timeouts),
        static_cast<unsigned long long>(c.errors));
    if (c.errors != 0 || c.resets != 0 || c.timeouts != 0 || static_cast<long>(c.lat.size()) != count)
      ok = false;
  }
  return ok ? 0 : 1;
}
