// scheduler::State: every rule of registration, announce, parents, origin
// assignment, results and expiry, with an explicit clock.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "sched_test.h"
#include "shoal/scheduler/state.h"
// clang-format off
#include "../cmocka_cpp.h"
// clang-format on

namespace shoal::scheduler::test {
namespace {

constexpr uint32_t kPiece = 4u << 20;
const std::string kTask(64, 'a');
const std::string kTask2(64, 'b');

task::Sha256 hash_of(uint32_t i, uint8_t salt = 0) {
  task::Sha256 h{};
  h.fill(static_cast<uint8_t>(i + 1));
  h[0] = salt;
  return h;
}

p2p::Bitmap bits(uint32_t n, std::set<uint32_t> on) {
  p2p::Bitmap b(n);
  for (uint32_t i : on) b.set(i);
  return b;
}
p2p::Bitmap all_bits(uint32_t n) {
  p2p::Bitmap b(n);
  for (uint32_t i = 0; i < n; ++i) b.set(i);
  return b;
}

// Each peer name its own address (a new peer at a known address replaces
// the old one).
std::string addr_of(const std::string& peer) {
  static std::map<std::string, int> ports;
  auto it = ports.emplace(peer, 20000 + static_cast<int>(ports.size())).first;
  return "10.0.0.1:" + std::to_string(it->second);
}

int reg(State& s, const std::string& peer, int64_t now, const std::string& rack = "", uint32_t slots = 4) {
  p2p::RegisterReq r;
  r.peer = peer;
  r.addr = addr_of(peer);
  if (!rack.empty()) r.labels["rack"] = rack;
  r.slots = slots;
  p2p::RegisterResp resp;
  std::string err;
  return s.register_peer(r, now, &resp, &err);
}

int announce(State& s, const std::string& peer, uint32_t n, p2p::Bitmap have, p2p::Hashes hashes, int64_t now,
             bool complete = false, const std::string& task = kTask, uint32_t piece_size = kPiece) {
  p2p::AnnounceReq a;
  a.peer = peer;
  a.task = task;
  a.length = uint64_t{n} * piece_size;
  a.piece_size = piece_size;
  a.have = std::move(have);
  a.hashes = std::move(hashes);
  a.complete = complete;
  std::string err;
  return s.announce(a, now, &err);
}

int parents(State& s, const std::string& peer, uint32_t n, p2p::Bitmap have, bool source, int64_t now,
            p2p::ParentsResp* out, p2p::Bitmap known = {}, uint32_t max_parents = 8,
            uint32_t piece_size = kPiece) {
  p2p::ParentsReq q;
  q.peer = peer;
  q.task = kTask;
  q.length = uint64_t{n} * piece_size;
  q.piece_size = piece_size;
  q.have = std::move(have);
  q.hashes_known = known.size() == n ? std::move(known) : p2p::Bitmap(n);
  q.source = source;
  q.max_parents = max_parents;
  std::string err;
  return s.parents(q, now, out, &err);
}

int result(State& s, const std::string& peer, const std::string& parent, uint32_t piece,
           p2p::ResultReq::Outcome o, int64_t now, uint32_t piece_size = 0) {
  p2p::ResultReq r;
  r.peer = peer;
  r.task = kTask;
  r.parent = parent;
  r.piece_size = piece_size;
  r.piece = piece;
  r.outcome = o;
  std::string err;
  return s.result(r, now, &err);
}

std::vector<std::string> parent_ids(const p2p::ParentsResp& r) {
  std::vector<std::string> v;
  for (const auto& p : r.parents) v.push_back(p.peer);
  return v;
}

bool has_parent(const p2p::ParentsResp& r, const std::string& id) {
  for (const auto& p : r.parents)
    if (p.peer == id) return true;
  return false;
}

p2p::Hashes hashes_for(std::set<uint32_t> pieces, uint8_t salt = 0) {
  p2p::Hashes h;
  for (uint32_t i : pieces) h[i] = hash_of(i, salt);
  return h;
}

void test_register_heartbeat(void**) {
  State s;
  p2p::HeartbeatReq hb;
  hb.peer = "p1";
  hb.free_slots = 2;
  std::string err;
  assert_int_equal(s.heartbeat(hb, 0, &err), 404);
  assert_false(err.empty());
  p2p::RegisterReq r;
  r.peer = "p1";
  r.addr = "10.0.0.1:65002";
  r.slots = 4;
  p2p::RegisterResp resp;
  assert_int_equal(s.register_peer(r, 0, &resp, &err), 200);
  assert_int_equal(resp.heartbeat_ms, 5000);
  assert_int_equal(s.heartbeat(hb, 1000, &err), 200);
  // Registering again is an update, not a second peer.
  assert_int_equal(s.register_peer(r, 2000, &resp, &err), 200);
  Counters c = s.counters();
  assert_int_equal(c.peers, 1);
  assert_int_equal(c.ops[static_cast<int>(Op::Register)], 2);
  assert_int_equal(c.ops[static_cast<int>(Op::Heartbeat)], 2);
}

// A daemon killed without a leave and started again at the same address
// (under a new peer id): its old self is forgotten at once, with what it
// held and the origin pieces it was assigned, so nobody waits peerTimeout.
void test_restart_replaces_peer(void**) {
  State s;
  p2p::RegisterReq r;
  r.peer = "old";
  r.addr = "10.0.0.9:65002";
  r.slots = 4;
  p2p::RegisterResp resp;
  std::string err;
  assert_int_equal(s.register_peer(r, 0, &resp, &err), 200);
  assert_int_equal(reg(s, "other", 0), 200);
  p2p::ParentsResp pr;
  // "old" holds piece 0 and was assigned pieces to fetch from the origin.
  assert_int_equal(announce(s, "old", 4, bits(4, {0}), hashes_for({0}), 10), 200);
  assert_int_equal(parents(s, "old", 4, bits(4, {0}), true, 20, &pr), 200);
  assert_false(pr.origin.empty());
  assert_int_equal(parents(s, "other", 4, p2p::Bitmap(4), true, 30, &pr), 200);
  assert_true(has_parent(pr, "old"));
  r.peer = "new";
  assert_int_equal(s.register_peer(r, 40, &resp, &err), 200);
  assert_int_equal(s.counters().peers, 2);
  // Piece 0 is nobody's now, and every piece can be handed out again.
  assert_int_equal(parents(s, "other", 4, p2p::Bitmap(4), true, 50, &pr), 200);
  assert_false(has_parent(pr, "old"));
  assert_true(std::find(pr.origin.begin(), pr.origin.end(), 0u) != pr.origin.end());
  // Same id again is an update: nothing is forgotten.
  assert_int_equal(s.register_peer(r, 60, &resp, &err), 200);
  assert_int_equal(s.counters().peers, 2);
}

void test_unknown_peer_and_conflict(void**) {
  State s;
  p2p::ParentsResp pr;
  assert_int_equal(announce(s, "ghost", 4, p2p::Bitmap(4), {}, 0), 404);
  assert_int_equal(parents(s, "ghost", 4, p2p::Bitmap(4), false, 0, &pr), 404);
  assert_int_equal(result(s, "ghost", "x", 0, p2p::ResultReq::Outcome::Ok, 0), 404);
  assert_false(s.has_task_for_test(kTask));
  assert_int_equal(reg(s, "p1", 0), 200);
  assert_int_equal(announce(s, "p1", 4, p2p::Bitmap(4), {}, 0), 200);
  assert_true(s.has_task_for_test(kTask));
  // Same task id and piece size, another length: 409 for announce and
  // parents alike.
  assert_int_equal(announce(s, "p1", 8, p2p::Bitmap(8), {}, 0), 409);
  assert_int_equal(parents(s, "p1", 8, p2p::Bitmap(8), false, 0, &pr), 409);
  // A bitmap that does not fit the task: 400.
  p2p::AnnounceReq a;
  a.peer = "p1";
  a.task = kTask;
  a.length = 4ull * kPiece;
  a.piece_size = kPiece;
  a.have = p2p::Bitmap(3);
  std::string err;
  assert_int_equal(s.announce(a, 0, &err), 400);
  assert_int_equal(result(s, "p1", "", 99, p2p::ResultReq::Outcome::OriginFailed, 0), 400);
  assert_int_equal(s.counters().errors, 7);
  // leave is idempotent.
  p2p::LeaveReq l;
  l.peer = "nobody";
  assert_int_equal(s.leave(l, 0, &err), 200);
}

void test_parents_basics(void**) {
  State s;
  for (auto p : {"seed", "half", "me"}) assert_int_equal(reg(s, p, 0), 200);
  // seed: every piece with every hash; half: pieces 0-3, no hashes of its
  // own (the seed's are known).
  assert_int_equal(announce(s, "seed", 8, all_bits(8), hashes_for({0, 1, 2, 3, 4, 5, 6, 7}), 0, true), 200);
  assert_int_equal(announce(s, "half", 8, bits(8, {0, 1, 2, 3}), {}, 0), 200);
  p2p::ParentsResp r;
  assert_int_equal(parents(s, "me", 8, bits(8, {0}), false, 10, &r, bits(8, {0, 1})), 200);
  assert_int_equal(r.parents.size(), 2);
  assert_string_equal(r.parents[0].peer.c_str(), "seed");  // 7 useful pieces against 3
  assert_string_equal(r.parents[0].addr.c_str(), addr_of("seed").c_str());
  assert_true(r.parents[0].pieces == all_bits(8));
  assert_true(r.parents[1].pieces == bits(8, {0, 1, 2, 3}));
  // Hashes the requester does not have yet.
  assert_int_equal(r.hashes.size(), 6);
  assert_true(r.hashes.count(0) == 0 && r.hashes.count(1) == 0);
  assert_true(r.hashes.at(5) == hash_of(5));
  assert_int_equal(r.retry_ms, 0);
  assert_true(r.origin.empty());  // not a source
  // max_parents of the request.
  assert_int_equal(parents(s, "me", 8, bits(8, {0}), false, 10, &r, {}, 1), 200);
  assert_int_equal(r.parents.size(), 1);
  // A requester holding everything useful gets no parent: retry later.
  assert_int_equal(parents(s, "me", 8, all_bits(8), false, 10, &r, all_bits(8)), 200);
  assert_true(r.parents.empty());
  assert_true(r.hashes.empty());
  assert_int_equal(r.retry_ms, 250);
}

void test_parent_pieces_need_known_hash(void**) {
  State s;
  for (auto p : {"a", "me"}) reg(s, p, 0);
  // a holds 0..3 but only 2's hash is known: it is a parent for piece 2 only.
  assert_int_equal(announce(s, "a", 4, all_bits(4), hashes_for({2}), 0), 200);
  p2p::ParentsResp r;
  assert_int_equal(parents(s, "me", 4, p2p::Bitmap(4), false, 0, &r), 200);
  assert_int_equal(r.parents.size(), 1);
  assert_true(r.parents[0].pieces == bits(4, {2}));
  // Once the requester holds piece 2, a has nothing useful.
  assert_int_equal(parents(s, "me", 4, bits(4, {2}), false, 0, &r), 200);
  assert_true(r.parents.empty());
}

void test_ranking(void**) {
  Options o;
  State s(o);
  reg(s, "me", 0, "r1");
  reg(s, "far4", 0, "r2");
  reg(s, "near4", 0, "r1");
  reg(s, "far8", 0, "r2");
  reg(s, "busy8", 0, "r1", 0);  // no upload slot
  auto h = hashes_for({0, 1, 2, 3, 4, 5, 6, 7});
  announce(s, "far4", 8, bits(8, {0, 1, 2, 3}), h, 0);
  announce(s, "near4", 8, bits(8, {0, 1, 2, 3}), {}, 0);
  announce(s, "far8", 8, all_bits(8), {}, 0);
  announce(s, "busy8", 8, all_bits(8), {}, 0);
  p2p::ParentsResp r;
  assert_int_equal(parents(s, "me", 8, p2p::Bitmap(8), false, 0, &r), 200);
  auto ids = parent_ids(r);
  assert_int_equal(ids.size(), 4);
  // More pieces first; equal pieces: same rack first; a parent with no free
  // slot (it would answer 503) after those that can serve.
  assert_string_equal(ids[0].c_str(), "far8");
  assert_string_equal(ids[1].c_str(), "near4");
  assert_string_equal(ids[2].c_str(), "far4");
  assert_string_equal(ids[3].c_str(), "busy8");
  // Success ratio: failures push far8 below near4 only in aggregate, never
  // out of the list.
  for (int i = 0; i < 20; ++i) result(s, "me", "far8", 0, p2p::ResultReq::Outcome::Stall, 0);
  for (int i = 0; i < 20; ++i) result(s, "me", "near4", 0, p2p::ResultReq::Outcome::Ok, 0);
  assert_int_equal(parents(s, "me", 8, bits(8, {4, 5}), false, 0, &r), 200);
  ids = parent_ids(r);
  // far8: 6 useful x 0.5; near4: 4 x 1.45 x 1.25.
  assert_string_equal(ids[0].c_str(), "near4");
  // A free slot comes back with a heartbeat.
  p2p::HeartbeatReq hb;
  hb.peer = "busy8";
  hb.free_slots = 4;
  std::string err;
  assert_int_equal(s.heartbeat(hb, 0, &err), 200);
  assert_int_equal(parents(s, "me", 8, p2p::Bitmap(8), false, 0, &r), 200);
  ids = parent_ids(r);
  auto at = [&ids](const char* id) { return std::find(ids.begin(), ids.end(), id) - ids.begin(); };
  assert_true(at("busy8") < at("far8"));  // 8 pieces each, busy8 in the same rack
  // Options::max_parents caps the request's max_parents.
  o.max_parents = 2;
  State s2(o);
  for (auto p : {"a", "b", "c", "me"}) reg(s2, p, 0);
  for (auto p : {"a", "b", "c"}) announce(s2, p, 8, all_bits(8), h, 0);
  assert_int_equal(parents(s2, "me", 8, p2p::Bitmap(8), false, 0, &r, {}, 8), 200);
  assert_int_equal(r.parents.size(), 2);
}

void test_origin_assignment_spreads(void**) {
  State s;  // origin_concurrency 2
  const uint32_t n = 8;
  std::vector<std::string> peers = {"p1", "p2", "p3", "p4"};
  for (auto& p : peers) reg(s, p, 0);
  // Four peers start at once, nobody holds anything.
  std::map<std::string, std::set<uint32_t>> got;
  for (auto& p : peers) {
    p2p::ParentsResp r;
    assert_int_equal(parents(s, p, n, p2p::Bitmap(n), true, 0, &r), 200);
    for (uint32_t i : r.origin) got[p].insert(i);
    assert_true(s.live_assignments_for_test(kTask, 0) <= 2);
    if (r.origin.empty()) assert_int_equal(r.retry_ms, 250);
  }
  // No parent anywhere: the first asker takes the whole free concurrency.
  assert_true(got["p1"] == std::set<uint32_t>({0, 1}));
  assert_true(got["p2"].empty() && got["p3"].empty() && got["p4"].empty());
  // A lost reply: asking again gives the same pieces (idempotent).
  p2p::ParentsResp r;
  assert_int_equal(parents(s, "p1", n, p2p::Bitmap(n), true, 100, &r), 200);
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));
  // p1 fetched piece 0 and announces it with its hash: the assignment goes,
  // and p1 becomes a parent; the others now get one piece each, all
  // different, never more than 2 live assignments.
  assert_int_equal(announce(s, "p1", n, bits(n, {0}), hashes_for({0}), 200), 200);
  assert_int_equal(s.live_assignments_for_test(kTask, 200), 1);
  std::set<uint32_t> taken = {1};
  for (auto& p : {"p2", "p3", "p4"}) {
    assert_int_equal(parents(s, p, n, p2p::Bitmap(n), true, 300, &r), 200);
    assert_true(has_parent(r, "p1"));
    assert_true(r.origin.size() <= 1);
    for (uint32_t i : r.origin) {
      assert_true(taken.insert(i).second);  // nobody else has it
      assert_int_not_equal(i, 0);           // known and held: never from the origin
    }
    assert_true(s.live_assignments_for_test(kTask, 300) <= 2);
  }
  assert_int_equal(s.live_assignments_for_test(kTask, 300), 2);
  assert_true(taken == std::set<uint32_t>({1, 2}));
  // Without source, no origin pieces.
  assert_int_equal(parents(s, "p4", n, p2p::Bitmap(n), false, 300, &r), 200);
  assert_true(r.origin.empty());
  assert_int_equal(s.counters().origin_assigned, 3);
}

