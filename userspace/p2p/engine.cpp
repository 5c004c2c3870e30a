#include "shoal/p2p/engine.h"

#include <fcntl.h>
#include <unistd.h>

#include "peer_task.h"
#include "scheduler_client.h"
#include "shoal/obs/log.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/hot_pieces.h"
#include "shoal/p2p/http_call.h"
#include "shoal/p2p/peer_tls.h"
#include "shoal/p2p/upload_server.h"
#include "shoal/util/buffer_pool.h"

namespace shoal::p2p {

// What the upload server may send: verified pieces of downloads in progress
// and pieces of stored tasks (pinned against GC while they are read).
class Engine::Source : public PieceSource {
 public:
  explicit Source(Engine& e) : e_(e) {}
  bool piece_busy(const std::string& task_id, uint32_t index) override {
    auto it = uploading_.find({task_id, index});
    return it != uploading_.end() && it->second >= kUploadsPerPiece;
  }
  bool open_piece(const std::string& task_id, uint32_t index, PieceRef* out) override {
    auto it = e_.downloads_.find(task_id);
    if (it != e_.downloads_.end()) {
      PeerTask* pt = it->second;
      if (!pt->holds(index)) return false;
      // A verified piece not yet written is only in memory (pinned there).
      if (from_memory(task_id, index, pt->piece_len(index), out)) return true;
      int fd = fcntl(pt->read_fd(), F_DUPFD_CLOEXEC, 0);
      if (fd < 0) return false;
      out->fd = fd;
      out->offset = static_cast<uint64_t>(index) * pt->piece_size();
      out->length = pt->piece_len(index);
      out->token = add(fd, "", task_id, index);
      return true;
    }
    if (!task::valid_task_id(task_id)) return false;
    task::TaskMeta meta;
    task::Store& store = e_.tasks_->store();
    if (!store.lookup(task_id, &meta) || meta.piece_size == 0 ||
        index >= task::piece_count(meta.length, meta.piece_size))
      return false;
    uint64_t left = meta.length - static_cast<uint64_t>(index) * meta.piece_size;
    if (from_memory(task_id, index, static_cast<uint32_t>(left < meta.piece_size ? left : meta.piece_size),
                    out))
      return true;
    if (store.pin(task_id) != 0) return false;
    int fd = store.open_data(task_id, nullptr);
    if (fd < 0) {
      store.unpin(task_id);
      return false;
    }
    out->fd = fd;
    out->offset = static_cast<uint64_t>(index) * meta.piece_size;
    out->length = static_cast<uint32_t>(left < meta.piece_size ? left : meta.piece_size);
    out->token = add(fd, task_id, task_id, index);
    return true;
  }
  void release_piece(const PieceRef& ref) override {
    auto it = open_.find(ref.token);
    if (it == open_.end()) return;
    if (it->second.fd >= 0) close(it->second.fd);
    if (!it->second.pinned.empty()) e_.tasks_->store().unpin(it->second.pinned);
    auto u = uploading_.find(it->second.piece);
    if (u != uploading_.end() && --u->second == 0) uploading_.erase(u);
    open_.erase(it);
  }

