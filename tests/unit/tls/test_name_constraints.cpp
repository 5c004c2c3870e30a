// Name constraints: the RFC 5280 matching, DER parsing (hand-made bytes and
// CAs made by the openssl CLI the way tools/gen-ca.sh makes them), and
// CertAuthority refusing to mint outside them while its leaves inside pass
// OpenSSL's own verification (which enforces the constraints).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Makes DIR/NAME.crt and DIR/NAME.key: an RSA CA with the given
// nameConstraints value (openssl's syntax, as gen-ca.sh writes it) and any
// extra -addext arguments.
void make_ca(const std::string& name, const std::string& constraints, const std::string& extra = "") {
  const std::string d = pki().dir + "/" + name;
  std::string out;
  std::string cmd = "umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=NC " + name +
                    "' -keyout " + d + ".key -out " + d +
                    ".crt -addext basicConstraints=critical,CA:TRUE"
                    " -addext keyUsage=critical,keyCertSign,cRLSign";
  if (!constraints.empty()) cmd += " -addext 'nameConstraints=" + constraints + "'";
  cmd += " " + extra;
  if (run(cmd, &out) != 0) fail_msg("openssl: %s", out.c_str());
}

std::unique_ptr<CertAuthority> load_ca(const std::string& name, std::string* err) {
  const std::string d = pki().dir + "/" + name;
  return CertAuthority::load(d + ".crt", d + ".key", err);
}

// Writes the leaf of chain as PEM to DIR/file; returns the path.
std::string leaf_pem(const Leaf& leaf, const std::string& file) {
  std::string der_path = pki().dir + "/" + file + ".der";
  FILE* f = std::fopen(der_path.c_str(), "wb");
  std::fwrite(leaf.chain.raw.p, 1, leaf.chain.raw.len, f);
  std::fclose(f);
  std::string pem = pki().dir + "/" + file;
  assert_int_equal(run("openssl x509 -inform DER -in " + der_path + " -out " + pem), 0);
  return pem;
}

// ------------------------------------------------------------- matching

void test_dns_subtree(void**) {
  assert_true(dns_in_subtree("example.com", "example.com"));
  assert_true(dns_in_subtree("a.example.com", "example.com"));
  assert_true(dns_in_subtree("a.b.example.com", "example.com"));
  assert_false(dns_in_subtree("badexample.com", "example.com"));
  assert_false(dns_in_subtree("com", "example.com"));
  assert_false(dns_in_subtree("example.com.evil", "example.com"));
  // Leading dot: names below it only.
  assert_false(dns_in_subtree("example.com", ".example.com"));
  assert_true(dns_in_subtree("a.example.com", ".example.com"));
  assert_false(dns_in_subtree("aexample.com", ".example.com"));
  // An empty subtree holds every name.
  assert_true(dns_in_subtree("anything.test", ""));
}

void test_permits_dns_and_ip(void**) {
  NameConstraints nc;
  nc.permitted_dns = {"registry.shoal.test", ".example.org"};
  nc.excluded_dns = {"secret.example.org"};
  IpSubtree ten;
  ten.len = 4;
  ten.addr[0] = 10;
  ten.mask[0] = 0xff;
  nc.permitted_ip = {ten};
  assert_true(nc.permits("registry.shoal.test"));
  assert_true(nc.permits("REGISTRY.Shoal.Test."));  // case and a final dot do not matter
  assert_true(nc.permits("eu.registry.shoal.test"));
  assert_false(nc.permits("blobs.shoal.test"));
  assert_false(nc.permits("example.org"));
  assert_true(nc.permits("a.example.org"));
  // Excluded wins over permitted.
  assert_false(nc.permits("secret.example.org"));
  assert_false(nc.permits("x.secret.example.org"));
  // IP literals against iPAddress subtrees only.
  assert_true(nc.permits("10.1.2.3"));
  assert_false(nc.permits("11.1.2.3"));
  // No IPv6 subtree is permitted, so every IPv6 address is outside.
  assert_false(nc.permits("[fd00::1]"));
  // An IPv4-mapped address needs both of its forms inside.
  assert_false(nc.permits("::ffff:10.1.2.3"));
  assert_string_equal(nc.describe().c_str(),
                      "permitted DNS:registry.shoal.test, DNS:.example.org, IP:10.0.0.0/8; "
                      "excluded DNS:secret.example.org");

  // Only IP subtrees: DNS names are unconstrained (RFC 5280 per name type).
  NameConstraints ip_only;
  ip_only.permitted_ip = {ten};
  assert_true(ip_only.permits("anything.test"));
  assert_false(ip_only.permits("192.0.2.1"));

  NameConstraints none;
  assert_true(none.empty());
  assert_true(none.permits("anything.test"));
  assert_true(none.permits("192.0.2.1"));
  assert_string_equal(none.describe().c_str(), "none");
}

