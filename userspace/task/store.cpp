// The on-disk task store (see store.h for the layout and the contract).
//
// A commit, in order (each step durable before the next is taken):
//   1. fsync tmp/<id>.<r>/data
//   2. write tmp/<id>.<r>/meta.json, fsync it, fsync tmp/<id>.<r>/
//   3. renameat2(tmp/<id>.<r>, tasks/<ab>/<id>, RENAME_NOREPLACE); fsync tasks/<ab>/
//   4. write tasks/<ab>/<id>/verified, fsync it, fsync tasks/<ab>/<id>/
// A crash before 3 leaves only tmp/ (emptied by open()); between 3 and 4 a
// directory without a valid marker (deleted by open()). The marker's text
// names the id and length, so an empty or torn marker never counts.
//
// Concurrency: one mutex guards the index. The slow steps (fsyncs) run
// outside it; an id being committed sits in `committing` so a second Writer
// of the same id waits for the first and is then discarded. GC renames a
// victim into tmp/ under the mutex (atomic disappearance, and a later commit
// of the same id finds the name free) and deletes it after unlocking.
#include "shoal/task/store.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace shoal::task {

namespace {

constexpr mode_t kDirMode = 0700;  // private blobs live here
constexpr mode_t kFileMode = 0600;
constexpr size_t kMaxMetaBytes = 16u << 20;
constexpr size_t kMaxSmallFile = 4096;
constexpr char kVersionFile[] = "version";
constexpr char kVersionTmp[] = "version.tmp";
constexpr double kMaxExactDouble = 9007199254740992.0;  // 2^53

void (*g_crash_hook)(const char*) = nullptr;

void hook(const char* step) {
  if (g_crash_hook != nullptr) g_crash_hook(step);
}

int64_t default_clock() { return static_cast<int64_t>(std::time(nullptr)); }

// Sets *err (when given) and returns -e.
int fail_with(std::string* err, int e, const std::string& msg) {
  if (err != nullptr) *err = msg;
  return -e;
}

std::string sys_msg(const char* what, const std::string& path, int e) {
  return std::string(what) + " " + path + ": " + std::strerror(e);
}

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

std::string to_hex(const uint8_t* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = kDigits[p[i] >> 4];
    s[2 * i + 1] = kDigits[p[i] & 15];
  }
  return s;
}

int hex_value(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

bool from_hex(const char* s, Sha256* out) {
  if (std::strlen(s) != 64) return false;
  for (size_t i = 0; i < 32; ++i) {
    if (!is_lower_hex(s[2 * i]) || !is_lower_hex(s[2 * i + 1])) return false;
    (*out)[i] = static_cast<uint8_t>(hex_value(s[2 * i]) * 16 + hex_value(s[2 * i + 1]));
  }
  return true;
}

bool valid_digest(const std::string& d) {
  return d.empty() || (d.size() == 71 && d.compare(0, 7, "sha256:") == 0 &&
                       std::all_of(d.begin() + 7, d.end(), is_lower_hex));
}

std::string random_suffix() {
  uint8_t b[8];
  if (getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) {
    // getrandom cannot fail for 8 bytes once the pool is up; fall back to a
    // counter mixed with the pid and clock rather than failing the download.
    static std::atomic<uint64_t> counter{0};
    uint64_t v =
        counter.fetch_add(1) ^ (static_cast<uint64_t>(getpid()) << 40) ^ static_cast<uint64_t>(std::clock());
    std::memcpy(b, &v, sizeof b);
  }
  return to_hex(b, sizeof b);
}

std::string task_rel(const std::string& id) { return "tasks/" + id.substr(0, 2) + "/" + id; }
std::string shard_rel(const std::string& id) { return "tasks/" + id.substr(0, 2); }

std::string marker_text(const std::string& id, uint64_t length) {
  return "shoal-task " + std::to_string(kStoreVersion) + " " + id + " " + std::to_string(length) + "\n";
}

// Writes all of [buf, buf+len) at off. 0 or -errno.
int pwrite_all(int fd, const void* buf, size_t len, uint64_t off) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    p += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
  return 0;
}

