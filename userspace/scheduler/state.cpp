// The scheduler's state. Layout, chosen so that no operation walks all peers
// or all tasks:
//
//   peers_      slab of Peer, indexed by a uint32_t slot; peer_ids_ maps the
//               peer id to its slot. The live peers also form a list ordered
//               by last_seen (lru_head_ = least recently seen), so expire()
//               pops from the head and stops at the first live one.
//   hot_        per peer slot, what a parents query reads of every holder
//               (last_seen, free slots, results, rack), packed apart from
//               the strings so that a scan touches little memory.
//   tasks_      slab of Task, one per swarm; task_ids_ maps the task id to
//               its swarms' slots, one per piece size (peers that cut a
//               task another way, such as those of an older version, form
//               a swarm of their own instead of being refused). A task
//               keeps its holder list (holders: peer slots; hbits: their
//               bitmaps back to back, `words` words each; pos: peer slot ->
//               index; removal swaps the last one in), a holder count per
//               piece, the known piece hashes, and its origin assignments (a
//               short vector: live ones never exceed origin_concurrency).
//   idle_tasks_ tasks whose holder list went empty, in the order it
//               happened; expire() pops those idle for task_idle_ms.
//
// A peer's holdings of a task are kept as 64-bit words (LSB first) rather
// than p2p::Bitmap so that "useful to the requester" is a few AND/popcount
// operations per holder.
#include "shoal/scheduler/state.h"

#include <algorithm>
#include <deque>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shoal/scheduler/flat_maps.h"

namespace shoal::scheduler {
namespace {

constexpr uint32_t kNone = UINT32_MAX;
// See State::kParentScan. It was 2048: a scheduler under 50,000 requests/s
// over 10,000 peers kept up for the first seconds, then fell behind by
// seconds once the tasks had ~2,000 holders each (bench/sched.sh, 150 s).
// Eight parents out of 256 candidates is still a wide choice.
constexpr size_t kMaxScan = State::kParentScan;
constexpr uint32_t kRetryMs = 250;
// The score's factors other than the useful count multiply to less than
// this: free slots < 2, success < 1.5, same rack 1.25.
constexpr double kMaxFactor = 2.0 * 1.5 * 1.25;
// Distinct reporters of bad pieces after which a parent is excluded from a
// task for everyone.
constexpr size_t kBadReporters = 2;
// ok/fail counts are halved past this sum, so the ratio follows recent results.
constexpr uint32_t kRecentResults = 64;
// A downloading peer that asked within this long competes for origin pieces.
constexpr int64_t kSourceRecentMs = 2000;
constexpr int64_t kFloorMs = 200;
// An origin slot left free this long goes to any idle downloading peer that
// asks, not only to the ones handed the fewest pieces: fairness spreads the
// origin's pieces over the uplinks, but an idle origin costs every peer time
// (bench/p2p.sh at N=16 had the origin idle for up to 0.9 s at a time while
// the two fairest peers polled on their slow cadence).
constexpr int64_t kOriginGraceMs = 60;

struct Bits {
  std::vector<uint64_t> w;

  void reset(uint32_t n) { w.assign((n + 63) / 64, 0); }
  bool test(uint32_t i) const { return (w[i / 64] >> (i % 64)) & 1u; }
  void set(uint32_t i) { w[i / 64] |= uint64_t{1} << (i % 64); }
  void clear(uint32_t i) { w[i / 64] &= ~(uint64_t{1} << (i % 64)); }
  void from(const p2p::Bitmap& b) {
    reset(b.size());
    for (uint32_t i = 0; i < b.size(); ++i)
      if (b.test(i)) set(i);
  }
};

struct Peer {
  bool used = false;
  std::string id, addr;
  uint32_t slots = 0;
  uint32_t prev = kNone, next = kNone;  // last_seen order
  std::vector<uint32_t> tasks;          // task slots whose holder list has this peer
};

struct Hot {
  int64_t last_seen = INT64_MIN;  // INT64_MIN for a free slot: never live
  uint32_t free_slots = 0;
  uint32_t ok = 0, fail = 0;
  uint32_t rack = 0;  // interned "rack" label, 0 for none
  // Free slots and recent success as one factor of a parent's score,
  // worked out when they change: computed per candidate, their two
  // divisions were a quarter of parents()' time. reweigh() after changing
  // free_slots, ok or fail; the default is that of the defaults.
  double weight = 0.125;
  void reweigh() {
    // A parent with every upload slot busy would answer 503, one that
    // often fails wastes a round trip.
    double slots = free_slots == 0 ? 0.25 : 1.0 + static_cast<double>(free_slots) / (free_slots + 4.0);
    weight = slots * (0.5 + static_cast<double>(ok) / (ok + fail + 1.0));
  }
};

struct Assign {
  uint32_t piece, peer;
  int64_t deadline;
};

struct Task {
  bool used = false;
  std::string id;
  uint64_t length = 0;
  uint32_t piece_size = 0, pieces = 0;
  Bits known;
  std::vector<task::Sha256> hashes;  // allocated with the first hash
  uint32_t first_unknown = 0;        // every piece below has a known hash
  uint32_t words = 0;                // 64-bit words per bitmap
  std::vector<uint32_t> count;       // holders per piece
  std::vector<uint32_t> holders;     // peer slots
  std::vector<uint64_t> hbits;       // holder i's pieces: words [i * words, (i + 1) * words)
  PosMap pos;                        // peer slot -> index in holders

