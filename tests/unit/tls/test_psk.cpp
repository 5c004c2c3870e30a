// Pre-shared-key sessions (ServerConfig::psk, ClientConfig::psk) end to end
// in memory: the one DHE-PSK suite, data both ways on the libcrypto record
// layer, and the refusals (wrong key, wrong identity, a certificate-only
// peer, bad arguments).
#include <mbedtls/ssl.h>

#include <cstring>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {

const std::string kKey = "0123456789abcdef0123456789abcdef";  // 32 bytes
const std::string kIdentity = "shoal-p2p-v1";

#define assert_status(got, want) assert_int_equal(static_cast<int>(got), static_cast<int>(Status::want))

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 29 + (i >> 9));
  return v;
}

void send_and_check(Session* from, Session* to, const std::vector<uint8_t>& msg) {
  assert_status(from->write(msg.data(), msg.size()), Ok);
  transfer(from, to);
  Status last = Status::Ok;
  std::vector<uint8_t> got = drain(to, &last);
  assert_status(last, WantRead);
  assert_int_equal(got.size(), msg.size());
  assert_true(got == msg);
  assert_int_equal(to->pending_input(), 0);
}

struct Pair {
  Rng rng;
  std::unique_ptr<ServerConfig> server_cfg;
  std::unique_ptr<ClientConfig> client_cfg;
  Pair(const std::string& server_key, const std::string& client_key,
       const std::string& client_identity = kIdentity) {
    std::string err;
    server_cfg = ServerConfig::psk(&rng, server_key, kIdentity, &err);
    if (server_cfg == nullptr) fail_msg("server psk config: %s", err.c_str());
    client_cfg = ClientConfig::psk(&rng, client_key, client_identity, &err);
    if (client_cfg == nullptr) fail_msg("client psk config: %s", err.c_str());
  }
};

void exchange(bool flaky, bool one_byte) {
  Pair p(kKey, kKey);
  assert_true(p.server_cfg->is_psk());
  assert_true(p.client_cfg->is_psk());
  auto srv = Session::server(p.server_cfg.get());
  auto cli = Session::client(p.client_cfg.get());
  assert_non_null(srv.get());
  assert_non_null(cli.get());
  srv->set_flaky_bio_for_test(flaky);
  cli->set_flaky_bio_for_test(flaky);
  if (!pump_handshake(cli.get(), srv.get(), one_byte))
    fail_msg("handshake: client \"%s\" server \"%s\"", cli->error_string().c_str(),
             srv->error_string().c_str());
  assert_true(cli->handshake_done());
  assert_true(srv->handshake_done());
  assert_string_equal(cli->ciphersuite().c_str(), kPskSuiteName);
  assert_string_equal(srv->ciphersuite().c_str(), kPskSuiteName);

  // The libcrypto layer protects every record from here on: mbedTLS's
  // context has been released on both sides.
  assert_true(cli->fast_records());
  assert_true(srv->fast_records());
  assert_non_null(cli->record_layer_for_test());
  assert_non_null(srv->record_layer_for_test());
  assert_string_equal(cli->record_layer_name(), "libcrypto");
  assert_string_equal(srv->record_layer_name(), "libcrypto");
  assert_null(cli->ssl_for_test()->session);
  assert_null(srv->ssl_for_test()->session);

  send_and_check(cli.get(), srv.get(), pattern(300, 1));
  send_and_check(srv.get(), cli.get(), pattern(5000, 2));
  // Several records both ways.
  send_and_check(srv.get(), cli.get(), pattern(100000, 3));
  send_and_check(cli.get(), srv.get(), pattern(70000, 4));

  srv->close_notify();
  transfer(srv.get(), cli.get());
  uint8_t buf[64];
  size_t n = 0;
  assert_status(cli->read(buf, sizeof buf, &n), Closed);
}

void test_psk_handshake_and_data(void**) { exchange(false, false); }

void test_psk_resume_paths(void**) { exchange(true, true); }

// A client holding another key gets through the key exchange but not past
// the Finished messages: both sides fail, neither reaches application data.
void test_psk_wrong_key(void**) {
  Pair p(kKey, "fedcba9876543210fedcba9876543210");
  auto srv = Session::server(p.server_cfg.get());
  auto cli = Session::client(p.client_cfg.get());
  assert_false(pump_handshake(cli.get(), srv.get()));
  // The server cannot open the client's Finished (keys from another PSK)
  // and sends bad_record_mac, which fails the client's handshake.
  assert_int_equal(srv->last_mbedtls_error(), MBEDTLS_ERR_SSL_INVALID_MAC);
  assert_false(srv->handshake_done());
  assert_status(cli->handshake(), Error);
  assert_string_equal(cli->error_string().c_str(), "handshake: peer sent fatal alert 20 (bad_record_mac)");
  assert_false(cli->handshake_done());
  uint8_t b = 'x';
  assert_status(cli->write(&b, 1), Error);
}

void test_psk_wrong_identity(void**) {
  Pair p(kKey, kKey, "someone-else");
  auto srv = Session::server(p.server_cfg.get());
  auto cli = Session::client(p.client_cfg.get());
  assert_false(pump_handshake(cli.get(), srv.get()));
  assert_int_equal(srv->last_mbedtls_error(), MBEDTLS_ERR_SSL_UNKNOWN_IDENTITY);
  assert_status(cli->handshake(), Error);
}

// Certificate configurations and PSK ones share no suite.
void test_psk_against_certificate_peer(void**) {
  Pair p(kKey, kKey);
  Endpoints ep(pki().ca_crt);
  std::string err;
  auto leaf = ca().mint("peer.example.com", &err);
  assert_non_null(leaf.get());
  auto srv = Session::server(ep.server_cfg.get(), leaf);
  auto cli = Session::client(p.client_cfg.get());
  assert_false(pump_handshake(cli.get(), srv.get()));
  auto srv2 = Session::server(p.server_cfg.get());
  auto cli2 = Session::client(ep.client_cfg.get(), "peer.example.com");
  assert_false(pump_handshake(cli2.get(), srv2.get()));
}

void test_psk_arguments(void**) {
  Rng rng;
  std::string err;
  assert_null(ServerConfig::psk(&rng, "", kIdentity, &err).get());
  assert_true(err.find("PSK of 0 bytes") != std::string::npos);
  assert_null(ClientConfig::psk(&rng, std::string(33, 'k'), kIdentity, &err).get());
  assert_true(err.find("PSK of 33 bytes") != std::string::npos);
  assert_null(ClientConfig::psk(&rng, kKey, "", &err).get());
  assert_true(err.find("identity") != std::string::npos);
  // The PSK factories of Session refuse certificate configurations, and
  // certificate configurations are not PSK ones.
  Endpoints ep(pki().ca_crt);
  assert_false(ep.server_cfg->is_psk());
  assert_false(ep.client_cfg->is_psk());
  assert_null(Session::server(ep.server_cfg.get()).get());
  assert_null(Session::client(ep.client_cfg.get()).get());
}

}  // namespace

int run_psk_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_psk_handshake_and_data),
      cmocka_unit_test(test_psk_resume_paths),
      cmocka_unit_test(test_psk_wrong_key),
      cmocka_unit_test(test_psk_wrong_identity),
      cmocka_unit_test(test_psk_against_certificate_peer),
      cmocka_unit_test(test_psk_arguments),
  };
  return cmocka_run_group_tests_name("tls/psk", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
