// TLS sessions over memory buffers, and the configurations they share.
//
// Certificate selection on the server side. mbedTLS 2.28 picks the server
// certificate in ssl_pick_cert() (library/ssl_srv.c) from
// ssl->handshake->sni_key_cert when that list is non-empty, else from the
// config's key_cert list. mbedtls_ssl_set_hs_own_cert() appends to the
// former, and mbedtls_ssl_setup() already allocates ssl->handshake. So
// Session::server() sets the leaf right after setup, before the first
// handshake step: it is then used whether or not the client sends SNI, and
// no SNI callback is registered (without one, mbedTLS ignores the SNI
// extension; the proxy has already peeked it and minted the right leaf).
// The config never holds a certificate, so one ServerConfig serves every
// host.
//
// IP literals on the client side. mbedTLS 2.28 keeps only dNSName and
// otherName entries in subject_alt_names and matches the expected name
// against those (or the CN) as strings, so an origin reached by IP could
// never verify. Session::client() therefore clears the hostname (no SNI, as
// RFC 6066 forbids IP literals there, and no mbedTLS name check) and installs
// a per-session verify callback that flags the leaf unless its
// subjectAltName carries the same iPAddress bytes.
//
// Fast records. mbedTLS 2.28 protects AES-GCM records at ~215 MB/s per core
// here; libcrypto does several GB/s. With fast records on, each config gets
// a key-export callback, and once a TLS 1.2 AES-GCM handshake is complete
// with nothing buffered inside mbedTLS (in_left, out_left, in_offt and
// pending messages all empty: mbedTLS reads a record's header and body by
// exact lengths, so bytes sent behind the Finished stay in our in_), the
// session builds a RecordLayer from the exported key block and never calls
// mbedTLS's read/write again; the mbedTLS context is then released. The
// sequence numbers come from mbedTLS: the next outgoing is cur_out_ctr (not
// out_ctr, which is the Finished already sent: reusing it would reuse a GCM
// nonce), the next incoming is in_ctr. Any other suite, or any state this
// does not expect, stays on mbedTLS's record layer.
//
// Pre-shared keys. ServerConfig::psk() and ClientConfig::psk() speak only
// TLS-DHE-PSK-WITH-AES-128-GCM-SHA256: no certificate is sent or checked,
// each side proves the key through the Finished messages (mbedTLS mixes it
// into the premaster secret with the DHE result). Its key block is the same
// as any AES-128-GCM suite's (no MAC keys, 4-byte implicit IVs), so fast
// records take over exactly as above.
//
// Session tickets. With TicketKeys enabled on a ServerConfig, a full
// handshake ends with a NewSessionTicket (the master secret and suite sealed
// by mbedTLS's ticket context, then Shoal's 16-byte HMAC-SHA256 tag over the
// leaf name and the sealed bytes), and a ClientHello carrying a ticket whose
// tag matches this session's leaf resumes: ServerHello, CCS and Finished
// from the server first, then the client's CCS and Finished. Fast records
// need nothing special there: mbedTLS derives the key block (and calls the
// export callback) on both paths, and the counters read at the end are the
// ones it actually used. A ticket that fails the tag, the seal or the age
// check is ignored by mbedTLS and the handshake goes on in full.
#include "shoal/tls/session.h"

#include <mbedtls/dhm.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_internal.h>  // ssl->handshake->resume: 2.28 has no getter
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "shoal/obs/log.h"

