#include "origin_fetch.h"

#include <cinttypes>
#include <cstdio>

#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"
#include "shoal/proxy/runtime.h"
#include "shoal/util/buffer_pool.h"
#include "upstream.h"

namespace shoal::proxy {
namespace {
constexpr uint64_t kIdleTimeoutMs = 60 * 1000;  // no byte from the origin this long: give up
constexpr int kMaxRedirects = 10;

obs::Counter& range_requests(bool reused) {
  static obs::Counter& fresh = obs::metrics().counter(
      "shoal_origin_range_requests_total", "Range requests for P2P pieces sent to origins, by connection",
      "connection=\"new\"");
  static obs::Counter& kept = obs::metrics().counter(
      "shoal_origin_range_requests_total", "Range requests for P2P pieces sent to origins, by connection",
      "connection=\"reused\"");
  return reused ? kept : fresh;
}
}  // namespace

// One Range GET (and its redirects). Owned by the fetcher's table until
// done has run or it was cancelled; freed on a later loop turn.
class RangeFetch : public UpstreamOwner, public http::Handler {
 public:
  RangeFetch(Worker& w, OriginRangeFetcher& f, uint64_t handle, const p2p::OriginRequest& req,
             uint64_t offset, uint64_t len, uint64_t total, uint64_t* progress, p2p::OriginFetcher::Done done,
             p2p::OriginFetcher::Observe observe)
      : w_(w),
        f_(f),
        handle_(handle),
        req_(req),
        offset_(offset),
        len_(len),
        total_(total),
        progress_(progress),
        done_(std::move(done)),
        observe_(std::move(observe)) {
    uv_timer_init(w_.loop(), &timer_);
    timer_.data = this;
  }

  // Freed on the loop thread: bytes the owner did not take go back to the
  // loop's pool.
  ~RangeFetch() override { util::BufferPool::local().give_back(std::move(bytes_)); }

  void start() { request(); }

  // No callback after this; the object frees itself.
  void cancel() {
    done_ = nullptr;
    observe_ = nullptr;
    progress_ = nullptr;  // the owner's counter goes away with its fetch
    finish(UV_ECANCELED, "cancelled");
  }

  // UpstreamOwner.
  void upstream_ready(Upstream* u) override {
    if (u != up_) return;
    // The request waited in u->early for the connection (and handshake).
    std::vector<char> early;
    early.swap(u->early);
    if (!early.empty()) u->send(early.data(), early.size());
    u->set_reading(true);
  }
  void upstream_failed(Upstream* u, const std::string& why) override {
    if (u != up_) return;
    if (retry_fresh()) return;
    finish(UV_EPROTO, why);
  }
  void upstream_data(Upstream* u, const char* data, size_t n) override {
    if (u != up_ || finished_) return;
    if (!data) {
      u->flush();
      return;
    }
    arm();
    if (u->side.tls) {
      u->side.tls->feed(reinterpret_cast<const uint8_t*>(data), n);
      uint8_t* buf = w_.plain_buffer();
      while (!finished_ && up_ == u) {
        size_t got = 0;
        tls::Status st = read_records(*u->side.tls, buf, Worker::kPlainBufferSize, &got);
        append_tls_output(u->side);
        if (got > 0) parse(reinterpret_cast<const char*>(buf), got);
        if (finished_ || up_ != u) break;
        if (st == tls::Status::Ok) continue;
        if (st == tls::Status::WantRead) break;
        if (st == tls::Status::Closed) {
          closed(u);
        } else {
          finish(UV_EPROTO, "TLS error from origin: " + u->side.tls->error_string());
        }
        break;
      }
    } else {
      parse(data, n);
    }
    if (!finished_ && redirect_) follow();
  }
  void upstream_eof(Upstream* u) override {
    if (u != up_ || finished_) return;
    closed(u);
  }
  // The origin closed: fine after a redirect, which is followed on a new
  // connection; on a kept-alive connection before any answer, the origin
  // closed it as we sent (retry_fresh); else the answer was cut short.
  void closed(Upstream* u) {
    if (redirect_) {
      follow();
      return;
    }
    if (retry_fresh()) return;
    u->parser->feed_eof();
    if (!finished_) finish(UV_EPROTO, "origin closed the connection early");
  }
  void upstream_written(Upstream* u, int status) override {
    if (u != up_ || finished_) return;
    if (status != 0) {
      finish(status, std::string("write to origin: ") + uv_strerror(status));
      return;
    }
    u->flush();
  }