int fsync_at(int dirfd, const std::string& rel) {
  int fd = ::openat(dirfd, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int r = ::fsync(fd) == 0 ? 0 : -errno;
  ::close(fd);
  return r;
}

// Creates rel (which must not exist) holding text, fsynced. On failure the
// file is removed. 0 or -errno; *what names the failing call.
int write_new_file(int dirfd, const std::string& rel, const std::string& text, const char** what) {
  *what = "create";
  int fd = ::openat(dirfd, rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, kFileMode);
  if (fd < 0) return -errno;
  int r = pwrite_all(fd, text.data(), text.size(), 0);
  if (r != 0) {
    *what = "write";
  } else if (::fsync(fd) != 0) {
    *what = "fsync";
    r = -errno;
  }
  if (::close(fd) != 0 && r == 0) {
    *what = "close";
    r = -errno;
  }
  if (r != 0) ::unlinkat(dirfd, rel.c_str(), 0);
  return r;
}

// Reads a whole regular file of at most max bytes. 0, -errno, or -EFBIG.
int read_small(int dirfd, const std::string& rel, size_t max, std::string* out) {
  int fd = ::openat(dirfd, rel.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return -errno;
  struct stat st {};
  int r = 0;
  if (::fstat(fd, &st) != 0) {
    r = -errno;
  } else if (!S_ISREG(st.st_mode)) {
    r = -EINVAL;
  } else if (static_cast<uint64_t>(st.st_size) > max) {
    r = -EFBIG;
  } else {
    out->assign(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < out->size()) {
      ssize_t n = ::pread(fd, &(*out)[got], out->size() - got, static_cast<off_t>(got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        r = n < 0 ? -errno : -EIO;
        break;
      }
      got += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  return r;
}

// rm -r of dirfd/name without following symlinks. 0 or -errno (ENOENT is 0).
int remove_tree(int dirfd, const char* name) {
  if (::unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return 0;
  if (errno != EISDIR && errno != EPERM) return -errno;
  int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -errno;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  int r = 0;
  while (struct dirent* ent = ::readdir(d)) {
    if (std::strcmp(ent->d_name, ".") == 0 || std::strcmp(ent->d_name, "..") == 0) continue;
    int rr = remove_tree(::dirfd(d), ent->d_name);
    if (rr != 0 && r == 0) r = rr;
  }
  ::closedir(d);
  if (::unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT && r == 0) r = -errno;
  return r;
}

// Names in dirfd/rel except "." and "..". 0 or -errno.
int list_dir(int dirfd, const std::string& rel, std::vector<std::string>* out) {
  int fd = ::openat(dirfd, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  errno = 0;
  while (struct dirent* ent = ::readdir(d)) {
    if (std::strcmp(ent->d_name, ".") != 0 && std::strcmp(ent->d_name, "..") != 0)
      out->emplace_back(ent->d_name);
  }
  int r = errno != 0 ? -errno : 0;
  ::closedir(d);
  return r;
}

// mkdir that accepts an existing directory; *created tells which.
int mkdir_at(int dirfd, const std::string& rel, mode_t mode, bool* created) {
  *created = false;
  if (::mkdirat(dirfd, rel.c_str(), mode) == 0) {
    *created = true;
    return 0;
  }
  if (errno != EEXIST) return -errno;
  struct stat st {};
  if (::fstatat(dirfd, rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int mkdir_p(const std::string& path, std::string* err) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string part = path.substr(0, pos);
    bool created;
    int r = mkdir_at(AT_FDCWD, part, pos == path.size() ? kDirMode : 0755, &created);
    if (r != 0) return fail_with(err, -r, sys_msg("mkdir", part, -r));
  }
  return 0;
}

// The URL as stored: no query, no fragment.
std::string strip_query(const std::string& url) { return url.substr(0, url.find_first_of("?#")); }

std::string meta_to_json(const TaskMeta& m) {
  cJSON* o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", m.id.c_str());
  cJSON_AddStringToObject(o, "url", m.url.c_str());
  cJSON_AddStringToObject(o, "digest", m.digest.c_str());
  cJSON_AddNumberToObject(o, "length", static_cast<double>(m.length));
  cJSON_AddNumberToObject(o, "piece_size", static_cast<double>(m.piece_size));
  cJSON* pieces = cJSON_AddArrayToObject(o, "pieces");
  for (const Sha256& p : m.pieces)
    cJSON_AddItemToArray(pieces, cJSON_CreateString(to_hex(p.data(), p.size()).c_str()));
  cJSON* headers = cJSON_AddArrayToObject(o, "headers");
  for (const auto& [name, value] : m.headers) {
    cJSON* pair = cJSON_CreateArray();
    cJSON_AddItemToArray(pair, cJSON_CreateString(name.c_str()));
    cJSON_AddItemToArray(pair, cJSON_CreateString(value.c_str()));
    cJSON_AddItemToArray(headers, pair);
  }
  cJSON_AddNumberToObject(o, "created", static_cast<double>(m.created));
  cJSON_AddNumberToObject(o, "last_access", static_cast<double>(m.last_access));
  char* s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  std::string out = s != nullptr ? std::string(s) + "\n" : std::string();
  cJSON_free(s);
  return out;
}

bool json_string(const cJSON* o, const char* key, std::string* out) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(v) || v->valuestring == nullptr) return false;
  *out = v->valuestring;
  return true;
}

bool json_int(const cJSON* o, const char* key, double lo, double hi, double* out) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v)) return false;
  double d = v->valuedouble;
  if (!(d >= lo && d <= hi) || std::floor(d) != d) return false;
  *out = d;
  return true;
}

// Parses and checks meta.json (types, id, digest, piece list length).
bool meta_from_json(const std::string& text, TaskMeta* m) {
  cJSON* o = cJSON_ParseWithLength(text.data(), text.size());
  if (o == nullptr) return false;
  bool ok = false;
  double length, piece_size, created, last_access;
  const cJSON* pieces = cJSON_GetObjectItemCaseSensitive(o, "pieces");
  const cJSON* headers = cJSON_GetObjectItemCaseSensitive(o, "headers");
  if (json_string(o, "id", &m->id) && json_string(o, "url", &m->url) &&
      json_string(o, "digest", &m->digest) && json_int(o, "length", 0, kMaxExactDouble, &length) &&
      json_int(o, "piece_size", 1, 4294967295.0, &piece_size) &&
      json_int(o, "created", -kMaxExactDouble, kMaxExactDouble, &created) &&
      json_int(o, "last_access", -kMaxExactDouble, kMaxExactDouble, &last_access) && cJSON_IsArray(pieces) &&
      cJSON_IsArray(headers) && valid_task_id(m->id) && valid_digest(m->digest)) {
    m->length = static_cast<uint64_t>(length);
    m->piece_size = static_cast<uint32_t>(piece_size);
    m->created = static_cast<int64_t>(created);
    m->last_access = static_cast<int64_t>(last_access);
    ok = static_cast<uint64_t>(cJSON_GetArraySize(pieces)) == piece_count(m->length, m->piece_size);
    m->pieces.clear();
    const cJSON* p;
    cJSON_ArrayForEach(p, pieces) {
      Sha256 h;
      if (!ok || !cJSON_IsString(p) || !from_hex(p->valuestring, &h)) {
        ok = false;
        break;
      }
      m->pieces.push_back(h);
    }
    m->headers.clear();
    const cJSON* h;
    cJSON_ArrayForEach(h, headers) {
      const cJSON* name = cJSON_GetArrayItem(h, 0);
      const cJSON* value = cJSON_GetArrayItem(h, 1);
      if (!ok || !cJSON_IsArray(h) || cJSON_GetArraySize(h) != 2 || !cJSON_IsString(name) ||
          !cJSON_IsString(value)) {
        ok = false;
        break;
      }
      m->headers.emplace_back(name->valuestring, value->valuestring);
    }
  }
  cJSON_Delete(o);
  return ok;
}

}  // namespace

bool valid_task_id(const std::string& id) {
  return id.size() == 64 && std::all_of(id.begin(), id.end(), is_lower_hex);
}

uint32_t piece_size_for(uint64_t length) {
  uint64_t want = length / 500 + (length % 500 != 0 ? 1 : 0);
  if (want <= kMinPieceSize) return kMinPieceSize;
  if (want > kMaxPieceSize) return kMaxPieceSize;
  uint64_t p = kMinPieceSize;
  while (p < want) p <<= 1;
  return static_cast<uint32_t>(p);
}

uint64_t piece_count(uint64_t length, uint32_t piece_size) {
  if (piece_size == 0) return 0;
  return length / piece_size + (length % piece_size != 0 ? 1 : 0);
}

void set_crash_hook_for_test(void (*h)(const char* step)) { g_crash_hook = h; }

// ---------------------------------------------------------------------------

struct Store::Impl {
  struct Entry {
    TaskMeta meta;
    int pins = 0;
    bool dirty = false;  // last_access newer than the marker's mtime
  };

  std::string dir;
  int root = -1;  // the data dir, flock()ed for the Store's lifetime
  int64_t (*clock)() = default_clock;
  size_t discarded = 0;

  mutable std::mutex mu;
  std::condition_variable committed_cv;  // signalled when `committing` shrinks
  std::unordered_map<std::string, Entry> index;
  std::unordered_set<std::string> committing;
  uint64_t total = 0;

  std::string path(const std::string& rel) const { return dir + "/" + rel; }

  int init_version(std::string* err);
  int clean_tmp(std::string* err);
  int scan_tasks(std::string* err);
  bool load_task(int shard_fd, const std::string& id, TaskMeta* m);
  void discard_task_dir(int shard_fd, const std::string& id);
  void flush_access();
  // Moves rel out of tasks/ into tmp/ under a fresh name (returned in
  // *trash). 0 or -errno.
  int move_to_trash(const std::string& rel, const std::string& id, std::string* trash);
};

int Store::Impl::init_version(std::string* err) {
  std::string text;
  int r = read_small(root, kVersionFile, kMaxSmallFile, &text);
  if (r == 0) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    if (text == std::to_string(kStoreVersion)) return 0;
    return fail_with(err, ENOTSUP,
                     path(kVersionFile) + ": unsupported store version \"" + text.substr(0, 32) +
                         "\" (this build reads " + std::to_string(kStoreVersion) + ")");
  }
  if (r != -ENOENT) return fail_with(err, -r, sys_msg("read", path(kVersionFile), -r));
  // No version file: a new store. Refuse to adopt (and later clean) a
  // directory that holds anything but a torn version.tmp.
  std::vector<std::string> names;
  r = list_dir(root, ".", &names);
  if (r != 0) return fail_with(err, -r, sys_msg("read directory", dir, -r));
  for (const std::string& n : names) {
    if (n != kVersionTmp)
      return fail_with(err, ENOTEMPTY,
                       dir + ": not empty and has no version file; not a Shoal data dir (found " + n + ")");
  }
  ::unlinkat(root, kVersionTmp, 0);
  const char* what;
  r = write_new_file(root, kVersionTmp, std::to_string(kStoreVersion) + "\n", &what);
  if (r != 0) return fail_with(err, -r, sys_msg(what, path(kVersionTmp), -r));
  if (::renameat(root, kVersionTmp, root, kVersionFile) != 0)
    return fail_with(err, errno, sys_msg("rename", path(kVersionTmp), errno));
  r = ::fsync(root) == 0 ? 0 : -errno;
  if (r != 0) return fail_with(err, -r, sys_msg("fsync", dir, -r));
  return 0;
}

int Store::Impl::clean_tmp(std::string* err) {
  std::vector<std::string> names;
  int r = list_dir(root, "tmp", &names);
  if (r != 0) return fail_with(err, -r, sys_msg("read directory", path("tmp"), -r));
  int tmp_fd = ::openat(root, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tmp_fd < 0) return fail_with(err, errno, sys_msg("open", path("tmp"), errno));
  for (const std::string& n : names) {
    r = remove_tree(tmp_fd, n.c_str());
    if (r != 0) {
      ::close(tmp_fd);
      return fail_with(err, -r, sys_msg("remove", path("tmp/" + n), -r));
    }
    ++discarded;
  }
  ::close(tmp_fd);
  return 0;
}

// A task directory counts when its marker holds exactly the expected text,
// meta.json parses and names this id, and data is a regular file of
// meta.length bytes. Last access is the later of meta.json's and the
// marker's mtime (where touch() times are persisted).
bool Store::Impl::load_task(int shard_fd, const std::string& id, TaskMeta* m) {
  std::string meta_text, marker;
  if (read_small(shard_fd, id + "/meta.json", kMaxMetaBytes, &meta_text) != 0) return false;
  if (!meta_from_json(meta_text, m) || m->id != id) return false;
  if (read_small(shard_fd, id + "/verified", kMaxSmallFile, &marker) != 0) return false;
  if (marker != marker_text(id, m->length)) return false;
  struct stat st {};
  if (::fstatat(shard_fd, (id + "/data").c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) != m->length)
    return false;
  struct stat ms {};
  if (::fstatat(shard_fd, (id + "/verified").c_str(), &ms, AT_SYMLINK_NOFOLLOW) == 0)
    m->last_access = std::max(m->last_access, static_cast<int64_t>(ms.st_mtim.tv_sec));
  return true;
}

// Removes the marker first, so a crash part-way through never leaves a
// marked directory with missing files.
void Store::Impl::discard_task_dir(int shard_fd, const std::string& id) {
  ::unlinkat(shard_fd, (id + "/verified").c_str(), 0);
  remove_tree(shard_fd, id.c_str());
  ++discarded;
}

int Store::Impl::scan_tasks(std::string* err) {
  std::vector<std::string> shards;
  int r = list_dir(root, "tasks", &shards);
  if (r != 0) return fail_with(err, -r, sys_msg("read directory", path("tasks"), -r));
  int tasks_fd = ::openat(root, "tasks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tasks_fd < 0) return fail_with(err, errno, sys_msg("open", path("tasks"), errno));
  for (const std::string& shard : shards) {
    struct stat st {};
    bool shard_ok = shard.size() == 2 && is_lower_hex(shard[0]) && is_lower_hex(shard[1]) &&
                    ::fstatat(tasks_fd, shard.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
    if (!shard_ok) {
      remove_tree(tasks_fd, shard.c_str());
      ++discarded;
      continue;
    }
    std::vector<std::string> ids;
    r = list_dir(tasks_fd, shard, &ids);
    int shard_fd = ::openat(tasks_fd, shard.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (r != 0 || shard_fd < 0) {
      int e = r != 0 ? -r : errno;
      if (shard_fd >= 0) ::close(shard_fd);
      ::close(tasks_fd);
      return fail_with(err, e, sys_msg("read directory", path("tasks/" + shard), e));
    }
    for (const std::string& id : ids) {
      TaskMeta m;
      if (valid_task_id(id) && id.compare(0, 2, shard) == 0 && load_task(shard_fd, id, &m)) {
        total += m.length;
        index[id].meta = std::move(m);
      } else {
        discard_task_dir(shard_fd, id);
      }
    }
    ::close(shard_fd);
  }
  ::close(tasks_fd);
  return 0;
}

void Store::Impl::flush_access() {
  std::vector<std::pair<std::string, int64_t>> todo;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [id, e] : index) {
      if (!e.dirty) continue;
      e.dirty = false;
      todo.emplace_back(id, e.meta.last_access);
    }
  }
  for (const auto& [id, t] : todo) {
    struct timespec ts[2];
    ts[0].tv_sec = static_cast<time_t>(t);
    ts[0].tv_nsec = 0;
    ts[1] = ts[0];
    // Best effort: a task GC just removed has no marker any more.
    ::utimensat(root, (task_rel(id) + "/verified").c_str(), ts, AT_SYMLINK_NOFOLLOW);
  }
}

int Store::Impl::move_to_trash(const std::string& rel, const std::string& id, std::string* trash) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    *trash = "tmp/gc." + id + "." + random_suffix();
    if (::renameat2(root, rel.c_str(), root, trash->c_str(), RENAME_NOREPLACE) == 0) return 0;
    if (errno != EEXIST) return -errno;
  }
  return -EEXIST;
}

