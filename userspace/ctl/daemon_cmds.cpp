// The commands that act on the daemon itself: status, reload, attach,
// detach, run, cleanup.
#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shoal/ctl/ctl.h"
#include "shoal/redirect/redirect.h"

namespace shoal::ctl {

namespace {

double num(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

const char* str(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : "";
}

bool no_args(const char* cmd, const std::vector<std::string>& args, int* rc) {
  if (args.empty()) return true;
  *rc = usage_error(cmd, "takes no arguments, got '" + args[0] + "'");
  return false;
}

void print_status(const cJSON* o) {
  double up = num(o, "uptime_s");
  printf("shoald %s  pid %d  up %s\n", str(o, "version"), static_cast<int>(num(o, "pid")),
         human_age(up).c_str());
  printf("config       %s\n", str(o, "config"));
  printf("peer         %s\n", str(o, "peer"));
  printf("mode         %s, %d workers, TLS interception %s\n", str(o, "mode"),
         static_cast<int>(num(o, "workers")),
         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "hijack")) ? "on" : "off");
  if (*str(o, "capabilities")) printf("capabilities %s\n", str(o, "capabilities"));
  const cJSON* ls = cJSON_GetObjectItemCaseSensitive(o, "listeners");
  const cJSON* l = nullptr;
  printf("listeners\n");
  cJSON_ArrayForEach(l, ls) printf("  %-12s %s\n", str(l, "kind"), str(l, "address"));
  const cJSON* t = cJSON_GetObjectItemCaseSensitive(o, "transparent");
  if (t) {
    printf("transparent  %s", str(t, "mode"));
    if (*str(t, "reason")) printf(" (%s)", str(t, "reason"));
    printf("\n");
    const cJSON* cg = cJSON_GetObjectItemCaseSensitive(t, "cgroups");
    const cJSON* g = nullptr;
    cJSON_ArrayForEach(g, cg) printf("  attached %s\n", cJSON_IsString(g) ? g->valuestring : "?");
    if (cJSON_GetObjectItemCaseSensitive(t, "redirected"))
      printf("  connects  %.0f redirected, %.0f skipped, %.0f UDP blocked; %.0f job cgroups\n",
             num(t, "redirected"), num(t, "skipped"), num(t, "blocked"), num(t, "jobs"));
  }
  if (const cJSON* s = cJSON_GetObjectItemCaseSensitive(o, "store")) {
    printf("store        %s, %.0f tasks, %s", str(s, "dir"), num(s, "tasks"),
           human_bytes(static_cast<uint64_t>(num(s, "bytes"))).c_str());
    if (num(s, "active") > 0) printf(", %.0f downloading", num(s, "active"));
    printf("\n");
  }
  if (const cJSON* p = cJSON_GetObjectItemCaseSensitive(o, "p2p")) {
    printf("p2p          advertised as %s, %d downloads in progress, peer links %s\n", str(p, "advertise"),
           static_cast<int>(num(p, "downloads")),
           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "tls")) ? "TLS" : "plain (signed)");
    const cJSON* sch = nullptr;
    cJSON_ArrayForEach(sch, cJSON_GetObjectItemCaseSensitive(p, "schedulers")) printf(
        "  scheduler %s %s\n", str(sch, "address"),
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sch, "reachable")) ? "reachable" : "UNREACHABLE");
  } else {
    printf("p2p          off (no p2p.schedulers)\n");
  }
  printf("connections  %d active\n", static_cast<int>(num(o, "connections_active")));
  const cJSON* cs = cJSON_GetObjectItemCaseSensitive(o, "counters");
  const cJSON* c = nullptr;
  printf("counters\n");
  cJSON_ArrayForEach(c, cs) printf("  %-60s %.0f\n", c->string, c->valuedouble);
}

// Without a daemon, `cleanup` still removes what a killed one left: the
// iptables rules (fail-closed until removed) and empty job cgroups below the
// default transparent.jobParent.
int cleanup_locally(bool json) {
  std::string err;
  int chains = shoal::redirect::cleanup_iptables(&err);
  if (chains < 0) {
    fprintf(stderr, "shoalctl: cleanup: %s\n", err.c_str());
    return kExitFailed;
  }
  int dirs = 0;
  std::string mount, parent;
  if (shoal::redirect::cgroup2_mount(&mount, &err) &&
      shoal::redirect::cgroup_path(mount, "shoal.jobs", &parent, &err)) {
    if (DIR* d = opendir(parent.c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
        // rmdir fails on a cgroup that still holds processes: only empty
        // ones go.
        if (rmdir((parent + "/" + e->d_name).c_str()) == 0) dirs++;
      }
      closedir(d);
    }
  }
  if (json)
    printf("{\"ok\":true,\"daemon\":false,\"iptables_chains_removed\":%d,\"cgroups_removed\":%d}\n", chains,
           dirs);
  else
    printf("shoald not running: removed %d iptables chain(s), %d empty job cgroup(s)\n", chains, dirs);
  return kExitOk;
}

