#include "peer_task.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <random>

#include "scheduler_client.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"
#include "shoal/task/task_id.h"
#include "shoal/util/buffer_pool.h"
#include "shoal/util/hex.h"

namespace shoal::p2p {
namespace {

constexpr uint64_t kTickMs = 250;
constexpr int kOriginParallel = 2;   // Range fetches from the origin at once, per task
constexpr int kPerParent = 2;        // piece requests in flight per parent (pipelining)
constexpr int kMaxOriginTries = 3;   // per piece, before the task fails
constexpr int kMaxParentErrors = 3;  // before a parent is dropped for this task
constexpr uint64_t kAvoidBusyMs = 250;
constexpr uint64_t kQueryBusyMs = 500;  // scheduler polls while every fetch slot is busy
constexpr uint64_t kAvoidStallMs = 30000;
constexpr uint64_t kEndGameAfterMs = 1000;
// Verified pieces waiting for their write are held in memory: with a disk
// slower than the network they would pile up, so no fetch starts while
// this much of a task waits.
constexpr uint64_t kMaxUnwrittenBytes = 256u << 20;
constexpr uint64_t kPieceTimeoutMs = 30 * 60 * 1000;  // stalls are caught long before

struct P2pMetrics {
  obs::Counter& bytes_peer = obs::metrics().counter(
      "shoal_p2p_bytes_total", "Bytes of pieces downloaded, by source", "source=\"peer\"");
  obs::Counter& bytes_origin = obs::metrics().counter(
      "shoal_p2p_bytes_total", "Bytes of pieces downloaded, by source", "source=\"origin\"");
  obs::Counter& pieces_peer =
      obs::metrics().counter("shoal_p2p_pieces_total", "Pieces downloaded, by source", "source=\"peer\"");
  obs::Counter& pieces_origin =
      obs::metrics().counter("shoal_p2p_pieces_total", "Pieces downloaded, by source", "source=\"origin\"");
  obs::Counter& bad = obs::metrics().counter("shoal_p2p_bad_pieces_total",
                                             "Pieces from a parent whose SHA-256 did not match");
  obs::Counter& stalls =
      obs::metrics().counter("shoal_p2p_stalls_total", "Piece fetches cancelled for stalling");
  obs::Counter& parent_errors =
      obs::metrics().counter("shoal_p2p_parent_errors_total", "Piece fetches from a parent that failed");
  obs::Counter& parents = obs::metrics().counter("shoal_p2p_parents_used_total",
                                                 "Distinct parents pieces came from, summed over tasks");
  obs::Counter& ok =
      obs::metrics().counter("shoal_p2p_tasks_total", "P2P downloads by result", "result=\"success\"");
  obs::Counter& failed =
      obs::metrics().counter("shoal_p2p_tasks_total", "P2P downloads by result", "result=\"failed\"");
  obs::Counter& fallback = obs::metrics().counter(
      "shoal_p2p_fallback_total", "Downloads that went back to the origin because no scheduler answered");
};

P2pMetrics& pm() {
  static P2pMetrics m;
  return m;
}

EVP_MD_CTX* md(void* p) { return static_cast<EVP_MD_CTX*>(p); }

// A SHA-256 context for one piece fetch; the fetch and its body observer
// share it.
std::shared_ptr<EVP_MD_CTX> new_sha() {
  std::shared_ptr<EVP_MD_CTX> c(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (c) EVP_DigestInit_ex(c.get(), task::sha256_md(), nullptr);
  return c;
}

using util::hex;

}  // namespace

PeerTask::PeerTask(Engine& e, std::shared_ptr<task::ActiveTask> t, std::string url, uint64_t length,
                   task::ActiveTask::Headers headers, OriginRequest req)
    : e_(e),
      t_(std::move(t)),
      id_(t_->id()),
      url_(std::move(url)),
      length_(length),
      psize_(task::piece_size_for(length)),
      n_(static_cast<uint32_t>(task::piece_count(length, task::piece_size_for(length)))),
      headers_(std::move(headers)),
      req_(std::move(req)) {
  have_ = Bitmap(n_);
  hash_known_ = Bitmap(n_);
  from_origin_ = Bitmap(n_);
  on_disk_ = Bitmap(n_);
  hashes_.resize(n_);
  fetching_.assign(n_, 0);
  rank_.resize(n_);
  for (uint32_t i = 0; i < n_; ++i) rank_[i] = i;
  rng_.seed(std::random_device{}());
  std::shuffle(rank_.begin(), rank_.end(), rng_);
  uv_timer_init(e_.loop(), &timer_);
  timer_.data = this;
}

PeerTask::~PeerTask() {
  if (whole_) EVP_MD_CTX_free(md(whole_));
  if (read_fd_ >= 0) close(read_fd_);
}

uint32_t PeerTask::piece_len(uint32_t i) const {
  uint64_t off = offset_of(i);
  uint64_t left = length_ - off;
  return static_cast<uint32_t>(left < psize_ ? left : psize_);
}

bool PeerTask::start() {
  start_ms_ = uv_now(e_.loop());
  std::string err;
  // Around the page cache, written and read (see task::Writer): pieces are
  // whole aligned blocks, and the readers (the whole-object hash, uploads
  // to other peers, this host's client) read aligned blocks, so a task
  // moving through this peer does not fill the page cache.
  int r = e_.tasks().store().begin(id_, &writer_, &err, /*direct=*/true);
  int fd = r == 0 ? writer_->open_data(&err, /*direct=*/true) : -1;
  if (fd >= 0) {
    // Pieces land anywhere in the file (holes until they come); readers see
    // only the verified prefix, the upload server only verified pieces.
    read_fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (read_fd_ < 0) err = std::string("dup: ") + strerror(errno);
  }
  if (r != 0 || fd < 0 || read_fd_ < 0) {
    if (fd >= 0) close(fd);
    obs::log_error("cannot store task").str("task", id_).str("error", err);
    t_->set_failed("cannot store: " + err, true);
    e_.tasks().retire(t_);
    finish();
    return false;
  }
  whole_ = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md(whole_), task::sha256_md(), nullptr);
  t_->set_streaming(length_, headers_, fd);
  obs::log_info("peer task started")
      .str("peer", e_.options().peer_id)
      .str("task", id_)
      .num("size", static_cast<int64_t>(length_))
      .num("pieces", n_)
      .num("piece_size", psize_)
      .str("component", "PeerTask");
  uv_timer_start(
      &timer_, [](uv_timer_t* tm) { static_cast<PeerTask*>(tm->data)->tick(); }, kTickMs, kTickMs);
  announce_dirty_ = false;
  tick();
  return true;
}

void PeerTask::tick() {
  if (state_ != State::Running) return;
  stall_check();
  if (state_ != State::Running) return;
  if (e_.scheduler().configured() && !conflict_) {
    maybe_announce();
    maybe_query();
  } else {
    fallback_ = true;
  }
  schedule();
}

void PeerTask::maybe_announce() {
  // One scheduler call at a time per task, so they arrive in the order
  // they were sent: what we hold only ever grows at the scheduler.
  if (!announce_dirty_ || announce_id_ || query_id_ || have_.count() == 0 ||
      uv_now(e_.loop()) < next_announce_ms_)
    return;
  AnnounceReq a;
  a.peer = e_.options().peer_id;
  a.task = id_;
  a.length = length_;
  a.piece_size = psize_;
  a.have = have_;
  for (uint32_t i = 0; i < n_; ++i)
    if (from_origin_.test(i)) a.hashes[i] = hashes_[i];
  announce_dirty_ = false;
  announce_id_ =
      e_.scheduler().call(id_, "/v1/announce", encode(a), [this](int status, const std::string& body, int) {
        announce_id_ = 0;
        if (status == 409) {
          conflict(body);
          return;
        }
        if (status != 200) {
          // Retried from the timer, not at once: a scheduler that is down must
          // not turn this into a busy loop.
          announce_dirty_ = true;
          next_announce_ms_ = uv_now(e_.loop()) + (status == -1 ? 5000 : 1000);
          return;
        }
        if (state_ == State::Running) tick();
      });
}

void PeerTask::maybe_query() {
  uint64_t now = uv_now(e_.loop());
  // An announce in flight goes first: the scheduler must know our new
  // pieces (and their hashes) before it hands out the next ones.
  if (query_id_ || announce_id_ || now < next_query_ms_ || have_.all()) return;
  ParentsReq q;
  q.peer = e_.options().peer_id;
  q.task = id_;
  q.length = length_;
  q.piece_size = psize_;
  q.have = have_;
  q.hashes_known = hash_known_;
  q.source = true;
  q.max_parents = std::max<uint32_t>(8, e_.options().parallel_parents * 2);
  query_id_ = e_.scheduler().call(id_, "/v1/parents", encode(q),
                                  [this](int status, const std::string& body, int sched) {
                                    query_id_ = 0;
                                    on_parents(status, body, sched);
                                    if (state_ == State::Running) maybe_announce();
                                  });
}

void PeerTask::on_parents(int status, const std::string& body, int sched) {
  if (state_ != State::Running) return;
  uint64_t now = uv_now(e_.loop());
  if (status == -1) {
    // No scheduler answers: fetch from the origin ourselves (and keep
    // asking now and then, so the cluster takes over again when one is back).
    if (!warned_fallback_) {
      obs::log_warn("no scheduler reachable; fetching from the origin")
          .str("peer", e_.options().peer_id)
          .str("task", id_);
      pm().fallback.inc();
      warned_fallback_ = true;
    }
    fallback_ = true;
    next_query_ms_ = now + 5000;
    schedule();
    return;
  }
  if (status == 409) {
    conflict(body);
    return;
  }
  ParentsResp resp;
  std::string err;
  if (status != 200 || !decode(body, n_, &resp, &err)) {
    obs::log_warn("scheduler answer unusable")
        .str("task", id_)
        .num("status", status)
        .str("error", status == 200 ? err : body.substr(0, 200));
    next_query_ms_ = now + 1000;
    schedule();
    return;
  }
  if (fallback_ && warned_fallback_) obs::log_info("scheduler reachable again").str("task", id_);
  fallback_ = false;
  if (sched != last_sched_) {
    // A scheduler that takes the task over knows nothing of what we hold.
    if (last_sched_ != -2) announce_dirty_ = true;
    last_sched_ = sched;
  }
  for (auto& kv : resp.hashes) {
    if (kv.first >= n_ || hash_known_.test(kv.first)) continue;
    hashes_[kv.first] = kv.second;
    hash_known_.set(kv.first);
  }
  for (auto& p : resp.parents) {
    if (p.peer == e_.options().peer_id) continue;
    ParentInfo& pi = parents_[p.peer];
    pi.addr = p.addr;
    pi.pieces = p.pieces;
  }
  assigned_.clear();
  for (uint32_t i : resp.origin)
    if (i < n_ && !have_.test(i)) assigned_.insert(i);
  schedule();
  // While there is room for more fetches, ask again soon: parents announce
  // new pieces all the time, and a piece learned of late is an uplink left
  // idle. With every fetch slot busy, now and then is enough.
  uint64_t next = parent_inflight_ < fetch_limit() ? kQueryBusyMs / 3 : kQueryBusyMs;
  next_query_ms_ = now + (resp.retry_ms ? std::min<uint64_t>(resp.retry_ms, next) : next);
}

// The scheduler knows the task with another length than the origin told us
// (the object changed, or a peer lies): no parent of that swarm can help,
// and waiting would leave the client hanging. The origin gives the rest.
void PeerTask::conflict(const std::string& body) {
  if (state_ != State::Running || conflict_) return;
  obs::log_warn("the scheduler knows this task with another length; fetching from the origin")
      .str("peer", e_.options().peer_id)
      .str("task", id_)
      .num("size", static_cast<int64_t>(length_))
      .str("error", body.substr(0, 200));
  pm().fallback.inc();
  conflict_ = fallback_ = warned_fallback_ = true;
  schedule();
}

bool PeerTask::usable(const ParentInfo& p, uint32_t piece, uint64_t now) const {
  return !p.banned && p.avoid_until <= now && p.inflight < kPerParent && p.pieces.test(piece);
}

// Pieces in flight are held in memory until verified: at most 256 MiB of
// them, whatever the piece size.
int PeerTask::fetch_limit() const {
  uint32_t by_memory = std::max<uint32_t>(2, (256u << 20) / psize_);
  return static_cast<int>(
      std::max<uint32_t>(2, std::min(e_.options().parallel_parents * kPerParent, by_memory)));
}

void PeerTask::schedule() {
  if (state_ != State::Running || unwritten_bytes_ >= kMaxUnwrittenBytes) return;
  uint64_t now = uv_now(e_.loop());
  auto wanted = [&](uint32_t i) { return !have_.test(i) && fetching_[i] == 0; };
  // Origin pieces: the scheduler's assignments; without a scheduler, every
  // piece no known parent can give.
  std::vector<uint32_t> from_origin;
  if (fallback_) {
    for (uint32_t i = 0; i < n_; ++i) {
      if (!wanted(i)) continue;
      bool any = false;
      for (auto& kv : parents_)
        if (!kv.second.banned && kv.second.pieces.test(i) && hash_known_.test(i)) any = true;
      if (!any) from_origin.push_back(i);
    }
  } else {
    for (uint32_t i : assigned_)
      if (wanted(i)) from_origin.push_back(i);
    // A piece whose every holder this peer gave up on (a parent killed in
    // mid-piece refuses connections from then on) would wait until the
    // scheduler forgets that parent (its peerTimeout), and one whose every
    // holder stalled would wait out the 30 s of avoidance with the client
    // getting nothing: fetch it from the origin instead, as without a
    // scheduler.
    for (uint32_t i = 0; i < n_; ++i) {
      if (!wanted(i) || assigned_.count(i)) continue;
      bool held = false, alive = false;
      for (auto& kv : parents_) {
        if (!kv.second.pieces.test(i)) continue;
        held = true;
        alive = alive || !(kv.second.banned || (kv.second.stalled && kv.second.avoid_until > now));
      }
      if (held && !alive) from_origin.push_back(i);
    }
  }
  for (uint32_t i : from_origin) {
    if (origin_inflight_ >= kOriginParallel) break;
    start_origin(i);
  }
  // Parent pieces, rarest first (then in order, which the client's stream
  // likes best).
  int limit = fetch_limit();
  if (parent_inflight_ >= limit || parents_.empty()) return;
  std::vector<std::pair<uint64_t, uint32_t>> cands;
  for (uint32_t i = 0; i < n_; ++i) {
    if (!wanted(i) || !hash_known_.test(i)) continue;
    int holders = 0;
    for (auto& kv : parents_)
      if (!kv.second.banned && kv.second.pieces.test(i)) holders++;
    // Equally rare pieces in this peer's own random order: peers that start
    // together then fetch different pieces and can trade them, instead of
    // all queueing at one parent for the same piece.
    if (holders) cands.emplace_back((static_cast<uint64_t>(holders) << 32) | rank_[i], i);
  }
  std::sort(cands.begin(), cands.end());
  for (auto& c : cands) {
    if (parent_inflight_ >= limit) return;
    // The least loaded holder (as far as this peer's own requests tell),
    // and among equals any one at random: taking the first in id order sent
    // every peer to the same few parents while others' uplinks idled.
    const std::string* best = nullptr;
    const ParentInfo* bp = nullptr;
    uint32_t ties = 0;
    for (auto& kv : parents_) {
      if (!usable(kv.second, c.second, now)) continue;
      const ParentInfo& p = kv.second;
      bool better = !bp || p.inflight < bp->inflight || (p.inflight == bp->inflight && p.errors < bp->errors);
      bool equal = bp && p.inflight == bp->inflight && p.errors == bp->errors;
      if (better) ties = 1;
      if (better || (equal && rng_() % ++ties == 0)) {
        best = &kv.first;
        bp = &p;
      }
    }
    if (best) start_parent(c.second, *best);
  }
  // End game: every missing piece is on its way; ask a second parent for the
  // ones that have been in flight longest, and keep whichever comes first.
  uint32_t missing = n_ - have_.count();
  if (missing == 0 || missing > std::max<uint32_t>(4, e_.options().parallel_parents)) return;
  for (auto& kv : fetches_) {
    if (parent_inflight_ >= limit) return;
    Fetch& f = kv.second;
    if (fetching_[f.piece] != 1 || now - f.start_ms < kEndGameAfterMs || !hash_known_.test(f.piece)) continue;
    for (auto& pkv : parents_) {
      if (pkv.first == f.parent || !usable(pkv.second, f.piece, now)) continue;
      start_parent(f.piece, pkv.first);
      break;
    }
  }
}

void PeerTask::start_parent(uint32_t piece, const std::string& parent) {
  ParentInfo& p = parents_[parent];
  uint64_t fid = next_fetch_++;
  Fetch& f = fetches_[fid];
  f.piece = piece;
  f.parent = parent;
  f.start_ms = f.mark_ms = uv_now(e_.loop());
  std::string path = "/v1/tasks/" + id_ + "/pieces/" + std::to_string(piece);
  auto hs = e_.signer().sign("GET", path, "", static_cast<int64_t>(time(nullptr)), nullptr);
  hs.push_back({"Host", p.addr});
  if (e_.links() == nullptr) hs.push_back({"Connection", "close"});
  f.sha = new_sha();
  f.call = HttpCall::start(
      e_.loop(), p.addr, http::serialize_request_head("GET", path, hs), piece_len(piece), kPieceTimeoutMs,
      e_.options().mark, [this, fid](CallResult& r) { on_parent_done(fid, r); }, e_.peer_tls(), e_.links());
  f.call->observe_body([sha = f.sha](const char* d, size_t n) {
    if (sha) EVP_DigestUpdate(sha.get(), d, n);
  });
  fetching_[piece]++;
  p.inflight++;
  parent_inflight_++;
}

void PeerTask::start_origin(uint32_t piece) {
  uint64_t fid = next_fetch_++;
  Fetch& f = fetches_[fid];
  f.piece = piece;
  f.start_ms = f.mark_ms = uv_now(e_.loop());
  fetching_[piece]++;
  origin_inflight_++;
  f.sha = new_sha();
  f.origin_handle = e_.origin().fetch(
      req_, offset_of(piece), piece_len(piece), length_, &f.progress,
      [this, fid](int error, const std::string& why, std::string& bytes) {
        on_origin_done(fid, error, why, bytes);
      },
      [sha = f.sha](const char* d, size_t n) {
        if (sha) EVP_DigestUpdate(sha.get(), d, n);
      });
}

// Forgets a fetch: no callback of it runs afterwards.
void PeerTask::cancel_fetch(uint64_t fid) {
  auto it = fetches_.find(fid);
  if (it == fetches_.end()) return;
  Fetch& f = it->second;
  fetching_[f.piece]--;
  if (f.parent.empty()) {
    origin_inflight_--;
    e_.origin().cancel(f.origin_handle);
  } else {
    parent_inflight_--;
    auto p = parents_.find(f.parent);
    if (p != parents_.end()) p->second.inflight--;
    if (f.call) f.call->cancel();
  }
  fetches_.erase(it);
}

void PeerTask::on_parent_done(uint64_t fid, CallResult& r) {
  auto it = fetches_.find(fid);
  if (it == fetches_.end()) return;
  Fetch f = it->second;
  fetches_.erase(it);
  fetching_[f.piece]--;
  parent_inflight_--;
  ParentInfo& p = parents_[f.parent];
  p.inflight--;
  if (state_ != State::Running) return;
  uint64_t now = uv_now(e_.loop());
  if (have_.test(f.piece)) {
    tick();  // the other copy of an end-game piece won
    return;
  }
  if (r.error == 0 && r.status == 200 && r.body.size() == piece_len(f.piece)) {
    piece_arrived(f, std::move(r.body));
    return;
  }
  if (r.error == 0 && r.status == 503) {
    p.avoid_until = now + kAvoidBusyMs;  // busy, not broken
    p.stalled = false;
  } else {
    std::string why = r.error ? r.why : "HTTP " + std::to_string(r.status);
    if (r.error == 0 && r.status == 403) p.pieces.clear(f.piece);  // it does not hold it (any more)
    pm().parent_errors.inc();
    if (++p.errors >= kMaxParentErrors) p.banned = true;
    // bytes: how much of the piece had arrived (a parent that died in
    // mid-piece leaves 0 < bytes < piece_bytes).
    obs::log_info("piece fetch from parent failed")
        .str("task", id_)
        .num("piece", f.piece)
        .str("parent", f.parent)
        .str("error", why)
        .num("bytes", static_cast<int64_t>(r.body.size()))
        .num("piece_bytes", piece_len(f.piece))
        .boolean("dropped", p.banned);
    report(f.parent, f.piece, ResultReq::Outcome::Error);
  }
  tick();
}

void PeerTask::on_origin_done(uint64_t fid, int error, const std::string& why, std::string& bytes) {
  auto it = fetches_.find(fid);
  if (it == fetches_.end()) return;
  Fetch f = it->second;
  uint32_t piece = f.piece;
  fetches_.erase(it);
  fetching_[piece]--;
  origin_inflight_--;
  if (state_ != State::Running) return;
  if (have_.test(piece)) {
    tick();
    return;
  }
  if (error != 0 || bytes.size() != piece_len(piece)) {
    std::string w = error ? why : "wrong length " + std::to_string(bytes.size());
    obs::log_warn("piece fetch from the origin failed").str("task", id_).num("piece", piece).str("error", w);
    if (!fallback_) report("", piece, ResultReq::Outcome::OriginFailed);
    assigned_.erase(piece);
    if (++origin_tries_[piece] >= kMaxOriginTries) {
      fail("the origin failed piece " + std::to_string(piece) + " " + std::to_string(kMaxOriginTries) +
           " times: " + w);
      return;
    }
    next_query_ms_ = 0;
    tick();
    return;
  }
  piece_arrived(f, std::move(bytes));
}

// A piece's bytes are all here and hashed (as they arrived): check them
// against the scheduler's hash (a parent's piece) or publish the hash (an
// origin piece). A good piece is held from now on: other peers may fetch it
// from memory (hot_pieces.h) while it is written to disk behind their
// backs; the client and the whole-object hash wait for the disk.
void PeerTask::piece_arrived(const Fetch& f, std::string data) {
  const uint32_t piece = f.piece;
  const bool from_origin = f.parent.empty();
  task::Sha256 got{};
  if (!f.sha || EVP_DigestFinal_ex(f.sha.get(), got.data(), nullptr) != 1) {
    fail("no memory for a SHA-256 context");
    return;
  }
  if (!from_origin && got != hashes_[piece]) {
    util::BufferPool::local().give_back(std::move(data));
    pm().bad.inc();
    bad_pieces_++;
    ParentInfo& p = parents_[f.parent];
    p.banned = true;
    obs::log_warn("bad piece from parent: SHA-256 mismatch; parent dropped for this task")
        .str("task", id_)
        .num("piece", piece)
        .str("parent", f.parent)
        .str("addr", p.addr)
        .str("expected", hex(hashes_[piece].data(), 32))
        .str("got", hex(got.data(), 32));
    report(f.parent, piece, ResultReq::Outcome::BadPiece);
    tick();
    return;
  }
  have_.set(piece);
  uint32_t len = piece_len(piece);
  obs::log_debug("piece done")
      .str("task", id_)
      .num("piece", piece)
      .str("from", from_origin ? "origin" : f.parent)
      .num("at_ms", static_cast<int64_t>(uv_now(e_.loop()) - start_ms_))
      .num("ms", static_cast<int64_t>(uv_now(e_.loop()) - f.start_ms))
      .num("inflight", parent_inflight_)
      .num("parents", static_cast<int64_t>(parents_.size()));
  if (from_origin) {
    hashes_[piece] = got;
    hash_known_.set(piece);
    from_origin_.set(piece);
    bytes_origin_ += len;
    t_->add_source_bytes(len, 0);
    pm().bytes_origin.inc(len);
    pm().pieces_origin.inc();
  } else {
    bytes_peer_ += len;
    t_->add_source_bytes(0, len);
    pm().bytes_peer.inc(len);
    pm().pieces_peer.inc();
    if (parents_used_.insert(f.parent).second) pm().parents.inc();
    parents_[f.parent].errors = 0;
    report(f.parent, piece, ResultReq::Outcome::Ok, len);
  }
  assigned_.erase(piece);
  // End game: drop the other copies of this piece.
  std::vector<uint64_t> losers;
  for (auto& kv : fetches_)
    if (kv.second.piece == piece) losers.push_back(kv.first);
  for (uint64_t fid : losers) cancel_fetch(fid);
  HotPieces::Data bytes = HotPieces::wrap(std::move(data));
  e_.hot().put(id_, piece, bytes);
  write_piece(piece, std::move(bytes));
  announce_dirty_ = true;
  next_query_ms_ = 0;
  tick();
}

// Writes a held piece in the thread pool; the contiguous prefix on disk then
// goes to the ActiveTask, and the whole-object hash follows it.
void PeerTask::write_piece(uint32_t piece, HotPieces::Data bytes) {
  struct Job {
    uv_work_t req{};
    PeerTask* pt;
    uint32_t piece;
    HotPieces::Data bytes;  // released in the after-work callback, on the loop
    std::string err;
    int rc = 0;
    uint64_t offset;
    task::Writer* writer;
  };
  auto* j = new Job{};
  j->req.data = j;
  j->pt = this;
  j->piece = piece;
  unwritten_bytes_ += bytes->size();
  j->bytes = std::move(bytes);
  j->offset = offset_of(piece);
  j->writer = writer_.get();
  jobs_++;
  int r = uv_queue_work(
      e_.loop(), &j->req,
      [](uv_work_t* req) {
        auto* jj = static_cast<Job*>(req->data);
        jj->rc = jj->writer->write(jj->bytes->data(), jj->bytes->size(), jj->offset, &jj->err);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<Job> jj(static_cast<Job*>(req->data));
        PeerTask* pt = jj->pt;
        pt->jobs_--;
        pt->unwritten_bytes_ -= jj->bytes->size();
        if (pt->state_ != State::Running) {
          pt->maybe_free();
          return;
        }
        if (jj->rc != 0) {
          pt->fail("cannot store: " + jj->err);
          return;
        }
        pt->piece_written(jj->piece);
      });
  if (r != 0) {
    jobs_--;
    unwritten_bytes_ -= j->bytes->size();
    delete j;
    fail(std::string("thread pool: ") + uv_strerror(r));
  }
}

void PeerTask::piece_written(uint32_t piece) {
  on_disk_.set(piece);
  e_.hot().written(id_, piece);
  while (contig_piece_ < n_ && on_disk_.test(contig_piece_)) contig_piece_++;
  uint64_t contig = std::min<uint64_t>(offset_of(contig_piece_), length_);
  if (contig > reported_) {
    t_->add_stored(contig - reported_);
    reported_ = contig;
  }
  hash_more();
  schedule();  // fetches may have waited for the writes (kMaxUnwrittenBytes)
}

// The whole object's SHA-256 follows the contiguous prefix on disk, so it
// is ready when the last piece lands. Pieces still in memory are hashed
// from there; the others are read back (whole aligned blocks: the fd is
// O_DIRECT; the prefix ends on a piece boundary, aligned, until the end).
void PeerTask::hash_more() {
  if (hash_job_ || state_ != State::Running || hashed_ >= reported_) return;
  struct Job {
    uv_work_t req{};
    PeerTask* pt;
    int fd;
    uint64_t from, to;
    uint32_t psize;
    // The range's pieces, in order: their bytes when still in memory, else
    // null (read back from disk). Released in the after-work callback.
    std::vector<HotPieces::Data> mem;
    EVP_MD_CTX* ctx;
    int err = 0;
  };
  auto* j = new Job{};
  j->req.data = j;
  j->pt = this;
  j->fd = read_fd_;
  j->from = hashed_;  // a piece boundary; reported_ too, or the end
  j->to = reported_;
  j->psize = psize_;
  for (uint64_t at = hashed_; at < reported_; at += psize_) {
    auto i = static_cast<uint32_t>(at / psize_);
    HotPieces::Data d = e_.hot().get(id_, i);
    j->mem.push_back(d && d->size() == piece_len(i) ? std::move(d) : nullptr);
  }
  j->ctx = md(whole_);
  hash_job_ = true;
  jobs_++;
  int r = uv_queue_work(
      e_.loop(), &j->req,
      [](uv_work_t* req) {
        auto* jj = static_cast<Job*>(req->data);
        constexpr size_t kBuf = 1 << 20, kAlign = task::kDirectAlign;
        // Kept for the thread's life: a fresh one per job would be mapped
        // and faulted in page by page each time.
        thread_local std::unique_ptr<char, void (*)(void*)> buf(
            static_cast<char*>(std::aligned_alloc(kAlign, kBuf)), std::free);
        if (!buf || jj->from % kAlign != 0 || jj->psize % kAlign != 0) {
          jj->err = buf ? EINVAL : ENOMEM;
          return;
        }
        size_t k = 0;
        for (uint64_t piece = jj->from; piece < jj->to; piece += jj->psize, ++k) {
          uint64_t end = std::min<uint64_t>(piece + jj->psize, jj->to);
          if (jj->mem[k]) {
            EVP_DigestUpdate(jj->ctx, jj->mem[k]->data(), jj->mem[k]->size());
            continue;
          }
          for (uint64_t at = piece; at < end;) {
            size_t want = static_cast<size_t>(std::min<uint64_t>(kBuf, end - at));
            size_t whole = (want + kAlign - 1) & ~(kAlign - 1);
            ssize_t got = pread(jj->fd, buf.get(), whole, static_cast<off_t>(at));
            if (got <= 0) {
              jj->err = got < 0 ? errno : EIO;
              return;
            }
            // Whole blocks may reach past the prefix: hash only the prefix.
            size_t use = std::min(static_cast<size_t>(got), want);
            if (use < want && use % kAlign != 0) {
              jj->err = EIO;  // short inside the prefix, off a block boundary
              return;
            }
            EVP_DigestUpdate(jj->ctx, buf.get(), use);
            at += use;
          }
        }
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<Job> jj(static_cast<Job*>(req->data));
        PeerTask* pt = jj->pt;
        pt->jobs_--;
        pt->hash_job_ = false;
        if (pt->state_ != State::Running) {
          pt->maybe_free();
          return;
        }
        if (jj->err) {
          pt->fail(std::string("reading back the task: ") + strerror(jj->err));
          return;
        }
        pt->hashed_ = jj->to;
        if (pt->hashed_ == pt->length_)
          pt->finalize();
        else
          pt->hash_more();
      });
  if (r != 0) {
    jobs_--;
    hash_job_ = false;
    delete j;
    fail(std::string("thread pool: ") + uv_strerror(r));
  }
}

void PeerTask::finalize() {
  uint8_t d[32];
  EVP_DigestFinal_ex(md(whole_), d, nullptr);
  std::string got = hex(d, 32);
  if (t_->by_digest() && got != id_) {
    fail("digest mismatch: the pieces hash to sha256:" + got);
    return;
  }
  state_ = State::Finalizing;
  uv_timer_stop(&timer_);
  for (auto& kv : fetches_) {
    if (kv.second.call) kv.second.call->cancel();
    if (kv.second.parent.empty()) e_.origin().cancel(kv.second.origin_handle);
  }
  fetches_.clear();
  // Readers may finish now; the commit's fsync runs behind them.
  t_->set_verified();
  struct Job {
    uv_work_t req{};
    PeerTask* pt;
    task::TaskMeta meta;
    int rc = 0;
    std::string err;
  };
  auto* j = new Job{};
  j->req.data = j;
  j->pt = this;
  j->meta.id = id_;
  j->meta.url = url_;
  j->meta.digest = t_->by_digest() ? "sha256:" + got : "";
  j->meta.length = length_;
  j->meta.piece_size = psize_;
  j->meta.pieces = hashes_;
  j->meta.headers = headers_;
  jobs_++;
  int r = uv_queue_work(
      e_.loop(), &j->req,
      [](uv_work_t* req) {
        auto* jj = static_cast<Job*>(req->data);
        jj->rc = jj->pt->writer_->commit(jj->meta, &jj->err);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<Job> jj(static_cast<Job*>(req->data));
        PeerTask* pt = jj->pt;
        pt->jobs_--;
        if (jj->rc != 0) {
          pt->state_ = State::Running;
          pt->fail("cannot store: " + jj->err);
          return;
        }
        pt->state_ = State::Done;
        pt->writer_.reset();
        pt->t_->set_complete();
        pt->e_.tasks().retire(pt->t_);
        uint64_t cost = uv_now(pt->e_.loop()) - pt->start_ms_;
        pm().ok.inc();
        obs::log_info("peer task done, cost: " + std::to_string(cost) + "ms")
            .str("peer", pt->e_.options().peer_id)
            .str("task", pt->id_)
            .num("size", static_cast<int64_t>(pt->length_))
            .num("bytes_origin", static_cast<int64_t>(pt->bytes_origin_))
            .num("bytes_peer", static_cast<int64_t>(pt->bytes_peer_))
            .num("parents", static_cast<int64_t>(pt->parents_used_.size()))
            .num("bad_pieces", pt->bad_pieces_)
            .boolean("scheduler", !pt->fallback_)
            .str("component", "PeerTask");
        pt->e_.announce_stored(pt->id_);
        pt->finish();
      });
  if (r != 0) {
    jobs_--;
    delete j;
    state_ = State::Running;
    fail(std::string("thread pool: ") + uv_strerror(r));
  }
}

void PeerTask::stall_check() {
  uint64_t now = uv_now(e_.loop());
  uint64_t window = static_cast<uint64_t>(e_.options().stall_time_s * 1000);
  if (window == 0) return;
  uint64_t need =
      static_cast<uint64_t>(static_cast<double>(e_.options().stall_rate) * e_.options().stall_time_s);
  std::vector<uint64_t> stalled;
  for (auto& kv : fetches_) {
    Fetch& f = kv.second;
    if (now - f.mark_ms < window) continue;
    uint64_t got = f.parent.empty() ? f.progress : (f.call ? f.call->received() : 0);
    if (got - f.mark_bytes < need) {
      stalled.push_back(kv.first);
    } else {
      f.mark_ms = now;
      f.mark_bytes = got;
    }
  }
  for (uint64_t fid : stalled) {
    Fetch f = fetches_[fid];
    pm().stalls.inc();
    obs::log_warn("piece fetch stalled; trying elsewhere")
        .str("task", id_)
        .num("piece", f.piece)
        .str("from", f.parent.empty() ? "origin" : f.parent);
    cancel_fetch(fid);
    if (f.parent.empty()) {
      if (!fallback_) report("", f.piece, ResultReq::Outcome::OriginFailed);
      assigned_.erase(f.piece);
      if (++origin_tries_[f.piece] >= kMaxOriginTries) {
        fail("the origin stalled on piece " + std::to_string(f.piece));
        return;
      }
    } else {
      ParentInfo& p = parents_[f.parent];
      p.avoid_until = now + kAvoidStallMs;
      p.stalled = true;
      p.errors++;
      report(f.parent, f.piece, ResultReq::Outcome::Stall);
    }
  }
}

void PeerTask::report(const std::string& parent, uint32_t piece, ResultReq::Outcome o, uint64_t bytes,
                      uint32_t ms) {
  if (!e_.scheduler().configured() || (fallback_ && o != ResultReq::Outcome::BadPiece)) return;
  ResultReq r;
  r.peer = e_.options().peer_id;
  r.task = id_;
  r.parent = parent;
  r.piece_size = psize_;
  r.piece = piece;
  r.outcome = o;
  r.bytes = bytes;
  r.ms = ms;
  // Nothing to do with the answer, and the task may be gone by then: the
  // callback captures nothing.
  e_.scheduler().call(id_, "/v1/result", encode(r), [](int, const std::string&, int) {});
}

void PeerTask::abort(const std::string& why) {
  if (state_ == State::Done || detached_) return;
  state_ = State::Running;
  fail(why);
}

void PeerTask::fail(const std::string& why) {
  if (state_ == State::Done || detached_) return;
  state_ = State::Done;
  failure_ = why;
  pm().failed.inc();
  obs::log_error("peer task failed")
      .str("peer", e_.options().peer_id)
      .str("task", id_)
      .str("error", why)
      .num("cost_ms", static_cast<int64_t>(uv_now(e_.loop()) - start_ms_));
  std::vector<uint64_t> all;
  for (auto& kv : fetches_) all.push_back(kv.first);
  for (uint64_t fid : all) cancel_fetch(fid);
  // Only verified pieces were ever readable: a reader that has some of the
  // object may fetch the rest from the origin with a Range request.
  t_->set_failed(why, false, true);
  e_.tasks().retire(t_);
  e_.hot().drop_task(id_);  // its pieces are no longer served
  finish();
}

void PeerTask::finish() {
  if (query_id_) e_.scheduler().cancel(query_id_);
  if (announce_id_) e_.scheduler().cancel(announce_id_);
  query_id_ = announce_id_ = 0;
  detached_ = true;
  state_ = State::Done;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&timer_)))
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) {
      auto* pt = static_cast<PeerTask*>(h->data);
      pt->timer_closed_ = true;
      pt->maybe_free();
    });
  e_.task_finished(this);
}

void PeerTask::maybe_free() {
  if (!detached_ || jobs_ > 0 || !timer_closed_) return;
  // The writer is aborted (if not committed) only now: no job uses it.
  writer_.reset();
  delete this;
}

}  // namespace shoal::p2p
