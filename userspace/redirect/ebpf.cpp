// The eBPF backend: loads bpf/shoal_redirect.bpf.c through its libbpf
// skeleton, attaches its six job programs to job cgroups and its two
// accepted4/6 programs to the daemon's own cgroup, with bpf_links that only
// this object holds (never pinned: if the daemon dies the kernel drops them
// and jobs connect directly), and answers original_dst() from the socket
// storage accepted4/6 fill on the daemon's getpeername().
//
// The skeleton is generated into $(BUILD)/bpf by the Makefile and included
// here only. Errors from libbpf arrive as NULL/negative returns with errno
// set (libbpf 1.x); they are turned into strings naming the program and the
// cgroup. libbpf's own warnings (e.g. the verifier log of a program the
// kernel rejects) are captured while open_ebpf() runs and the tail is added
// to its error; at any other time they are dropped, since every failure is
// also reported as a value. SHOAL_LIBBPF_DEBUG=1 in the environment copies
// every libbpf warning, whole, to stderr (for a verifier log longer than the
// tail).
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "shoal/bpf_abi.h"
#include "shoal/redirect/redirect.h"
#include "shoal/util/sockaddr.h"
#include "shoal_redirect.skel.h"

// The layout the BPF side was compiled against (bpf_abi.h is plain C, so the
// same text yields the same layout in both compilers; these catch an edit
// that changes the layout by accident, e.g. a field without its padding).
static_assert(sizeof(shoal_config) == 24 + SHOAL_PORT_BITMAP_BYTES, "shoal_config size");
static_assert(offsetof(shoal_config, daemon_cgroup_id) == 0, "shoal_config layout");
static_assert(offsetof(shoal_config, netns_cookie) == 8, "shoal_config layout");
static_assert(offsetof(shoal_config, mark) == 16, "shoal_config layout");
static_assert(offsetof(shoal_config, listen_port) == 20, "shoal_config layout");
static_assert(offsetof(shoal_config, pad0) == 22, "shoal_config layout");
static_assert(offsetof(shoal_config, ports) == 24, "shoal_config layout");
static_assert(sizeof(shoal_orig_dst) == 32, "shoal_orig_dst size");
static_assert(offsetof(shoal_orig_dst, addr) == 0, "shoal_orig_dst layout");
static_assert(offsetof(shoal_orig_dst, port) == 16, "shoal_orig_dst layout");
static_assert(offsetof(shoal_orig_dst, family) == 18, "shoal_orig_dst layout");
static_assert(offsetof(shoal_orig_dst, tgid) == 20, "shoal_orig_dst layout");
static_assert(offsetof(shoal_orig_dst, cgroup_id) == 24, "shoal_orig_dst layout");
static_assert(SHOAL_PORT_BITMAP_BYTES * 8 == 65536, "one bit per port");

