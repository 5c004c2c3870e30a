// Session tickets end to end in memory: a server Session with TicketKeys, an
// mbedTLS client Session (records on mbedTLS, so its context, and with it the
// session to resume, outlives the handshake) that saves its session after a
// full handshake and offers it on the next connection. Each case checks the
// server's verdict (resumed or not), that the abbreviated flight really
// carries no certificate, and that data flows afterwards on both record
// layers.
#include <mbedtls/ssl.h>
#include <unistd.h>

#include <cstring>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {

#define assert_status(got, want) assert_int_equal(static_cast<int>(got), static_cast<int>(Status::want))

std::shared_ptr<const Leaf> leaf_for(const std::string& name) {
  std::string err;
  auto leaf = ca().mint(name, &err);
  if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
  return leaf;
}

std::shared_ptr<TicketKeys> keys(uint32_t lifetime = 3600) {
  std::string err;
  auto k = TicketKeys::create(lifetime, &err);
  if (k == nullptr) fail_msg("TicketKeys: %s", err.c_str());
  return k;
}

// A client-side mbedTLS session saved after a handshake, freed at scope end.
struct Saved {
  mbedtls_ssl_session s;
  Saved() { mbedtls_ssl_session_init(&s); }
  ~Saved() { mbedtls_ssl_session_free(&s); }
  Saved(const Saved&) = delete;
  Saved& operator=(const Saved&) = delete;
};

// Like pump_handshake (whole flights, optionally one byte at a time), and
// counts the bytes the server sent.
bool pump(Session* cli, Session* srv, size_t* server_bytes, bool one_byte = false) {
  std::vector<uint8_t> to_c, to_s;
  *server_bytes = 0;
  for (int i = 0; i < 100000; i++) {
    Status sc = cli->handshake();
    to_s.insert(to_s.end(), cli->output().begin(), cli->output().end());
    cli->output().clear();
    Status ss = srv->handshake();
    *server_bytes += srv->output().size();
    to_c.insert(to_c.end(), srv->output().begin(), srv->output().end());
    srv->output().clear();
    if (sc == Status::Error || ss == Status::Error) return false;
    if (sc == Status::Ok && ss == Status::Ok && to_c.empty() && to_s.empty()) return true;
    size_t nc = one_byte ? std::min<size_t>(1, to_c.size()) : to_c.size();
    size_t ns = one_byte ? std::min<size_t>(1, to_s.size()) : to_s.size();
    if (nc > 0) cli->feed(to_c.data(), nc);
    if (ns > 0) srv->feed(to_s.data(), ns);
    to_c.erase(to_c.begin(), to_c.begin() + static_cast<std::ptrdiff_t>(nc));
    to_s.erase(to_s.begin(), to_s.begin() + static_cast<std::ptrdiff_t>(ns));
    if (nc == 0 && ns == 0 && sc == Status::WantRead && ss == Status::WantRead) return false;
  }
  return false;
}

void send_and_check(Session* from, Session* to, size_t n, uint8_t seed) {
  std::vector<uint8_t> msg(n);
  for (size_t i = 0; i < n; i++) msg[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 10));
  assert_status(from->write(msg.data(), msg.size()), Ok);
  transfer(from, to);
  Status last = Status::Ok;
  std::vector<uint8_t> got = drain(to, &last);
  assert_status(last, WantRead);
  assert_int_equal(got.size(), msg.size());
  assert_true(got == msg);
}

// The rig: one server config (fast records or not) with the given keys, one
// mbedTLS-records client config trusting the test CA.
struct Rig {
  Rng rng;
  TrustStore trust;
  std::unique_ptr<ServerConfig> scfg;
  std::unique_ptr<ClientConfig> ccfg;
  Rig(bool server_fast, std::shared_ptr<TicketKeys> k) {
    std::string err;
    if (!trust.add(pki().ca_crt, &err)) fail_msg("trust: %s", err.c_str());
    scfg = std::make_unique<ServerConfig>(&rng, server_fast);
    if (k != nullptr) scfg->enable_session_tickets(std::move(k));
    ccfg = std::make_unique<ClientConfig>(&rng, &trust, false, /*fast_records=*/false);
  }
};

