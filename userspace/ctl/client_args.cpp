// The options and the client set-up that `get` and `preheat` share.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shoal/ctl/ctl.h"
#include "shoal/ctl/http_client.h"

namespace shoal::ctl {

int parse_client_option(const char* cmd, const std::vector<std::string>& args, size_t* i, ClientArgs* c) {
  const std::string& a = args[*i];
  auto is = [&](const char* name) { return a == name || a.rfind(std::string(name) + "=", 0) == 0; };
  std::string v;
  if (is("-H") || is("--header")) {
    if (!option_value(args, i, a[1] == 'H' ? "-H" : "--header", &v)) return -1;
    http::Header h;
    if (!parse_header_arg(v, &h.name, &h.value)) {
      usage_error(cmd, "malformed header '" + v + "'");
      return -1;
    }
    c->headers.push_back(h);
  } else if (is("--proxy")) {
    if (!option_value(args, i, "--proxy", &c->ao.proxy)) return -1;
  } else if (is("--config")) {
    if (!option_value(args, i, "--config", &c->ao.config)) return -1;
  } else if (is("--cacert")) {
    if (!option_value(args, i, "--cacert", &v)) return -1;
    c->cacerts.push_back(v);
  } else if (is("--timeout")) {
    if (!option_value(args, i, "--timeout", &c->timeout_s)) return -1;
  } else if (a == "-q" || a == "--quiet") {
    c->quiet = true;
  } else {
    return 0;
  }
  return 1;
}

int make_client(const char* cmd, const Global& g, ClientArgs* c, const std::string& user_agent, Access* acc,
                std::unique_ptr<HttpClient>* client) {
  int timeout = 60;
  if (!c->timeout_s.empty()) {
    char* end = nullptr;
    long t = strtol(c->timeout_s.c_str(), &end, 10);
    if (*end != '\0' || t < 1 || t > 86400) return usage_error(cmd, "--timeout wants 1..86400 seconds");
    timeout = static_cast<int>(t);
  }
  std::string err;
  if (!find_access(g, &c->ao, acc, &err)) {
    fprintf(stderr, "shoalctl %s: %s\n", cmd, err.c_str());
    return kExitFailed;
  }
  ClientOptions co;
  HostPort proxy;
  if (!parse_host_port(acc->proxy, &proxy)) {
    fprintf(stderr, "shoalctl %s: unusable proxy address '%s' (from %s)\n", cmd, acc->proxy.c_str(),
            acc->from.c_str());
    return kExitUsage;
  }
  co.proxy = proxy;
  co.ca_files = c->cacerts;
  if (!acc->site_ca.empty()) {
    // Unreadable (not root, not in the admin group): the origin's own
    // certificate may still verify against the system store.
    if (access(acc->site_ca.c_str(), R_OK) == 0)
      co.ca_files.push_back(acc->site_ca);
    else if (!c->quiet)
      fprintf(stderr, "shoalctl %s: warning: cannot read the site CA %s: %s\n", cmd, acc->site_ca.c_str(),
              strerror(errno));
  }
  co.timeout_s = timeout;
  co.user_agent = user_agent;
  *client = HttpClient::create(co, &err);
  if (!*client) {
    fprintf(stderr, "shoalctl %s: %s\n", cmd, err.c_str());
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace shoal::ctl