  uint64_t* bits_of(uint32_t i) { return hbits.data() + size_t{i} * words; }
  const uint64_t* bits_of(uint32_t i) const { return hbits.data() + size_t{i} * words; }
  std::vector<Assign> assigns;
  // Downloading peers that may fetch from the origin (source: true): when
  // each last asked and how many pieces it was handed. The origin's pieces
  // go round them, so every uplink gets pieces of its own to pass on.
  struct Source {
    int64_t last_ms = 0;
    uint32_t handed = 0;
  };
  std::unordered_map<uint32_t, Source> sources;  // peer slot ->
  int64_t floor_ms = 0;                          // when floor and recent_sources were worked out
  uint32_t floor = 0;                            // fewest pieces handed to an idle recent source
  uint32_t recent_sources = 0;
  int64_t slot_free_ms = 0;  // since when a parents call saw a free origin slot (0: none free)
  // Peer ids, so that leaving and registering again does not clear them.
  std::unordered_map<std::string, std::vector<std::string>> excluded_by;    // reporter -> parents
  std::unordered_map<std::string, std::vector<std::string>> bad_reporters;  // parent -> reporters
  std::vector<std::string> excluded;                                        // for everyone
  int64_t empty_since = -1;
  size_t scan_cursor = 0;
};

struct Candidate {
  double score;
  uint32_t tie;
  uint32_t holder;
};

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

uint32_t piece_count(uint64_t length, uint32_t piece_size) {
  if (piece_size == 0) return 0;
  uint64_t n = (length + piece_size - 1) / piece_size;
  return n > p2p::kMaxPieces ? 0 : static_cast<uint32_t>(n);
}

// For each of n bitmaps of `words` words from hb: the pieces also set in
// need. Built twice (with and without the POPCNT instruction, picked at
// load time): without it, __builtin_popcountll is a libgcc call.
__attribute__((target_clones("popcnt", "default"))) void count_useful(const uint64_t* hb, size_t n,
                                                                      size_t words, const uint64_t* need,
                                                                      uint32_t* out) {
  for (size_t i = 0; i < n; ++i, hb += words) {
    uint32_t u = 0;
    for (size_t w = 0; w < words; ++w) u += static_cast<uint32_t>(__builtin_popcountll(hb[w] & need[w]));
    out[i] = u;
  }
}

uint32_t mix(uint32_t a, uint32_t b) {
  uint64_t x = (uint64_t{a} << 32 | b) * 0x9E3779B97F4A7C15ull;
  return static_cast<uint32_t>(x >> 32);
}

}  // namespace

const char* to_string(Op op) {
  switch (op) {
    case Op::Register:
      return "register";
    case Op::Heartbeat:
      return "heartbeat";
    case Op::Announce:
      return "announce";
    case Op::Parents:
      return "parents";
    case Op::Result:
      return "result";
    case Op::Leave:
      return "leave";
    case Op::Count:
      break;
  }
  return "?";
}

struct State::Impl {
  Options opts;
  std::function<void(const Note&)> sink;
  std::vector<Peer> peers;
  std::vector<Hot> hot;
  std::unordered_map<std::string, uint32_t> racks;
  std::vector<uint32_t> free_peers;
  IdMap peer_ids;  // peer id -> slot (the id lives in peers[slot].id)
  uint32_t lru_head = kNone, lru_tail = kNone;
  std::vector<Task> tasks;
  std::vector<uint32_t> free_tasks;
  // Task id -> its swarms' slots, oldest first (almost always one).
  std::unordered_map<std::string, std::vector<uint32_t>> task_ids;
  size_t swarms = 0;
  std::deque<std::pair<int64_t, uint32_t>> idle_tasks;
  Counters c;
  std::vector<Candidate> cand;   // scratch, reused by parents()
  Bits req_have, req_known;      // scratch
  std::vector<uint64_t> need;    // scratch: known and not held by the requester
  std::vector<uint32_t> useful;  // scratch: per scanned holder

