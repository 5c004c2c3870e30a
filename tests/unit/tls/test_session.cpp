// Sessions end to end in memory: a server Session presenting a minted leaf
// and a client Session trusting (or not) the test CA, bytes shuttled by hand.
#include <mbedtls/ssl.h>
#include <sys/stat.h>

#include <cstring>
#include <numeric>

#include "shoal/tls/client_hello.h"
#include "tls_test.h"

namespace shoal::tls::test {

namespace {

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

#define assert_contains(hay, needle)                                                                \
  do {                                                                                              \
    if (!contains(hay, needle))                                                                     \
      fail_msg("missing \"%s\" in: %.400s", std::string(needle).c_str(), std::string(hay).c_str()); \
  } while (0)

#define assert_status(got, want) assert_int_equal(static_cast<int>(got), static_cast<int>(Status::want))

std::shared_ptr<const Leaf> leaf_for(const std::string& name) {
  std::string err;
  auto leaf = ca().mint(name, &err);
  if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
  return leaf;
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 8));
  return v;
}

// Writes msg on from, delivers it to to, and checks it arrives intact.
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

void full_exchange(bool flaky, bool one_byte) {
  Endpoints ep(pki().ca_crt);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "registry.example.com");
  assert_non_null(srv.get());
  assert_non_null(cli.get());
  srv->set_flaky_bio_for_test(flaky);
  cli->set_flaky_bio_for_test(flaky);
  if (!pump_handshake(cli.get(), srv.get(), one_byte))
    fail_msg("handshake: client \"%s\" server \"%s\"", cli->error_string().c_str(),
             srv->error_string().c_str());
  assert_true(cli->handshake_done());
  assert_true(srv->handshake_done());
  assert_string_equal(cli->alpn().c_str(), "http/1.1");
  assert_string_equal(srv->alpn().c_str(), "http/1.1");
  assert_string_equal(cli->ciphersuite().c_str(), "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
  assert_string_equal(cli->verify_info().c_str(), "");

  send_and_check(cli.get(), srv.get(), pattern(100, 1));
  send_and_check(srv.get(), cli.get(), pattern(5000, 2));
  // Several records' worth, fed one byte at a time when asked to.
  std::vector<uint8_t> big = pattern(200000, 3);
  assert_status(srv->write(big.data(), big.size()), Ok);
  std::vector<uint8_t> wire = std::move(srv->output());
  srv->output().clear();
  std::vector<uint8_t> got;
  uint8_t buf[16384];
  size_t step = one_byte ? 1 : 777;
  for (size_t off = 0; off < wire.size(); off += step) {
    cli->feed(wire.data() + off, std::min(step, wire.size() - off));
    for (;;) {
      size_t n = 0;
      Status st = cli->read(buf, sizeof buf, &n);
      if (st == Status::WantRead) break;
      assert_status(st, Ok);
      got.insert(got.end(), buf, buf + n);
    }
    // Only a partial record may wait (fast records open where fed).
    assert_true(cli->pending_input() < RecordLayer::kOverhead + RecordLayer::kMaxPlain);
  }
  assert_int_equal(cli->pending_input(), 0);
  assert_true(got == big);

  // close_notify from the client; the server sees Closed.
  cli->close_notify();
  size_t alert_len = cli->output().size();
  assert_true(alert_len > 0);
  cli->close_notify();  // no second alert
  assert_int_equal(cli->output().size(), alert_len);
  transfer(cli.get(), srv.get());
  size_t n = 0;
  assert_status(srv->read(buf, sizeof buf, &n), Closed);
  assert_status(cli->write(buf, 1), Closed);
}

void test_handshake_and_data(void**) { full_exchange(false, false); }

void test_resume_paths_flaky_bio(void**) { full_exchange(true, false); }

void test_resume_paths_one_byte(void**) { full_exchange(true, true); }

void test_untrusted_ca(void**) {
  Endpoints ep(pki().other_ca_crt);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "registry.example.com");
  assert_false(pump_handshake(cli.get(), srv.get()));
  assert_contains(cli->error_string(), "handshake: certificate verification failed: ");
  assert_contains(cli->error_string(), "not correctly signed by the trusted CA");
  assert_contains(cli->verify_info(), "not correctly signed by the trusted CA");
  assert_int_equal(cli->last_mbedtls_error(), MBEDTLS_ERR_X509_CERT_VERIFY_FAILED);
  // The client's alert reaches the server, which fails with its name.
  transfer(cli.get(), srv.get());
  assert_status(srv->handshake(), Error);
  assert_contains(srv->error_string(), "peer sent fatal alert");
}

