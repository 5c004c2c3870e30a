// Unit tests for the P2P wire protocol (protocol.h): bitmaps, every
// message's round trip, refusal of each malformed field, and rendezvous
// hashing.
#include <cjson/cJSON.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../cmocka_cpp.h"
#include "shoal/p2p/protocol.h"
#include "shoal/task/task_id.h"

namespace {

using namespace shoal::p2p;
using shoal::task::Sha256;

const std::string kTask = "2cc3f0f242aa266194ea2a5f10a97aa276120aa08d0a4bdd442b990fa4168cdd";

Sha256 hash_of(uint8_t seed) {
  Sha256 h;
  for (size_t i = 0; i < h.size(); i++) h[i] = static_cast<uint8_t>(seed * 31 + i);
  return h;
}

// body with one top-level field replaced by the JSON text value, or removed
// when value is nullptr.
std::string with(const std::string& body, const char* name, const char* value) {
  cJSON* root = cJSON_Parse(body.c_str());
  assert_non_null(root);
  cJSON_DeleteItemFromObjectCaseSensitive(root, name);
  if (value != nullptr) {
    // Raw, not parsed and printed again: cJSON prints numbers over 2^53 - 1
    // with 15 significant digits, which would change the value under test.
    cJSON_AddItemToObject(root, name, cJSON_CreateRaw(value));
  }
  char* text = cJSON_PrintUnformatted(root);
  std::string out(text);
  cJSON_free(text);
  cJSON_Delete(root);
  return out;
}

// The decoder refuses body with an error that starts with the field's name.
template <class M>
void refused(const std::string& body, const char* field) {
  M m;
  std::string err;
  if (decode(body, &m, &err)) {
    print_error("accepted: %s\n", body.c_str());
    fail();
  }
  if (err.compare(0, std::strlen(field), field) != 0) {
    print_error("error \"%s\" does not name %s; body %s\n", err.c_str(), field, body.c_str());
    fail();
  }
}

template <class M>
void refused_with(const std::string& body, const char* name, const char* value, const char* field = nullptr) {
  refused<M>(with(body, name, value), field != nullptr ? field : name);
}

template <class M>
M decoded(const std::string& body) {
  M m;
  std::string err;
  if (!decode(body, &m, &err)) {
    print_error("refused (%s): %s\n", err.c_str(), body.c_str());
    fail();
  }
  return m;
}

void resp_refused(const std::string& body, uint32_t pieces, const char* field) {
  ParentsResp m;
  std::string err;
  if (decode(body, pieces, &m, &err)) {
    print_error("accepted: %s\n", body.c_str());
    fail();
  }
  if (err.compare(0, std::strlen(field), field) != 0) {
    print_error("error \"%s\" does not name %s\n", err.c_str(), field);
    fail();
  }
}

// ---- Bitmap ----

void test_bitmap_bits(void**) {
  Bitmap b(10);
  assert_int_equal(b.size(), 10);
  assert_int_equal(b.count(), 0);
  assert_string_equal(b.to_hex().c_str(), "0000");
  b.set(0);
  b.set(9);
  b.set(10);  // out of range: ignored
  assert_true(b.test(0));
  assert_true(b.test(9));
  assert_false(b.test(10));
  assert_false(b.test(1000000));
  assert_int_equal(b.count(), 2);
  assert_string_equal(b.to_hex().c_str(), "8040");
  for (uint32_t i = 0; i < 10; i++) b.set(i);
  assert_true(b.all());
  assert_string_equal(b.to_hex().c_str(), "ffc0");
  b.clear(3);
  assert_false(b.all());
  assert_int_equal(b.count(), 9);
  assert_string_equal(b.to_hex().c_str(), "efc0");

  Bitmap big(1000);
  for (uint32_t i = 0; i < 1000; i += 3) big.set(i);
  assert_int_equal(big.count(), 334);
  Bitmap back;
  assert_true(Bitmap::from_hex(big.to_hex(), 1000, &back));
  assert_true(back == big);

  Bitmap empty;
  assert_true(Bitmap::from_hex("", 0, &empty));
  assert_int_equal(empty.size(), 0);
  assert_true(empty.all());
}

void test_bitmap_from_hex_refuses(void**) {
  Bitmap b(3);
  b.set(1);
  const Bitmap before = b;
  // Size 10 leaves six spare bits in the last byte; each must be zero.
  assert_true(Bitmap::from_hex("ffc0", 10, &b));
  assert_int_equal(b.count(), 10);
  b = before;
  for (const char* bad : {"ffe0", "ffc1", "ff01", "ffd0"}) assert_false(Bitmap::from_hex(bad, 10, &b));
  assert_false(Bitmap::from_hex("ff", 10, &b));      // short
  assert_false(Bitmap::from_hex("ffc000", 10, &b));  // long
  assert_false(Bitmap::from_hex("ffc", 10, &b));     // odd
  assert_false(Bitmap::from_hex("FFC0", 10, &b));    // upper case
  assert_false(Bitmap::from_hex("fgc0", 10, &b));    // not hex
  assert_false(Bitmap::from_hex(std::string("f\0c0", 4), 10, &b));
  assert_false(Bitmap::from_hex("00", 0, &b));
  assert_true(b == before);  // untouched by every refusal
  assert_true(Bitmap::from_hex("ff", 8, &b));
  assert_true(b.all());
}

// ---- Round trips ----

void test_round_trip_register(void**) {
  RegisterReq m;
  m.peer = "node-1.rack_2:a";
  m.addr = "[2001:db8::1]:7070";
  m.labels = {{"rack", "r12"}, {"zone", "eu \"west\"\n\\1"}, {"", ""}};
  m.slots = 4294967295u;
  const std::string body = encode(m);
  RegisterReq d = decoded<RegisterReq>(body);
  assert_string_equal(d.peer.c_str(), m.peer.c_str());
  assert_string_equal(d.addr.c_str(), m.addr.c_str());
  assert_true(d.labels == m.labels);
  assert_int_equal(d.slots, m.slots);

  RegisterResp r;
  r.heartbeat_ms = 5000;
  assert_string_equal(encode(r).c_str(), "{\"v\":1,\"heartbeat_ms\":5000}");
  assert_int_equal(decoded<RegisterResp>(encode(r)).heartbeat_ms, 5000);

  HeartbeatReq h;
  h.peer = "p";
  h.free_slots = 3;
  assert_string_equal(encode(h).c_str(), "{\"v\":1,\"peer\":\"p\",\"free_slots\":3}");
  HeartbeatReq hd = decoded<HeartbeatReq>(encode(h));
  assert_string_equal(hd.peer.c_str(), "p");
  assert_int_equal(hd.free_slots, 3);

  LeaveReq l;
  l.peer = "p2";
  assert_string_equal(decoded<LeaveReq>(encode(l)).peer.c_str(), "p2");

  ErrorResp e;
  e.error = "unknown peer \"x\"\\ \x01\t\r\n caf\xc3\xa9";
  assert_string_equal(decoded<ErrorResp>(encode(e)).error.c_str(), e.error.c_str());

  std::string err;
  assert_string_equal(encode_ack().c_str(), "{\"v\":1}");
  assert_true(decode_ack(encode_ack(), &err));
}

AnnounceReq sample_announce() {
  AnnounceReq m;
  m.peer = "peer-a";
  m.task = kTask;
  m.length = 10 * 4096 + 1;  // 11 pieces
  m.piece_size = 4096;
  m.have = Bitmap(11);
  m.have.set(0);
  m.have.set(10);
  m.hashes = {{0, hash_of(0)}, {10, hash_of(10)}};
  return m;
}

void test_round_trip_announce(void**) {
  AnnounceReq m = sample_announce();
  AnnounceReq d = decoded<AnnounceReq>(encode(m));
  assert_string_equal(d.peer.c_str(), m.peer.c_str());
  assert_string_equal(d.task.c_str(), kTask.c_str());
  assert_int_equal(d.length, m.length);
  assert_int_equal(d.piece_size, 4096);
  assert_true(d.have == m.have);
  assert_true(d.hashes == m.hashes);
  assert_false(d.complete);

  // Complete: every piece held and hashed.
  for (uint32_t i = 0; i < 11; i++) {
    m.have.set(i);
    m.hashes[i] = hash_of(static_cast<uint8_t>(i));
  }
  m.complete = true;
  d = decoded<AnnounceReq>(encode(m));
  assert_true(d.complete);
  assert_true(d.hashes == m.hashes);

  // The largest object a bitmap can describe: exactly kMaxPieces pieces.
  AnnounceReq big;
  big.peer = "p";
  big.task = kTask;
  big.piece_size = 1;
  big.length = kMaxPieces;
  big.have = Bitmap(kMaxPieces);
  big.have.set(kMaxPieces - 1);
  d = decoded<AnnounceReq>(encode(big));
  assert_int_equal(d.have.count(), 1);
  assert_true(d.have.test(kMaxPieces - 1));
}

ParentsReq sample_parents_req() {
  ParentsReq m;
  m.peer = "peer-b";
  m.task = kTask;
  m.length = 9;
  m.piece_size = 1;
  m.have = Bitmap(9);
  m.have.set(8);
  m.hashes_known = Bitmap(9);
  m.hashes_known.set(2);
  m.source = true;
  m.max_parents = 3;
  return m;
}

void test_round_trip_parents(void**) {
  ParentsReq m = sample_parents_req();
  ParentsReq d = decoded<ParentsReq>(encode(m));
  assert_string_equal(d.peer.c_str(), "peer-b");
  assert_string_equal(d.task.c_str(), kTask.c_str());
  assert_int_equal(d.length, 9);
  assert_int_equal(d.piece_size, 1);
  assert_true(d.have == m.have);
  assert_true(d.hashes_known == m.hashes_known);
  assert_true(d.source);
  assert_int_equal(d.max_parents, 3);

  ParentsResp r;
  r.hashes = {{1, hash_of(1)}, {7, hash_of(7)}};
  Parent p;
  p.peer = "peer-c";
  p.addr = "10.0.0.3:7070";
  p.pieces = Bitmap(9);
  p.pieces.set(1);
  p.pieces.set(7);
  r.parents.push_back(p);
  p.peer = "peer-d";
  p.addr = "[::1]:1";
  p.pieces = Bitmap(9);
  r.parents.push_back(p);
  r.origin = {0, 8};
  r.retry_ms = 250;
  ParentsResp rd;
  std::string err;
  assert_true(decode(encode(r), 9, &rd, &err));
  assert_true(rd.hashes == r.hashes);
  assert_int_equal(rd.parents.size(), 2);
  assert_string_equal(rd.parents[0].peer.c_str(), "peer-c");
  assert_string_equal(rd.parents[0].addr.c_str(), "10.0.0.3:7070");
  assert_true(rd.parents[0].pieces == r.parents[0].pieces);
  assert_string_equal(rd.parents[1].peer.c_str(), "peer-d");
  assert_string_equal(rd.parents[1].addr.c_str(), "[::1]:1");
  assert_true(rd.origin == r.origin);
  assert_int_equal(rd.retry_ms, 250);

  // Nothing offered.
  ParentsResp none;
  none.retry_ms = 1000;
  assert_string_equal(encode(none).c_str(),
                      "{\"v\":1,\"hashes\":{},\"parents\":[],\"origin\":[],\"retry_ms\":1000}");
  assert_true(decode(encode(none), 1, &rd, &err));
  assert_true(rd.parents.empty() && rd.origin.empty() && rd.hashes.empty());
}

void test_round_trip_result(void**) {
  using O = ResultReq::Outcome;
  for (O o : {O::Ok, O::BadPiece, O::Stall, O::Error, O::OriginFailed}) {
    ResultReq m;
    m.peer = "peer-a";
    m.task = kTask;
    m.parent = o == O::OriginFailed ? "" : "peer-c";
    m.piece = kMaxPieces - 1;
    m.outcome = o;
    m.bytes = (uint64_t{1} << 53) - 1;
    m.ms = 4294967295u;
    m.piece_size = 1u << 20;
    ResultReq d = decoded<ResultReq>(encode(m));
    assert_int_equal(d.piece_size, 1u << 20);
    assert_string_equal(d.peer.c_str(), "peer-a");
    assert_string_equal(d.task.c_str(), kTask.c_str());
    assert_string_equal(d.parent.c_str(), m.parent.c_str());
    assert_int_equal(d.piece, m.piece);
    assert_true(d.outcome == o);
    assert_int_equal(d.bytes, m.bytes);
    assert_int_equal(d.ms, m.ms);
  }
  assert_string_equal(to_string(O::Ok), "ok");
  assert_string_equal(to_string(O::BadPiece), "bad-piece");
  assert_string_equal(to_string(O::Stall), "stall");
  assert_string_equal(to_string(O::Error), "error");
  assert_string_equal(to_string(O::OriginFailed), "origin-failed");
}

// ---- Envelope ----

void test_version(void**) {
  const std::string leave = "{\"peer\":\"p\"}";
  refused<LeaveReq>(leave, "v");
  for (const char* v : {"0", "-1", "1.5", "\"1\"", "true", "null", "[]", "1e300"}) {
    refused_with<LeaveReq>(leave, "v", v);
  }
  // Newer senders are accepted.
  assert_string_equal(decoded<LeaveReq>(with(leave, "v", "2")).peer.c_str(), "p");
  std::string err;
  assert_false(decode_ack("{}", &err));
  assert_string_equal(err.c_str(), "v: missing");
  assert_false(decode_ack("{\"v\":0}", &err));
  assert_true(decode_ack("{\"v\":7}", &err));
}

void test_body(void**) {
  std::string err;
  for (const char* bad : {"", " ", "[]", "null", "1", "\"x\"", "{", "{\"v\":1", "{\"v\":1}x", "{\"v\":1}{}",
                          "{\"v\":1,}", "{v:1}"}) {
    assert_false(decode_ack(bad, &err));
    assert_true(err.compare(0, 5, "body:") == 0);
  }
  assert_true(decode_ack(" {\"v\":1} \n", &err));
  assert_false(decode_ack(std::string("{\"v\":1}\0junk", 11), &err));
  assert_string_equal(err.c_str(), "body: NUL byte");
  // The 4 MiB cap: padding with spaces, just over and just at it.
  std::string big = "{\"v\":1}";
  big.append((4u << 20) - big.size(), ' ');
  assert_true(decode_ack(big, &err));
  big.push_back(' ');
  assert_false(decode_ack(big, &err));
  assert_string_equal(err.c_str(), "body: over 4 MiB");
  // Deep nesting is refused by cJSON's limit rather than exhausting the stack.
  std::string deep = "{\"v\":1,\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  assert_false(decode_ack(deep, &err));
  // A null err is allowed.
  assert_false(decode_ack("[]", nullptr));
}

void test_unknown_fields_ignored(void**) {
  const char* extra = "{\"nested\":[1,{\"a\":null}],\"s\":\"x\"}";
  RegisterReq reg;
  reg.peer = "p";
  reg.addr = "1.2.3.4:5";
  assert_string_equal(decoded<RegisterReq>(with(encode(reg), "future", extra)).peer.c_str(), "p");
  RegisterResp rr;
  rr.heartbeat_ms = 1;
  assert_int_equal(decoded<RegisterResp>(with(encode(rr), "future", extra)).heartbeat_ms, 1);
  HeartbeatReq hb;
  hb.peer = "p";
  decoded<HeartbeatReq>(with(encode(hb), "future", extra));
  decoded<AnnounceReq>(with(encode(sample_announce()), "future", extra));
  decoded<ParentsReq>(with(encode(sample_parents_req()), "future", extra));
  ResultReq res;
  res.peer = res.parent = "p";
  res.task = kTask;
  decoded<ResultReq>(with(encode(res), "future", extra));
  LeaveReq l;
  l.peer = "p";
  decoded<LeaveReq>(with(encode(l), "future", extra));
  ErrorResp e;
  decoded<ErrorResp>(with(encode(e), "future", extra));
  ParentsResp pr;
  ParentsResp prd;
  std::string err;
  assert_true(decode(with(encode(pr), "future", extra), 1, &prd, &err));
  // Unknown members inside a parent are ignored too.
  assert_true(
      decode("{\"v\":1,\"hashes\":{},\"parents\":[{\"peer\":\"a\",\"addr\":\"1.1.1.1:1\",\"pieces\":\"80\","
             "\"rtt\":3}],"
             "\"origin\":[],\"retry_ms\":0}",
             1, &prd, &err));
  assert_int_equal(prd.parents.size(), 1);
}

// ---- Refusals, field by field ----

void test_refuse_register(void**) {
  RegisterReq m;
  m.peer = "p";
  m.addr = "192.0.2.1:7070";
  m.labels = {{"rack", "r1"}};
  m.slots = 2;
  const std::string body = encode(m);
  decoded<RegisterReq>(body);
  refused_with<RegisterReq>(body, "peer", nullptr);
  for (const char* v : {"\"\"", "\"a b\"", "\"a/b\"", "\"\\u00e9\"", "5", "null", "[\"p\"]"}) {
    refused_with<RegisterReq>(body, "peer", v);
  }
  refused_with<RegisterReq>(body, "peer", ("\"" + std::string(129, 'a') + "\"").c_str());
  decoded<RegisterReq>(with(body, "peer", ("\"" + std::string(128, 'a') + "\"").c_str()));
  refused_with<RegisterReq>(body, "addr", nullptr);
  for (const char* v :
       {"\"1.2.3.4\"", "\"1.2.3.4:0\"", "\"1.2.3.4:65536\"", "\"1.2.3.4:080\"", "\"1.2.3.4:+80\"",
        "\"host:80\"", "\"::1:80\"", "\"[1.2.3.4]:80\"", "\"[::1]\"", "\"[::1:80\"", "\":80\"",
        "\"1.2.3:80\"", "\"01.2.3.4:80\"", "\"[fe80::1%eth0]:80\"", "80"}) {
    refused_with<RegisterReq>(body, "addr", v);
  }
  refused_with<RegisterReq>(body, "labels", nullptr);
  for (const char* v : {"[]", "\"rack=r1\"", "{\"a\":1}", "{\"a\":null}", "{\"a\":\"x\",\"a\":\"y\"}"}) {
    refused_with<RegisterReq>(body, "labels", v);
  }
  refused_with<RegisterReq>(body, "slots", nullptr);
  for (const char* v : {"-1", "1.5", "\"3\"", "4294967296", "true", "1e10"}) {
    refused_with<RegisterReq>(body, "slots", v);
  }
  assert_int_equal(decoded<RegisterReq>(with(body, "slots", "3.0")).slots, 3);

  refused_with<RegisterResp>(encode(RegisterResp{1000}), "heartbeat_ms", "0");
  refused_with<RegisterResp>(encode(RegisterResp{1000}), "heartbeat_ms", nullptr);
  refused_with<RegisterResp>(encode(RegisterResp{1000}), "heartbeat_ms", "-5");

  HeartbeatReq hb;
  hb.peer = "p";
  refused_with<HeartbeatReq>(encode(hb), "free_slots", "-1");
  refused_with<HeartbeatReq>(encode(hb), "free_slots", nullptr);
  refused_with<HeartbeatReq>(encode(hb), "peer", "\"\"");
  refused_with<LeaveReq>(encode(LeaveReq{"p"}), "peer", nullptr);
  refused_with<ErrorResp>(encode(ErrorResp{"x"}), "error", "5");
  refused_with<ErrorResp>(encode(ErrorResp{"x"}), "error", nullptr);
}

// Fields AnnounceReq and ParentsReq share: task, length, piece_size, have.
template <class M>
void refuse_geometry(const std::string& body) {
  refused_with<M>(body, "task", nullptr);
  refused_with<M>(body, "task", ("\"" + kTask.substr(1) + "\"").c_str());
  std::string upper = kTask;
  upper[0] = 'C';
  refused_with<M>(body, "task", ("\"" + upper + "\"").c_str());
  refused_with<M>(body, "task", "\"../../etc/passwd\"");
  refused_with<M>(body, "length", nullptr);
  for (const char* v : {"0", "-1", "1.5", "9007199254740992", "1e20", "\"9\""})
    refused_with<M>(body, "length", v);
  refused_with<M>(body, "piece_size", nullptr);
  for (const char* v : {"0", "-4096", "4294967296", "0.5"}) refused_with<M>(body, "piece_size", v);
  // length 2^20 + 1 at one byte a piece: one piece over kMaxPieces.
  refused<M>(with(with(body, "length", "1048577"), "piece_size", "1"), "piece_size");
  refused_with<M>(body, "have", nullptr);
  for (const char* v : {"\"\"", "5", "\"ff\"", "\"fff\"", "\"ffe000\"", "\"FFE0\"", "\"fff0\"", "\"ff01\""}) {
    refused_with<M>(body, "have", v);
  }
}

void test_refuse_announce(void**) {
  AnnounceReq m = sample_announce();  // 11 pieces: 2 bitmap bytes, 5 spare bits
  const std::string body = encode(m);
  refused_with<AnnounceReq>(body, "peer", nullptr);
  refuse_geometry<AnnounceReq>(body);
  const std::string h = "\"" + std::string(64, 'a') + "\"";
  refused_with<AnnounceReq>(body, "hashes", nullptr);
  for (const std::string& v :
       {std::string("[]"), std::string("\"\""), "{\"11\":" + h + "}", "{\"-1\":" + h + "}",
        "{\"01\":" + h + "}", "{\"x\":" + h + "}", "{\"\":" + h + "}", "{\"1.0\":" + h + "}",
        "{\"4294967297\":" + h + "}", "{\"1\":\"" + std::string(63, 'a') + "\"}",
        "{\"1\":\"" + std::string(65, 'a') + "\"}", "{\"1\":\"" + std::string(64, 'A') + "\"}",
        "{\"1\":\"" + std::string(63, 'a') + "g\"}", std::string("{\"1\":5}"),
        "{\"1\":" + h + ",\"1\":" + h + "}"}) {
    refused_with<AnnounceReq>(body, "hashes", v.c_str());
  }
  decoded<AnnounceReq>(with(body, "hashes", ("{\"10\":" + h + ",\"0\":" + h + "}").c_str()));
  refused_with<AnnounceReq>(body, "complete", nullptr);
  refused_with<AnnounceReq>(body, "complete", "1");
  refused_with<AnnounceReq>(body, "complete", "\"true\"");
  // complete with pieces or hashes missing.
  refused_with<AnnounceReq>(body, "complete", "true");
  m.have = Bitmap(11);
  for (uint32_t i = 0; i < 11; i++) m.have.set(i);
  refused_with<AnnounceReq>(encode(m), "complete", "true");
}

void test_refuse_parents_req(void**) {
  const std::string body = encode(sample_parents_req());  // 9 pieces
  refused_with<ParentsReq>(body, "peer", "\"x y\"");
  refuse_geometry<ParentsReq>(
      with(with(with(body, "length", "11"), "have", "\"0000\""), "hashes_known", "\"0000\""));
  refused_with<ParentsReq>(body, "hashes_known", nullptr);
  refused_with<ParentsReq>(body, "hashes_known", "\"00\"");
  refused_with<ParentsReq>(body, "hashes_known", "\"0040\"");
  refused_with<ParentsReq>(body, "source", nullptr);
  refused_with<ParentsReq>(body, "source", "0");
  refused_with<ParentsReq>(body, "max_parents", nullptr);
  refused_with<ParentsReq>(body, "max_parents", "-8");
}

void test_refuse_parents_resp(void**) {
  ParentsResp r;
  Parent p;
  p.peer = "a";
  p.addr = "1.1.1.1:1";
  p.pieces = Bitmap(9);
  r.parents.push_back(p);
  r.origin = {8};
  const std::string body = encode(r);
  ParentsResp d;
  std::string err;
  assert_true(decode(body, 9, &d, &err));
  resp_refused(body, 0, "pieces");
  resp_refused(body, kMaxPieces + 1, "pieces");
  resp_refused(body, 8, "parents[0].pieces");  // bitmap size and origin follow the piece count
  resp_refused(with(body, "hashes", nullptr), 9, "hashes");
  resp_refused(with(body, "hashes", ("{\"9\":\"" + std::string(64, '0') + "\"}").c_str()), 9, "hashes");
  resp_refused(with(body, "parents", nullptr), 9, "parents");
  resp_refused(with(body, "parents", "{}"), 9, "parents");
  resp_refused(with(body, "parents", "[1]"), 9, "parents[0]");
  resp_refused(with(body, "parents", "[{\"peer\":\"a\",\"addr\":\"1.1.1.1:1\"}]"), 9, "parents[0].pieces");
  resp_refused(with(body, "parents",
                    "[{\"peer\":\"a\",\"addr\":\"1.1.1.1:1\",\"pieces\":\"0000\"},"
                    "{\"peer\":\"b c\",\"addr\":\"1.1.1.1:1\",\"pieces\":\"0000\"}]"),
               9, "parents[1].peer");
  resp_refused(with(body, "parents", "[{\"peer\":\"a\",\"addr\":\"localhost:1\",\"pieces\":\"0000\"}]"), 9,
               "parents[0].addr");
  resp_refused(with(body, "parents", "[{\"peer\":\"a\",\"addr\":\"1.1.1.1:1\",\"pieces\":\"0040\"}]"), 9,
               "parents[0].pieces");
  resp_refused(with(body, "origin", nullptr), 9, "origin");
  for (const char* v : {"[9]", "[-1]", "[1.5]", "[\"1\"]", "3", "[null]"})
    resp_refused(with(body, "origin", v), 9, "origin");
  resp_refused(with(body, "retry_ms", nullptr), 9, "retry_ms");
  resp_refused(with(body, "retry_ms", "-1"), 9, "retry_ms");
  // Refusals leave *out as it was.
  d.retry_ms = 77;
  assert_false(decode(with(body, "retry_ms", "-1"), 9, &d, &err));
  assert_int_equal(d.retry_ms, 77);
  assert_int_equal(d.parents.size(), 1);
}

void test_refuse_result(void**) {
  ResultReq m;
  m.peer = "p";
  m.task = kTask;
  m.parent = "q";
  m.piece = 3;
  m.outcome = ResultReq::Outcome::Stall;
  const std::string body = encode(m);
  refused_with<ResultReq>(body, "task", "\"abc\"");
  refused_with<ResultReq>(body, "parent", nullptr);
  refused_with<ResultReq>(body, "parent", "\"\"");  // only origin-failed may lack a parent
  refused_with<ResultReq>(body, "parent", "\"a b\"");
  refused_with<ResultReq>(body, "piece", "1048576");
  refused_with<ResultReq>(body, "piece", "-1");
  refused_with<ResultReq>(body, "outcome", nullptr);
  for (const char* v : {"\"OK\"", "\"meh\"", "\"\"", "0"}) refused_with<ResultReq>(body, "outcome", v);
  refused_with<ResultReq>(body, "bytes", "9007199254740992");
  refused_with<ResultReq>(body, "bytes", "-1");
  refused_with<ResultReq>(body, "ms", "4294967296");
  // piece_size is optional (peers of protocol version 1 before it did not
  // send it): absent decodes as 0, present must be a number.
  assert_int_equal(decoded<ResultReq>(with(body, "piece_size", nullptr)).piece_size, 0);
  refused_with<ResultReq>(body, "piece_size", "\"big\"");
  refused_with<ResultReq>(body, "piece_size", "-1");
  const std::string origin = with(body, "outcome", "\"origin-failed\"");
  decoded<ResultReq>(with(origin, "parent", "\"\""));
  decoded<ResultReq>(origin);  // an origin failure may still name a peer
}

// ---- Identities ----

void test_valid_peer_id_and_addr(void**) {
  assert_true(valid_peer_id("a"));
  assert_true(valid_peer_id("A-z_0.9:x"));
  assert_true(valid_peer_id(std::string(128, 'x')));
  assert_false(valid_peer_id(""));
  assert_false(valid_peer_id(std::string(129, 'x')));
  for (const char* bad : {"a b", "a/b", "a\n", "a\"", "\xc3\xa9", "a@b", "a,b"})
    assert_false(valid_peer_id(bad));
  assert_false(valid_peer_id(std::string("a\0b", 3)));

  for (const char* good : {"1.2.3.4:1", "255.255.255.255:65535", "[::1]:80", "[2001:db8::ff:1]:7070",
                           "[::ffff:1.2.3.4]:9", "0.0.0.0:1"}) {
    if (!valid_peer_addr(good)) {
      print_error("refused %s\n", good);
      fail();
    }
  }
  for (const char* bad :
       {"", ":", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:99999999", "1.2.3.4:-1",
        "1.2.3.4: 80", " 1.2.3.4:80", "[::1]", "::1:80", "[]:80", "[1.2.3.4]:80", "256.1.1.1:80",
        "a.b.c.d:80", "[::1]:80x", "[::g]:80", "1.2.3.4:80:80"}) {
    if (valid_peer_addr(bad)) {
      print_error("accepted %s\n", bad);
      fail();
    }
  }
  assert_false(valid_peer_addr(std::string("1.2.3.4\0x:80", 11)));
  assert_false(valid_peer_addr("[" + std::string(60, '0') + "::1]:80"));
}

// ---- Rendezvous hashing ----

std::string task_id(int i) { return shoal::task::sha256_hex("task " + std::to_string(i)); }

void test_scheduler_order(void**) {
  assert_true(scheduler_order(kTask, {}).empty());
  assert_true(scheduler_order(kTask, {"only"}) == std::vector<size_t>{0});

  // The definition: SHA-256(scheduler + "\n" + task), highest first.
  const std::vector<std::string> s = {"10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000", "10.0.0.4:9000"};
  std::vector<std::pair<std::string, size_t>> want;
  for (size_t i = 0; i < s.size(); i++) want.emplace_back(shoal::task::sha256_hex(s[i] + "\n" + kTask), i);
  std::sort(want.rbegin(), want.rend());
  const std::vector<size_t> got = scheduler_order(kTask, s);
  assert_int_equal(got.size(), 4);
  for (size_t i = 0; i < 4; i++) assert_int_equal(got[i], want[i].second);
  // Stable: the same list gives the same order; a reordered list names the
  // same schedulers in the same order.
  assert_true(scheduler_order(kTask, s) == got);
  const std::vector<std::string> reversed(s.rbegin(), s.rend());
  const std::vector<size_t> got_rev = scheduler_order(kTask, reversed);
  for (size_t i = 0; i < 4; i++) assert_string_equal(reversed[got_rev[i]].c_str(), s[got[i]].c_str());
  // Duplicates tie and fall back to list order.
  assert_true(scheduler_order(kTask, {"x", "x"}) == (std::vector<size_t>{0, 1}));
}

void test_scheduler_removal_moves_only_its_tasks(void**) {
  const std::vector<std::string> three = {"sched-a:9000", "sched-b:9000", "sched-c:9000"};
  for (size_t removed = 0; removed < three.size(); removed++) {
    std::vector<std::string> two;
    for (size_t i = 0; i < three.size(); i++) {
      if (i != removed) two.push_back(three[i]);
    }
    int first_counts[3] = {0, 0, 0};
    int moved = 0;
    for (int t = 0; t < 1000; t++) {
      const std::string id = task_id(t);
      const std::vector<size_t> before = scheduler_order(id, three);
      const std::vector<size_t> after = scheduler_order(id, two);
      assert_int_equal(before.size(), 3);
      assert_int_equal(after.size(), 2);
      first_counts[before[0]]++;
      // Removing one scheduler keeps the others' relative order; in
      // particular a task whose first was not the removed one stays put.
      std::vector<std::string> before_left;
      for (size_t i : before) {
        if (i != removed) before_left.push_back(three[i]);
      }
      assert_string_equal(two[after[0]].c_str(), before_left[0].c_str());
      assert_string_equal(two[after[1]].c_str(), before_left[1].c_str());
      if (before[0] == removed) {
        moved++;
        assert_string_equal(two[after[0]].c_str(), three[before[1]].c_str());
      } else {
        assert_string_equal(two[after[0]].c_str(), three[before[0]].c_str());
      }
    }
    // Roughly a third each (the expected 333 +- 5 sigma).
    for (int c : first_counts) assert_true(c > 250 && c < 420);
    assert_int_equal(moved, first_counts[removed]);
  }
}

}  // namespace

int run_protocol_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bitmap_bits),
      cmocka_unit_test(test_bitmap_from_hex_refuses),
      cmocka_unit_test(test_round_trip_register),
      cmocka_unit_test(test_round_trip_announce),
      cmocka_unit_test(test_round_trip_parents),
      cmocka_unit_test(test_round_trip_result),
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_body),
      cmocka_unit_test(test_unknown_fields_ignored),
      cmocka_unit_test(test_refuse_register),
      cmocka_unit_test(test_refuse_announce),
      cmocka_unit_test(test_refuse_parents_req),
      cmocka_unit_test(test_refuse_parents_resp),
      cmocka_unit_test(test_refuse_result),
      cmocka_unit_test(test_valid_peer_id_and_addr),
      cmocka_unit_test(test_scheduler_order),
      cmocka_unit_test(test_scheduler_removal_moves_only_its_tasks),
  };
  return cmocka_run_group_tests_name("p2p protocol", tests, nullptr, nullptr);
}