namespace shoal::tls {

namespace {

// Preference orders. With fast records AES-GCM comes first: libcrypto
// seals it with AES-NI several times faster than anything mbedTLS does.
// Without, ChaCha20-Poly1305 leads (mbedTLS's fastest: ~354 MB/s per core
// here against ~260 for its AES-GCM). ECDSA suites match minted leaves, the
// RSA ones serve origins with RSA certificates.
const int kSuitesFast[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    0,
};
const int kSuitesMbed[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

// PSK configurations offer one suite (see kPskSuite).
const int kSuitesPsk[] = {kPskSuite, 0};
const unsigned char kFfdhe2048P[] = MBEDTLS_DHM_RFC7919_FFDHE2048_P_BIN;
const unsigned char kFfdhe2048G[] = MBEDTLS_DHM_RFC7919_FFDHE2048_G_BIN;

// mbedTLS's default list starts with the slowest curves (P-521); clients
// pick the first curve both sides support, so lead with the fast ones.
const mbedtls_ecp_group_id kCurves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};

// Only HTTP/1.x is spoken (Go clients offer h2 first). Origins are asked for
// http/1.1; clients may also name http/1.0 (curl -0 does), which mbedTLS
// would otherwise answer with a no_application_protocol alert. The server's
// order decides, so a client offering both gets http/1.1.
const char* kAlpn[] = {"http/1.1", nullptr};
const char* kServerAlpn[] = {"http/1.1", "http/1.0", nullptr};

// Bytes of Shoal's tag after mbedTLS's sealed ticket (HMAC-SHA256, truncated).
constexpr size_t kTicketTag = 16;

// Compact the inbound buffer once this much has been consumed and it is at
// least half of what is buffered: amortized O(1) per byte.
constexpr size_t kCompactAt = 16 * 1024;
// read() gives up looping over records that carry no data after this many
// in a row, so a misbehaving peer cannot keep one call spinning.
constexpr int kMaxEmptyRecords = 1000;

std::string mbed_error(int ret) {
  char buf[160];
  mbedtls_strerror(ret, buf, sizeof buf);
  return buf;
}

size_t count_certs(const mbedtls_x509_crt* c) {
  size_t n = 0;
  for (; c != nullptr; c = c->next)
    if (c->version != 0) n++;
  return n;
}

// The Session being handshaken on this thread, for the key-export callback.
thread_local Session* t_handshaking = nullptr;

// Sets t_handshaking for the duration of an mbedTLS call that may run the
// handshake.
class HandshakeScope {
 public:
  explicit HandshakeScope(Session* s) : prev_(t_handshaking) { t_handshaking = s; }
  ~HandshakeScope() { t_handshaking = prev_; }
  HandshakeScope(const HandshakeScope&) = delete;
  HandshakeScope& operator=(const HandshakeScope&) = delete;

 private:
  Session* prev_;
};

uint64_t be64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

void configure_common(mbedtls_ssl_config* conf, Rng* rng, bool fast_records) {
  mbedtls_ssl_conf_rng(conf, Rng::random, rng);
  mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(conf, fast_records ? kSuitesFast : kSuitesMbed);
  if (fast_records) mbedtls_ssl_conf_export_keys_ext_cb(conf, Session::on_export_keys, nullptr);
  mbedtls_ssl_conf_curves(conf, kCurves);
  mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
  // Cannot fail: the list is static and its names are short.
  mbedtls_ssl_conf_alpn_protocols(conf, kAlpn);
}

// The PSK half of both PSK configurations: the suite and the key. True, or
// false with *err.
bool configure_psk(mbedtls_ssl_config* conf, const std::string& key, const std::string& identity,
                   std::string* err) {
  if (key.empty() || key.size() > MBEDTLS_PSK_MAX_LEN) {
    *err = "PSK of " + std::to_string(key.size()) + " bytes (1 to " + std::to_string(MBEDTLS_PSK_MAX_LEN) +
           " allowed)";
    return false;
  }
  if (identity.empty()) {
    *err = "empty PSK identity";
    return false;
  }
  mbedtls_ssl_conf_ciphersuites(conf, kSuitesPsk);
  int ret = mbedtls_ssl_conf_psk(conf, reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                                 reinterpret_cast<const unsigned char*>(identity.data()), identity.size());
  if (ret != 0) {
    *err = "PSK: " + mbed_error(ret);
    return false;
  }
  return true;
}

[[noreturn]] void die(const char* what, int ret) {
  // Only reachable when the OS cannot supply entropy or memory is gone at
  // startup: nothing sensible can continue.
  std::fprintf(stderr, "shoal: tls: %s: %s\n", what, mbed_error(ret).c_str());
  std::abort();
}

}  // namespace

// ---------------------------------------------------------------- Rng

Rng::Rng() {
  mbedtls_entropy_init(&entropy_);
  mbedtls_ctr_drbg_init(&drbg_);
  static const unsigned char kPers[] = "shoal-tls";
  int ret = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, kPers, sizeof kPers - 1);
  if (ret != 0) die("seeding the random generator", ret);
}

Rng::~Rng() {
  mbedtls_ctr_drbg_free(&drbg_);
  mbedtls_entropy_free(&entropy_);
}

int Rng::random(void* p_rng, unsigned char* out, size_t len) {
  auto* self = static_cast<Rng*>(p_rng);
  while (len > 0) {
    size_t n = std::min<size_t>(len, MBEDTLS_CTR_DRBG_MAX_REQUEST);
    int ret = mbedtls_ctr_drbg_random(&self->drbg_, out, n);
    if (ret != 0) return ret;
    out += n;
    len -= n;
  }
  return 0;
}

// ---------------------------------------------------------- TrustStore

TrustStore::TrustStore() { mbedtls_x509_crt_init(&chain_); }

TrustStore::~TrustStore() { mbedtls_x509_crt_free(&chain_); }

