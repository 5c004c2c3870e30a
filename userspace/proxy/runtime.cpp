#include "shoal/proxy/runtime.h"

#include <mbedtls/base64.h>

#include <algorithm>

#include "shoal/http/http.h"
#include "shoal/obs/log.h"

namespace shoal::proxy {
namespace {

std::shared_ptr<const rules::PatternSet> compile_or_err(const std::vector<std::string>& pats,
                                                        const std::string& what, std::string* err) {
  std::string e;
  int bad = -1;
  auto set = rules::PatternSet::compile(pats, &e, &bad);
  if (!set) *err += what + (bad >= 0 ? "[" + std::to_string(bad) + "]" : "") + ": " + e + "\n";
  return set;
}

bool add_trust(tls::TrustStore& store, const std::string& path, std::string* err) {
  std::string e;
  if (store.add(path, &e)) return true;
  *err += e + "\n";
  return false;
}

// "Basic base64(user:password)" (RFC 7617).
std::string basic_credentials(const std::string& user, const std::string& password) {
  const std::string plain = user + ":" + password;
  std::string out(4 * ((plain.size() + 2) / 3) + 1, '\0');
  size_t n = 0;
  mbedtls_base64_encode(reinterpret_cast<unsigned char*>(&out[0]), out.size(), &n,
                        reinterpret_cast<const unsigned char*>(plain.data()), plain.size());
  out.resize(n);
  return "Basic " + out;
}

}  // namespace

std::shared_ptr<const Runtime> Runtime::build(std::shared_ptr<const config::Config> cfg, uint64_t generation,
                                              std::string* err) {
  auto rt = std::make_shared<Runtime>();
  rt->cfg = cfg;
  rt->generation = generation;
  err->clear();

  std::vector<std::string> pats;
  for (const auto& r : cfg->rules) pats.push_back(r.regx);
  rt->proxy_rules = compile_or_err(pats, "proxy.proxies", err);
  pats.clear();
  for (const auto& h : cfg->hijack_hosts) {
    pats.push_back(h.regx);
    rt->hijack_each.push_back(compile_or_err({h.regx}, "hijackHTTPS.hosts", err));
  }
  rt->hijack_hosts = compile_or_err(pats, "hijackHTTPS.hosts", err);
  for (const auto& w : cfg->white_list)
    rt->white_regx.push_back(w.regx.empty() ? nullptr : compile_or_err({w.regx}, "proxy.whiteList", err));

  if (cfg->hijack) {
    std::string e;
    auto ca = tls::CertAuthority::load(cfg->ca_cert, cfg->ca_key, &e);
    if (!ca) *err += "hijackHTTPS: " + e + "\n";
    rt->ca = std::move(ca);
    rt->leaves = std::make_shared<tls::LeafCache>(cfg->leaf_cache_size);
    if (!cfg->ca_next_cert.empty()) {
      auto next = tls::CertAuthority::load(cfg->ca_next_cert, cfg->ca_next_key, &e);
      if (!next) *err += "hijackHTTPS.nextCert: " + e + "\n";
      rt->next_ca = std::move(next);
    }
    if (cfg->tls_session_tickets) {
      rt->tickets = tls::TicketKeys::shared(static_cast<uint32_t>(cfg->tls_ticket_lifetime_s), &e);
      if (!rt->tickets) *err += "tls.sessionTickets: " + e + "\n";
    }
  }

  rt->base_trust = std::make_shared<tls::TrustStore>();
  add_trust(*rt->base_trust, cfg->trust_store, err);
  if (cfg->mirror.present) {
    for (const auto& c : cfg->mirror.certs) add_trust(*rt->base_trust, c, err);
    http::Url u;
    if (http::parse_absolute_url(cfg->mirror.url, &u)) {
      rt->has_mirror = true;
      rt->mirror.https = u.scheme == "https";
      rt->mirror.host = u.host;
      rt->mirror.port = u.port ? u.port : (rt->mirror.https ? 443 : 80);
    } else {
      *err += "registryMirror.url: not an http(s) URL: " + cfg->mirror.url + "\n";
    }
  }
  // Certificates of host entries are checked now so a typo fails the load,
  // not the first connection.
  for (const auto& h : cfg->hijack_hosts) {
    for (const auto& c : h.certs) {
      tls::TrustStore probe;
      add_trust(probe, c, err);
    }
  }
  // The site proxy's credentials: from the URL, or read from their file on
  // every build, so a reload picks up a rotated password.
  if (const config::UpstreamProxy& up = cfg->upstream_proxy; up.enabled) {
    std::string user = up.user, password = up.password, e;
    if (!up.credentials_file.empty() &&
        !config::load_proxy_credentials(up.credentials_file, &user, &password, &e))
      *err += "upstreamProxy.credentialsFile: " + e + "\n";
    if (!user.empty()) rt->upstream_proxy_auth = basic_credentials(user, password);
  }
  if (!err->empty()) return nullptr;
  return rt;
}

int Runtime::hijack_index(const std::string& host, uint16_t port, rules::Scratch& scratch) const {
  if (!ca || !hijack_hosts) return -1;
  std::string hp = host + ":" + std::to_string(port);
  int i = hijack_hosts->first_match(hp, scratch);
  if (i < 0) i = hijack_hosts->first_match(host, scratch);
  return i;
}

bool Runtime::may_mint_for(const std::string& name) const {
  if (!ca || ca->permits(name)) return true;
  // Bounded: a client can name arbitrarily many hosts.
  constexpr size_t kMaxRemembered = 4096;
  const std::string host = tls::normalize_name(name);
  {
    std::lock_guard<std::mutex> lk(refused_mu_);
    if (refused_.count(host) != 0 || refused_.size() >= kMaxRemembered) return false;
    refused_.insert(host);
  }
  obs::log_warn("not hijacking a host outside the CA's name constraints; tunnelling it")
      .str("host", host)
      .str("ca_constraints", ca->name_constraints().describe())
      .str("ca", cfg->ca_cert);
  return false;
}

int Runtime::rule_index(const std::string& url, rules::Scratch& scratch) const {
  return proxy_rules ? proxy_rules->first_match(url, scratch) : -1;
}

TrustChoice Runtime::trust_for(const std::string& host, uint16_t port, rules::Scratch& scratch) const {
  TrustChoice tc;
  tc.store = base_trust;
  if (has_mirror && http::iequals(host, mirror.host) && port == mirror.port)
    tc.insecure = cfg->mirror.insecure;
  std::string key;
  std::string hp = host + ":" + std::to_string(port);
  for (size_t i = 0; i < hijack_each.size(); ++i) {
    const auto& set = hijack_each[i];
    if (!set || (set->first_match(hp, scratch) < 0 && set->first_match(host, scratch) < 0)) continue;
    const auto& entry = cfg->hijack_hosts[i];
    if (entry.insecure) tc.insecure = true;
    if (!entry.certs.empty()) key += std::to_string(i) + ",";
  }
  if (key.empty()) return tc;
  std::lock_guard<std::mutex> lk(trust_mu_);
  auto it = trust_cache_.find(key);
  if (it != trust_cache_.end()) {
    tc.store = it->second;
    return tc;
  }
  // Rare: a host entry with its own certs. Build base + those certs once;
  // every file was already read successfully in build().
  auto store = std::make_shared<tls::TrustStore>();
  std::string e;
  store->add(cfg->trust_store, &e);
  for (const auto& c : cfg->mirror.certs) store->add(c, &e);
  for (size_t i = 0; i < hijack_each.size(); ++i) {
    if (key.find(std::to_string(i) + ",") == std::string::npos) continue;
    for (const auto& c : cfg->hijack_hosts[i].certs) store->add(c, &e);
  }
  trust_cache_[key] = store;
  tc.store = store;
  return tc;
}

bool Runtime::white_listed(const std::string& host, uint16_t port, rules::Scratch& scratch) const {
  const auto& wl = cfg->white_list;
  if (wl.empty()) return true;
  for (size_t i = 0; i < wl.size(); ++i) {
    bool host_ok = false;
    if (!wl[i].host.empty() && http::iequals(wl[i].host, host)) host_ok = true;
    if (!host_ok && white_regx[i] && white_regx[i]->first_match(host, scratch) >= 0) host_ok = true;
    if (wl[i].host.empty() && !white_regx[i]) host_ok = true;
    if (!host_ok) continue;
    if (wl[i].ports.empty() || std::find(wl[i].ports.begin(), wl[i].ports.end(), port) != wl[i].ports.end())
      return true;
  }
  return false;
}

bool Runtime::prepare_scratch(rules::Scratch& scratch, std::string* err) const {
  if (proxy_rules && !scratch.prepare(*proxy_rules, err)) return false;
  if (hijack_hosts && !scratch.prepare(*hijack_hosts, err)) return false;
  for (const auto& s : hijack_each)
    if (s && !scratch.prepare(*s, err)) return false;
  for (const auto& s : white_regx)
    if (s && !scratch.prepare(*s, err)) return false;
  return true;
}

bool Runtime::connect_port_allowed(uint16_t port) const {
  const auto& ports = cfg->connect_ports;
  if (ports.empty()) return port == 443 || (has_mirror && port == mirror.port);
  return std::find(ports.begin(), ports.end(), port) != ports.end();
}

}  // namespace shoal::proxy