  explicit Impl(Options o) : opts(o) {}

  void note(const char* what, const std::string& peer, const std::string& task, int64_t piece,
            const std::string& other = {}) {
    if (!sink) return;
    Note n;
    n.what = what;
    n.peer = peer;
    n.task = task;
    n.piece = piece;
    n.other = other;
    sink(n);
  }

  uint32_t find_peer(const std::string& id) const {
    return peer_ids.find(id, [this](uint32_t p) -> const std::string& { return peers[p].id; });
  }
  // piece_size 0: the task's latest swarm.
  uint32_t find_task(const std::string& id, uint32_t piece_size) const {
    auto it = task_ids.find(id);
    if (it == task_ids.end()) return kNone;
    if (piece_size == 0) return it->second.back();
    for (uint32_t t : it->second)
      if (tasks[t].piece_size == piece_size) return t;
    return kNone;
  }
  bool live(uint32_t p, int64_t now) const { return now - hot[p].last_seen < opts.peer_timeout_ms; }

  void lru_unlink(uint32_t p) {
    Peer& x = peers[p];
    if (x.prev != kNone)
      peers[x.prev].next = x.next;
    else
      lru_head = x.next;
    if (x.next != kNone)
      peers[x.next].prev = x.prev;
    else
      lru_tail = x.prev;
    x.prev = x.next = kNone;
  }
  void lru_append(uint32_t p) {
    Peer& x = peers[p];
    x.prev = lru_tail;
    x.next = kNone;
    if (lru_tail != kNone)
      peers[lru_tail].next = p;
    else
      lru_head = p;
    lru_tail = p;
  }
  void touch(uint32_t p, int64_t now) {
    // A clock that steps back must not make a peer look older (and break
    // the list's order).
    hot[p].last_seen = std::max(hot[p].last_seen, now);
    if (lru_tail != p) {
      lru_unlink(p);
      lru_append(p);
    }
  }

  // Finds or creates the task's swarm for this piece size; 409 when it
  // exists with another length.
  int get_task(const std::string& id, uint64_t length, uint32_t piece_size, uint32_t* out, std::string* err) {
    uint32_t t = find_task(id, piece_size);
    if (t != kNone) {
      const Task& x = tasks[t];
      if (x.length != length) {
        *err = "task " + id + " is known with length " + std::to_string(x.length) + " and piece_size " +
               std::to_string(x.piece_size);
        return 409;
      }
      *out = t;
      return 200;
    }
    uint32_t n = piece_count(length, piece_size);
    if (n == 0) {
      *err = "length/piece_size: bad piece count";
      return 400;
    }
    if (!free_tasks.empty()) {
      t = free_tasks.back();
      free_tasks.pop_back();
    } else {
      t = static_cast<uint32_t>(tasks.size());
      tasks.emplace_back();
    }
    Task& x = tasks[t];
    x.used = true;
    x.id = id;
    x.length = length;
    x.piece_size = piece_size;
    x.pieces = n;
    x.known.reset(n);
    x.words = static_cast<uint32_t>(x.known.w.size());
    x.count.assign(n, 0);
    x.empty_since = -1;
    task_ids[id].push_back(t);
    ++swarms;
    *out = t;
    return 200;
  }