void test_fqdn_trailing_dot(void**) {
  Endpoints ep(pki().ca_crt);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "registry.example.com.");
  assert_status(cli->handshake(), WantRead);
  ClientHelloInfo info;
  const auto& hello = cli->output();
  assert_int_equal(static_cast<int>(peek_client_hello(hello.data(), hello.size(), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_string_equal(info.sni.c_str(), "registry.example.com");
  assert_true(pump_handshake(cli.get(), srv.get()));
}

void test_hostname_mismatch(void**) {
  Endpoints ep(pki().ca_crt);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "other.example.com");
  assert_false(pump_handshake(cli.get(), srv.get()));
  assert_contains(cli->error_string(), "certificate verification failed");
  assert_contains(cli->error_string(), "Common Name (CN) does not match");
}

void test_insecure_skips_verification(void**) {
  Endpoints ep(pki().other_ca_crt, /*insecure=*/true);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "other.example.com");
  assert_true(pump_handshake(cli.get(), srv.get()));
}

void test_alpn_h2_and_http11(void**) {
  Endpoints ep(pki().ca_crt);
  const char* protos[] = {"h2", "http/1.1", nullptr};
  mbedtls_ssl_conf_alpn_protocols(ep.client_cfg->conf(), protos);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "registry.example.com");
  assert_true(pump_handshake(cli.get(), srv.get()));
  assert_string_equal(srv->alpn().c_str(), "http/1.1");
  assert_string_equal(cli->alpn().c_str(), "http/1.1");
}

void test_ip_literals_no_sni(void**) {
  // The client sends no SNI for an IP literal: the server must still present
  // its leaf, and the client must check the iPAddress SAN itself.
  for (const char* host : {"127.0.0.1", "::1", "[::1]"}) {
    Endpoints ep(pki().ca_crt);
    auto srv = Session::server(ep.server_cfg.get(), leaf_for(host));
    auto cli = Session::client(ep.client_cfg.get(), host);
    assert_status(cli->handshake(), WantRead);
    ClientHelloInfo info;
    const auto& hello = cli->output();
    assert_int_equal(static_cast<int>(peek_client_hello(hello.data(), hello.size(), &info)),
                     static_cast<int>(PeekStatus::Ok));
    assert_true(info.sni.empty());
    if (!pump_handshake(cli.get(), srv.get()))
      fail_msg("%s: client \"%s\" server \"%s\"", host, cli->error_string().c_str(),
               srv->error_string().c_str());
    send_and_check(cli.get(), srv.get(), pattern(10, 4));
  }
  // A leaf for another address fails, with mbedTLS's name-mismatch text.
  Endpoints ep(pki().ca_crt);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("127.0.0.1"));
  auto cli = Session::client(ep.client_cfg.get(), "127.0.0.2");
  assert_false(pump_handshake(cli.get(), srv.get()));
  assert_contains(cli->error_string(), "Common Name (CN) does not match");
  // A DNS leaf does not satisfy an IP origin either.
  auto srv2 = Session::server(ep.server_cfg.get(), leaf_for("localhost"));
  auto cli2 = Session::client(ep.client_cfg.get(), "127.0.0.1");
  assert_false(pump_handshake(cli2.get(), srv2.get()));
  assert_contains(cli2->error_string(), "certificate verification failed");
}

void test_server_ignores_sni(void**) {
  // A client that sends SNI for a different name still gets the session's
  // leaf (the proxy chose it); only the client's own check decides.
  Endpoints ep("", /*insecure=*/true);
  auto srv = Session::server(ep.server_cfg.get(), leaf_for("registry.example.com"));
  auto cli = Session::client(ep.client_cfg.get(), "unrelated.example.org");
  assert_true(pump_handshake(cli.get(), srv.get()));
}

