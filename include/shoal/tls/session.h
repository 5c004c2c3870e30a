// One TLS endpoint over memory buffers (a "memory BIO"): the connection
// feeds it ciphertext read from the socket and writes out what it produces,
// so the event loop never blocks and mbedTLS never touches a socket.
// Record protection lives behind read()/write(): mbedTLS does the handshake,
// and for TLS 1.2 AES-GCM suites a RecordLayer on libcrypto takes over the
// records once it is complete (see session.cpp), unless the configuration
// turns that off.
// Not thread-safe: owned by one connection on one event loop.
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shoal/tls/cert_authority.h"
#include "shoal/tls/record_layer.h"

namespace shoal::tls {

// Per-thread random generator (mbedTLS CTR-DRBG seeded from the OS). Not
// shared between threads: each event loop and each minting thread owns one.
class Rng {
 public:
  Rng();
  ~Rng();
  Rng(const Rng&) = delete;
  Rng& operator=(const Rng&) = delete;
  mbedtls_ctr_drbg_context* ctx() { return &drbg_; }
  // f_rng for mbedTLS; p_rng is the Rng*. Any length (CTR-DRBG's 1 KiB
  // per-request limit is looped over).
  static int random(void* p_rng, unsigned char* out, size_t len);

 private:
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
};

// Trust anchors for origin-facing TLS: the system store (a PEM file or a
// directory of PEM files) plus extra PEM files. Immutable after load.
class TrustStore {
 public:
  TrustStore();
  ~TrustStore();
  TrustStore(const TrustStore&) = delete;
  TrustStore& operator=(const TrustStore&) = delete;
  // Adds every certificate in a PEM/DER file, or in every file of a
  // directory (files that hold none are skipped). True when at least one
  // certificate was added; else false and *err names the path and reason.
  bool add(const std::string& path, std::string* err);
  // Adds Debian's bundle /etc/ssl/certs/ca-certificates.crt, or the
  // /etc/ssl/certs directory when the bundle is missing.
  bool add_system(std::string* err);
  mbedtls_x509_crt* chain() { return &chain_; }
  size_t count() const { return count_; }

 private:
  mbedtls_x509_crt chain_;
  size_t count_ = 0;
};

// Session-ticket keys (RFC 5077) for hijacked connections, so a client that
// reconnects resumes with an abbreviated handshake (no certificate, no key
// exchange, no signature) instead of a full one. One set per process, shared
// by every event loop: SO_REUSEPORT hands a reconnecting client to any
// worker. mbedTLS's ticket context seals each ticket with AES-256-GCM under a
// random key that it replaces every lifetime seconds, keeping the previous
// one, and refuses tickets older than lifetime. Shoal adds a tag binding
// each ticket to the name of the leaf the full handshake presented, so a
// ticket earned with one host's certificate never resumes a connection to
// another (RFC 6066 §3: a server should not resume across names).
// Thread-safe: mbedTLS locks its context, and the generator is used only
// under that lock.
class TicketKeys {
 public:
  // lifetime_s: 1 to kMaxTicketLifetime seconds. nullptr with *err when it
  // is out of range or mbedTLS cannot set up the context.
  static std::shared_ptr<TicketKeys> create(uint32_t lifetime_s, std::string* err);
  // The process's keys for lifetime_s: the same object as long as anyone
  // holds it, so a configuration reload that keeps the setting keeps the
  // keys (tickets issued before the reload still resume). Same errors as
  // create(). Any thread.
  static std::shared_ptr<TicketKeys> shared(uint32_t lifetime_s, std::string* err);
  ~TicketKeys();
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;
  uint32_t lifetime() const { return lifetime_; }
  // Seven days: RFC 5077's ceiling for the lifetime hint.
  static constexpr uint32_t kMaxTicketLifetime = 7 * 24 * 3600;

  // mbedTLS's ticket callbacks (p_ticket is the TicketKeys*); they read the
  // leaf name of the Session being handshaken on this thread. Not for other
  // callers.
  static int write_ticket(void* p_ticket, const mbedtls_ssl_session* session, unsigned char* start,
                          const unsigned char* end, size_t* tlen, uint32_t* lifetime);
  static int parse_ticket(void* p_ticket, mbedtls_ssl_session* session, unsigned char* buf, size_t len);