  void free_task(uint32_t t) {
    auto it = task_ids.find(tasks[t].id);
    if (it != task_ids.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), t), v.end());
      if (v.empty()) task_ids.erase(it);
      --swarms;
    }
    tasks[t] = Task();
    free_tasks.push_back(t);
  }

  // Replaces peer p's holdings of task t (adding it to the holder list);
  // with merge, only adds to them.
  void set_holding(uint32_t t, uint32_t p, const Bits& have, bool merge = false) {
    Task& x = tasks[t];
    uint32_t at = x.pos.find(p);
    if (at == PosMap::kAbsent) {
      at = static_cast<uint32_t>(x.holders.size());
      x.pos.set(p, at);
      x.holders.push_back(p);
      x.hbits.resize(x.hbits.size() + x.words, 0);
      peers[p].tasks.push_back(t);
      x.empty_since = -1;
    }
    uint64_t* mine = x.bits_of(at);
    for (size_t k = 0; k < x.words; ++k) {
      uint64_t want = merge ? (have.w[k] | mine[k]) : have.w[k];
      uint64_t diff = want ^ mine[k];
      while (diff) {
        int b = __builtin_ctzll(diff);
        diff &= diff - 1;
        uint32_t i = static_cast<uint32_t>(k * 64 + static_cast<size_t>(b));
        if ((want >> b) & 1u) {
          ++x.count[i];
        } else {
          --x.count[i];
          unheld(x, i);
        }
      }
    }
    for (size_t k = 0; k < x.words; ++k) mine[k] = merge ? (have.w[k] | mine[k]) : have.w[k];
  }

  // A piece nobody holds any more (its holders left, died or dropped it)
  // must be fetched from the origin again: its hash is forgotten, so the
  // piece counts as unknown and is assigned to a downloading peer, whose
  // hash is then taken.
  void unheld(Task& x, uint32_t i) {
    if (x.count[i] != 0 || !x.known.test(i)) return;
    x.known.clear(i);
    if (i < x.first_unknown) x.first_unknown = i;
  }

  void clear_holding_bit(uint32_t t, uint32_t p, uint32_t piece) {
    Task& x = tasks[t];
    uint32_t at = x.pos.find(p);
    if (at == PosMap::kAbsent) return;
    uint64_t& w = x.bits_of(at)[piece / 64];
    uint64_t m = uint64_t{1} << (piece % 64);
    if (w & m) {
      w &= ~m;
      --x.count[piece];
      unheld(x, piece);
    }
  }

  // Removes p from t's holder list and drops its assignments there.
  void remove_holder(uint32_t t, uint32_t p, int64_t now) {
    Task& x = tasks[t];
    uint32_t i = x.pos.find(p);
    if (i == PosMap::kAbsent) return;
    const uint64_t* b = x.bits_of(i);
    for (size_t k = 0; k < x.words; ++k) {
      uint64_t w = b[k];
      while (w) {
        int bit = __builtin_ctzll(w);
        w &= w - 1;
        uint32_t piece = static_cast<uint32_t>(k * 64 + static_cast<size_t>(bit));
        --x.count[piece];
        unheld(x, piece);
      }
    }
    x.pos.erase(p);
    uint32_t last = static_cast<uint32_t>(x.holders.size() - 1);
    if (i != last) {
      x.holders[i] = x.holders[last];
      std::copy(x.bits_of(last), x.bits_of(last) + x.words, x.bits_of(i));
      x.pos.set(x.holders[i], i);
    }
    x.holders.pop_back();
    x.hbits.resize(x.hbits.size() - x.words);
    x.assigns.erase(
        std::remove_if(x.assigns.begin(), x.assigns.end(), [p](const Assign& a) { return a.peer == p; }),
        x.assigns.end());
    x.sources.erase(p);
    if (x.holders.empty()) {
      x.empty_since = now;
      idle_tasks.emplace_back(now, t);
    }
  }

  void remove_peer(uint32_t p, int64_t now) {
    Peer& x = peers[p];
    for (uint32_t t : x.tasks) remove_holder(t, p, now);
    lru_unlink(p);
    peer_ids.erase(x.id, [this](uint32_t q) -> const std::string& { return peers[q].id; });
    peers[p] = Peer();
    hot[p] = Hot();
    free_peers.push_back(p);
  }

  bool assignee_of(const Task& x, uint32_t piece, uint32_t p, int64_t now) const {
    for (const Assign& a : x.assigns)
      if (a.piece == piece && a.peer == p && a.deadline > now) return true;
    return false;
  }

  // Drops lapsed assignments, those of peers not seen lately, and those of
  // pieces someone now holds with a known hash.
  void sweep_assignments(Task& x, int64_t now) {
    x.assigns.erase(std::remove_if(x.assigns.begin(), x.assigns.end(),
                                   [&](const Assign& a) {
                                     return a.deadline <= now || !live(a.peer, now) ||
                                            (x.known.test(a.piece) && x.count[a.piece] > 0);
                                   }),
                    x.assigns.end());
  }

  void advance_unknown(Task& x) {
    while (x.first_unknown < x.pieces && x.known.test(x.first_unknown)) ++x.first_unknown;
  }

  void count_result(uint32_t p, bool ok) {
    Hot& x = hot[p];
    (ok ? x.ok : x.fail)++;
    if (x.ok + x.fail > kRecentResults) {
      x.ok /= 2;
      x.fail /= 2;
    }
    x.reweigh();
  }
};