int simple(const Global& g, const char* cmd, cJSON* fields, Json* out) {
  int rc = admin(g, cmd, fields, out);
  if (rc != kExitNoDaemon && g.json && *out) print_json(out->get());
  return rc;
}

}  // namespace

int cmd_status(const Global& g, std::vector<std::string>& args) {
  int rc = 0;
  if (!no_args("status", args, &rc)) return rc;
  Json o = json_null();
  rc = simple(g, "status", nullptr, &o);
  if (rc == kExitOk && !g.json) print_status(o.get());
  return rc;
}

int cmd_reload(const Global& g, std::vector<std::string>& args) {
  int rc = 0;
  if (!no_args("reload", args, &rc)) return rc;
  Json o = json_null();
  rc = simple(g, "reload", nullptr, &o);
  if (rc == kExitOk && !g.json) printf("ok\n");
  return rc;
}

static int attach_detach(const Global& g, const char* cmd, std::vector<std::string>& args) {
  if (args.size() != 1 || (!args[0].empty() && args[0][0] == '-'))
    return usage_error(cmd, args.empty() ? "needs one cgroup path" : "expected one cgroup path");
  cJSON* f = cJSON_CreateObject();
  cJSON_AddStringToObject(f, "path", args[0].c_str());
  Json o = json_null();
  int rc = simple(g, cmd, f, &o);
  if (rc == kExitOk && !g.json) {
    if (std::strcmp(cmd, "attach") == 0)
      printf("attached %s\n", str(o.get(), "cgroup"));
    else if (cJSON_GetObjectItemCaseSensitive(o.get(), "note"))
      printf("%s: %s\n", str(o.get(), "cgroup"), str(o.get(), "note"));
    else
      printf("ok\n");
  }
  return rc;
}

int cmd_attach(const Global& g, std::vector<std::string>& args) { return attach_detach(g, "attach", args); }
int cmd_detach(const Global& g, std::vector<std::string>& args) { return attach_detach(g, "detach", args); }

int cmd_cleanup(const Global& g, std::vector<std::string>& args) {
  int rc = 0;
  if (!no_args("cleanup", args, &rc)) return rc;
  Json o = json_null();
  rc = admin(g, "cleanup", nullptr, &o, 5000, true);
  if (rc == kExitNoDaemon) return cleanup_locally(g.json);
  if (rc != kExitOk) {
    fprintf(stderr, "shoalctl: cleanup: %s\n", o ? str(o.get(), "error") : "failed");
    return rc;
  }
  if (g.json) {
    print_json(o.get());
  } else {
    printf("removed %.0f empty job cgroup(s)", num(o.get(), "cgroups_removed"));
    if (cJSON_GetObjectItemCaseSensitive(o.get(), "iptables_chains_removed"))
      printf(", %.0f stale iptables chain(s)", num(o.get(), "iptables_chains_removed"));
    printf("\n");
  }
  return rc;
}

int cmd_run(const Global& g, std::vector<std::string>& args) {
  std::string job_name;
  std::vector<char*> argv;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    if (args[i] == "--") break;
    if (args[i] == "--cgroup" || args[i].rfind("--cgroup=", 0) == 0) {
      if (!option_value(args, &i, "--cgroup", &job_name)) return kExitUsage;
      continue;
    }
    return usage_error("run", "expected [--cgroup NAME] -- CMD [ARGS...], got '" + args[i] + "'");
  }
  for (size_t j = i + 1; j < args.size(); ++j) argv.push_back(args[j].data());
  if (argv.empty()) return usage_error("run", "needs -- CMD [ARGS...]");
  cJSON* f = cJSON_CreateObject();
  cJSON_AddStringToObject(f, "name", job_name.c_str());
  Json o = json_null();
  int rc = admin(g, "run", f, &o);
  if (rc != kExitOk) return rc;
  if (g.json) {
    char* t = cJSON_PrintUnformatted(o.get());
    fprintf(stderr, "%s\n", t);
    cJSON_free(t);
  }
  // This process now lives in the job cgroup; CMD inherits it, and so does
  // every socket CMD makes.
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  fprintf(stderr, "shoalctl: run: %s: %s\n", argv[0], strerror(errno));
  return errno == ENOENT ? 127 : 126;
}

}  // namespace shoal::ctl
