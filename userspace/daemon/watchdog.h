// Watchdog: the service manager's readiness and liveness protocol
// (sd_notify, done by hand: one datagram to $NOTIFY_SOCKET) and a thread
// that makes sure every event loop still turns.
//
// Each registered loop is poked every tick (poke() must make beat(i) run on
// that loop: a posted task or a uv_async). A loop that has not answered for
// stall_s is stalled: shoald then exits (SIGABRT, no core file) rather than
// keep jobs' connections hanging; its BPF links go with the process, so jobs
// connect directly (fail-open), and systemd restarts it. WATCHDOG=1 goes to
// the service manager every WATCHDOG_USEC/2, and only while every loop is
// healthy, so a stall the thread itself cannot see (stall_s 0) still ends
// in systemd's watchdog action. Internal to the daemon module.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shoal::daemon {

// Sends state ("READY=1", "STATUS=…", "WATCHDOG=1", "STOPPING=1", several
// joined by '\n') to $NOTIFY_SOCKET (a path, or "@name" for an abstract
// socket). False when there is no socket or the send failed. Any thread.
bool sd_notify(const std::string& state);

// $WATCHDOG_USEC, when $WATCHDOG_PID is unset or names this process; else 0.
uint64_t systemd_watchdog_usec();

class Watchdog {
 public:
  Watchdog() = default;
  ~Watchdog() { stop(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Registers a loop before start(); returns its index for beat().
  size_t add_loop(std::string name, std::function<void()> poke);
  // Called on loop i, in answer to a poke. Any thread.
  void beat(size_t i);
  // Starts the thread. stall_s: 0 = no stall detection (pings only).
  // Does nothing when there is neither stall detection nor a systemd
  // watchdog to ping.
  void start(double stall_s);
  // Joins the thread; loops are no longer watched (daemon stop: loops end
  // one by one and must not look stalled). Idempotent. Control thread.
  void stop();
  // The loop names, for the debug hook's messages.
  std::vector<std::string> names() const;

 private:
  struct Loop {
    std::string name;
    std::function<void()> poke;
    std::atomic<uint64_t> last_ms{0};  // steady clock, last beat
    std::atomic<bool> pending{false};  // poked, no beat yet
  };
  void run();
  [[noreturn]] void stalled(const Loop& l, uint64_t silent_ms);

  std::vector<std::unique_ptr<Loop>> loops_;
  uint64_t stall_ms_ = 0, ping_ms_ = 0, tick_ms_ = 1000;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

// Milliseconds on the steady clock (the watchdog's time base).
uint64_t steady_ms();

}  // namespace shoal::daemon
