#include "origin_fetch.h"

#include <cinttypes>
#include <cstdio>

#include "shoal/obs/log.h"
#include "shoal/proxy/runtime.h"
#include "shoal/util/buffer_pool.h"
#include "upstream.h"

namespace shoal::proxy {
namespace {
constexpr uint64_t kIdleTimeoutMs = 60 * 1000;  // no byte from the origin this long: give up
constexpr int kMaxRedirects = 10;
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
  // The origin closed (we asked it to, with Connection: close): fine after
  // a redirect, which is followed on a new connection; else the answer was
  // cut short.
  void closed(Upstream* u) {
    if (redirect_) {
      follow();
      return;
    }
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
    if (head.status < 200) return 0;
    status_ = head.status;
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

  void request() {
    std::shared_ptr<tls::ClientConfig> cfg;
    auto rt = w_.runtime();
    if (req_.https)
      cfg = w_.client_config(rt->trust_for(req_.host, req_.port, w_.scratch()), rt->cfg->tls_fast_records);
    status_ = 0;
    location_.clear();
    redirect_ = false;
    up_ = Upstream::open(w_, this, req_.host, req_.port, req_.https, std::move(cfg), this, req_.dial);
    if (!up_->fail_reason.empty()) {
      finish(UV_EPROTO, up_->fail_reason);
      return;
    }
    std::vector<http::Header> hs = req_.headers;
    hs.push_back({"Range", "bytes=" + std::to_string(offset_) + "-" + std::to_string(offset_ + len_ - 1)});
    hs.push_back({"Connection", "close"});
    std::string out = http::serialize_request_head("GET", req_.path, hs);
    up_->send(out.data(), out.size());
    arm();
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
  bool finished_ = false;
  int error_ = 0;
  std::string why_;
};

OriginRangeFetcher::~OriginRangeFetcher() = default;

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