// ---------------------------------------------------------------------------

Store::Store() : impl_(new Impl) {}

Store::~Store() {
  impl_->flush_access();
  if (impl_->root >= 0) ::close(impl_->root);  // releases the flock
}

int Store::open(const std::string& data_dir, std::unique_ptr<Store>* out, std::string* err) {
  if (data_dir.empty()) return fail_with(err, EINVAL, "store: empty data dir");
  std::string dir = data_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  int r = mkdir_p(dir, err);
  if (r != 0) return r;
  std::unique_ptr<Store> s(new Store);
  Impl& st = *s->impl_;
  st.dir = dir;
  st.root = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (st.root < 0) return fail_with(err, errno, sys_msg("open", dir, errno));
  if (::flock(st.root, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e == EWOULDBLOCK) return fail_with(err, EBUSY, dir + ": in use by another store (flock held)");
    return fail_with(err, e, sys_msg("flock", dir, e));
  }
  if ((r = st.init_version(err)) != 0) return r;
  bool made_tasks, made_tmp;
  if ((r = mkdir_at(st.root, "tasks", kDirMode, &made_tasks)) != 0)
    return fail_with(err, -r, sys_msg("mkdir", st.path("tasks"), -r));
  if ((r = mkdir_at(st.root, "tmp", kDirMode, &made_tmp)) != 0)
    return fail_with(err, -r, sys_msg("mkdir", st.path("tmp"), -r));
  if ((made_tasks || made_tmp) && ::fsync(st.root) != 0)
    return fail_with(err, errno, sys_msg("fsync", dir, errno));
  if ((r = st.clean_tmp(err)) != 0) return r;
  if ((r = st.scan_tasks(err)) != 0) return r;
  // All 256 shards exist from the start, so a commit never depends on a
  // directory another commit has just created but not yet made durable.
  bool made_any = false;
  for (int i = 0; i < 256; ++i) {
    uint8_t b = static_cast<uint8_t>(i);
    std::string rel = "tasks/" + to_hex(&b, 1);
    bool made;
    if ((r = mkdir_at(st.root, rel, kDirMode, &made)) != 0)
      return fail_with(err, -r, sys_msg("mkdir", st.path(rel), -r));
    made_any = made_any || made;
  }
  if (made_any && (r = fsync_at(st.root, "tasks")) != 0)
    return fail_with(err, -r, sys_msg("fsync", st.path("tasks"), -r));
  *out = std::move(s);
  return 0;
}