 private:
  using PieceKey = std::pair<std::string, uint32_t>;
  // Uploads of one piece at once. Two keep a fresh piece's holder busy
  // while the peers that got it pass it on.
  static constexpr uint32_t kUploadsPerPiece = 2;
  struct Open {
    int fd;
    std::string pinned;  // stored task id pinned against GC, or ""
    PieceKey piece;
  };
  bool from_memory(const std::string& task_id, uint32_t index, uint32_t length, PieceRef* out) {
    HotPieces::Data d = e_.hot().get(task_id, index);
    if (!d || d->size() != length) return false;
    out->data = std::move(d);
    out->fd = -1;
    out->offset = 0;
    out->length = length;
    out->token = add(-1, "", task_id, index);
    return true;
  }
  uint64_t add(int fd, const std::string& pinned, const std::string& task_id, uint32_t index) {
    uint64_t t = next_++;
    open_[t] = Open{fd, pinned, {task_id, index}};
    uploading_[{task_id, index}]++;
    return t;
  }
  Engine& e_;
  uint64_t next_ = 1;
  std::map<uint64_t, Open> open_;  // token ->
  std::map<PieceKey, uint32_t> uploading_;
};

Engine::Engine(uv_loop_t* loop, task::Engine* tasks, OriginFetcher* origin, EngineOptions opts)
    : loop_(loop), tasks_(tasks), origin_(origin), opts_(std::move(opts)) {
  signer_ = std::make_unique<Signer>(opts_.secret);
  verifier_ = std::make_unique<Verifier>(opts_.secret);
  LinkPool::Options lo;
  lo.idle_ms = opts_.keepalive_ms;
  links_ = std::make_unique<LinkPool>(loop_, lo);
  hot_ = std::make_unique<HotPieces>(opts_.piece_memory);
  sched_ = std::make_unique<SchedulerClient>(loop_, opts_, *signer_, links());
  source_ = std::make_unique<Source>(*this);
  UploadServer::Options uo;
  uo.slots = opts_.upload_slots;
  uo.rate = opts_.upload_rate;
  if (opts_.tls) {
    tls_ = PeerTls::create(opts_.secret, &tls_error_);
    if (tls_ != nullptr) uo.tls = tls_->server();
  }
  upload_ = std::make_unique<UploadServer>(loop_, source_.get(), verifier_.get(), uo);
}

Engine::~Engine() = default;

tls::ClientConfig* Engine::peer_tls() { return tls_ != nullptr ? tls_->client() : nullptr; }

int Engine::start(std::string* err) {
  if (opts_.tls && tls_ == nullptr) {
    *err = tls_error_;
    return UV_EINVAL;
  }
  int r = upload_->listen(opts_.listen_addr, opts_.listen_port, err);
  if (r != 0) return r;
  sched_->on_registered = [this](int sched) {
    // A scheduler that (re)registered us has forgotten what we hold: tell
    // it about the stored tasks it is responsible for.
    for (auto& meta : tasks_->store().list())
      if (sched_->pick(meta.id) == sched) announce_stored(meta.id);
  };
  sched_->free_slots = [this] { return upload_->free_slots(); };
  sched_->start();
  obs::log_info("p2p peer started")
      .str("peer", opts_.peer_id)
      .str("listen", opts_.listen_addr + ":" + std::to_string(upload_->port()))
      .str("advertise", opts_.advertise)
      .num("schedulers", static_cast<int64_t>(opts_.schedulers.size()))
      .boolean("tls", opts_.tls);
  return 0;
}

void Engine::stop(std::function<void()> done) {
  stopping_ = true;
  origin_->close_idle();
  std::vector<PeerTask*> all;
  for (auto& kv : downloads_) all.push_back(kv.second);
  for (auto* pt : all) pt->abort("shoald is stopping");
  auto remaining = std::make_shared<int>(2);
  auto one = [remaining, done] {
    if (--*remaining == 0 && done) done();
  };
  // The leave calls go over kept-alive connections: the pool closes after.
  sched_->stop([this, one] { links_->close(one); });
  upload_->close(one);
}

void Engine::download(std::shared_ptr<task::ActiveTask> t, const std::string& url, uint64_t length,
                      task::ActiveTask::Headers headers, OriginRequest req) {
  if (stopping_ || downloads_.count(t->id())) {
    t->set_failed(stopping_ ? "shoald is stopping" : "already downloading", true);
    tasks_->retire(t);
    return;
  }
  auto* pt = new PeerTask(*this, t, url, length, std::move(headers), std::move(req));
  downloads_[t->id()] = pt;
  downloads_count_ = downloads_.size();
  pt->start();  // on failure it has called task_finished() already
}

void Engine::task_finished(PeerTask* pt) {
  auto it = downloads_.find(pt->id());
  if (it != downloads_.end() && it->second == pt) downloads_.erase(it);
  downloads_count_ = downloads_.size();
  // No download left: the piece buffers this loop kept for the next ones
  // go back to the system (a few may still come back from fetches being
  // cancelled; the next download reuses those).
  if (downloads_.empty()) util::BufferPool::local().clear();
}

void Engine::announce_stored(const std::string& id) {
  if (!sched_->configured() || stopping_) return;
  task::TaskMeta meta;
  if (!tasks_->store().lookup(id, &meta) || meta.piece_size == 0) return;
  uint64_t n = task::piece_count(meta.length, meta.piece_size);
  if (n == 0 || n > kMaxPieces || meta.pieces.size() != n) return;
  AnnounceReq a;
  a.peer = opts_.peer_id;
  a.task = id;
  a.length = meta.length;
  a.piece_size = meta.piece_size;
  a.have = Bitmap(static_cast<uint32_t>(n));
  for (uint32_t i = 0; i < n; ++i) {
    a.have.set(i);
    a.hashes[i] = meta.pieces[i];
  }
  a.complete = true;
  sched_->call(id, "/v1/announce", encode(a), [](int, const std::string&, int) {});
}

Engine::Status Engine::status() const {
  Status st;
  st.listen =
      (opts_.listen_addr.find(':') != std::string::npos ? "[" + opts_.listen_addr + "]" : opts_.listen_addr) +
      ":" + std::to_string(opts_.listen_port);
  st.advertise = opts_.advertise;
  st.tls = opts_.tls;
  st.downloads = downloads_count_.load();
  for (size_t i = 0; i < opts_.schedulers.size(); ++i)
    st.schedulers.emplace_back(opts_.schedulers[i], sched_->reachable(i));
  return st;
}

}  // namespace shoal::p2p