namespace shoal::redirect {

namespace {

std::string errno_str(int e) { return std::strerror(e); }

// --- libbpf messages -------------------------------------------------------

// libbpf_set_print() is process-wide; the printer appends to the capture
// buffer of the calling thread, if it has one.
thread_local std::string* t_libbpf_capture = nullptr;

bool g_libbpf_to_stderr = false;  // set once, before libbpf_set_print()

int libbpf_printer(enum libbpf_print_level level, const char* fmt, va_list ap) {
  if (level == LIBBPF_DEBUG || (t_libbpf_capture == nullptr && !g_libbpf_to_stderr)) return 0;
  // One message can be a whole verifier log: size it first.
  va_list copy;
  va_copy(copy, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return n;
  std::string msg(static_cast<size_t>(n) + 1, '\0');
  std::vsnprintf(&msg[0], msg.size(), fmt, ap);
  msg.resize(static_cast<size_t>(n));
  if (g_libbpf_to_stderr) std::fputs(msg.c_str(), stderr);
  if (t_libbpf_capture != nullptr) t_libbpf_capture->append(msg);
  return n;
}

// Captures libbpf's messages on this thread for its lifetime.
class LibbpfCapture {
 public:
  LibbpfCapture() {
    static std::once_flag once;
    std::call_once(once, [] {
      g_libbpf_to_stderr = std::getenv("SHOAL_LIBBPF_DEBUG") != nullptr;
      libbpf_set_print(libbpf_printer);
    });
    t_libbpf_capture = &text_;
  }
  ~LibbpfCapture() { t_libbpf_capture = nullptr; }
  LibbpfCapture(const LibbpfCapture&) = delete;
  LibbpfCapture& operator=(const LibbpfCapture&) = delete;

  // The last max_lines non-empty lines, joined with " | ", or "".
  std::string tail(size_t max_lines = 8) const {
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < text_.size()) {
      size_t end = text_.find('\n', start);
      if (end == std::string::npos) end = text_.size();
      if (end > start) lines.push_back(text_.substr(start, end - start));
      start = end + 1;
    }
    std::string out;
    size_t first = lines.size() > max_lines ? lines.size() - max_lines : 0;
    for (size_t i = first; i < lines.size(); i++) {
      if (!out.empty()) out += " | ";
      out += lines[i];
    }
    return out;
  }

 private:
  std::string text_;
};

// --- addresses -------------------------------------------------------------

bool is_v4mapped(const uint32_t addr[4]) { return addr[0] == 0 && addr[1] == 0 && addr[2] == htonl(0xffff); }

// shoal_orig_dst (as the client's socket saw it) -> sockaddr; IPv4-mapped
// IPv6 becomes AF_INET, as OriginalDst promises.
bool to_sockaddr(const shoal_orig_dst& v, sockaddr_storage* out) {
  *out = sockaddr_storage{};
  if (v.family == AF_INET || (v.family == AF_INET6 && is_v4mapped(v.addr))) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = v.family == AF_INET ? v.addr[0] : v.addr[3];
    sin.sin_port = v.port;
    std::memcpy(out, &sin, sizeof sin);
    return true;
  }
  if (v.family == AF_INET6) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    std::memcpy(&sin6.sin6_addr, v.addr, sizeof sin6.sin6_addr);
    sin6.sin6_port = v.port;
    std::memcpy(out, &sin6, sizeof sin6);
    return true;
  }
  return false;
}

// --- cgroups and namespaces ------------------------------------------------

bool netns_cookie(uint64_t* cookie, std::string* err) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = "socket: " + errno_str(errno);
    return false;
  }
  socklen_t len = sizeof *cookie;
  int rc = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, cookie, &len);
  int e = errno;
  close(fd);
  if (rc != 0) {
    *err = "getsockopt(SO_NETNS_COOKIE): " + errno_str(e) + (e == ENOPROTOOPT ? " (kernel < 5.14)" : "");
    return false;
  }
  return true;
}

bool is_cgroup2(const std::string& path, std::string* err) {
  struct statfs fs {};
  if (statfs(path.c_str(), &fs) != 0) {
    *err = path + ": " + errno_str(errno);
    return false;
  }
  if (fs.f_type != CGROUP2_SUPER_MAGIC) {
    *err = path + ": not a cgroup v2 directory";
    return false;
  }
  return true;
}

// --- the backend -----------------------------------------------------------

class EbpfBackend final : public Backend {
 public:
  EbpfBackend(shoal_redirect_bpf* skel, std::string mount, uint16_t listen_port)
      : skel_(skel),
        mount_(std::move(mount)),
        listen_port_(listen_port),
        accepted_fd_(bpf_map__fd(skel->maps.shoal_accepted)),
        stats_fd_(bpf_map__fd(skel->maps.shoal_stats)) {}

  ~EbpfBackend() override {
    destroy_links(&daemon_links_);
    for (Attachment& a : attached_) destroy_links(&a.links);
    shoal_redirect_bpf__destroy(skel_);
  }

  EbpfBackend(const EbpfBackend&) = delete;
  EbpfBackend& operator=(const EbpfBackend&) = delete;

  const char* name() const override { return "ebpf"; }

  bool attach(const std::string& path, std::string* err) override {
    std::string abs;
    if (!resolve(path, &abs, err)) return false;
    std::string e;
    const uint64_t id = cgroup_id(abs, &e);
    if (id == 0) {
      *err = "attach " + abs + ": " + e;
      return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = attached_.begin(); it != attached_.end(); ++it) {
      if (it->path != abs) continue;
      if (it->id == id) return true;
      // The cgroup was removed and made again: the old links hang on to
      // the removed one.
      destroy_links(&it->links);
      attached_.erase(it);
      break;
    }
    Attachment a{abs, id, {}};
    if (!attach_links(abs, "cgroup", &a.links, err)) return false;
    attached_.push_back(std::move(a));
    return true;
  }