int Store::begin(const std::string& id, std::unique_ptr<Writer>* out, std::string* err, bool direct) {
  if (!valid_task_id(id))
    return fail_with(err, EINVAL, "store: invalid task id \"" + id.substr(0, 80) + "\"");
  Impl& st = *impl_;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.index.count(id) != 0)
      return fail_with(err, EEXIST, st.path(task_rel(id)) + ": task already complete");
  }
  std::string tmp;
  for (int attempt = 0;; ++attempt) {
    tmp = "tmp/" + id + "." + random_suffix();
    if (::mkdirat(st.root, tmp.c_str(), kDirMode) == 0) break;
    if (errno != EEXIST || attempt == 8) return fail_with(err, errno, sys_msg("mkdir", st.path(tmp), errno));
  }
  std::string data = tmp + "/data";
  // Direct: read-write, as a partial first block is read back. A file
  // system without O_DIRECT (tmpfs) refuses it at open: write buffered.
  int fd = -1;
  if (direct) {
    fd = ::openat(st.root, data.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, kFileMode);
    if (fd < 0 && errno == EINVAL) direct = false;
  }
  if (!direct) fd = ::openat(st.root, data.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, kFileMode);
  if (fd < 0) {
    int e = errno;
    remove_tree(st.root, tmp.c_str());
    return fail_with(err, e, sys_msg("create", st.path(data), e));
  }
  out->reset(new Writer(this, id, tmp, fd, direct));
  return 0;
}