bool TrustStore::add(const std::string& path, std::string* err) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (err != nullptr) *err = path + ": " + std::strerror(errno);
    return false;
  }
  const size_t before = count_certs(&chain_);
  // parse_path returns how many files failed (> 0) as well as hard errors
  // (< 0); a directory such as /etc/ssl/certs holds non-certificates too, so
  // success means "at least one certificate was added".
  int ret = S_ISDIR(st.st_mode) ? mbedtls_x509_crt_parse_path(&chain_, path.c_str())
                                : mbedtls_x509_crt_parse_file(&chain_, path.c_str());
  const size_t after = count_certs(&chain_);
  if (after == before) {
    if (err != nullptr)
      *err =
          path + ": " + (ret < 0 ? "cannot load certificates: " + mbed_error(ret) : "no certificates found");
    return false;
  }
  count_ = after;
  return true;
}

bool TrustStore::add_system(std::string* err) {
  static const char kBundle[] = "/etc/ssl/certs/ca-certificates.crt";
  struct stat st {};
  if (stat(kBundle, &st) == 0) return add(kBundle, err);
  return add("/etc/ssl/certs", err);
}

// ---------------------------------------------------------- TicketKeys

TicketKeys::TicketKeys() { mbedtls_ssl_ticket_init(&ctx_); }

TicketKeys::~TicketKeys() {
  mbedtls_ssl_ticket_free(&ctx_);
  mbedtls_platform_zeroize(bind_key_, sizeof bind_key_);
}

std::shared_ptr<TicketKeys> TicketKeys::create(uint32_t lifetime_s, std::string* err) {
  if (lifetime_s == 0 || lifetime_s > kMaxTicketLifetime) {
    *err = "session ticket lifetime of " + std::to_string(lifetime_s) + " s (1 to " +
           std::to_string(kMaxTicketLifetime) + " allowed)";
    return nullptr;
  }
  std::shared_ptr<TicketKeys> k(new TicketKeys());
  k->lifetime_ = lifetime_s;
  int ret = Rng::random(&k->rng_, k->bind_key_, sizeof k->bind_key_);
  if (ret == 0)
    ret = mbedtls_ssl_ticket_setup(&k->ctx_, Rng::random, &k->rng_, MBEDTLS_CIPHER_AES_256_GCM, lifetime_s);
  if (ret != 0) {
    *err = "session tickets: " + mbed_error(ret);
    return nullptr;
  }
  return k;
}

std::shared_ptr<TicketKeys> TicketKeys::shared(uint32_t lifetime_s, std::string* err) {
  static std::mutex mu;
  static std::map<uint32_t, std::weak_ptr<TicketKeys>> live;
  std::lock_guard<std::mutex> lock(mu);
  if (auto k = live[lifetime_s].lock()) return k;
  auto k = create(lifetime_s, err);
  if (k != nullptr) live[lifetime_s] = k;
  return k;
}

bool TicketKeys::tag(const std::string& name, const unsigned char* ticket, size_t len,
                     unsigned char* out) const {
  unsigned char mac[32];
  mbedtls_md_context_t md;
  mbedtls_md_init(&md);
  // The name's terminating NUL goes in too, so name and ticket cannot shift
  // into each other.
  bool ok = mbedtls_md_setup(&md, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 1) == 0 &&
            mbedtls_md_hmac_starts(&md, bind_key_, sizeof bind_key_) == 0 &&
            mbedtls_md_hmac_update(&md, reinterpret_cast<const unsigned char*>(name.c_str()),
                                   name.size() + 1) == 0 &&
            mbedtls_md_hmac_update(&md, ticket, len) == 0 && mbedtls_md_hmac_finish(&md, mac) == 0;
  mbedtls_md_free(&md);
  if (ok) std::memcpy(out, mac, kTicketTag);
  mbedtls_platform_zeroize(mac, sizeof mac);
  return ok;
}

int TicketKeys::write_ticket(void* p_ticket, const mbedtls_ssl_session* session, unsigned char* start,
                             const unsigned char* end, size_t* tlen, uint32_t* lifetime) {
  auto* k = static_cast<TicketKeys*>(p_ticket);
  const Session* s = t_handshaking;
  // mbedTLS sends an empty ticket when this fails; the handshake goes on.
  if (s == nullptr || s->leaf_ == nullptr) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  if (end < start || static_cast<size_t>(end - start) < kTicketTag) return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
  int ret = mbedtls_ssl_ticket_write(&k->ctx_, session, start, end - kTicketTag, tlen, lifetime);
  if (ret != 0) return ret;
  if (!k->tag(s->leaf_->name, start, *tlen, start + *tlen)) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  *tlen += kTicketTag;
  return 0;
}