struct Outcome {
  bool ok = false;
  bool resumed = false;
  bool server_fast = false;
  size_t server_bytes = 0;
};

// One connection: the client names host, the server presents a leaf for
// leaf_name; offers *offer when given and saves the new session into *save
// when given. Data goes both ways after the handshake.
Outcome connect(Rig& rig, const std::string& host, const std::shared_ptr<const Leaf>& leaf,
                const Saved* offer, Saved* save, bool flaky = false) {
  auto srv = Session::server(rig.scfg.get(), leaf);
  auto cli = Session::client(rig.ccfg.get(), host);
  assert_non_null(srv.get());
  assert_non_null(cli.get());
  if (offer != nullptr) assert_int_equal(mbedtls_ssl_set_session(cli->ssl_for_test(), &offer->s), 0);
  srv->set_flaky_bio_for_test(flaky);
  cli->set_flaky_bio_for_test(flaky);
  Outcome o;
  o.ok = pump(cli.get(), srv.get(), &o.server_bytes, flaky);
  if (!o.ok) {
    print_message("handshake: client \"%s\" server \"%s\"\n", cli->error_string().c_str(),
                  srv->error_string().c_str());
    return o;
  }
  o.resumed = srv->resumed();
  o.server_fast = srv->fast_records();
  srv->set_flaky_bio_for_test(false);
  cli->set_flaky_bio_for_test(false);
  send_and_check(cli.get(), srv.get(), 3000, 1);
  send_and_check(srv.get(), cli.get(), 100000, 2);
  if (save != nullptr) assert_int_equal(mbedtls_ssl_get_session(cli->ssl_for_test(), &save->s), 0);
  return o;
}

void resume(bool server_fast, bool flaky) {
  Rig rig(server_fast, keys());
  auto leaf = leaf_for("registry.example.com");
  Saved first;
  Outcome full = connect(rig, "registry.example.com", leaf, nullptr, &first);
  assert_true(full.ok);
  assert_false(full.resumed);
  assert_int_equal(full.server_fast, server_fast);
  assert_true(first.s.ticket_len > 0);  // a NewSessionTicket came
  Saved second;
  Outcome again = connect(rig, "registry.example.com", leaf, &first, &second, flaky);
  assert_true(again.ok);
  assert_true(again.resumed);
  assert_int_equal(again.server_fast, server_fast);
  // The full flight carries the leaf and the CA (over a kilobyte each); the
  // abbreviated one only ServerHello, a fresh ticket, CCS and Finished.
  if (again.server_bytes >= 600 || full.server_bytes < 1500)
    fail_msg("server sent %zu bytes resuming, %zu in full", again.server_bytes, full.server_bytes);
  // The renewed ticket resumes too.
  assert_true(second.s.ticket_len > 0);
  Outcome third = connect(rig, "registry.example.com", leaf, &second, nullptr);
  assert_true(third.ok);
  assert_true(third.resumed);
}

void test_resume_fast_records(void**) { resume(true, false); }

void test_resume_mbedtls_records(void**) { resume(false, false); }

void test_resume_paths_flaky_bio(void**) {
  resume(true, true);
  resume(false, true);
}

void test_other_leaf_does_not_resume(void**) {
  // A ticket earned with registry's leaf, offered to a connection the proxy
  // answers with another host's leaf: a full handshake, which the client
  // verifies against that host as usual.
  Rig rig(true, keys());
  Saved first;
  assert_true(connect(rig, "registry.example.com", leaf_for("registry.example.com"), nullptr, &first).ok);
  Outcome o = connect(rig, "blobs.example.com", leaf_for("blobs.example.com"), &first, nullptr);
  assert_true(o.ok);
  assert_false(o.resumed);
  assert_true(o.server_bytes > 1500);
}

