// The iptables backend: netfilter NAT instead of cgroup BPF hooks, for hosts
// where the eBPF backend cannot attach.
//
// Rules, the same for iptables (IPv4) and ip6tables (IPv6):
//
//   nat OUTPUT     -j SHOAL-REDIRECT                       (inserted first)
//   SHOAL-REDIRECT -p tcp -m multiport --dports PORTS -m mark --mark MARK -j RETURN
//                  -m cgroup --path CG -p tcp -m multiport --dports PORTS
//                     -j REDIRECT --to-ports LISTEN         (one per attached cgroup)
//   filter OUTPUT  -j SHOAL-REJECT                         (inserted first)
//   SHOAL-REJECT   -p udp -m multiport --dports PORTS -m mark --mark MARK -j RETURN
//                  -m cgroup --path CG -p udp -m multiport --dports PORTS
//                     -j REJECT --reject-with icmp(6)-port-unreachable
//
// A REJECT (or any drop) in the OUTPUT hook makes the sender's sendmsg() fail
// with EPERM, which is what QUIC clients need to fall back to TCP; the ICMP
// error also reaches a connected UDP socket as ECONNREFUSED. REDIRECT in nat
// OUTPUT rewrites the destination to 127.0.0.1 / ::1, so the listener must be
// bound there in both families. More than 15 ports (multiport's limit) take
// several rules.
//
// The tools are whatever `iptables` and `ip6tables` resolve to: on Debian 12
// that is iptables-nft (the nf_tables kernel API, xt matches such as cgroup
// through nft_compat) unless update-alternatives selects iptables-legacy; both
// work. cleanup_iptables() sweeps both variants, because the alternative may
// have changed since the rules were made; it lists a legacy table only when
// the kernel already has it (/proc/net/ip_tables_names), since listing a
// legacy table creates it.
//
// xt_cgroup's --path names the cgroup relative to the cgroup namespace root
// (internal::kernel_cgroup_name) and is resolved once, when the rule is
// added: a cgroup removed and made again under the same name needs a detach
// and an attach. The match covers the cgroup's descendants too.
//
// Commands run through posix_spawn with argument vectors (never a shell),
// a fixed environment, and `-w 10` so that a held xtables lock delays a call
// by at most ten seconds instead of failing it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cgroup_internal.h"
#include "shoal/redirect/redirect.h"

