// NameConstraints: DER parsing (mbedTLS 2.28 has no parser for it) and the
// RFC 5280 §4.2.1.10 match for the two name types Shoal mints.
#include "shoal/tls/name_constraints.h"

#include <arpa/inet.h>
#include <mbedtls/asn1.h>

#include <cstring>

#include "shoal/tls/cert_authority.h"

namespace shoal::tls {

namespace {

// GeneralName tags (RFC 5280 §4.2.1.6), context-specific; dNSName and
// iPAddress are primitive, the others may be either.
constexpr unsigned char kTagDns = MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2;
constexpr unsigned char kTagIp = MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7;
constexpr unsigned char kTagPermitted = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0;
constexpr unsigned char kTagExcluded = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 1;
constexpr unsigned char kTagMinimum = MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0;
constexpr unsigned char kTagMaximum = MBEDTLS_ASN1_CONTEXT_SPECIFIC | 1;
constexpr unsigned char kSeq = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

bool ip_in(const uint8_t* ip, size_t len, const IpSubtree& t) {
  if (len != t.len) return false;
  for (size_t i = 0; i < len; ++i)
    if ((ip[i] & t.mask[i]) != (t.addr[i] & t.mask[i])) return false;
  return true;
}

bool ip_permitted(const NameConstraints& nc, const uint8_t* ip, size_t len) {
  for (const auto& t : nc.excluded_ip)
    if (ip_in(ip, len, t)) return false;
  if (nc.permitted_ip.empty()) return true;
  for (const auto& t : nc.permitted_ip)
    if (ip_in(ip, len, t)) return true;
  return false;
}

// One GeneralSubtrees list: SEQUENCE OF GeneralSubtree between p and end.
bool parse_subtrees(unsigned char* p, const unsigned char* end, bool permitted, NameConstraints* out,
                    std::string* err) {
  auto& dns = permitted ? out->permitted_dns : out->excluded_dns;
  auto& ips = permitted ? out->permitted_ip : out->excluded_ip;
  size_t& other = permitted ? out->other_permitted : out->other_excluded;
  const char* which = permitted ? "permittedSubtrees" : "excludedSubtrees";
  if (p == end) {
    *err = std::string(which) + " is empty";
    return false;
  }
  while (p < end) {
    size_t n = 0;
    if (mbedtls_asn1_get_tag(&p, end, &n, kSeq) != 0) {
      *err = std::string(which) + ": a GeneralSubtree is not a SEQUENCE";
      return false;
    }
    unsigned char* q = p;
    const unsigned char* st_end = p + n;
    p += n;
    if (q >= st_end) {
      *err = std::string(which) + ": empty GeneralSubtree";
      return false;
    }
    const unsigned char tag = *q++;
    size_t v_len = 0;
    if (mbedtls_asn1_get_len(&q, st_end, &v_len) != 0) {
      *err = std::string(which) + ": bad GeneralName length";
      return false;
    }
    const unsigned char* v = q;
    q += v_len;
    if (tag == kTagDns) {
      std::string name(reinterpret_cast<const char*>(v), v_len);
      for (char c : name) {
        if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e) {
          *err = std::string(which) + ": dNSName is not printable IA5 text";
          return false;
        }
      }
      if (name.size() > 1 && name.back() == '.') name.pop_back();
      dns.push_back(lower(name));
    } else if (tag == kTagIp) {
      if (v_len != 8 && v_len != 32) {
        *err = std::string(which) + ": iPAddress is " + std::to_string(v_len) + " bytes, not 8 or 32";
        return false;
      }
      IpSubtree t;
      t.len = v_len / 2;
      std::memcpy(t.addr, v, t.len);
      std::memcpy(t.mask, v + t.len, t.len);
      ips.push_back(t);
    } else {
      ++other;
    }
    // minimum [0] DEFAULT 0 (DER omits it; tolerate an explicit 0), maximum
    // [1] must be absent (RFC 5280: "MUST be absent").
    if (q < st_end && *q == kTagMinimum) {
      ++q;
      size_t m = 0;
      if (mbedtls_asn1_get_len(&q, st_end, &m) != 0 || m != 1 || *q != 0) {
        *err = std::string(which) + ": GeneralSubtree minimum other than 0";
        return false;
      }
      q += m;
    }
    if (q < st_end && *q == kTagMaximum) {
      *err = std::string(which) + ": GeneralSubtree has a maximum (RFC 5280 forbids it)";
      return false;
    }
    if (q != st_end) {
      *err = std::string(which) + ": trailing bytes in a GeneralSubtree";
      return false;
    }
  }
  return true;
}

}  // namespace

