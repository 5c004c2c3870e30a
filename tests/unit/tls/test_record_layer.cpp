// The fast record layer against mbedTLS's own record layer as the oracle:
// one side of each pair switches to libcrypto records after the handshake,
// the other stays on mbedTLS, so every record one seals the other must open
// (and every tampered record must be refused with the right alert).
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>

#include <cstring>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {

#define assert_status(got, want) assert_int_equal(static_cast<int>(got), static_cast<int>(Status::want))

void assert_has(const std::string& hay, const std::string& needle) {
  if (hay.find(needle) == std::string::npos)
    fail_msg("missing \"%s\" in: %.400s", needle.c_str(), hay.c_str());
}

constexpr int kAes128 = MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
constexpr int kAes256 = MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
constexpr int kChaCha = MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed ^ (i * 7 + (i >> 9)));
  return v;
}

// A handshaken pair with fast records on either side as asked.
struct Pair {
  Rng rng;
  TrustStore trust;
  std::unique_ptr<ServerConfig> scfg;
  std::unique_ptr<ClientConfig> ccfg;
  std::unique_ptr<Session> srv, cli;

  Pair(bool server_fast, bool client_fast, int suite, bool renegotiating_client = false) {
    std::string err;
    if (!trust.add(pki().ca_crt, &err)) fail_msg("trust: %s", err.c_str());
    scfg = std::make_unique<ServerConfig>(&rng, server_fast);
    ccfg = std::make_unique<ClientConfig>(&rng, &trust, false, client_fast);
    if (suite != 0) {
      scfg->set_ciphersuite_for_test(suite);
      ccfg->set_ciphersuite_for_test(suite);
    }
    if (renegotiating_client) ccfg->allow_renegotiation_for_test();
    auto leaf = ca().mint("registry.example.com", &err);
    if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
    srv = Session::server(scfg.get(), leaf);
    cli = Session::client(ccfg.get(), "registry.example.com");
    assert_non_null(srv.get());
    assert_non_null(cli.get());
    if (!pump_handshake(cli.get(), srv.get()))
      fail_msg("handshake: client \"%s\" server \"%s\"", cli->error_string().c_str(),
               srv->error_string().c_str());
    assert_int_equal(srv->fast_records(), server_fast && suite != kChaCha);
    assert_int_equal(cli->fast_records(), client_fast && suite != kChaCha);
  }
};

// Sends msg from one side to the other in pieces of `step` wire bytes and
// checks it arrives whole.
void deliver(Session* from, Session* to, const std::vector<uint8_t>& msg, size_t step) {
  assert_status(from->write(msg.data(), msg.size()), Ok);
  std::vector<uint8_t> wire = std::move(from->output());
  from->output().clear();
  std::vector<uint8_t> got;
  uint8_t buf[20000];
  for (size_t off = 0; off < wire.size(); off += step) {
    to->feed(wire.data() + off, std::min(step, wire.size() - off));
    for (;;) {
      size_t n = 0;
      // Alternate a small and a large buffer: records that do not fit are
      // handed out in parts.
      size_t cap = (got.size() & 1) != 0 ? 1000 : sizeof buf;
      Status st = to->read(buf, cap, &n);
      if (st == Status::WantRead) break;
      if (st != Status::Ok) fail_msg("read: %s", to->error_string().c_str());
      got.insert(got.end(), buf, buf + n);
    }
  }
  assert_int_equal(got.size(), msg.size());
  assert_true(got == msg);
}

void interop(bool server_fast, bool client_fast, int suite) {
  Pair p(server_fast, client_fast, suite);
  // Across many sequence numbers, record boundaries and odd feed sizes.
  const size_t sizes[] = {1, 100, 16383, 16384, 16385, 100000, 1 << 20};
  uint8_t seed = 1;
  for (size_t n : sizes) {
    deliver(p.cli.get(), p.srv.get(), pattern(n, seed++), n < 1000 ? 1 : 4093);
    deliver(p.srv.get(), p.cli.get(), pattern(n, seed++), 65536);
  }
  for (int i = 0; i < 300; i++) deliver(p.srv.get(), p.cli.get(), pattern(37, seed++), 1 << 16);
  // close_notify each way.
  p.srv->close_notify();
  transfer(p.srv.get(), p.cli.get());
  uint8_t buf[64];
  size_t n = 0;
  assert_status(p.cli->read(buf, sizeof buf, &n), Closed);
  p.cli->close_notify();
  transfer(p.cli.get(), p.srv.get());
  assert_status(p.srv->read(buf, sizeof buf, &n), Closed);
  assert_status(p.srv->write(buf, 1), Closed);
}