 private:
  TicketKeys();
  bool tag(const std::string& name, const unsigned char* ticket, size_t len, unsigned char* out) const;
  Rng rng_;  // used by mbedTLS under ctx_'s mutex only
  mbedtls_ssl_ticket_context ctx_;
  unsigned char bind_key_[32] = {};
  uint32_t lifetime_ = 0;
};

// Client-facing configuration for hijacked connections: TLS 1.2, ALPN
// "http/1.1" (or "http/1.0"; a client offering ALPN without either gets a
// no_application_protocol alert), ECDHE, no renegotiation. With fast records
// AES-128-GCM is preferred (libcrypto seals it fastest), else
// ChaCha20-Poly1305 (mbedTLS's fastest cipher). The certificate is per
// Session, never per config. One per event loop (it holds that loop's Rng).
class ServerConfig {
 public:
  explicit ServerConfig(Rng* rng, bool fast_records = true);
  // Pre-shared-key configuration for links between Shoal nodes (see
  // kPskSuiteName): no certificates; a client is accepted only if it names
  // identity and proves it holds key (a wrong identity gets an
  // unknown_psk_identity alert, a wrong key fails the Finished check).
  // Fast records always. key: 1 to MBEDTLS_PSK_MAX_LEN (32) bytes; identity
  // not empty. nullptr with *err saying why when either is refused or
  // mbedTLS cannot allocate. The caller owns the result; one per event loop
  // (it holds that loop's Rng). Sessions come from Session::server(cfg).
  static std::unique_ptr<ServerConfig> psk(Rng* rng, const std::string& key, const std::string& identity,
                                           std::string* err);
  ~ServerConfig();
  ServerConfig(const ServerConfig&) = delete;
  ServerConfig& operator=(const ServerConfig&) = delete;
  mbedtls_ssl_config* conf() { return &conf_; }
  bool fast_records() const { return fast_records_; }
  bool is_psk() const { return psk_; }
  // Issues and accepts session tickets sealed with keys (kept alive by the
  // config). Call before the first Session uses this config, never after:
  // mbedTLS reads the callbacks during handshakes. Ignored on PSK configs.
  void enable_session_tickets(std::shared_ptr<TicketKeys> keys);
  const TicketKeys* session_tickets() const { return tickets_.get(); }
  // Offers only this suite (tests pin AES-256-GCM or ChaCha20 with it).
  void set_ciphersuite_for_test(int id);

 private:
  struct PskTag {};
  ServerConfig(Rng* rng, PskTag);
  mbedtls_ssl_config conf_;
  bool fast_records_;
  bool psk_ = false;
  int only_suite_[2] = {0, 0};
  std::shared_ptr<TicketKeys> tickets_;
};

// Origin-facing configuration: TLS 1.2, verification against a TrustStore
// unless insecure, ALPN http/1.1, SNI + hostname check set per Session.
// One per (loop, trust store, insecure) combination.
// Fast records as for ServerConfig.
class ClientConfig {
 public:
  ClientConfig(Rng* rng, TrustStore* trust, bool insecure, bool fast_records = true);
  // The client side of ServerConfig::psk(): the same suite, sends identity
  // and proves key; the server is authenticated by its knowing key (there
  // is no certificate to verify). Same arguments, errors and ownership as
  // ServerConfig::psk(). Sessions come from Session::client(cfg).
  static std::unique_ptr<ClientConfig> psk(Rng* rng, const std::string& key, const std::string& identity,
                                           std::string* err);
  ~ClientConfig();
  ClientConfig(const ClientConfig&) = delete;
  ClientConfig& operator=(const ClientConfig&) = delete;
  mbedtls_ssl_config* conf() { return &conf_; }
  bool insecure() const { return insecure_; }
  bool fast_records() const { return fast_records_; }
  bool is_psk() const { return psk_; }
  void set_ciphersuite_for_test(int id);
  // Lets the client start a renegotiation (tests check the peer refuses).
  void allow_renegotiation_for_test();

