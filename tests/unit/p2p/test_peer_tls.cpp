// TLS on peer links (p2p.tls): the key derivation, and an UploadServer with
// the PSK configuration answering HttpCalls on the same real loop — the
// piece over TLS, and the clients that must fail cleanly (plain HTTP to a
// TLS server, TLS to a plain server, another cluster secret).
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../cmocka_cpp.h"
#include "piece_file.h"
#include "shoal/http/http.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/http_call.h"
#include "shoal/p2p/peer_tls.h"
#include "shoal/p2p/upload_server.h"

namespace {

using shoal::p2p::CallResult;
using shoal::p2p::HttpCall;
using shoal::p2p::PeerTls;
using shoal::p2p::PieceRef;
using shoal::p2p::PieceSource;
using shoal::p2p::Signer;
using shoal::p2p::UploadServer;
using shoal::p2p::Verifier;

const char kSecret[] = "0123456789abcdef-peer-tls-secret";
const char kOtherSecret[] = "fedcba9876543210-another-cluster";
const std::string kTask(64, 'b');
// Two pieces: one of many 256 KiB steps and TLS records, one short.
constexpr uint32_t kPiece = 3u << 20;
constexpr uint32_t kLast = 100001;

PieceFile g_file;

class FileSource : public PieceSource {
 public:
  bool open_piece(const std::string& task_id, uint32_t index, PieceRef* out) override {
    if (task_id != kTask || index > 1) return false;
    out->fd = g_file.fd;
    out->offset = uint64_t{index} * kPiece;
    out->length = index == 0 ? kPiece : kLast;
    out->token = index + 1;
    opens++;
    return true;
  }
  void release_piece(const PieceRef&) override { releases++; }
  int opens = 0, releases = 0;
};

std::string piece_request(uint32_t index, const std::string& secret = kSecret) {
  std::string path = "/v1/tasks/" + kTask + "/pieces/" + std::to_string(index);
  auto hs = Signer(secret).sign("GET", path, "", time(nullptr), nullptr);
  hs.push_back({"Host", "peer"});
  hs.push_back({"Connection", "close"});
  return shoal::http::serialize_request_head("GET", path, hs);
}

// One loop holding an upload server (TLS or not) and the calls made to it;
// run() returns when every call is done and the server has closed.
struct Rig {
  explicit Rig(bool server_tls) : verifier(kSecret) {
    assert_int_equal(uv_loop_init(&loop), 0);
    std::string err;
    tls = PeerTls::create(kSecret, &err);
    assert_non_null(tls.get());
    other = PeerTls::create(kOtherSecret, &err);
    assert_non_null(other.get());
    UploadServer::Options o;
    if (server_tls) o.tls = tls->server();
    server = std::make_unique<UploadServer>(&loop, &source, &verifier, o);
    assert_int_equal(server->listen("127.0.0.1", 0, &err), 0);
    addr = "127.0.0.1:" + std::to_string(server->port());
  }

  CallResult* call(const std::string& request, size_t max_body, shoal::tls::ClientConfig* cfg) {
    results.emplace_back(new CallResult);
    CallResult* slot = results.back().get();
    pending++;
    HttpCall::start(
        &loop, addr, request, max_body, 10000, 0,
        [this, slot](CallResult& r) {
          *slot = r;
          if (--pending == 0) server->close([this] { closed = true; });
        },
        cfg);
    return slot;
  }

  void run() {
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(pending, 0);
    assert_true(closed);
    server.reset();
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(source.opens, source.releases);
  }

  uv_loop_t loop{};
  FileSource source;
  Verifier verifier;
  std::unique_ptr<PeerTls> tls, other;
  std::unique_ptr<UploadServer> server;
  std::string addr;
  std::vector<std::unique_ptr<CallResult>> results;
  int pending = 0;
  bool closed = false;
};

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

void test_derive_psk(void**) {
  // HKDF-SHA256(ikm = secret, salt = "shoal-p2p-psk-v1", info = "", L = 32),
  // worked out independently with Python's hmac module.
  assert_string_equal(hex(shoal::p2p::derive_peer_psk("0123456789abcdef-upload-test-secret")).c_str(),
                      "509973de5e0fcd7e9c758b6a64a66f0c9e56f8cf76334ae29ec7959ad0dd5b22");
  assert_int_equal(shoal::p2p::derive_peer_psk(kSecret).size(), shoal::p2p::kPeerPskLen);
  assert_true(shoal::p2p::derive_peer_psk(kSecret) != shoal::p2p::derive_peer_psk(kOtherSecret));
}

void test_pieces_over_tls(void**) {
  Rig rig(true);
  CallResult* a = rig.call(piece_request(0), kPiece, rig.tls->client());
  CallResult* b = rig.call(piece_request(1), kLast, rig.tls->client());
  rig.run();
  if (a->error != 0) fail_msg("piece 0: %s", a->why.c_str());
  if (b->error != 0) fail_msg("piece 1: %s", b->why.c_str());
  assert_int_equal(a->status, 200);
  assert_int_equal(a->body.size(), kPiece);
  assert_true(a->body == g_file.data.substr(0, kPiece));
  assert_int_equal(b->status, 200);
  assert_true(b->body == g_file.data.substr(kPiece, kLast));
  assert_int_equal(rig.source.opens, 2);
}

// Every failure is the call's error, never a status: nobody gets an HTTP
// answer across a TLS mismatch, and no piece is opened.
void test_mismatches_fail_cleanly(void**) {
  {
    Rig rig(true);
    CallResult* plain = rig.call(piece_request(1), kLast, nullptr);
    CallResult* other = rig.call(piece_request(1, kOtherSecret), kLast, rig.other->client());
    rig.run();
    assert_true(plain->error != 0);
    assert_int_equal(plain->status, 0);
    assert_true(other->error != 0);
    assert_int_equal(other->status, 0);
    if (other->why.rfind("TLS handshake: ", 0) != 0) fail_msg("wrong secret: %s", other->why.c_str());
    assert_int_equal(rig.source.opens, 0);
  }
  {
    // A TLS client and a plain server: the server's 400 is no TLS record.
    Rig rig(false);
    CallResult* r = rig.call(piece_request(1), kLast, rig.tls->client());
    CallResult* plain = rig.call(piece_request(1), kLast, nullptr);  // still served
    rig.run();
    assert_true(r->error != 0);
    assert_int_equal(r->status, 0);
    if (r->why.rfind("TLS handshake: ", 0) != 0) fail_msg("plain server: %s", r->why.c_str());
    assert_int_equal(plain->error, 0);
    assert_int_equal(plain->status, 200);
    assert_true(plain->body == g_file.data.substr(kPiece, kLast));
  }
}

// A signed request with the other cluster's signature over a TLS link with
// our key still gets the 403 (TLS adds to the signature, never replaces it).
void test_signature_still_checked(void**) {
  Rig rig(true);
  CallResult* r = rig.call(piece_request(0, kOtherSecret), kPiece, rig.tls->client());
  rig.run();
  assert_int_equal(r->error, 0);
  assert_int_equal(r->status, 403);
  assert_int_equal(rig.source.opens, 0);
}

int setup(void**) { return g_file.make("peer-tls", kPiece + kLast); }

int teardown(void**) {
  g_file.remove();
  return 0;
}

}  // namespace

int run_peer_tls_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_derive_psk),
      cmocka_unit_test(test_pieces_over_tls),
      cmocka_unit_test(test_mismatches_fail_cleanly),
      cmocka_unit_test(test_signature_still_checked),
  };
  return cmocka_run_group_tests_name("p2p peer tls", tests, setup, teardown);
}