namespace shoal::redirect {
namespace {

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
// whose other contents clash with glibc's <netinet/in.h>.
constexpr int kSoOriginalDst = 80;      // SO_ORIGINAL_DST, level SOL_IP
constexpr int kIp6tSoOriginalDst = 80;  // IP6T_SO_ORIGINAL_DST, level SOL_IPV6

constexpr const char* kNatChain = "SHOAL-REDIRECT";
constexpr const char* kFilterChain = "SHOAL-REJECT";
constexpr const char* kChainPrefix = "SHOAL-";  // every chain cleanup_iptables() removes
constexpr size_t kMultiportMax = 15;
constexpr int kCommandTimeoutMs = 30000;

// --- running a command ---------------------------------------------------

struct CmdResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

std::string join_argv(const std::vector<std::string>& argv) {
  std::string s;
  for (const std::string& a : argv) {
    if (!s.empty()) s += ' ';
    s += a.find(' ') == std::string::npos && !a.empty() ? a : "\"" + a + "\"";
  }
  return s;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\n')) ++i;
  return s.substr(i);
}

int64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Runs argv[0] (an absolute path) with stdin from /dev/null and stdout and
// stderr captured. False with *err only when the program could not be run or
// did not finish in time; a nonzero exit is in res->status.
bool run_command(const std::vector<std::string>& argv, CmdResult* res, std::string* err) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    *err = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    *err = std::string("pipe: ") + std::strerror(errno);
    close(out_pipe[0]);
    close(out_pipe[1]);
    return false;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);  // e.g. an ignored SIGPIPE
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  char env_path[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  char env_lang[] = "LC_ALL=C";
  char* envp[] = {env_path, env_lang, nullptr};
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0].c_str(), &fa, &attr, args.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    *err = "cannot run " + argv[0] + ": " + std::strerror(rc);
    return false;
  }

  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&res->out, &res->err};
  int open_fds = 2;
  bool timed_out = false;
  const int64_t deadline = now_ms() + kCommandTimeoutMs;
  while (open_fds > 0) {
    const int64_t left = deadline - now_ms();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    int n = poll(fds, 2, static_cast<int>(left));
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t r = read(fds[i].fd, buf, sizeof buf);
      if (r > 0) {
        sinks[i]->append(buf, static_cast<size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds)
    if (p.fd >= 0) close(p.fd);
  if (timed_out) kill(pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    *err =
        "`" + join_argv(argv) + "` did not finish within " + std::to_string(kCommandTimeoutMs / 1000) + " s";
    return false;
  }
  res->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return true;
}

// The absolute path of an executable, looked for in the sbin directories
// first (a root daemon's PATH may not have them), then in $PATH. "" if none.
std::string find_tool(const std::string& name) {
  std::vector<std::string> dirs = {"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"};
  if (const char* path = getenv("PATH")) {
    std::istringstream in(path);
    std::string d;
    while (std::getline(in, d, ':'))
      if (!d.empty() && d[0] == '/') dirs.push_back(d);
  }
  for (const std::string& d : dirs) {
    std::string p = d + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

bool ipv6_available() { return access("/proc/net/if_inet6", F_OK) == 0; }

// --- iptables ------------------------------------------------------------

struct Tool {
  std::string path;     // absolute path of iptables, ip6tables or a variant
  bool v6 = false;      // ip6tables
  bool legacy = false;  // iptables-legacy: list a table only if the kernel has it
};

// Runs `tool -w 10 ARGS...`; on failure *err names the command and carries
// what the tool printed.
bool ipt(const Tool& tool, const std::vector<std::string>& args, std::string* out, std::string* err) {
  std::vector<std::string> argv = {tool.path, "-w", "10"};
  argv.insert(argv.end(), args.begin(), args.end());
  CmdResult res;
  if (!run_command(argv, &res, err)) return false;
  if (res.status != 0) {
    std::string msg = trim(res.err.empty() ? res.out : res.err);
    *err = "`" + join_argv(argv) + "` failed (exit " + std::to_string(res.status) + ")" +
           (msg.empty() ? "" : ": " + msg);
    return false;
  }
  if (out) *out = std::move(res.out);
  return true;
}

bool legacy_table_loaded(bool v6, const std::string& table) {
  FILE* f = fopen(v6 ? "/proc/net/ip6_tables_names" : "/proc/net/ip_tables_names", "re");
  if (!f) return false;
  char line[64];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) found = trim(line) == table;
  fclose(f);
  return found;
}

// Splits one line of `iptables -S` into words; iptables quotes a word that
// holds spaces in double quotes, escaping '"' and '\' with a backslash.
std::vector<std::string> split_rule(const std::string& line) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false, quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '\\' && i + 1 < line.size()) {
        cur += line[++i];
      } else if (c == '"') {
        quoted = false;
      } else {
        cur += c;
      }
    } else if (c == ' ' || c == '\t') {
      if (in_word) words.push_back(std::move(cur));
      cur.clear();
      in_word = false;
    } else {
      if (c == '"') {
        quoted = true;
      } else {
        cur += c;
      }
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(cur));
  return words;
}

bool is_shoal_chain(const std::string& name) { return name.compare(0, 6, kChainPrefix) == 0; }

