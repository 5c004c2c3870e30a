// Resource checks that need more than the config text: every regex compiles
// with the engine that will run it (Hyperscan, through the rules module), and
// the hijack CA loads (through the tls module). Kept apart from config.cpp so
// that validate() stays pure; these do I/O and call other modules.
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

}  // namespace

void check_resources(const Config& config, std::vector<Diag>* out) {
  for (const ProxyRule& r : config.rules) check_pattern(r.regx, r.where, out);
  for (const HijackHost& h : config.hijack_hosts) check_pattern(h.regx, h.where, out);
  for (const WhiteListEntry& w : config.white_list)
    if (!w.regx.empty()) check_pattern(w.regx, w.where, out);

  if (config.hijack) {
    std::string err;
    if (!tls::CertAuthority::load(config.ca_cert, config.ca_key, &err))
      out->push_back(error_at(config.ca_cert_at, "cannot use the hijack CA: " + err));
  }
}

}  // namespace shoal::config
