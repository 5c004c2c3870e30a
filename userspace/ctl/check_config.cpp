// shoalctl check-config FILE: shoald's own loader, no daemon needed.
#include "shoal/config/config.h"
#include "shoal/ctl/ctl.h"
#include "shoal/proxy/runtime.h"

namespace shoal::ctl {

int cmd_check_config(const Global& g, std::vector<std::string>& args) {
  if (args.size() != 1 || (args[0].size() > 1 && args[0][0] == '-'))
    return usage_error("check-config", args.empty() ? "needs a FILE" : "expected one FILE");
  const std::string& file = args[0];
  config::LoadResult lr = config::load_file(file);
  std::string runtime_err;
  if (lr.ok()) {
    // What shoald builds at start from a valid file: the compiled rule
    // set and the TLS state. A file can pass validation and still fail here.
    auto rt = proxy::Runtime::build(lr.config, 1, &runtime_err);
    if (rt)
      runtime_err.clear();
    else if (runtime_err.empty())
      runtime_err = "cannot be used (no reason given)";
  }
  bool ok = lr.ok() && runtime_err.empty();
  size_t errors = 0, warnings = 0;
  for (const auto& d : lr.diags) (d.warning ? warnings : errors)++;
  if (!runtime_err.empty()) errors++;
  if (g.json) {
    Json o(cJSON_CreateObject(), cJSON_Delete);
    cJSON_AddBoolToObject(o.get(), "ok", ok);
    cJSON_AddStringToObject(o.get(), "file", file.c_str());
    cJSON* ds = cJSON_AddArrayToObject(o.get(), "diagnostics");
    for (const auto& d : lr.diags) {
      cJSON* e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "file", d.file.c_str());
      cJSON_AddNumberToObject(e, "line", d.line);
      cJSON_AddNumberToObject(e, "col", d.col);
      cJSON_AddStringToObject(e, "path", d.path.c_str());
      cJSON_AddStringToObject(e, "message", d.message.c_str());
      cJSON_AddStringToObject(e, "severity", d.warning ? "warning" : "error");
      cJSON_AddStringToObject(e, "text", d.str().c_str());
      cJSON_AddItemToArray(ds, e);
    }
    if (!runtime_err.empty()) {
      cJSON* e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "file", file.c_str());
      cJSON_AddStringToObject(e, "message", runtime_err.c_str());
      cJSON_AddStringToObject(e, "severity", "error");
      cJSON_AddStringToObject(e, "text", runtime_err.c_str());
      cJSON_AddItemToArray(ds, e);
    }
    cJSON_AddNumberToObject(o.get(), "errors", static_cast<double>(errors));
    cJSON_AddNumberToObject(o.get(), "warnings", static_cast<double>(warnings));
    if (ok) {
      const config::Config& c = *lr.config;
      cJSON* s = cJSON_AddObjectToObject(o.get(), "summary");
      std::string proxy = c.proxy_listen.addr + ":" + std::to_string(c.proxy_listen.port);
      cJSON_AddStringToObject(s, "proxy", proxy.c_str());
      cJSON_AddNumberToObject(s, "rules", static_cast<double>(c.rules.size()));
      cJSON_AddNumberToObject(s, "hijack_hosts", static_cast<double>(c.hijack_hosts.size()));
      cJSON_AddBoolToObject(s, "hijack", c.hijack);
      cJSON_AddBoolToObject(s, "p2p", !c.p2p_schedulers.empty());
      cJSON_AddNumberToObject(s, "schedulers", static_cast<double>(c.p2p_schedulers.size()));
      cJSON_AddStringToObject(s, "data_dir", c.data_dir.c_str());
      cJSON_AddStringToObject(s, "admin_socket", c.admin_socket.c_str());
    }
    print_json(o.get());
    return ok ? kExitOk : kExitFailed;
  }
  for (const auto& d : lr.diags) fprintf(stderr, "%s\n", d.str().c_str());
  if (!runtime_err.empty()) {
    fprintf(stderr, "%s", runtime_err.c_str());
    if (runtime_err.back() != '\n') fprintf(stderr, "\n");
  }
  if (!ok) {
    fprintf(stderr, "%s: %zu error(s), %zu warning(s)\n", file.c_str(), errors, warnings);
    return kExitFailed;
  }
  const config::Config& c = *lr.config;
  printf("%s: ok", file.c_str());
  if (warnings) printf(" (%zu warning(s))", warnings);
  printf("\n  proxy %s:%u, %zu rule(s), TLS interception %s (%zu host(s)), P2P %s\n",
         c.proxy_listen.addr.c_str(), c.proxy_listen.port, c.rules.size(), c.hijack ? "on" : "off",
         c.hijack_hosts.size(),
         c.p2p_schedulers.empty()
             ? "off"
             : ("on, " + std::to_string(c.p2p_schedulers.size()) + " scheduler(s)").c_str());
  printf("  data %s, admin socket %s\n", c.data_dir.c_str(), c.admin_socket.c_str());
  return kExitOk;
}

}  // namespace shoal::ctl
