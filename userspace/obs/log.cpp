#include "shoal/obs/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace shoal::obs {
namespace {

// Lines go to one writer thread: a write(2) to core.log can take a
// millisecond or more when the disk is busy, and event loops must not wait
// for it. The queue is bounded; past the bound a line is counted as dropped
// (and the count logged) rather than blocking a loop.
std::mutex g_mu;  // guards everything below but the atomics
std::condition_variable g_cv;
std::deque<std::string> g_queue;
size_t g_queue_bytes = 0;
uint64_t g_dropped = 0;
bool g_stop = false;
std::thread g_writer;
int g_fd = -1;  // core.log; -1 before log_open: lines go to stderr directly
std::string g_dir;
std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::atomic<bool> g_stderr_copy{false};
constexpr size_t kMaxQueueBytes = 16 << 20;
constexpr size_t kWakeBytes = 64 << 10;

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

void writer_main() {
  std::unique_lock<std::mutex> lk(g_mu);
  for (;;) {
    // Producers wake the writer only when a lot is queued (see ~LogLine);
    // otherwise it looks every 20 ms, so a busy loop does not pay a wake-up
    // and a context switch per line.
    g_cv.wait_for(lk, std::chrono::milliseconds(20), [] { return g_stop || g_queue_bytes >= kWakeBytes; });
    if (g_queue.empty()) {
      if (g_stop) return;  // stopping, and drained
      continue;
    }
    std::string batch;
    batch.reserve(g_queue_bytes + 128);
    for (auto& line : g_queue) batch += line;
    g_queue.clear();
    g_queue_bytes = 0;
    if (g_dropped > 0) {
      batch += "{\"level\":\"warn\",\"msg\":\"log lines dropped: core.log writes too slow\",\"dropped\":" +
               std::to_string(g_dropped) + "}\n";
      g_dropped = 0;
    }
    // The write happens under the lock so reopen() cannot close the
    // descriptor under it; producers wait only if they log meanwhile, and
    // then only for a push.
    write_all(g_fd >= 0 ? g_fd : STDERR_FILENO, batch.data(), batch.size());
  }
}

}  // namespace

const char* to_string(Level l) {
  switch (l) {
    case Level::Debug:
      return "debug";
    case Level::Info:
      return "info";
    case Level::Warn:
      return "warn";
    case Level::Error:
      return "error";
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
  if (!g_writer.joinable()) g_writer = std::thread(writer_main);
  return true;
}

bool log_reopen(std::string* err) {
  std::string dir;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    dir = g_dir;
  }
  if (dir.empty()) return true;
  int fd = open_log(dir, err);
  if (fd < 0) return false;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_fd >= 0) close(g_fd);
  g_fd = fd;
  return true;
}

void log_flush() {
  // The writer empties the queue under the lock, so waiting until the
  // queue is empty and then taking the lock once means the batch is written.
  g_cv.notify_one();
  for (;;) {
    {
      std::lock_guard<std::mutex> lk(g_mu);
      if (g_queue.empty() || !g_writer.joinable()) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void log_close() {
  std::thread writer;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_stop = true;
    writer.swap(g_writer);
  }
  g_cv.notify_all();
  if (writer.joinable()) writer.join();  // drains the queue first
  std::lock_guard<std::mutex> lk(g_mu);
  g_stop = false;
  if (g_fd >= 0) close(g_fd);
  g_fd = -1;
  g_dir.clear();
}

void log_set_level(Level l) { g_level.store(static_cast<int>(l)); }
bool log_enabled(Level l) { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }
void log_set_stderr_copy(bool on) { g_stderr_copy.store(on); }

std::string log_path() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_dir.empty() ? std::string() : g_dir + "/core.log";
}

namespace {

// Appends v as a JSON string (quotes included), escaping what RFC 8259
// requires: quote, backslash and control characters.
void append_json_string(std::string& out, std::string_view v) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;  // start of the run of bytes that need no escaping
  for (size_t i = 0; i < v.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(v[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(v.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
  }
  out.append(v.data() + run, v.size() - run);
  out += '"';
}

void append_key(std::string& out, const char* key) {
  out += ',';
  append_json_string(out, key);
  out += ':';
}

}  // namespace

LogLine::LogLine(Level level, std::string_view msg) : level_(level) {
  if (!log_enabled(level)) return;
  char ts[40];
  timestamp(ts, sizeof ts);
  text_.reserve(256);
  text_ = "{\"level\":";
  append_json_string(text_, to_string(level));
  append_key(text_, "ts");
  append_json_string(text_, ts);
  append_key(text_, "msg");
  append_json_string(text_, msg);
}

LogLine::~LogLine() {
  if (text_.empty()) return;
  std::string line = std::move(text_);
  line += "}\n";
  // Warnings and errors also reach a foreground terminal; rare, so written
  // directly.
  if (level_ >= Level::Warn && g_stderr_copy.load()) write_all(STDERR_FILENO, line.data(), line.size());
  std::unique_lock<std::mutex> lk(g_mu);
  if (!g_writer.joinable()) {
    if (!(level_ >= Level::Warn && g_stderr_copy.load())) write_all(STDERR_FILENO, line.data(), line.size());
    return;
  }
  if (g_queue_bytes + line.size() > kMaxQueueBytes) {
    g_dropped++;
    return;
  }
  g_queue_bytes += line.size();
  g_queue.push_back(std::move(line));
  bool wake = g_queue_bytes >= kWakeBytes;
  lk.unlock();
  if (wake) g_cv.notify_one();
}

LogLine& LogLine::str(const char* key, std::string_view value) {
  if (text_.empty()) return *this;
  append_key(text_, key);
  append_json_string(text_, value);
  return *this;
}

LogLine& LogLine::num(const char* key, int64_t value) {
  if (text_.empty()) return *this;
  append_key(text_, key);
  char buf[24];
  snprintf(buf, sizeof buf, "%lld", static_cast<long long>(value));
  text_ += buf;
  return *this;
}

LogLine& LogLine::dbl(const char* key, double value) {
  if (text_.empty()) return *this;
  append_key(text_, key);
  if (!std::isfinite(value)) {
    text_ += "null";  // JSON has no NaN or infinity
    return *this;
  }
  char buf[32];
  snprintf(buf, sizeof buf, "%.15g", value);
  if (std::strtod(buf, nullptr) != value) snprintf(buf, sizeof buf, "%.17g", value);
  text_ += buf;
  return *this;
}

LogLine& LogLine::boolean(const char* key, bool value) {
  if (text_.empty()) return *this;
  append_key(text_, key);
  text_ += value ? "true" : "false";
  return *this;
}

}  // namespace shoal::obs