bool Store::lookup(const std::string& id, TaskMeta* out) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->index.find(id);
  if (it == impl_->index.end()) return false;
  if (out != nullptr) *out = it->second.meta;
  return true;
}

int Store::open_data(const std::string& id, std::string* err) const {
  if (!valid_task_id(id))
    return fail_with(err, EINVAL, "store: invalid task id \"" + id.substr(0, 80) + "\"");
  const Impl& st = *impl_;
  std::string rel = task_rel(id) + "/data";
  // Under the mutex so GC cannot move the directory between the index check
  // and the open.
  std::lock_guard<std::mutex> lock(st.mu);
  if (st.index.count(id) == 0) return fail_with(err, ENOENT, st.path(task_rel(id)) + ": no complete task");
  int fd = ::openat(st.root, rel.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return fail_with(err, errno, sys_msg("open", st.path(rel), errno));
  return fd;
}

bool Store::touch(const std::string& id) {
  int64_t now = impl_->clock();
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->index.find(id);
  if (it == impl_->index.end()) return false;
  if (now > it->second.meta.last_access) {
    it->second.meta.last_access = now;
    it->second.dirty = true;
  }
  return true;
}

int Store::pin(const std::string& id) {
  if (!valid_task_id(id)) return -EINVAL;
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->index.find(id);
  if (it == impl_->index.end()) return -ENOENT;
  ++it->second.pins;
  return 0;
}

void Store::unpin(const std::string& id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->index.find(id);
  if (it != impl_->index.end() && it->second.pins > 0) --it->second.pins;
}

GcResult Store::gc(uint64_t quota_bytes, int64_t expire_seconds, int64_t now) {
  Impl& st = *impl_;
  st.flush_access();
  GcResult res;
  std::vector<std::string> trash;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    std::vector<std::pair<int64_t, const std::string*>> order;
    for (const auto& [id, e] : st.index) {
      if (e.pins == 0) order.emplace_back(e.meta.last_access, &id);
    }
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : *a.second < *b.second;
    });
    std::vector<std::string> victims;
    std::vector<bool> taken(order.size(), false);
    uint64_t remaining = st.total;
    for (size_t i = 0; i < order.size() && expire_seconds > 0; ++i) {
      if (now - order[i].first < expire_seconds) break;  // sorted: the rest are newer
      taken[i] = true;
      remaining -= st.index[*order[i].second].meta.length;
    }
    for (size_t i = 0; i < order.size() && quota_bytes > 0 && remaining > quota_bytes; ++i) {
      if (taken[i]) continue;
      taken[i] = true;
      remaining -= st.index[*order[i].second].meta.length;
    }
    for (size_t i = 0; i < order.size(); ++i) {
      if (taken[i]) victims.push_back(*order[i].second);
    }
    for (const std::string& id : victims) {
      std::string t;
      if (st.move_to_trash(task_rel(id), id, &t) != 0) continue;  // stays indexed; retried next GC
      hook("gc-renamed");
      trash.push_back(t);
      uint64_t len = st.index[id].meta.length;
      st.total -= len;
      st.index.erase(id);
      res.bytes += len;
      res.ids.push_back(id);
    }
  }
  for (const std::string& t : trash) remove_tree(st.root, t.c_str());
  return res;
}

