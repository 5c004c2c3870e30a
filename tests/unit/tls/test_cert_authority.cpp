// CertAuthority::load errors, minted leaves (checked with mbedTLS, by hand
// and with the openssl CLI), LeafCache, and concurrent minting.
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/x509_crt.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {

using Clock = std::chrono::system_clock;

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

#define assert_contains(hay, needle)                                                                \
  do {                                                                                              \
    if (!contains(hay, needle))                                                                     \
      fail_msg("missing \"%s\" in: %.400s", std::string(needle).c_str(), std::string(hay).c_str()); \
  } while (0)

std::shared_ptr<const Leaf> mint_ok(const std::string& name, std::chrono::hours validity = kMaxLeafValidity) {
  std::string err;
  auto leaf = ca().mint(name, &err, validity);
  if (leaf == nullptr) fail_msg("mint %s: %s", name.c_str(), err.c_str());
  return leaf;
}

uint32_t verify(const Leaf& leaf, const mbedtls_x509_crt& anchor, const char* name) {
  uint32_t flags = 0;
  mbedtls_x509_crt_verify(const_cast<mbedtls_x509_crt*>(&leaf.chain), const_cast<mbedtls_x509_crt*>(&anchor),
                          nullptr, name, &flags, nullptr, nullptr);
  return flags;
}

// Writes the leaf (and only the leaf) as PEM for the openssl CLI.
std::string write_leaf_pem(const Leaf& leaf, const std::string& file) {
  unsigned char buf[8192];
  size_t olen = 0;
  assert_int_equal(mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                                            leaf.chain.raw.p, leaf.chain.raw.len, buf, sizeof buf, &olen),
                   0);
  std::string path = pki().dir + "/" + file;
  FILE* f = std::fopen(path.c_str(), "w");
  std::fwrite(buf, 1, olen - 1, f);  // olen counts the NUL
  std::fclose(f);
  return path;
}

bool der_contains(const mbedtls_x509_buf& raw, const std::vector<uint8_t>& needle) {
  return std::search(raw.p, raw.p + raw.len, needle.begin(), needle.end()) != raw.p + raw.len;
}

time_t to_time(const mbedtls_x509_time& t) {
  struct tm tm {};
  tm.tm_year = t.year - 1900;
  tm.tm_mon = t.mon - 1;
  tm.tm_mday = t.day;
  tm.tm_hour = t.hour;
  tm.tm_min = t.min;
  tm.tm_sec = t.sec;
  return timegm(&tm);
}

// ------------------------------------------------------------- load

void test_load_pem_and_der(void**) {
  std::string err;
  auto a = CertAuthority::load(pki().ca_crt, pki().ca_key, &err);
  assert_non_null(a.get());
  auto b = CertAuthority::load(pki().ca_der, pki().ca_key_der, &err);
  if (b == nullptr) fail_msg("DER: %s", err.c_str());
  auto ec = CertAuthority::load(pki().ec_ca_crt, pki().ec_ca_key, &err);
  if (ec == nullptr) fail_msg("EC: %s", err.c_str());
  assert_int_equal(a->cert().raw.len, b->cert().raw.len);
}

void test_load_not_ca(void**) {
  std::string err;
  assert_null(CertAuthority::load(pki().leaf_crt, pki().leaf_key, &err).get());
  assert_contains(err, pki().leaf_crt + ": not a CA certificate");
}

void test_load_mismatched_key(void**) {
  std::string err;
  assert_null(CertAuthority::load(pki().ca_crt, pki().other_ca_key, &err).get());
  assert_contains(err, pki().other_ca_key + ": key does not match the certificate in " + pki().ca_crt);
}

void test_load_loose_key_mode(void**) {
  std::string err;
  assert_null(CertAuthority::load(pki().ca_crt, pki().loose_key, &err).get());
  const std::string& k = pki().loose_key;
  assert_string_equal(err.c_str(), (k +
                                    ": permissions 0644 are too open (readable by group/other); "
                                    "chmod 600 " +
                                    k)
                                       .c_str());
  assert_non_null(CertAuthority::load(pki().ca_crt, pki().loose_key, &err, true).get());
}

void test_load_missing_and_garbage(void**) {
  std::string err;
  const std::string missing = pki().dir + "/nope.crt";
  assert_null(CertAuthority::load(missing, pki().ca_key, &err).get());
  assert_contains(err, missing + ": cannot read: No such file or directory");
  // Every problem is reported at once.
  assert_null(CertAuthority::load(missing, pki().loose_key, &err).get());
  assert_contains(err, missing + ": cannot read");
  assert_contains(err, "; " + pki().loose_key + ": permissions 0644");
  const std::string missing_key = pki().dir + "/nope.key";
  assert_null(CertAuthority::load(pki().ca_crt, missing_key, &err).get());
  assert_contains(err, missing_key + ": cannot read: No such file or directory");
  // A key where a certificate should be, and the reverse.
  assert_null(CertAuthority::load(pki().ca_key, pki().ca_crt, &err).get());
  assert_contains(err, pki().ca_key + ": not a certificate");
  assert_contains(err, pki().ca_crt + ": ");
}