void test_origin_concurrency_option(void**) {
  Options o;
  o.origin_concurrency = 4;
  State s(o);
  for (auto p : {"seed", "a", "b", "c", "d"}) reg(s, p, 0);
  // A parent exists (for piece 0): one origin piece per call.
  announce(s, "seed", 10, bits(10, {0}), hashes_for({0}), 0);
  p2p::ParentsResp r;
  parents(s, "a", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({1}));
  // Still the only downloader: a second piece.
  parents(s, "a", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({1, 2}));
  // With other downloaders around, each has at most one piece in flight.
  parents(s, "b", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({3}));
  parents(s, "b", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({3}));
  parents(s, "c", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({4}));
  assert_int_equal(s.live_assignments_for_test(kTask, 0), 4);
  // At the concurrency: nothing for d.
  parents(s, "d", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin.empty());
  // a lands piece 1: the free slot goes to d, which was handed nothing yet,
  // not to a, which asks first.
  announce(s, "a", 10, bits(10, {1}), hashes_for({1}), 100);
  parents(s, "a", 10, bits(10, {1}), true, 100, &r);
  assert_true(r.origin == std::vector<uint32_t>({2}));
  parents(s, "d", 10, p2p::Bitmap(10), true, 100, &r);
  assert_true(r.origin == std::vector<uint32_t>({5}));
  // b holds 3 now but has not announced its hash: 3 is no longer listed for
  // b (it holds it), and b gets no second piece.
  parents(s, "b", 10, bits(10, {3}), true, 100, &r);
  assert_true(r.origin.empty());
}

