// Internals of the redirect module's cgroup helpers, shared by cgroup.cpp and
// iptables.cpp (and their unit tests). Not part of the module's interface.
#pragma once

#include <string>

namespace shoal::redirect::internal {

// One cgroup2 entry of /proc/self/mountinfo, octal escapes decoded.
struct Cgroup2Mount {
  std::string mount_point;  // where it is mounted, e.g. /sys/fs/cgroup/unified
  std::string root;         // field 4: the cgroup this mount shows, as the
                            // kernel names it ("/" unless a subtree of the
                            // hierarchy was mounted or bind-mounted)
};

// The first cgroup2 mount in mountinfo text that no later mount covers at the
// same mount point. False when there is none.
bool cgroup2_mount_entry_from(const std::string& mountinfo, Cgroup2Mount* out);

// The root field of the cgroup2 mount at mount_point in /proc/self/mountinfo;
// "/" when mount_point is not found there (e.g. a cgroup_root configured by
// hand that the caller has checked itself).
std::string cgroup2_mount_root(const std::string& mount_point);

// The kernel's name for the cgroup directory abs (a normalized path under
// mount_point, as cgroup_path() returns): the form /proc/PID/cgroup shows and
// xt_cgroup's --path resolves, relative to the caller's cgroup namespace
// root. E.g. ("/sys/fs/cgroup", "/", "/sys/fs/cgroup/a/b") -> "/a/b".
std::string kernel_cgroup_name(const std::string& mount_point, const std::string& mount_root,
                               const std::string& abs);

}  // namespace shoal::redirect::internal