int TicketKeys::parse_ticket(void* p_ticket, mbedtls_ssl_session* session, unsigned char* buf, size_t len) {
  auto* k = static_cast<TicketKeys*>(p_ticket);
  const Session* s = t_handshaking;
  if (s == nullptr || s->leaf_ == nullptr) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  if (len <= kTicketTag) return MBEDTLS_ERR_SSL_INVALID_MAC;
  const size_t body = len - kTicketTag;
  unsigned char want[kTicketTag];
  if (!k->tag(s->leaf_->name, buf, body, want)) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  unsigned char diff = 0;
  for (size_t i = 0; i < kTicketTag; i++) diff = static_cast<unsigned char>(diff | (want[i] ^ buf[body + i]));
  if (diff != 0) return MBEDTLS_ERR_SSL_INVALID_MAC;  // another leaf's ticket, or not ours
  return mbedtls_ssl_ticket_parse(&k->ctx_, session, buf, body);
}

// -------------------------------------------------------- ServerConfig

ServerConfig::ServerConfig(Rng* rng, bool fast_records) : fast_records_(fast_records) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("server config", ret);
  configure_common(&conf_, rng, fast_records_);
  mbedtls_ssl_conf_alpn_protocols(&conf_, kServerAlpn);
}

ServerConfig::ServerConfig(Rng* rng, PskTag) : fast_records_(true), psk_(true) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("server config", ret);
  configure_common(&conf_, rng, fast_records_);
}

std::unique_ptr<ServerConfig> ServerConfig::psk(Rng* rng, const std::string& key, const std::string& identity,
                                                std::string* err) {
  std::unique_ptr<ServerConfig> c(new ServerConfig(rng, PskTag{}));
  if (!configure_psk(c->conf(), key, identity, err)) return nullptr;
  // mbedTLS's server default is RFC 3526's 2048-bit group; the RFC 7919 one
  // is the group clients are told to expect.
  int ret = mbedtls_ssl_conf_dh_param_bin(c->conf(), kFfdhe2048P, sizeof kFfdhe2048P, kFfdhe2048G,
                                          sizeof kFfdhe2048G);
  if (ret != 0) {
    *err = "DH parameters: " + mbed_error(ret);
    return nullptr;
  }
  return c;
}

ServerConfig::~ServerConfig() { mbedtls_ssl_config_free(&conf_); }

void ServerConfig::enable_session_tickets(std::shared_ptr<TicketKeys> keys) {
  if (psk_ || keys == nullptr) return;
  tickets_ = std::move(keys);
  mbedtls_ssl_conf_session_tickets_cb(&conf_, TicketKeys::write_ticket, TicketKeys::parse_ticket,
                                      tickets_.get());
}

void ServerConfig::set_ciphersuite_for_test(int id) {
  only_suite_[0] = id;
  mbedtls_ssl_conf_ciphersuites(&conf_, only_suite_);
}

// -------------------------------------------------------- ClientConfig

ClientConfig::ClientConfig(Rng* rng, TrustStore* trust, bool insecure, bool fast_records)
    : insecure_(insecure), fast_records_(fast_records) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("client config", ret);
  configure_common(&conf_, rng, fast_records_);
  if (insecure_) {
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_NONE);
  } else {
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
    // With no trust store every verification fails, which is the safe
    // reading of "verify, but trust nothing".
    if (trust != nullptr) mbedtls_ssl_conf_ca_chain(&conf_, trust->chain(), nullptr);
  }
}

ClientConfig::ClientConfig(Rng* rng, PskTag) : insecure_(false), fast_records_(true), psk_(true) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("client config", ret);
  configure_common(&conf_, rng, fast_records_);
  // The suite has no certificate: knowing the key is what authenticates the
  // server (its Finished is keyed with it).
  mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_NONE);
  // A server's group smaller than ffdhe2048 is refused.
  mbedtls_ssl_conf_dhm_min_bitlen(&conf_, 2048);
}

std::unique_ptr<ClientConfig> ClientConfig::psk(Rng* rng, const std::string& key, const std::string& identity,
                                                std::string* err) {
  std::unique_ptr<ClientConfig> c(new ClientConfig(rng, PskTag{}));
  if (!configure_psk(c->conf(), key, identity, err)) return nullptr;
  return c;
}

ClientConfig::~ClientConfig() { mbedtls_ssl_config_free(&conf_); }

void ClientConfig::set_ciphersuite_for_test(int id) {
  only_suite_[0] = id;
  mbedtls_ssl_conf_ciphersuites(&conf_, only_suite_);
}

void ClientConfig::allow_renegotiation_for_test() {
  mbedtls_ssl_conf_renegotiation(&conf_, MBEDTLS_SSL_RENEGOTIATION_ENABLED);
}

// ------------------------------------------------------------- Session

Session::Session() { mbedtls_ssl_init(&ssl_); }

Session::~Session() { mbedtls_ssl_free(&ssl_); }

