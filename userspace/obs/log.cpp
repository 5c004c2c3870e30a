#include "shoal/obs/log.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>

namespace shoal::obs {
namespace {

std::mutex g_mu;           // guards g_fd swaps and g_dir; writes use the fd copy
int g_fd = -1;             // -1: stderr
std::string g_dir;
std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::atomic<bool> g_stderr_copy{false};

bool make_dirs(const std::string& dir, std::string* err) {
  std::string cur;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        *err = "cannot create " + cur + ": " + std::strerror(errno);
        return false;
      }
    }
    if (i < dir.size()) cur += dir[i];
  }
  return true;
}

int open_log(const std::string& dir, std::string* err) {
  if (!make_dirs(dir, err)) return -1;
  std::string path = dir + "/core.log";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) *err = "cannot open " + path + ": " + std::strerror(errno);
  return fd;
}

void timestamp(char* buf, size_t cap) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  size_t n = strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &t);
  snprintf(buf + n, cap - n, ".%03ld", ts.tv_nsec / 1000000);
}

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere left to report a failing log write
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

const char* to_string(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
  }
  return "info";
}

bool parse_level(std::string_view s, Level* out) {
  for (Level l : {Level::Debug, Level::Info, Level::Warn, Level::Error}) {
    if (s == to_string(l)) {
      *out = l;
      return true;
    }
  }
  if (s == "warning") {
    *out = Level::Warn;
    return true;
  }
  return false;
}

bool log_open(const std::string& dir, std::string* err) {
  int fd = open_log(dir, err);
  if (fd < 0) return false;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_fd >= 0) close(g_fd);
  g_fd = fd;
  g_dir = dir;
  return true;
}

bool log_reopen(std::string* err) {
  std::string dir;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    dir = g_dir;
  }
  if (dir.empty()) return true;
  return log_open(dir, err);
}

void log_close() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_fd >= 0) close(g_fd);
  g_fd = -1;
}

void log_set_level(Level l) { g_level.store(static_cast<int>(l)); }
bool log_enabled(Level l) { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }
void log_set_stderr_copy(bool on) { g_stderr_copy.store(on); }

std::string log_path() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_dir.empty() ? std::string() : g_dir + "/core.log";
}

LogLine::LogLine(Level level, std::string_view msg) : level_(level) {
  if (!log_enabled(level)) return;
  obj_ = cJSON_CreateObject();
  if (!obj_) return;
  char ts[40];
  timestamp(ts, sizeof ts);
  cJSON_AddStringToObject(obj_, "level", to_string(level));
  cJSON_AddStringToObject(obj_, "ts", ts);
  cJSON_AddStringToObject(obj_, "msg", std::string(msg).c_str());
}

LogLine::~LogLine() {
  if (!obj_) return;
  char* text = cJSON_PrintUnformatted(obj_);
  cJSON_Delete(obj_);
  if (!text) return;
  std::string line(text);
  cJSON_free(text);
  line += '\n';
  // Hold the lock across the write so reopen() cannot close the descriptor
  // under us; writes are short and O_APPEND keeps them whole.
  std::lock_guard<std::mutex> lk(g_mu);
  int fd = g_fd >= 0 ? g_fd : STDERR_FILENO;
  write_all(fd, line.data(), line.size());
  if (fd != STDERR_FILENO && level_ >= Level::Warn && g_stderr_copy.load())
    write_all(STDERR_FILENO, line.data(), line.size());
}

LogLine& LogLine::str(const char* key, std::string_view value) {
  if (obj_) cJSON_AddStringToObject(obj_, key, std::string(value).c_str());
  return *this;
}

LogLine& LogLine::num(const char* key, int64_t value) {
  if (obj_) cJSON_AddNumberToObject(obj_, key, static_cast<double>(value));
  return *this;
}

LogLine& LogLine::dbl(const char* key, double value) {
  if (obj_) cJSON_AddNumberToObject(obj_, key, value);
  return *this;
}

LogLine& LogLine::boolean(const char* key, bool value) {
  if (obj_) cJSON_AddBoolToObject(obj_, key, value);
  return *this;
}

}  // namespace shoal::obs