void test_other_keys_do_not_resume(void**) {
  // Tickets of another key set (another daemon, or before a restart) are
  // not authentic here: full handshake.
  Rig a(true, keys());
  Rig b(true, keys());
  auto leaf = leaf_for("registry.example.com");
  Saved first;
  assert_true(connect(a, "registry.example.com", leaf, nullptr, &first).ok);
  Outcome o = connect(b, "registry.example.com", leaf, &first, nullptr);
  assert_true(o.ok);
  assert_false(o.resumed);
}

void test_tampered_ticket_does_not_resume(void**) {
  Rig rig(true, keys());
  auto leaf = leaf_for("registry.example.com");
  for (size_t pos : {size_t{0}, size_t{40}, size_t{~0u}}) {
    Saved first;
    assert_true(connect(rig, "registry.example.com", leaf, nullptr, &first).ok);
    size_t at = pos == size_t{~0u} ? first.s.ticket_len - 1 : pos;  // ~0: the last byte of Shoal's tag
    first.s.ticket[at] ^= 0x01;
    Outcome o = connect(rig, "registry.example.com", leaf, &first, nullptr);
    assert_true(o.ok);
    assert_false(o.resumed);
  }
}

void test_no_tickets_without_keys(void**) {
  Rig rig(true, nullptr);
  auto leaf = leaf_for("registry.example.com");
  Saved first;
  assert_true(connect(rig, "registry.example.com", leaf, nullptr, &first).ok);
  assert_int_equal(first.s.ticket_len, 0);
  // Nor does the session ID resume: there is no cache.
  Outcome o = connect(rig, "registry.example.com", leaf, &first, nullptr);
  assert_true(o.ok);
  assert_false(o.resumed);
}

void test_expired_ticket(void**) {
  Rig rig(true, keys(1));
  auto leaf = leaf_for("registry.example.com");
  Saved first;
  assert_true(connect(rig, "registry.example.com", leaf, nullptr, &first).ok);
  // mbedTLS counts whole seconds: more than one must have passed.
  usleep(2100 * 1000);
  Outcome o = connect(rig, "registry.example.com", leaf, &first, nullptr);
  assert_true(o.ok);
  assert_false(o.resumed);
}

void test_lifetime_limits_and_sharing(void**) {
  std::string err;
  assert_null(TicketKeys::create(0, &err).get());
  assert_true(err.find("1 to 604800") != std::string::npos);
  assert_null(TicketKeys::create(TicketKeys::kMaxTicketLifetime + 1, &err).get());
  auto a = TicketKeys::shared(600, &err);
  auto b = TicketKeys::shared(600, &err);
  auto c = TicketKeys::shared(601, &err);
  assert_non_null(a.get());
  assert_ptr_equal(a.get(), b.get());  // one set per lifetime while held
  assert_true(a.get() != c.get());
  assert_int_equal(c->lifetime(), 601);
  // PSK configurations never take tickets.
  Rng rng;
  auto psk = ServerConfig::psk(&rng, "0123456789abcdef", "peer", &err);
  assert_non_null(psk.get());
  psk->enable_session_tickets(a);
  assert_null(psk->session_tickets());
}

}  // namespace

int run_ticket_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resume_fast_records),
      cmocka_unit_test(test_resume_mbedtls_records),
      cmocka_unit_test(test_resume_paths_flaky_bio),
      cmocka_unit_test(test_other_leaf_does_not_resume),
      cmocka_unit_test(test_other_keys_do_not_resume),
      cmocka_unit_test(test_tampered_ticket_does_not_resume),
      cmocka_unit_test(test_no_tickets_without_keys),
      cmocka_unit_test(test_expired_ticket),
      cmocka_unit_test(test_lifetime_limits_and_sharing),
  };
  return cmocka_run_group_tests_name("tls/tickets", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