// ------------------------------------------------------------- parsing

void test_parse_hand_made(void**) {
  // SEQUENCE { [0] { SEQUENCE { [2] "a.test" } }, [1] { SEQUENCE { [7] 0.0.0.0/0 } } }
  const std::vector<unsigned char> good = {0x30, 0x1a, 0xa0, 0x0a, 0x30, 0x08, 0x82, 0x06, 'a',  '.',
                                           't',  'e',  's',  't',  0xa1, 0x0c, 0x30, 0x0a, 0x87, 0x08,
                                           0,    0,    0,    0,    0,    0,    0,    0};
  NameConstraints nc;
  std::string err;
  if (!parse_name_constraints(good.data(), good.size(), &nc, &err)) fail_msg("good: %s", err.c_str());
  assert_int_equal(nc.permitted_dns.size(), 1);
  assert_string_equal(nc.permitted_dns[0].c_str(), "a.test");
  assert_int_equal(nc.excluded_ip.size(), 1);
  assert_string_equal(nc.excluded_ip[0].str().c_str(), "0.0.0.0/0");
  assert_false(nc.permits("192.0.2.1"));
  assert_true(nc.permits("b.a.test"));

  // Refused: an empty NameConstraints, an empty subtree list, a maximum, an
  // iPAddress of the wrong size, truncation, trailing garbage.
  const std::vector<std::vector<unsigned char>> bad = {
      {0x30, 0x00},
      {0x30, 0x02, 0xa0, 0x00},
      {0x30, 0x0a, 0xa0, 0x08, 0x30, 0x06, 0x82, 0x01, 'a', 0x81, 0x01, 0x02},
      {0x30, 0x08, 0xa1, 0x06, 0x30, 0x04, 0x87, 0x02, 1, 2},
      {0x30, 0x08, 0xa0, 0x06, 0x30, 0x04, 0x82, 0x06, 'a'},
      {0x30, 0x07, 0xa0, 0x05, 0x30, 0x03, 0x82, 0x01, 'a', 0x00},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    err.clear();
    if (parse_name_constraints(bad[i].data(), bad[i].size(), &nc, &err)) fail_msg("bad[%zu] was accepted", i);
    assert_false(err.empty());
  }
  // Every prefix of the good encoding is refused, never read past.
  for (size_t n = 0; n < good.size(); ++n) assert_false(parse_name_constraints(good.data(), n, &nc, &err));
}

