// Site CA loading, leaf minting and the leaf LRU.
//
// mbedTLS 2.28 has no subjectAltName or extendedKeyUsage writer, so both
// extensions are DER-encoded here with mbedtls_asn1_write_* (which write
// backwards from the end of a buffer) and attached as raw extensions.
#include "shoal/tls/cert_authority.h"

#include <arpa/inet.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/platform.h>
#include <mbedtls/sha1.h>
#include <mbedtls/x509_crt.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "shoal/tls/session.h"

namespace shoal::tls {

namespace {

using Clock = std::chrono::system_clock;

// Subject CN upper bound (RFC 5280 ub-common-name).
constexpr size_t kMaxCommonName = 64;
constexpr size_t kMaxDnsName = 253;
constexpr size_t kMaxLabel = 63;
// Big enough for a leaf signed by an RSA-8192 CA with a long subject.
constexpr size_t kDerBufSize = 8192;

std::string mbed_error(int ret) {
  char buf[160];
  mbedtls_strerror(ret, buf, sizeof buf);
  return buf;
}

// Reads a whole file; on failure says why in errno terms.
bool read_file(const std::string& path, std::vector<unsigned char>* out, std::string* why) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *why = std::strerror(errno);
    return false;
  }
  unsigned char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->insert(out->end(), buf, buf + n);
  bool ok = std::ferror(f) == 0;
  if (!ok) *why = std::strerror(errno);
  std::fclose(f);
  return ok;
}

// mbedTLS recognises PEM only when the buffer ends with a NUL that is
// counted in its length; DER must be passed exactly.
size_t terminate_if_pem(std::vector<unsigned char>* buf) {
  static const char kBegin[] = "-----BEGIN ";
  const unsigned char* b = buf->data();
  bool pem = buf->size() >= sizeof kBegin - 1 &&
             std::search(b, b + buf->size(), kBegin, kBegin + sizeof kBegin - 1) != b + buf->size();
  if (pem) buf->push_back('\0');
  return buf->size();
}

// mbedTLS 2.28 hands every extension it does not know to this callback.
// nameConstraints is parsed here (into ctx->nc when the caller wants it);
// anything else is refused, so an unknown critical extension still fails
// the parse as it would without a callback, and a non-critical one is
// skipped. A malformed nameConstraints is noted in ctx->err even when it
// is not critical (mbedTLS then skips it), so the load refuses it.
struct ExtCtx {
  NameConstraints* nc = nullptr;
  std::string err;
};

int on_unknown_ext(void* p_ctx, const mbedtls_x509_crt*, const mbedtls_x509_buf* oid, int,
                   const unsigned char* p, const unsigned char* end) {
  static const char kOid[] = MBEDTLS_OID_NAME_CONSTRAINTS;
  if (oid->len != sizeof kOid - 1 || std::memcmp(oid->p, kOid, oid->len) != 0)
    return MBEDTLS_ERR_X509_FEATURE_UNAVAILABLE;
  auto* ctx = static_cast<ExtCtx*>(p_ctx);
  NameConstraints nc;
  std::string e;
  if (!parse_name_constraints(p, static_cast<size_t>(end - p), &nc, &e)) {
    if (ctx != nullptr) ctx->err = e;
    return MBEDTLS_ERR_X509_INVALID_EXTENSIONS;
  }
  if (ctx != nullptr && ctx->nc != nullptr) *ctx->nc = std::move(nc);
  return 0;
}

// Parses the first certificate of buf (PEM, NUL-terminated by
// terminate_if_pem, or DER) and appends it to crt, through on_unknown_ext.
// Returns 0 or a negative mbedTLS error.
int parse_first_cert(mbedtls_x509_crt* crt, const std::vector<unsigned char>& buf, size_t n, bool is_pem,
                     ExtCtx* ctx) {
  if (!is_pem) return mbedtls_x509_crt_parse_der_with_ext_cb(crt, buf.data(), n, 1, on_unknown_ext, ctx);
  mbedtls_pem_context pem;
  mbedtls_pem_init(&pem);
  size_t used = 0;
  int ret = mbedtls_pem_read_buffer(&pem, "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----",
                                    buf.data(), nullptr, 0, &used);
  if (ret == 0)
    ret = mbedtls_x509_crt_parse_der_with_ext_cb(crt, pem.buf, pem.buflen, 1, on_unknown_ext, ctx);
  mbedtls_pem_free(&pem);
  return ret;
}