void test_tls13_only_origin(void**) {
  Endpoints ep(pki().ca_crt);
  auto cli = Session::client(ep.client_cfg.get(), "modern.example.com");
  assert_status(cli->handshake(), WantRead);
  cli->output().clear();
  // What OpenSSL/Go servers limited to TLS 1.3 answer a 1.2-only hello with:
  // a fatal protocol_version alert.
  const uint8_t alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46};
  cli->feed(alert, sizeof alert);
  assert_status(cli->handshake(), Error);
  assert_string_equal(cli->error_string().c_str(),
                      "handshake: origin supports only TLS 1.3 (mbedTLS 2.28 speaks TLS 1.2)");
  // Another alert is named, not mistaken for the version problem.
  auto cli2 = Session::client(ep.client_cfg.get(), "modern.example.com");
  assert_status(cli2->handshake(), WantRead);
  const uint8_t hf[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
  cli2->feed(hf, sizeof hf);
  assert_status(cli2->handshake(), Error);
  assert_string_equal(cli2->error_string().c_str(),
                      "handshake: peer sent fatal alert 40 (handshake_failure)");
}

void test_misuse(void**) {
  Endpoints ep(pki().ca_crt);
  assert_null(Session::server(ep.server_cfg.get(), nullptr).get());
  auto cli = Session::client(ep.client_cfg.get(), "registry.example.com");
  uint8_t b[16] = {};
  assert_status(cli->write(b, sizeof b), Error);
  assert_contains(cli->error_string(), "handshake not complete");
  // Garbage from the "server" is an error, not a hang.
  assert_status(cli->handshake(), WantRead);
  const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
  cli->feed(reinterpret_cast<const uint8_t*>(junk), sizeof junk - 1);
  assert_status(cli->handshake(), Error);
  assert_false(cli->error_string().empty());
  // close_notify before a handshake sends nothing.
  auto cli2 = Session::client(ep.client_cfg.get(), "registry.example.com");
  cli2->close_notify();
  assert_true(cli2->output().empty());
}

void test_trust_store(void**) {
  TrustStore ts;
  std::string err;
  assert_true(ts.add(pki().ca_crt, &err));
  assert_int_equal(ts.count(), 1);
  assert_true(ts.add(pki().ca_der, &err));
  assert_int_equal(ts.count(), 2);
  const std::string missing = pki().dir + "/missing.pem";
  assert_false(ts.add(missing, &err));
  assert_string_equal(err.c_str(), (missing + ": No such file or directory").c_str());
  assert_false(ts.add(pki().dir + "/openssl.cnf", &err));
  assert_contains(err, pki().dir + "/openssl.cnf: ");
  // A directory: every certificate file in it (the keys and configs fail).
  std::string sub = pki().dir + "/anchors";
  assert_int_equal(run("mkdir -p " + sub + " && cp " + pki().ca_crt + " " + pki().other_ca_crt + " " + sub),
                   0);
  TrustStore dir;
  assert_true(dir.add(sub, &err));
  assert_int_equal(dir.count(), 2);
  std::string empty = pki().dir + "/empty";
  assert_int_equal(run("mkdir -p " + empty), 0);
  assert_false(dir.add(empty, &err));
  assert_contains(err, empty + ": ");
  struct stat st {};
  if (stat("/etc/ssl/certs/ca-certificates.crt", &st) == 0) {
    TrustStore sys;
    assert_true(sys.add_system(&err));
    assert_true(sys.count() > 50);
  }
}

}  // namespace

int run_session_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handshake_and_data),
      cmocka_unit_test(test_resume_paths_flaky_bio),
      cmocka_unit_test(test_resume_paths_one_byte),
      cmocka_unit_test(test_untrusted_ca),
      cmocka_unit_test(test_fqdn_trailing_dot),
      cmocka_unit_test(test_hostname_mismatch),
      cmocka_unit_test(test_insecure_skips_verification),
      cmocka_unit_test(test_alpn_h2_and_http11),
      cmocka_unit_test(test_ip_literals_no_sni),
      cmocka_unit_test(test_server_ignores_sni),
      cmocka_unit_test(test_tls13_only_origin),
      cmocka_unit_test(test_misuse),
      cmocka_unit_test(test_trust_store),
  };
  return cmocka_run_group_tests_name("tls/session", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
