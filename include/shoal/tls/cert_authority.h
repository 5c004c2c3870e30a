// The site CA that hijacked connections' leaf certificates are minted from,
// and the per-host leaf cache. Thread-safe: one CertAuthority and one
// LeafCache per daemon, used from every event loop and from the libuv
// thread pool (minting is slow: call mint() only off the event loop).
#pragma once

#include <mbedtls/asn1.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "shoal/tls/name_constraints.h"

namespace shoal::tls {

// The longest validity mint() grants; longer requests are shortened.
constexpr std::chrono::hours kMaxLeafValidity{24 * 7};
// LeafCache::get() treats a leaf with less validity left than this as absent.
constexpr std::chrono::hours kLeafRenewBefore{24};

// Cache key and Leaf::name form of a host: lower-cased, IPv6 brackets
// ("[::1]") or one final dot ("host.") stripped. Pure; any thread.
std::string normalize_name(const std::string& host);

// Parses an IPv4 dotted quad or an IPv6 literal (brackets allowed) into
// network-order bytes; *len becomes 4 or 16. False for anything else.
bool parse_ip_literal(const std::string& host, uint8_t out[16], size_t* len);

// Finds the v3 extension whose OID is the DER bytes oid[0..oid_len) (e.g.
// MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME))
// and points *val/*len at its extnValue contents, inside crt's own buffer.
// False when absent or when the extensions are not well-formed DER.
bool find_extension(const mbedtls_x509_crt& crt, const char* oid, size_t oid_len, const unsigned char** val,
                    size_t* len);

// True when crt's subjectAltName holds an iPAddress equal to ip[0..len)
// (4 or 16 bytes). mbedTLS 2.28 neither lists iPAddress SANs in
// subject_alt_names nor matches them in verification, so Shoal checks them
// itself (see Session::client).
bool san_has_ip(const mbedtls_x509_crt& crt, const uint8_t* ip, size_t len);

// A minted leaf: certificate chain (leaf, then CA) and its private key.
// Immutable once built; shared by every connection that uses it.
struct Leaf {
  Leaf();
  ~Leaf();
  Leaf(const Leaf&) = delete;
  Leaf& operator=(const Leaf&) = delete;
  mbedtls_x509_crt chain;
  mbedtls_pk_context key;
  std::string name;
  std::chrono::system_clock::time_point not_after;
};

class CertAuthority {
 public:
  ~CertAuthority();
  // Loads a PEM (or DER) certificate and key. Refuses, with a message naming
  // the file: unreadable files, a certificate that is not a CA
  // (basicConstraints CA:TRUE), a key that does not match the certificate,
  // and a key file readable or writable by group or other (unless
  // allow_loose_key_mode), and a malformed nameConstraints extension (a
  // well-formed one, critical or not, is parsed into name_constraints();
  // mbedTLS alone would refuse a critical one). Of a PEM file holding
  // several certificates the first is the CA. Returns nullptr and sets *err
  // on failure.
  static std::unique_ptr<CertAuthority> load(const std::string& cert_path, const std::string& key_path,
                                             std::string* err, bool allow_loose_key_mode = false);

  // Mints a leaf for name (a DNS name, or an IPv4/IPv6 literal which gets an
  // iPAddress SAN): ECDSA P-256 key, serial random, NotBefore = now - 1 h,
  // NotAfter = now + validity (at most 7 days, and never past the CA's own
  // NotAfter), subject CN = name (omitted for names over 64 characters, the
  // X.520 limit; the SAN is then critical), SAN = name, extendedKeyUsage
  // serverAuth, signed by the CA with SHA-256. Leaf::name is
  // normalize_name(name). Refuses (nullptr, *err set) names that are neither
  // an IP literal nor made of letters, digits, '-', '_' and '.' in labels of
  // 1..63 characters (253 at most), a validity that is not positive, and a
  // name outside the CA's name constraints (permits()). When the CA has name
  // constraints, an IP leaf has no subject CN (OpenSSL would check the CN
  // as a DNS name against the DNS constraints).
  // Thread-safe; slow (a key generation and a CA signature): call it off the
  // event loop.
  std::shared_ptr<const Leaf> mint(const std::string& name, std::string* err,
                                   std::chrono::hours validity = kMaxLeafValidity) const;

  const mbedtls_x509_crt& cert() const { return ca_cert_; }
  // The CA's nameConstraints (empty when it has none) and whether a leaf for
  // name would lie inside them; see NameConstraints::permits.
  const NameConstraints& name_constraints() const { return constraints_; }
  bool permits(const std::string& name) const { return constraints_.permits(name); }

 private:
  CertAuthority();
  bool prepare_issuer(const std::string& cert_path, std::string* err);
  mbedtls_x509_crt ca_cert_;
  mutable mbedtls_pk_context ca_key_;  // signing needs a non-const context
  // mbedTLS caches a precomputed table in an EC key's group on first use and
  // RSA blinding mutates the key: one CA signature at a time.
  mutable std::mutex sign_mu_;
  // The CA subject as the writer's name list, re-encoding to exactly the
  // CA's subject DER (clients such as Go match issuer to subject bytewise).
  // Built once at load; mint() lends it to each writer read-only.
  mbedtls_asn1_named_data* issuer_names_ = nullptr;
  std::vector<unsigned char> aki_ext_;  // authorityKeyIdentifier extnValue
  std::chrono::system_clock::time_point ca_not_after_;
  NameConstraints constraints_;
};

// LRU of leaves keyed by normalize_name(name). get() returns nullptr when
// absent or when less than kLeafRenewBefore of validity remains (the stale
// entry is dropped; the caller then mints again). put() replaces a leaf of the
// same name and evicts the least recently used beyond capacity. Thread-safe.
class LeafCache {
 public:
  explicit LeafCache(size_t capacity = 1024);
  std::shared_ptr<const Leaf> get(
      const std::string& name, std::chrono::system_clock::time_point now = std::chrono::system_clock::now());
  void put(std::shared_ptr<const Leaf> leaf);
  size_t size() const;
  void clear();

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  std::list<std::shared_ptr<const Leaf>> lru_;  // front = most recent
  std::unordered_map<std::string, std::list<std::shared_ptr<const Leaf>>::iterator> index_;
};

}  // namespace shoal::tls