// trim() between messages (a kept-alive connection going idle) gives the
// buffers back and breaks nothing, on either record layer.
void test_trim_between_messages(void**) {
  for (int suite : {kAes128, kChaCha}) {
    Pair p(true, true, suite);
    deliver(p.srv.get(), p.cli.get(), pattern(1 << 20, 7), 1 << 18);
    assert_true(p.cli->buffered_capacity_for_test() > 0);
    p.cli->trim();
    p.srv->trim();
    assert_int_equal(p.cli->buffered_capacity_for_test(), 0);
    assert_int_equal(p.srv->buffered_capacity_for_test(), 0);
    deliver(p.cli.get(), p.srv.get(), pattern(100, 8), 1);
    deliver(p.srv.get(), p.cli.get(), pattern(300000, 9), 65536);
  }
}

void test_fast_server_mbedtls_client_128(void**) { interop(true, false, kAes128); }
void test_fast_server_mbedtls_client_256(void**) { interop(true, false, kAes256); }
void test_mbedtls_server_fast_client_128(void**) { interop(false, true, kAes128); }
void test_mbedtls_server_fast_client_256(void**) { interop(false, true, kAes256); }
void test_fast_both_sides(void**) { interop(true, true, 0); }

void test_chacha_stays_on_mbedtls(void**) {
  Pair p(true, true, kChaCha);
  assert_string_equal(p.srv->record_layer_name(), "mbedtls");
  deliver(p.cli.get(), p.srv.get(), pattern(50000, 9), 999);
}

