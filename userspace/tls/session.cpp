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
#include "shoal/tls/session.h"

#include <mbedtls/error.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace shoal::tls {

namespace {

// Server preference order: ChaCha20-Poly1305 first (fast without AES-NI and
// in mbedTLS's own code), then AES-GCM; ECDSA suites match minted leaves,
// the RSA ones serve origins with RSA certificates.
const int kCiphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

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

const char* alert_name(int desc) {
  switch (desc) {
    case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
      return "handshake_failure";
    case MBEDTLS_SSL_ALERT_MSG_BAD_CERT:
      return "bad_certificate";
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
      return "unsupported_certificate";
    case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
      return "certificate_expired";
    case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN:
      return "certificate_unknown";
    case MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER:
      return "illegal_parameter";
    case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
      return "unknown_ca";
    case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
      return "access_denied";
    case MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR:
      return "decode_error";
    case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR:
      return "decrypt_error";
    case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION:
      return "protocol_version";
    case MBEDTLS_SSL_ALERT_MSG_INSUFFICIENT_SECURITY:
      return "insufficient_security";
    case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR:
      return "internal_error";
    case MBEDTLS_SSL_ALERT_MSG_UNRECOGNIZED_NAME:
      return "unrecognized_name";
    case MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL:
      return "no_application_protocol";
    default:
      return "unknown";
  }
}

size_t count_certs(const mbedtls_x509_crt* c) {
  size_t n = 0;
  for (; c != nullptr; c = c->next)
    if (c->version != 0) n++;
  return n;
}

void configure_common(mbedtls_ssl_config* conf, Rng* rng) {
  mbedtls_ssl_conf_rng(conf, Rng::random, rng);
  mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(conf, kCiphersuites);
  mbedtls_ssl_conf_curves(conf, kCurves);
  mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
  // Cannot fail: the list is static and its names are short.
  mbedtls_ssl_conf_alpn_protocols(conf, kAlpn);
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

// -------------------------------------------------------- ServerConfig

ServerConfig::ServerConfig(Rng* rng) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("server config", ret);
  configure_common(&conf_, rng);
  mbedtls_ssl_conf_alpn_protocols(&conf_, kServerAlpn);
}

ServerConfig::~ServerConfig() { mbedtls_ssl_config_free(&conf_); }

// -------------------------------------------------------- ClientConfig

ClientConfig::ClientConfig(Rng* rng, TrustStore* trust, bool insecure) : insecure_(insecure) {
  mbedtls_ssl_config_init(&conf_);
  int ret = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
  if (ret != 0) die("client config", ret);
  configure_common(&conf_, rng);
  if (insecure_) {
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_NONE);
  } else {
    mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
    // With no trust store every verification fails, which is the safe
    // reading of "verify, but trust nothing".
    if (trust != nullptr) mbedtls_ssl_conf_ca_chain(&conf_, trust->chain(), nullptr);
  }
}

ClientConfig::~ClientConfig() { mbedtls_ssl_config_free(&conf_); }

// ------------------------------------------------------------- Session

Session::Session() { mbedtls_ssl_init(&ssl_); }

Session::~Session() { mbedtls_ssl_free(&ssl_); }

std::unique_ptr<Session> Session::server(ServerConfig* cfg, std::shared_ptr<const Leaf> leaf) {
  if (leaf == nullptr) return nullptr;
  std::unique_ptr<Session> s(new Session());
  if (mbedtls_ssl_setup(&s->ssl_, cfg->conf()) != 0) return nullptr;
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
  for (;;) {
    int ret = mbedtls_ssl_handshake(&ssl_);
    if (ret == 0) {
      done_ = true;
      return Status::Ok;
    }
    // Our BIO never blocks, so WANT_WRITE and WANT_READ with input left
    // come only from the flaky test BIO: retry at once, keeping the promise
    // that WantRead means every fed byte was consumed.
    if (ret == MBEDTLS_ERR_SSL_WANT_WRITE) continue;
    if (ret == MBEDTLS_ERR_SSL_WANT_READ) {
      if (flaky_ && pending_input() > 0) continue;
      return Status::WantRead;
    }
    return set_error(ret, "handshake");
  }
}

bool Session::handshake_done() const { return done_; }

Status Session::read(uint8_t* buf, size_t cap, size_t* n) {
  *n = 0;
  for (int empty = 0;;) {
    int ret = mbedtls_ssl_read(&ssl_, buf, cap);
    // mbedtls_ssl_read drives an unfinished handshake itself.
    if (ssl_.state == MBEDTLS_SSL_HANDSHAKE_OVER) done_ = true;
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
  const char* p = mbedtls_ssl_get_alpn_protocol(&ssl_);
  return p != nullptr ? p : "";
}

std::string Session::ciphersuite() const { return mbedtls_ssl_get_ciphersuite(&ssl_); }

Status Session::set_error(int ret, const char* what) {
  last_ret_ = ret;
  std::string reason;
  if (ret == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
    // The alert record is still in mbedTLS's input buffer.
    int desc = (ssl_.in_msg != nullptr && ssl_.in_msglen >= 2) ? ssl_.in_msg[1] : -1;
    if (is_client_ && desc == MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION)
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
