// X.509 name constraints (RFC 5280 §4.2.1.10) of the site CA, so Shoal never
// mints a leaf that clients would reject: a CA a security team approved with
// `tools/gen-ca.sh --permit DOMAIN` can vouch only for those domains, and a
// host outside them is tunnelled instead of hijacked. mbedTLS 2.28 neither
// parses nor enforces this extension; this module does both for the names
// Shoal mints (dNSName and iPAddress). Pure; any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shoal::tls {

// An iPAddress subtree: address and mask, both 4 or 16 bytes.
struct IpSubtree {
  uint8_t addr[16] = {};
  uint8_t mask[16] = {};
  size_t len = 0;
  std::string str() const;  // "10.0.0.0/8", "fd00::/8" (non-contiguous masks as "addr/mask")
};

struct NameConstraints {
  std::vector<std::string> permitted_dns, excluded_dns;  // lower-cased, as written (".x" kept)
  std::vector<IpSubtree> permitted_ip, excluded_ip;
  // Subtrees of other name types (rfc822Name, URI, directoryName, ...):
  // irrelevant to server leaves, kept only for describe().
  size_t other_permitted = 0, other_excluded = 0;

  bool empty() const {
    return permitted_dns.empty() && excluded_dns.empty() && permitted_ip.empty() && excluded_ip.empty() &&
           other_permitted == 0 && other_excluded == 0;
  }
  // True when a leaf for host (a DNS name, or an IPv4/IPv6 literal; case and
  // one trailing dot or IPv6 brackets ignored) lies inside the constraints:
  // not in any excluded subtree of its type and, when subtrees of its type are
  // permitted, in one of them. A DNS subtree "example.com" holds example.com
  // and every name below it, ".example.com" only the names below it, "" every
  // name. An IPv4-mapped IPv6 literal is checked as well in its IPv4 form
  // (Shoal's leaf for it carries both).
  bool permits(const std::string& host) const;
  // "permitted DNS:a.example, IP:10.0.0.0/8; excluded IP:0.0.0.0/0", or
  // "none" when empty.
  std::string describe() const;
};

// Parses a NameConstraints extnValue (the DER inside the OCTET STRING) into
// *out. Refuses (false, *err set) anything that is not well-formed DER of
// that shape, a dNSName that is not IA5 text, an iPAddress that is not 8 or
// 32 bytes, and a GeneralSubtree with minimum/maximum other than the RFC's
// (absent minimum or 0; no maximum).
bool parse_name_constraints(const unsigned char* der, size_t len, NameConstraints* out, std::string* err);

// The RFC 5280 dNSName subtree match alone; name and subtree lower-case.
bool dns_in_subtree(const std::string& name, const std::string& subtree);

}  // namespace shoal::tls