std::unique_ptr<Session> Session::server(ServerConfig* cfg, std::shared_ptr<const Leaf> leaf) {
  if (leaf == nullptr) return nullptr;
  std::unique_ptr<Session> s(new Session());
  if (mbedtls_ssl_setup(&s->ssl_, cfg->conf()) != 0) return nullptr;
  s->fast_allowed_ = cfg->fast_records();
  s->leaf_ = std::move(leaf);
  mbedtls_ssl_set_bio(&s->ssl_, s.get(), bio_send, bio_recv, nullptr);
  // mbedTLS wants non-const pointers but only reads the chain; the key is
  // EC, whose signing leaves the context unchanged once its table is built
  // (see CertAuthority::mint).
  if (mbedtls_ssl_set_hs_own_cert(&s->ssl_, const_cast<mbedtls_x509_crt*>(&s->leaf_->chain),
                                  const_cast<mbedtls_pk_context*>(&s->leaf_->key)) != 0)
    return nullptr;
  return s;
}

std::unique_ptr<Session> Session::client(ClientConfig* cfg, const std::string& host) {
  std::unique_ptr<Session> s(new Session());
  if (mbedtls_ssl_setup(&s->ssl_, cfg->conf()) != 0) return nullptr;
  s->is_client_ = true;
  s->fast_allowed_ = cfg->fast_records();
  mbedtls_ssl_set_bio(&s->ssl_, s.get(), bio_send, bio_recv, nullptr);
  if (parse_ip_literal(host, s->ip_, &s->ip_len_)) {
    // Explicitly no hostname (see the top of this file); mbedTLS releases
    // that add a hostname requirement accept this as the opt-out.
    if (mbedtls_ssl_set_hostname(&s->ssl_, nullptr) != 0) return nullptr;
    if (!cfg->insecure()) mbedtls_ssl_set_verify(&s->ssl_, verify_ip, s.get());
  } else {
    s->ip_len_ = 0;
    // A fully qualified "name." is the same host, but neither SNI (RFC 6066)
    // nor certificate names carry the final dot.
    std::string name = host;
    if (name.size() > 1 && name.back() == '.') name.pop_back();
    if (mbedtls_ssl_set_hostname(&s->ssl_, name.c_str()) != 0) return nullptr;
  }
  return s;
}

std::unique_ptr<Session> Session::server(ServerConfig* cfg) {
  if (!cfg->is_psk()) return nullptr;
  std::unique_ptr<Session> s(new Session());
  if (mbedtls_ssl_setup(&s->ssl_, cfg->conf()) != 0) return nullptr;
  s->fast_allowed_ = cfg->fast_records();
  mbedtls_ssl_set_bio(&s->ssl_, s.get(), bio_send, bio_recv, nullptr);
  return s;
}

std::unique_ptr<Session> Session::client(ClientConfig* cfg) {
  if (!cfg->is_psk()) return nullptr;
  std::unique_ptr<Session> s(new Session());
  if (mbedtls_ssl_setup(&s->ssl_, cfg->conf()) != 0) return nullptr;
  s->is_client_ = true;
  s->fast_allowed_ = cfg->fast_records();
  mbedtls_ssl_set_bio(&s->ssl_, s.get(), bio_send, bio_recv, nullptr);
  // No server name: peers are reached by address and prove themselves with
  // the key.
  if (mbedtls_ssl_set_hostname(&s->ssl_, nullptr) != 0) return nullptr;
  return s;
}

int Session::verify_ip(void* ctx, mbedtls_x509_crt* crt, int depth, uint32_t* flags) {
  auto* s = static_cast<Session*>(ctx);
  if (depth == 0 && !san_has_ip(*crt, s->ip_, s->ip_len_)) *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
  return 0;
}

bool Session::flaky_skip() {
  if (!flaky_) return false;
  flaky_flip_ = !flaky_flip_;
  return flaky_flip_;
}

int Session::bio_send(void* ctx, const unsigned char* buf, size_t len) {
  auto* s = static_cast<Session*>(ctx);
  if (s->flaky_skip()) return MBEDTLS_ERR_SSL_WANT_WRITE;
  s->out_.insert(s->out_.end(), buf, buf + len);
  return static_cast<int>(len);  // mbedTLS sends at most one record at a time
}

int Session::bio_recv(void* ctx, unsigned char* buf, size_t len) {
  auto* s = static_cast<Session*>(ctx);
  size_t avail = s->in_.size() - s->in_off_;
  if (avail == 0 || s->flaky_skip()) return MBEDTLS_ERR_SSL_WANT_READ;
  size_t n = std::min(len, avail);
  std::memcpy(buf, s->in_.data() + s->in_off_, n);
  s->in_off_ += n;
  if (s->in_off_ == s->in_.size()) {  // drained: reuse the capacity
    s->in_.clear();
    s->in_off_ = 0;
  }
  return static_cast<int>(n);  // n <= len, which mbedTLS keeps below a record
}

void Session::feed(const uint8_t* data, size_t len) {
  if (in_off_ >= kCompactAt && in_off_ * 2 >= in_.size()) {
    in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(in_off_));
    in_off_ = 0;
  }
  in_.insert(in_.end(), data, data + len);
}