uint64_t Store::total_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->total;
}

size_t Store::task_count() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->index.size();
}

std::vector<TaskMeta> Store::list() const {
  std::vector<TaskMeta> out;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    out.reserve(impl_->index.size());
    for (const auto& kv : impl_->index) out.push_back(kv.second.meta);
  }
  std::sort(out.begin(), out.end(), [](const TaskMeta& a, const TaskMeta& b) { return a.id < b.id; });
  return out;
}

std::vector<TaskSummary> Store::summaries() const {
  std::vector<TaskSummary> out;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    out.reserve(impl_->index.size());
    for (const auto& kv : impl_->index) {
      const TaskMeta& m = kv.second.meta;
      out.push_back({m.id, m.url, m.digest, m.length, m.created, m.last_access, kv.second.pins});
    }
  }
  std::sort(out.begin(), out.end(), [](const TaskSummary& a, const TaskSummary& b) {
    return a.created != b.created ? a.created > b.created : a.id < b.id;
  });
  return out;
}

size_t Store::discarded_at_open() const { return impl_->discarded; }

const std::string& Store::dir() const { return impl_->dir; }

void Store::set_clock_for_test(int64_t (*clock)()) {
  impl_->clock = clock != nullptr ? clock : default_clock;
}

// ---------------------------------------------------------------------------

Writer::Writer(Store* store, std::string id, std::string tmp_rel, int fd, bool direct)
    : store_(store), id_(std::move(id)), tmp_rel_(std::move(tmp_rel)), fd_(fd), direct_(direct) {}

Writer::~Writer() {
  if (!done_) abort();
}

int Writer::set_failed(int e, std::string msg, std::string* err) {
  int expected = 0;
  error_.compare_exchange_strong(expected, -e);
  return fail_with(err, e, std::move(msg));
}

int Writer::write(const void* buf, size_t len, uint64_t offset, std::string* err) {
  // The path is built only for an error: writes come many per second.
  auto path = [this] { return store_->impl_->path(tmp_rel_ + "/data"); };
  if (done_) return fail_with(err, EINVAL, path() + ": writer already committed or aborted");
  int prev = error_.load();
  if (prev != 0) return fail_with(err, -prev, path() + ": writer failed earlier: " + std::strerror(-prev));
  if (offset > static_cast<uint64_t>(INT64_MAX) - len)
    return set_failed(EFBIG, path() + ": write beyond the largest file offset", err);
  int r = direct_.load() ? write_direct(static_cast<const char*>(buf), len, offset, err) : 1;
  if (r == 1) {
    r = pwrite_all(fd_, buf, len, offset);
    if (r != 0) return set_failed(-r, sys_msg("write", path(), -r), err);
  } else if (r != 0) {
    return r;
  }
  uint64_t end = offset + len, seen = end_.load();
  while (seen < end && !end_.compare_exchange_weak(seen, end)) {
  }
  return 0;
}