// ------------------------------------------------------------- mint

void test_mint_dns_verifies(void**) {
  auto leaf = mint_ok("Registry.Example.com");
  assert_string_equal(leaf->name.c_str(), "registry.example.com");
  assert_int_equal(verify(*leaf, ca().cert(), "registry.example.com"), 0);
  assert_int_equal(verify(*leaf, ca().cert(), "REGISTRY.example.COM"), 0);
  assert_true((verify(*leaf, ca().cert(), "other.example.com") & MBEDTLS_X509_BADCERT_CN_MISMATCH) != 0);
  std::string err;
  auto other = CertAuthority::load(pki().other_ca_crt, pki().other_ca_key, &err);
  assert_true((verify(*leaf, other->cert(), "registry.example.com") & MBEDTLS_X509_BADCERT_NOT_TRUSTED) != 0);

  const mbedtls_x509_crt& c = leaf->chain;
  assert_int_equal(c.version, 3);
  assert_int_equal(c.serial.len, 16);
  assert_true((c.serial.p[0] & 0x80) == 0);
  assert_int_equal(c.ca_istrue, 0);
  assert_true((c.ext_types & MBEDTLS_X509_EXT_BASIC_CONSTRAINTS) != 0);
  assert_int_equal(mbedtls_x509_crt_check_key_usage(&c, MBEDTLS_X509_KU_DIGITAL_SIGNATURE), 0);
  assert_int_equal(mbedtls_x509_crt_check_extended_key_usage(&c, MBEDTLS_OID_SERVER_AUTH,
                                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
                   0);
  assert_int_equal(mbedtls_pk_get_type(&c.pk), MBEDTLS_PK_ECKEY);
  assert_int_equal(c.sig_md, MBEDTLS_MD_SHA256);
  // Issuer bytes equal the CA subject bytes (Go matches them bytewise).
  assert_int_equal(c.issuer_raw.len, ca().cert().subject_raw.len);
  assert_memory_equal(c.issuer_raw.p, ca().cert().subject_raw.p, c.issuer_raw.len);
  // The chain continues with the CA.
  assert_non_null(c.next);
  assert_int_equal(c.next->raw.len, ca().cert().raw.len);
  assert_memory_equal(c.next->raw.p, ca().cert().raw.p, c.next->raw.len);
  // SAN: one dNSName.
  assert_string_equal(
      std::string(reinterpret_cast<const char*>(c.subject_alt_names.buf.p), c.subject_alt_names.buf.len)
          .c_str(),
      "registry.example.com");
  assert_null(c.subject_alt_names.next);
  // AKI = the CA's SKI.
  const unsigned char *aki = nullptr, *ski = nullptr;
  size_t aki_len = 0, ski_len = 0;
  assert_true(find_extension(c, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
                             MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER), &aki, &aki_len));
  assert_true(find_extension(ca().cert(), MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &ski, &ski_len));
  assert_int_equal(aki_len, ski_len + 2);  // SEQUENCE{[0] id} vs OCTET STRING id
  assert_memory_equal(aki + 4, ski + 2, ski_len - 2);
  assert_true(find_extension(c, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &ski, &ski_len));

  // OpenSSL agrees: chain, purpose and host name.
  std::string pem = write_leaf_pem(*leaf, "dns.pem"), out;
  int rc = run("openssl verify -CAfile " + pki().ca_crt +
                   " -purpose sslserver -verify_hostname registry.example.com " + pem,
               &out);
  if (rc != 0) fail_msg("openssl verify: %s", out.c_str());
  out.clear();
  assert_int_equal(run("openssl x509 -noout -text -in " + pem, &out), 0);
  assert_contains(out, "DNS:registry.example.com");
  assert_contains(out, "TLS Web Server Authentication");
  assert_contains(out, "CA:FALSE");
  assert_contains(out, "Digital Signature");
  assert_contains(out, "Subject: CN = registry.example.com");
  assert_contains(out, "Signature Algorithm: sha256WithRSAEncryption");  // the CA is RSA
}