// A free origin slot waits a short grace for the peers handed the fewest
// pieces, then goes to any idle downloader that asks: the origin's uplink
// must not idle while the fairest peers poll on their slow cadence.
void test_origin_slot_grace(void**) {
  Options o;
  o.origin_concurrency = 2;
  State s(o);
  for (auto p : {"seed", "a", "b", "c"}) reg(s, p, 0);
  announce(s, "seed", 10, bits(10, {0}), hashes_for({0}), 0);
  p2p::ParentsResp r;
  parents(s, "a", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({1}));
  parents(s, "b", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({2}));
  parents(s, "c", 10, p2p::Bitmap(10), true, 0, &r);
  assert_true(r.origin.empty());  // both slots busy
  // c stays away. a lands piece 1 and asks at once: c was handed fewer, so
  // a is refused for now and told to come back when the grace is over.
  announce(s, "a", 10, bits(10, {0, 1}), hashes_for({0, 1}), 300);
  parents(s, "a", 10, bits(10, {0, 1}), true, 300, &r);
  assert_true(r.origin.empty());
  assert_int_equal(r.retry_ms, 60);
  parents(s, "a", 10, bits(10, {0, 1}), true, 359, &r);
  assert_true(r.origin.empty());
  // The grace is over: the idle slot goes to a after all.
  parents(s, "a", 10, bits(10, {0, 1}), true, 360, &r);
  assert_true(r.origin == std::vector<uint32_t>({3}));
  assert_int_equal(s.live_assignments_for_test(kTask, 360), 2);
  // Both slots busy again: c, asking now, waits like everyone else
  // (retry_ms is the ordinary poll, not the grace).
  parents(s, "c", 10, p2p::Bitmap(10), true, 400, &r);
  assert_true(r.origin.empty());
  assert_int_not_equal(r.retry_ms, 60);
  // The next free slot goes to c (fewest handed) without any wait.
  announce(s, "b", 10, bits(10, {2}), hashes_for({2}), 500);
  parents(s, "c", 10, p2p::Bitmap(10), true, 500, &r);
  assert_true(r.origin == std::vector<uint32_t>({4}));
}

