// Interception: the daemon's side of transparent interception. Picks the
// redirect backend (transparent.mode), attaches the configured cgroups,
// answers the admin commands attach/detach/run/cleanup, and owns the job
// cgroups `shoalctl run` asks for (made below transparent.jobParent, removed
// once empty). Internal to the daemon module; control-loop thread only.
#pragma once

#include <uv.h>

#include <string>
#include <utility>
#include <vector>

#include "shoal/config/config.h"
#include "shoal/proxy/worker.h"

struct cJSON;

namespace shoal::daemon {

class Interception {
 public:
  Interception() = default;
  ~Interception();
  Interception(const Interception&) = delete;
  Interception& operator=(const Interception&) = delete;

  // Opens the backend into shared.redirect and sets shared.mark. With mode
  // auto, a host where neither backend works leaves the explicit proxy only
  // (logged with both reasons) and returns true; with ebpf or iptables named
  // explicitly, failure is an error (false, *err). off: nothing.
  bool setup(const config::Config& cfg, proxy::Shared& shared, uv_loop_t* loop, std::string* err);
  // True when a backend runs: the caller then binds the transparent
  // listeners (127.0.0.1 and ::1 on transparent.port).
  bool active() const { return shared_ != nullptr && shared_->redirect != nullptr; }
  // Attaches transparent.cgroups. A failure is logged, not fatal: a batch
  // system may create the cgroup later (slurmd makes slurmstepd.scope when
  // it starts), and the once-a-second sweep attaches a configured cgroup as
  // soon as it exists, again after it was removed and made anew, until
  // `shoalctl detach` says otherwise.
  void attach_configured(const config::Config& cfg);
  // "ebpf", "iptables", or "off" (with the reason in status()).
  std::string mode() const;

  // Admin commands; each adds its answer's fields to out (an object that
  // already holds "ok": the caller sets it from the return value).
  // detach of a cgroup that no longer exists (a job's, removed by the batch
  // system, which the sweep may already have dropped) succeeds with a
  // "note" saying so: an epilog must not fail for it.
  bool attach(const std::string& path, cJSON* out);
  bool detach(const std::string& path, cJSON* out);
  // Makes a job cgroup, attaches it (through its parent), and moves pid
  // (the caller, from SO_PEERCRED) into it. name: optional, [A-Za-z0-9_.-].
  bool run(int pid, unsigned uid, const std::string& name, cJSON* out);
  // Removes empty job cgroups, and the iptables rules of a dead daemon
  // (never this daemon's own rules).
  bool cleanup(cJSON* out);
  void status(cJSON* out) const;

  // Detaches everything and removes the empty job cgroups: daemon stop,
  // after the workers have finished.
  void stop();

 private:
  void sweep_jobs();
  // Drops attachments whose cgroup was removed (logged), and attaches the
  // configured cgroups that exist but are not attached.
  void watch_cgroups();
  bool ensure_job_parent(std::string* err);

  proxy::Shared* shared_ = nullptr;
  std::string mode_ = "off";
  std::string why_;  // why the mode is off or a fallback (auto)
  std::string mount_;
  std::string job_parent_;  // absolute; attached while it exists
  void adopt_jobs();
  std::vector<std::string> jobs_;  // absolute paths of job cgroups we made
  // transparent.cgroups, absolute, less those `shoalctl detach` removed;
  // with the last attach error logged for each (so a retry every second
  // logs only when the reason changes).
  std::vector<std::pair<std::string, std::string>> wanted_;
  uint64_t job_seq_ = 0;
  uv_timer_t sweep_{};
  bool sweep_inited_ = false;
};

}  // namespace shoal::daemon
