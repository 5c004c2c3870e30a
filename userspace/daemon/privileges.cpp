// Why each capability stays after start-up (kept_capabilities()). Measured
// by running every run-time feature (attach, pull, `shoalctl run`, detach,
// reload, cleanup, stop) with one capability fewer on Linux 6.18 with
// iptables-nft (tests/integration/t_privileges.sh checks the result):
//
//   cap_net_admin   both modes. SO_MARK on every origin and peer socket (so
//                   no hook or rule redirects shoald's own connects; 5.17+
//                   also accepts cap_net_raw); iptables/ip6tables rules,
//                   added and removed at attach and detach in iptables mode,
//                   swept by `shoalctl cleanup` in eBPF mode (the spawned
//                   iptables inherits no more than shoald holds). Without
//                   it, that cleanup fails.
//   cap_net_raw     both modes. iptables-legacy (a host that selects it with
//                   update-alternatives) opens a raw socket for every call;
//                   iptables-nft does not, so on this host it was not needed.
//   cap_bpf         ebpf mode. Before Linux 6.5 every bpf() call — the map
//                   lookup of each transparent connection's original
//                   destination, BPF_LINK_CREATE for `shoalctl attach` and
//                   `run` — needs cap_bpf (or cap_sys_admin) while
//                   unprivileged BPF is disabled, Debian's default; 6.5 and
//                   later check only at program load and map creation, which
//                   happen before the drop, so on 6.18 it was not needed.
//   mode off        nothing: listeners are bound and files opened before the
//                   drop; P2P, reload, GC and log reopening need none.
//
// Not kept, because shoald stays uid 0 and root owns what it touches: the
// cgroupfs files of job cgroups (mkdir, cgroup.procs, rmdir), the data and
// log directories, the CA key (mode 0600, owner root) read again on reload.
// Listeners below 1024 are bound before the drop and never rebound.
#include "privileges.h"

#include <dirent.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace shoal::daemon {

namespace {

constexpr CapSet bit(int c) { return CapSet{1} << c; }

// The kernel's names, index = capability number (linux/capability.h).
constexpr const char* kNames[] = {"cap_chown",
                                  "cap_dac_override",
                                  "cap_dac_read_search",
                                  "cap_fowner",
                                  "cap_fsetid",
                                  "cap_kill",
                                  "cap_setgid",
                                  "cap_setuid",
                                  "cap_setpcap",
                                  "cap_linux_immutable",
                                  "cap_net_bind_service",
                                  "cap_net_broadcast",
                                  "cap_net_admin",
                                  "cap_net_raw",
                                  "cap_ipc_lock",
                                  "cap_ipc_owner",
                                  "cap_sys_module",
                                  "cap_sys_rawio",
                                  "cap_sys_chroot",
                                  "cap_sys_ptrace",
                                  "cap_sys_pacct",
                                  "cap_sys_admin",
                                  "cap_sys_boot",
                                  "cap_sys_nice",
                                  "cap_sys_resource",
                                  "cap_sys_time",
                                  "cap_sys_tty_config",
                                  "cap_mknod",
                                  "cap_lease",
                                  "cap_audit_write",
                                  "cap_audit_control",
                                  "cap_setfcap",
                                  "cap_mac_override",
                                  "cap_mac_admin",
                                  "cap_syslog",
                                  "cap_wake_alarm",
                                  "cap_block_suspend",
                                  "cap_audit_read",
                                  "cap_perfmon",
                                  "cap_bpf",
                                  "cap_checkpoint_restore"};
constexpr int kNameCount = static_cast<int>(sizeof kNames / sizeof kNames[0]);

int last_cap() {
  std::ifstream f("/proc/sys/kernel/cap_last_cap");
  int n = CAP_LAST_CAP;
  if (!(f >> n) || n < 0 || n > 63) n = CAP_LAST_CAP;
  return n;
}

std::string set_text(const CapState& s) {
  char b[160];
  snprintf(b, sizeof b, "CapEff %016llx CapPrm %016llx CapBnd %016llx",
           static_cast<unsigned long long>(s.eff), static_cast<unsigned long long>(s.prm),
           static_cast<unsigned long long>(s.bnd));
  return b;
}

}  // namespace

CapSet kept_capabilities(const std::string& mode) {
  if (mode == "ebpf") return bit(CAP_BPF) | bit(CAP_NET_ADMIN) | bit(CAP_NET_RAW);
  if (mode == "iptables") return bit(CAP_NET_ADMIN) | bit(CAP_NET_RAW);
  return 0;
}