// Removes chains from one table: those named in `only`, or every Shoal chain
// when `only` is empty. Rules elsewhere that jump (or go) to them are deleted
// first, then the chains are flushed and deleted. Returns how many chains
// were deleted; errors are appended to *errs and the sweep goes on.
int sweep_table(const Tool& tool, const std::string& table, const std::vector<std::string>& only,
                std::vector<std::string>* errs) {
  if (tool.legacy && !legacy_table_loaded(tool.v6, table)) return 0;
  std::string listing, err;
  if (!ipt(tool, {"-t", table, "-S"}, &listing, &err)) {
    errs->push_back(err);
    return 0;
  }
  auto selected = [&](const std::string& name) {
    if (only.empty()) return is_shoal_chain(name);
    for (const std::string& o : only)
      if (o == name) return true;
    return false;
  };
  std::vector<std::string> chains;
  std::vector<std::vector<std::string>> refs;
  std::istringstream in(listing);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;  // "# Warning: iptables-legacy tables present..."
    std::vector<std::string> w = split_rule(line);
    if (w.size() == 2 && w[0] == "-N" && selected(w[1])) chains.push_back(w[1]);
    if (w.size() < 2 || w[0] != "-A" || selected(w[1])) continue;
    for (size_t i = 2; i + 1 < w.size(); ++i) {
      if ((w[i] == "-j" || w[i] == "-g" || w[i] == "--jump" || w[i] == "--goto") && selected(w[i + 1])) {
        w[0] = "-D";
        refs.push_back(std::move(w));
        break;
      }
    }
  }
  for (std::vector<std::string>& r : refs) {
    r.insert(r.begin(), {"-t", table});
    if (!ipt(tool, r, nullptr, &err)) errs->push_back(err);
  }
  for (const std::string& c : chains)
    if (!ipt(tool, {"-t", table, "-F", c}, nullptr, &err)) errs->push_back(err);
  int removed = 0;
  for (const std::string& c : chains) {
    if (ipt(tool, {"-t", table, "-X", c}, nullptr, &err)) {
      ++removed;
    } else {
      errs->push_back(err);
    }
  }
  return removed;
}

std::string join_errors(const std::vector<std::string>& errs) {
  std::string s;
  for (const std::string& e : errs) s += (s.empty() ? "" : "; ") + e;
  return s;
}

// "443,8443" groups of at most kMultiportMax ports.
std::vector<std::string> port_lists(const std::vector<uint16_t>& ports) {
  std::vector<std::string> out;
  for (size_t i = 0; i < ports.size(); i += kMultiportMax) {
    std::string s;
    for (size_t j = i; j < ports.size() && j < i + kMultiportMax; ++j)
      s += (s.empty() ? "" : ",") + std::to_string(ports[j]);
    out.push_back(s);
  }
  return out;
}

struct Rule {
  std::string table;
  std::string chain;
  std::vector<std::string> spec;
};

class IptablesBackend final : public Backend {
 public:
  IptablesBackend(const Options& opt, std::vector<Tool> tools, std::string mount, std::string mount_root)
      : opt_(opt),
        tools_(std::move(tools)),
        mount_(std::move(mount)),
        mount_root_(std::move(mount_root)),
        port_lists_(port_lists(opt.ports)) {}

  ~IptablesBackend() override {
    std::vector<std::string> errs;
    teardown(&errs);  // nowhere to report; cleanup_iptables() is the backstop
  }

  IptablesBackend(const IptablesBackend&) = delete;
  IptablesBackend& operator=(const IptablesBackend&) = delete;

  // Creates the chains, checks that the rules a cgroup needs are accepted
  // (with --path "/", before any jump leads to the chains), adds the mark
  // exclusion, then the jumps. Leaves nothing behind on failure.
  bool install(std::string* err) {
    for (const Tool& t : tools_) {
      if (!ipt(t, {"-t", "nat", "-N", kNatChain}, nullptr, err) ||
          !ipt(t, {"-t", "filter", "-N", kFilterChain}, nullptr, err))
        return fail_install(err);
      for (const Rule& r : cgroup_rules(t, "/")) {
        if (!add(t, r, err)) {
          *err =
              "the cgroup, multiport, REDIRECT or REJECT match/target does not work (xt_cgroup --path needs "
              "Linux 4.5+ and a cgroup2 hierarchy): " +
              *err;
          return fail_install(err);
        }
        if (!del(t, r, err)) return fail_install(err);
      }
      for (const Rule& r : mark_rules(t))
        if (!add(t, r, err)) return fail_install(err);
    }
    for (const Tool& t : tools_) {
      if (!ipt(t, {"-t", "nat", "-I", "OUTPUT", "1", "-j", kNatChain}, nullptr, err) ||
          !ipt(t, {"-t", "filter", "-I", "OUTPUT", "1", "-j", kFilterChain}, nullptr, err))
        return fail_install(err);
    }
    return true;
  }

  const char* name() const override { return "iptables"; }

