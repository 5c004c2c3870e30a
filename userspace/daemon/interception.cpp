#include "interception.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "shoal/obs/log.h"

namespace shoal::daemon {

namespace {

using obs::log_error;
using obs::log_info;
using obs::log_warn;

// How often job cgroups are checked for emptiness. cgroup.events could be
// watched with inotify, but a job lives minutes to days: a second is plenty.
constexpr uint64_t kSweepMs = 1000;

bool valid_job_name(const std::string& n) {
  if (n.empty() || n.size() > 64 || n[0] == '.') return false;
  for (char c : n)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

// "populated 0" in cgroup.events: no process left in it or below it.
bool cgroup_empty(const std::string& dir) {
  std::ifstream f(dir + "/cgroup.events");
  std::string key;
  int val = 1;
  while (f >> key >> val)
    if (key == "populated") return val == 0;
  return false;  // unreadable: leave it alone
}

bool mkdir_p(const std::string& path, std::string* err) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        *err = "mkdir " + cur + ": " + strerror(errno);
        return false;
      }
    }
    if (i < path.size()) cur += path[i];
  }
  return true;
}

bool write_file(const std::string& path, const std::string& text, std::string* err) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = "open " + path + ": " + strerror(errno);
    return false;
  }
  ssize_t n = write(fd, text.data(), text.size());
  int e = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) {
    *err = "write " + path + ": " + strerror(n < 0 ? e : EIO);
    return false;
  }
  return true;
}

void set_error(cJSON* out, const std::string& err) { cJSON_AddStringToObject(out, "error", err.c_str()); }

}  // namespace

Interception::~Interception() { stop(); }

bool Interception::setup(const config::Config& cfg, proxy::Shared& shared, uv_loop_t* loop,
                         std::string* err) {
  using TM = config::Config::TransparentMode;
  shared_ = &shared;
  if (cfg.transparent_mode == TM::Off) {
    why_ = "transparent.mode is off";
    log_info("transparent interception off").str("reason", why_);
    return true;
  }
  std::string merr;
  if (!redirect::cgroup2_mount(&mount_, &merr)) {
    why_ = merr;
    if (cfg.transparent_mode != TM::Auto) {
      *err = "transparent interception: " + merr;
      return false;
    }
    log_warn("transparent interception unavailable; explicit proxy only").str("reason", why_);
    return true;
  }
  redirect::Options ro;
  ro.ports = cfg.transparent_ports;
  ro.listen_port = cfg.transparent_port;
  ro.mark = cfg.transparent_mark;
  ro.cgroup_root = mount_;
  std::unique_ptr<redirect::Backend> be;
  std::string ebpf_why, ipt_why;
  if (cfg.transparent_mode == TM::Auto || cfg.transparent_mode == TM::Ebpf) {
    be = redirect::open_ebpf(ro, &ebpf_why);
    if (!be && cfg.transparent_mode == TM::Ebpf) {
      *err = "transparent.mode ebpf: " + ebpf_why;
      return false;
    }
  }
  if (!be && (cfg.transparent_mode == TM::Auto || cfg.transparent_mode == TM::Iptables)) {
    be = redirect::open_iptables(ro, &ipt_why);
    if (!be && cfg.transparent_mode == TM::Iptables) {
      *err = "transparent.mode iptables: " + ipt_why;
      return false;
    }
  }
  if (!be) {
    why_ = "eBPF: " + ebpf_why + "; iptables: " + ipt_why;
    log_warn("transparent interception unavailable; explicit proxy only").str("reason", why_);
    return true;
  }
  mode_ = be->name();
  if (!ebpf_why.empty()) why_ = "eBPF: " + ebpf_why;
  if (mode_ == "ebpf") {
    // Rules a killed iptables-mode daemon left would still send jobs to the
    // listener, where no map entry explains them.
    std::string cerr;
    int stale = redirect::cleanup_iptables(&cerr);
    if (stale > 0)
      log_warn("removed stale Shoal iptables rules").num("chains", stale);
    else if (stale < 0)
      log_warn("cannot check for stale Shoal iptables rules").str("error", cerr);
  }
  auto line = log_info("transparent interception ready");
  line.str("mode", mode_).str("cgroup2", mount_).num("port", cfg.transparent_port);
  if (!why_.empty()) line.str("fallback_reason", why_);
  shared.redirect = std::move(be);
  shared.mark = cfg.transparent_mark;
  std::string perr;
  if (!redirect::cgroup_path(mount_, cfg.transparent_job_parent, &job_parent_, &perr))
    log_warn("transparent.jobParent unusable; shoalctl run is off").str("error", perr);
  adopt_jobs();
  uv_timer_init(loop, &sweep_);
  sweep_.data = this;
  sweep_inited_ = true;
  uv_timer_start(
      &sweep_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Interception*>(t->data);
        self->sweep_jobs();
        self->watch_cgroups();
      },
      kSweepMs, kSweepMs);
  // The sweep alone must not keep the control loop alive at stop.
  uv_unref(reinterpret_cast<uv_handle_t*>(&sweep_));
  return true;
}

