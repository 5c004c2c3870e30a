// Text output shared by the commands: sizes, ages, tables, JSON, progress.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return std::to_string(n) + " B";
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string human_age(double seconds) {
  if (seconds < 0) seconds = 0;
  auto s = static_cast<long long>(seconds);
  char buf[32];
  if (s < 60)
    snprintf(buf, sizeof buf, "%llds", s);
  else if (s < 3600)
    snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400)
    snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s / 60 % 60);
  else
    snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, s / 3600 % 24);
  return buf;
}

void print_json(const cJSON* o) {
  char* t = cJSON_PrintUnformatted(o);
  printf("%s\n", t ? t : "null");
  cJSON_free(t);
}

Json json_null() { return Json(nullptr, cJSON_Delete); }

void Table::print(FILE* out) const {
  std::vector<size_t> w;
  for (const auto& r : rows_)
    for (size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  for (const auto& r : rows_) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    fprintf(out, "%s\n", line.c_str());
  }
}

double now_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

Progress::Progress(std::string label, uint64_t total, bool enabled)
    : label_(std::move(label)), total_(total), on_(enabled && isatty(STDERR_FILENO)), start_(now_seconds()) {}

Progress::~Progress() { finish(); }

void Progress::update(uint64_t done) {
  done_ = done;
  draw(false);
}

void Progress::finish() {
  if (!on_ || drawn_ == 0) return;
  fprintf(stderr, "\r%s\r", std::string(drawn_, ' ').c_str());
  fflush(stderr);
  drawn_ = 0;
}

void Progress::draw(bool force) {
  if (!on_) return;
  double now = now_seconds();
  if (!force && now - last_draw_ < 0.1) return;
  last_draw_ = now;
  double el = now - start_;
  double rate = el > 0 ? static_cast<double>(done_) / el : 0;
  std::string line = label_;
  if (line.size() > 24) line = line.substr(0, 11) + ".." + line.substr(line.size() - 11);
  line += " ";
  if (total_ > 0) {
    double f = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    const int width = 24;
    int full = static_cast<int>(f * width);
    char pct[8];
    snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(f * 100));
    line += std::string(pct) + " [" + std::string(static_cast<size_t>(full), '=') +
            (full < width ? ">" + std::string(static_cast<size_t>(width - full - 1), ' ') : "") + "] ";
    line += human_bytes(done_) + " / " + human_bytes(total_);
  } else {
    line += human_bytes(done_);
  }
  line += "  " + human_bytes(static_cast<uint64_t>(rate)) + "/s";
  if (total_ > 0 && rate > 0 && done_ < total_)
    line += "  ETA " + human_age(static_cast<double>(total_ - done_) / rate);
  size_t len = line.size();
  if (len < drawn_) line += std::string(drawn_ - len, ' ');
  fprintf(stderr, "\r%s", line.c_str());
  fflush(stderr);
  drawn_ = std::max(drawn_, len);
}

std::string excerpt(const std::string& body) {
  std::string s = body.substr(0, 300);
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

}  // namespace shoal::ctl
