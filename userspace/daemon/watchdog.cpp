#include "watchdog.h"

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shoal/obs/log.h"

namespace shoal::daemon {

uint64_t steady_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

bool sd_notify(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  size_t n = strlen(path);
  if (n >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@')) return false;
  memcpy(sa.sun_path, path, n);
  if (path[0] == '@') sa.sun_path[0] = '\0';  // abstract namespace
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ssize_t w = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&sa), len);
  close(fd);
  return w == static_cast<ssize_t>(state.size());
}

uint64_t systemd_watchdog_usec() {
  const char* us = std::getenv("WATCHDOG_USEC");
  if (us == nullptr) return 0;
  if (const char* pid = std::getenv("WATCHDOG_PID"); pid != nullptr && std::atol(pid) != getpid()) return 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(us, &end, 10);
  return end != us && *end == '\0' ? v : 0;
}

size_t Watchdog::add_loop(std::string name, std::function<void()> poke) {
  auto l = std::make_unique<Loop>();
  l->name = std::move(name);
  l->poke = std::move(poke);
  loops_.push_back(std::move(l));
  return loops_.size() - 1;
}

void Watchdog::beat(size_t i) {
  loops_[i]->last_ms.store(steady_ms(), std::memory_order_relaxed);
  loops_[i]->pending.store(false, std::memory_order_release);
}

std::vector<std::string> Watchdog::names() const {
  std::vector<std::string> v;
  for (const auto& l : loops_) v.push_back(l->name);
  return v;
}

void Watchdog::start(double stall_s) {
  stall_ms_ = static_cast<uint64_t>(stall_s * 1000.0);
  uint64_t wd_us = systemd_watchdog_usec();
  ping_ms_ = wd_us / 2000;
  if (wd_us > 0 && ping_ms_ == 0) ping_ms_ = 1;
  if (stall_ms_ == 0 && ping_ms_ == 0) return;
  // Four looks per stall period and per ping period: a stall is seen at
  // most a quarter late, and a ping never misses its deadline.
  tick_ms_ = 1000;
  if (stall_ms_ > 0) tick_ms_ = std::min(tick_ms_, stall_ms_ / 4);
  if (ping_ms_ > 0) tick_ms_ = std::min(tick_ms_, ping_ms_ / 2);
  tick_ms_ = std::max<uint64_t>(tick_ms_, 10);
  uint64_t now = steady_ms();
  for (auto& l : loops_) l->last_ms.store(now);
  obs::log_info("watchdog started")
      .num("loops", static_cast<int64_t>(loops_.size()))
      .num("stall_timeout_ms", static_cast<int64_t>(stall_ms_))
      .num("systemd_ping_ms", static_cast<int64_t>(ping_ms_));
  thread_ = std::thread([this] { run(); });
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::run() {
  uint64_t last_ping = 0;
  // With stall detection off, "healthy" for the systemd ping means
  // answered within half of systemd's own timeout.
  uint64_t unhealthy_ms = stall_ms_ > 0 ? stall_ms_ : ping_ms_;
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    lk.unlock();
    uint64_t now = steady_ms();
    bool healthy = true;
    for (auto& l : loops_) {
      uint64_t silent = now - std::min(now, l->last_ms.load(std::memory_order_relaxed));
      if (silent > unhealthy_ms) {
        healthy = false;
        if (stall_ms_ > 0) stalled(*l, silent);
      }
      // One poke in flight per loop: a stalled loop's queue does not grow.
      if (!l->pending.exchange(true, std::memory_order_acq_rel)) l->poke();
    }
    if (ping_ms_ > 0 && healthy && now - last_ping >= ping_ms_) {
      sd_notify("WATCHDOG=1");
      last_ping = now;
    }
    lk.lock();
    cv_.wait_for(lk, std::chrono::milliseconds(tick_ms_), [this] { return stop_; });
  }
}

void Watchdog::stalled(const Loop& l, uint64_t silent_ms) {
  char msg[256];
  snprintf(msg, sizeof msg,
           "event loop %s stalled for %llu ms (watchdog.stallTimeout %llu ms): exiting so jobs connect "
           "directly and the service manager restarts shoald",
           l.name.c_str(), static_cast<unsigned long long>(silent_ms),
           static_cast<unsigned long long>(stall_ms_));
  fprintf(stderr, "shoald: %s\n", msg);
  obs::log_error("watchdog: event loop stalled; exiting")
      .str("loop", l.name)
      .num("stalled_ms", static_cast<int64_t>(silent_ms))
      .num("stall_timeout_ms", static_cast<int64_t>(stall_ms_));
  sd_notify(std::string("STATUS=") + msg);
  // The log writer is a thread of its own; give it a moment, but never
  // wait on a disk that may be the reason for the stall.
  std::thread([] { obs::log_flush(); }).detach();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // No core file: it would hold the CA key.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  signal(SIGABRT, SIG_DFL);
  abort();
}

}  // namespace shoal::daemon
