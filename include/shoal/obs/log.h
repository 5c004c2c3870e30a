// JSON-line logging to <log-dir>/core.log, one object per line, in
// the shape Dragonfly's core.log has ("level", "ts", "msg", then fields), so
// `grep "peer task done"` and jq work on it. Thread-safe: every thread may
// log. Lines are queued and written by one writer thread in batches, so an
// event loop never waits for the disk; lines never interleave. reopen() is
// for log rotation (SIGUSR1) and may run on any thread; close() writes what
// is queued before it returns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shoal::obs {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };
const char* to_string(Level l);
bool parse_level(std::string_view s, Level* out);

// Opens (creating the directory) <dir>/core.log. Until open() succeeds, lines
// go to stderr. Returns false and sets *err when the file cannot be opened.
bool log_open(const std::string& dir, std::string* err);
bool log_reopen(std::string* err);
// Waits until every line logged so far is written (tests, shutdown).
void log_flush();
void log_close();
void log_set_level(Level l);
bool log_enabled(Level l);
// Also copy Warn and Error lines to stderr (foreground runs).
void log_set_stderr_copy(bool on);
std::string log_path();

// Builds one line; emitted by the destructor. Cheap when the level is off.
//   LogLine(Level::Info, "request").str("host", h).num("status", 200);
class LogLine {
 public:
  LogLine(Level level, std::string_view msg);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  LogLine& str(const char* key, std::string_view value);
  LogLine& num(const char* key, int64_t value);
  LogLine& dbl(const char* key, double value);
  LogLine& boolean(const char* key, bool value);

 private:
  // The line so far, without its closing brace; empty when the level is
  // off. Written directly rather than through cJSON's tree, which costs
  // several allocations per field on every request.
  std::string text_;
  Level level_;
};

inline LogLine log_info(std::string_view msg) { return LogLine(Level::Info, msg); }
inline LogLine log_warn(std::string_view msg) { return LogLine(Level::Warn, msg); }
inline LogLine log_error(std::string_view msg) { return LogLine(Level::Error, msg); }
inline LogLine log_debug(std::string_view msg) { return LogLine(Level::Debug, msg); }

}  // namespace shoal::obs