std::string IpSubtree::str() const {
  char a[INET6_ADDRSTRLEN] = "";
  inet_ntop(len == 4 ? AF_INET : AF_INET6, addr, a, sizeof a);
  // A contiguous mask prints as a prefix length.
  size_t bits = 0;
  bool contiguous = true, ended = false;
  for (size_t i = 0; i < len; ++i) {
    for (int b = 7; b >= 0; --b) {
      bool one = (mask[i] >> b) & 1;
      if (one && ended) contiguous = false;
      if (one)
        ++bits;
      else
        ended = true;
    }
  }
  if (contiguous) return std::string(a) + "/" + std::to_string(bits);
  char m[INET6_ADDRSTRLEN] = "";
  inet_ntop(len == 4 ? AF_INET : AF_INET6, mask, m, sizeof m);
  return std::string(a) + "/" + m;
}

bool dns_in_subtree(const std::string& name, const std::string& subtree) {
  if (subtree.empty()) return true;
  if (subtree.front() == '.')  // only names below it
    return name.size() > subtree.size() &&
           name.compare(name.size() - subtree.size(), subtree.size(), subtree) == 0;
  if (name == subtree) return true;
  return name.size() > subtree.size() + 1 &&
         name.compare(name.size() - subtree.size(), subtree.size(), subtree) == 0 &&
         name[name.size() - subtree.size() - 1] == '.';
}

bool NameConstraints::permits(const std::string& host) const {
  const std::string h = normalize_name(host);
  uint8_t ip[16];
  size_t ip_len = 0;
  if (parse_ip_literal(h, ip, &ip_len)) {
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (ip_len == 16 && std::memcmp(ip, kMapped, sizeof kMapped) == 0 && !ip_permitted(*this, ip + 12, 4))
      return false;
    return ip_permitted(*this, ip, ip_len);
  }
  for (const auto& t : excluded_dns)
    if (dns_in_subtree(h, t)) return false;
  if (permitted_dns.empty()) return true;
  for (const auto& t : permitted_dns)
    if (dns_in_subtree(h, t)) return true;
  return false;
}

std::string NameConstraints::describe() const {
  if (empty()) return "none";
  auto list = [](const std::vector<std::string>& dns, const std::vector<IpSubtree>& ips, size_t other) {
    std::string s;
    for (const auto& d : dns) s += (s.empty() ? "" : ", ") + std::string("DNS:") + d;
    for (const auto& t : ips) s += (s.empty() ? "" : ", ") + std::string("IP:") + t.str();
    if (other > 0) s += (s.empty() ? "" : ", ") + std::to_string(other) + " of other name types";
    return s;
  };
  std::string p = list(permitted_dns, permitted_ip, other_permitted);
  std::string e = list(excluded_dns, excluded_ip, other_excluded);
  std::string s;
  if (!p.empty()) s = "permitted " + p;
  if (!e.empty()) s += (s.empty() ? "" : "; ") + std::string("excluded ") + e;
  return s;
}

bool parse_name_constraints(const unsigned char* der, size_t len, NameConstraints* out, std::string* err) {
  *out = NameConstraints{};
  auto* p = const_cast<unsigned char*>(der);
  const unsigned char* end = der + len;
  size_t n = 0;
  if (mbedtls_asn1_get_tag(&p, end, &n, kSeq) != 0 || p + n != end) {
    *err = "nameConstraints is not a DER SEQUENCE";
    return false;
  }
  bool seen_p = false, seen_e = false;
  while (p < end) {
    const unsigned char tag = *p;
    if (tag == kTagPermitted && !seen_p && !seen_e) {
      seen_p = true;
    } else if (tag == kTagExcluded && !seen_e) {
      seen_e = true;
    } else {
      *err = "nameConstraints: unexpected element";
      return false;
    }
    if (mbedtls_asn1_get_tag(&p, end, &n, tag) != 0) {
      *err = "nameConstraints: bad length";
      return false;
    }
    if (!parse_subtrees(p, p + n, tag == kTagPermitted, out, err)) return false;
    p += n;
  }
  // RFC 5280: "Conforming CAs MUST NOT issue certificates where name
  // constraints is an empty sequence."
  if (!seen_p && !seen_e) {
    *err = "nameConstraints is empty";
    return false;
  }
  return true;
}

}  // namespace shoal::tls
