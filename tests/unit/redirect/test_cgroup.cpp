// Unit tests for the redirect module's cgroup v2 helpers: mountinfo parsing
// (hybrid and pure-v2 layouts, escapes, over-mounts), path mapping, and,
// as root, ids and process membership on this host's real hierarchy.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "../../../userspace/redirect/cgroup_internal.h"
#include "redirect_test.h"
#include "shoal/redirect/redirect.h"
// clang-format off
#include "../cmocka_cpp.h"
// clang-format on

namespace shoal::redirect::test {
namespace {

// A systemd host in hybrid mode: v1 controllers under /sys/fs/cgroup/*, the
// unified hierarchy at /sys/fs/cgroup/unified, optional fields everywhere.
const char* const kHybrid =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "25 24 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate\n"
    "27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup "
    "rw,xattr,name=systemd\n"
    "30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory\n"
    "31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup "
    "rw,cpu,cpuacct\n";

// This CI machine: hybrid too, no optional fields, cgroup2 listed last.
const char* const kHybridNoSystemd =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

const char* const kPureV2 =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "28 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "29 24 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw\n";

// cgroup v1 only, with "cgroup2" everywhere but in the fstype field.
const char* const kNone =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "25 22 0:23 / /sys/fs/cgroup ro shared:8 - tmpfs cgroup2 ro,mode=755\n"
    "26 25 0:24 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup2 rw,memory\n"
    "27 22 0:25 / /mnt/cgroup2 rw shared:10 - ext4 /dev/cgroup2 rw\n";

void test_mountinfo_hybrid(void**) {
  assert_string_equal(cgroup2_mount_from(kHybrid).c_str(), "/sys/fs/cgroup/unified");
  assert_string_equal(cgroup2_mount_from(kHybridNoSystemd).c_str(), "/sys/fs/cgroup/unified");
}

void test_mountinfo_pure_v2(void**) {
  assert_string_equal(cgroup2_mount_from(kPureV2).c_str(), "/sys/fs/cgroup");
  internal::Cgroup2Mount m;
  assert_true(internal::cgroup2_mount_entry_from(kPureV2, &m));
  assert_string_equal(m.root.c_str(), "/");
}

void test_mountinfo_none(void**) {
  assert_string_equal(cgroup2_mount_from(kNone).c_str(), "");
  assert_string_equal(cgroup2_mount_from("").c_str(), "");
  // Malformed lines are skipped, not misread.
  assert_string_equal(cgroup2_mount_from("garbage\n1 2 3\n"
                                         "41 31 0:38 / /x rw,relatime cgroup2 cgroup2 rw\n"
                                         "42 31 0:39 / /y rw,relatime - \n")
                          .c_str(),
                      "");
}

void test_mountinfo_escapes(void**) {
  // Space (\040), backslash (\134), tab (\011); several optional fields.
  assert_string_equal(
      cgroup2_mount_from(
          "50 22 0:40 / /tmp/my\\040cg\\134x\\011y rw shared:2 master:1 unbindable - cgroup2 none rw\n")
          .c_str(),
      "/tmp/my cg\\x\ty");
  // " - " inside a mount point is escaped, so it does not end the optional
  // fields early.
  assert_string_equal(cgroup2_mount_from("51 22 0:41 / /mnt/a\\040-\\040b rw - cgroup2 cgroup2 rw\n").c_str(),
                      "/mnt/a - b");
  // A backslash not followed by three octal digits stays as it is.
  assert_string_equal(cgroup2_mount_from("52 22 0:42 / /mnt/c\\9x\\04 rw - cgroup2 cgroup2 rw\n").c_str(),
                      "/mnt/c\\9x\\04");
  // The root field is decoded too: a subtree mounted in a container.
  internal::Cgroup2Mount m;
  assert_true(internal::cgroup2_mount_entry_from(
      "53 22 0:43 /job\\040slice/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", &m));
  assert_string_equal(m.mount_point.c_str(), "/sys/fs/cgroup");
  assert_string_equal(m.root.c_str(), "/job slice/x");
}

void test_mountinfo_overmounted(void**) {
  // A cgroup2 at /sys/fs/cgroup hidden by a tmpfs mounted on top of it, and
  // a second cgroup2 mounted inside that tmpfs: the visible one wins.
  const char* text =
      "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
      "31 30 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
      "32 31 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
  assert_string_equal(cgroup2_mount_from(text).c_str(), "/sys/fs/cgroup/unified");
}

void test_kernel_cgroup_name(void**) {
  using internal::kernel_cgroup_name;
  const std::string mp = "/sys/fs/cgroup/unified";
  assert_string_equal(kernel_cgroup_name(mp, "/", mp).c_str(), "/");
  assert_string_equal(kernel_cgroup_name(mp, "/", mp + "/a/b").c_str(), "/a/b");
  assert_string_equal(kernel_cgroup_name(mp, "/docker/abc", mp + "/job").c_str(), "/docker/abc/job");
  assert_string_equal(kernel_cgroup_name("/", "/", "/job").c_str(), "/job");
}

void test_cgroup_path(void**) {
  const std::string m = "/sys/fs/cgroup/unified";
  std::string abs, err;
  assert_true(cgroup_path(m, "job.slice/a", &abs, &err));
  assert_string_equal(abs.c_str(), "/sys/fs/cgroup/unified/job.slice/a");
  assert_true(cgroup_path(m + "/", "./job.slice//a/", &abs, &err));
  assert_string_equal(abs.c_str(), "/sys/fs/cgroup/unified/job.slice/a");
  assert_true(cgroup_path(m, m + "/job.slice", &abs, &err));
  assert_string_equal(abs.c_str(), "/sys/fs/cgroup/unified/job.slice");
  assert_true(cgroup_path(m, m, &abs, &err));
  assert_string_equal(abs.c_str(), m.c_str());
  assert_true(cgroup_path(m, m + "/", &abs, &err));
  assert_string_equal(abs.c_str(), m.c_str());
  assert_true(cgroup_path(m, "a b", &abs, &err));  // any byte but '/' and NUL is a valid name
  assert_string_equal(abs.c_str(), "/sys/fs/cgroup/unified/a b");
  assert_true(cgroup_path("/", "/x", &abs, &err));
  assert_string_equal(abs.c_str(), "/x");

  abs = "untouched";
  err.clear();
  assert_false(cgroup_path(m, "../../etc", &abs, &err));
  assert_non_null(strstr(err.c_str(), ".."));
  assert_false(cgroup_path(m, m + "/a/../../../etc", &abs, &err));
  assert_false(cgroup_path(m, "a/..", &abs, &err));
  assert_false(cgroup_path(m, "/etc", &abs, &err));
  assert_non_null(strstr(err.c_str(), "not under the cgroup2 mount /sys/fs/cgroup/unified"));
  // Compared by components, not as a string prefix.
  assert_false(cgroup_path(m, "/sys/fs/cgroup/unified2/x", &abs, &err));
  assert_false(cgroup_path(m, "/sys/fs/cgroup", &abs, &err));
  assert_false(cgroup_path(m, "", &abs, &err));
  assert_false(cgroup_path(m, std::string("a\0b", 3), &abs, &err));
  assert_false(cgroup_path("", "a", &abs, &err));
  assert_false(cgroup_path("relative/mount", "a", &abs, &err));
  assert_string_equal(abs.c_str(), "untouched");
}

// --- the real hierarchy ----------------------------------------------------

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_cgroup2_dir(const std::string& path) {
  struct statfs s {};
  return statfs(path.c_str(), &s) == 0 && static_cast<unsigned long>(s.f_type) == CGROUP2_SUPER_MAGIC;
}

std::string g_mount;  // this host's cgroup2 mount
std::string g_dir;    // a scratch cgroup under it (root only)

int group_setup(void**) {
  std::string err;
  if (!cgroup2_mount(&g_mount, &err)) {
    fprintf(stderr, "cgroup tests: %s\n", err.c_str());
    return 0;  // the tests that need it skip
  }
  if (geteuid() == 0) {
    g_dir = g_mount + "/shoal-test-cgroup-" + std::to_string(getpid());
    if (mkdir(g_dir.c_str(), 0755) != 0) {
      fprintf(stderr, "cgroup tests: mkdir %s: %s\n", g_dir.c_str(), strerror(errno));
      g_dir.clear();
    }
  }
  return 0;
}

int group_teardown(void**) {
  if (!g_dir.empty() && rmdir(g_dir.c_str()) != 0)
    fprintf(stderr, "cgroup tests: rmdir %s: %s\n", g_dir.c_str(), strerror(errno));
  return 0;
}

void need_mount() {
  if (g_mount.empty()) {
    fprintf(stderr, "skipped: no cgroup2 mount on this host\n");
    skip();
  }
}

void need_scratch() {
  need_mount();
  if (g_dir.empty()) {
    fprintf(stderr, "skipped: needs root to create a cgroup under %s\n", g_mount.c_str());
    skip();
  }
}

void test_real_mount(void**) {
  need_mount();
  assert_string_equal(g_mount.c_str(), cgroup2_mount_from(read_all("/proc/self/mountinfo")).c_str());
  assert_true(is_cgroup2_dir(g_mount));
  struct stat st {};
  assert_int_equal(stat((g_mount + "/cgroup.procs").c_str(), &st), 0);
}

void test_real_cgroup_id(void**) {
  need_scratch();
  std::string err;
  struct stat root_st {
  }, dir_st{};
  assert_int_equal(stat(g_mount.c_str(), &root_st), 0);
  assert_int_equal(stat(g_dir.c_str(), &dir_st), 0);
  uint64_t root_id = cgroup_id(g_mount, &err);
  uint64_t dir_id = cgroup_id(g_dir, &err);
  // On a 64-bit host the kernfs id is also the inode number.
  assert_int_equal(root_id, static_cast<uint64_t>(root_st.st_ino));
  assert_int_equal(dir_id, static_cast<uint64_t>(dir_st.st_ino));
  assert_int_not_equal(dir_id, 0);
  assert_int_not_equal(dir_id, root_id);
  if (internal::cgroup2_mount_root(g_mount) == "/")
    assert_int_equal(root_id, 1);  // the hierarchy's root cgroup

  err.clear();
  assert_int_equal(cgroup_id(g_dir + "/nonexistent", &err), 0);
  assert_non_null(strstr(err.c_str(), "No such file"));
  err.clear();
  assert_int_equal(cgroup_id("/tmp", &err), 0);
  assert_non_null(strstr(err.c_str(), "not a cgroup2 directory"));
  err.clear();
  assert_int_equal(cgroup_id(g_dir + "/cgroup.procs", &err), 0);  // a file, not a cgroup
  assert_non_null(strstr(err.c_str(), "not a cgroup2 directory"));
}

void test_real_cgroup_of_pid(void**) {
  need_mount();
  std::string abs, err;
  assert_true(cgroup_of_pid(getpid(), g_mount, &abs, &err));
  std::string self = read_all("/proc/self/cgroup");
  size_t at = self.find("0::");
  assert_true(at != std::string::npos);
  std::string name = self.substr(at + 3, self.find('\n', at) - at - 3);
  assert_string_equal(abs.c_str(), (name == "/" ? g_mount : g_mount + name).c_str());

  err.clear();
  assert_false(cgroup_of_pid(0x3fffffff, g_mount, &abs, &err));  // above pid_max
  assert_non_null(strstr(err.c_str(), "/proc/1073741823/cgroup"));
}

void test_real_cgroup_of_moved_child(void**) {
  need_scratch();
  int ready[2], release[2];
  assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
  assert_int_equal(pipe2(release, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(ready[0]);
    close(release[1]);  // else the read below never sees EOF
    int fd = open((g_dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    char ok = fd >= 0 && write(fd, "0", 1) == 1 ? 'y' : 'n';
    if (write(ready[1], &ok, 1) != 1) _exit(1);
    char c;
    while (read(release[0], &c, 1) < 0 && errno == EINTR) {
    }
    _exit(0);
  }
  close(ready[1]);
  close(release[0]);
  char ok = 0;
  ssize_t n = read(ready[0], &ok, 1);
  std::string abs, err;
  bool found = cgroup_of_pid(pid, g_mount, &abs, &err);
  close(release[1]);  // the child exits
  close(ready[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_int_equal(n, 1);
  assert_int_equal(ok, 'y');
  assert_true(found);
  assert_string_equal(abs.c_str(), g_dir.c_str());
}

}  // namespace

int run_cgroup_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mountinfo_hybrid),
      cmocka_unit_test(test_mountinfo_pure_v2),
      cmocka_unit_test(test_mountinfo_none),
      cmocka_unit_test(test_mountinfo_escapes),
      cmocka_unit_test(test_mountinfo_overmounted),
      cmocka_unit_test(test_kernel_cgroup_name),
      cmocka_unit_test(test_cgroup_path),
      cmocka_unit_test(test_real_mount),
      cmocka_unit_test(test_real_cgroup_id),
      cmocka_unit_test(test_real_cgroup_of_pid),
      cmocka_unit_test(test_real_cgroup_of_moved_child),
  };
  return cmocka_run_group_tests_name("redirect/cgroup", tests, group_setup, group_teardown);
}

}  // namespace shoal::redirect::test