  std::vector<std::string> prune(std::vector<std::string>* /*errs*/) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> gone;
    for (auto it = attached_.begin(); it != attached_.end();) {
      std::string e;
      if (cgroup_id(it->path, &e) == it->id) {
        ++it;
        continue;
      }
      destroy_links(&it->links);
      gone.push_back(it->path);
      it = attached_.erase(it);
    }
    return gone;
  }

  bool detach(const std::string& path, std::string* err) override {
    std::string abs;
    if (!resolve(path, &abs, err)) return false;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = attached_.begin(); it != attached_.end(); ++it) {
      if (it->path != abs) continue;
      destroy_links(&it->links);
      attached_.erase(it);
      return true;
    }
    *err = "detach " + abs + ": not attached";
    return false;
  }

  std::vector<std::string> attached() const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const Attachment& a : attached_) out.push_back(a.path);
    return out;
  }

  // Lock-free: getpeername(2), which runs accepted4/6 (the caller's own
  // call would do, but this one makes the order certain), and one bpf(2)
  // call on a map fd that lives as long as this object.
  bool original_dst(int fd, const sockaddr_storage& peer, OriginalDst* out, std::string* err) override {
    if (peer.ss_family != AF_INET && peer.ss_family != AF_INET6) {
      *err = "original destination of " + util::sockaddr_str(peer) + ": not an IP peer";
      return false;
    }
    sockaddr_storage again{};
    socklen_t len = sizeof again;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&again), &len) != 0) {
      *err = "getpeername of peer " + util::sockaddr_str(peer) + ": " + errno_str(errno);
      return false;
    }
    shoal_orig_dst v{};
    if (bpf_map_lookup_elem(accepted_fd_, &fd, &v) != 0) {
      int e = errno;
      if (e == ENOENT)
        *err = "no original destination for peer " + util::sockaddr_str(peer) +
               " (not redirected, or the client closed first)";
      else
        *err = "shoal_accepted lookup for peer " + util::sockaddr_str(peer) + ": " + errno_str(e);
      return false;
    }
    if (!to_sockaddr(v, &out->addr)) {
      *err = "original destination of peer " + util::sockaddr_str(peer) + ": bad family " +
             std::to_string(v.family);
      return false;
    }
    out->tgid = v.tgid;
    out->cgroup_id = v.cgroup_id;
    return true;
  }

  Stats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t sum[SHOAL_STAT_COUNT] = {};
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu > 0) {
      std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
      for (uint32_t i = 0; i < SHOAL_STAT_COUNT; i++) {
        if (bpf_map_lookup_elem(stats_fd_, &i, per_cpu.data()) != 0) continue;
        for (uint64_t v : per_cpu) sum[i] += v;
      }
    }
    Stats s;
    s.redirected = sum[SHOAL_STAT_REDIRECTED];
    s.skipped = sum[SHOAL_STAT_SKIPPED];
    s.blocked = sum[SHOAL_STAT_BLOCKED];
    return s;
  }

  // The programs that belong on the daemon's own cgroup, not on jobs'.
  bool daemon_side(const bpf_program* p) const {
    return p == skel_->progs.shoal_accepted4 || p == skel_->progs.shoal_accepted6;
  }

  // Attaches the job programs (daemon: the daemon's two instead) to the
  // cgroup directory abs; on failure destroys what it attached and says
  // which program failed. what: "cgroup", "scratch cgroup" or "the daemon's
  // cgroup", for the message.
  bool attach_links(const std::string& abs, const char* what, std::vector<bpf_link*>* links, std::string* err,
                    bool daemon = false) {
    int cg = open(abs.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
      *err = std::string("open ") + what + " " + abs + ": " + errno_str(errno);
      return false;
    }
    bpf_program* p = nullptr;
    bpf_object__for_each_program(p, skel_->obj) {
      if (daemon_side(p) != daemon) continue;
      bpf_link* link = bpf_program__attach_cgroup(p, cg);
      if (link == nullptr) {
        int e = errno;
        *err = std::string(bpf_program__section_name(p)) + ": attach to " + what + " " + abs + ": " +
               errno_str(e);
        destroy_links(links);
        close(cg);
        return false;
      }
      links->push_back(link);
    }
    // The links hold their own reference to the cgroup.
    close(cg);
    return true;
  }

  static void destroy_links(std::vector<bpf_link*>* links) {
    for (bpf_link* l : *links) bpf_link__destroy(l);
    links->clear();
  }

  // accepted4/6 on the cgroup the daemon's listeners were created in: the
  // kernel runs getpeername hooks of the socket's cgroup, and an accepted
  // socket inherits its listener's.
  bool attach_daemon(const std::string& own, std::string* err) {
    return attach_links(own, "the daemon's cgroup", &daemon_links_, err, true);
  }

 private:
  struct Attachment {
    std::string path;
    uint64_t id;  // the cgroup's id when attached: a recreated cgroup has a new one
    std::vector<bpf_link*> links;
  };

  // cgroup_path() rejects ".." and absolute paths outside the mount.
  bool resolve(const std::string& path, std::string* abs, std::string* err) const {
    return cgroup_path(mount_, path, abs, err);
  }

  shoal_redirect_bpf* skel_;
  const std::string mount_;
  const uint16_t listen_port_;
  const int accepted_fd_;
  const int stats_fd_;
  std::vector<bpf_link*> daemon_links_;  // accepted4/6 on the daemon's cgroup
  mutable std::mutex mu_;
  std::vector<Attachment> attached_;  // guarded by mu_
};