Clock::time_point to_time_point(const mbedtls_x509_time& t) {
  struct tm tm {};
  tm.tm_year = t.year - 1900;
  tm.tm_mon = t.mon - 1;
  tm.tm_mday = t.day;
  tm.tm_hour = t.hour;
  tm.tm_min = t.min;
  tm.tm_sec = t.sec;
  return Clock::from_time_t(timegm(&tm));
}

std::string format_x509_time(const mbedtls_x509_time& t) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d UTC", t.year, t.mon, t.day, t.hour, t.min,
                t.sec);
  return buf;
}

// "YYYYMMDDhhmmss" in UTC, as mbedtls_x509write_crt_set_validity wants.
std::string x509_validity_string(std::time_t t) {
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

bool dns_name_ok(const std::string& n) {
  if (n.empty() || n.size() > kMaxDnsName) return false;
  size_t label = 0;
  for (char c : n) {
    if (c == '.') {
      if (label == 0) return false;  // empty label, leading or doubled dot
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok || ++label > kMaxLabel) return false;
  }
  return label != 0;  // no trailing dot
}

// Writers below follow mbedTLS's backwards convention: *p moves towards
// start and the return value is the number of bytes written (or < 0).
int write_len_tag(unsigned char** p, unsigned char* start, size_t len, unsigned char tag) {
  int a = mbedtls_asn1_write_len(p, start, len);
  if (a < 0) return a;
  int b = mbedtls_asn1_write_tag(p, start, tag);
  if (b < 0) return b;
  return a + b;
}

// One GeneralName: an IMPLICIT context tag over raw bytes.
int write_general_name(unsigned char** p, unsigned char* start, unsigned char tag, const unsigned char* v,
                       size_t n) {
  int ret = mbedtls_asn1_write_raw_buffer(p, start, v, n);
  if (ret < 0) return ret;
  int hdr = write_len_tag(p, start, n, static_cast<unsigned char>(MBEDTLS_ASN1_CONTEXT_SPECIFIC | tag));
  return hdr < 0 ? hdr : ret + hdr;
}

// SubjectAltName ::= GeneralNames ::= SEQUENCE OF GeneralName: a dNSName [2]
// IA5String for a name, an iPAddress [7] OCTET STRING (4 or 16 bytes) for an
// IP literal. An IPv4-mapped IPv6 address (what a dual-stack socket reports
// for an IPv4 peer) also gets its 4-byte form, since the client knows the
// origin by its IPv4 address.
int write_san(unsigned char** p, unsigned char* start, const std::string& name, const uint8_t* ip,
              size_t ip_len) {
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  int ret;
  size_t len = 0;
  if (ip_len == 0) {
    ret = write_general_name(p, start, 2, reinterpret_cast<const unsigned char*>(name.data()), name.size());
    if (ret < 0) return ret;
    len += static_cast<size_t>(ret);
  } else {
    if (ip_len == 16 && std::memcmp(ip, kMapped, sizeof kMapped) == 0) {
      if ((ret = write_general_name(p, start, 7, ip + 12, 4)) < 0) return ret;
      len += static_cast<size_t>(ret);
    }
    if ((ret = write_general_name(p, start, 7, ip, ip_len)) < 0) return ret;
    len += static_cast<size_t>(ret);
  }
  if ((ret = write_len_tag(p, start, len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0) return ret;
  return static_cast<int>(len) + ret;
}

// ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId { serverAuth }
int write_eku_server_auth(unsigned char** p, unsigned char* start) {
  int ret =
      mbedtls_asn1_write_oid(p, start, MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH));
  if (ret < 0) return ret;
  size_t len = static_cast<size_t>(ret);
  if ((ret = write_len_tag(p, start, len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0) return ret;
  return static_cast<int>(len) + ret;
}

// Owns the pieces of one mbedtls_x509write_cert; the borrowed issuer list
// is detached before mbedTLS frees the rest.
struct CrtWriter {
  CrtWriter() {
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
  }
  ~CrtWriter() {
    w.issuer = nullptr;
    mbedtls_x509write_crt_free(&w);
    mbedtls_mpi_free(&serial);
  }
  mbedtls_x509write_cert w;
  mbedtls_mpi serial;
};

}  // namespace

std::string normalize_name(const std::string& host) {
  std::string n = host;
  if (n.size() >= 2 && n.front() == '[' && n.back() == ']')
    n = n.substr(1, n.size() - 2);
  else if (n.size() > 1 && n.back() == '.')
    n.pop_back();  // "host." is the same host as "host"
  for (char& c : n)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return n;
}

bool parse_ip_literal(const std::string& host, uint8_t out[16], size_t* len) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (inet_pton(AF_INET, h.c_str(), out) == 1) {
    *len = 4;
    return true;
  }
  if (inet_pton(AF_INET6, h.c_str(), out) == 1) {
    *len = 16;
    return true;
  }
  return false;
}

bool find_extension(const mbedtls_x509_crt& crt, const char* oid, size_t oid_len, const unsigned char** val,
                    size_t* len) {
  unsigned char* p = crt.v3_ext.p;
  if (p == nullptr || crt.v3_ext.len == 0) return false;
  const unsigned char* end = p + crt.v3_ext.len;
  size_t n = 0;
  // v3_ext may or may not include the [3] EXPLICIT wrapper; accept both.
  if (*p == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 3)) {
    if (mbedtls_asn1_get_tag(&p, end, &n, *p) != 0) return false;
    end = p + n;
  }
  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return false;
  end = p + n;
  while (p < end) {
    if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
      return false;
    const unsigned char* ext_end = p + n;
    size_t id_len = 0;
    if (mbedtls_asn1_get_tag(&p, ext_end, &id_len, MBEDTLS_ASN1_OID) != 0) return false;
    bool match = id_len == oid_len && std::memcmp(p, oid, oid_len) == 0;
    p += id_len;
    if (p < ext_end && *p == MBEDTLS_ASN1_BOOLEAN) {
      int critical = 0;
      if (mbedtls_asn1_get_bool(&p, ext_end, &critical) != 0) return false;
    }
    size_t v_len = 0;
    if (mbedtls_asn1_get_tag(&p, ext_end, &v_len, MBEDTLS_ASN1_OCTET_STRING) != 0) return false;
    if (match) {
      *val = p;
      *len = v_len;
      return true;
    }
    p = const_cast<unsigned char*>(ext_end);
  }
  return false;
}

bool san_has_ip(const mbedtls_x509_crt& crt, const uint8_t* ip, size_t len) {
  const unsigned char* v = nullptr;
  size_t v_len = 0;
  if (!find_extension(crt, MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), &v,
                      &v_len))
    return false;
  auto* p = const_cast<unsigned char*>(v);
  const unsigned char* end = v + v_len;
  size_t n = 0;
  if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0) return false;
  end = p + n;
  while (p < end) {
    unsigned char tag = *p++;
    if (mbedtls_asn1_get_len(&p, end, &n) != 0) return false;
    if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && n == len && std::memcmp(p, ip, len) == 0) return true;
    p += n;
  }
  return false;
}