void test_mint_ip_san(void**) {
  auto v4 = mint_ok("127.0.0.1");
  const uint8_t lo4[] = {127, 0, 0, 1};
  assert_true(san_has_ip(v4->chain, lo4, 4));
  // Independent of san_has_ip: the DER holds [7] 04 7f 00 00 01.
  assert_true(der_contains(v4->chain.raw, {0x87, 0x04, 127, 0, 0, 1}));
  assert_false(der_contains(v4->chain.raw, {0x82, 0x09}));  // no dNSName "127.0.0.1"
  const uint8_t other4[] = {127, 0, 0, 2};
  assert_false(san_has_ip(v4->chain, other4, 4));

  auto v6 = mint_ok("[::1]");
  assert_string_equal(v6->name.c_str(), "::1");
  uint8_t lo6[16] = {};
  lo6[15] = 1;
  assert_true(san_has_ip(v6->chain, lo6, 16));
  std::vector<uint8_t> want6{0x87, 0x10};
  want6.insert(want6.end(), lo6, lo6 + 16);
  assert_true(der_contains(v6->chain.raw, want6));

  // IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer): both forms.
  auto mapped = mint_ok("::ffff:10.1.2.3");
  const uint8_t v4m[] = {10, 1, 2, 3};
  uint8_t v6m[16] = {};
  v6m[10] = v6m[11] = 0xff;
  std::memcpy(v6m + 12, v4m, 4);
  assert_true(san_has_ip(mapped->chain, v4m, 4));
  assert_true(san_has_ip(mapped->chain, v6m, 16));
  assert_false(san_has_ip(v6->chain, v4m, 4));

  std::string out;
  std::string pem4 = write_leaf_pem(*v4, "v4.pem"), pem6 = write_leaf_pem(*v6, "v6.pem");
  assert_int_equal(run("openssl x509 -noout -text -in " + pem4, &out), 0);
  assert_contains(out, "IP Address:127.0.0.1");
  out.clear();
  assert_int_equal(run("openssl x509 -noout -text -in " + pem6, &out), 0);
  assert_contains(out, "IP Address:0:0:0:0:0:0:0:1");
  out.clear();
  int rc = run("openssl verify -CAfile " + pki().ca_crt + " -verify_ip 127.0.0.1 " + pem4, &out);
  if (rc != 0) fail_msg("openssl verify -verify_ip: %s", out.c_str());
  assert_int_not_equal(run("openssl verify -CAfile " + pki().ca_crt + " -verify_ip 127.0.0.2 " + pem4), 0);
}

void test_mint_validity(void**) {
  const time_t now = time(nullptr);
  auto leaf = mint_ok("valid.example.com");
  time_t nb = to_time(leaf->chain.valid_from), na = to_time(leaf->chain.valid_to);
  assert_true(nb >= now - 3600 - 5 && nb <= now - 3600 + 5);
  assert_true(na >= now + 7 * 86400 - 5 && na <= now + 7 * 86400 + 5);
  assert_int_equal(Clock::to_time_t(leaf->not_after), na);
  // Longer requests are cut to 7 days; short ones honoured.
  auto longer = mint_ok("valid.example.com", std::chrono::hours(24 * 30));
  assert_true(to_time(longer->chain.valid_to) <= now + 7 * 86400 + 5);
  auto shorter = mint_ok("valid.example.com", std::chrono::hours(2));
  na = to_time(shorter->chain.valid_to);
  assert_true(na >= now + 7200 - 5 && na <= now + 7200 + 5);
  std::string err;
  assert_null(ca().mint("valid.example.com", &err, std::chrono::hours(0)).get());
  assert_contains(err, "validity must be positive");
  // Serials differ.
  assert_false(leaf->chain.serial.len == longer->chain.serial.len &&
               std::memcmp(leaf->chain.serial.p, longer->chain.serial.p, leaf->chain.serial.len) == 0);
}

void test_mint_names(void**) {
  std::string err;
  for (const char* bad : {"", ".", "a..b", ".a", "a b", "a/b", "a,CN=b", "fe80::1%eth0", "*.example.com"}) {
    if (ca().mint(bad, &err) != nullptr) fail_msg("minted \"%s\"", bad);
    assert_contains(err, "not a valid DNS name or IP address");
  }
  assert_null(ca().mint(std::string(64, 'a') + ".com", &err).get());  // label over 63
  // A 70-character name: no CN (X.520 limit), critical SAN, still verifies.
  std::string longname = std::string(60, 'a') + ".example.c";
  auto leaf = mint_ok(longname);
  assert_int_equal(verify(*leaf, ca().cert(), longname.c_str()), 0);
  std::string out, pem = write_leaf_pem(*leaf, "long.pem");
  assert_int_equal(run("openssl x509 -noout -text -in " + pem, &out), 0);
  assert_contains(out, "X509v3 Subject Alternative Name: critical");
  int rc = run("openssl verify -CAfile " + pki().ca_crt + " -verify_hostname " + longname + " " + pem, &out);
  if (rc != 0) fail_msg("openssl verify: %s", out.c_str());
  assert_string_equal(mint_ok("Fqdn.Example.")->name.c_str(), "fqdn.example");
  auto svc = mint_ok("_svc.example.com");
  assert_int_equal(verify(*svc, ca().cert(), "_svc.example.com"), 0);
}