  // http::Handler (responses).
  int on_head(http::MessageHead& head) override {
    answered_ = true;
    if (head.status < 200) return 0;
    status_ = head.status;
    keep_ = head.keep_alive && head.content_length >= 0;
    if (head.status >= 300 && head.status < 400 && head.status != 304) {
      const std::string* loc = head.find("Location");
      if (!loc) return fail_cb("redirect without Location");
      location_ = *loc;
      return 0;
    }
    if (head.status == 206) {
      const std::string* cr = head.find("Content-Range");
      unsigned long long a = 0, b = 0, t = 0;
      if (!cr || sscanf(cr->c_str(), "bytes %llu-%llu/%llu", &a, &b, &t) != 3 || a != offset_ ||
          b + 1 != offset_ + len_ || t != total_)
        return fail_cb("origin answered a different range: " + (cr ? *cr : std::string("no Content-Range")));
    } else if (head.status == 200) {
      // A whole answer is fine only when the whole object was asked for.
      if (offset_ != 0 || len_ != total_ || head.content_length != static_cast<int64_t>(total_))
        return fail_cb(if_range() ? "origin answered 200: If-Range did not match, the object changed"
                                  : "origin ignored the Range request (200)");
    } else {
      return fail_cb("origin answered HTTP " + std::to_string(head.status));
    }
    if (bytes_.capacity() < len_) bytes_ = util::BufferPool::local().take(static_cast<size_t>(len_));
    return 0;
  }
  int on_body(const char* data, size_t len) override {
    if (!location_.empty()) return 0;
    if (bytes_.size() + len > len_) return fail_cb("origin sent more than the range");
    bytes_.append(data, len);
    if (progress_) *progress_ += len;
    if (observe_) observe_(data, len);
    return 0;
  }
  int on_message_complete() override {
    if (!location_.empty()) {
      redirect_ = true;
      return 0;
    }
    if (bytes_.size() != len_) return fail_cb("short answer from origin");
    finish(0, "");
    return 0;
  }

 private:
  bool if_range() const {
    for (auto& h : req_.headers)
      if (http::iequals(h.name, "If-Range")) return true;
    return false;
  }

  int fail_cb(const std::string& why) {
    finish(UV_EPROTO, why);
    return 1;
  }

  void arm() {
    uv_timer_start(
        &timer_,
        [](uv_timer_t* t) {
          auto* rf = static_cast<RangeFetch*>(t->data);
          rf->finish(UV_ETIMEDOUT, "origin sent nothing for " + std::to_string(kIdleTimeoutMs / 1000) + " s");
        },
        kIdleTimeoutMs, 0);
  }

  void parse(const char* data, size_t n) {
    up_->parser->feed(data, n);
    if (!finished_ && up_->parser->error() != http::Error::None)
      finish(UV_EPROTO, std::string("bad response from origin: ") + up_->parser->error_detail());
  }

