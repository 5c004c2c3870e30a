#include "shoal/proxy/worker.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "conn.h"
#include "shoal/obs/log.h"
#include "shoal/util/fd_limit.h"

namespace shoal::proxy {
namespace {

// Raises RLIMIT_NOFILE's soft limit to the hard one (util/fd_limit.h), once
// per process: every client connection holds a descriptor (two while it
// talks to an origin). Called from the thread that binds the listeners.
void raise_fd_limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    util::FdLimit fl = util::raise_fd_limit();
    auto line = obs::log_info("file descriptor limit");
    line.num("limit", fl.now);
    if (fl.now != fl.before) line.num("raised_from", fl.before);
  });
}

}  // namespace

bool Shared::admit(int64_t limit) {
  int64_t now = active_.fetch_add(1) + 1;
  if (limit > 0 && now > limit) {
    active_.fetch_sub(1);
    return false;
  }
  return true;
}

void Shared::release() { active_.fetch_sub(1); }

bool Shared::auth_cached(const std::string& key, uint64_t now_ms) {
  std::lock_guard<std::mutex> lk(auth_mu_);
  auto it = auth_ok_.find(key);
  if (it == auth_ok_.end()) return false;
  if (it->second > now_ms) return true;
  auth_ok_.erase(it);
  return false;
}

void Shared::auth_remember(const std::string& key, uint64_t until_ms) {
  std::lock_guard<std::mutex> lk(auth_mu_);
  // Bounded: a flood of distinct credentials must not grow it forever.
  if (auth_ok_.size() > 100000) auth_ok_.clear();
  auth_ok_[key] = until_ms;
}

Worker::Worker(Shared& shared, int index)
    : shared_(shared),
      index_(index),
      read_buf_(new char[kReadBufferSize]),
      plain_buf_(new uint8_t[kPlainBufferSize]) {
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &async_, on_async);
  async_.data = this;
  uv_idle_init(&loop_, &defer_idle_);
  defer_idle_.data = this;
  uv_timer_init(&loop_, &relisten_timer_);
  relisten_timer_.data = this;
}

Worker::~Worker() {
  for (auto* t : listeners_) delete t;
}

int Worker::listen(const std::string& addr, uint16_t port, std::string* err, bool transparent) {
  raise_fd_limit();
  return open_listener(ListenSpec{addr, port, transparent}, err);
}

int Worker::open_listener(const ListenSpec& spec, std::string* err) {
  const std::string& addr = spec.addr;
  const uint16_t port = spec.port;
  const bool transparent = spec.transparent;
  sockaddr_storage ss{};
  int family = AF_INET;
  if (uv_ip4_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in*>(&ss)) != 0) {
    if (uv_ip6_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) {
      *err = "not an IP address: " + addr;
      return UV_EINVAL;
    }
    family = AF_INET6;
  }
  auto* t = new uv_tcp_t;
  int r = uv_tcp_init_ex(&loop_, t, static_cast<unsigned>(family));
  if (r != 0) {
    delete t;
    *err = std::string("socket: ") + uv_strerror(r);
    return r;
  }
  t->data = this;
  // libuv 1.44 has no UV_TCP_REUSEPORT: set it on the descriptor before bind
  // so every worker gets its own accept queue on the same port.
  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(t), &fd);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  r = uv_tcp_bind(t, reinterpret_cast<sockaddr*>(&ss), 0);
  if (r == 0)
    r = uv_listen(reinterpret_cast<uv_stream_t*>(t), 1024,
                  transparent ? on_transparent_connection : on_connection);
  if (r != 0) {
    *err = "cannot listen on " + addr + ":" + std::to_string(port) + ": " + uv_strerror(r);
    uv_close(reinterpret_cast<uv_handle_t*>(t),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    // At start-up the loop is not running yet: run the close callback now.
    // From on_relisten (inside the loop) the loop runs it itself.
    if (thread_.get_id() != std::this_thread::get_id()) uv_run(&loop_, UV_RUN_NOWAIT);
    return r;
  }
  listeners_.push_back(t);
  listen_specs_[t] = spec;
  return 0;
}