 private:
  struct PskTag {};
  ClientConfig(Rng* rng, PskTag);
  mbedtls_ssl_config conf_;
  bool insecure_;
  bool fast_records_;
  bool psk_ = false;
  int only_suite_[2] = {0, 0};
};

// The one suite PSK configurations speak: the key authenticates both sides,
// an ephemeral Diffie-Hellman exchange in the RFC 7919 ffdhe2048 group gives
// forward secrecy (a leaked key does not open recorded traffic), and AES-GCM
// lets the libcrypto record layer take over after the handshake.
constexpr int kPskSuite = MBEDTLS_TLS_DHE_PSK_WITH_AES_128_GCM_SHA256;
constexpr const char kPskSuiteName[] = "TLS-DHE-PSK-WITH-AES-128-GCM-SHA256";

enum class Status {
  Ok,        // done (handshake complete / data returned / data accepted)
  WantRead,  // feed more ciphertext, then call again
  Closed,    // peer sent close_notify (read) or session is closed
  Error,     // fatal; error_string() says why
};

class Session {
  friend class TicketKeys;  // reads the leaf name

 public:
  // Server side: presents leaf (kept alive by the session) whatever SNI the
  // client sends, and also when it sends none. nullptr only when mbedTLS
  // cannot allocate.
  static std::unique_ptr<Session> server(ServerConfig* cfg, std::shared_ptr<const Leaf> leaf);
  // Client side: sends SNI = host (unless it is an IP literal) and verifies
  // the certificate against it unless the config is insecure: a DNS name
  // through mbedTLS (dNSName SANs, else CN), an IP literal ("10.0.0.1",
  // "::1", "[::1]") against iPAddress SANs by Shoal's own check, since
  // mbedTLS 2.28 cannot. nullptr when mbedTLS cannot allocate or host is
  // longer than MBEDTLS_SSL_MAX_HOST_NAME_LEN.
  static std::unique_ptr<Session> client(ClientConfig* cfg, const std::string& host);
  // PSK sessions (ServerConfig::psk(), ClientConfig::psk()): no certificate,
  // no SNI. nullptr when cfg is not a PSK configuration or mbedTLS cannot
  // allocate.
  static std::unique_ptr<Session> server(ServerConfig* cfg);
  static std::unique_ptr<Session> client(ClientConfig* cfg);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends ciphertext received from the peer.
  void feed(const uint8_t* data, size_t len);
  // Advances the handshake. Ok once complete; output() may hold bytes to send
  // in every case, including Error (an alert). WantRead means every fed byte
  // was consumed.
  Status handshake();
  bool handshake_done() const;
  // True when the handshake resumed an earlier session (abbreviated: no
  // certificate sent, no key exchange). Server side: from a ticket.
  bool resumed() const { return resumed_; }
  // Decrypts into buf. Ok with *n > 0, WantRead when no complete record is
  // buffered (records that carry no data, e.g. a refused renegotiation
  // request, are consumed on the way), Closed on close_notify, Error
  // otherwise. More plaintext may remain after Ok: call again until
  // WantRead. Drives the handshake first if it is not done.
  Status read(uint8_t* buf, size_t cap, size_t* n);
  // Encrypts all of data into output() (in records of at most 16 KiB).
  // Ok, Closed after close_notify(), or Error (also before the handshake).
  Status write(const uint8_t* data, size_t len);
  // Queues close_notify into output() once the handshake is done; later
  // writes return Closed. Calling it twice sends one alert.
  void close_notify();
  // Ciphertext waiting to be sent; the caller moves it out and clears it.
  std::vector<uint8_t>& output() { return out_; }
  // Bytes fed but not yet consumed: none after WantRead on mbedTLS's record
  // layer (it buffers partial records itself); up to one partial record on
  // the fast one, which opens records where they were fed.
  size_t pending_input() const { return in_.size() - in_off_; }
  // Gives back the capacity of the buffers that hold nothing (input
  // drained, output sent, no plaintext left over): a connection kept alive
  // between requests then costs no more than its mbedTLS or record-layer
  // state. The next feed or write allocates again.
  void trim();
  // Capacity held by those buffers, for tests.
  size_t buffered_capacity_for_test() const { return in_.capacity() + out_.capacity() + plain_.capacity(); }
  // True once the libcrypto record layer protects the records.
  bool fast_records() const { return fast_ != nullptr; }
  // "libcrypto" or "mbedtls": which layer protects the records (for logs).
  const char* record_layer_name() const { return fast_ ? "libcrypto" : "mbedtls"; }
  // Names the connection in log lines about peer alerts, e.g. "client
  // 127.0.0.1:40000 (registry:443)".
  void set_log_label(std::string label) { label_ = std::move(label); }
  // Last error, e.g. "handshake: certificate verification failed: The
  // certificate is not correctly signed by the trusted CA" or "handshake:
  // origin supports only TLS 1.3 (mbedTLS 2.28 speaks TLS 1.2)".
  const std::string& error_string() const { return err_; }
  int last_mbedtls_error() const { return last_ret_; }
  // Verification flags text for a failed client handshake ("" if none).
  std::string verify_info() const;
  // Negotiated ALPN (may be empty) and ciphersuite name.
  std::string alpn() const;
  std::string ciphersuite() const;

