// tls unit tests: one binary, five CMocka groups (client_hello,
// cert_authority, session, record_layer, psk) sharing a throwaway PKI.
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>

#include "tls_test.h"

namespace shoal::tls::test {

namespace {
Pki g_pki;
bool g_made = false;
std::unique_ptr<CertAuthority> g_ca;

void must(const std::string& cmd) {
  std::string out;
  if (run(cmd, &out) != 0) {
    std::fprintf(stderr, "test setup failed: %s\n%s\n", cmd.c_str(), out.c_str());
    std::exit(1);
  }
}

// The extensions tools/gen-ca.sh gives a site CA, and a server leaf.
const char kOpensslConf[] =
    "[req]\n"
    "distinguished_name = dn\n"
    "prompt = no\n"
    "[dn]\n"
    "C = US\n"
    "O = Shoal Test\n"
    "CN = Shoal Test CA\n"
    "[v3_ca]\n"
    "basicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "[v3_leaf]\n"
    "basicConstraints = critical,CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:leaf.example.com\n";
}  // namespace

int run(const std::string& cmd, std::string* out) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0)
    if (out != nullptr) out->append(buf.data(), n);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const Pki& pki() {
  if (g_made) return g_pki;
  char tmpl[] = "/tmp/shoal-tls-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    std::exit(1);
  }
  Pki& p = g_pki;
  p.dir = tmpl;
  const std::string d = p.dir + "/";
  FILE* f = std::fopen((d + "openssl.cnf").c_str(), "w");
  std::fputs(kOpensslConf, f);
  std::fclose(f);
  const std::string cnf = " -config " + d + "openssl.cnf";
  p.ca_crt = d + "ca.crt";
  p.ca_key = d + "ca.key";
  p.ca_der = d + "ca.der";
  p.ca_key_der = d + "ca-key.der";
  p.ec_ca_crt = d + "ec-ca.crt";
  p.ec_ca_key = d + "ec-ca.key";
  p.other_ca_crt = d + "other-ca.crt";
  p.other_ca_key = d + "other-ca.key";
  p.leaf_crt = d + "leaf.crt";
  p.leaf_key = d + "leaf.key";
  p.loose_key = d + "loose.key";
  must("umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 30 -extensions v3_ca" + cnf +
       " -keyout " + p.ca_key + " -out " + p.ca_crt);
  must("openssl x509 -in " + p.ca_crt + " -outform DER -out " + p.ca_der);
  must("umask 077 && openssl pkey -in " + p.ca_key + " -outform DER -out " + p.ca_key_der);
  must(
      "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30"
      " -extensions v3_ca" +
      cnf + " -subj '/O=Shoal Test/CN=Shoal EC CA' -keyout " + p.ec_ca_key + " -out " + p.ec_ca_crt);
  must("umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 30 -extensions v3_ca" + cnf +
       " -subj '/CN=Unrelated CA' -keyout " + p.other_ca_key + " -out " + p.other_ca_crt);
  must("umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes" + cnf +
       " -subj '/CN=leaf.example.com' -keyout " + p.leaf_key + " -out " + d + "leaf.csr");
  must("openssl x509 -req -in " + d + "leaf.csr -CA " + p.ca_crt + " -CAkey " + p.ca_key +
       " -CAcreateserial -days 30 -extfile " + d + "openssl.cnf -extensions v3_leaf -out " + p.leaf_crt);
  must("cp " + p.ca_key + " " + p.loose_key + " && chmod 0644 " + p.loose_key);
  g_made = true;
  return g_pki;
}

void remove_pki() {
  g_ca.reset();
  if (g_made) run("rm -rf " + g_pki.dir);
}

const CertAuthority& ca() {
  if (g_ca == nullptr) {
    std::string err;
    g_ca = CertAuthority::load(pki().ca_crt, pki().ca_key, &err);
    if (g_ca == nullptr) {
      std::fprintf(stderr, "loading the test CA failed: %s\n", err.c_str());
      std::exit(1);
    }
  }
  return *g_ca;
}

void transfer(Session* src, Session* dst) {
  std::vector<uint8_t> bytes = std::move(src->output());
  src->output().clear();
  if (!bytes.empty()) dst->feed(bytes.data(), bytes.size());
}

bool pump_handshake(Session* a, Session* b, bool one_byte, int max_rounds) {
  std::vector<uint8_t> to_a, to_b;
  Status sa = Status::WantRead, sb = Status::WantRead;
  for (int i = 0; i < max_rounds; i++) {
    sa = a->handshake();
    to_b.insert(to_b.end(), a->output().begin(), a->output().end());
    a->output().clear();
    sb = b->handshake();
    to_a.insert(to_a.end(), b->output().begin(), b->output().end());
    b->output().clear();
    if (sa == Status::Error || sb == Status::Error) {
      // Deliver what is in flight (e.g. the failing side's alert) so tests
      // can see how the peer reacts.
      if (!to_a.empty()) a->feed(to_a.data(), to_a.size());
      if (!to_b.empty()) b->feed(to_b.data(), to_b.size());
      return false;
    }
    if (sa == Status::Ok && sb == Status::Ok && to_a.empty() && to_b.empty()) return true;
    // Resume paths: with one_byte each call sees a single new byte.
    size_t na = one_byte ? std::min<size_t>(1, to_a.size()) : to_a.size();
    size_t nb = one_byte ? std::min<size_t>(1, to_b.size()) : to_b.size();
    if (na > 0) a->feed(to_a.data(), na);
    if (nb > 0) b->feed(to_b.data(), nb);
    to_a.erase(to_a.begin(), to_a.begin() + static_cast<std::ptrdiff_t>(na));
    to_b.erase(to_b.begin(), to_b.begin() + static_cast<std::ptrdiff_t>(nb));
    if (na == 0 && nb == 0 && sa == Status::WantRead && sb == Status::WantRead) return false;
  }
  return false;
}

std::vector<uint8_t> drain(Session* dst, Status* last) {
  std::vector<uint8_t> got;
  uint8_t buf[4096];
  for (;;) {
    size_t n = 0;
    Status st = dst->read(buf, sizeof buf, &n);
    if (st != Status::Ok) {
      if (last != nullptr) *last = st;
      return got;
    }
    got.insert(got.end(), buf, buf + n);
  }
}

Endpoints::Endpoints(const std::string& trust_file, bool insecure) {
  std::string err;
  if (!trust_file.empty() && !trust.add(trust_file, &err)) {
    std::fprintf(stderr, "trust store: %s\n", err.c_str());
    std::exit(1);
  }
  server_cfg = std::make_unique<ServerConfig>(&rng);
  client_cfg = std::make_unique<ClientConfig>(&rng, &trust, insecure);
}

}  // namespace shoal::tls::test

int main() {
  using namespace shoal::tls::test;
  pki();
  int failed = 0;
  failed += run_client_hello_tests();
  failed += run_cert_authority_tests();
  failed += run_name_constraints_tests();
  failed += run_session_tests();
  failed += run_record_layer_tests();
  failed += run_psk_tests();
  failed += run_ticket_tests();
  remove_pki();
  return failed == 0 ? 0 : 1;
}