void test_default_prefers_aes128_gcm(void**) {
  Pair fast(true, true, 0);
  assert_string_equal(fast.srv->ciphersuite().c_str(), "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
  assert_string_equal(fast.srv->record_layer_name(), "libcrypto");
  assert_string_equal(fast.srv->alpn().c_str(), "http/1.1");
  Pair slow(false, false, 0);
  assert_string_equal(slow.srv->ciphersuite().c_str(), "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256");
  assert_string_equal(slow.srv->record_layer_name(), "mbedtls");
}

// Application data that arrives in the same read as the peer's Finished is
// fed to the new layer: here an mbedTLS server writes right behind its
// Finished and the fast client gets both at once.
void test_data_behind_finished(void**) {
  Rng rng;
  TrustStore trust;
  std::string err;
  assert_true(trust.add(pki().ca_crt, &err));
  ServerConfig scfg(&rng, false);
  ClientConfig ccfg(&rng, &trust, false, true);
  scfg.set_ciphersuite_for_test(kAes128);
  auto srv = Session::server(&scfg, ca().mint("registry.example.com", &err));
  auto cli = Session::client(&ccfg, "registry.example.com");
  std::vector<uint8_t> msg = pattern(40000, 5);
  for (int round = 0; round < 20 && !srv->handshake_done(); round++) {
    cli->handshake();
    transfer(cli.get(), srv.get());
    srv->handshake();
    if (srv->handshake_done()) assert_status(srv->write(msg.data(), msg.size()), Ok);
    if (!srv->handshake_done()) transfer(srv.get(), cli.get());
  }
  assert_true(srv->handshake_done());
  assert_false(cli->handshake_done());
  transfer(srv.get(), cli.get());  // CCS, Finished and three data records
  assert_status(cli->handshake(), Ok);
  assert_true(cli->fast_records());
  assert_true(cli->pending_input() > msg.size());
  Status last = Status::Ok;
  std::vector<uint8_t> got = drain(cli.get(), &last);
  assert_status(last, WantRead);
  assert_true(got == msg);
}

// Takes what `from` wrote as one wire buffer.
std::vector<uint8_t> take(Session* from) {
  std::vector<uint8_t> wire = std::move(from->output());
  from->output().clear();
  return wire;
}

// Feeds bad wire bytes to the fast side and checks the error and that the
// mbedTLS side receives the fatal alert it names.
void expect_fatal(Pair& p, Session* fast, Session* peer, const std::vector<uint8_t>& wire,
                  const char* alert) {
  fast->feed(wire.data(), wire.size());
  uint8_t buf[20000];
  size_t n = 0;
  assert_status(fast->read(buf, sizeof buf, &n), Error);
  assert_int_equal(n, 0);
  assert_has(fast->error_string(), alert);
  // Later calls keep failing, writes are refused.
  assert_status(fast->read(buf, sizeof buf, &n), Error);
  assert_true(fast->write(buf, 1) != Status::Ok);
  transfer(fast, peer);
  assert_status(peer->read(buf, sizeof buf, &n), Error);
  assert_has(peer->error_string(), std::string("peer sent fatal alert"));
  assert_has(peer->error_string(), alert);
  (void)p;
}

void test_skipped_record(void**) {
  Pair p(true, false, kAes128);
  uint8_t data[100] = {};
  assert_status(p.cli->write(data, sizeof data), Ok);
  take(p.cli.get());  // dropped: the next record's sequence number is wrong
  assert_status(p.cli->write(data, sizeof data), Ok);
  expect_fatal(p, p.srv.get(), p.cli.get(), take(p.cli.get()), "bad_record_mac");
}

void test_flipped_tag_bit(void**) {
  Pair p(false, true, kAes256);
  uint8_t data[3000] = {};
  assert_status(p.srv->write(data, sizeof data), Ok);
  std::vector<uint8_t> wire = take(p.srv.get());
  wire.back() ^= 0x01;
  expect_fatal(p, p.cli.get(), p.srv.get(), wire, "bad_record_mac");
}

void test_flipped_ciphertext_bit(void**) {
  Pair p(true, false, kAes128);
  uint8_t data[3000] = {};
  assert_status(p.cli->write(data, sizeof data), Ok);
  std::vector<uint8_t> wire = take(p.cli.get());
  wire[RecordLayer::kHeader + RecordLayer::kExplicitNonce + 10] ^= 0x80;
  expect_fatal(p, p.srv.get(), p.cli.get(), wire, "bad_record_mac");
}

void test_truncated_record(void**) {
  // A record whose length field was cut by one byte (and its last byte
  // dropped) no longer authenticates.
  Pair p(true, false, kAes128);
  uint8_t data[500] = {};
  assert_status(p.cli->write(data, sizeof data), Ok);
  std::vector<uint8_t> wire = take(p.cli.get());
  size_t len = (static_cast<size_t>(wire[3]) << 8 | wire[4]) - 1;
  wire[3] = static_cast<uint8_t>(len >> 8);
  wire[4] = static_cast<uint8_t>(len);
  wire.pop_back();
  expect_fatal(p, p.srv.get(), p.cli.get(), wire, "bad_record_mac");
}

void test_record_shorter_than_nonce_and_tag(void**) {
  Pair p(true, false, kAes128);
  std::vector<uint8_t> wire = {23, 3, 3, 0, 10};
  wire.resize(wire.size() + 10);
  expect_fatal(p, p.srv.get(), p.cli.get(), wire, "bad_record_mac");
}

void test_wrong_version(void**) {
  Pair p(true, false, kAes128);
  uint8_t data[10] = {};
  assert_status(p.cli->write(data, sizeof data), Ok);
  std::vector<uint8_t> wire = take(p.cli.get());
  wire[2] = 1;  // TLS 1.0
  expect_fatal(p, p.srv.get(), p.cli.get(), wire, "protocol_version");
}

void test_oversized_record(void**) {
  // Refused from the header alone, before the body arrives.
  Pair p(false, true, kAes128);
  const size_t len = RecordLayer::kMaxPlain + RecordLayer::kExplicitNonce + RecordLayer::kTag + 1;
  std::vector<uint8_t> wire = {23, 3, 3, static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len)};
  expect_fatal(p, p.cli.get(), p.srv.get(), wire, "record_overflow");
}

void test_unknown_content_type(void**) {
  Pair p(true, false, kAes128);
  std::vector<uint8_t> wire = {99, 3, 3, 0, 30};
  wire.resize(35);
  expect_fatal(p, p.srv.get(), p.cli.get(), wire, "unexpected_message");
}

void test_too_many_empty_records(void**) {
  Pair p(true, false, kAes128);
  mbedtls_ssl_context* ssl = p.cli->ssl_for_test();
  uint8_t none[1] = {};
  // Three empty records are tolerated (as mbedTLS does), a fourth is not.
  for (int i = 0; i < 3; i++) assert_int_equal(mbedtls_ssl_write(ssl, none, 0), 0);
  transfer(p.cli.get(), p.srv.get());
  uint8_t buf[100];
  size_t n = 0;
  assert_status(p.srv->read(buf, sizeof buf, &n), WantRead);
  for (int i = 0; i < 2; i++) assert_int_equal(mbedtls_ssl_write(ssl, none, 0), 0);
  expect_fatal(p, p.srv.get(), p.cli.get(), take(p.cli.get()), "unexpected_message");
}