  // mbedTLS's key-export callback, installed on configs with fast records:
  // the keys go to the Session being handshaken on this thread (mbedTLS
  // calls it per configuration, not per session). Not for other callers.
  static int on_export_keys(void* p, const unsigned char* ms, const unsigned char* kb, size_t maclen,
                            size_t keylen, size_t ivlen, const unsigned char client_random[32],
                            const unsigned char server_random[32], mbedtls_tls_prf_types prf);

  // The raw mbedTLS context, for tests that drive renegotiation or read
  // counters; never used by the proxy.
  mbedtls_ssl_context* ssl_for_test() { return &ssl_; }
  // Overrides the next outgoing sequence number of the fast layer (tests of
  // nonce exhaustion and of a peer that skips a record).
  RecordLayer* record_layer_for_test() { return fast_.get(); }

  // Makes the memory BIO answer WANT_READ / WANT_WRITE on every other call,
  // like mbedTLS's ssl_server2 nbio=2, so tests reach every resume path.
  void set_flaky_bio_for_test(bool on) { flaky_ = on; }

 private:
  Session();
  static int bio_send(void* ctx, const unsigned char* buf, size_t len);
  static int bio_recv(void* ctx, unsigned char* buf, size_t len);
  static int verify_ip(void* ctx, mbedtls_x509_crt* crt, int depth, uint32_t* flags);
  bool flaky_skip();
  Status set_error(int ret, const char* what);  // not "fail": CMocka defines that macro
  Status finish_handshake();
  void try_fast_records();
  Status fast_read(uint8_t* buf, size_t cap, size_t* n);
  Status fast_fail(Alert alert, const std::string& why);
  void consume_input(size_t n);

  std::unique_ptr<RecordLayer> fast_;
  std::unique_ptr<RecordKeys> keys_;  // captured during the handshake
  bool fast_allowed_ = false;
  std::vector<uint8_t> plain_;  // opened plaintext the caller had no room for
  size_t plain_off_ = 0;
  int empty_records_ = 0;
  bool peer_closed_ = false;
  bool failed_ = false;
  std::string alpn_, suite_;  // kept once mbedTLS's context is released
  std::string label_;

  mbedtls_ssl_context ssl_;
  std::shared_ptr<const Leaf> leaf_;
  std::vector<uint8_t> in_;
  size_t in_off_ = 0;
  std::vector<uint8_t> out_;
  std::string err_;
  int last_ret_ = 0;
  bool done_ = false;
  bool resumed_ = false;
  bool closed_ = false;
  bool is_client_ = false;
  uint8_t ip_[16] = {};  // the origin's IP literal, checked by verify_ip
  size_t ip_len_ = 0;
  bool flaky_ = false;
  bool flaky_flip_ = false;
};

}  // namespace shoal::tls
