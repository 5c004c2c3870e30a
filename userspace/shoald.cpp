// shoald: the Shoal daemon. Thin main: parse the command line, then hand over
// to shoal::daemon.
#include <sys/stat.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "shoal/config/config.h"
#include "shoal/daemon/daemon.h"
#include "shoal/proxy/runtime.h"
#include "shoal/scheduler/scheduler.h"
#include "shoal_rev.h"  // generated: SHOAL_GIT_REV

namespace {

constexpr const char* kDefaultConfig = "/etc/shoal/shoald.yaml";

void usage(FILE* out) {
  fprintf(out,
          "usage: shoald [options]\n"
          "       shoald scheduler [options]   run the P2P scheduler (see shoald scheduler --help)\n"
          "\n"
          "Shoal: a transparent, TLS-intercepting, peer-to-peer container image proxy.\n"
          "\n"
          "  -c, --config FILE        configuration (default %s if it exists,\n"
          "                           else the embedded default)\n"
          "      --default-config     use the embedded default configuration\n"
          "      --check-config       validate the configuration (and its CA, rules,\n"
          "                           trust store) and exit: 0 ok, 2 errors\n"
          "      --print-default-config  print the embedded default configuration\n"
          "      --data-dir DIR       override dataDir\n"
          "      --log-dir DIR        override logDir (core.log is written there)\n"
          "      --admin-socket PATH  override admin.socket\n"
          "      --proxy-listen ADDR:PORT    override proxy.tcpListen\n"
          "      --metrics-listen ADDR:PORT  override the metrics listener\n"
          "      --workers N          override workers (event loops)\n"
          "      --transparent MODE   override transparent.mode (auto, ebpf,\n"
          "                           iptables or off)\n"
          "      --scheduler ADDR[,ADDR...]  replace p2p.schedulers (IP:PORT or\n"
          "                           [IPv6]:PORT each); turns P2P on\n"
          "      --cluster-secret-file FILE  replace p2p.clusterSecretFile (needed\n"
          "                           with schedulers)\n"
          "      --peer-listen ADDR:PORT     override p2p.listen (peers fetch pieces here)\n"
          "      --advertise ADDR:PORT       override p2p.advertise (the address peers\n"
          "                           are told to use)\n"
          "  -V, --version            print the version\n"
          "  -h, --help               this text\n"
          "\n"
          "Signals: SIGHUP reloads the configuration, SIGUSR1 reopens core.log,\n"
          "SIGTERM stops accepting and lets transfers finish for shutdown.grace.\n",
          kDefaultConfig);
}

bool need_arg(int i, int argc, const char* opt) {
  if (i + 1 < argc) return true;
  fprintf(stderr, "shoald: %s needs an argument (see --help)\n", opt);
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // The scheduler role is its own program that shares the binary.
  if (argc > 1 && std::strcmp(argv[1], "scheduler") == 0) return shoal::scheduler::main(argc - 1, argv + 1);
  // libuv's thread pool (4 threads by default) runs DNS lookups, leaf
  // minting and disk I/O; a slow resolver must not starve the others.
  setenv("UV_THREADPOOL_SIZE", "32", 0);
  shoal::daemon::Options opts;
  bool check = false, explicit_config = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "-V" || a == "--version") {
      printf("shoald %s (%s)\n", SHOAL_VERSION, SHOAL_GIT_REV);
      return 0;
    } else if (a == "--print-default-config") {
      fputs(shoal::config::embedded_default_yaml(), stdout);
      return 0;
    } else if (a == "-c" || a == "--config") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      opts.config_path = argv[++i];
      explicit_config = true;
    } else if (a == "--default-config") {
      opts.embedded_default = true;
    } else if (a == "--check-config") {
      check = true;
    } else if (a == "--data-dir" || a == "--log-dir" || a == "--admin-socket") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      std::string v = argv[++i];
      if (a == "--data-dir") opts.overrides.data_dir = v;
      if (a == "--log-dir") opts.overrides.log_dir = v;
      if (a == "--admin-socket") opts.overrides.admin_socket = v;
    } else if (a == "--proxy-listen" || a == "--metrics-listen") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      shoal::config::Endpoint e;
      if (!shoal::daemon::parse_endpoint(argv[++i], &e)) {
        fprintf(stderr, "shoald: %s: expected ADDR:PORT with an IP address, got '%s'\n", a.c_str(), argv[i]);
        return 2;
      }
      (a == "--proxy-listen" ? opts.overrides.proxy_listen : opts.overrides.metrics_listen) = e;
    } else if (a == "--peer-listen") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      shoal::config::Endpoint e;
      std::string why;
      if (!shoal::config::parse_listen_address(argv[++i], &e, &why)) {
        fprintf(stderr, "shoald: %s: %s, got '%s'\n", a.c_str(), why.c_str(), argv[i]);
        return 2;
      }
      opts.overrides.peer_listen = e;
    } else if (a == "--advertise") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      std::string addr, why;
      if (!shoal::config::parse_peer_address(argv[++i], &addr, &why)) {
        fprintf(stderr, "shoald: %s: %s, got '%s'\n", a.c_str(), why.c_str(), argv[i]);
        return 2;
      }
      opts.overrides.peer_advertise = addr;
    } else if (a == "--scheduler") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      const std::string list = argv[++i];
      std::vector<std::string> scheds;
      for (size_t start = 0;;) {
        const size_t comma = list.find(',', start);
        const std::string one =
            list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        std::string addr, why;
        if (!shoal::config::parse_peer_address(one, &addr, &why)) {
          fprintf(stderr, "shoald: %s: %s, got '%s'\n", a.c_str(), why.c_str(), one.c_str());
          return 2;
        }
        bool dup = false;
        for (const std::string& s : scheds) dup = dup || s == addr;
        if (!dup) scheds.push_back(addr);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      opts.overrides.p2p_schedulers = scheds;
    } else if (a == "--cluster-secret-file") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      const std::string f = argv[++i];
      std::error_code ec;
      const std::filesystem::path abs = std::filesystem::absolute(f, ec);
      if (f.empty() || ec) {
        fprintf(stderr, "shoald: %s: expected a file name, got '%s'\n", a.c_str(), f.c_str());
        return 2;
      }
      opts.overrides.cluster_secret_file = abs.lexically_normal().string();
    } else if (a == "--workers") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      char* end = nullptr;
      long n = strtol(argv[++i], &end, 10);
      if (!end || *end || n < 1 || n > 256) {
        fprintf(stderr, "shoald: --workers: expected 1..256, got '%s'\n", argv[i]);
        return 2;
      }
      opts.overrides.workers = static_cast<int>(n);
    } else if (a == "--transparent") {
      if (!need_arg(i, argc, a.c_str())) return 2;
      std::string m = argv[++i];
      using TM = shoal::config::Config::TransparentMode;
      if (m == "auto")
        opts.overrides.transparent_mode = TM::Auto;
      else if (m == "ebpf")
        opts.overrides.transparent_mode = TM::Ebpf;
      else if (m == "iptables")
        opts.overrides.transparent_mode = TM::Iptables;
      else if (m == "off")
        opts.overrides.transparent_mode = TM::Off;
      else {
        fprintf(stderr, "shoald: --transparent: expected auto, ebpf, iptables or off, got '%s'\n", m.c_str());
        return 2;
      }
    } else {
      fprintf(stderr, "shoald: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (opts.embedded_default && explicit_config) {
    fprintf(stderr, "shoald: --default-config and --config exclude each other\n");
    return 2;
  }
  if (!explicit_config && !opts.embedded_default) {
    struct stat st {};
    if (stat(kDefaultConfig, &st) == 0) opts.config_path = kDefaultConfig;
  }
  if (opts.embedded_default) opts.config_path.clear();

  if (check) {
    auto lr = shoal::daemon::load_config(opts);
    for (const auto& d : lr.diags) fprintf(stderr, "%s\n", d.str().c_str());
    if (!lr.ok()) return 2;
    std::string err;
    auto rt = shoal::proxy::Runtime::build(lr.config, 1, &err);
    if (!rt) {
      fprintf(stderr, "%s", err.c_str());
      return 2;
    }
    printf("%s: ok (%zu rules, %zu hijack hosts, TLS interception %s)\n", lr.config->source.c_str(),
           lr.config->rules.size(), lr.config->hijack_hosts.size(), lr.config->hijack ? "on" : "off");
    return 0;
  }
  return shoal::daemon::run(opts);
}