Status Session::handshake() {
  if (done_) return Status::Ok;
  if (failed_) return Status::Error;
  HandshakeScope scope(this);
  for (;;) {
    int ret = mbedtls_ssl_handshake(&ssl_);
    if (ret == 0) return finish_handshake();
    // Our BIO never blocks, so WANT_WRITE and WANT_READ with input left
    // come only from the flaky test BIO: retry at once, keeping the promise
    // that WantRead means every fed byte was consumed.
    if (ret == MBEDTLS_ERR_SSL_WANT_WRITE) continue;
    if (ret == MBEDTLS_ERR_SSL_WANT_READ) {
      // A resumed handshake always waits here for the peer's CCS and
      // Finished; the flag is gone (with ssl_.handshake) once it completes.
      if (ssl_.handshake != nullptr && ssl_.handshake->resume != 0) resumed_ = true;
      if (flaky_ && pending_input() > 0) continue;
      return Status::WantRead;
    }
    return set_error(ret, "handshake");
  }
}

bool Session::handshake_done() const { return done_; }

Status Session::finish_handshake() {
  done_ = true;
  const char* p = mbedtls_ssl_get_alpn_protocol(&ssl_);
  alpn_ = p != nullptr ? p : "";
  suite_ = mbedtls_ssl_get_ciphersuite(&ssl_);
  try_fast_records();
  return Status::Ok;
}

int Session::on_export_keys(void*, const unsigned char*, const unsigned char* kb, size_t maclen,
                            size_t keylen, size_t ivlen, const unsigned char*, const unsigned char*,
                            mbedtls_tls_prf_types) {
  Session* s = t_handshaking;
  if (s == nullptr || !s->fast_allowed_) return 0;
  // AES-GCM: no MAC keys, a 4-byte implicit IV. Anything else (ChaCha20's
  // 12-byte IV) stays on mbedTLS.
  if (maclen != 0 || ivlen != 4 || (keylen != 16 && keylen != 32)) return 0;
  auto k = std::make_unique<RecordKeys>();
  k->key_len = keylen;
  // Key block order (RFC 5246 §6.3): client key, server key, client IV,
  // server IV.
  const unsigned char* client_key = kb;
  const unsigned char* server_key = kb + keylen;
  const unsigned char* client_iv = kb + 2 * keylen;
  const unsigned char* server_iv = client_iv + ivlen;
  std::memcpy(k->write_key, s->is_client_ ? client_key : server_key, keylen);
  std::memcpy(k->read_key, s->is_client_ ? server_key : client_key, keylen);
  std::memcpy(k->write_iv, s->is_client_ ? client_iv : server_iv, ivlen);
  std::memcpy(k->read_iv, s->is_client_ ? server_iv : client_iv, ivlen);
  if (s->keys_) s->keys_->wipe();
  s->keys_ = std::move(k);
  return 0;
}

void Session::try_fast_records() {
  std::unique_ptr<RecordKeys> keys = std::move(keys_);
  if (keys == nullptr) return;
  const mbedtls_ssl_ciphersuite_t* cs =
      ssl_.session != nullptr ? mbedtls_ssl_ciphersuite_from_id(ssl_.session->ciphersuite) : nullptr;
  const bool gcm = cs != nullptr && ((cs->cipher == MBEDTLS_CIPHER_AES_128_GCM && keys->key_len == 16) ||
                                     (cs->cipher == MBEDTLS_CIPHER_AES_256_GCM && keys->key_len == 32));
  // Nothing may be left inside mbedTLS: a half-read record, unsent output,
  // unread application data or a further message in the current record.
  const bool quiet = ssl_.minor_ver == MBEDTLS_SSL_MINOR_VERSION_3 && ssl_.in_left == 0 &&
                     ssl_.out_left == 0 && ssl_.in_offt == nullptr && ssl_.keep_current_message == 0 &&
                     mbedtls_ssl_check_pending(&ssl_) == 0;
  if (gcm && quiet) {
    keys->write_seq = be64(ssl_.cur_out_ctr);
    keys->read_seq = be64(ssl_.in_ctr);
    std::string err;
    fast_ = RecordLayer::create(*keys, &err);
    if (fast_ == nullptr) obs::log_warn("TLS fast records unavailable").str("conn", label_).str("error", err);
  }
  keys->wipe();
  if (fast_ != nullptr) {
    // mbedTLS is never called again: give back its record buffers (~33 KiB
    // per connection) and its copy of the keys.
    mbedtls_ssl_free(&ssl_);
    mbedtls_ssl_init(&ssl_);
    leaf_.reset();
  }
}

