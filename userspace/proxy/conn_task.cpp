// Conn's side of the task engine: route-p2p GETs are served from a task.
//
//   start_task ── stored? ───────────────────────────► serve from the store
//              ── being downloaded by another conn? ─► join: serve from its file
//              └─ else: this conn is the task's owner:
//                   GET to the origin (following redirects itself, at most 10,
//                   dropping Authorization when the host changes)
//                   200 + Content-Length, no Content-Encoding ─► tee: body into
//                       the store (write jobs in the thread pool, SHA-256 of
//                       the whole and of every piece in one pass), client served from
//                       the file like any joiner, last 64 KiB held back
//                       until the digest verifies; then commit, "peer task
//                       done"
//                   anything else ─► not a task: relayed to the client as is
//
// Ownership: Tee and Serve belong to the Conn. A thread-pool job or a file
// read in flight counts in pending_jobs_, so the Conn outlives it; a job that
// finishes after the Conn started closing only cleans up.

#include <cstdio>
#include <cstring>

#include "conn.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"
#include "shoal/p2p/engine.h"
#include "shoal/task/task_id.h"
#include "shoal/util/hex.h"

namespace shoal::proxy {
namespace {

struct TaskMetrics {
  obs::Counter& ok = obs::metrics().counter("shoal_tasks_total", "Tasks by result", "result=\"success\"");
  obs::Counter& failed = obs::metrics().counter("shoal_tasks_total", "Tasks by result", "result=\"failed\"");
  obs::Counter& passthrough =
      obs::metrics().counter("shoal_tasks_total", "Tasks by result", "result=\"passthrough\"");
  obs::Counter& back_to_source =
      obs::metrics().counter("shoal_back_to_source_total", "Tasks fetched from the origin");
  obs::Counter& reuse = obs::metrics().counter("shoal_task_reuse_total", "Requests served from the store");
  obs::Counter& joined =
      obs::metrics().counter("shoal_task_joined_total", "Requests that joined a task being downloaded");
  obs::Counter& bytes_local = obs::metrics().counter(
      "shoal_bytes_total", "Response body bytes sent to clients, by source", "source=\"local\"");
  obs::Counter& bytes_origin = obs::metrics().counter(
      "shoal_bytes_total", "Response body bytes sent to clients, by source", "source=\"origin\"");
  obs::Counter& mismatch =
      obs::metrics().counter("shoal_digest_mismatch_total", "Objects whose bytes did not match their digest");
  obs::Counter& resumes = obs::metrics().counter(
      "shoal_origin_resumes_total", "Range requests for the rest of an object after the origin broke off");
  obs::Histogram& duration = obs::metrics().histogram("shoal_task_duration_seconds",
                                                      "Time to download and verify a task from the origin");
};

TaskMetrics& tm() {
  static TaskMetrics t;
  return t;
}

constexpr size_t kTeeMax = 4 << 20;         // body bytes buffered before the origin is paused
constexpr size_t kServeChunk = 256 * 1024;  // a thread-pool read is a round trip: few, large ones
// Range requests in a row that bring no new byte before the owner gives up.
constexpr int kMaxResumeTries = 3;

using util::hex;

// Response headers a task keeps and serves again.
bool kept_header(const std::string& name) {
  for (const char* k :
       {"Content-Type", "Docker-Content-Digest", "ETag", "Last-Modified", "Docker-Distribution-Api-Version"})
    if (http::iequals(name, k)) return true;
  return false;
}

}  // namespace

Conn::Tee::~Tee() {
  if (writer) writer->abort();
}

// Returns true when the request is now the engine's (served or fetched);
// false to forward it as usual.
bool Conn::start_task(const std::string& url) {
  task::Engine* engine = w_.shared().engine.get();
  if (!engine) return false;
  bool by_digest = false;
  std::string id = task::task_id_for(url, rt_->cfg->default_filter, &by_digest);
  // A manifest by tag changes when the tag moves: never a task, whatever a
  // broad proxies rule says.
  if (!by_digest && ex_.path.compare(0, 4, "/v2/") == 0 && ex_.path.find("/manifests/") != std::string::npos)
    return false;
  serve_ = Serve{};
  serve_.id = id;
  task::TaskMeta meta;
  if (engine->store().lookup(id, &meta)) {
    if (auto mem = engine->small().get(id); mem && mem->size() == meta.length) {
      engine->store().touch(id);
      serve_.mem = std::move(mem);
      serve_.length = meta.length;
      serve_.headers = meta.headers;
      ex_.source = "store";
      tm().reuse.inc();
      auth_check_begin();
      return true;
    }
    std::string err;
    int fd = engine->store().open_data(id, &err);
    if (fd >= 0) {
      // Pinned while served, so GC leaves it on disk.
      engine->store().pin(id);
      serve_.pinned = true;
      engine->store().touch(id);
      serve_.fd = fd;
      serve_.length = meta.length;
      serve_.headers = meta.headers;
      ex_.source = "store";
      tm().reuse.inc();
      auth_check_begin();
      return true;
    }
    obs::log_warn("stored task unreadable; fetching again").str("task", id).str("error", err);
  }
  bool created = false;
  auto t = engine->acquire(id, by_digest, &created);
  if (created) t->set_url(url);
  serve_.task = t;
  if (!created) {
    ex_.source = "joined";
    tm().joined.inc();
    auth_check_begin();
    return true;
  }
  if (w_.shared().p2p) {
    // With P2P the object comes piece by piece from the cluster: first a
    // HEAD with the client's own headers for its length (and for the
    // client's right to read it), then the P2P engine takes over.
    ex_.source = "p2p";
    p2p_head_begin();
    return true;
  }
  // The owner: fetch from the origin below (start_exchange goes on), and
  // serve our own client from the file like everyone else.
  tee_ = std::make_unique<Tee>();
  tee_->task = t;
  tee_->url = url;
  tee_->start_ms = now_ms();
  ex_.tee = true;
  ex_.source = "origin";
  tm().back_to_source.inc();
  serve_begin();
  return false;
}

void Conn::p2p_head_begin() {
  ex_.head_host = ex_.host;
  ex_.head_port = ex_.port;
  ex_.head_https = ex_.https;
  ex_.head_path = ex_.path;
  ex_.head_redirects = 0;
  ex_.head_req.clear();
  for (auto& h : ex_.req_headers)
    if (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range")) ex_.head_req.push_back(h);
  p2p_head_send();
}

void Conn::p2p_head_send() {
  ex_.auth_check = true;
  ex_.p2p_head = true;
  ex_.auth_status = 0;
  ex_.head_length = -1;
  ex_.head_headers.clear();
  std::string out = http::serialize_request_head("HEAD", ex_.head_path, ex_.head_req);
  Upstream* u = get_upstream(ex_.head_host, ex_.head_port, ex_.head_https);
  if (!u) return;  // upstream_failed answered already
  u->parser->expect_no_body();
  send_upstream(out.data(), out.size());
  arm_timer(rt_->cfg->connect_timeout_s);
  update_reads();
}

// A redirect of the HEAD (a registry sending blobs to its storage): asked
// again where it points, without the registry's Authorization when the
// host changes. False when it cannot be followed.
bool Conn::p2p_head_follow() {
  const std::string* loc = nullptr;
  for (auto& h : ex_.head_headers)
    if (http::iequals(h.name, "Location")) loc = &h.value;
  if (!loc || ++ex_.head_redirects > 10) return false;
  Target t{ex_.head_host, ex_.head_port, ex_.head_https, ex_.head_path};
  if (!redirect_target(*loc, &t, &ex_.head_req)) return false;
  ex_.head_host = t.host;
  ex_.head_port = t.port;
  ex_.head_https = t.https;
  ex_.head_path = t.path;
  if (up_) {
    up_->release();
    up_ = nullptr;
  }
  p2p_head_send();
  return true;
}

// The task this connection was about to hand to the P2P engine will not be
// handed over (the HEAD failed, the client left): clients that joined it ask
// the origin themselves instead of waiting for a download nobody runs.
void Conn::p2p_head_abandon(const std::string& why) {
  if (!ex_.p2p_head || !serve_.task) return;
  ex_.p2p_head = false;
  ex_.auth_check = false;
  auto t = serve_.task;
  t->set_failed(why, true);
  w_.shared().engine->retire(t);
}

// The P2P owner's HEAD came back. A plain object of known length goes to
// the P2P engine, and this client is served from the task like a joiner;
// anything else (an error, a redirect, no length) is fetched whole from the
// origin as without P2P, so the client gets exactly the origin's answer.
void Conn::p2p_head_done(bool timed_out) {
  auth_pending_ = false;
  ex_.auth_check = false;
  ex_.p2p_head = false;
  int st = ex_.auth_status;
  if (up_ && (timed_out || !ex_.up_keep_alive)) {
    up_->release();
    up_ = nullptr;
  }
  if (up_) up_->busy_exchange = false;
  bool encoded = false;
  for (auto& h : ex_.head_headers)
    if (http::iequals(h.name, "Content-Encoding") && !http::iequals(h.value, "identity")) encoded = true;
  if (!timed_out && (st == 301 || st == 302 || st == 303 || st == 307 || st == 308) && p2p_head_follow())
    return;
  if (timed_out || st != 200 || ex_.head_length <= 0 || encoded) {
    if (timed_out)
      obs::log_warn("HEAD to the origin timed out; fetching the object whole").str("path", ex_.path);
    owner_fetch_whole();
    return;
  }
  std::string cred;
  for (auto& h : ex_.req_headers)
    if (http::iequals(h.name, "Authorization")) cred = h.value;
  ex_.auth_key =
      host_port(ex_.host, ex_.port) + " " + task::repo_in_path(ex_.path) + " " + task::sha256_hex(cred);
  w_.shared().auth_remember(ex_.auth_key, now_ms() + 60 * 1000);
  p2p::OriginRequest req;
  req.host = ex_.host;
  req.port = ex_.port;
  req.https = ex_.https;
  req.path = ex_.path;
  for (auto& h : ex_.req_headers)
    if (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range") &&
        !http::iequals(h.name, "Connection"))
      req.headers.push_back(h);
  if (transparent_ && ex_.host == connect_host_ && ex_.port == connect_port_) req.dial = dial_ip_;
  task::ActiveTask::Headers kept;
  for (auto& h : ex_.head_headers)
    if (kept_header(h.name)) kept.emplace_back(h.name, h.value);
  auto t = serve_.task;
  // Pieces of an object named by its URL come from separate Range requests
  // and only the length is checked at the end: If-Range with the HEAD's
  // strong ETag makes the origin answer 200 (and the piece fail) if the
  // object changed in between, rather than two versions being spliced. An
  // object named by its digest needs none (every byte is verified).
  if (!t->by_digest())
    for (auto& h : ex_.head_headers)
      if (http::iequals(h.name, "ETag") && h.value.compare(0, 2, "W/") != 0)
        req.headers.push_back({"If-Range", h.value});
  uint64_t length = static_cast<uint64_t>(ex_.head_length);
  p2p::Engine* engine = w_.shared().p2p;
  std::string url = ex_.url;
  w_.shared().p2p_worker->post(
      [engine, t, url, length, kept, req] { engine->download(t, url, length, kept, req); });
  arm_timer(rt_->cfg->idle_timeout_s);
  serve_begin();
}

// Without P2P for this object: this connection fetches it whole from the
// origin as the task's owner (see the top of this file).
void Conn::owner_fetch_whole() {
  tee_ = std::make_unique<Tee>();
  tee_->task = serve_.task;
  tee_->url = ex_.url;
  tee_->start_ms = now_ms();
  ex_.tee = true;
  ex_.source = "origin";
  tm().back_to_source.inc();
  serve_begin();
  std::vector<http::Header> whole;
  for (auto& h : ex_.req_headers)
    if (!ex_.range || (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range")))
      whole.push_back(h);
  ex_.req_headers = whole;
  std::string out = http::serialize_request_head("GET", ex_.path, whole);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return;
  send_upstream(out.data(), out.size());
  arm_timer(rt_->cfg->idle_timeout_s);
  update_reads();
}

// Bytes this client did not fetch itself (stored, or being fetched for
// another client) are served only once the origin has said that this
// client's own credentials may read them: a HEAD of the same URL with the
// request's headers. 200 or 307 allows (the answer is cached per origin,
// repository and credential for 60 s); any other answer, or none within
// timeouts.connect, sends the request to the origin as is, so the client
// gets exactly what the origin tells it. proxy.authCheck: false skips this.
void Conn::auth_check_begin() {
  if (!rt_->cfg->auth_check) {
    serve_begin();
    return;
  }
  std::string cred;
  for (auto& h : ex_.req_headers)
    if (http::iequals(h.name, "Authorization")) cred = h.value;
  ex_.auth_key =
      host_port(ex_.host, ex_.port) + " " + task::repo_in_path(ex_.path) + " " + task::sha256_hex(cred);
  if (w_.shared().auth_cached(ex_.auth_key, now_ms())) {
    serve_begin();
    return;
  }
  ex_.auth_check = true;
  std::string out = http::serialize_request_head("HEAD", ex_.path, ex_.req_headers);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return;  // upstream_failed answered already
  u->parser->expect_no_body();
  send_upstream(out.data(), out.size());
  arm_timer(rt_->cfg->connect_timeout_s);
  update_reads();
}

void Conn::auth_checked(bool timed_out) {
  if (ex_.p2p_head) {
    p2p_head_done(timed_out);
    return;
  }
  auth_pending_ = false;
  ex_.auth_check = false;
  int st = ex_.auth_status;
  if (!timed_out && (st == 200 || st == 307)) {
    w_.shared().auth_remember(ex_.auth_key, now_ms() + 60 * 1000);
    if (up_ && !ex_.up_keep_alive) {
      up_->release();
      up_ = nullptr;
    }
    if (up_) up_->busy_exchange = false;
    arm_timer(rt_->cfg->idle_timeout_s);
    serve_begin();
    return;
  }
  obs::log_info("credential check did not allow shared bytes; forwarding")
      .str("host", ex_.host)
      .str("path", ex_.path)
      .num("status", timed_out ? 0 : st)
      .boolean("timed_out", timed_out);
  if (timed_out && up_) {
    up_->release();
    up_ = nullptr;
  }
  if (up_ && !ex_.up_keep_alive) {
    up_->release();
    up_ = nullptr;
  }
  serve_stop();
  if (serve_.fd >= 0) {
    close(serve_.fd);
    serve_.fd = -1;
  }
  serve_.task.reset();
  ex_.source = "";
  ex_.route = "direct";
  std::string out = http::serialize_request_head("GET", ex_.path, ex_.req_headers);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return;
  send_upstream(out.data(), out.size());
  arm_timer(rt_->cfg->idle_timeout_s);
  update_reads();
}

bool Conn::parse_range(const std::string& value) {
  http::ByteRange r;
  if (!http::parse_range(value, &r)) return false;
  ex_.range = true;
  ex_.range_first = r.first;
  ex_.range_last = r.last;
  ex_.range_suffix = r.suffix;
  return true;
}

void Conn::serve_begin() {
  serve_.active = true;
  if (serve_.task) {
    std::weak_ptr<int> alive = alive_;
    Worker* w = &w_;
    serve_.sub = serve_.task->subscribe([alive, w, this] {
      w->post([alive, this] {
        if (alive.lock()) serve_pump();
      });
    });
  }
  // Never synchronously: start_task runs inside the request parser's
  // callback, and finishing an exchange resumes that parser.
  std::weak_ptr<int> alive = alive_;
  w_.defer([alive, this] {
    if (alive.lock()) serve_pump();
  });
}

void Conn::serve_stop() {
  if (serve_.pinned) {
    w_.shared().engine->store().unpin(serve_.id);
    serve_.pinned = false;
  }
  if (serve_.task && serve_.sub) serve_.task->unsubscribe(serve_.sub);
  serve_.sub = 0;
  serve_.active = false;
  if (serve_.fd >= 0 && !serve_.reading) {
    close(serve_.fd);
    serve_.fd = -1;
  }
}

void Conn::serve_pump() {
  if (closing_ || !serve_.active) return;
  task::ActiveTask::View v;
  if (serve_.task) {
    v = serve_.task->view();
  } else {
    v.phase = task::ActiveTask::Phase::Complete;
    v.length = v.stored = v.readable = serve_.length;
    v.verified = true;
  }
  if (drain_ && tee_) {
    // Our own task failed to store: what is on disk is served unverified, as
    // a pass-through would have; the client's registry library checks it.
    v.phase = task::ActiveTask::Phase::Streaming;
    v.readable = tee_->written;
    v.verified = false;
  }
  if (v.phase == task::ActiveTask::Phase::Starting) return;
  if (v.phase == task::ActiveTask::Phase::Failed) {
    if (tee_) return;  // the owner handles its own task's failure
    if (!serve_.head_sent) {
      serve_fallback();
    } else if (serve_.task && serve_.task->prefix_ok() && !ex_.range && !ex_.resume) {
      serve_resume();
    } else {
      ex_.status = ex_.status ? ex_.status : 502;
      obs::log_warn("task failed while serving").str("task", serve_.id).str("error", v.failure);
      close_all(true);
    }
    return;
  }
  touch();
  // The response head goes out with the first body bytes when they are at
  // hand (a small object from memory: one write, one TLS record).
  std::string head;
  if (!serve_.head_sent) {
    if (serve_.task) {
      serve_.length = v.length;
      serve_.headers = serve_.task->headers();
    }
    std::vector<http::Header> hs;
    for (auto& h : serve_.headers) hs.push_back({h.first, h.second});
    int status = 200;
    serve_.offset = 0;
    serve_.end = serve_.length;
    if (ex_.range) {
      uint64_t len = serve_.length, first = 0, last = 0;
      if (!http::resolve_range(http::ByteRange{ex_.range_first, ex_.range_last, ex_.range_suffix}, len,
                               &first, &last)) {
        serve_stop();
        hs.push_back({"Content-Range", "bytes */" + std::to_string(len)});
        ex_.status = 416;
        ex_.resp_done = true;
        std::string r = http::simple_response(416, "range not satisfiable", ex_.client_keep_alive, hs);
        send_client(r.data(), r.size());
        log_exchange();
        after_exchange();
        return;
      }
      status = 206;
      serve_.offset = first;
      serve_.end = last + 1;
      hs.push_back({"Content-Range", "bytes " + std::to_string(first) + "-" + std::to_string(last) + "/" +
                                         std::to_string(len)});
    }
    hs.push_back({"Content-Length", std::to_string(serve_.end - serve_.offset)});
    hs.push_back({"Accept-Ranges", "bytes"});
    if (!ex_.client_keep_alive) hs.push_back({"Connection", "close"});
    head = http::serialize_response_head(status, status == 206 ? "Partial Content" : "OK", hs);
    serve_.head_sent = true;
    ex_.resp_head_sent = true;
    ex_.status = status;
  }
  if (serve_.reading || client_.busy() || closing_) {
    if (!head.empty()) send_client(head.data(), head.size());
    return;
  }
  // Until the object is verified, the last byte a client asked for waits:
  // no response completes on unverified bytes.
  uint64_t limit = v.readable < serve_.end ? v.readable : serve_.end;
  if (drain_ && tee_ && serve_.offset >= limit) {
    if (!head.empty()) send_client(head.data(), head.size());
    if (closing_) return;
    drain_pump();
    return;
  }
  if (!drain_ && !v.verified && limit == serve_.end && limit > 0) limit--;
  if (serve_.offset < limit && serve_.mem) {
    size_t n = static_cast<size_t>(limit - serve_.offset);
    const char* p = serve_.mem->data() + serve_.offset;
    serve_.offset += n;
    ex_.resp_bytes += n;
    tm().bytes_local.inc(n);
    head.append(p, n);
    send_client(head.data(), head.size());
    head.clear();
    if (closing_) return;
  }
  if (serve_.offset < limit && tee_ && !drain_ && serve_.task == tee_->task) {
    // The owner's client keeping up with the origin: the bytes are still
    // in memory (a running job never touches recent; the loop swaps it in
    // after the job).
    const Tee& t = *tee_;
    uint64_t r_end = t.recent_off + t.recent.size();
    if (serve_.offset >= t.recent_off && serve_.offset < r_end) {
      uint64_t upto = limit < r_end ? limit : r_end;
      size_t n = static_cast<size_t>(upto - serve_.offset);
      const char* p = t.recent.data() + (serve_.offset - t.recent_off);
      serve_.offset += n;
      ex_.resp_bytes += n;
      tm().bytes_origin.inc(n);
      if (head.empty()) {
        send_client(p, n);
      } else {
        head.append(p, n);
        send_client(head.data(), head.size());
      }
      return;  // write_done pumps again
    }
  }
  if (!head.empty()) {
    send_client(head.data(), head.size());
    if (closing_) return;
  }
  // From disk, a task still downloading is read in whole blocks only: the
  // writer may rewrite its padded last block (task::Writer).
  uint64_t disk_limit = limit;
  if (serve_.task && !v.verified && !drain_) disk_limit &= ~static_cast<uint64_t>(task::kDirectAlign - 1);
  if (serve_.offset < disk_limit) {
    uint64_t n = disk_limit - serve_.offset;
    if (n > kServeChunk) n = kServeChunk;
    int fd = serve_.task ? serve_.task->fd() : serve_.fd;
    constexpr size_t kAlign = task::kDirectAlign;
    if (!serve_.buf) {
      serve_.buf.reset(static_cast<char*>(std::aligned_alloc(kAlign, kServeChunk + 2 * kAlign)));
      if (!serve_.buf) {
        obs::log_error("no memory for a task read").str("task", serve_.id);
        close_all(true);
        return;
      }
    }
    uint64_t first = serve_.offset & ~static_cast<uint64_t>(kAlign - 1);
    uint64_t last = (serve_.offset + n + kAlign - 1) & ~static_cast<uint64_t>(kAlign - 1);
    serve_.skip = static_cast<size_t>(serve_.offset - first);
    serve_.want = static_cast<size_t>(n);
    uv_buf_t b = uv_buf_init(serve_.buf.get(), static_cast<unsigned>(last - first));
    serve_.req.data = this;
    serve_.reading = true;
    pending_jobs_++;
    int r = uv_fs_read(w_.loop(), &serve_.req, fd, &b, 1, static_cast<int64_t>(first), [](uv_fs_t* req) {
      auto* c = static_cast<Conn*>(req->data);
      ssize_t got = req->result;
      uv_fs_req_cleanup(req);
      c->pending_jobs_--;
      c->serve_.reading = false;
      if (c->closing_ || !c->serve_.active) {
        if (c->serve_.fd >= 0 && !c->serve_.active) {
          close(c->serve_.fd);
          c->serve_.fd = -1;
        }
        c->maybe_free();
        return;
      }
      if (got <= static_cast<ssize_t>(c->serve_.skip)) {
        obs::log_error("task read failed")
            .str("task", c->serve_.id)
            .str("error", got < 0 ? uv_strerror(static_cast<int>(got)) : "short file");
        c->close_all(true);
        return;
      }
      size_t k = static_cast<size_t>(got) - c->serve_.skip;
      if (k > c->serve_.want) k = c->serve_.want;
      const char* data = c->serve_.buf.get() + c->serve_.skip;
      if (c->ex_.source == "store" && c->serve_.offset == 0 && k == c->serve_.length &&
          k <= task::SmallCache::kMaxObject)
        c->w_.shared().engine->small().put(c->serve_.id, std::make_shared<const std::string>(data, k));
      c->serve_.offset += k;
      c->ex_.resp_bytes += k;
      (c->ex_.source == "origin" ? tm().bytes_origin : tm().bytes_local).inc(k);
      c->send_client(data, k);
      c->serve_pump();
    });
    if (r != 0) {
      pending_jobs_--;
      serve_.reading = false;
      close_all(true);
    }
    return;
  }
  if (serve_.offset == serve_.end && v.verified) serve_done();
}

void Conn::serve_done() {
  std::string id = serve_.id;
  serve_stop();
  ex_.resp_done = true;
  ex_.route = "p2p";
  if (ex_.source == "store") {
    w_.shared().engine->note_reuse(id, ex_.resp_bytes);
    obs::log_info("reuse file peer task done, cost: " + std::to_string(now_ms() - ex_.start_ms) + "ms")
        .str("peer", w_.shared().peer_id)
        .str("task", id)
        .num("size", static_cast<int64_t>(serve_.length))
        .str("component", "PeerTask");
  }
  log_exchange();
  if (up_) up_->busy_exchange = false;
  after_exchange();
}

// A task this client joined failed before any byte was sent. When the
// origin's answer was not storable (a 404, say), the client asks the origin
// itself and gets its answer. When the download failed (a digest mismatch,
// the owner went away), relaying unchecked bytes would defeat verification:
// the client fetches the task again as its new owner (or joins whoever
// already does).
void Conn::serve_fallback() {
  bool passthrough = serve_.task && serve_.task->passthrough();
  serve_stop();
  serve_.task.reset();
  // A download that keeps failing (an origin that lies about the object,
  // poisoned piece hashes) must not loop: after two tries the client asks
  // the origin itself and gets exactly its answer.
  if (!passthrough && ++ex_.task_attempts >= 2) {
    obs::log_warn("task failed twice for this request; forwarding it to the origin").str("task", serve_.id);
    passthrough = true;
  }
  if (!passthrough) {
    if (start_task(ex_.url)) return;
    std::vector<http::Header> hs;
    for (auto& h : ex_.req_headers)
      if (!ex_.range || (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range")))
        hs.push_back(h);
    ex_.req_headers = hs;
    std::string out = http::serialize_request_head("GET", ex_.path, hs);
    Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
    if (!u) return;
    send_upstream(out.data(), out.size());
    update_reads();
    return;
  }
  ex_.source = "";
  ex_.route = "direct";
  std::string out = http::serialize_request_head("GET", ex_.path, ex_.req_headers);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return;
  send_upstream(out.data(), out.size());
  update_reads();
}

// A task this client was being served from stopped after the client had
// part of it (the store failed, or the client that fetched it went away):
// the bytes it has are the origin's, so ask the origin for the rest with a
// Range request and relay it, instead of resetting the client.
void Conn::serve_resume() {
  uint64_t from = serve_.offset;
  serve_stop();
  serve_.task.reset();
  ex_.resume = true;
  ex_.resume_from = from;
  ex_.source = "origin";
  std::vector<http::Header> hs;
  for (auto& h : ex_.req_headers)
    if (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range")) hs.push_back(h);
  hs.push_back({"Range", "bytes=" + std::to_string(from) + "-"});
  // The client has the first bytes of the object as the task saw it: if
  // it changed since, the origin answers 200 and the client is reset (see
  // ResponseHandler::on_head), never handed a splice of two versions.
  for (auto& h : serve_.headers)
    if (http::iequals(h.first, "ETag") && h.second.compare(0, 2, "W/") != 0)
      hs.push_back({"If-Range", h.second});
  ex_.req_headers = hs;
  obs::log_warn("task stopped while serving; fetching the rest from the origin")
      .str("task", serve_.id)
      .num("from", static_cast<int64_t>(from));
  std::string out = http::serialize_request_head("GET", ex_.path, hs);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return;
  send_upstream(out.data(), out.size());
  update_reads();
}

// --- The owner ------------------------------------------------------------------

void Conn::tee_streaming(const http::MessageHead& head) {
  task::Engine& engine = *w_.shared().engine;
  std::string err;
  int r = engine.store().begin(tee_->task->id(), &tee_->writer, &err, /*direct=*/true);
  // Readers that joined share the page cache (one disk read for them all);
  // the owner's client is served from memory while it keeps up.
  int fd = r == 0 ? tee_->writer->open_data(&err, /*direct=*/false) : -1;
  if (r != 0 || fd < 0) {
    obs::log_error("cannot store task; passing it through").str("task", tee_->task->id()).str("error", err);
    tee_abandon("cannot store: " + err);
    return;
  }
  tee_->length = static_cast<uint64_t>(head.content_length);
  tee_->piece_size = task::piece_size_for(tee_->length);
  tee_->hasher = std::make_unique<task::PieceHasher>(tee_->piece_size);
  for (auto& h : head.headers)
    if (kept_header(h.name)) tee_->headers.emplace_back(h.name, h.value);
  // Only a strong validator may go in If-Range (RFC 9110 section 13.1.5).
  if (const std::string* etag = head.find("ETag"); etag && etag->compare(0, 2, "W/") != 0) tee_->etag = *etag;
  tee_->task->set_streaming(tee_->length, tee_->headers, fd);
}

// The origin's answer is not a task (an error, no length, encoded): the
// owner relays it as it is; clients that joined fetch for themselves.
void Conn::tee_abandon(const std::string& why) {
  tm().passthrough.inc();
  auto t = tee_->task;
  t->set_failed(why, true);
  w_.shared().engine->retire(t);
  // A running job still uses the Tee: it frees it when it sees it orphaned.
  if (tee_->job)
    static_cast<void>(tee_.release());
  else
    tee_.reset();
  serve_stop();
  serve_.task.reset();
  ex_.tee = false;
  ex_.source = "";
}

void Conn::tee_body(const char* data, size_t n) {
  if (!tee_) return;
  tee_->received += n;
  tee_->pending.insert(tee_->pending.end(), data, data + n);
  if (!tee_->error) tee_kick();
}

// The origin connection broke (reset, closed early, TLS error) or stalled
// after the owner had the head of a storable object: instead of failing the
// task (and resetting every client), ask the origin for the rest with
// "Range: bytes=<received>-" (and If-Range with the object's strong ETag, so
// a changed object is never spliced onto the old bytes), on a new
// connection to where the bytes came from. The body that follows goes on
// into the store and the hashes as if nothing happened. At most
// kMaxResumeTries requests in a row that bring no new byte. Returns false
// (the caller fails the exchange as before) when this is not such a case.
bool Conn::tee_resume(const std::string& why) {
  Tee* t = tee_.get();
  if (closing_ || !t || !ex_.tee || !ex_.active || !t->hasher || t->body_done || t->error || drain_ ||
      t->received >= t->length)
    return false;
  if (t->received > t->resume_mark) t->resume_tries = 0;  // the last try brought bytes
  t->resume_mark = t->received;
  if (++t->resume_tries > kMaxResumeTries) {
    obs::log_warn("origin failed again without sending a byte; giving up the download")
        .str("task", t->task->id())
        .num("received", static_cast<int64_t>(t->received))
        .num("length", static_cast<int64_t>(t->length))
        .str("error", why);
    return false;
  }
  if (up_) {
    up_->release();
    up_ = nullptr;
  }
  tm().resumes.inc();
  obs::log_warn("origin broke off mid-body; asking for the rest with a Range request")
      .str("task", t->task->id())
      .str("host", ex_.host)
      .num("from", static_cast<int64_t>(t->received))
      .num("length", static_cast<int64_t>(t->length))
      .num("attempt", t->resume_tries)
      .str("error", why);
  ex_.tee_resume = true;
  ex_.retry_head.clear();
  std::vector<http::Header> hs;
  for (auto& h : ex_.req_headers)
    if (!http::iequals(h.name, "Range") && !http::iequals(h.name, "If-Range")) hs.push_back(h);
  hs.push_back({"Range", "bytes=" + std::to_string(t->received) + "-"});
  if (!t->etag.empty()) hs.push_back({"If-Range", t->etag});
  ex_.req_headers = hs;
  std::string out = http::serialize_request_head("GET", ex_.path, hs);
  Upstream* u = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!u) return true;  // upstream_failed took it from here
  send_upstream(out.data(), out.size());
  if (closing_) return true;
  arm_timer(u->st == Upstream::St::Ready ? rt_->cfg->idle_timeout_s : rt_->cfg->connect_timeout_s);
  update_reads();
  return true;
}

// The head of the answer to tee_resume's request: a redirect is followed
// (with the same Range), a 206 of exactly the missing bytes of the same
// object lets the body flow on; anything else (a 200 because If-Range did
// not match, another range, another length or ETag) fails the download, so
// no client is ever given a splice of two objects. Returns the
// http::Handler verdict (nonzero stops the parser, and the exchange fails).
int Conn::tee_resume_head(const http::MessageHead& head) {
  Tee* t = tee_.get();
  if (!t) return 1;
  const std::string* loc = head.find("Location");
  if ((head.status == 301 || head.status == 302 || head.status == 303 || head.status == 307 ||
       head.status == 308) &&
      loc) {
    ex_.redirecting = true;
    ex_.location = *loc;
    ex_.up_keep_alive = head.keep_alive;
    return 0;
  }
  const std::string* cr = head.find("Content-Range");
  const std::string* etag = head.find("ETag");
  unsigned long long a = 0, b = 0, total = 0;
  std::string why;
  if (head.status != 206) {
    why = "origin answered " + std::to_string(head.status) + " to the Range request" +
          (head.status == 200 && !t->etag.empty() ? " (If-Range did not match: the object changed)" : "");
  } else if (!cr || sscanf(cr->c_str(), "bytes %llu-%llu/%llu", &a, &b, &total) != 3 || a != t->received ||
             b + 1 != t->length || total != t->length ||
             head.content_length != static_cast<int64_t>(t->length - t->received)) {
    why = "origin answered another range: " + (cr ? *cr : std::string("no Content-Range"));
  } else if (!t->etag.empty() && etag && *etag != t->etag) {
    why = "the object changed: ETag " + *etag + ", was " + t->etag;
  } else if (head.find("Content-Encoding")) {
    why = "origin encoded the rest";
  }
  if (!why.empty()) {
    obs::log_warn("cannot resume the download").str("task", t->task->id()).str("error", why);
    return 1;
  }
  ex_.tee_resume = false;
  ex_.up_keep_alive = head.keep_alive;
  obs::log_info("origin resumed the download")
      .str("task", t->task->id())
      .num("from", static_cast<int64_t>(t->received))
      .num("length", static_cast<int64_t>(t->length));
  return 0;
}

// The store failed (disk full, I/O error) while the owner was fetching: the
// task is given up — clients that joined ask the origin themselves — but
// our own client loses nothing: it gets the rest of the file, then what the
// origin sent since (still in memory), then the origin's bytes directly.
void Conn::tee_store_failed() {
  Tee* t = tee_.get();
  std::string why = "cannot store: " + t->err;
  tm().passthrough.inc();
  obs::log_error("store failed; passing the rest of the object through")
      .str("task", t->task->id())
      .str("error", t->err)
      .num("stored", static_cast<int64_t>(t->written));
  t->task->set_failed(why, true);
  w_.shared().engine->retire(t->task);
  if (!t->inflight.empty()) {
    t->inflight.insert(t->inflight.end(), t->pending.begin(), t->pending.end());
    t->pending.swap(t->inflight);
    t->inflight.clear();
  }
  if (ex_.range) {
    close_all(true);  // a cut of a half-stored object: let the client retry
    return;
  }
  drain_ = true;
  serve_pump();
  update_reads();
}

// Drain mode (see tee_store_failed): file first, then memory, then relay.
void Conn::drain_pump() {
  Tee* t = tee_.get();
  if (!serve_.head_sent || serve_.reading || client_.busy() || closing_) return;
  if (serve_.offset < t->written) return;  // serve_pump reads the file part
  std::vector<char> mem;
  mem.swap(t->pending);
  bool done = t->body_done;
  uint64_t length = t->length;
  drain_ = false;
  ex_.tee = false;
  serve_stop();
  tee_.reset();  // aborts the writer: nothing of this object is kept
  ex_.source = "";
  if (!mem.empty()) {
    ex_.resp_bytes += mem.size();
    send_client(mem.data(), mem.size());
  }
  if (done) {
    if (ex_.resp_bytes != length) {
      // Cannot happen unless bytes were lost: never let a short body look
      // complete (the client would wait for the rest forever).
      obs::log_error("pass-through after a store failure came up short")
          .num("sent", static_cast<int64_t>(ex_.resp_bytes))
          .num("length", static_cast<int64_t>(length));
      close_all(true);
      return;
    }
    finish_exchange();
    if (after_exchange_pending_ && !closing_) after_exchange();
    return;
  }
  update_reads();  // the origin's next bytes go straight to the client
}

void Conn::tee_kick() {
  Tee* tee = tee_.get();
  if (!tee || tee->job || tee->error || tee->finalized) return;
  if (!tee->pending.empty()) {
    tee->inflight.swap(tee->pending);
    tee->pending.clear();
  } else if (!tee->body_done) {
    return;
  }
  tee->job = true;
  pending_jobs_++;
  struct Job {
    uv_work_t req{};
    Conn* c;
    Tee* t;
    bool finalize;
    int rc = 0;
    std::string err;
  };
  auto* j = new Job{};
  j->req.data = j;
  j->c = this;
  j->t = tee;
  j->finalize = tee->inflight.empty();
  int r = uv_queue_work(
      w_.loop(), &j->req,
      [](uv_work_t* req) {
        // Thread pool: the only code touching the Tee's hashes and writer
        // while the job runs (job == true keeps the loop out).
        auto* jj = static_cast<Job*>(req->data);
        Tee* t = jj->t;
        if (!jj->finalize) {
          // Slice by slice, so each slice is written and hashed while it
          // is still in the CPU's cache rather than streamed from memory
          // twice.
          constexpr size_t kSlice = 128 * 1024;
          const char* p = t->inflight.data();
          size_t left = t->inflight.size();
          uint64_t at = t->written;
          while (left > 0) {
            size_t n = left < kSlice ? left : kSlice;
            jj->rc = t->writer->write(p, n, at, &jj->err);
            if (jj->rc != 0) return;
            t->hasher->update(p, n);
            at += n;
            p += n;
            left -= n;
          }
          return;
        }
        task::Sha256 whole = t->hasher->finish();
        t->got_digest = hex(whole.data(), whole.size());
        if (t->task->by_digest() && t->got_digest != t->task->id()) {
          t->mismatch = true;
          t->writer->abort();
          return;
        }
        // The bytes are right: readers may finish now, while the commit
        // below makes the store durable (fsync).
        t->task->set_verified();
        task::TaskMeta meta;
        meta.id = t->task->id();
        meta.url = t->url;
        meta.digest = t->task->by_digest() ? "sha256:" + t->got_digest : "";
        meta.length = t->length;
        meta.piece_size = t->piece_size;
        meta.pieces = t->hasher->pieces();
        meta.headers = t->headers;
        jj->rc = t->writer->commit(meta, &jj->err);
      },
      [](uv_work_t* req, int) {
        auto* jj = static_cast<Job*>(req->data);
        Conn* c = jj->c;
        Tee* t = jj->t;
        c->pending_jobs_--;
        t->job = false;
        bool finalize = jj->finalize;
        int rc = jj->rc;
        std::string err = jj->err;
        delete jj;
        if (c->tee_.get() != t) {
          // Abandoned while the job ran: the Tee is ours to drop.
          delete t;
          c->maybe_free();
          return;
        }
        if (rc != 0) {
          t->error = rc;
          t->err = err;
        }
        if (!finalize) {
          // A failed chunk stays in inflight: tee_store_failed() still owes
          // it to the client.
          if (rc == 0) {
            size_t n = t->inflight.size();
            t->recent.swap(t->inflight);
            t->recent_off = t->written;
            t->inflight.clear();
            t->written += n;
            t->task->add_source_bytes(n, 0);
            t->task->add_stored(n);
          }
        } else {
          t->finalized = true;
        }
        if (c->closing_) {
          c->tee_finished();
          c->maybe_free();
          return;
        }
        if (t->error && !t->mismatch) {
          c->tee_store_failed();
          return;
        }
        if (t->error || t->finalized) {
          c->tee_finished();
          if (c->after_exchange_pending_ && !c->closing_) c->after_exchange();
          return;
        }
        c->tee_kick();
        c->update_reads();
      });
  if (r != 0) {
    pending_jobs_--;
    tee->job = false;
    delete j;
    tee->error = r;
    tee->err = uv_strerror(r);
    tee_finished();
  }
}

// The owner's download ended: verified and committed, or failed.
void Conn::tee_finished() {
  std::unique_ptr<Tee> t = std::move(tee_);
  task::Engine& engine = *w_.shared().engine;
  uint64_t cost = now_ms() - t->start_ms;
  if (t->finalized && !t->error && !t->mismatch) {
    tm().ok.inc();
    tm().duration.observe(static_cast<double>(cost) / 1000.0);
    t->writer.reset();  // committed
    t->task->set_complete();
    engine.retire(t->task);
    obs::log_info("peer task done, cost: " + std::to_string(cost) + "ms")
        .str("peer", w_.shared().peer_id)
        .str("task", t->task->id())
        .num("size", static_cast<int64_t>(t->length))
        .num("bytes_origin", static_cast<int64_t>(t->length))
        .num("bytes_peer", 0)
        .str("component", "PeerTask");
    if (p2p::Engine* p2p = w_.shared().p2p) {
      std::string id = t->task->id();
      w_.shared().p2p_worker->post([p2p, id] { p2p->announce_stored(id); });
    }
    return;
  }
  std::string why;
  if (t->mismatch) {
    tm().mismatch.inc();
    why = "digest mismatch: the origin's bytes hash to sha256:" + t->got_digest;
  } else if (t->error) {
    why = "cannot store: " + t->err;
  } else {
    why = "download ended early";
  }
  tm().failed.inc();
  obs::log_error("peer task failed")
      .str("peer", w_.shared().peer_id)
      .str("task", t->task->id())
      .str("error", why)
      .num("cost_ms", static_cast<int64_t>(cost));
  // Bytes already stored are the origin's unless they failed verification.
  t->task->set_failed(why, false, !t->mismatch);
  engine.retire(t->task);
  // Our client may have most of the object: only a reset tells it that it
  // is incomplete.
  if (!closing_) {
    ex_.status = 502;
    close_all(true);
  }
}

void Conn::follow_redirect() {
  redirect_pending_ = false;
  ex_.redirecting = false;
  std::string loc = ex_.location;
  if (ex_.redirects >= 10) {
    if (tee_) tee_abandon("more than 10 redirects");
    fail_exchange(502, "the origin redirected more than 10 times (last to " + loc + ")");
    return;
  }
  ex_.redirects++;
  if (ex_.log_host.empty()) {
    // The request line in core.log names what the client asked for.
    ex_.log_host = ex_.host;
    ex_.log_port = ex_.port;
    ex_.log_path = ex_.path;
  }
  Target t{ex_.host, ex_.port, ex_.https, ex_.path};
  if (!redirect_target(loc, &t, &ex_.req_headers)) {
    fail_exchange(502, "origin redirected to an unsupported Location: " + loc);
    return;
  }
  ex_.host = t.host;
  ex_.port = t.port;
  ex_.https = t.https;
  ex_.path = t.path;
  if (!ex_.up_keep_alive && up_) {
    up_->release();
    up_ = nullptr;
  }
  std::string out = http::serialize_request_head("GET", ex_.path, ex_.req_headers);
  Upstream* up = get_upstream(ex_.host, ex_.port, ex_.https);
  if (!up) return;
  send_upstream(out.data(), out.size());
  update_reads();
}

}  // namespace shoal::proxy
