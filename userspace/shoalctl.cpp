// shoalctl: talks to a running shoald over its admin socket.
#include <cjson/cJSON.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shoal/daemon/admin.h"

namespace {

constexpr const char* kDefaultSocket = "/run/shoal/shoald.sock";

void usage(FILE* out) {
  fprintf(out,
          "usage: shoalctl [--socket PATH] [--json] COMMAND\n"
          "\n"
          "Commands:\n"
          "  status     version, uptime, listeners, connections and counters\n"
          "  reload     reload the daemon's configuration (like SIGHUP)\n"
          "\n"
          "Options:\n"
          "  --socket PATH   admin socket (default %s, or $SHOAL_ADMIN_SOCKET)\n"
          "  --json          print the daemon's answer as JSON\n"
          "  -h, --help      this text\n"
          "\n"
          "Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage error,\n"
          "3 the daemon cannot be reached.\n",
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
  printf("connections  %d active\n", static_cast<int>(num(o, "connections_active")));
  const cJSON* cs = cJSON_GetObjectItemCaseSensitive(o, "counters");
  const cJSON* c = nullptr;
  printf("counters\n");
  cJSON_ArrayForEach(c, cs) printf("  %-60s %.0f\n", c->string, c->valuedouble);
}

}  // namespace

int main(int argc, char** argv) {
  std::string sock = getenv("SHOAL_ADMIN_SOCKET") ? getenv("SHOAL_ADMIN_SOCKET") : kDefaultSocket;
  bool json = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
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
  if (cmd != "status" && cmd != "reload") {
    fprintf(stderr, "shoalctl: unknown command '%s' (see --help)\n", cmd.c_str());
    return 2;
  }
  std::string resp, err;
  if (!shoal::daemon::admin_call(sock, "{\"cmd\":\"" + cmd + "\"}", &resp, &err)) {
    fprintf(stderr, "shoalctl: %s\n", err.c_str());
    return 3;
  }
  cJSON* o = cJSON_Parse(resp.c_str());
  if (!o) {
    fprintf(stderr, "shoalctl: unreadable answer from shoald: %s\n", resp.c_str());
    return 1;
  }
  bool ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ok"));
  if (json) {
    printf("%s\n", resp.c_str());
  } else if (!ok) {
    fprintf(stderr, "shoalctl: %s\n", str(o, "error"));
  } else if (cmd == "status") {
    print_status(o);
  } else {
    printf("ok\n");
  }
  cJSON_Delete(o);
  return ok ? 0 : 1;
}
