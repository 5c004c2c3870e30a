#include "shoal/task/engine.h"

#include <unistd.h>

namespace shoal::task {

ActiveTask::ActiveTask(std::string id, bool by_digest) : id_(std::move(id)), by_digest_(by_digest) {}

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
  std::lock_guard<std::mutex> lk(mu_);
  auto it = active_.find(t->id());
  if (it != active_.end() && it->second == t) active_.erase(it);
}

size_t Engine::active() const {
  std::lock_guard<std::mutex> lk(mu_);
  return active_.size();
}

}  // namespace shoal::task
