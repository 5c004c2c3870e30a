#include "scheduler_client.h"

#include <ctime>

#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"

namespace shoal::p2p {
namespace {

// A leave at stop: a scheduler that does not answer soon must not hold the stop.
constexpr uint64_t kLeaveTimeoutMs = 1000;
constexpr uint64_t kDownMs = 3000;
constexpr size_t kMaxAnswer = 8u << 20;

obs::Counter& sched_errors() {
  static obs::Counter& c = obs::metrics().counter(
      "shoal_scheduler_errors_total", "Scheduler calls that failed (refused, timed out, bad answer)");
  return c;
}

}  // namespace

SchedulerClient::SchedulerClient(uv_loop_t* loop, const EngineOptions& opts, Signer& signer, LinkPool* links)
    : loop_(loop), opts_(opts), signer_(signer), links_(links) {
  for (auto& a : opts.schedulers) scheds_.push_back(Sched{a});
  up_.reset(new std::atomic<bool>[scheds_.size()]);
  for (size_t i = 0; i < scheds_.size(); ++i) up_[i] = false;
  uv_timer_init(loop_, &hb_timer_);
  uv_timer_init(loop_, &kick_timer_);
  hb_timer_.data = this;
  kick_timer_.data = this;
}

SchedulerClient::~SchedulerClient() = default;

void SchedulerClient::start() {
  for (size_t i = 0; i < scheds_.size(); ++i) register_with(static_cast<int>(i));
  uv_timer_start(
      &hb_timer_, [](uv_timer_t* t) { static_cast<SchedulerClient*>(t->data)->heartbeat(); }, heartbeat_ms_,
      heartbeat_ms_);
}

void SchedulerClient::stop(std::function<void()> done) {
  pending_.clear();
  for (auto* h : internal_) h->cancel();
  internal_.clear();
  stopped_ = std::move(done);
  closes_ = 2;  // the two timers, and one per leave below
  // Tell the schedulers we are going (they also forget us once the
  // heartbeats stop). Stopping waits for these short calls, whatever their
  // answer: the loop must not stop with a call still owning a socket.
  LeaveReq lv;
  lv.peer = opts_.peer_id;
  for (size_t i = 0; i < scheds_.size(); ++i) {
    if (!scheds_[i].registered) continue;
    ++closes_;
    send(
        static_cast<int>(i), "/v1/leave", encode(lv), [this](CallResult&, bool) { one_closed(); },
        kLeaveTimeoutMs);
  }
  auto on_close = [](uv_handle_t* h) { static_cast<SchedulerClient*>(h->data)->one_closed(); };
  uv_close(reinterpret_cast<uv_handle_t*>(&hb_timer_), on_close);
  uv_close(reinterpret_cast<uv_handle_t*>(&kick_timer_), on_close);
}

void SchedulerClient::one_closed() {
  if (--closes_ == 0 && stopped_) stopped_();
}

int SchedulerClient::pick(const std::string& task_id) const {
  uint64_t now = uv_now(loop_);
  for (size_t i : scheduler_order(task_id, opts_.schedulers))
    if (scheds_[i].down_until <= now) return static_cast<int>(i);
  return -1;
}

HttpCall* SchedulerClient::send(int i, const std::string& path, const std::string& body,
                                std::function<void(CallResult&, bool)> done, uint64_t timeout_ms) {
  std::string nonce;
  auto hs = signer_.sign("POST", path, body, static_cast<int64_t>(time(nullptr)), &nonce);
  hs.push_back({"Host", scheds_[static_cast<size_t>(i)].addr});
  hs.push_back({"Content-Type", "application/json"});
  hs.push_back({"Content-Length", std::to_string(body.size())});
  if (links_ == nullptr) hs.push_back({"Connection", "close"});
  std::string req = http::serialize_request_head("POST", path, hs) + body;
  const std::string& addr = scheds_[static_cast<size_t>(i)].addr;
  // Every call with a callback is tracked, so stop() can cancel it before
  // this client goes away.
  auto slot = std::make_shared<HttpCall*>(nullptr);
  Signer* signer = &signer_;
  HttpCall* h = HttpCall::start(
      loop_, addr, std::move(req), kMaxAnswer, timeout_ms, opts_.mark,
      [this, slot, done, nonce, signer](CallResult& r) {
        internal_.erase(*slot);
        bool ok = r.error == 0 && signer->check_response(nonce, r.status, r.headers, r.body);
        done(r, ok);
      },
      nullptr, links_);
  *slot = h;
  internal_.insert(h);
  return h;
}

void SchedulerClient::mark_down(int i, const std::string& why) {
  Sched& s = scheds_[static_cast<size_t>(i)];
  sched_errors().inc();
  s.down_until = uv_now(loop_) + kDownMs;
  s.registered = false;
  up_[static_cast<size_t>(i)] = false;
  if (!s.logged_down) {
    obs::log_warn("scheduler unreachable").str("scheduler", s.addr).str("error", why);
    s.logged_down = true;
  }
}

void SchedulerClient::register_with(int i) {
  Sched& s = scheds_[static_cast<size_t>(i)];
  if (s.registering) return;
  s.registering = true;
  RegisterReq rq;
  rq.peer = opts_.peer_id;
  rq.addr = opts_.advertise;
  rq.labels = opts_.labels;
  rq.slots = opts_.upload_slots;
  send(i, "/v1/register", encode(rq), [this, i](CallResult& r, bool ok) {
    Sched& sc = scheds_[static_cast<size_t>(i)];
    sc.registering = false;
    RegisterResp resp;
    std::string err;
    if (!ok || r.status != 200 || !decode(r.body, &resp, &err)) {
      mark_down(i, r.error ? r.why
                   : !ok   ? "answer not signed with the cluster secret"
                           : "register: HTTP " + std::to_string(r.status) + " " + r.body);
      return;
    }
    sc.registered = true;
    sc.down_until = 0;
    up_[static_cast<size_t>(i)] = true;
    if (sc.logged_down) obs::log_info("scheduler reachable again").str("scheduler", sc.addr);
    sc.logged_down = false;
    if (resp.heartbeat_ms >= 100 && resp.heartbeat_ms != heartbeat_ms_) {
      heartbeat_ms_ = resp.heartbeat_ms;
      uv_timer_set_repeat(&hb_timer_, heartbeat_ms_);
    }
    if (on_registered) on_registered(i);
  });
}

void SchedulerClient::heartbeat() {
  uint64_t now = uv_now(loop_);
  for (size_t k = 0; k < scheds_.size(); ++k) {
    int i = static_cast<int>(k);
    Sched& s = scheds_[k];
    if (s.registering || s.heartbeat_inflight) continue;
    if (!s.registered) {
      if (s.down_until <= now) register_with(i);
      continue;
    }
    HeartbeatReq hb;
    hb.peer = opts_.peer_id;
    hb.free_slots = free_slots ? free_slots() : opts_.upload_slots;
    s.heartbeat_inflight = true;
    send(i, "/v1/heartbeat", encode(hb), [this, i](CallResult& r, bool ok) {
      Sched& sc = scheds_[static_cast<size_t>(i)];
      sc.heartbeat_inflight = false;
      if (ok && r.status == 404) {
        sc.registered = false;
        register_with(i);
      } else if (!ok || r.status != 200) {
        mark_down(i, r.error ? r.why : "heartbeat: HTTP " + std::to_string(r.status));
      }
    });
  }
}

uint64_t SchedulerClient::call(const std::string& task_id, const std::string& path, std::string body,
                               Reply cb) {
  uint64_t id = next_id_++;
  Pending& p = pending_[id];
  p.id = id;
  p.task = task_id;
  p.path = path;
  p.body = std::move(body);
  p.cb = std::move(cb);
  attempt(id);
  return id;
}

void SchedulerClient::cancel(uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  if (it->second.http) {
    internal_.erase(it->second.http);
    it->second.http->cancel();
  }
  pending_.erase(it);
}

void SchedulerClient::deliver_later(uint64_t id) {
  failed_.push_back(id);
  uv_timer_start(
      &kick_timer_,
      [](uv_timer_t* t) {
        auto* s = static_cast<SchedulerClient*>(t->data);
        std::deque<uint64_t> q;
        q.swap(s->failed_);
        for (uint64_t fid : q) {
          auto it = s->pending_.find(fid);
          if (it == s->pending_.end()) continue;
          Reply cb = std::move(it->second.cb);
          s->pending_.erase(it);
          cb(-1, "", -1);
        }
      },
      0, 0);
}

void SchedulerClient::attempt(uint64_t id) {
  Pending& p = pending_[id];
  uint64_t now = uv_now(loop_);
  int chosen = -1;
  for (size_t i : scheduler_order(p.task, opts_.schedulers)) {
    int k = static_cast<int>(i);
    if (p.tried.count(k) || scheds_[i].down_until > now) continue;
    chosen = k;
    break;
  }
  if (chosen < 0) {
    p.http = nullptr;
    deliver_later(id);
    return;
  }
  p.tried.insert(chosen);
  if (!scheds_[static_cast<size_t>(chosen)].registered) register_with(chosen);
  p.http = send(chosen, p.path, p.body, [this, id, chosen](CallResult& r, bool ok) {
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    it->second.http = nullptr;
    if (!ok) {
      mark_down(chosen, r.error ? r.why : "answer not signed with the cluster secret");
      attempt(id);
      return;
    }
    if (r.status == 404) {
      // It forgot us (restarted, or we were silent too long).
      scheds_[static_cast<size_t>(chosen)].registered = false;
      register_with(chosen);
    }
    Reply cb = std::move(it->second.cb);
    pending_.erase(it);
    cb(r.status, r.body, chosen);
  });
}

}  // namespace shoal::p2p