State::State(Options opts) : opts_(opts), impl_(std::make_unique<Impl>(opts)) {}
State::~State() = default;

void State::set_note_sink(std::function<void(const Note&)> sink) { impl_->sink = std::move(sink); }

int State::register_peer(const p2p::RegisterReq& req, int64_t now_ms, p2p::RegisterResp* out,
                         std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Register)];
  (void)err;
  uint32_t p = s.find_peer(req.peer);
  if (p == kNone) {
    // A new peer at the address of a known one: the daemon there restarted
    // (two cannot listen on one address) and its old self, killed without
    // a leave, will never answer again. Forget it now rather than after
    // peerTimeout, or other peers keep being sent to it and the pieces it
    // held or was fetching from the origin wait for it that long.
    if (!req.addr.empty())
      for (uint32_t q = 0; q < s.peers.size(); ++q)
        if (s.peers[q].used && s.peers[q].addr == req.addr) {
          s.note("peer replaced by a new one at its address", s.peers[q].id, "", -1, req.peer);
          s.remove_peer(q, now_ms);
        }
    if (!s.free_peers.empty()) {
      p = s.free_peers.back();
      s.free_peers.pop_back();
    } else {
      p = static_cast<uint32_t>(s.peers.size());
      s.peers.emplace_back();
      s.hot.emplace_back();
    }
    s.peers[p].used = true;
    s.peers[p].id = req.peer;
    s.peer_ids.insert(req.peer, p);
    s.lru_append(p);
  }
  Peer& x = s.peers[p];
  x.addr = req.addr;
  auto rack = req.labels.find("rack");
  Hot& h = s.hot[p];
  h.rack = 0;
  if (rack != req.labels.end() && !rack->second.empty())
    h.rack = s.racks.emplace(rack->second, static_cast<uint32_t>(s.racks.size() + 1)).first->second;
  x.slots = req.slots;
  h.free_slots = req.slots;
  h.reweigh();
  s.touch(p, now_ms);
  out->heartbeat_ms = static_cast<uint32_t>(std::max<int64_t>(opts_.peer_timeout_ms / 3, 1));
  return 200;
}

int State::heartbeat(const p2p::HeartbeatReq& req, int64_t now_ms, std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Heartbeat)];
  uint32_t p = s.find_peer(req.peer);
  if (p == kNone) {
    ++s.c.errors;
    *err = "unknown peer " + req.peer + ": register again";
    return 404;
  }
  s.hot[p].free_slots = req.free_slots;
  s.hot[p].reweigh();
  s.touch(p, now_ms);
  return 200;
}

int State::announce(const p2p::AnnounceReq& req, int64_t now_ms, std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Announce)];
  uint32_t p = s.find_peer(req.peer);
  if (p == kNone) {
    ++s.c.errors;
    *err = "unknown peer " + req.peer + ": register again";
    return 404;
  }
  uint32_t n = piece_count(req.length, req.piece_size);
  if (n == 0 || req.have.size() != n) {
    ++s.c.errors;
    *err = "have: expected " + std::to_string(n) + " bits";
    return 400;
  }
  for (const auto& [i, h] : req.hashes) {
    (void)h;
    if (i >= n) {
      ++s.c.errors;
      *err = "hashes: piece " + std::to_string(i) + " out of range";
      return 400;
    }
  }
  uint32_t t;
  int st = s.get_task(req.task, req.length, req.piece_size, &t, err);
  if (st != 200) {
    ++s.c.errors;
    return st;
  }
  s.touch(p, now_ms);
  Task& x = s.tasks[t];
  s.req_have.from(req.have);
  for (const auto& [i, h] : req.hashes) {
    if (!x.known.test(i)) {
      if (x.hashes.empty()) x.hashes.resize(x.pieces);
      x.hashes[i] = h;
      x.known.set(i);
    } else if (x.hashes[i] != h) {
      if (req.complete || s.assignee_of(x, i, p, now_ms)) {
        x.hashes[i] = h;
        s.note("piece hash replaced", req.peer, req.task, i, req.complete ? "complete" : "origin assignee");
      } else {
        // Whoever is right, this sender's copy does not verify against the
        // hash everybody else uses: nobody may fetch it from there.
        s.req_have.clear(i);
        ++s.c.hash_conflicts;
        s.note("piece hash conflict", req.peer, req.task, i);
      }
    }
  }
  s.advance_unknown(x);
  s.set_holding(t, p, s.req_have);
  s.sweep_assignments(x, now_ms);
  return 200;
}