void test_mint_ec_ca(void**) {
  std::string err;
  auto ec = CertAuthority::load(pki().ec_ca_crt, pki().ec_ca_key, &err);
  assert_non_null(ec.get());
  auto leaf = ec->mint("ec.example.com", &err);
  assert_non_null(leaf.get());
  assert_int_equal(verify(*leaf, ec->cert(), "ec.example.com"), 0);
  std::string out, pem = write_leaf_pem(*leaf, "ec.pem");
  int rc = run("openssl verify -CAfile " + pki().ec_ca_crt + " " + pem, &out);
  if (rc != 0) fail_msg("openssl verify: %s", out.c_str());
}

void test_mint_concurrent(void**) {
  // Two threads (as on the libuv pool) minting at once, checked afterwards.
  constexpr int kPerThread = 8;
  std::vector<std::shared_ptr<const Leaf>> leaves(2 * kPerThread);
  std::atomic<int> failures{0};
  auto work = [&](int t) {
    for (int i = 0; i < kPerThread; i++) {
      std::string err;
      auto leaf = ca().mint("host" + std::to_string(t * kPerThread + i) + ".example.com", &err);
      if (leaf == nullptr) failures++;
      leaves[static_cast<size_t>(t * kPerThread + i)] = leaf;
    }
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  assert_int_equal(failures.load(), 0);
  for (size_t i = 0; i < leaves.size(); i++) {
    std::string name = "host" + std::to_string(i) + ".example.com";
    assert_int_equal(verify(*leaves[i], ca().cert(), name.c_str()), 0);
  }
}

// ---------------------------------------------------------- LeafCache

void test_cache_lru(void**) {
  LeafCache cache(2);
  auto a = mint_ok("a.example"), b = mint_ok("b.example"), c = mint_ok("c.example");
  cache.put(a);
  cache.put(b);
  assert_int_equal(cache.size(), 2);
  assert_ptr_equal(cache.get("A.Example.").get(), a.get());  // a is now most recent
  cache.put(c);                                              // evicts b
  assert_int_equal(cache.size(), 2);
  assert_null(cache.get("b.example").get());
  assert_ptr_equal(cache.get("a.example").get(), a.get());
  assert_ptr_equal(cache.get("c.example").get(), c.get());
  // Replacing a name keeps one entry.
  auto a2 = mint_ok("a.example");
  cache.put(a2);
  assert_int_equal(cache.size(), 2);
  assert_ptr_equal(cache.get("a.example").get(), a2.get());
  assert_ptr_equal(cache.get("[::1]").get(), nullptr);
  cache.clear();
  assert_int_equal(cache.size(), 0);
}

void test_cache_renewal(void**) {
  LeafCache cache;
  auto fresh = mint_ok("fresh.example");
  auto brief = mint_ok("brief.example", std::chrono::hours(12));
  cache.put(fresh);
  cache.put(brief);
  // Less than 24 h left: treated as absent and dropped.
  assert_null(cache.get("brief.example").get());
  assert_int_equal(cache.size(), 1);
  const auto now = Clock::now();
  assert_non_null(cache.get("fresh.example", now + std::chrono::hours(24 * 5)).get());
  assert_null(cache.get("fresh.example", now + std::chrono::hours(24 * 6 + 1)).get());
  assert_int_equal(cache.size(), 0);
}

}  // namespace

int run_cert_authority_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_pem_and_der),
      cmocka_unit_test(test_load_not_ca),
      cmocka_unit_test(test_load_mismatched_key),
      cmocka_unit_test(test_load_loose_key_mode),
      cmocka_unit_test(test_load_missing_and_garbage),
      cmocka_unit_test(test_mint_dns_verifies),
      cmocka_unit_test(test_mint_ip_san),
      cmocka_unit_test(test_mint_validity),
      cmocka_unit_test(test_mint_names),
      cmocka_unit_test(test_mint_ec_ca),
      cmocka_unit_test(test_mint_concurrent),
      cmocka_unit_test(test_cache_lru),
      cmocka_unit_test(test_cache_renewal),
  };
  return cmocka_run_group_tests_name("tls/cert_authority", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