std::string Interception::mode() const { return active() ? mode_ : "off"; }

void Interception::attach_configured(const config::Config& cfg) {
  if (!active()) {
    if (!cfg.transparent_cgroups.empty())
      log_warn("transparent.cgroups not attached: interception unavailable").str("reason", why_);
    return;
  }
  for (const std::string& path : cfg.transparent_cgroups) {
    std::string err, abs;
    if (redirect::cgroup_path(mount_, path, &abs, &err)) wanted_.emplace_back(abs, "");
    if (shared_->redirect->attach(path, &err)) {
      log_info("cgroup attached").str("cgroup", path).str("mode", mode_);
    } else {
      log_error("cgroup not attached; attached once it exists").str("cgroup", path).str("error", err);
      if (!wanted_.empty() && wanted_.back().first == abs) wanted_.back().second = err;
    }
  }
}

void Interception::watch_cgroups() {
  if (!active()) return;
  std::vector<std::string> errs;
  for (const std::string& p : shared_->redirect->prune(&errs))
    log_info("attached cgroup removed; detached").str("cgroup", p).str("mode", mode_);
  for (const std::string& e : errs) log_warn("cannot delete a removed cgroup's rules").str("error", e);
  if (wanted_.empty()) return;
  const std::vector<std::string> now = shared_->redirect->attached();
  for (auto& [path, last_err] : wanted_) {
    bool on = false;
    for (const std::string& a : now) on = on || a == path;
    struct stat st {};
    if (on || stat(path.c_str(), &st) != 0) continue;  // attached, or not (yet) there
    std::string err;
    if (shared_->redirect->attach(path, &err)) {
      log_info("cgroup attached").str("cgroup", path).str("mode", mode_).str("reason", "transparent.cgroups");
      last_err.clear();
    } else if (err != last_err) {
      log_error("cgroup not attached").str("cgroup", path).str("error", err);
      last_err = err;
    }
  }
}

bool Interception::attach(const std::string& path, cJSON* out) {
  std::string err;
  if (!active()) {
    set_error(out, "transparent interception is unavailable: " + why_);
    return false;
  }
  if (!shared_->redirect->attach(path, &err)) {
    set_error(out, err);
    return false;
  }
  log_info("cgroup attached").str("cgroup", path).str("mode", mode_).str("by", "shoalctl");
  cJSON_AddStringToObject(out, "cgroup", path.c_str());
  return true;
}

bool Interception::detach(const std::string& path, cJSON* out) {
  std::string err;
  if (!active()) {
    set_error(out, "transparent interception is unavailable: " + why_);
    return false;
  }
  std::string abs;
  if (!redirect::cgroup_path(mount_, path, &abs, &err)) {
    set_error(out, err);
    return false;
  }
  // An explicit detach outranks transparent.cgroups until the next start.
  for (auto it = wanted_.begin(); it != wanted_.end(); ++it) {
    if (it->first == abs) {
      wanted_.erase(it);
      break;
    }
  }
  // A cgroup removed a moment ago is dropped now rather than at the next
  // sweep, so the answer below does not depend on the timing.
  watch_cgroups();
  bool on = false;
  for (const std::string& a : shared_->redirect->attached()) on = on || a == abs;
  struct stat st {};
  if (!on && stat(abs.c_str(), &st) != 0 && errno == ENOENT) {
    cJSON_AddStringToObject(out, "cgroup", abs.c_str());
    cJSON_AddStringToObject(out, "note", "not attached: the cgroup no longer exists");
    return true;
  }
  if (!shared_->redirect->detach(path, &err)) {
    set_error(out, err);
    return false;
  }
  log_info("cgroup detached").str("cgroup", path).str("by", "shoalctl");
  cJSON_AddStringToObject(out, "cgroup", abs.c_str());
  return true;
}

bool Interception::ensure_job_parent(std::string* err) {
  if (job_parent_.empty()) {
    *err = "transparent.jobParent is not usable";
    return false;
  }
  if (!mkdir_p(job_parent_, err)) return false;
  // Every job cgroup below inherits the hooks (eBPF) or matches the rule's
  // path (iptables matches descendants). Checked each time: an admin may
  // have detached it.
  for (const std::string& p : shared_->redirect->attached())
    if (p == job_parent_) return true;
  if (!shared_->redirect->attach(job_parent_, err)) return false;
  log_info("cgroup attached")
      .str("cgroup", job_parent_)
      .str("mode", mode_)
      .str("reason", "transparent.jobParent");
  return true;
}