void Worker::pause_listener(uv_stream_t* server, int status) {
  auto* t = reinterpret_cast<uv_tcp_t*>(server);
  auto it = listen_specs_.find(t);
  if (it == listen_specs_.end() || uv_is_closing(reinterpret_cast<uv_handle_t*>(t))) return;
  paused_.push_back(it->second);
  listen_specs_.erase(it);
  listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), t), listeners_.end());
  // Closing the listener inside its own connection callback ends libuv's
  // accept loop (it stops once the descriptor is gone).
  uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&relisten_timer_)))
    uv_timer_start(&relisten_timer_, on_relisten, kRelistenMs, 0);
  // At most one line a minute: a flood of clients must not flood the log.
  ++pauses_;
  uint64_t now = uv_now(&loop_);
  if (pauses_logged_ == 0 || now - pause_logged_ms_ >= 60 * 1000) {
    obs::log_warn("out of file descriptors: listener paused")
        .num("worker", index_)
        .str("listener", host_port(paused_.back().addr, paused_.back().port))
        .str("error", uv_strerror(status))
        .num("connections", static_cast<int64_t>(conn_count_.load()))
        .num("pause_ms", static_cast<int64_t>(kRelistenMs))
        .num("pauses_since_last_line", static_cast<int64_t>(pauses_ - pauses_logged_));
    pauses_logged_ = pauses_;
    pause_logged_ms_ = now;
  }
}

void Worker::on_relisten(uv_timer_t* timer) {
  auto* w = static_cast<Worker*>(timer->data);
  if (w->draining_) {
    w->paused_.clear();
    return;
  }
  std::vector<ListenSpec> still;
  for (auto& spec : w->paused_) {
    std::string err;
    if (w->open_listener(spec, &err) != 0) still.push_back(spec);
  }
  w->paused_.swap(still);
  if (!w->paused_.empty()) uv_timer_start(&w->relisten_timer_, on_relisten, kRelistenMs, 0);
}

void Worker::start() {
  thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
  uv_run(&loop_, UV_RUN_NOWAIT);
  int r = uv_loop_close(&loop_);
  // EBUSY: a lookup is still running in the thread pool (see maybe_finish).
  if (r != 0 && r != UV_EBUSY)
    obs::log_error("worker loop not closed cleanly").num("worker", index_).str("error", uv_strerror(r));
}

void Worker::post(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(post_mu_);
  if (async_closed_) return;
  posted_.push_back(std::move(fn));
  uv_async_send(&async_);
}

void Worker::defer(std::function<void()> fn) {
  // An active idle handle makes the loop poll without blocking, so the
  // queue runs on the next iteration.
  if (deferred_.empty())
    uv_idle_start(&defer_idle_, [](uv_idle_t* h) {
      auto* w = static_cast<Worker*>(h->data);
      std::vector<std::function<void()>> fns;
      fns.swap(w->deferred_);
      uv_idle_stop(h);
      for (auto& f : fns) f();
    });
  deferred_.push_back(std::move(fn));
}

void Worker::on_async(uv_async_t* a) {
  auto* w = static_cast<Worker*>(a->data);
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lk(w->post_mu_);
    fns.swap(w->posted_);
  }
  for (auto& fn : fns) fn();
}

void Worker::stop_accepting() {
  post([this] {
    draining_ = true;
    for (auto* t : listeners_) {
      uv_close(reinterpret_cast<uv_handle_t*>(t),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    }
    listeners_.clear();
    listen_specs_.clear();
    paused_.clear();
    uv_timer_stop(&relisten_timer_);
    // drain() may free the Conn: step with a saved next pointer.
    for (Conn* c = conns_; c;) {
      Conn* next = c->next;
      c->drain();
      c = next;
    }
    maybe_finish();
  });
}

void Worker::abort_all() {
  post([this] {
    for (Conn* c = conns_; c;) {
      Conn* next = c->next;
      c->abort();
      c = next;
    }
    maybe_finish();
  });
}

void Worker::maybe_finish() {
  if (!draining_ || conns_ != nullptr) return;
  std::lock_guard<std::mutex> lk(post_mu_);
  if (async_closed_) return;
  async_closed_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  // Deferred calls left belong to connections that are gone (they hold
  // weak references and would do nothing).
  deferred_.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(&defer_idle_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&relisten_timer_), nullptr);
  // Every connection is gone. A DNS lookup still running in the thread pool
  // (a slow resolver can take many seconds) must not hold the stop: its
  // callback only frees a detached Upstream.
  uv_stop(&loop_);
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* w = static_cast<Worker*>(server->data);
  if (status == UV_EMFILE || status == UV_ENFILE) {
    w->pause_listener(server, status);
    return;
  }
  if (status < 0) {
    obs::log_warn("accept failed").str("error", uv_strerror(status));
    return;
  }
  auto* c = new Conn(*w, w->runtime());
  c->start(server, false);
}