int State::parents(const p2p::ParentsReq& req, int64_t now_ms, p2p::ParentsResp* out, std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Parents)];
  uint32_t p = s.find_peer(req.peer);
  if (p == kNone) {
    ++s.c.errors;
    *err = "unknown peer " + req.peer + ": register again";
    return 404;
  }
  uint32_t n = piece_count(req.length, req.piece_size);
  if (n == 0 || req.have.size() != n || req.hashes_known.size() != n) {
    ++s.c.errors;
    *err = "have/hashes_known: expected " + std::to_string(n) + " bits";
    return 400;
  }
  uint32_t t;
  int st = s.get_task(req.task, req.length, req.piece_size, &t, err);
  if (st != 200) {
    ++s.c.errors;
    return st;
  }
  s.touch(p, now_ms);
  Task& x = s.tasks[t];
  s.req_have.from(req.have);
  s.req_known.from(req.hashes_known);
  // Only adds: an announce is the peer's whole state, but a parents query
  // may have left before the announce of a piece it just finished and
  // arrive after it; it must not take that piece away again.
  s.set_holding(t, p, s.req_have, true);
  s.sweep_assignments(x, now_ms);

  // Candidates: holders with a piece the requester lacks whose hash is known.
  const uint32_t my_rack = s.hot[p].rack;
  const std::vector<std::string>* mine = nullptr;
  if (!x.excluded_by.empty()) {
    auto it = x.excluded_by.find(req.peer);
    if (it != x.excluded_by.end()) mine = &it->second;
  }
  const size_t words = x.words;
  s.need.resize(words);
  for (size_t w = 0; w < words; ++w) s.need[w] = x.known.w[w] & ~s.req_have.w[w];
  size_t total = x.holders.size();
  size_t scan = std::min(total, kMaxScan);
  size_t start = 0;
  if (total > kMaxScan) {
    start = x.scan_cursor % total;
    x.scan_cursor = (start + scan) % total;
  }
  s.useful.resize(scan);
  size_t first = std::min(scan, total - start);
  count_useful(x.bits_of(static_cast<uint32_t>(start)), first, words, s.need.data(), s.useful.data());
  if (first < scan) count_useful(x.bits_of(0), scan - first, words, s.need.data(), s.useful.data() + first);
  // The best kmax so far in a heap whose front is the worst of them: once
  // it is full, a holder whose useful count cannot beat that even with
  // every other factor at its best is skipped without looking it up.
  const size_t kmax = std::min<size_t>(req.max_parents, opts_.max_parents);
  auto better = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score > b.score : a.tie < b.tie;
  };
  s.cand.clear();
  for (size_t k = 0; k < scan && kmax > 0; ++k) {
    uint32_t useful = s.useful[k];
    if (useful == 0) continue;
    if (s.cand.size() == kmax && useful * kMaxFactor < s.cand.front().score) continue;
    size_t hi = start + k;
    if (hi >= total) hi -= total;
    uint32_t q = x.holders[hi];
    if (q == p || !s.live(q, now_ms)) continue;
    if (!x.excluded.empty() && contains(x.excluded, s.peers[q].id)) continue;
    if (mine && contains(*mine, s.peers[q].id)) continue;
    const Hot& h = s.hot[q];
    // A multiplicative score, so that no single criterion decides alone:
    // free slots and recent success (Hot::weight), and the same rack, which
    // spares the uplinks.
    double score = useful * h.weight;
    if (my_rack != 0 && my_rack == h.rack) score *= 1.25;
    Candidate c{score, mix(p, q), static_cast<uint32_t>(hi)};
    if (s.cand.size() < kmax) {
      s.cand.push_back(c);
      std::push_heap(s.cand.begin(), s.cand.end(), better);
    } else if (better(c, s.cand.front())) {
      std::pop_heap(s.cand.begin(), s.cand.end(), better);
      s.cand.back() = c;
      std::push_heap(s.cand.begin(), s.cand.end(), better);
    }
  }
  std::sort_heap(s.cand.begin(), s.cand.end(), better);  // best first
  const size_t k = s.cand.size();
  out->parents.clear();
  out->parents.reserve(k);
  for (size_t i = 0; i < k; ++i) {
    const uint64_t* hb = x.bits_of(s.cand[i].holder);
    const Peer& q = s.peers[x.holders[s.cand[i].holder]];
    p2p::Parent par;
    par.peer = q.id;
    par.addr = q.addr;
    par.pieces = p2p::Bitmap(x.pieces);
    for (size_t w = 0; w < words; ++w) {
      uint64_t bits = hb[w] & x.known.w[w];
      while (bits) {
        int b = __builtin_ctzll(bits);
        bits &= bits - 1;
        par.pieces.set(static_cast<uint32_t>(w * 64 + static_cast<size_t>(b)));
      }
    }
    out->parents.push_back(std::move(par));
  }

  out->hashes.clear();
  for (size_t w = 0; w < words; ++w) {
    uint64_t bits = x.known.w[w] & ~s.req_known.w[w];
    while (bits) {
      int b = __builtin_ctzll(bits);
      bits &= bits - 1;
      uint32_t i = static_cast<uint32_t>(w * 64 + static_cast<size_t>(b));
      out->hashes.emplace(i, x.hashes[i]);
    }
  }

  out->origin.clear();
  bool grace_retry = false;
  if (req.source) {
    uint32_t conc = opts_.origin_concurrency;
    uint32_t live = static_cast<uint32_t>(x.assigns.size());  // all live after the sweep
    Task::Source& me = x.sources[p];
    me.last_ms = now_ms;
    if (live < conc) {
      // Alone, a peer keeps the origin busy; with others downloading too, a
      // free slot goes to a peer with no origin piece in flight that was
      // handed no more pieces than the others asking lately. Who those are
      // is worked out at most every kFloorMs per task, so a parents call
      // stays cheap however many peers download the task.
      if (now_ms - x.floor_ms >= kFloorMs || x.floor_ms == 0) {
        x.floor_ms = now_ms;
        x.floor = UINT32_MAX;
        x.recent_sources = 0;
        for (auto it = x.sources.begin(); it != x.sources.end();) {
          if (now_ms - it->second.last_ms > kSourceRecentMs) {
            it = x.sources.erase(it);
            continue;
          }
          ++x.recent_sources;
          bool busy = false;
          for (const Assign& a : x.assigns) busy = busy || a.peer == it->first;
          if (!busy && s.live(it->first, now_ms)) x.floor = std::min(x.floor, it->second.handed);
          ++it;
        }
      }
      uint32_t in_flight = 0;
      for (const Assign& a : x.assigns) in_flight += a.peer == p;
      if (x.slot_free_ms == 0) x.slot_free_ms = now_ms;
      bool others = x.recent_sources > 1;
      bool poorer = x.floor != UINT32_MAX && x.floor < me.handed;
      bool waited = now_ms - x.slot_free_ms >= kOriginGraceMs;
      uint32_t want = !others ? (out->parents.empty() ? conc - live : 1)
                              : (in_flight == 0 && (!poorer || waited) ? 1 : 0);
      // A piece this peer could fetch from the origin that nobody is on.
      auto open_piece = [&](uint32_t i) {
        if (x.known.test(i) || s.req_have.test(i)) return false;
        for (const Assign& a : x.assigns)
          if (a.piece == i) return false;
        return true;
      };
      for (uint32_t i = x.first_unknown; i < x.pieces && want > 0; ++i) {
        if (!open_piece(i)) continue;
        x.assigns.push_back(Assign{i, p, 0});
        ++s.c.origin_assigned;
        ++me.handed;
        --want;
      }
      if (x.assigns.size() >= conc) {
        x.slot_free_ms = 0;
      } else if (in_flight == 0) {
        // Refused while a piece waits for the origin: come back when the
        // grace is over.
        for (uint32_t i = x.first_unknown; i < x.pieces && !grace_retry; ++i) grace_retry = open_piece(i);
      }
    }
    for (Assign& a : x.assigns) {
      if (a.peer != p || s.req_have.test(a.piece)) continue;
      a.deadline = now_ms + opts_.assignment_ms;
      out->origin.push_back(a.piece);
    }
    std::sort(out->origin.begin(), out->origin.end());
  }
  out->retry_ms = out->parents.empty() && out->origin.empty() ? kRetryMs : 0;
  if (grace_retry && out->origin.empty()) out->retry_ms = kOriginGraceMs;
  return 200;
}