// Peers that cut one task into pieces of different sizes (a cluster half
// upgraded) form two swarms: neither is refused, and neither is offered the
// other's holders, whose piece numbers mean other bytes.
void test_piece_size_swarms(void**) {
  State s;
  const uint32_t small = kPiece / 4;
  for (auto p : {"old1", "old2", "new1", "new2"}) reg(s, p, 0);
  assert_int_equal(announce(s, "old1", 4, all_bits(4), hashes_for({0, 1, 2, 3}), 0), 200);
  p2p::ParentsResp r;
  assert_int_equal(parents(s, "new1", 16, p2p::Bitmap(16), true, 0, &r, {}, 8, small), 200);
  assert_true(r.parents.empty());
  assert_false(r.origin.empty());  // nobody of its swarm holds anything
  const uint32_t mine = r.origin[0];
  assert_int_equal(parents(s, "old2", 4, p2p::Bitmap(4), true, 0, &r), 200);
  assert_true(has_parent(r, "old1"));
  assert_true(r.origin.empty());  // old1 holds every piece of this swarm
  assert_int_equal(s.counters().tasks, 2);
  // new1 lands its piece: new2 gets it as a parent, old1 stays out of it.
  assert_int_equal(announce(s, "new1", 16, bits(16, {mine}), hashes_for({mine}), 100, false, kTask, small),
                   200);
  assert_int_equal(parents(s, "new2", 16, p2p::Bitmap(16), false, 100, &r, {}, 8, small), 200);
  assert_true(has_parent(r, "new1"));
  assert_false(has_parent(r, "old1"));
  // A result names its swarm by the piece size: an origin failure in the
  // small swarm drops new1's assignment there and nowhere else.
  assert_int_equal(parents(s, "new1", 16, bits(16, {mine}), true, 200, &r, {}, 8, small), 200);
  const uint32_t live = s.live_assignments_for_test(kTask, 200);
  assert_true(live >= 1);
  assert_int_equal(live, r.origin.size());
  assert_int_equal(result(s, "new1", "", r.origin[0], p2p::ResultReq::Outcome::OriginFailed, 200, small),
                   200);
  assert_int_equal(s.live_assignments_for_test(kTask, 200), live - 1);
}