  bool attach(const std::string& path, std::string* err) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string abs, e;
    if (!cgroup_path(mount_, path, &abs, err)) return false;
    const uint64_t id = cgroup_id(abs, &e);
    if (id == 0) {
      *err = "attach " + abs + ": " + e;
      return false;
    }
    for (auto it = attached_.begin(); it != attached_.end(); ++it) {
      if (it->abs != abs) continue;
      if (it->id == id) return true;
      // Removed and made again: --path was resolved to the old cgroup.
      std::vector<std::string> errs;
      remove_rules(*it, &errs);
      attached_.erase(it);
      break;
    }
    const std::string kname = internal::kernel_cgroup_name(mount_, mount_root_, abs);
    std::vector<std::pair<const Tool*, Rule>> done;
    for (const Tool& t : tools_) {
      for (const Rule& r : cgroup_rules(t, kname)) {
        if (!add(t, r, &e)) {
          for (auto it = done.rbegin(); it != done.rend(); ++it) {
            std::string ignored;
            del(*it->first, it->second, &ignored);
          }
          *err = "attach " + abs + ": " + e;
          return false;
        }
        done.emplace_back(&t, r);
      }
    }
    attached_.push_back({abs, kname, id});
    return true;
  }

  std::vector<std::string> prune(std::vector<std::string>* errs) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> gone;
    for (auto it = attached_.begin(); it != attached_.end();) {
      std::string e;
      if (cgroup_id(it->abs, &e) == it->id) {
        ++it;
        continue;
      }
      // Deleting a rule matches its text, so it works after the cgroup
      // its --path named is gone.
      remove_rules(*it, errs);
      gone.push_back(it->abs);
      it = attached_.erase(it);
    }
    return gone;
  }

  bool detach(const std::string& path, std::string* err) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string abs;
    if (!cgroup_path(mount_, path, &abs, err)) return false;
    for (auto it = attached_.begin(); it != attached_.end(); ++it) {
      if (it->abs != abs) continue;
      std::vector<std::string> errs;
      remove_rules(*it, &errs);
      attached_.erase(it);
      if (!errs.empty()) {
        *err = "detach " + abs + ": " + join_errors(errs);
        return false;
      }
      return true;
    }
    *err = "detach " + abs + ": not attached";
    return false;
  }

  std::vector<std::string> attached() const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const Attached& a : attached_) out.push_back(a.abs);
    return out;
  }

  bool original_dst(int fd, const sockaddr_storage& peer, OriginalDst* out, std::string* err) override {
    const bool mapped = peer.ss_family == AF_INET6 &&
                        IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<const sockaddr_in6*>(&peer)->sin6_addr);
    sockaddr_storage local{};
    socklen_t local_len = sizeof local;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
      *err = std::string("getsockname: ") + std::strerror(errno);
      return false;
    }
    OriginalDst res;
    if (peer.ss_family == AF_INET || mapped) {
      // Also on an AF_INET6 socket that accepted an IPv4 client: the kernel
      // passes SOL_IP options of such a socket to the IPv4 code.
      sockaddr_in dst{};
      socklen_t len = sizeof dst;
      if (getsockopt(fd, SOL_IP, kSoOriginalDst, &dst, &len) != 0) return no_entry("SO_ORIGINAL_DST", err);
      in_addr local_addr{};
      uint16_t local_port = 0;
      if (local.ss_family == AF_INET) {
        const auto* l4 = reinterpret_cast<const sockaddr_in*>(&local);
        local_addr = l4->sin_addr;
        local_port = l4->sin_port;
      } else {
        const auto* l6 = reinterpret_cast<const sockaddr_in6*>(&local);
        std::memcpy(&local_addr, &l6->sin6_addr.s6_addr[12], 4);
        local_port = l6->sin6_port;
      }
      if (dst.sin_addr.s_addr == local_addr.s_addr && dst.sin_port == local_port) return not_redirected(err);
      dst.sin_family = AF_INET;
      std::memcpy(&res.addr, &dst, sizeof dst);
    } else if (peer.ss_family == AF_INET6) {
      sockaddr_in6 dst{};
      socklen_t len = sizeof dst;
      if (getsockopt(fd, SOL_IPV6, kIp6tSoOriginalDst, &dst, &len) != 0)
        return no_entry("IP6T_SO_ORIGINAL_DST", err);
      const auto* l6 = reinterpret_cast<const sockaddr_in6*>(&local);
      if (std::memcmp(&dst.sin6_addr, &l6->sin6_addr, sizeof dst.sin6_addr) == 0 &&
          dst.sin6_port == l6->sin6_port)
        return not_redirected(err);
      dst.sin6_family = AF_INET6;
      std::memcpy(&res.addr, &dst, sizeof dst);
    } else {
      *err = "original destination: not an IP peer";
      return false;
    }
    *out = res;
    return true;
  }

  // Packet counters of the Shoal rules: nat rules see only the first packet
  // of a connection, so REDIRECT and RETURN count connects; REJECT counts
  // UDP datagrams refused.
  Stats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    Stats s;
    for (const Tool& t : tools_) {
      count(t, "nat", kNatChain, "REDIRECT", &s.redirected);
      count(t, "nat", kNatChain, "RETURN", &s.skipped);
      count(t, "filter", kFilterChain, "REJECT", &s.blocked);
    }
    return s;
  }

 private:
  struct Attached {
    std::string abs;    // directory under the mount
    std::string kname;  // the kernel's name for it (--path)
    uint64_t id;        // the cgroup's id when attached: a recreated cgroup has a new one
  };

  // Deletes an attachment's rules; errors are appended to *errs.
  void remove_rules(const Attached& a, std::vector<std::string>* errs) const {
    for (const Tool& t : tools_) {
      for (const Rule& r : cgroup_rules(t, a.kname)) {
        std::string e;
        if (!del(t, r, &e)) errs->push_back(e);
      }
    }
  }

  std::vector<Rule> cgroup_rules(const Tool& t, const std::string& kname) const {
    std::vector<Rule> rules;
    for (const std::string& ports : port_lists_) {
      rules.push_back({"nat",
                       kNatChain,
                       {"-m", "cgroup", "--path", kname, "-p", "tcp", "-m", "multiport", "--dports", ports,
                        "-j", "REDIRECT", "--to-ports", std::to_string(opt_.listen_port)}});
      rules.push_back(
          {"filter",
           kFilterChain,
           {"-m", "cgroup", "--path", kname, "-p", "udp", "-m", "multiport", "--dports", ports, "-j",
            "REJECT", "--reject-with", t.v6 ? "icmp6-port-unreachable" : "icmp-port-unreachable"}});
    }
    return rules;
  }

  std::vector<Rule> mark_rules(const Tool&) const {
    char mark[16];
    snprintf(mark, sizeof mark, "0x%x", opt_.mark);
    std::vector<Rule> rules;
    for (const std::string& ports : port_lists_) {
      rules.push_back({"nat",
                       kNatChain,
                       {"-p", "tcp", "-m", "multiport", "--dports", ports, "-m", "mark", "--mark", mark, "-j",
                        "RETURN"}});
      rules.push_back({"filter",
                       kFilterChain,
                       {"-p", "udp", "-m", "multiport", "--dports", ports, "-m", "mark", "--mark", mark, "-j",
                        "RETURN"}});
    }
    return rules;
  }

  static bool add(const Tool& t, const Rule& r, std::string* err) { return edit(t, "-A", r, err); }
  static bool del(const Tool& t, const Rule& r, std::string* err) { return edit(t, "-D", r, err); }
  static bool edit(const Tool& t, const char* op, const Rule& r, std::string* err) {
    std::vector<std::string> args = {"-t", r.table, op, r.chain};
    args.insert(args.end(), r.spec.begin(), r.spec.end());
    return ipt(t, args, nullptr, err);
  }

  static void count(const Tool& t, const char* table, const char* chain, const char* target, uint64_t* sum) {
    std::string listing, err;
    if (!ipt(t, {"-t", table, "-L", chain, "-n", "-v", "-x"}, &listing, &err)) return;
    std::istringstream in(listing);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string pkts, bytes, tgt;
      if (!(words >> pkts >> bytes >> tgt) || tgt != target) continue;
      char* end = nullptr;
      unsigned long long n = strtoull(pkts.c_str(), &end, 10);
      if (end && *end == '\0') *sum += n;
    }
  }

  void teardown(std::vector<std::string>* errs) {
    for (const Tool& t : tools_) {
      sweep_table(t, "nat", {kNatChain}, errs);
      sweep_table(t, "filter", {kFilterChain}, errs);
    }
  }

  bool fail_install(std::string* err) {
    *err = "iptables backend: " + *err;
    std::vector<std::string> errs;
    teardown(&errs);
    return false;
  }

  static bool no_entry(const char* opt, std::string* err) {
    *err = errno == ENOENT ? std::string("no NAT entry for this connection (it was not redirected)")
                           : std::string(opt) + ": " + std::strerror(errno);
    return false;
  }

  static bool not_redirected(std::string* err) {
    *err = "the connection was not redirected (it was made to the listener itself)";
    return false;
  }

  const Options opt_;
  const std::vector<Tool> tools_;  // iptables, and ip6tables when the kernel has IPv6
  const std::string mount_;        // the cgroup2 mount point
  const std::string mount_root_;   // its root in the hierarchy (mountinfo field 4)
  const std::vector<std::string> port_lists_;
  mutable std::mutex mu_;  // guards attached_ and serializes iptables calls
  std::vector<Attached> attached_;
};

}  // namespace