int State::result(const p2p::ResultReq& req, int64_t now_ms, std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Result)];
  uint32_t p = s.find_peer(req.peer);
  if (p == kNone) {
    ++s.c.errors;
    *err = "unknown peer " + req.peer + ": register again";
    return 404;
  }
  s.touch(p, now_ms);
  uint32_t t = s.find_task(req.task, req.piece_size);
  uint32_t parent = req.parent.empty() ? kNone : s.find_peer(req.parent);
  if (t != kNone && req.piece >= s.tasks[t].pieces) {
    ++s.c.errors;
    *err = "piece: out of range";
    return 400;
  }
  using O = p2p::ResultReq::Outcome;
  switch (req.outcome) {
    case O::Ok:
      if (parent != kNone) s.count_result(parent, true);
      break;
    case O::Stall:
    case O::Error:
      if (parent != kNone) s.count_result(parent, false);
      break;
    case O::BadPiece: {
      ++s.c.bad_pieces;
      if (parent != kNone) s.count_result(parent, false);
      if (t == kNone || req.parent.empty() || req.parent == req.peer) break;
      Task& x = s.tasks[t];
      auto& mine = x.excluded_by[req.peer];
      if (!contains(mine, req.parent)) mine.push_back(req.parent);
      if (parent != kNone) s.clear_holding_bit(t, parent, req.piece);
      auto& reporters = x.bad_reporters[req.parent];
      if (!contains(reporters, req.peer)) reporters.push_back(req.peer);
      if (reporters.size() >= kBadReporters && !contains(x.excluded, req.parent)) {
        x.excluded.push_back(req.parent);
        s.note("peer excluded from task", req.parent, req.task, req.piece, "bad pieces from 2 reporters");
      }
      break;
    }
    case O::OriginFailed:
      if (t != kNone) {
        Task& x = s.tasks[t];
        x.assigns.erase(std::remove_if(x.assigns.begin(), x.assigns.end(),
                                       [&](const Assign& a) { return a.peer == p && a.piece == req.piece; }),
                        x.assigns.end());
      }
      break;
  }
  return 200;
}