void test_load_constrained_ca(void**) {
  // gen-ca.sh --permit registry.shoal.test --permit .example.org
  make_ca("dns",
          "critical,permitted;DNS:registry.shoal.test,permitted;DNS:.example.org,"
          "excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:::/::");
  std::string err;
  auto ca = load_ca("dns", &err);
  if (ca == nullptr) fail_msg("load: %s", err.c_str());
  const NameConstraints& nc = ca->name_constraints();
  assert_int_equal(nc.permitted_dns.size(), 2);
  assert_string_equal(nc.describe().c_str(),
                      "permitted DNS:registry.shoal.test, DNS:.example.org; excluded IP:0.0.0.0/0, IP:::/0");
  assert_true(ca->permits("registry.shoal.test"));
  assert_false(ca->permits("blobs.shoal.test"));
  assert_false(ca->permits("127.0.0.2"));

  // Inside: minted, and OpenSSL (which enforces name constraints) accepts it.
  auto leaf = ca->mint("registry.shoal.test", &err);
  if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
  assert_non_null(leaf->chain.next);  // the CA rides along, parsed with its constraints
  std::string out;
  const std::string pem = leaf_pem(*leaf, "nc-inside.pem");
  if (run("openssl verify -purpose sslserver -CAfile " + pki().dir + "/dns.crt " + pem, &out) != 0)
    fail_msg("openssl verify: %s", out.c_str());
  auto sub = ca->mint("x.example.org", &err);
  if (sub == nullptr) fail_msg("mint x.example.org: %s", err.c_str());

  // Outside: refused with the reason, for names and addresses alike.
  for (const char* name : {"blobs.shoal.test", "example.org", "127.0.0.2", "::1"}) {
    err.clear();
    assert_null(ca->mint(name, &err).get());
    if (!contains(err, "outside the CA's name constraints")) fail_msg("%s: %s", name, err.c_str());
  }
}

void test_ip_constrained_ca(void**) {
  // gen-ca.sh --permit registry.shoal.test --permit-ip 127.0.0.0/8
  make_ca("ip", "critical,permitted;DNS:registry.shoal.test,permitted;IP:127.0.0.0/255.0.0.0");
  std::string err;
  auto ca = load_ca("ip", &err);
  if (ca == nullptr) fail_msg("load: %s", err.c_str());
  auto leaf = ca->mint("127.0.0.2", &err);
  if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
  // No CN on an IP leaf of a constrained CA: OpenSSL would check a CN like
  // "127.0.0.2" as a DNS name against the DNS subtrees and refuse it.
  assert_int_equal(leaf->chain.subject.oid.len, 0);
  std::string out;
  const std::string pem = leaf_pem(*leaf, "nc-ip.pem");
  if (run("openssl verify -purpose sslserver -CAfile " + pki().dir + "/ip.crt " + pem, &out) != 0)
    fail_msg("openssl verify: %s", out.c_str());
  assert_null(ca->mint("192.0.2.1", &err).get());
}

void test_unconstrained_ca_unchanged(void**) {
  // The shared test CA has no constraints: every valid name mints, IP leaves
  // keep their CN.
  assert_true(ca().name_constraints().empty());
  std::string err;
  auto leaf = ca().mint("127.0.0.9", &err);
  if (leaf == nullptr) fail_msg("mint: %s", err.c_str());
  assert_true(leaf->chain.subject.oid.len > 0);
}

void test_unknown_critical_extension_still_refused(void**) {
  make_ca("crit", "", "-addext '1.3.6.1.4.1.99999.1=critical,ASN1:UTF8String:x'");
  std::string err;
  assert_null(load_ca("crit", &err).get());
  if (!contains(err, "crit.crt: not a certificate")) fail_msg("%s", err.c_str());
  // Non-critical: ignored, as before.
  make_ca("noncrit", "", "-addext '1.3.6.1.4.1.99999.1=ASN1:UTF8String:x'");
  if (load_ca("noncrit", &err) == nullptr) fail_msg("noncrit: %s", err.c_str());
}

}  // namespace

int run_name_constraints_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dns_subtree),
      cmocka_unit_test(test_permits_dns_and_ip),
      cmocka_unit_test(test_parse_hand_made),
      cmocka_unit_test(test_load_constrained_ca),
      cmocka_unit_test(test_ip_constrained_ca),
      cmocka_unit_test(test_unconstrained_ca_unchanged),
      cmocka_unit_test(test_unknown_critical_extension_still_refused),
  };
  return cmocka_run_group_tests_name("tls/name_constraints", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