void test_renegotiation_refused(void**) {
  Pair p(true, false, kAes128, true);
  mbedtls_ssl_context* ssl = p.cli->ssl_for_test();
  // The mbedTLS client sends an encrypted ClientHello.
  int ret = mbedtls_ssl_renegotiate(ssl);
  assert_true(ret == MBEDTLS_ERR_SSL_WANT_READ || ret == 0);
  transfer(p.cli.get(), p.srv.get());
  uint8_t buf[100];
  size_t n = 0;
  assert_status(p.srv->read(buf, sizeof buf, &n), WantRead);
  // One warning alert record back: 2 bytes sealed.
  std::vector<uint8_t> wire = take(p.srv.get());
  assert_int_equal(wire.size(), RecordLayer::kOverhead + 2);
  assert_int_equal(wire[0], 21);
  p.cli->feed(wire.data(), wire.size());
  // mbedTLS opens it (a bad record would be a fatal error) and reads
  // warning no_renegotiation, which it then ignores.
  ret = mbedtls_ssl_read(ssl, buf, sizeof buf);
  assert_int_equal(ret, MBEDTLS_ERR_SSL_WANT_READ);
  assert_int_equal(ssl->in_msgtype, MBEDTLS_SSL_MSG_ALERT);
  assert_int_equal(ssl->in_msg[0], MBEDTLS_SSL_ALERT_LEVEL_WARNING);
  assert_int_equal(ssl->in_msg[1], MBEDTLS_SSL_ALERT_MSG_NO_RENEGOTIATION);
  // The server is still usable.
  std::vector<uint8_t> msg = pattern(1000, 3);
  assert_status(p.srv->write(msg.data(), msg.size()), Ok);
  assert_true(!p.srv->output().empty());
}

void test_fatal_alert_from_peer(void**) {
  Pair p(true, false, kAes128);
  mbedtls_ssl_context* ssl = p.cli->ssl_for_test();
  assert_int_equal(
      mbedtls_ssl_send_alert_message(ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL, MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED),
      0);
  transfer(p.cli.get(), p.srv.get());
  uint8_t buf[100];
  size_t n = 0;
  assert_status(p.srv->read(buf, sizeof buf, &n), Error);
  assert_has(p.srv->error_string(), "peer sent fatal alert 49 (access_denied)");
  assert_true(p.srv->output().empty());  // no alert answers a fatal alert
}

void test_warning_alert_from_peer_is_skipped(void**) {
  Pair p(true, false, kAes128);
  mbedtls_ssl_context* ssl = p.cli->ssl_for_test();
  assert_int_equal(mbedtls_ssl_send_alert_message(ssl, MBEDTLS_SSL_ALERT_LEVEL_WARNING, 90), 0);
  std::vector<uint8_t> msg = pattern(5000, 8);
  assert_status(p.cli->write(msg.data(), msg.size()), Ok);
  transfer(p.cli.get(), p.srv.get());
  Status last = Status::Ok;
  std::vector<uint8_t> got = drain(p.srv.get(), &last);
  assert_status(last, WantRead);
  assert_true(got == msg);
}

// RecordLayer alone, with keys chosen by the test.
RecordKeys mirrored(const RecordKeys& k) {
  RecordKeys m = k;
  std::memcpy(m.write_key, k.read_key, sizeof m.write_key);
  std::memcpy(m.read_key, k.write_key, sizeof m.read_key);
  std::memcpy(m.write_iv, k.read_iv, sizeof m.write_iv);
  std::memcpy(m.read_iv, k.write_iv, sizeof m.read_iv);
  m.write_seq = k.read_seq;
  m.read_seq = k.write_seq;
  return m;
}

RecordKeys test_keys(size_t key_len) {
  RecordKeys k;
  k.key_len = key_len;
  for (size_t i = 0; i < 32; i++) {
    k.write_key[i] = static_cast<uint8_t>(i);
    k.read_key[i] = static_cast<uint8_t>(0x80 + i);
  }
  std::memcpy(k.write_iv, "\x01\x02\x03\x04", 4);
  std::memcpy(k.read_iv, "\x05\x06\x07\x08", 4);
  k.write_seq = 7;
  k.read_seq = 1000;
  return k;
}