  // fresh: a new connection even when one is idle (the retry).
  void request(bool fresh = false) {
    std::shared_ptr<tls::ClientConfig> cfg;
    auto rt = w_.runtime();
    if (req_.https)
      cfg = w_.client_config(rt->trust_for(req_.host, req_.port, w_.scratch()), rt->cfg->tls_fast_records);
    status_ = 0;
    location_.clear();
    redirect_ = false;
    keep_ = answered_ = false;
    // The configuration is part of the key: after a reload changes the
    // trust for this origin, older connections are not reused.
    char cfg_id[32];
    std::snprintf(cfg_id, sizeof cfg_id, "%p", static_cast<const void*>(cfg.get()));
    key_ = host_port(req_.host, req_.port) + (req_.https ? " tls " : " tcp ") + req_.dial + " " + cfg_id;
    up_ = fresh ? nullptr : f_.take_idle(key_);
    reused_ = up_ != nullptr;
    range_requests(reused_).inc();
    if (reused_) {
      up_->owner = this;
      up_->parser = std::make_unique<http::Parser>(http::Parser::Kind::Response, this);
    } else {
      up_ = Upstream::open(w_, this, req_.host, req_.port, req_.https, std::move(cfg), this, req_.dial);
      if (!up_->fail_reason.empty()) {
        finish(UV_EPROTO, up_->fail_reason);
        return;
      }
    }
    std::vector<http::Header> hs = req_.headers;
    hs.push_back({"Range", "bytes=" + std::to_string(offset_) + "-" + std::to_string(offset_ + len_ - 1)});
    std::string out = http::serialize_request_head("GET", req_.path, hs);
    up_->send(out.data(), out.size());
    arm();
  }

  // A kept-alive connection that failed or closed before any answer came
  // back (the origin closed it as the request went out): once, the same
  // request on a new connection. False when that does not apply.
  bool retry_fresh() {
    if (!reused_ || answered_ || finished_) return false;
    obs::log_debug("origin closed a kept-alive connection; asking again on a new one")
        .str("host", req_.host)
        .num("offset", static_cast<int64_t>(offset_));
    up_->release();
    up_ = nullptr;
    request(/*fresh=*/true);
    return true;
  }

  void follow() {
    redirect_ = false;
    if (++redirects_ > kMaxRedirects) {
      finish(UV_EPROTO, "the origin redirected more than 10 times");
      return;
    }
    Target t{req_.host, req_.port, req_.https, req_.path};
    if (!redirect_target(location_, &t, &req_.headers)) {
      finish(UV_EPROTO, "origin redirected to an unsupported Location: " + location_);
      return;
    }
    if (!http::iequals(t.host, req_.host)) req_.dial.clear();  // the dial address belongs to the first host
    req_.host = t.host;
    req_.port = t.port;
    req_.https = t.https;
    req_.path = t.path;
    // The redirect was a whole answer: its connection may serve the next
    // piece's first request (registries redirect every blob GET).
    if (keep_ && up_->st == Upstream::St::Ready && !up_->side.eof)
      f_.park(up_, key_);
    else
      up_->release();
    up_ = nullptr;
    bytes_.clear();
    request();
  }

  void finish(int error, const std::string& why) {
    if (finished_) return;
    finished_ = true;
    error_ = error;
    why_ = why;
    if (up_) {
      // A whole answer the origin allows to keep the connection after: the
      // next piece goes on it. Anything else closes it.
      if (error == 0 && keep_ && !redirect_ && up_->st == Upstream::St::Ready && !up_->side.eof)
        f_.park(up_, key_);
      else
        up_->release();
      up_ = nullptr;
    }
    uv_timer_stop(&timer_);
    // Out of every Upstream and parser callback before the owner hears it.
    w_.defer([this] {
      if (done_) {
        p2p::OriginFetcher::Done d = std::move(done_);
        done_ = nullptr;
        f_.finished(handle_);
        d(error_, why_, bytes_);
      } else {
        f_.finished(handle_);
      }
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_),
               [](uv_handle_t* h) { delete static_cast<RangeFetch*>(h->data); });
    });
  }

  Worker& w_;
  OriginRangeFetcher& f_;
  uint64_t handle_;
  p2p::OriginRequest req_;
  uint64_t offset_, len_, total_;
  uint64_t* progress_;
  p2p::OriginFetcher::Done done_;
  p2p::OriginFetcher::Observe observe_;
  Upstream* up_ = nullptr;
  uv_timer_t timer_{};
  std::string bytes_;
  std::string location_;
  bool redirect_ = false;
  int redirects_ = 0;
  int status_ = 0;
  std::string key_;        // which idle connections fit this request
  bool reused_ = false;    // up_ came from the fetcher's idle connections
  bool answered_ = false;  // a response head arrived on up_
  bool keep_ = false;      // the answer allows another request on up_
  bool finished_ = false;
  int error_ = 0;
  std::string why_;
};

