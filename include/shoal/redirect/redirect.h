// Transparent interception: how a job's outbound TCP connects to the
// configured ports (443 by default) reach Shoal's transparent listener, and
// how the listener learns where each accepted connection was going.
//
// Two backends behind one interface:
//   ebpf      cgroup/connect4+6, getpeername4+6 and sendmsg4+6 programs on
//             job cgroups and getpeername4+6 on the daemon's own
//             (bpf/shoal_redirect.bpf.c), attached with bpf_links the daemon
//             owns (never pinned: if shoald dies the kernel detaches them
//             and jobs connect directly — fail-open); the original
//             destination is copied from the client's socket to the
//             accepted one when the daemon calls getpeername() on it.
//   iptables  chains of Shoal's own (iptables and ip6tables): SHOAL-REDIRECT
//             in nat OUTPUT with one `-m cgroup --path` REDIRECT rule per
//             attached cgroup, SHOAL-REJECT in filter OUTPUT refusing UDP to
//             the ports; the original destination from SO_ORIGINAL_DST /
//             IP6T_SO_ORIGINAL_DST. Rules outlive a SIGKILL (fail-closed)
//             until cleanup_iptables() or the next open_iptables() runs.
// The daemon's own sockets are never redirected: they carry Options::mark
// (SO_MARK). The eBPF backend also skips the daemon's cgroup; the iptables
// one cannot (xt_cgroup matches descendants too) and relies on the mark.
//
// Thread-safety: original_dst() may be called from any event loop at once;
// attach()/detach()/attached()/prune()/stats() from the control thread (they
// lock).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shoal::redirect {

struct Options {
  std::vector<uint16_t> ports{443};  // TCP destination ports to redirect
  uint16_t listen_port = 65003;      // the transparent listener, on 127.0.0.1 and ::1
  uint32_t mark = 0x5348;            // SO_MARK on the daemon's own sockets (iptables: nonzero)
  uint64_t daemon_cgroup_id = 0;     // skipped by the hooks (0 = look it up)
  std::string cgroup_root;           // the cgroup v2 mount ("" = find it)
};

// Where an accepted connection was going, and who made it.
struct OriginalDst {
  sockaddr_storage addr{};  // AF_INET or AF_INET6 (an IPv4-mapped v6 peer is reported as AF_INET)
  uint32_t tgid = 0;        // in the initial PID namespace; 0 when the backend cannot tell (iptables)
  uint64_t cgroup_id = 0;   // 0 when the backend cannot tell (iptables)
};

// iptables: the packet counters of the Shoal rules (nat rules see a
// connection's first packet only, so connects; UDP counts datagrams).
struct Stats {
  uint64_t redirected = 0;  // connects rewritten to the listener
  uint64_t skipped = 0;     // connects/sends to a redirected port left alone (daemon cgroup or mark,
                            // to the listener, other netns; TCP also: socket bound to a device, IPv6
                            // link-local destination)
  uint64_t blocked = 0;     // UDP connects/sends to a redirected port refused with EPERM
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "ebpf" or "iptables"
  // path: absolute, or relative to the cgroup v2 mount. Attaching twice is
  // not an error; attaching a path whose cgroup was removed and made again
  // since it was attached replaces the stale attachment. False with *err
  // naming the path and the reason.
  virtual bool attach(const std::string& path, std::string* err) = 0;
  virtual bool detach(const std::string& path, std::string* err) = 0;
  // Absolute paths of the attached cgroups, in attach order.
  virtual std::vector<std::string> attached() const = 0;
  // Drops every attachment whose cgroup is gone: its directory was removed
  // (a batch system's job ended: slurmstepd removes job_<id> when the job's
  // processes have exited), or removed and made again under the same name
  // (a new cgroup the old links or rules never covered). eBPF: the links are
  // released (the kernel stopped running them when the cgroup went); iptables:
  // the rules are deleted. Returns the absolute paths dropped; a rule that
  // could not be deleted is reported in *errs (the chains' teardown removes
  // it at the latest).
  virtual std::vector<std::string> prune(std::vector<std::string>* errs) = 0;
  // The original destination of a connection accepted on the transparent
  // listener (fd: the accepted socket; peer: its remote address, i.e. the
  // client's own address and port). Calls for the same connection give the
  // same answer. The eBPF backend finds the client's socket, so not one
  // that has already been closed.
  // False with *err when there is none (the connection was not redirected).
  virtual bool original_dst(int fd, const sockaddr_storage& peer, OriginalDst* out, std::string* err) = 0;
  virtual Stats stats() const = 0;
};

// Each returns nullptr with *err saying why the backend cannot work here
// (e.g. "cgroup/connect4: attach to scratch cgroup /sys/fs/cgroup/unified/
// shoal-probe-123: Operation not permitted"). open_ebpf probes by attaching
// to a scratch cgroup it creates and removes. open_iptables first removes
// any Shoal chains left behind (a killed daemon's: only one iptables backend
// can live in a network namespace), then checks, before any traffic reaches
// its chains, that the cgroup match, multiport, REDIRECT and REJECT are
// accepted; it runs iptables and ip6tables (whichever variant the system's
// alternatives select; Debian 12: iptables-nft) and may block for seconds,
// so call it and attach/detach/stats off the event loops. REDIRECT sends to
// 127.0.0.1 and ::1: the listener must be bound on both.
std::unique_ptr<Backend> open_ebpf(const Options& opt, std::string* err);
std::unique_ptr<Backend> open_iptables(const Options& opt, std::string* err);

// Removes every Shoal chain (SHOAL-*) and every rule jumping to one from the
// nat and filter tables of iptables and ip6tables, nft and legacy variants
// both (shoalctl cleanup; a daemon starting in another mode). Idempotent.
// Returns how many chains were removed, -1 with *err on failure.
int cleanup_iptables(std::string* err);

// --- cgroup v2 helpers ---------------------------------------------------

// The cgroup2 mount point in /proc/self/mountinfo text ("" when none):
// /sys/fs/cgroup on pure-v2 hosts, /sys/fs/cgroup/unified on hybrid ones.
std::string cgroup2_mount_from(const std::string& mountinfo);
// Reads /proc/self/mountinfo. False with *err when there is no cgroup2 mount.
bool cgroup2_mount(std::string* path, std::string* err);
// Absolute path for a cgroup given as absolute (must be the mount or under
// it) or relative to the mount; normalizes "//", "." and trailing slashes;
// rejects ".." components. Pure: does not look at the file system. False
// with *err naming the path.
bool cgroup_path(const std::string& mount, const std::string& path, std::string* abs, std::string* err);
// The cgroup id the kernel reports (bpf_get_current_cgroup_id) for a cgroup
// directory: its kernfs id (file handle; the inode number on 64-bit hosts).
// 0 with *err when abs_path is not a cgroup2 directory.
uint64_t cgroup_id(const std::string& abs_path, std::string* err);
// The cgroup v2 path (absolute, under mount) of process pid, from
// /proc/PID/cgroup's "0::" line (mapped through the mount's root when only a
// subtree is mounted). False with *err, also when that cgroup was removed or
// is not visible under mount.
bool cgroup_of_pid(int pid, const std::string& mount, std::string* abs, std::string* err);

}  // namespace shoal::redirect
