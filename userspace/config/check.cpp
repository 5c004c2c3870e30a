// Resource checks that need more than the config text: every regex compiles
// with the engine that will run it (Hyperscan, through the rules module),
// the hijack CA loads (through the tls module), and the site proxy's
// credentials file is private and readable. Kept apart from config.cpp so
// that validate() stays pure; these do I/O and call other modules.
#include <cstring>
#include <string>
#include <vector>

#include "shoal/config/config.h"
#include "shoal/rules/rules.h"
#include "shoal/tls/cert_authority.h"

namespace shoal::config {

namespace {

Diag error_at(const Origin& at, std::string message) {
  return Diag{at.file, at.line, at.col, at.path, std::move(message), false};
}

// Compiles one pattern on its own so that a failure names its own rule: the
// rules module compiles all of them together later and would only give an
// index.
void check_pattern(const std::string& pattern, const Origin& at, std::vector<Diag>* out) {
  std::string err;
  int bad = -1;
  if (!rules::PatternSet::compile({pattern}, &err, &bad))
    out->push_back(error_at(at, "bad regex \"" + pattern + "\": " + err));
}

// The host a hijack regx names when it is a plain host name ("registry.x",
// "^registry\\.x$"), else "" (a real pattern: nothing to check statically).
std::string literal_host(const std::string& regx) {
  std::string r = regx, host;
  if (!r.empty() && r.front() == '^') r.erase(0, 1);
  if (!r.empty() && r.back() == '$') r.pop_back();
  for (size_t i = 0; i < r.size(); ++i) {
    char c = r[i];
    if (c == '\\' && i + 1 < r.size() && r[i + 1] == '.') {
      host += '.';
      ++i;
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_' || c == '.') {
      host += c;
    } else {
      return "";
    }
  }
  return host;
}

// Warns about hijack hosts written as plain names that ca's name
// constraints leave out: Shoal would tunnel them, which is rarely what the
// admin meant. which is "CA" or "next CA".
void check_constraints(const Config& config, const tls::CertAuthority& ca, const char* which,
                       std::vector<Diag>* out) {
  if (ca.name_constraints().empty()) return;
  for (const HijackHost& h : config.hijack_hosts) {
    const std::string host = literal_host(h.regx);
    if (host.empty() || ca.permits(host)) continue;
    Diag d = error_at(
        h.where,
        "host " + host + " is outside the " + which + "'s name constraints (" +
            ca.name_constraints().describe() + "): Shoal " +
            (std::string(which) == "CA" ? "tunnels it" : "will tunnel it once the next CA is promoted") +
            " instead of hijacking it");
    d.warning = true;
    out->push_back(std::move(d));
  }
}

}  // namespace

void check_resources(const Config& config, std::vector<Diag>* out) {
  for (const ProxyRule& r : config.rules) check_pattern(r.regx, r.where, out);
  for (const HijackHost& h : config.hijack_hosts) check_pattern(h.regx, h.where, out);
  for (const WhiteListEntry& w : config.white_list)
    if (!w.regx.empty()) check_pattern(w.regx, w.where, out);

  if (const UpstreamProxy& up = config.upstream_proxy; up.enabled && !up.credentials_file.empty()) {
    std::string user, password, err;
    if (!load_proxy_credentials(up.credentials_file, &user, &password, &err))
      out->push_back(
          error_at(config.upstream_proxy_credentials_at, "cannot use the proxy credentials: " + err));
  }

  if (config.hijack) {
    std::string err;
    auto ca = tls::CertAuthority::load(config.ca_cert, config.ca_key, &err);
    if (!ca)
      out->push_back(error_at(config.ca_cert_at, "cannot use the hijack CA: " + err));
    else
      check_constraints(config, *ca, "CA", out);
    if (!config.ca_next_cert.empty()) {
      auto next = tls::CertAuthority::load(config.ca_next_cert, config.ca_next_key, &err);
      if (!next) {
        out->push_back(error_at(config.ca_next_cert_at, "cannot use the next hijack CA: " + err));
      } else if (ca && next->cert().raw.len == ca->cert().raw.len &&
                 std::memcmp(next->cert().raw.p, ca->cert().raw.p, ca->cert().raw.len) == 0) {
        out->push_back(
            error_at(config.ca_next_cert_at,
                     "the next CA is the current one (cert); a rotation needs a new CA (tools/gen-ca.sh)"));
      } else {
        check_constraints(config, *next, "next CA", out);
      }
    }
  }
}

}  // namespace shoal::config