Leaf::Leaf() {
  mbedtls_x509_crt_init(&chain);
  mbedtls_pk_init(&key);
}

Leaf::~Leaf() {
  mbedtls_x509_crt_free(&chain);
  mbedtls_pk_free(&key);
}

CertAuthority::CertAuthority() {
  mbedtls_x509_crt_init(&ca_cert_);
  mbedtls_pk_init(&ca_key_);
}

CertAuthority::~CertAuthority() {
  mbedtls_asn1_free_named_data_list(&issuer_names_);
  mbedtls_x509_crt_free(&ca_cert_);
  mbedtls_pk_free(&ca_key_);
}

std::unique_ptr<CertAuthority> CertAuthority::load(const std::string& cert_path, const std::string& key_path,
                                                   std::string* err, bool allow_loose_key_mode) {
  std::unique_ptr<CertAuthority> ca(new CertAuthority());
  // Every independent problem is reported in one pass, joined by "; ".
  std::vector<std::string> errs;

  bool cert_ok = false;
  std::vector<unsigned char> buf;
  std::string why;
  if (!read_file(cert_path, &buf, &why)) {
    errs.push_back(cert_path + ": cannot read: " + why);
  } else {
    const size_t raw = buf.size();
    size_t n = terminate_if_pem(&buf);
    ExtCtx ext;
    ext.nc = &ca->constraints_;
    int ret = parse_first_cert(&ca->ca_cert_, buf, n, n != raw, &ext);
    const mbedtls_x509_crt& c = ca->ca_cert_;
    if (!ext.err.empty()) {
      errs.push_back(cert_path + ": bad nameConstraints extension: " + ext.err);
    } else if (ret < 0 || c.version == 0) {
      errs.push_back(cert_path +
                     ": not a certificate: " + mbed_error(ret < 0 ? ret : MBEDTLS_ERR_X509_INVALID_FORMAT));
    } else if ((c.ext_types & MBEDTLS_X509_EXT_BASIC_CONSTRAINTS) == 0 || c.ca_istrue == 0) {
      errs.push_back(cert_path + ": not a CA certificate (basicConstraints CA:TRUE missing)");
    } else if (mbedtls_x509_crt_check_key_usage(&c, MBEDTLS_X509_KU_KEY_CERT_SIGN) != 0) {
      errs.push_back(cert_path + ": not a CA certificate (keyUsage lacks keyCertSign)");
    } else if (mbedtls_x509_time_is_past(&c.valid_to)) {
      errs.push_back(cert_path + ": expired on " + format_x509_time(c.valid_to));
    } else if (mbedtls_x509_time_is_future(&c.valid_from)) {
      errs.push_back(cert_path + ": not valid before " + format_x509_time(c.valid_from));
    } else {
      cert_ok = true;
    }
  }

  bool key_ok = false;
  struct stat st {};
  buf.clear();
  why.clear();
  if (stat(key_path.c_str(), &st) != 0 || !read_file(key_path, &buf, &why)) {
    if (why.empty()) why = std::strerror(errno);
    errs.push_back(key_path + ": cannot read: " + why);
  } else {
    unsigned mode = st.st_mode & 07777;
    if ((mode & 077) != 0 && !allow_loose_key_mode) {
      const char* how = (mode & 044) != 0   ? "readable by group/other"
                        : (mode & 022) != 0 ? "writable by group/other"
                                            : "accessible by group/other";
      char m[8];
      std::snprintf(m, sizeof m, "%04o", mode);
      errs.push_back(key_path + ": permissions " + m + " are too open (" + how + "); chmod 600 " + key_path);
    }
    size_t n = terminate_if_pem(&buf);
    int ret = mbedtls_pk_parse_key(&ca->ca_key_, buf.data(), n, nullptr, 0);
    mbedtls_platform_zeroize(buf.data(), buf.size());
    if (ret == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
      errs.push_back(key_path + ": key is encrypted; decrypt it (openssl pkey -in " + key_path +
                     " -out <new file>)");
    } else if (ret != 0) {
      errs.push_back(key_path + ": not a private key: " + mbed_error(ret));
    } else {
      key_ok = true;
    }
  }

  if (cert_ok && key_ok && mbedtls_pk_check_pair(&ca->ca_cert_.pk, &ca->ca_key_) != 0)
    errs.push_back(key_path + ": key does not match the certificate in " + cert_path);

  if (errs.empty()) {
    std::string e;
    if (!ca->prepare_issuer(cert_path, &e)) errs.push_back(e);
  }
  if (!errs.empty()) {
    std::string all;
    for (const auto& e : errs) all += (all.empty() ? "" : "; ") + e;
    if (err != nullptr) *err = all;
    return nullptr;
  }
  return ca;
}