void Session::trim() {
  if (in_off_ == in_.size()) {
    std::vector<uint8_t>().swap(in_);
    in_off_ = 0;
  }
  if (out_.empty()) std::vector<uint8_t>().swap(out_);
  if (plain_off_ == plain_.size()) {
    std::vector<uint8_t>().swap(plain_);
    plain_off_ = 0;
  }
}

void Session::consume_input(size_t n) {
  in_off_ += n;
  if (in_off_ == in_.size()) {  // drained: reuse the capacity
    in_.clear();
    in_off_ = 0;
  }
}

Status Session::fast_fail(Alert alert, const std::string& why) {
  if (!closed_) {
    const uint8_t msg[2] = {kAlertFatal, static_cast<uint8_t>(alert)};
    fast_->seal(ContentType::Alert, msg, sizeof msg, &out_);
  }
  closed_ = true;
  failed_ = true;
  last_ret_ = MBEDTLS_ERR_SSL_INTERNAL_ERROR;
  err_ = why + " (sent " + alert_name(static_cast<int>(alert)) + ")";
  return Status::Error;
}

// One read: leftover plaintext first, then records in arrival order until
// one carries data. Records without data (alerts of level warning, refused
// renegotiation requests, a few empty records) are consumed on the way.
Status Session::fast_read(uint8_t* buf, size_t cap, size_t* n) {
  if (plain_off_ < plain_.size()) {
    size_t k = std::min(cap, plain_.size() - plain_off_);
    std::memcpy(buf, plain_.data() + plain_off_, k);
    plain_off_ += k;
    if (plain_off_ == plain_.size()) {
      plain_.clear();
      plain_off_ = 0;
    }
    *n = k;
    return Status::Ok;
  }
  if (failed_) return Status::Error;
  if (peer_closed_) return Status::Closed;
  for (int records = 0; records < kMaxEmptyRecords; records++) {
    RecordLayer::Record rec;
    RecordLayer::Result r = fast_->open(in_.data() + in_off_, pending_input(), buf, cap, &rec);
    if (r == RecordLayer::Result::NeedMore) return Status::WantRead;
    if (r == RecordLayer::Result::Error) return fast_fail(fast_->alert(), "read: " + fast_->error());
    // rec.plain stays valid until the next feed(): consuming only moves
    // offsets.
    consume_input(rec.consumed);
    switch (static_cast<ContentType>(rec.type)) {
      case ContentType::ApplicationData:
        if (rec.len == 0) {
          // mbedTLS's limit too: a peer may not keep us decrypting nothing.
          if (++empty_records_ > 3)
            return fast_fail(Alert::UnexpectedMessage, "read: too many empty records");
          continue;
        }
        empty_records_ = 0;
        if (rec.plain != buf) {  // did not fit: hand out cap, keep the rest
          std::memcpy(buf, rec.plain, cap);
          plain_.assign(rec.plain + cap, rec.plain + rec.len);
          plain_off_ = 0;
          *n = cap;
        } else {
          *n = rec.len;
        }
        return Status::Ok;
      case ContentType::Alert: {
        if (rec.len != 2)
          return fast_fail(Alert::DecodeError, "read: alert record of " + std::to_string(rec.len) + " bytes");
        const uint8_t level = rec.plain[0], desc = rec.plain[1];
        if (desc == static_cast<uint8_t>(Alert::CloseNotify)) {
          peer_closed_ = true;
          return Status::Closed;
        }
        if (level == kAlertFatal) {
          failed_ = true;
          closed_ = true;  // no alert answers a fatal alert
          last_ret_ = MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE;
          err_ = "read: peer sent fatal alert " + std::to_string(desc) + " (" + alert_name(desc) + ")";
          return Status::Error;
        }
        obs::log_warn("TLS warning alert from peer")
            .str("conn", label_)
            .num("alert", desc)
            .str("name", alert_name(desc));
        continue;
      }
      case ContentType::Handshake: {
        // After the handshake only a renegotiation request may come: a
        // HelloRequest (type 0) to a client, a ClientHello (type 1) to a
        // server. Refused the way mbedTLS refuses it, with a warning.
        const uint8_t want = is_client_ ? 0 : 1;
        if (rec.len < 4 || rec.plain[0] != want)
          return fast_fail(Alert::UnexpectedMessage,
                           "read: unexpected handshake message after the handshake");
        if (!closed_) {
          const uint8_t msg[2] = {kAlertWarning, static_cast<uint8_t>(Alert::NoRenegotiation)};
          fast_->seal(ContentType::Alert, msg, sizeof msg, &out_);
        }
        obs::log_warn("TLS renegotiation refused").str("conn", label_);
        continue;
      }
      case ContentType::ChangeCipherSpec:
        return fast_fail(Alert::UnexpectedMessage, "read: ChangeCipherSpec after the handshake");
    }
  }
  return fast_fail(Alert::UnexpectedMessage, "read: too many records without data");
}

