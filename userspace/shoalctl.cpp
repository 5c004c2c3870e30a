// shoalctl: talks to a running shoald over its admin socket.
#include <cjson/cJSON.h>
#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shoal/daemon/admin.h"
#include "shoal/redirect/redirect.h"

namespace {

constexpr const char* kDefaultSocket = "/run/shoal/shoald.sock";

void usage(FILE* out) {
  fprintf(out,
          "usage: shoalctl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "\n"
          "Commands:\n"
          "  status              version, uptime, mode, listeners, attached cgroups,\n"
          "                      interception counters, connections and counters\n"
          "  reload              reload the daemon's configuration (like SIGHUP)\n"
          "  attach PATH         intercept the cgroup PATH (absolute, or relative to\n"
          "                      the cgroup v2 mount) and everything below it\n"
          "  detach PATH         stop intercepting it\n"
          "  run [--cgroup NAME] -- CMD [ARGS...]\n"
          "                      run CMD (as you) in a new job cgroup that shoald\n"
          "                      intercepts; exits with CMD's status. Any local user.\n"
          "  cleanup             remove empty Shoal job cgroups and the iptables rules\n"
          "                      a killed shoald left (works without the daemon too)\n"
          "\n"
          "Options:\n"
          "  --socket PATH   admin socket (default %s, or $SHOAL_ADMIN_SOCKET)\n"
          "  --json          print the daemon's answer as JSON\n"
          "  -h, --help      this text\n"
          "\n"
          "Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage error,\n"
          "3 the daemon cannot be reached; run exits with CMD's status (127: CMD\n"
          "not found).\n",
          kDefaultSocket);
}

double num(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

const char* str(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : "";
}

void print_status(const cJSON* o) {
  double up = num(o, "uptime_s");
  printf("shoald %s  pid %d  up %dh%02dm%02ds\n", str(o, "version"), static_cast<int>(num(o, "pid")),
         static_cast<int>(up / 3600), static_cast<int>(up / 60) % 60, static_cast<int>(up) % 60);
  printf("config       %s\n", str(o, "config"));
  printf("peer         %s\n", str(o, "peer"));
  printf("mode         %s, %d workers, TLS interception %s\n", str(o, "mode"),
         static_cast<int>(num(o, "workers")),
         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "hijack")) ? "on" : "off");
  const cJSON* ls = cJSON_GetObjectItemCaseSensitive(o, "listeners");
  const cJSON* l = nullptr;
  printf("listeners\n");
  cJSON_ArrayForEach(l, ls) printf("  %-8s %s\n", str(l, "kind"), str(l, "address"));
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
    return 1;
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
  return 0;
}

std::string json_request(const std::string& cmd, const char* key = nullptr, const std::string& value = "") {
  cJSON* o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "cmd", cmd.c_str());
  if (key != nullptr) cJSON_AddStringToObject(o, key, value.c_str());
  char* t = cJSON_PrintUnformatted(o);
  std::string s = t;
  cJSON_free(t);
  cJSON_Delete(o);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string sock = getenv("SHOAL_ADMIN_SOCKET") ? getenv("SHOAL_ADMIN_SOCKET") : kDefaultSocket;
  bool json = false;
  std::vector<std::string> args;
  std::string job_name;
  std::vector<char*> run_argv;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (!args.empty() && args[0] == "run") {
      // run's own options, then "--" and the command, which keeps its
      // options.
      if (a == "--") {
        for (int j = i + 1; j < argc; ++j) run_argv.push_back(argv[j]);
        break;
      }
      if (a == "--cgroup" && i + 1 < argc) {
        job_name = argv[++i];
        continue;
      }
      if (a == "-h" || a == "--help") {
        usage(stdout);
        return 0;
      }
      fprintf(stderr, "shoalctl: run: expected [--cgroup NAME] -- CMD [ARGS...], got '%s'\n", a.c_str());
      return 2;
    }
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "--socket") {
      if (i + 1 >= argc) {
        fprintf(stderr, "shoalctl: --socket needs a path\n");
        return 2;
      }
      sock = argv[++i];
    } else if (a == "--json") {
      json = true;
    } else if (!a.empty() && a[0] == '-') {
      fprintf(stderr, "shoalctl: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty()) {
    usage(stderr);
    return 2;
  }
  const std::string& cmd = args[0];
  std::string request;
  if (cmd == "status" || cmd == "reload" || cmd == "cleanup") {
    if (args.size() != 1) {
      fprintf(stderr, "shoalctl: %s takes no arguments\n", cmd.c_str());
      return 2;
    }
    request = json_request(cmd);
  } else if (cmd == "attach" || cmd == "detach") {
    if (args.size() != 2) {
      fprintf(stderr, "shoalctl: %s needs one cgroup path\n", cmd.c_str());
      return 2;
    }
    request = json_request(cmd, "path", args[1]);
  } else if (cmd == "run") {
    if (run_argv.empty()) {
      fprintf(stderr, "shoalctl: run needs -- CMD [ARGS...]\n");
      return 2;
    }
    request = json_request(cmd, "name", job_name);
  } else {
    fprintf(stderr, "shoalctl: unknown command '%s' (see --help)\n", cmd.c_str());
    return 2;
  }
  std::string resp, err;
  if (!shoal::daemon::admin_call(sock, request, &resp, &err)) {
    if (cmd == "cleanup") return cleanup_locally(json);
    fprintf(stderr, "shoalctl: %s\n", err.c_str());
    return 3;
  }
  cJSON* o = cJSON_Parse(resp.c_str());
  if (!o) {
    fprintf(stderr, "shoalctl: unreadable answer from shoald: %s\n", resp.c_str());
    return 1;
  }
  bool ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ok"));
  if (cmd == "run") {
    if (!ok) {
      fprintf(stderr, "shoalctl: run: %s\n", str(o, "error"));
      cJSON_Delete(o);
      return 1;
    }
    if (json) fprintf(stderr, "%s\n", resp.c_str());
    cJSON_Delete(o);
    // This process now lives in the job cgroup; CMD inherits it, and so
    // does every socket CMD makes.
    run_argv.push_back(nullptr);
    execvp(run_argv[0], run_argv.data());
    fprintf(stderr, "shoalctl: run: %s: %s\n", run_argv[0], strerror(errno));
    return errno == ENOENT ? 127 : 126;
  }
  if (json) {
    printf("%s\n", resp.c_str());
  } else if (!ok) {
    fprintf(stderr, "shoalctl: %s\n", str(o, "error"));
  } else if (cmd == "status") {
    print_status(o);
  } else if (cmd == "attach") {
    printf("attached %s\n", str(o, "cgroup"));
  } else if (cmd == "cleanup") {
    printf("removed %.0f empty job cgroup(s)", num(o, "cgroups_removed"));
    if (cJSON_GetObjectItemCaseSensitive(o, "iptables_chains_removed"))
      printf(", %.0f stale iptables chain(s)", num(o, "iptables_chains_removed"));
    printf("\n");
  } else {
    printf("ok\n");
  }
  cJSON_Delete(o);
  return ok ? 0 : 1;
}