// Owns the idle connections: anything from one (bytes, a close, an error)
// ends it.
class OriginRangeFetcher::IdleOwner : public UpstreamOwner {
 public:
  explicit IdleOwner(OriginRangeFetcher& f) : f_(f) {}
  void upstream_ready(Upstream*) override {}
  void upstream_failed(Upstream* u, const std::string&) override { f_.drop(u); }
  void upstream_data(Upstream* u, const char* data, size_t) override {
    if (data) f_.drop(u);  // unasked-for bytes (or a close_notify): not reusable
  }
  void upstream_eof(Upstream* u) override { f_.drop(u); }
  void upstream_written(Upstream*, int) override {}

 private:
  OriginRangeFetcher& f_;
};

OriginRangeFetcher::OriginRangeFetcher(Worker& w) : w_(w), idle_owner_(std::make_unique<IdleOwner>(*this)) {}

OriginRangeFetcher::~OriginRangeFetcher() { close_idle(); }

void OriginRangeFetcher::close_idle() {
  closed_ = true;
  for (Idle& i : idle_) i.u->release();
  idle_.clear();
}

Upstream* OriginRangeFetcher::take_idle(const std::string& key) {
  expire();
  // The most recently used first: the one least likely to have been closed.
  for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
    if (it->key != key) continue;
    Upstream* u = it->u;
    idle_.erase(std::next(it).base());
    return u;
  }
  return nullptr;
}

void OriginRangeFetcher::park(Upstream* u, const std::string& key) {
  expire();
  size_t same = 0;
  for (const Idle& i : idle_) same += i.key == key;
  if (closed_ || same >= kIdlePerKey) {
    u->release();
    return;
  }
  if (idle_.size() >= kIdleMax) {
    idle_.front().u->release();
    idle_.pop_front();
  }
  u->owner = idle_owner_.get();
  u->set_reading(true);
  idle_.push_back(Idle{u, key, uv_now(w_.loop())});
}

void OriginRangeFetcher::drop(Upstream* u) {
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (it->u != u) continue;
    idle_.erase(it);
    break;
  }
  u->release();
}

void OriginRangeFetcher::expire() {
  uint64_t now = uv_now(w_.loop());
  while (!idle_.empty() && now - idle_.front().since_ms >= kIdleMs) {
    idle_.front().u->release();
    idle_.pop_front();
  }
}

uint64_t OriginRangeFetcher::fetch(const p2p::OriginRequest& req, uint64_t offset, uint64_t len,
                                   uint64_t total, uint64_t* progress, Done done, Observe observe) {
  uint64_t h = next_++;
  auto* rf =
      new RangeFetch(w_, *this, h, req, offset, len, total, progress, std::move(done), std::move(observe));
  live_[h] = rf;
  rf->start();
  return h;
}

void OriginRangeFetcher::cancel(uint64_t handle) {
  auto it = live_.find(handle);
  if (it == live_.end()) return;
  RangeFetch* rf = it->second;
  live_.erase(it);
  rf->cancel();
}

void OriginRangeFetcher::finished(uint64_t handle) { live_.erase(handle); }

std::unique_ptr<p2p::OriginFetcher> make_origin_fetcher(Worker& w) {
  return std::make_unique<OriginRangeFetcher>(w);
}

}  // namespace shoal::proxy
