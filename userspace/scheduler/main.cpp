// `shoald scheduler`: the scheduler role's main. Reads its options (and
// optionally a Shoal configuration's schedulerServer section), loads the
// cluster secret, and runs one Server on one loop until SIGTERM or SIGINT.
#include <arpa/inet.h>
#include <uv.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "shoal/config/config.h"
#include "shoal/http/http.h"
#include "shoal/obs/log.h"
#include "shoal/p2p/auth.h"
#include "shoal/scheduler/scheduler.h"
#include "shoal/scheduler/server.h"
#include "shoal/scheduler/state.h"
#include "shoal/util/fd_limit.h"

namespace shoal::scheduler {
namespace {

void usage(FILE* out) {
  fprintf(out,
          "usage: shoald scheduler [options]\n"
          "\n"
          "Runs the Shoal P2P scheduler: peers register, announce the pieces they\n"
          "hold and ask for parents; every request is signed with the cluster secret.\n"
          "\n"
          "      --listen ADDR:PORT         listen address (default 0.0.0.0:8002;\n"
          "                                 overrides schedulerServer.listen)\n"
          "      --cluster-secret-file FILE  the cluster secret (mode 0600 or\n"
          "                                 stricter; overrides\n"
          "                                 schedulerServer.clusterSecretFile); required\n"
          "  -c, --config FILE              a Shoal configuration: its schedulerServer\n"
          "                                 section (listen, clusterSecretFile,\n"
          "                                 peerTimeout, originConcurrency, maxParents)\n"
          "                                 and logLevel are used\n"
          "      --log-dir DIR              write JSON-line logs to DIR/core.log\n"
          "                                 (default: standard error)\n"
          "  -h, --help                     this text\n"
          "\n"
          "Signals: SIGTERM and SIGINT stop the scheduler; SIGUSR1 reopens core.log.\n");
}

// "ip:port" or "[v6]:port" with an IP literal.
bool parse_listen(const std::string& s, config::Endpoint* out) {
  std::string host;
  uint16_t port = 0;
  bool v6 = false;
  if (!http::parse_authority(s, &host, &port, &v6)) return false;
  unsigned char buf[16];
  if (inet_pton(v6 ? AF_INET6 : AF_INET, host.c_str(), buf) != 1) return false;
  out->addr = host;
  out->port = port;
  return true;
}

struct Runner {
  uv_loop_t loop{};
  uv_signal_t sig_term{}, sig_int{}, sig_usr1{};
  Server* server = nullptr;
  bool stopping = false;

  static void on_signal(uv_signal_t* s, int signum) {
    auto* r = static_cast<Runner*>(s->data);
    if (signum == SIGUSR1) {
      std::string err;
      if (!obs::log_reopen(&err)) obs::log_error("cannot reopen the log").str("error", err);
      return;
    }
    if (r->stopping) return;
    r->stopping = true;
    obs::log_info("scheduler stopping").str("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    r->server->close([] {});
    for (uv_signal_t* h : {&r->sig_term, &r->sig_int, &r->sig_usr1})
      uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, secret_file, log_dir;
  config::Endpoint listen = config::Config{}.scheduler_listen;
  bool listen_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* v) {
      if (i + 1 >= argc) {
        fprintf(stderr, "shoald scheduler: %s needs an argument (see --help)\n", a.c_str());
        return false;
      }
      *v = argv[++i];
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "--listen") {
      if (!value(&v)) return 2;
      if (!parse_listen(v, &listen)) {
        fprintf(stderr, "shoald scheduler: --listen: expected ADDR:PORT with an IP address, got '%s'\n",
                v.c_str());
        return 2;
      }
      listen_given = true;
    } else if (a == "--cluster-secret-file") {
      if (!value(&secret_file)) return 2;
    } else if (a == "-c" || a == "--config") {
      if (!value(&config_path)) return 2;
    } else if (a == "--log-dir") {
      if (!value(&log_dir)) return 2;
    } else {
      fprintf(stderr, "shoald scheduler: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }

  // The configuration's defaults (config.h) apply without -c too.
  Options opts;
  std::shared_ptr<const config::Config> cfg = std::make_shared<config::Config>();
  if (!config_path.empty()) {
    config::LoadResult lr = config::load_file(config_path);
    for (const auto& d : lr.diags) fprintf(stderr, "%s\n", d.str().c_str());
    if (!lr.ok()) return 2;
    cfg = lr.config;
    if (!listen_given) listen = cfg->scheduler_listen;
    if (secret_file.empty()) secret_file = cfg->scheduler_secret_file;
  }
  opts.peer_timeout_ms = static_cast<int64_t>(cfg->scheduler_peer_timeout_s * 1000.0);
  opts.origin_concurrency = cfg->scheduler_origin_concurrency;
  opts.max_parents = cfg->scheduler_max_parents;
  std::string log_level = cfg->log_level;
  if (secret_file.empty()) {
    fprintf(stderr,
            "shoald scheduler: no cluster secret: give --cluster-secret-file FILE "
            "(or schedulerServer.clusterSecretFile in the configuration)\n");
    return 2;
  }
  std::string secret, err;
  if (!p2p::load_secret_file(secret_file, &secret, &err)) {
    fprintf(stderr, "shoald scheduler: %s\n", err.c_str());
    return 2;
  }

  if (!log_dir.empty()) {
    if (!obs::log_open(log_dir, &err)) {
      fprintf(stderr, "shoald scheduler: %s\n", err.c_str());
      return 1;
    }
    obs::log_set_stderr_copy(true);
  }
  obs::Level lvl;
  if (obs::parse_level(log_level, &lvl)) obs::log_set_level(lvl);
  signal(SIGPIPE, SIG_IGN);

  // Peers keep their connections to the scheduler alive (up to 20 s idle,
  // a few each): a thousand of them need more than a shell's 1024.
  util::FdLimit fl = util::raise_fd_limit();

  Runner r;
  uv_loop_init(&r.loop);
  State state(opts);
  int rc = 0;
  {
    Server server(&r.loop, &state, secret, {});
    r.server = &server;
    if (server.listen(listen.addr, listen.port, &err) != 0) {
      obs::log_error("scheduler cannot start").str("error", err);
      fprintf(stderr, "shoald scheduler: %s\n", err.c_str());
      server.close([] {});
      rc = 1;
    } else {
      for (uv_signal_t* h : {&r.sig_term, &r.sig_int, &r.sig_usr1}) {
        uv_signal_init(&r.loop, h);
        h->data = &r;
      }
      uv_signal_start(&r.sig_term, Runner::on_signal, SIGTERM);
      uv_signal_start(&r.sig_int, Runner::on_signal, SIGINT);
      uv_signal_start(&r.sig_usr1, Runner::on_signal, SIGUSR1);
      obs::log_info("scheduler started")
          .str("listen", listen.addr + ":" + std::to_string(server.port()))
          .num("peer_timeout_ms", opts.peer_timeout_ms)
          .num("origin_concurrency", opts.origin_concurrency)
          .num("max_parents", opts.max_parents)
          .num("fd_limit", fl.now)
          .str("version", SHOAL_VERSION);
    }
    uv_run(&r.loop, UV_RUN_DEFAULT);
  }
  Counters c = state.counters();
  obs::log_info("scheduler stopped")
      .num("peers", static_cast<int64_t>(c.peers))
      .num("tasks", static_cast<int64_t>(c.tasks));
  int lr = uv_loop_close(&r.loop);
  if (lr != 0) obs::log_error("scheduler loop not closed cleanly").str("error", uv_strerror(lr));
  obs::log_close();
  return rc;
}

}  // namespace shoal::scheduler