namespace {

constexpr size_t kBounceBytes = 256u << 10;  // one O_DIRECT write at most (tee slices are 128 KiB)

// Direct writes are staged here: callers' buffers are not aligned. One per
// thread-pool thread, kept for the thread's life.
char* bounce_buffer() {
  struct Buffer {
    char* p = nullptr;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer b;
  if (b.p == nullptr) b.p = static_cast<char*>(std::aligned_alloc(kDirectAlign, kBounceBytes));
  return b.p;
}

uint64_t align_down(uint64_t x) { return x & ~static_cast<uint64_t>(kDirectAlign - 1); }
uint64_t align_up(uint64_t x) { return align_down(x + kDirectAlign - 1); }

// The aligned block at off as it is on disk; past the end of the file it
// reads as zeros. 0 or -errno.
int read_block(int fd, char* dst, uint64_t off) {
  size_t got = 0;
  while (got < kDirectAlign) {
    ssize_t n = ::pread(fd, dst + got, kDirectAlign - got, static_cast<off_t>(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  std::memset(dst + got, 0, kDirectAlign - got);
  return 0;
}

}  // namespace

// 0, -errno (after set_failed), or 1: O_DIRECT refused, write buffered.
int Writer::write_direct(const char* buf, size_t len, uint64_t offset, std::string* err) {
  auto path = [this] { return store_->impl_->path(tmp_rel_ + "/data"); };
  char* b = bounce_buffer();
  if (b == nullptr) return set_failed(ENOMEM, path() + ": no memory for an aligned write buffer", err);
  const uint64_t end = offset + len;
  uint64_t at = align_down(offset);
  const uint64_t stop = align_up(end);
  size_t head = static_cast<size_t>(offset - at);
  bool have_head = false;
  {
    // A padded block this write covers is stale from here on.
    std::lock_guard<std::mutex> lk(tail_mu_);
    if (tail_off_ >= at && tail_off_ < stop) {
      if (head > 0 && tail_off_ == at) {
        std::memcpy(b, tail_.get(), kDirectAlign);
        have_head = true;
      }
      tail_off_ = UINT64_MAX;
    }
  }
  if (head > 0 && !have_head) {
    int r = read_block(fd_, b, at);
    if (r != 0) return set_failed(-r, sys_msg("read back", path(), -r), err);
  }
  const char* src = buf;
  while (at < stop) {
    size_t span = static_cast<size_t>(stop - at < kBounceBytes ? stop - at : kBounceBytes);
    size_t take = span - head;
    if (take > end - (at + head)) take = static_cast<size_t>(end - (at + head));
    std::memcpy(b + head, src, take);
    src += take;
    size_t used = head + take;
    head = 0;
    if (used < span) std::memset(b + used, 0, span - used);
    int r = pwrite_all(fd_, b, span, at);
    if (r == -EINVAL && at == align_down(offset)) return fall_back_to_buffered();
    if (r != 0) return set_failed(-r, sys_msg("write", path(), -r), err);
    if (used < span) {
      std::lock_guard<std::mutex> lk(tail_mu_);
      if (!tail_) tail_.reset(new char[kDirectAlign]);
      std::memcpy(tail_.get(), b + span - kDirectAlign, kDirectAlign);
      tail_off_ = at + span - kDirectAlign;
      padded_ = true;
    }
    at += span;
  }
  return 0;
}

// The file system took O_DIRECT at open but refuses the writes: what is
// on disk stays right (only whole blocks were written), the rest goes
// through the page cache.
int Writer::fall_back_to_buffered() {
  int fl = ::fcntl(fd_, F_GETFL);
  if (fl >= 0) ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT);
  direct_ = false;
  return 1;
}

int Writer::commit(const TaskMeta& meta_in, std::string* err) {
  Store::Impl& st = *store_->impl_;
  std::string tmp_path = st.path(tmp_rel_);
  if (done_) return fail_with(err, EINVAL, tmp_path + ": writer already committed or aborted");
  int prev = error_.load();
  if (prev != 0) return fail_with(err, -prev, tmp_path + ": writer failed earlier: " + std::strerror(-prev));

  // A direct write pads its last block; the object ends where the writes did.
  if (padded_.load() && ::ftruncate(fd_, static_cast<off_t>(end_.load())) != 0)
    return set_failed(errno, sys_msg("truncate", tmp_path + "/data", errno), err);
  struct stat fst {};
  if (::fstat(fd_, &fst) != 0) return set_failed(errno, sys_msg("stat", tmp_path + "/data", errno), err);
  uint64_t size = static_cast<uint64_t>(fst.st_size);
  if (!meta_in.id.empty() && meta_in.id != id_)
    return set_failed(
        EINVAL, tmp_path + ": meta id " + meta_in.id.substr(0, 80) + " is not the writer's " + id_, err);
  if (meta_in.length != size)
    return set_failed(EINVAL,
                      tmp_path + ": meta length " + std::to_string(meta_in.length) + " but " +
                          std::to_string(size) + " bytes written",
                      err);
  if (meta_in.piece_size == 0 || meta_in.pieces.size() != piece_count(meta_in.length, meta_in.piece_size))
    return set_failed(EINVAL,
                      tmp_path + ": " + std::to_string(meta_in.pieces.size()) + " piece hashes for length " +
                          std::to_string(meta_in.length) + " and piece size " +
                          std::to_string(meta_in.piece_size),
                      err);
  if (!valid_digest(meta_in.digest))
    return set_failed(EINVAL, tmp_path + ": digest is not \"sha256:<64 lower-case hex>\"", err);

  TaskMeta meta = meta_in;
  meta.id = id_;
  meta.url = strip_query(meta.url);
  int64_t now = st.clock();
  if (meta.created == 0) meta.created = now;
  if (meta.last_access == 0) meta.last_access = now;

  if (::fsync(fd_) != 0) return set_failed(errno, sys_msg("fsync", tmp_path + "/data", errno), err);
  hook("data-synced");
  std::string json = meta_to_json(meta);
  if (json.empty()) return set_failed(ENOMEM, tmp_path + ": cannot serialise meta.json", err);
  const char* what;
  int r = write_new_file(st.root, tmp_rel_ + "/meta.json", json, &what);
  if (r != 0) return set_failed(-r, sys_msg(what, tmp_path + "/meta.json", -r), err);
  if ((r = fsync_at(st.root, tmp_rel_)) != 0) return set_failed(-r, sys_msg("fsync", tmp_path, -r), err);
  hook("meta-written");

  // One committer per id; a later one finds the task complete and steps back.
  {
    std::unique_lock<std::mutex> lock(st.mu);
    st.committed_cv.wait(lock, [&] { return st.committing.count(id_) == 0; });
    if (st.index.count(id_) != 0) {
      lock.unlock();
      abort();
      return 0;
    }
    st.committing.insert(id_);
  }
  std::string final_rel = task_rel(id_);
  r = 0;
  std::string msg;
  bool renamed = false;
  bool made_shard;
  if ((r = mkdir_at(st.root, shard_rel(id_), kDirMode, &made_shard)) != 0) {
    msg = sys_msg("mkdir", st.path(shard_rel(id_)), -r);
  } else if (made_shard && (r = fsync_at(st.root, "tasks")) != 0) {
    msg = sys_msg("fsync", st.path("tasks"), -r);
  } else {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (::renameat2(st.root, tmp_rel_.c_str(), st.root, final_rel.c_str(), RENAME_NOREPLACE) == 0) {
        renamed = true;
        break;
      }
      r = -errno;
      msg = sys_msg("rename into", st.path(final_rel), -r);
      if (r != -EEXIST && r != -ENOTEMPTY) break;
      // A directory that is not indexed and not being committed is debris
      // (cannot happen while this process owns the store): set it aside.
      std::string t;
      if (st.move_to_trash(final_rel, id_, &t) != 0) break;
      remove_tree(st.root, t.c_str());
    }
  }
  if (renamed) {
    hook("renamed");
    if ((r = fsync_at(st.root, shard_rel(id_))) != 0) {
      msg = sys_msg("fsync", st.path(shard_rel(id_)), -r);
    } else if ((r = write_new_file(st.root, final_rel + "/verified", marker_text(id_, meta.length), &what)) !=
               0) {
      msg = sys_msg(what, st.path(final_rel + "/verified"), -r);
    } else {
      hook("marker-written");
      if ((r = fsync_at(st.root, final_rel)) != 0) msg = sys_msg("fsync", st.path(final_rel), -r);
    }
    if (r != 0) {
      // Undo: the directory must not stay in tasks/ (it has no valid marker,
      // so a crash here is cleaned by open() anyway).
      ::unlinkat(st.root, (final_rel + "/verified").c_str(), 0);
      std::string t;
      if (st.move_to_trash(final_rel, id_, &t) == 0) {
        remove_tree(st.root, t.c_str());
      } else {
        remove_tree(st.root, final_rel.c_str());
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.committing.erase(id_);
    if (r == 0) {
      st.total += meta.length;
      st.index[id_].meta = std::move(meta);
    }
  }
  st.committed_cv.notify_all();
  if (r != 0) return set_failed(-r, msg, err);
  hook("committed");
  ::close(fd_);
  fd_ = -1;
  done_ = true;
  return 0;
}

void Writer::abort() {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  remove_tree(store_->impl_->root, tmp_rel_.c_str());
}

int Writer::open_data(std::string* err, bool direct) const {
  std::string rel = tmp_rel_ + "/data";
  if (done_)
    return fail_with(err, EINVAL, store_->impl_->path(rel) + ": writer already committed or aborted");
  int fd = -1;
  if (direct && direct_.load())
    fd = ::openat(store_->impl_->root, rel.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0) fd = ::openat(store_->impl_->root, rel.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_with(err, errno, sys_msg("open", store_->impl_->path(rel), errno));
  return fd;
}

}  // namespace shoal::task