bool CertAuthority::prepare_issuer(const std::string& cert_path, std::string* err) {
  // The writer emits its name list head-last, so prepend each RDN in order.
  for (const mbedtls_x509_name* n = &ca_cert_.subject; n != nullptr && n->oid.p != nullptr; n = n->next) {
    auto* d = static_cast<mbedtls_asn1_named_data*>(mbedtls_calloc(1, sizeof(mbedtls_asn1_named_data)));
    if (d == nullptr) {
      *err = cert_path + ": out of memory";
      return false;
    }
    d->next = issuer_names_;
    issuer_names_ = d;
    d->oid.tag = n->oid.tag;
    d->oid.len = n->oid.len;
    d->val.tag = n->val.tag;
    d->val.len = n->val.len;
    d->oid.p = static_cast<unsigned char*>(mbedtls_calloc(1, n->oid.len + 1));
    d->val.p = static_cast<unsigned char*>(mbedtls_calloc(1, n->val.len + 1));
    if (d->oid.p == nullptr || d->val.p == nullptr) {
      *err = cert_path + ": out of memory";
      return false;
    }
    std::memcpy(d->oid.p, n->oid.p, n->oid.len);
    std::memcpy(d->val.p, n->val.p, n->val.len);
  }
  // Multi-valued RDNs and odd string types would not survive the writer:
  // check the round trip now rather than mint leaves clients cannot chain.
  std::vector<unsigned char> out(ca_cert_.subject_raw.len + 64);
  unsigned char* p = out.data() + out.size();
  int ret = mbedtls_x509_write_names(&p, out.data(), issuer_names_);
  if (ret < 0 || static_cast<size_t>(ret) != ca_cert_.subject_raw.len ||
      std::memcmp(p, ca_cert_.subject_raw.p, ca_cert_.subject_raw.len) != 0) {
    *err = cert_path +
           ": the CA subject cannot be reproduced exactly as a leaf issuer by mbedTLS 2.28 "
           "(multi-valued RDN?); issue the CA with a plain subject such as /O=Site/CN=Site CA";
    return false;
  }

  // authorityKeyIdentifier = the CA's subjectKeyIdentifier when it has one,
  // else SHA-1 of its public key (RFC 5280 §4.2.1.2 method 1, as OpenSSL).
  unsigned char keyid[64];
  size_t keyid_len = 0;
  const unsigned char* ski = nullptr;
  size_t ski_len = 0;
  if (find_extension(ca_cert_, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                     MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &ski, &ski_len)) {
    auto* q = const_cast<unsigned char*>(ski);
    size_t n = 0;
    if (mbedtls_asn1_get_tag(&q, ski + ski_len, &n, MBEDTLS_ASN1_OCTET_STRING) == 0 && n > 0 &&
        n <= sizeof keyid) {
      std::memcpy(keyid, q, n);
      keyid_len = n;
    }
  }
  if (keyid_len == 0) {
    unsigned char pub[2048];
    unsigned char* q = pub + sizeof pub;
    ret = mbedtls_pk_write_pubkey(&q, pub, &ca_cert_.pk);
    if (ret < 0 || mbedtls_sha1_ret(q, static_cast<size_t>(ret), keyid) != 0) {
      *err = cert_path + ": cannot compute the key identifier: " + mbed_error(ret);
      return false;
    }
    keyid_len = 20;
  }
  // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
  unsigned char aki[128];
  unsigned char* q = aki + sizeof aki;
  // keyid is at most 64 bytes, so these writes into 128 bytes cannot fail.
  mbedtls_asn1_write_raw_buffer(&q, aki, keyid, keyid_len);
  write_len_tag(&q, aki, keyid_len, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0);
  write_len_tag(&q, aki, static_cast<size_t>(aki + sizeof aki - q),
                MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  aki_ext_.assign(q, aki + sizeof aki);
  ca_not_after_ = to_time_point(ca_cert_.valid_to);
  return true;
}

std::shared_ptr<const Leaf> CertAuthority::mint(const std::string& name, std::string* err,
                                                std::chrono::hours validity) const {
  auto fail = [&](const std::string& why) -> std::shared_ptr<const Leaf> {
    if (err != nullptr) *err = "mint " + name + ": " + why;
    return nullptr;
  };
  const std::string host = normalize_name(name);
  uint8_t ip[16];
  size_t ip_len = 0;
  if (!parse_ip_literal(host, ip, &ip_len)) {
    ip_len = 0;
    if (!dns_name_ok(host)) return fail("not a valid DNS name or IP address");
  }
  if (validity.count() <= 0) return fail("validity must be positive");
  if (!constraints_.permits(host))
    return fail("outside the CA's name constraints (" + constraints_.describe() + ")");
  if (validity > kMaxLeafValidity) validity = kMaxLeafValidity;

  // One DRBG per thread: minting runs on several pool threads at once and a
  // shared generator would serialize them (and its state is not ours to share).
  thread_local Rng rng;

  auto leaf = std::make_shared<Leaf>();
  leaf->name = host;
  int ret = mbedtls_pk_setup(&leaf->key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (ret != 0) return fail(mbed_error(ret));
  // Generating the key computes d*G, which also caches the base-point table
  // in this key's group, so sessions on other threads that later sign with
  // the shared leaf only read it.
  ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(leaf->key), Rng::random, &rng);
  if (ret != 0) return fail("key generation: " + mbed_error(ret));

  CrtWriter cw;
  mbedtls_x509write_cert* w = &cw.w;
  mbedtls_x509write_crt_set_version(w, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(w, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(w, &leaf->key);
  mbedtls_x509write_crt_set_issuer_key(w, &ca_key_);

  unsigned char serial[16];
  Rng::random(&rng, serial, sizeof serial);
  serial[0] = static_cast<unsigned char>((serial[0] & 0x7f) | 0x40);  // positive, full length
  if ((ret = mbedtls_mpi_read_binary(&cw.serial, serial, sizeof serial)) != 0 ||
      (ret = mbedtls_x509write_crt_set_serial(w, &cw.serial)) != 0)
    return fail("serial: " + mbed_error(ret));

  const std::time_t now = Clock::to_time_t(Clock::now());
  std::time_t not_after = now + static_cast<std::time_t>(validity.count()) * 3600;
  const std::time_t ca_end = Clock::to_time_t(ca_not_after_);
  if (not_after > ca_end) not_after = ca_end;
  ret = mbedtls_x509write_crt_set_validity(w, x509_validity_string(now - 3600).c_str(),
                                           x509_validity_string(not_after).c_str());
  if (ret != 0) return fail("validity: " + mbed_error(ret));
  leaf->not_after = Clock::from_time_t(not_after);

  const bool with_cn = host.size() <= kMaxCommonName && (ip_len == 0 || constraints_.empty());
  ret = mbedtls_x509write_crt_set_subject_name(w, with_cn ? ("CN=" + host).c_str() : "");
  if (ret != 0) return fail("subject: " + mbed_error(ret));
  w->issuer = issuer_names_;  // borrowed; CrtWriter detaches it

  unsigned char ext[512];
  unsigned char* p = ext + sizeof ext;
  if ((ret = mbedtls_x509write_crt_set_basic_constraints(w, 0, -1)) != 0 ||
      (ret = mbedtls_x509write_crt_set_key_usage(w, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) != 0 ||
      (ret = mbedtls_x509write_crt_set_subject_key_identifier(w)) != 0)
    return fail("extensions: " + mbed_error(ret));
  if ((ret = write_eku_server_auth(&p, ext)) < 0 ||
      (ret = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                                 MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, p,
                                                 static_cast<size_t>(ext + sizeof ext - p))) != 0)
    return fail("extendedKeyUsage: " + mbed_error(ret));
  p = ext + sizeof ext;
  // RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
  if ((ret = write_san(&p, ext, host, ip, ip_len)) < 0 ||
      (ret = mbedtls_x509write_crt_set_extension(
           w, MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), with_cn ? 0 : 1,
           p, static_cast<size_t>(ext + sizeof ext - p))) != 0)
    return fail("subjectAltName: " + mbed_error(ret));
  ret = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
                                            MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER), 0,
                                            aki_ext_.data(), aki_ext_.size());
  if (ret != 0) return fail("authorityKeyIdentifier: " + mbed_error(ret));

  std::vector<unsigned char> der(kDerBufSize);
  {
    std::lock_guard<std::mutex> lock(sign_mu_);
    ret = mbedtls_x509write_crt_der(w, der.data(), der.size(), Rng::random, &rng);
  }
  if (ret < 0) return fail("signing: " + mbed_error(ret));
  const unsigned char* start = der.data() + der.size() - static_cast<size_t>(ret);
  if ((ret = mbedtls_x509_crt_parse_der(&leaf->chain, start, static_cast<size_t>(ret))) != 0 ||
      (ret = mbedtls_x509_crt_parse_der_with_ext_cb(&leaf->chain, ca_cert_.raw.p, ca_cert_.raw.len, 1,
                                                    on_unknown_ext, nullptr)) != 0)
    return fail("re-parsing the chain: " + mbed_error(ret));
  return leaf;
}

LeafCache::LeafCache(size_t capacity) : capacity_(capacity) {}

std::shared_ptr<const Leaf> LeafCache::get(const std::string& name,
                                           std::chrono::system_clock::time_point now) {
  const std::string key = normalize_name(name);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  if ((*it->second)->not_after - now < kLeafRenewBefore) {
    lru_.erase(it->second);
    index_.erase(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return lru_.front();
}

void LeafCache::put(std::shared_ptr<const Leaf> leaf) {
  if (leaf == nullptr || capacity_ == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(leaf->name);
  if (it != index_.end()) {
    lru_.erase(it->second);
    index_.erase(it);
  }
  lru_.push_front(std::move(leaf));
  index_.emplace(lru_.front()->name, lru_.begin());
  while (lru_.size() > capacity_) {
    index_.erase(lru_.back()->name);
    lru_.pop_back();
  }
}

size_t LeafCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

void LeafCache::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  index_.clear();
  lru_.clear();
}

}  // namespace shoal::tls