Status Session::read(uint8_t* buf, size_t cap, size_t* n) {
  *n = 0;
  if (fast_) return fast_read(buf, cap, n);
  if (!done_) {
    Status st = handshake();
    if (st != Status::Ok) return st;
    if (fast_) return fast_read(buf, cap, n);
  }
  for (int empty = 0;;) {
    int ret = mbedtls_ssl_read(&ssl_, buf, cap);
    if (ret > 0) {
      *n = static_cast<size_t>(ret);
      return Status::Ok;
    }
    if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return Status::Closed;
    // WANT_READ also follows a record that carried no data (a refused
    // HelloRequest, an empty record): look again while bytes remain.
    if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE || ret == 0) {
      bool more = pending_input() > 0 || mbedtls_ssl_check_pending(&ssl_) != 0;
      if ((more || ret == MBEDTLS_ERR_SSL_WANT_WRITE) && ++empty < kMaxEmptyRecords) continue;
      if (more) return set_error(MBEDTLS_ERR_SSL_UNEXPECTED_MESSAGE, "read");
      return Status::WantRead;
    }
    return set_error(ret, "read");
  }
}

Status Session::write(const uint8_t* data, size_t len) {
  if (closed_) return Status::Closed;
  if (!done_) {
    last_ret_ = MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
    err_ = "write: handshake not complete";
    return Status::Error;
  }
  if (fast_) {
    if (fast_->seal(ContentType::ApplicationData, data, len, &out_)) return Status::Ok;
    return fast_fail(fast_->alert(), "write: " + fast_->error());
  }
  size_t off = 0;
  while (off < len) {
    int ret = mbedtls_ssl_write(&ssl_, data + off, len - off);
    if (ret > 0) {
      off += static_cast<size_t>(ret);
    } else if (ret == MBEDTLS_ERR_SSL_WANT_WRITE || (flaky_ && ret == MBEDTLS_ERR_SSL_WANT_READ)) {
      continue;  // only the flaky test BIO blocks; the same bytes are retried
    } else {
      return set_error(ret, "write");
    }
  }
  return Status::Ok;
}

void Session::close_notify() {
  if (closed_) return;
  closed_ = true;
  if (!done_) return;  // mbedTLS sends close_notify only after a handshake
  if (fast_) {
    const uint8_t msg[2] = {kAlertWarning, static_cast<uint8_t>(Alert::CloseNotify)};
    fast_->seal(ContentType::Alert, msg, sizeof msg, &out_);
    return;
  }
  int ret;
  do {
    ret = mbedtls_ssl_close_notify(&ssl_);
  } while (ret == MBEDTLS_ERR_SSL_WANT_WRITE);
}

std::string Session::verify_info() const {
  uint32_t flags = mbedtls_ssl_get_verify_result(&ssl_);
  if (flags == 0 || flags == static_cast<uint32_t>(-1)) return "";
  char buf[1024];
  if (mbedtls_x509_crt_verify_info(buf, sizeof buf, "", flags) < 0) return "verification flags set";
  // One line per flag from mbedTLS; join them for a log line.
  std::string out;
  for (const char* line = buf; *line != '\0';) {
    const char* nl = std::strchr(line, '\n');
    size_t n = nl != nullptr ? static_cast<size_t>(nl - line) : std::strlen(line);
    if (n > 0) out += (out.empty() ? "" : "; ") + std::string(line, n);
    line += n + (nl != nullptr ? 1 : 0);
  }
  return out;
}

std::string Session::alpn() const {
  if (done_) return alpn_;
  const char* p = mbedtls_ssl_get_alpn_protocol(&ssl_);
  return p != nullptr ? p : "";
}

std::string Session::ciphersuite() const { return done_ ? suite_ : mbedtls_ssl_get_ciphersuite(&ssl_); }

Status Session::set_error(int ret, const char* what) {
  last_ret_ = ret;
  std::string reason;
  if (ret == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
    // The alert record is still in mbedTLS's input buffer.
    int desc = (ssl_.in_msg != nullptr && ssl_.in_msglen >= 2) ? ssl_.in_msg[1] : -1;
    if (is_client_ && !done_ && desc == MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION)
      reason = "origin supports only TLS 1.3 (mbedTLS 2.28 speaks TLS 1.2)";
    else
      reason = "peer sent fatal alert " + std::to_string(desc) + " (" + alert_name(desc) + ")";
  } else if (ret == MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION) {
    reason = is_client_ ? "origin chose a TLS version older than 1.2"
                        : "client does not offer TLS 1.2 (mbedTLS 2.28 speaks TLS 1.2)";
  } else if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
    reason = "certificate verification failed: " + verify_info();
  } else {
    reason = mbed_error(ret);
  }
  err_ = std::string(what) + ": " + reason;
  return Status::Error;
}

}  // namespace shoal::tls
