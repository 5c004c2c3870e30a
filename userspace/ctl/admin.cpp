// Talking to shoald: the admin socket, and finding the proxy and site CA
// that get and preheat send their requests through.
#include "shoal/daemon/admin.h"

#include <sys/stat.h>

#include <cstdlib>

#include "shoal/config/config.h"
#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

namespace {

constexpr const char* kDefaultConfig = "/etc/shoal/shoald.yaml";

const char* jstr(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : "";
}

// A wildcard listener is reached on the loopback address of its family.
std::string reachable(const std::string& addr) {
  if (addr.rfind("0.0.0.0:", 0) == 0) return "127.0.0.1" + addr.substr(7);
  if (addr.rfind("[::]:", 0) == 0) return "[::1]" + addr.substr(4);
  if (!addr.empty() && addr[0] == ':') return "127.0.0.1" + addr;
  return addr;
}

}  // namespace

int admin(const Global& g, const std::string& cmd, cJSON* fields, Json* out, int timeout_ms, bool quiet) {
  Json req(fields ? fields : cJSON_CreateObject(), cJSON_Delete);
  cJSON_AddStringToObject(req.get(), "cmd", cmd.c_str());
  char* t = cJSON_PrintUnformatted(req.get());
  std::string line = t;
  cJSON_free(t);
  std::string resp, err;
  if (!shoal::daemon::admin_call(g.socket, line, &resp, &err, timeout_ms)) {
    if (!quiet) fprintf(stderr, "shoalctl: %s\n", err.c_str());
    return kExitNoDaemon;
  }
  Json o(cJSON_Parse(resp.c_str()), cJSON_Delete);
  if (!o || !cJSON_IsObject(o.get())) {
    if (!quiet) fprintf(stderr, "shoalctl: unreadable answer from shoald: %s\n", resp.c_str());
    return kExitFailed;
  }
  bool ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o.get(), "ok"));
  if (!ok && !quiet) fprintf(stderr, "shoalctl: %s: %s\n", cmd.c_str(), jstr(o.get(), "error"));
  *out = std::move(o);
  return ok ? kExitOk : kExitFailed;
}

bool find_access(const Global& g, AccessOptions* o, Access* out, std::string* err) {
  Access a;
  Json info = json_null();
  o->admin_reachable = false;
  int rc = admin(g, "client-info", nullptr, &info, 5000, true);
  if (rc != kExitNoDaemon) o->admin_reachable = true;
  std::string proxy = o->proxy;
  if (proxy.empty() && getenv("SHOAL_PROXY")) proxy = getenv("SHOAL_PROXY");
  if (!proxy.empty()) {
    a.proxy = proxy;
    a.from = o->proxy.empty() ? "$SHOAL_PROXY" : "--proxy";
  }
  if (rc == kExitOk) {
    if (a.proxy.empty()) {
      a.proxy = reachable(jstr(info.get(), "proxy"));
      a.from = "shoald";
    }
    a.site_ca = jstr(info.get(), "hijack_cert");
  } else {
    std::string path = o->config;
    struct stat st {};
    if (path.empty() && stat(kDefaultConfig, &st) == 0) path = kDefaultConfig;
    if (!path.empty()) {
      config::LoadResult lr = config::load_file(path);
      if (!lr.ok()) {
        *err = "shoald is not reachable and " + path + " has errors (shoalctl check-config " + path + ")";
        return false;
      }
      if (a.proxy.empty()) {
        const config::Endpoint& e = lr.config->proxy_listen;
        std::string h = e.addr.find(':') != std::string::npos ? "[" + e.addr + "]" : e.addr;
        a.proxy = reachable(h + ":" + std::to_string(e.port));
        a.from = "config " + path;
      }
      if (lr.config->hijack) a.site_ca = lr.config->ca_cert;
    }
  }
  if (a.proxy.empty()) {
    *err = "cannot find shoald's proxy: the daemon does not answer on " + g.socket + ", no --config (or " +
           kDefaultConfig + ") and no --proxy";
    return false;
  }
  *out = std::move(a);
  return true;
}

}  // namespace shoal::ctl