void test_assignment_deadline(void**) {
  State s;
  reg(s, "p1", 0);
  reg(s, "p2", 0);
  p2p::ParentsResp r;
  parents(s, "p1", 4, p2p::Bitmap(4), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));
  // Both stay alive; p1 does not renew its assignment.
  for (int64_t t = 10000; t <= 60000; t += 10000) {
    p2p::HeartbeatReq hb;
    std::string err;
    hb.peer = "p1";
    s.heartbeat(hb, t, &err);
    hb.peer = "p2";
    s.heartbeat(hb, t, &err);
  }
  parents(s, "p2", 4, p2p::Bitmap(4), true, 59999, &r);
  assert_true(r.origin.empty());
  parents(s, "p2", 4, p2p::Bitmap(4), true, 60000, &r);
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));  // lapsed: reassigned
  // Renewal: p2 asks again at 100 s, its deadline moves to 160 s.
  for (int64_t t = 70000; t <= 150000; t += 10000) {
    if (t == 100000) {
      parents(s, "p2", 4, p2p::Bitmap(4), true, 100000, &r);
      assert_true(r.origin == std::vector<uint32_t>({0, 1}));
    }
    p2p::HeartbeatReq hb;
    std::string err;
    hb.peer = "p1";
    s.heartbeat(hb, t, &err);
    hb.peer = "p2";
    s.heartbeat(hb, t, &err);
  }
  parents(s, "p1", 4, p2p::Bitmap(4), true, 150000, &r);
  assert_true(r.origin.empty());
  // OriginFailed: p2 gives piece 0 back; p1 takes it.
  assert_int_equal(result(s, "p2", "", 0, p2p::ResultReq::Outcome::OriginFailed, 150000), 200);
  parents(s, "p1", 4, p2p::Bitmap(4), true, 150000, &r);
  assert_true(r.origin == std::vector<uint32_t>({0}));
}