void test_layer_in_place_and_to_dst(void**) {
  std::string err;
  RecordKeys k = test_keys(32);
  auto a = RecordLayer::create(k, &err);
  auto b = RecordLayer::create(mirrored(k), &err);
  assert_non_null(a.get());
  assert_non_null(b.get());
  std::vector<uint8_t> msg = pattern(40000, 4), wire;
  assert_true(a->seal(ContentType::ApplicationData, msg.data(), msg.size(), &wire));
  assert_int_equal(wire.size(), msg.size() + 3 * RecordLayer::kOverhead);
  assert_int_equal(a->write_seq(), 10);
  std::vector<uint8_t> got;
  std::vector<uint8_t> dst(RecordLayer::kMaxPlain);
  size_t off = 0;
  for (int i = 0; off < wire.size(); i++) {
    RecordLayer::Record rec;
    // Odd records go to dst, even ones are opened in place (dst too small).
    size_t cap = (i % 2) != 0 ? dst.size() : 10;
    assert_int_equal(static_cast<int>(b->open(wire.data() + off, wire.size() - off, dst.data(), cap, &rec)),
                     static_cast<int>(RecordLayer::Result::Ok));
    assert_int_equal(rec.type, 23);
    assert_true((rec.plain == dst.data()) == ((i % 2) != 0));
    got.insert(got.end(), rec.plain, rec.plain + rec.len);
    off += rec.consumed;
  }
  assert_true(got == msg);
  // A partial record is NeedMore.
  wire.clear();
  assert_true(a->seal(ContentType::ApplicationData, msg.data(), 100, &wire));
  RecordLayer::Record rec;
  for (size_t n = 0; n < wire.size(); n++)
    assert_int_equal(static_cast<int>(b->open(wire.data(), n, nullptr, 0, &rec)),
                     static_cast<int>(RecordLayer::Result::NeedMore));
}

void test_layer_sequence_exhausted(void**) {
  std::string err;
  RecordKeys k = test_keys(16);
  k.write_seq = UINT64_MAX - 1;
  auto a = RecordLayer::create(k, &err);
  auto b = RecordLayer::create(mirrored(k), &err);
  std::vector<uint8_t> wire;
  uint8_t byte = 'x';
  assert_true(a->seal(ContentType::ApplicationData, &byte, 1, &wire));
  RecordLayer::Record rec;
  assert_int_equal(static_cast<int>(b->open(wire.data(), wire.size(), nullptr, 0, &rec)),
                   static_cast<int>(RecordLayer::Result::Ok));
  size_t before = wire.size();
  // The last sequence number is never used: no nonce can repeat.
  assert_false(a->seal(ContentType::ApplicationData, &byte, 1, &wire));
  assert_int_equal(wire.size(), before);
  assert_has(a->error(), "sequence number exhausted");
  assert_false(a->seal(ContentType::ApplicationData, &byte, 1, &wire));
}

void test_layer_bad_key_length(void**) {
  std::string err;
  RecordKeys k = test_keys(24);
  assert_null(RecordLayer::create(k, &err).get());
  assert_has(err, "unsupported key length 24");
}

}  // namespace

int run_record_layer_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_trim_between_messages),
      cmocka_unit_test(test_fast_server_mbedtls_client_128),
      cmocka_unit_test(test_fast_server_mbedtls_client_256),
      cmocka_unit_test(test_mbedtls_server_fast_client_128),
      cmocka_unit_test(test_mbedtls_server_fast_client_256),
      cmocka_unit_test(test_fast_both_sides),
      cmocka_unit_test(test_chacha_stays_on_mbedtls),
      cmocka_unit_test(test_default_prefers_aes128_gcm),
      cmocka_unit_test(test_data_behind_finished),
      cmocka_unit_test(test_skipped_record),
      cmocka_unit_test(test_flipped_tag_bit),
      cmocka_unit_test(test_flipped_ciphertext_bit),
      cmocka_unit_test(test_truncated_record),
      cmocka_unit_test(test_record_shorter_than_nonce_and_tag),
      cmocka_unit_test(test_wrong_version),
      cmocka_unit_test(test_oversized_record),
      cmocka_unit_test(test_unknown_content_type),
      cmocka_unit_test(test_too_many_empty_records),
      cmocka_unit_test(test_renegotiation_refused),
      cmocka_unit_test(test_fatal_alert_from_peer),
      cmocka_unit_test(test_warning_alert_from_peer_is_skipped),
      cmocka_unit_test(test_layer_in_place_and_to_dst),
      cmocka_unit_test(test_layer_sequence_exhausted),
      cmocka_unit_test(test_layer_bad_key_length),
  };
  return cmocka_run_group_tests_name("tls/record_layer", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
