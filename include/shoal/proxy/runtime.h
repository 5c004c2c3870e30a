// Runtime: everything a connection needs that is derived from one Config —
// compiled rule sets, the CA and its leaf cache, trust stores for origin TLS.
// Built once per (re)load on the control thread, then immutable and shared by
// every worker through std::shared_ptr<const Runtime>; a connection keeps the
// snapshot it started with, so a reload applies to new connections only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "shoal/config/config.h"
#include "shoal/rules/rules.h"
#include "shoal/tls/cert_authority.h"
#include "shoal/tls/session.h"

namespace shoal::proxy {

// Which trust anchors to verify an origin with.
struct TrustChoice {
  std::shared_ptr<tls::TrustStore> store;  // never null
  bool insecure = false;
};

struct MirrorTarget {
  bool https = true;
  std::string host;
  uint16_t port = 443;
};

class Runtime {
 public:
  // Compiles rules, loads the CA and trust stores. Returns nullptr and sets
  // *err (one line per problem) on failure. Runs on the control thread.
  static std::shared_ptr<const Runtime> build(std::shared_ptr<const config::Config> cfg, uint64_t generation,
                                              std::string* err);

  std::shared_ptr<const config::Config> cfg;
  uint64_t generation = 0;
  std::shared_ptr<const rules::PatternSet> proxy_rules;               // proxy.proxies[].regx
  std::shared_ptr<const rules::PatternSet> hijack_hosts;              // hijackHTTPS.hosts[].regx
  std::vector<std::shared_ptr<const rules::PatternSet>> hijack_each;  // one per host entry
  std::vector<std::shared_ptr<const rules::PatternSet>> white_regx;   // per whiteList entry (may be null)
  std::shared_ptr<const tls::CertAuthority> ca;                       // null without hijackHTTPS
  std::shared_ptr<tls::LeafCache> leaves;
  // The next CA of a rotation (hijackHTTPS.nextCert/nextKey): loaded and
  // checked like the current one so a bad file fails the (re)load, never
  // used to mint. Null when not configured.
  std::shared_ptr<const tls::CertAuthority> next_ca;
  // Session-ticket keys for hijacked clients; null without hijackHTTPS or
  // with tls.sessionTickets off. The same keys across reloads that keep
  // tls.sessionTicketLifetime (TicketKeys::shared).
  std::shared_ptr<tls::TicketKeys> tickets;
  std::shared_ptr<tls::TrustStore> base_trust;  // system store + registryMirror.certs
  bool has_mirror = false;
  MirrorTarget mirror;
  // Proxy-Authorization for the site proxy (cfg->upstream_proxy), e.g.
  // "Basic dXNlcjpwYXNz"; empty without credentials. Secret: never log.
  std::string upstream_proxy_auth;

  // Index of the first hijack host entry matching host:port or the bare host;
  // -1 when the host is not hijacked (or no CA is configured).
  int hijack_index(const std::string& host, uint16_t port, rules::Scratch& scratch) const;
  // Whether Shoal may mint a leaf for name (a host name or IP literal):
  // true without a CA name constraint or inside it. Outside, logs a warning
  // (host, the CA's constraints) the first time per host and runtime and
  // returns false: the caller then tunnels the connection untouched. Any
  // thread.
  bool may_mint_for(const std::string& name) const;
  // Index of the first proxy rule matching url, or -1.
  int rule_index(const std::string& url, rules::Scratch& scratch) const;
  // Trust for an origin host: base store plus the certs of every matching
  // hijack entry; insecure when any matching entry (or the mirror, for the
  // mirror host) says so. Builds and caches combined stores on first use.
  TrustChoice trust_for(const std::string& host, uint16_t port, rules::Scratch& scratch) const;
  // proxy.whiteList: true when empty or some entry allows host:port.
  bool white_listed(const std::string& host, uint16_t port, rules::Scratch& scratch) const;
  // Sizes a thread's scratch for every pattern set of this runtime; call once
  // per thread per runtime before matching. False (and *err) on failure.
  bool prepare_scratch(rules::Scratch& scratch, std::string* err) const;
  // CONNECT allowed to this port (proxy.connectPorts).
  bool connect_port_allowed(uint16_t port) const;

 private:
  mutable std::mutex trust_mu_;
  mutable std::map<std::string, std::shared_ptr<tls::TrustStore>> trust_cache_;
  mutable std::mutex refused_mu_;
  mutable std::set<std::string> refused_;  // hosts may_mint_for() warned about
};

}  // namespace shoal::proxy