void test_peer_and_task_expiry(void**) {
  State s;
  reg(s, "p1", 0);
  reg(s, "p2", 0);
  p2p::ParentsResp r;
  parents(s, "p1", 4, p2p::Bitmap(4), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));
  announce(s, "p1", 4, bits(4, {2}), hashes_for({2}), 0);
  // p2 stays alive; p1 falls silent. Before expire() runs, p1 is not live:
  // neither a parent nor an assignee any more.
  p2p::HeartbeatReq hb;
  hb.peer = "p2";
  std::string err;
  s.heartbeat(hb, 14000, &err);
  parents(s, "p2", 4, p2p::Bitmap(4), true, 14999, &r);
  assert_true(has_parent(r, "p1"));
  assert_true(r.origin.empty());  // p1's two assignments are live
  parents(s, "p2", 4, p2p::Bitmap(4), true, 15000, &r);
  assert_false(has_parent(r, "p1"));
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));
  s.expire(15000);
  Counters c = s.counters();
  assert_int_equal(c.peers, 1);
  assert_int_equal(c.peers_expired, 1);
  hb.peer = "p1";
  assert_int_equal(s.heartbeat(hb, 15000, &err), 404);
  // The task lives while p2 takes part, and 10 minutes after it left.
  p2p::LeaveReq l;
  l.peer = "p2";
  assert_int_equal(s.leave(l, 16000, &err), 200);
  assert_int_equal(s.counters().peers, 0);
  s.expire(16000 + 599999);
  assert_true(s.has_task_for_test(kTask));
  s.expire(16000 + 600000);
  assert_false(s.has_task_for_test(kTask));
  assert_int_equal(s.counters().tasks, 0);
  assert_int_equal(s.counters().tasks_expired, 1);
  // A task that gets a participant again is not forgotten.
  reg(s, "p3", 700000);
  announce(s, "p3", 4, p2p::Bitmap(4), {}, 700000);
  l.peer = "p3";
  s.leave(l, 700001, &err);
  reg(s, "p4", 700002);
  announce(s, "p4", 4, p2p::Bitmap(4), {}, 700002);
  s.heartbeat(p2p::HeartbeatReq{"p4", 1}, 1310000, &err);
  s.expire(1310000);
  assert_true(s.has_task_for_test(kTask));
}

