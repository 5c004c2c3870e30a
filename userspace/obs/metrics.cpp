#include "shoal/obs/metrics.h"

#include <cmath>
#include <cstdio>

namespace shoal::obs {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size()]) {
  for (size_t i = 0; i < bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::observe(double v) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (v <= bounds_[i]) {
      counts_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  if (v > 0) sum_micro_.fetch_add(static_cast<uint64_t>(std::llround(v * 1e6)), std::memory_order_relaxed);
}

double Histogram::sum() const {
  return static_cast<double>(sum_micro_.load(std::memory_order_relaxed)) / 1e6;
}

std::vector<double> Registry::default_seconds_bounds() {
  return {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};
}

Registry::Family& Registry::family(const std::string& name, const std::string& help, Kind kind) {
  for (auto& f : families_)
    if (f.name == name) return f;
  families_.push_back(Family{name, help, kind, {}, {}, {}, {}});
  return families_.back();
}

Counter& Registry::counter(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = family(name, help, Kind::Counter);
  for (size_t i = 0; i < f.labels.size(); ++i)
    if (f.labels[i] == labels) return f.counters[i];
  f.labels.push_back(labels);
  f.counters.emplace_back();
  return f.counters.back();
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = family(name, help, Kind::Gauge);
  for (size_t i = 0; i < f.labels.size(); ++i)
    if (f.labels[i] == labels) return f.gauges[i];
  f.labels.push_back(labels);
  f.gauges.emplace_back();
  return f.gauges.back();
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, const std::string& labels,
                               std::vector<double> bounds) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = family(name, help, Kind::Histogram);
  for (size_t i = 0; i < f.labels.size(); ++i)
    if (f.labels[i] == labels) return f.histograms[i];
  f.labels.push_back(labels);
  f.histograms.emplace_back(std::move(bounds));
  return f.histograms.back();
}

namespace {
std::string fmt_double(double v) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
std::string with_labels(const std::string& labels, const std::string& extra = "") {
  std::string all = labels;
  if (!extra.empty()) all += (all.empty() ? "" : ",") + extra;
  return all.empty() ? std::string() : "{" + all + "}";
}
}  // namespace

std::string Registry::render() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::string out;
  for (const auto& f : families_) {
    const char* type = f.kind == Kind::Counter ? "counter" : f.kind == Kind::Gauge ? "gauge" : "histogram";
    out += "# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + type + "\n";
    for (size_t i = 0; i < f.labels.size(); ++i) {
      if (f.kind == Kind::Counter) {
        out += f.name + with_labels(f.labels[i]) + " " + std::to_string(f.counters[i].value()) + "\n";
      } else if (f.kind == Kind::Gauge) {
        out += f.name + with_labels(f.labels[i]) + " " + std::to_string(f.gauges[i].value()) + "\n";
      } else {
        const Histogram& h = f.histograms[i];
        uint64_t cum = 0;
        for (size_t b = 0; b < h.bounds().size(); ++b) {
          cum += h.bucket(b);
          out += f.name + "_bucket" + with_labels(f.labels[i], "le=\"" + fmt_double(h.bounds()[b]) + "\"") +
                 " " + std::to_string(cum) + "\n";
        }
        out += f.name + "_bucket" + with_labels(f.labels[i], "le=\"+Inf\"") + " " +
               std::to_string(h.count()) + "\n";
        out += f.name + "_sum" + with_labels(f.labels[i]) + " " + fmt_double(h.sum()) + "\n";
        out += f.name + "_count" + with_labels(f.labels[i]) + " " + std::to_string(h.count()) + "\n";
      }
    }
  }
  return out;
}

std::vector<std::pair<std::string, double>> Registry::snapshot() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::pair<std::string, double>> out;
  for (const auto& f : families_) {
    for (size_t i = 0; i < f.labels.size(); ++i) {
      std::string key = f.name + with_labels(f.labels[i]);
      if (f.kind == Kind::Counter) out.emplace_back(key, static_cast<double>(f.counters[i].value()));
      if (f.kind == Kind::Gauge) out.emplace_back(key, static_cast<double>(f.gauges[i].value()));
    }
  }
  return out;
}

Registry& metrics() {
  static Registry r;
  return r;
}

}  // namespace shoal::obs