int State::leave(const p2p::LeaveReq& req, int64_t now_ms, std::string* err) {
  Impl& s = *impl_;
  ++s.c.ops[static_cast<int>(Op::Leave)];
  (void)err;
  uint32_t p = s.find_peer(req.peer);
  if (p != kNone) s.remove_peer(p, now_ms);  // an unknown peer has nothing left to forget
  return 200;
}

void State::expire(int64_t now_ms) {
  Impl& s = *impl_;
  while (s.lru_head != kNone && now_ms - s.hot[s.lru_head].last_seen >= opts_.peer_timeout_ms) {
    s.remove_peer(s.lru_head, now_ms);
    ++s.c.peers_expired;
  }
  while (!s.idle_tasks.empty() && now_ms - s.idle_tasks.front().first >= opts_.task_idle_ms) {
    auto [since, t] = s.idle_tasks.front();
    s.idle_tasks.pop_front();
    Task& x = s.tasks[t];
    if (x.used && x.holders.empty() && x.empty_since == since) {
      s.free_task(t);
      ++s.c.tasks_expired;
    }
  }
}

Counters State::counters() const {
  Counters c = impl_->c;
  c.peers = impl_->peer_ids.size();
  c.tasks = impl_->swarms;
  uint64_t a = 0;
  for (const auto& [id, ts] : impl_->task_ids)
    for (uint32_t t : ts) a += impl_->tasks[t].assigns.size();
  c.assignments = a;
  return c;
}

uint32_t State::live_assignments_for_test(const std::string& task, int64_t now_ms) const {
  uint32_t t = impl_->find_task(task, 0);
  if (t == kNone) return 0;
  uint32_t n = 0;
  for (const Assign& a : impl_->tasks[t].assigns)
    if (a.deadline > now_ms && impl_->live(a.peer, now_ms)) ++n;
  return n;
}

bool State::has_task_for_test(const std::string& task) const { return impl_->find_task(task, 0) != kNone; }

}  // namespace shoal::scheduler