void Worker::on_transparent_connection(uv_stream_t* server, int status) {
  auto* w = static_cast<Worker*>(server->data);
  if (status == UV_EMFILE || status == UV_ENFILE) {
    w->pause_listener(server, status);
    return;
  }
  if (status < 0) {
    obs::log_warn("accept failed").str("listener", "transparent").str("error", uv_strerror(status));
    return;
  }
  auto* c = new Conn(*w, w->runtime());
  c->start(server, true);
}

std::shared_ptr<const Runtime> Worker::runtime() {
  auto rt = shared_.runtime();
  if (rt != rt_) {
    std::string err;
    if (!rt->prepare_scratch(scratch_, &err))
      obs::log_error("cannot allocate Hyperscan scratch").num("worker", index_).str("error", err);
    rt_ = rt;
    client_cfgs_.clear();  // live connections keep theirs through shared_ptr
  }
  return rt;
}

tls::ServerConfig& Worker::server_config(bool fast_records, const std::shared_ptr<tls::TicketKeys>& tickets) {
  // The config holds the keys, so the pointer in the key is never reused.
  auto& cfg = server_cfgs_[std::make_pair(fast_records, static_cast<const tls::TicketKeys*>(tickets.get()))];
  if (!cfg) {
    cfg = std::make_unique<tls::ServerConfig>(&rng_, fast_records);
    cfg->enable_session_tickets(tickets);
  }
  return *cfg;
}

std::shared_ptr<tls::ClientConfig> Worker::client_config(const TrustChoice& trust, bool fast_records) {
  auto key =
      std::make_tuple(static_cast<const tls::TrustStore*>(trust.store.get()), trust.insecure, fast_records);
  auto it = client_cfgs_.find(key);
  if (it != client_cfgs_.end()) return it->second.cfg;
  auto cfg = std::make_shared<tls::ClientConfig>(&rng_, trust.store.get(), trust.insecure, fast_records);
  client_cfgs_[key] = CachedClientConfig{trust.store, cfg};
  return cfg;
}

bool Worker::add_mint_waiter(const std::string& key, Conn* c) {
  auto [it, first] = mint_waiters_.try_emplace(key);
  it->second.push_back(c);
  return first;
}

void Worker::remove_mint_waiter(const std::string& key, Conn* c) {
  auto it = mint_waiters_.find(key);
  if (it == mint_waiters_.end()) return;
  auto& v = it->second;
  v.erase(std::remove(v.begin(), v.end(), c), v.end());
  // The entry stays while its mint runs, even when nobody waits any more, so
  // a newcomer joins that mint instead of starting another.
}

std::vector<Conn*> Worker::take_mint_waiters(const std::string& key) {
  std::vector<Conn*> out;
  auto it = mint_waiters_.find(key);
  if (it == mint_waiters_.end()) return out;
  out.swap(it->second);
  mint_waiters_.erase(it);
  return out;
}

void Worker::add_conn(Conn* c) {
  c->next = conns_;
  c->prev = nullptr;
  if (conns_) conns_->prev = c;
  conns_ = c;
  conn_count_.fetch_add(1);
}

void Worker::remove_conn(Conn* c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    conns_ = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = nullptr;
  conn_count_.fetch_sub(1);
  maybe_finish();
}

}  // namespace shoal::proxy