// Creates <mount>/shoal-probe-<pid>, attaches every program to it, detaches
// and removes it. False with *err naming the first failing step.
bool probe(EbpfBackend* b, const std::string& mount, std::string* err) {
  std::string dir = mount + "/shoal-probe-" + std::to_string(getpid());
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    *err = "create scratch cgroup " + dir + ": " + errno_str(errno);
    return false;
  }
  std::vector<bpf_link*> links;
  bool ok = b->attach_links(dir, "scratch cgroup", &links, err);
  EbpfBackend::destroy_links(&links);
  if (rmdir(dir.c_str()) != 0 && ok) {
    *err = "remove scratch cgroup " + dir + ": " + errno_str(errno);
    return false;
  }
  return ok;
}

}  // namespace

std::unique_ptr<Backend> open_ebpf(const Options& opt, std::string* err) {
  if (opt.ports.empty()) {
    *err = "ebpf: no ports to redirect";
    return nullptr;
  }
  for (uint16_t p : opt.ports) {
    if (p == 0) {
      *err = "ebpf: port 0 cannot be redirected";
      return nullptr;
    }
  }
  if (opt.listen_port == 0) {
    *err = "ebpf: listen_port is 0";
    return nullptr;
  }

  std::string mount = opt.cgroup_root;
  if (mount.empty() && !cgroup2_mount(&mount, err)) return nullptr;
  while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
  if (!is_cgroup2(mount, err)) return nullptr;

  uint64_t cookie = 0;
  if (!netns_cookie(&cookie, err)) return nullptr;

  std::string own, why;
  uint64_t own_id = 0;
  if (!cgroup_of_pid(getpid(), mount, &own, &why) || (own_id = cgroup_id(own, &why)) == 0) {
    *err = "ebpf: the daemon's own cgroup: " + why;
    return nullptr;
  }
  const uint64_t daemon_cg = opt.daemon_cgroup_id != 0 ? opt.daemon_cgroup_id : own_id;

  LibbpfCapture capture;
  auto with_log = [&capture](std::string msg) {
    std::string tail = capture.tail();
    return tail.empty() ? msg : msg + " (" + tail + ")";
  };

  shoal_redirect_bpf* skel = shoal_redirect_bpf__open();
  if (skel == nullptr) {
    *err = with_log("ebpf: open BPF object: " + errno_str(errno));
    return nullptr;
  }
  shoal_config& cfg = skel->rodata->shoal_cfg;
  cfg = shoal_config{};
  cfg.daemon_cgroup_id = daemon_cg;
  cfg.netns_cookie = cookie;
  cfg.mark = opt.mark;
  cfg.listen_port = htons(opt.listen_port);
  for (uint16_t p : opt.ports) cfg.ports[p >> 3] = static_cast<uint8_t>(cfg.ports[p >> 3] | (1u << (p & 7)));

  int rc = shoal_redirect_bpf__load(skel);
  if (rc != 0) {
    *err = with_log("ebpf: load BPF programs: " + errno_str(-rc));
    shoal_redirect_bpf__destroy(skel);
    return nullptr;
  }

  auto backend = std::make_unique<EbpfBackend>(skel, mount, opt.listen_port);
  if (!probe(backend.get(), mount, err)) return nullptr;
  std::string e;
  if (!backend->attach_daemon(own, &e)) {
    *err = "ebpf: " + e;
    return nullptr;
  }
  return backend;
}

}  // namespace shoal::redirect
