#include "shoal/task/engine.h"

#include <unistd.h>

#include <ctime>

namespace shoal::task {

ActiveTask::ActiveTask(std::string id, bool by_digest)
    : id_(std::move(id)), by_digest_(by_digest), started_(static_cast<int64_t>(time(nullptr))) {}

void ActiveTask::set_url(const std::string& url) {
  std::lock_guard<std::mutex> lk(mu_);
  url_ = url.substr(0, url.find_first_of("?#"));
}

std::string ActiveTask::url() const {
  std::lock_guard<std::mutex> lk(mu_);
  return url_;
}

void ActiveTask::add_source_bytes(uint64_t origin, uint64_t peer) {
  std::lock_guard<std::mutex> lk(mu_);
  bytes_origin_ += origin;
  bytes_peer_ += peer;
}

ActiveTask::~ActiveTask() {
  if (fd_ >= 0) close(fd_);
}

ActiveTask::View ActiveTask::view() const {
  std::lock_guard<std::mutex> lk(mu_);
  View v;
  v.phase = phase_;
  v.length = length_;
  v.stored = stored_;
  v.failure = failure_;
  v.bytes_origin = bytes_origin_;
  v.bytes_peer = bytes_peer_;
  v.verified = phase_ == Phase::Complete || (phase_ == Phase::Streaming && verified_);
  if (v.verified) {
    v.readable = phase_ == Phase::Complete ? length_ : stored_;
  } else if (phase_ == Phase::Streaming) {
    uint64_t cap = length_ > kHoldBack ? length_ - kHoldBack : 0;
    v.readable = stored_ < cap ? stored_ : cap;
  }
  return v;
}

ActiveTask::Headers ActiveTask::headers() const {
  std::lock_guard<std::mutex> lk(mu_);
  return headers_;
}

int ActiveTask::fd() const {
  std::lock_guard<std::mutex> lk(mu_);
  return fd_;
}

void ActiveTask::set_streaming(uint64_t length, Headers headers, int fd) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    length_ = length;
    headers_ = std::move(headers);
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
    phase_ = Phase::Streaming;
  }
  notify();
}

void ActiveTask::add_stored(uint64_t n) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stored_ += n;
  }
  notify();
}

void ActiveTask::set_verified() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (phase_ != Phase::Streaming) return;
    verified_ = true;
  }
  notify();
}

void ActiveTask::set_complete() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    phase_ = Phase::Complete;
  }
  notify();
}

void ActiveTask::set_failed(const std::string& why, bool passthrough, bool prefix_ok) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (phase_ == Phase::Complete || phase_ == Phase::Failed) return;
    phase_ = Phase::Failed;
    failure_ = why;
    passthrough_ = passthrough;
    prefix_ok_ = passthrough || prefix_ok;
  }
  notify();
}

bool ActiveTask::prefix_ok() const {
  std::lock_guard<std::mutex> lk(mu_);
  return prefix_ok_;
}

bool ActiveTask::passthrough() const {
  std::lock_guard<std::mutex> lk(mu_);
  return passthrough_;
}

uint64_t ActiveTask::subscribe(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(mu_);
  uint64_t t = next_token_++;
  subs_.emplace(t, std::move(fn));
  return t;
}

void ActiveTask::unsubscribe(uint64_t token) {
  std::lock_guard<std::mutex> lk(mu_);
  subs_.erase(token);
}

void ActiveTask::notify() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& kv : subs_) fns.push_back(kv.second);
  }
  for (auto& fn : fns) fn();
}

std::shared_ptr<const std::string> SmallCache::get(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void SmallCache::put(const std::string& id, std::shared_ptr<const std::string> bytes) {
  if (!bytes || bytes->size() > kMaxObject) return;
  std::lock_guard<std::mutex> lk(mu_);
  if (index_.count(id)) return;
  lru_.emplace_front(id, std::move(bytes));
  index_[id] = lru_.begin();
  bytes_ += lru_.front().second->size();
  while (bytes_ > capacity_ && !lru_.empty()) {
    bytes_ -= lru_.back().second->size();
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

void SmallCache::erase(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return;
  bytes_ -= it->second->second->size();
  lru_.erase(it->second);
  index_.erase(it);
}

std::shared_ptr<ActiveTask> Engine::acquire(const std::string& id, bool by_digest, bool* created) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = active_.find(id);
  if (it != active_.end()) {
    *created = false;
    return it->second;
  }
  auto t = std::make_shared<ActiveTask>(id, by_digest);
  active_.emplace(id, t);
  *created = true;
  return t;
}

void Engine::retire(const std::shared_ptr<ActiveTask>& t) {
  ActiveTask::View v = t->view();
  std::lock_guard<std::mutex> lk(mu_);
  auto it = active_.find(t->id());
  if (it != active_.end() && it->second == t) active_.erase(it);
  if (v.phase != ActiveTask::Phase::Complete) return;
  auto [s, fresh] = sources_.try_emplace(t->id());
  if (fresh) {
    sources_order_.push_back(t->id());
    if (sources_order_.size() > kMaxSources) {
      sources_.erase(sources_order_.front());
      sources_order_.pop_front();
    }
  }
  s->second.fetched = true;
  s->second.origin = v.bytes_origin;
  s->second.peer = v.bytes_peer;
}

size_t Engine::active() const {
  std::lock_guard<std::mutex> lk(mu_);
  return active_.size();
}

std::vector<std::shared_ptr<ActiveTask>> Engine::active_tasks() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::shared_ptr<ActiveTask>> out;
  out.reserve(active_.size());
  for (const auto& kv : active_) out.push_back(kv.second);
  return out;
}

void Engine::note_reuse(const std::string& id, uint64_t bytes) {
  std::lock_guard<std::mutex> lk(mu_);
  auto [s, fresh] = sources_.try_emplace(id);
  if (fresh) {
    sources_order_.push_back(id);
    if (sources_order_.size() > kMaxSources) {
      sources_.erase(sources_order_.front());
      sources_order_.pop_front();
    }
  }
  s->second.reuse_count++;
  s->second.reuse_bytes += bytes;
}

bool Engine::sources(const std::string& id, Sources* out) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = sources_.find(id);
  if (it == sources_.end()) return false;
  *out = it->second;
  return true;
}

void Engine::forget(const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  // The order list keeps the id until it ages out; erasing a missing key
  // later is harmless.
  sources_.erase(id);
}

}  // namespace shoal::task