// Job cgroups a previous daemon made (a restart, a crash) keep their jobs
// intercepted and are removed once empty, like this daemon's own.
void Interception::adopt_jobs() {
  struct stat st {};
  if (job_parent_.empty() || stat(job_parent_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  if (DIR* d = opendir(job_parent_.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
      jobs_.push_back(job_parent_ + "/" + e->d_name);
    }
    closedir(d);
  }
  if (jobs_.empty()) return;  // attached on the next run
  std::string err;
  if (!ensure_job_parent(&err)) {
    log_warn("jobs left by a previous daemon are not intercepted")
        .str("cgroup", job_parent_)
        .str("error", err);
    return;
  }
  log_info("job cgroups adopted").str("parent", job_parent_).num("jobs", static_cast<int64_t>(jobs_.size()));
}

bool Interception::run(int pid, unsigned uid, const std::string& name, cJSON* out) {
  std::string err;
  if (!active()) {
    set_error(out, "transparent interception is unavailable: " + why_);
    return false;
  }
  if (!name.empty() && !valid_job_name(name)) {
    set_error(out, "cgroup name must be 1-64 characters of A-Z a-z 0-9 _ - . (not starting with .)");
    return false;
  }
  if (!ensure_job_parent(&err)) {
    set_error(out, err);
    return false;
  }
  std::string dir = job_parent_ + "/" + (name.empty() ? "job" : name) + "-" + std::to_string(pid) + "-" +
                    std::to_string(++job_seq_);
  if (mkdir(dir.c_str(), 0755) != 0) {
    set_error(out, "mkdir " + dir + ": " + strerror(errno));
    return false;
  }
  if (!write_file(dir + "/cgroup.procs", std::to_string(pid) + "\n", &err)) {
    rmdir(dir.c_str());
    set_error(out, "cannot move pid " + std::to_string(pid) + " into " + dir + ": " + err);
    return false;
  }
  jobs_.push_back(dir);
  log_info("job cgroup made").str("cgroup", dir).num("pid", pid).num("uid", uid);
  cJSON_AddStringToObject(out, "cgroup", dir.c_str());
  return true;
}

void Interception::sweep_jobs() {
  for (size_t i = 0; i < jobs_.size();) {
    const std::string& dir = jobs_[i];
    struct stat st {};
    bool gone = stat(dir.c_str(), &st) != 0;
    if (!gone && cgroup_empty(dir)) {
      if (rmdir(dir.c_str()) == 0) {
        gone = true;
        log_info("job cgroup removed").str("cgroup", dir);
      } else if (errno != EBUSY) {
        log_warn("cannot remove job cgroup").str("cgroup", dir).str("error", strerror(errno));
        gone = true;  // do not retry every second
      }
    }
    if (gone)
      jobs_.erase(jobs_.begin() + static_cast<std::ptrdiff_t>(i));
    else
      ++i;
  }
}

bool Interception::cleanup(cJSON* out) {
  sweep_jobs();
  int removed_dirs = 0;
  // Empty job cgroups a previous daemon left behind.
  if (!job_parent_.empty()) {
    std::ostringstream ls;
    if (DIR* d = opendir(job_parent_.c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
        std::string dir = job_parent_ + "/" + e->d_name;
        if (cgroup_empty(dir) && rmdir(dir.c_str()) == 0) removed_dirs++;
      }
      closedir(d);
    }
  }
  cJSON_AddNumberToObject(out, "cgroups_removed", removed_dirs);
  // A running iptables backend's chain is ours: only another daemon's
  // leftovers could be removed, and those share the chain's name, so the
  // rules are left alone while this daemon uses iptables.
  if (mode() == "iptables") {
    cJSON_AddStringToObject(out, "iptables", "in use by this daemon; left alone");
    return true;
  }
  std::string err;
  int chains = redirect::cleanup_iptables(&err);
  if (chains < 0) {
    set_error(out, err);
    return false;
  }
  cJSON_AddNumberToObject(out, "iptables_chains_removed", chains);
  return true;
}

void Interception::status(cJSON* out) const {
  cJSON* t = cJSON_AddObjectToObject(out, "transparent");
  cJSON_AddStringToObject(t, "mode", mode().c_str());
  if (!why_.empty()) cJSON_AddStringToObject(t, "reason", why_.c_str());
  if (!active()) return;
  cJSON_AddStringToObject(t, "cgroup2", mount_.c_str());
  cJSON* a = cJSON_AddArrayToObject(t, "cgroups");
  for (const std::string& p : shared_->redirect->attached())
    cJSON_AddItemToArray(a, cJSON_CreateString(p.c_str()));
  cJSON_AddNumberToObject(t, "jobs", static_cast<double>(jobs_.size()));
  redirect::Stats s = shared_->redirect->stats();
  cJSON_AddNumberToObject(t, "redirected", static_cast<double>(s.redirected));
  cJSON_AddNumberToObject(t, "skipped", static_cast<double>(s.skipped));
  cJSON_AddNumberToObject(t, "blocked", static_cast<double>(s.blocked));
}

void Interception::stop() {
  if (sweep_inited_) {
    // A failed start closes every handle of the loop itself.
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&sweep_))) {
      uv_timer_stop(&sweep_);
      uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), nullptr);
    }
    sweep_inited_ = false;
  }
  if (shared_ && shared_->redirect) {
    // Links and rules go with the backend; then the jobs' cgroups (empty
    // ones only: a running job keeps its cgroup, no longer intercepted).
    shared_->redirect.reset();
    log_info("transparent interception stopped");
  }
  for (const std::string& dir : jobs_)
    if (cgroup_empty(dir)) rmdir(dir.c_str());
  jobs_.clear();
}

}  // namespace shoal::daemon
