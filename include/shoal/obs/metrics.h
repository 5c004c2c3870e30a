// Process-wide metrics rendered as Prometheus text (exposition format 0.0.4)
// on the loopback metrics port. Names follow Prometheus conventions: the
// shoal_ prefix, _total for counters, _bytes and _seconds units. Counters and
// histograms are lock-free atomics, updated from any thread; registration
// (get-or-create) takes a lock and is meant for start-up or first use, so hot
// paths keep the returned reference.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace shoal::obs {

class Counter {
 public:
  void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge {
 public:
  void add(int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  void set(int64_t n) { v_.store(n, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // one per bound, non-cumulative
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micro_{0};  // sum in millionths, to stay lock-free
};

class Registry {
 public:
  // labels: preformatted Prometheus label pairs without braces, e.g.
  // `route="hijack"`, or "" for none. Same name+labels returns the same object.
  Counter& counter(const std::string& name, const std::string& help, const std::string& labels = "");
  Gauge& gauge(const std::string& name, const std::string& help, const std::string& labels = "");
  Histogram& histogram(const std::string& name, const std::string& help, const std::string& labels = "",
                       std::vector<double> bounds = default_seconds_bounds());
  std::string render() const;
  // Every counter and gauge as ("name{labels}", value), for status reports.
  std::vector<std::pair<std::string, double>> snapshot() const;
  static std::vector<double> default_seconds_bounds();

 private:
  enum class Kind { Counter, Gauge, Histogram };
  struct Family {
    std::string name, help;
    Kind kind;
    std::vector<std::string> labels;
    std::deque<Counter> counters;
    std::deque<Gauge> gauges;
    std::deque<Histogram> histograms;
  };
  Family& family(const std::string& name, const std::string& help, Kind kind);
  mutable std::mutex mu_;
  std::deque<Family> families_;
};

// The daemon's registry.
Registry& metrics();

}  // namespace shoal::obs