void test_hash_acceptance(void**) {
  State s;
  std::vector<Note> notes;
  s.set_note_sink([&](const Note& n) { notes.push_back(n); });
  for (auto p : {"a", "b", "c", "src", "other", "me"}) reg(s, p, 0);
  // First hash for a piece is taken.
  announce(s, "a", 4, bits(4, {0}), hashes_for({0}), 0);
  // b announces a different hash for 0: refused, b's bit for 0 cleared.
  announce(s, "b", 4, bits(4, {0, 1}), hashes_for({0, 1}, 9), 0);
  assert_int_equal(s.counters().hash_conflicts, 1);
  assert_int_equal(notes.size(), 1);
  assert_string_equal(notes[0].what, "piece hash conflict");
  assert_string_equal(notes[0].peer.c_str(), "b");
  assert_int_equal(notes[0].piece, 0);
  p2p::ParentsResp r;
  parents(s, "me", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(r.hashes.at(0) == hash_of(0));
  assert_true(r.hashes.at(1) == hash_of(1, 9));  // 1 had no hash: taken
  for (const auto& p : r.parents) {
    if (p.peer == "b") assert_true(p.pieces == bits(4, {1}));
    if (p.peer == "a") assert_true(p.pieces == bits(4, {0}));
  }
  // The same hash again is no conflict.
  announce(s, "c", 4, bits(4, {0}), hashes_for({0}), 0);
  assert_int_equal(s.counters().hash_conflicts, 1);
  // A complete sender's hashes replace known ones.
  p2p::Hashes full = hashes_for({0, 1, 2, 3}, 7);
  assert_int_equal(announce(s, "c", 4, all_bits(4), full, 0, true), 200);
  parents(s, "me", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(r.hashes.at(0) == hash_of(0, 7));
  assert_true(r.hashes.at(1) == hash_of(1, 7));
  // The origin assignee of a piece may replace its known hash.
  State s2;
  for (auto p : {"src", "other", "me"}) reg(s2, p, 0);
  parents(s2, "src", 4, p2p::Bitmap(4), true, 0, &r);
  assert_true(r.origin == std::vector<uint32_t>({0, 1}));
  announce(s2, "other", 4, p2p::Bitmap(4), hashes_for({0}, 1), 0);  // first: taken
  announce(s2, "src", 4, bits(4, {0}), hashes_for({0}, 2), 0);      // assignee: replaces
  assert_int_equal(s2.counters().hash_conflicts, 0);
  parents(s2, "me", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(r.hashes.at(0) == hash_of(0, 2));
  assert_true(has_parent(r, "src"));
  // Piece 1 (src's): a hash from another peer that does not hold it is
  // taken while none is known, then src's own replaces it, and the other
  // peer's is a conflict from then on.
  announce(s2, "other", 4, p2p::Bitmap(4), hashes_for({1}, 3), 0);
  announce(s2, "src", 4, bits(4, {0, 1}), hashes_for({1}, 4), 0);
  assert_int_equal(s2.counters().hash_conflicts, 0);
  parents(s2, "me", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(r.hashes.at(1) == hash_of(1, 4));
  announce(s2, "other", 4, bits(4, {1}), hashes_for({1}, 3), 0);
  assert_int_equal(s2.counters().hash_conflicts, 1);
}

void test_bad_piece_exclusion(void**) {
  State s;
  for (auto p : {"bad", "good", "r1", "r2", "r3"}) reg(s, p, 0);
  p2p::Hashes h = hashes_for({0, 1, 2, 3});
  announce(s, "bad", 4, all_bits(4), h, 0, true);
  announce(s, "good", 4, bits(4, {0}), {}, 0);
  p2p::ParentsResp r;
  parents(s, "r1", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(has_parent(r, "bad"));
  // r1 got a bad piece 2 from "bad": excluded for r1, bit 2 cleared.
  assert_int_equal(result(s, "r1", "bad", 2, p2p::ResultReq::Outcome::BadPiece, 0), 200);
  parents(s, "r1", 4, p2p::Bitmap(4), false, 0, &r);
  assert_false(has_parent(r, "bad"));
  assert_true(has_parent(r, "good"));
  parents(s, "r2", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(has_parent(r, "bad"));
  for (const auto& p : r.parents)
    if (p.peer == "bad") assert_true(p.pieces == bits(4, {0, 1, 3}));
  // The same reporter twice is still one reporter.
  result(s, "r1", "bad", 1, p2p::ResultReq::Outcome::BadPiece, 0);
  parents(s, "r3", 4, p2p::Bitmap(4), false, 0, &r);
  assert_true(has_parent(r, "bad"));
  // A second reporter: excluded for everybody.
  result(s, "r2", "bad", 0, p2p::ResultReq::Outcome::BadPiece, 0);
  parents(s, "r3", 4, p2p::Bitmap(4), false, 0, &r);
  assert_false(has_parent(r, "bad"));
  assert_int_equal(s.counters().bad_pieces, 3);
  // Even after announcing again, and after leaving and registering again.
  announce(s, "bad", 4, all_bits(4), h, 0, true);
  p2p::LeaveReq l;
  l.peer = "bad";
  std::string err;
  s.leave(l, 0, &err);
  reg(s, "bad", 0);
  announce(s, "bad", 4, all_bits(4), h, 0, true);
  parents(s, "r3", 4, p2p::Bitmap(4), false, 0, &r);
  assert_false(has_parent(r, "bad"));
}

void test_leave(void**) {
  State s;
  for (auto p : {"a", "me"}) reg(s, p, 0);
  announce(s, "a", 2, all_bits(2), hashes_for({0, 1}), 0, true);
  p2p::ParentsResp r;
  parents(s, "me", 2, p2p::Bitmap(2), false, 0, &r);
  assert_true(has_parent(r, "a"));
  p2p::LeaveReq l;
  l.peer = "a";
  std::string err;
  assert_int_equal(s.leave(l, 0, &err), 200);
  parents(s, "me", 2, p2p::Bitmap(2), false, 0, &r);
  assert_true(r.parents.empty());
  // Nobody holds the pieces any more: their hashes are forgotten and the
  // pieces go back to the origin, through a downloading peer.
  assert_int_equal(r.hashes.size(), 0);
  parents(s, "me", 2, p2p::Bitmap(2), true, 0, &r);
  assert_int_equal(r.origin.size(), 2);
  assert_int_equal(announce(s, "a", 2, all_bits(2), {}, 0), 404);
}

// A holder that dies takes its pieces with it: once it is forgotten, a
// piece only it held is assigned to another downloading peer, even though
// its hash was known (else the swarm would wait for it forever).
void test_dead_holder_piece_refetched(void**) {
  State s;
  for (auto p : {"a", "b", "c"}) reg(s, p, 0);
  // a fetched piece 0 from the origin; b holds piece 1.
  announce(s, "a", 3, bits(3, {0}), hashes_for({0}), 0);
  announce(s, "b", 3, bits(3, {1}), hashes_for({1}), 0);
  p2p::ParentsResp r;
  parents(s, "c", 3, p2p::Bitmap(3), true, 0, &r);
  assert_true(std::find(r.origin.begin(), r.origin.end(), 0u) == r.origin.end());
  // b and c keep heart-beating; a goes silent and is forgotten.
  for (int64_t t = 5000; t <= 20000; t += 5000) {
    for (auto p : {"b", "c"}) {
      p2p::HeartbeatReq hb;
      hb.peer = p;
      std::string err;
      s.heartbeat(hb, t, &err);
    }
    s.expire(t);
  }
  parents(s, "c", 3, p2p::Bitmap(3), true, 20000, &r);
  assert_false(has_parent(r, "a"));
  assert_true(has_parent(r, "b"));
  assert_true(std::find(r.origin.begin(), r.origin.end(), 0u) != r.origin.end());
}

// Scale: 10,000 peers, 1,000 tasks, a mixed load. Prints the mean cost per
// operation; checks the 20 us budget in optimised builds without sanitizers.
// A task with more holders than one query ranks: successive queries rank
// successive windows of them, so the answers name different parents.
void test_parent_scan_window(void**) {
  State s;
  const uint32_t n = 4;
  const size_t holders = 4 * State::kParentScan;
  p2p::Hashes hs;
  for (uint32_t i = 0; i < n; ++i) hs[i] = hash_of(i);
  for (size_t i = 0; i < holders; ++i) {
    const std::string p = "holder-" + std::to_string(i);
    assert_int_equal(reg(s, p, 0), 200);
    assert_int_equal(announce(s, p, n, all_bits(n), hs, 0, true), 200);
  }
  assert_int_equal(reg(s, "fresh", 0), 200);
  std::set<std::string> named;
  for (int q = 0; q < 4; ++q) {
    p2p::ParentsResp r;
    assert_int_equal(parents(s, "fresh", n, bits(n, {}), false, 1, &r, all_bits(n)), 200);
    assert_int_equal(r.parents.size(), 8);
    for (const auto& par : r.parents) named.insert(par.peer);
  }
  assert_int_equal(named.size(), 32);
}

void test_scale(void**) {
  State s;
  const uint32_t npeers = 10000, ntasks = 1000, n = 32;
  std::vector<std::string> peers, tasks;
  for (uint32_t i = 0; i < npeers; ++i) peers.push_back("peer-" + std::to_string(i));
  for (uint32_t i = 0; i < ntasks; ++i) {
    char id[65];
    snprintf(id, sizeof id, "%064x", i + 1);
    tasks.push_back(id);
  }
  uint64_t x = 88172645463325252ull;
  auto rnd = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  auto t0 = std::chrono::steady_clock::now();
  int64_t now = 0;
  for (auto& p : peers) reg(s, p, now);
  const int ops = 200000;
  std::string err;
  for (int k = 0; k < ops; ++k) {
    now = k / 50;  // 50 ops per ms
    const std::string& p = peers[rnd() % npeers];
    const std::string& t = tasks[rnd() % ntasks];
    uint32_t kind = static_cast<uint32_t>(rnd() % 10);
    p2p::Bitmap have(n);
    uint64_t bits64 = rnd();
    for (uint32_t i = 0; i < n; ++i)
      if ((bits64 >> i) & 1) have.set(i);
    if (kind < 3) {
      p2p::AnnounceReq a;
      a.peer = p;
      a.task = t;
      a.length = uint64_t{n} * kPiece;
      a.piece_size = kPiece;
      a.have = have;
      uint32_t i = static_cast<uint32_t>(rnd() % n);
      a.hashes[i] = hash_of(i);
      assert_int_equal(s.announce(a, now, &err), 200);
    } else if (kind < 7) {
      p2p::ParentsReq q;
      q.peer = p;
      q.task = t;
      q.length = uint64_t{n} * kPiece;
      q.piece_size = kPiece;
      q.have = have;
      q.hashes_known = all_bits(n);
      q.source = kind == 6;
      p2p::ParentsResp r;
      assert_int_equal(s.parents(q, now, &r, &err), 200);
    } else if (kind < 9) {
      p2p::HeartbeatReq hb;
      hb.peer = p;
      hb.free_slots = 3;
      assert_int_equal(s.heartbeat(hb, now, &err), 200);
    } else {
      p2p::ResultReq rr;
      rr.peer = p;
      rr.task = t;
      rr.parent = peers[rnd() % npeers];
      rr.piece = 1;
      assert_int_equal(s.result(rr, now, &err), 200);
    }
    if (k % 50000 == 0) s.expire(now);
  }
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
              (ops + npeers);
  printf("# state: %.2f us per operation over %d operations (10,000 peers, 1,000 tasks)\n", us, ops + npeers);
#if defined(__OPTIMIZE__) && !defined(__SANITIZE_ADDRESS__)
  assert_true(us < 20.0);
#endif
}

}  // namespace

int run_state_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_register_heartbeat),
      cmocka_unit_test(test_restart_replaces_peer),
      cmocka_unit_test(test_dead_holder_piece_refetched),
      cmocka_unit_test(test_unknown_peer_and_conflict),
      cmocka_unit_test(test_parents_basics),
      cmocka_unit_test(test_parent_pieces_need_known_hash),
      cmocka_unit_test(test_ranking),
      cmocka_unit_test(test_origin_assignment_spreads),
      cmocka_unit_test(test_origin_concurrency_option),
      cmocka_unit_test(test_origin_slot_grace),
      cmocka_unit_test(test_piece_size_swarms),
      cmocka_unit_test(test_assignment_deadline),
      cmocka_unit_test(test_peer_and_task_expiry),
      cmocka_unit_test(test_hash_acceptance),
      cmocka_unit_test(test_bad_piece_exclusion),
      cmocka_unit_test(test_leave),
      cmocka_unit_test(test_parent_scan_window),
      cmocka_unit_test(test_scale),
  };
  return cmocka_run_group_tests_name("scheduler_state", tests, nullptr, nullptr);
}

}  // namespace shoal::scheduler::test
