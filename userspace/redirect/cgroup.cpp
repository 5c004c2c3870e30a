// cgroup v2 helpers: where the unified hierarchy is mounted, how a cgroup
// given by the user maps to a directory under that mount and to the kernel's
// own name for it, its id, and which cgroup a process is in.
//
// Two namespaces of names meet here. A directory under the mount point
// (/sys/fs/cgroup/unified/job) is what users and the eBPF backend use; the
// kernel names the same cgroup relative to the caller's cgroup namespace root
// (/proc/PID/cgroup's "0::/job", xt_cgroup's --path). The two differ by the
// mount point and by the mount's root (field 4 of mountinfo), which is "/"
// unless only a subtree of the hierarchy was mounted there.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cgroup_internal.h"
#include "shoal/redirect/redirect.h"

namespace shoal::redirect {
namespace {

struct MountEntry {
  std::string id;
  std::string parent;
  std::string root;
  std::string mount_point;
  std::string fstype;
};

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string unescape_octal(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const char a = s[i + 1], b = s[i + 2], c = s[i + 3];
      if (a >= '0' && a <= '3' && b >= '0' && b <= '7' && c >= '0' && c <= '7') {
        out += static_cast<char>((a - '0') * 64 + (b - '0') * 8 + (c - '0'));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::vector<std::string> split_spaces(const std::string& line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < line.size()) {
    size_t j = line.find(' ', i);
    if (j == std::string::npos) j = line.size();
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

// One line: ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE
// SOURCE SUPER_OPTIONS. Optional fields ("shared:5", "master:1") come in any
// number, so the fstype is found after the lone "-" field. Paths are escaped,
// so a mount point with " - " in its name stays one field. False for a line
// that does not have this shape.
bool parse_mountinfo_line(const std::string& line, MountEntry* e) {
  std::vector<std::string> f = split_spaces(line);
  if (f.size() < 9) return false;
  size_t sep = 6;
  while (sep < f.size() && f[sep] != "-") ++sep;
  if (sep + 1 >= f.size()) return false;
  e->id = f[0];
  e->parent = f[1];
  e->root = unescape_octal(f[3]);
  e->mount_point = unescape_octal(f[4]);
  e->fstype = f[sep + 1];
  return true;
}

std::vector<MountEntry> parse_mountinfo(const std::string& text) {
  std::vector<MountEntry> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    MountEntry e;
    if (parse_mountinfo_line(line, &e)) out.push_back(std::move(e));
  }
  return out;
}

// A mount is hidden when another is mounted on top of it at the same point
// (its child in mountinfo with the same mount point).
bool covered(const std::vector<MountEntry>& all, const MountEntry& m) {
  for (const MountEntry& o : all)
    if (o.parent == m.id && o.mount_point == m.mount_point) return true;
  return false;
}

bool read_file(const std::string& path, std::string* out, std::string* err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *err = path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// Splits an absolute or relative path into its components, dropping empty
// ones and ".". False on "..".
bool components(const std::string& path, std::vector<std::string>* out) {
  out->clear();
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string c = path.substr(i, j - i);
    if (c == "..") return false;
    if (!c.empty() && c != ".") out->push_back(std::move(c));
    i = j + 1;
  }
  return true;
}

std::string join(const std::vector<std::string>& comps, size_t from) {
  std::string out;
  for (size_t i = from; i < comps.size(); ++i) out += "/" + comps[i];
  return out.empty() ? "/" : out;
}

}  // namespace

namespace internal {

bool cgroup2_mount_entry_from(const std::string& mountinfo, Cgroup2Mount* out) {
  std::vector<MountEntry> all = parse_mountinfo(mountinfo);
  for (const MountEntry& m : all) {
    if (m.fstype != "cgroup2" || covered(all, m)) continue;
    out->mount_point = m.mount_point;
    out->root = m.root.empty() ? "/" : m.root;
    return true;
  }
  return false;
}

std::string cgroup2_mount_root(const std::string& mount_point) {
  std::string text, err;
  if (!read_file("/proc/self/mountinfo", &text, &err)) return "/";
  std::vector<std::string> want;
  if (!components(mount_point, &want)) return "/";
  std::vector<MountEntry> all = parse_mountinfo(text);
  for (const MountEntry& m : all) {
    std::vector<std::string> have;
    if (m.fstype != "cgroup2" || covered(all, m) || !components(m.mount_point, &have) || have != want)
      continue;
    return m.root.empty() ? "/" : m.root;
  }
  return "/";
}

std::string kernel_cgroup_name(const std::string& mount_point, const std::string& mount_root,
                               const std::string& abs) {
  std::vector<std::string> m, a, r;
  components(mount_point, &m);
  components(abs, &a);
  components(mount_root, &r);
  for (size_t i = m.size(); i < a.size(); ++i) r.push_back(a[i]);
  return join(r, 0);
}

}  // namespace internal

std::string cgroup2_mount_from(const std::string& mountinfo) {
  internal::Cgroup2Mount m;
  return internal::cgroup2_mount_entry_from(mountinfo, &m) ? m.mount_point : std::string();
}

bool cgroup2_mount(std::string* path, std::string* err) {
  std::string text;
  if (!read_file("/proc/self/mountinfo", &text, err)) return false;
  *path = cgroup2_mount_from(text);
  if (path->empty()) {
    *err =
        "no cgroup2 file system in /proc/self/mountinfo (mount one, e.g. "
        "mount -t cgroup2 none /sys/fs/cgroup/unified)";
    return false;
  }
  return true;
}

bool cgroup_path(const std::string& mount, const std::string& path, std::string* abs, std::string* err) {
  std::vector<std::string> m, p;
  if (mount.empty() || mount[0] != '/' || !components(mount, &m)) {
    *err = "cgroup2 mount \"" + mount + "\" is not an absolute path";
    return false;
  }
  if (path.empty()) {
    *err = "empty cgroup path";
    return false;
  }
  if (path.find('\0') != std::string::npos) {
    *err = "cgroup path contains a NUL byte";
    return false;
  }
  if (!components(path, &p)) {
    *err = path + ": \"..\" is not allowed in a cgroup path";
    return false;
  }
  if (path[0] == '/') {
    // Absolute: must name the mount itself or something below it, compared
    // by whole components (/sys/fs/cgroup/unified2 is not under .../unified).
    bool under = p.size() >= m.size();
    for (size_t i = 0; under && i < m.size(); ++i) under = p[i] == m[i];
    if (!under) {
      *err = path + ": not under the cgroup2 mount " + join(m, 0) +
             " (give it relative to the mount, or as an absolute path under it)";
      return false;
    }
    *abs = join(p, 0);
    return true;
  }
  for (std::string& c : p) m.push_back(std::move(c));
  *abs = join(m, 0);
  return true;
}

uint64_t cgroup_id(const std::string& abs_path, std::string* err) {
  struct statfs sfs {};
  if (statfs(abs_path.c_str(), &sfs) != 0) {
    *err = abs_path + ": " + std::strerror(errno);
    return 0;
  }
  struct stat st {};
  if (stat(abs_path.c_str(), &st) != 0) {
    *err = abs_path + ": " + std::strerror(errno);
    return 0;
  }
  if (static_cast<unsigned long>(sfs.f_type) != CGROUP2_SUPER_MAGIC || !S_ISDIR(st.st_mode)) {
    *err = abs_path + ": not a cgroup2 directory";
    return 0;
  }
  // kernfs encodes a node's 64-bit id (what bpf_get_current_cgroup_id()
  // returns) as its file handle; the inode number is the same id on 64-bit
  // hosts and serves as the fallback.
  union {
    struct file_handle fh;
    unsigned char bytes[sizeof(struct file_handle) + sizeof(uint64_t)];
  } h{};
  h.fh.handle_bytes = sizeof(uint64_t);
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, abs_path.c_str(), &h.fh, &mount_id, 0) == 0 &&
      h.fh.handle_bytes == sizeof(uint64_t)) {
    uint64_t id = 0;
    std::memcpy(&id, h.fh.f_handle, sizeof id);
    if (id != 0) return id;
  }
  return static_cast<uint64_t>(st.st_ino);
}

bool cgroup_of_pid(int pid, const std::string& mount, std::string* abs, std::string* err) {
  const std::string file = "/proc/" + std::to_string(pid) + "/cgroup";
  std::string text;
  if (!read_file(file, &text, err)) return false;
  std::istringstream in(text);
  std::string line, name;
  bool found = false;
  while (std::getline(in, line)) {
    if (line.compare(0, 3, "0::") == 0) {
      name = line.substr(3);
      found = true;
      break;
    }
  }
  if (!found || name.empty() || name[0] != '/') {
    *err = file + ": no cgroup v2 (\"0::\") line";
    return false;
  }
  static const std::string kDeleted = " (deleted)";
  if (name.size() > kDeleted.size() &&
      name.compare(name.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
    *err = "pid " + std::to_string(pid) + ": its cgroup " + name.substr(0, name.size() - kDeleted.size()) +
           " has been removed";
    return false;
  }
  // name is relative to our cgroup namespace root, like the mount's root.
  std::vector<std::string> n, r;
  const std::string root = internal::cgroup2_mount_root(mount);
  bool inside = components(name, &n) && components(root, &r) && n.size() >= r.size();
  for (size_t i = 0; inside && i < r.size(); ++i) inside = n[i] == r[i];
  if (!inside) {
    *err = "pid " + std::to_string(pid) + " is in cgroup " + name + ", which the cgroup2 mount " + mount +
           " (showing " + root + ") does not contain";
    return false;
  }
  std::string rel;
  for (size_t i = r.size(); i < n.size(); ++i) rel += (rel.empty() ? "" : "/") + n[i];
  if (rel.empty()) return cgroup_path(mount, mount, abs, err);
  return cgroup_path(mount, rel, abs, err);
}

}  // namespace shoal::redirect