std::string cap_names(CapSet s) {
  std::string out;
  for (int c = 0; c < 64; ++c) {
    if ((s & bit(c)) == 0) continue;
    if (!out.empty()) out += ',';
    out += c < kNameCount ? kNames[c] : "cap_" + std::to_string(c);
  }
  return out.empty() ? "none" : out;
}

bool read_caps(const std::string& status_path, CapState* out, std::string* err) {
  std::ifstream f(status_path);
  if (!f) {
    *err = "cannot read " + status_path;
    return false;
  }
  std::string line;
  int seen = 0;
  while (std::getline(f, line)) {
    CapSet* dst = nullptr;
    if (line.rfind("CapEff:", 0) == 0) dst = &out->eff;
    if (line.rfind("CapPrm:", 0) == 0) dst = &out->prm;
    if (line.rfind("CapBnd:", 0) == 0) dst = &out->bnd;
    if (line.rfind("CapAmb:", 0) == 0) dst = &out->amb;
    if (line.rfind("CapInh:", 0) == 0) dst = &out->inh;
    if (dst == nullptr) continue;
    *dst = std::strtoull(line.c_str() + 7, nullptr, 16);
    ++seen;
  }
  if (seen != 5) {
    *err = status_path + ": no Cap* lines";
    return false;
  }
  return true;
}

bool drop_capabilities(CapSet keep, CapSet* kept, std::string* err) {
  CapState cur;
  if (!read_caps("/proc/thread-self/status", &cur, err)) return false;
  keep &= cur.prm;
  // First: from here on no execve (iptables) can gain anything this
  // process does not hold, whatever the binary's set-uid bit or file caps.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    *err = std::string("prctl(PR_SET_NO_NEW_PRIVS): ") + strerror(errno);
    return false;
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    *err = std::string("prctl(PR_CAP_AMBIENT_CLEAR_ALL): ") + strerror(errno);
    return false;
  }
  // Dropping from the bounding set needs CAP_SETPCAP. Without it (an
  // unprivileged run, or a unit whose CapabilityBoundingSet lacks it) the
  // bounding set stays as it is; no_new_privs already caps what a child
  // can get at the permitted set below.
  bool can_bound = (cur.eff & bit(CAP_SETPCAP)) != 0;
  for (int c = 0, last = last_cap(); can_bound && c <= last; ++c) {
    if ((keep & bit(c)) != 0 || prctl(PR_CAPBSET_READ, c, 0, 0, 0) <= 0) continue;
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0) {
      *err = "cannot drop " + cap_names(bit(c)) + " from the bounding set: " + strerror(errno);
      return false;
    }
  }
  __user_cap_header_struct hdr{};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  hdr.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  data[0].effective = data[0].permitted = static_cast<uint32_t>(keep);
  data[1].effective = data[1].permitted = static_cast<uint32_t>(keep >> 32);
  if (syscall(SYS_capset, &hdr, data) != 0) {
    *err = std::string("capset: ") + strerror(errno);
    return false;
  }
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  *kept = keep;
  return true;
}

bool verify_all_threads(CapSet want, std::string* err) {
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) {
    *err = std::string("cannot list /proc/self/task: ") + strerror(errno);
    return false;
  }
  CapState self;
  if (!read_caps("/proc/thread-self/status", &self, err)) {
    closedir(d);
    return false;
  }
  bool ok = true;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string dir = std::string("/proc/self/task/") + e->d_name;
    CapState s;
    std::string rerr;
    if (!read_caps(dir + "/status", &s, &rerr)) continue;  // the thread ended
    if (s.eff != want || s.prm != want || s.bnd != self.bnd || s.amb != 0) {
      std::string comm;
      std::ifstream(dir + "/comm") >> comm;
      *err = "thread " + std::string(e->d_name) + " (" + comm + ") kept " + set_text(s) + ", want " +
             cap_names(want);
      ok = false;
      break;
    }
  }
  closedir(d);
  return ok;
}

std::string ca_key_owner_warning(const std::string& key_path) {
  struct stat st {};
  if (key_path.empty() || stat(key_path.c_str(), &st) != 0) return "";
  if (st.st_uid == geteuid()) return "";
  return "the CA key " + key_path + " is owned by uid " + std::to_string(st.st_uid) +
         ", not by shoald's uid " + std::to_string(geteuid()) + ": that user can read it too (chown " +
         std::to_string(geteuid()) + " " + key_path + ")";
}

}  // namespace shoal::daemon