std::unique_ptr<Backend> open_iptables(const Options& opt, std::string* err) {
  if (opt.ports.empty()) {
    *err = "iptables backend: no ports to redirect";
    return nullptr;
  }
  for (uint16_t p : opt.ports) {
    if (p == 0 || p == opt.listen_port) {
      *err = "iptables backend: cannot redirect port " + std::to_string(p) +
             (p == 0 ? "" : " (it is the transparent listener's own port)");
      return nullptr;
    }
  }
  if (opt.listen_port == 0) {
    *err = "iptables backend: listen_port is 0";
    return nullptr;
  }
  if (opt.mark == 0) {
    // "--mark 0" would match every unmarked packet and exempt them all.
    *err = "iptables backend: the daemon's mark must not be 0";
    return nullptr;
  }
  std::vector<Tool> tools;
  Tool v4{find_tool("iptables"), false, false};
  if (v4.path.empty()) {
    *err = "iptables backend: iptables is not installed";
    return nullptr;
  }
  tools.push_back(v4);
  if (ipv6_available()) {
    Tool v6{find_tool("ip6tables"), true, false};
    if (v6.path.empty()) {
      *err = "iptables backend: ip6tables is not installed";
      return nullptr;
    }
    tools.push_back(v6);
  }
  std::string mount;
  if (!opt.cgroup_root.empty()) {
    std::string e;
    if (!cgroup_path(opt.cgroup_root, opt.cgroup_root, &mount, &e) || cgroup_id(mount, &e) == 0) {
      *err = "iptables backend: cgroup_root: " + e;
      return nullptr;
    }
  } else if (!cgroup2_mount(&mount, err)) {
    *err = "iptables backend: " + *err;
    return nullptr;
  }
  // Chains left by an instance that was killed are taken over: they would
  // otherwise redirect to a listener that is no longer there.
  std::string e;
  if (cleanup_iptables(&e) < 0) {
    *err = "iptables backend: removing stale Shoal chains: " + e;
    return nullptr;
  }
  auto b = std::make_unique<IptablesBackend>(opt, tools, mount, internal::cgroup2_mount_root(mount));
  if (!b->install(err)) return nullptr;
  return b;
}

int cleanup_iptables(std::string* err) {
  std::vector<Tool> tools;
  for (bool v6 : {false, true}) {
    if (v6 && !ipv6_available()) continue;
    const std::string base = v6 ? "ip6tables" : "iptables";
    std::string nft = find_tool(base + "-nft"), legacy = find_tool(base + "-legacy");
    if (!nft.empty()) tools.push_back({nft, v6, false});
    if (!legacy.empty()) tools.push_back({legacy, v6, true});
    if (nft.empty() && legacy.empty()) {
      std::string plain = find_tool(base);
      if (!plain.empty()) tools.push_back({plain, v6, false});
    }
  }
  if (tools.empty()) return 0;  // no iptables: no rules either
  std::vector<std::string> errs;
  int removed = 0;
  for (const Tool& t : tools) {
    removed += sweep_table(t, "nat", {}, &errs);
    if (!errs.empty()) break;  // e.g. not root: every other call would say so again
    removed += sweep_table(t, "filter", {}, &errs);
  }
  if (!errs.empty()) {
    *err = join_errors(errs);
    return -1;
  }
  return removed;
}

}  // namespace shoal::redirect
