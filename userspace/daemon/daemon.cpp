#include "shoal/daemon/daemon.h"

#include <cjson/cJSON.h>
#include <grp.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "interception.h"
#include "privileges.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"
#include "shoal/p2p/auth.h"
#include "shoal/p2p/engine.h"
#include "shoal/proxy/runtime.h"
#include "shoal/proxy/worker.h"
#include "shoal/task/store.h"
#include "watchdog.h"

namespace shoal::daemon {

bool parse_endpoint(const std::string& s, config::Endpoint* out) {
  std::string host;
  std::string port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return false;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty()) host = "127.0.0.1";
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    return false;
  unsigned long p = std::stoul(port);
  if (p == 0 || p > 65535) return false;
  sockaddr_in6 a6{};
  sockaddr_in a4{};
  if (uv_ip4_addr(host.c_str(), 0, &a4) != 0 && uv_ip6_addr(host.c_str(), 0, &a6) != 0) return false;
  out->addr = host;
  out->port = static_cast<uint16_t>(p);
  return true;
}

config::LoadResult load_config(const Options& opts) {
  config::LoadResult lr =
      opts.config_path.empty() ? config::load_embedded_default() : config::load_file(opts.config_path);
  if (!lr.ok()) return lr;
  auto c = std::make_shared<config::Config>(*lr.config);
  const Overrides& o = opts.overrides;
  if (o.data_dir) c->data_dir = *o.data_dir;
  if (o.log_dir) c->log_dir = *o.log_dir;
  if (o.admin_socket) c->admin_socket = *o.admin_socket;
  if (o.proxy_listen) {
    c->proxy_listen = *o.proxy_listen;
    c->proxy_port_end = 0;
  }
  if (o.metrics_listen) c->metrics_listen = *o.metrics_listen;
  if (o.workers) c->workers = *o.workers;
  if (o.transparent_mode) c->transparent_mode = *o.transparent_mode;
  if (o.peer_listen) c->peer_listen = *o.peer_listen;
  if (o.peer_advertise) c->peer_advertise = *o.peer_advertise;
  if (o.p2p_schedulers) c->p2p_schedulers = *o.p2p_schedulers;
  if (o.cluster_secret_file) c->cluster_secret_file = *o.cluster_secret_file;
  bool bad = false;
  if (!c->proxy_listen.is_loopback() && !c->basic_auth && c->white_list.empty()) {
    lr.diags.push_back({"<command line>", 0, 0, "proxy.tcpListen",
                        "listening on non-loopback " + c->proxy_listen.addr +
                            " needs proxy.basicAuth or proxy.whiteList (Shoal is not an open relay)",
                        false});
    bad = true;
  }
  // The file passed this rule on its own; --scheduler can break it.
  if (!c->p2p_schedulers.empty() && c->cluster_secret_file.empty()) {
    lr.diags.push_back({"<command line>", 0, 0, "p2p.schedulers",
                        "peers sign every request with the cluster secret: give --cluster-secret-file "
                        "or set p2p.clusterSecretFile",
                        false});
    bad = true;
  }
  lr.config = bad ? nullptr : c;
  return lr;
}

namespace {

using obs::log_error;
using obs::log_info;
using obs::log_warn;

// The CA's subject, NotAfter and name constraints, for the log and status.
struct CaFacts {
  std::string subject, not_after, constraints;
};
CaFacts ca_facts(const tls::CertAuthority& ca) {
  CaFacts f;
  char buf[512];
  if (mbedtls_x509_dn_gets(buf, sizeof buf, &ca.cert().subject) > 0) f.subject = buf;
  const mbedtls_x509_time& t = ca.cert().valid_to;
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", t.year, t.mon, t.day, t.hour, t.min,
                t.sec);
  f.not_after = buf;
  f.constraints = ca.name_constraints().describe();
  return f;
}

// One line per CA at start and reload, so an admin rotating CAs sees which
// one mints and which is staged, and what each may vouch for.
void log_site_cas(const proxy::Runtime& rt) {
  auto line = [](const char* msg, const tls::CertAuthority& ca, const std::string& path) {
    CaFacts f = ca_facts(ca);
    log_info(msg)
        .str("cert", path)
        .str("subject", f.subject)
        .str("not_after", f.not_after)
        .str("name_constraints", f.constraints);
  };
  if (rt.ca) line("site CA: mints the leaves", *rt.ca, rt.cfg->ca_cert);
  if (rt.next_ca) line("next site CA: staged for rotation, not minting", *rt.next_ca, rt.cfg->ca_next_cert);
}

void add_ca_json(cJSON* o, const char* key, const tls::CertAuthority& ca, const std::string& path) {
  CaFacts f = ca_facts(ca);
  cJSON* c = cJSON_AddObjectToObject(o, key);
  cJSON_AddStringToObject(c, "cert", path.c_str());
  cJSON_AddStringToObject(c, "subject", f.subject.c_str());
  cJSON_AddStringToObject(c, "not_after", f.not_after.c_str());
  cJSON_AddStringToObject(c, "name_constraints", f.constraints.c_str());
}

std::string endpoint_str(const config::Endpoint& e) {
  return e.addr.find(':') != std::string::npos ? "[" + e.addr + "]:" + std::to_string(e.port)
                                               : e.addr + ":" + std::to_string(e.port);
}

int make_sockaddr(const config::Endpoint& e, sockaddr_storage* ss) {
  if (uv_ip4_addr(e.addr.c_str(), e.port, reinterpret_cast<sockaddr_in*>(ss)) == 0) return 0;
  return uv_ip6_addr(e.addr.c_str(), e.port, reinterpret_cast<sockaddr_in6*>(ss));
}

// SO_REUSEPORT lets a second daemon of the same user bind the same port and
// silently split traffic; a plain bind probe first makes "in use" an error.
bool port_free(const config::Endpoint& e, std::string* err) {
  sockaddr_storage ss{};
  if (make_sockaddr(e, &ss) != 0) {
    *err = "not an IP address: " + e.addr;
    return false;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = std::string("socket: ") + strerror(errno);
    return false;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0;
  if (!ok) *err = "cannot listen on " + endpoint_str(e) + ": " + strerror(errno);
  close(fd);
  return ok;
}

std::string make_peer_id() {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  char rnd[20];
  snprintf(rnd, sizeof rnd, "%08x%08x", rd(), rd());
  return std::string(host) + "-" + std::to_string(getpid()) + "-" + rnd;
}

class Daemon;

struct AdminConn {
  uv_pipe_t pipe{};
  Daemon* d = nullptr;
  std::string in, out;
  uv_write_t wr{};
  bool answered = false;
  bool denied = false;  // the caller is neither root nor in the admin group
  double freeze_s = 0;  // debug hook: block the control loop this long once answered
  int pid = 0;          // the caller, from SO_PEERCRED
  unsigned uid = 0;
};

struct MetricsConn {
  uv_tcp_t tcp{};
  Daemon* d = nullptr;
  std::string in, out;
  uv_write_t wr{};
  bool answered = false;
};

class Daemon {
 public:
  explicit Daemon(Options opts) : opts_(std::move(opts)) {}
  int run();

 private:
  int setup(std::string* err);
  int setup_admin(std::string* err);
  int setup_metrics(std::string* err);
  void reload();
  void begin_stop(const char* why);
  void check_stop();
  void finish();
  std::string status_json();
  void admin_request(AdminConn* c);
  // Writes c->out (plus a newline) and closes the connection.
  void admin_send(AdminConn* c);
  // `shoalctl client-info` (any local user), `tasks`, `gc` (answered when
  // the GC run it joins finishes).
  std::string client_info_json();
  std::string tasks_json();
  void admin_gc(AdminConn* c);
  void metrics_request(MetricsConn* c);

  static void on_signal(uv_signal_t* s, int signum);
  static void on_admin_conn(uv_stream_t* server, int status);
  static void on_metrics_conn(uv_stream_t* server, int status);

  Options opts_;
  uv_loop_t loop_{};
  proxy::Shared shared_;
  std::vector<std::unique_ptr<proxy::Worker>> workers_;
  // P2P: its own loop (a Worker without listeners), the origin access the
  // engine borrows from the proxy, and the engine. Destroyed in reverse.
  std::unique_ptr<proxy::Worker> p2p_worker_;
  std::unique_ptr<p2p::OriginFetcher> origin_fetcher_;
  std::unique_ptr<p2p::Engine> p2p_;
  int setup_p2p(int index, std::string* err);
  void stop_p2p();
  Interception icpt_;
  // The end of start-up: capabilities reduced to what the transparent mode
  // needs (privileges.h), then every loop watched (watchdog.h). The debug
  // hook (SHOAL_DEBUG_HOOKS=1 in the environment at start, never a config
  // key) lets `debug-freeze-loop` block a loop, for the watchdog's test.
  int drop_privileges(std::string* err);
  void start_watchdog();
  bool debug_freeze(const cJSON* req, AdminConn* c, cJSON* out);
  Watchdog watchdog_;
  uv_async_t wd_async_{};
  bool wd_async_open_ = false;
  size_t wd_main_ = 0;
  bool debug_hooks_ = false;
  std::string caps_kept_ = "all (privileges.dropCapabilities: false)";
  bool transparent_v6_ = false;
  uv_signal_t sig_hup_{}, sig_usr1_{}, sig_term_{}, sig_int_{};
  uv_pipe_t admin_{};
  uv_tcp_t metrics_{};
  uv_timer_t stop_timer_{};
  uv_timer_t gc_timer_{};
  // Hands freed heap back to the kernel once the clients are gone (see
  // trim_when_idle).
  uv_timer_t trim_timer_{};
  static constexpr uint64_t kTrimTickMs = 250, kTrimIdleMs = 500;
  bool busy_since_trim_ = false;
  uint64_t idle_since_ms_ = 0;  // loop time the last client left; 0 while any is connected
  void trim_when_idle();
  bool gc_running_ = false;
  // `shoalctl gc` callers waiting for the next GC run to finish.
  std::vector<AdminConn*> gc_waiters_;
  void start_gc();
  bool admin_open_ = false, metrics_open_ = false, stopping_ = false, aborted_ = false, finished_ = false;
  uint64_t start_ms_ = 0, stop_began_ms_ = 0;
  uint64_t generation_ = 1;
  // The configuration the listeners, admin socket and log were set up with
  // at start. Everything a reload may change (rules, timeouts, the stop's
  // grace period) is read from shared_.runtime()->cfg instead.
  std::shared_ptr<const config::Config> cfg_;
  double grace_s() const { return shared_.runtime()->cfg->shutdown_grace_s; }
  config::Endpoint proxy_ep_;
  gid_t admin_gid_ = 0;
  bool admin_gid_known_ = false;
};

int Daemon::run() {
  uv_loop_init(&loop_);
  start_ms_ = uv_now(&loop_);
  std::string err;
  int rc = setup(&err);
  if (rc != 0) {
    fprintf(stderr, "shoald: %s\n", err.c_str());
    log_error("start failed").str("error", err);
    for (auto& w : workers_) {
      w->stop_accepting();
      w->start();
      w->join();
    }
    if (p2p_worker_) {
      stop_p2p();
      p2p_worker_->start();
      p2p_worker_->join();
    }
    icpt_.stop();
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    // The log's writer thread drains the "start failed" line and ends;
    // left running, its std::thread would abort the process at exit.
    obs::log_close();
    return rc;
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  for (auto& w : workers_) w->join();
  if (p2p_worker_) p2p_worker_->join();
  // Hooks and rules go only once no worker can look an address up.
  icpt_.stop();
  uv_run(&loop_, UV_RUN_NOWAIT);
  log_info("shoald stopped").num("uptime_s", static_cast<int64_t>((uv_now(&loop_) - start_ms_) / 1000));
  int r = uv_loop_close(&loop_);
  if (r != 0) log_error("control loop not closed cleanly").str("error", uv_strerror(r));
  obs::log_close();
  return 0;
}

int Daemon::setup(std::string* err) {
  config::LoadResult lr = load_config(opts_);
  for (const auto& d : lr.diags) fprintf(stderr, "%s\n", d.str().c_str());
  if (!lr.ok()) {
    *err = "configuration has errors; not starting";
    return 2;
  }
  cfg_ = lr.config;
  std::string rerr;
  auto rt = proxy::Runtime::build(cfg_, generation_, &rerr);
  if (!rt) {
    *err = "configuration cannot be used:\n" + rerr;
    return 2;
  }
  if (!obs::log_open(cfg_->log_dir, err)) return 1;
  obs::Level lvl;
  if (obs::parse_level(cfg_->log_level, &lvl)) obs::log_set_level(lvl);
  obs::log_set_stderr_copy(true);
  for (const auto& d : lr.diags) log_warn("configuration").str("diag", d.str());
  shared_.set_runtime(rt);
  log_site_cas(*rt);
  shared_.peer_id = make_peer_id();
  {
    // The task store: without it Shoal still proxies, it just stores nothing.
    std::unique_ptr<task::Store> store;
    std::string serr;
    if (task::Store::open(cfg_->data_dir, &store, &serr) == 0) {
      log_info("task store open")
          .str("dir", cfg_->data_dir)
          .num("tasks", static_cast<int64_t>(store->task_count()))
          .num("bytes", static_cast<int64_t>(store->total_bytes()));
      shared_.engine = std::make_unique<task::Engine>(std::move(store));
    } else {
      log_warn("task store unavailable: p2p requests are forwarded to the origin").str("error", serr);
    }
  }

  // Listener: the first free port of a Dragonfly-style range.
  proxy_ep_ = cfg_->proxy_listen;
  uint16_t last = cfg_->proxy_port_end ? cfg_->proxy_port_end : proxy_ep_.port;
  std::string perr;
  bool found = false;
  for (uint32_t p = proxy_ep_.port; p <= last; ++p) {
    config::Endpoint e{proxy_ep_.addr, static_cast<uint16_t>(p)};
    if (port_free(e, &perr)) {
      proxy_ep_ = e;
      found = true;
      break;
    }
  }
  if (!found) {
    *err = perr;
    return 1;
  }
  int n = cfg_->workers > 0 ? cfg_->workers : static_cast<int>(uv_available_parallelism());
  if (n < 1) n = 1;
  for (int i = 0; i < n; ++i) {
    workers_.push_back(std::make_unique<proxy::Worker>(shared_, i));
    int r = workers_.back()->listen(proxy_ep_.addr, proxy_ep_.port, err);
    if (r != 0) return 1;
  }
  if (!icpt_.setup(*cfg_, shared_, &loop_, err)) return 1;
  // After interception: its SO_MARK goes on the engine's sockets too.
  if (setup_p2p(n, err) != 0) return 1;
  if (icpt_.active()) {
    config::Endpoint t4{"127.0.0.1", cfg_->transparent_port};
    if (!port_free(t4, err)) return 1;
    for (auto& w : workers_)
      if (w->listen(t4.addr, t4.port, err, true) != 0) return 1;
    // IPv6 may be off on the host: then only IPv4 jobs are intercepted.
    std::string e6;
    transparent_v6_ = true;
    for (auto& w : workers_) {
      if (w->listen("::1", cfg_->transparent_port, &e6, true) != 0) {
        log_warn("transparent listener on ::1 unavailable; IPv6 connects are not intercepted")
            .str("error", e6);
        transparent_v6_ = false;
        break;
      }
    }
    icpt_.attach_configured(*cfg_);
  }
  if (setup_admin(err) != 0) return 1;
  if (setup_metrics(err) != 0) return 1;

  uv_signal_init(&loop_, &sig_hup_);
  uv_signal_init(&loop_, &sig_usr1_);
  uv_signal_init(&loop_, &sig_term_);
  uv_signal_init(&loop_, &sig_int_);
  for (uv_signal_t* s : {&sig_hup_, &sig_usr1_, &sig_term_, &sig_int_}) s->data = this;
  uv_signal_start(&sig_hup_, on_signal, SIGHUP);
  uv_signal_start(&sig_usr1_, on_signal, SIGUSR1);
  uv_signal_start(&sig_term_, on_signal, SIGTERM);
  uv_signal_start(&sig_int_, on_signal, SIGINT);
  signal(SIGPIPE, SIG_IGN);
  uv_timer_init(&loop_, &stop_timer_);
  stop_timer_.data = this;
  uv_timer_init(&loop_, &gc_timer_);
  gc_timer_.data = this;
  if (shared_.engine) {
    // Expiry and quota every minute, first right away.
    uv_timer_start(
        &gc_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->start_gc(); }, 0, 60 * 1000);
  }

  uv_timer_init(&loop_, &trim_timer_);
  trim_timer_.data = this;
  uv_timer_start(
      &trim_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->trim_when_idle(); }, kTrimTickMs,
      kTrimTickMs);

  // Before any loop thread exists: they inherit the reduced sets.
  if (int r = drop_privileges(err); r != 0) return r;
  for (auto& w : workers_) w->start();
  if (p2p_worker_) p2p_worker_->start();
  start_watchdog();
  log_info("shoald started")
      .str("version", SHOAL_VERSION)
      .str("config", cfg_->source)
      .str("proxy", endpoint_str(proxy_ep_))
      .str("metrics", endpoint_str(cfg_->metrics_listen))
      .str("admin", cfg_->admin_socket)
      .num("workers", n)
      .boolean("hijack", cfg_->hijack)
      .str("transparent", icpt_.mode())
      .str("peer", shared_.peer_id);
  std::string transparent = icpt_.active() ? "transparent interception " + icpt_.mode() + " on port " +
                                                 std::to_string(cfg_->transparent_port)
                                           : "transparent interception off";
  fprintf(stderr,
          "shoald %s: explicit proxy on %s, %s, metrics on http://%s/metrics, admin socket %s, "
          "%d workers, %s, log %s\n",
          SHOAL_VERSION, endpoint_str(proxy_ep_).c_str(), transparent.c_str(),
          endpoint_str(cfg_->metrics_listen).c_str(), cfg_->admin_socket.c_str(), n,
          cfg_->hijack ? "TLS interception on" : "TLS interception off (no hijackHTTPS CA)",
          obs::log_path().c_str());
  sd_notify("READY=1\nSTATUS=proxy " + endpoint_str(proxy_ep_) + ", " + transparent + ", " +
            std::to_string(n) + " workers");
  return 0;
}

// --- Privileges and watchdog ---------------------------------------------------

int Daemon::drop_privileges(std::string* err) {
  if (cfg_->hijack) {
    std::string w = ca_key_owner_warning(cfg_->ca_key);
    if (!w.empty()) log_warn("CA key readable by another user").str("warning", w);
  }
  const char* dbg = std::getenv("SHOAL_DEBUG_HOOKS");
  debug_hooks_ = dbg != nullptr && std::string(dbg) == "1";
  if (debug_hooks_) log_warn("debug hooks on (SHOAL_DEBUG_HOOKS=1): admins may freeze event loops");
  if (!cfg_->drop_capabilities) {
    log_warn("privileges.dropCapabilities is false: shoald keeps every capability it started with");
    return 0;
  }
  CapSet kept = 0;
  // Capabilities belong to threads. The log writer already runs: stop it,
  // drop, and start it again so that it inherits the reduced sets. Lines
  // logged in between go to stderr.
  obs::log_close();
  bool ok = drop_capabilities(kept_capabilities(icpt_.mode()), &kept, err);
  std::string lerr;
  if (!obs::log_open(cfg_->log_dir, &lerr)) {
    *err = ok ? lerr : *err;
    return 1;
  }
  if (!ok) {
    *err = "cannot drop capabilities (privileges.dropCapabilities: false turns this off): " + *err;
    return 1;
  }
  if (!verify_all_threads(kept, err)) {
    *err = "capabilities were not dropped in every thread: " + *err;
    return 1;
  }
  caps_kept_ = cap_names(kept);
  log_info("capabilities dropped").str("transparent", icpt_.mode()).str("kept", caps_kept_);
  return 0;
}

void Daemon::start_watchdog() {
  for (size_t i = 0; i < workers_.size(); ++i) {
    proxy::Worker* w = workers_[i].get();
    size_t idx = watchdog_.names().size();
    watchdog_.add_loop("worker-" + std::to_string(i),
                       [this, w, idx] { w->post([this, idx] { watchdog_.beat(idx); }); });
  }
  if (p2p_worker_) {
    proxy::Worker* w = p2p_worker_.get();
    size_t idx = watchdog_.names().size();
    watchdog_.add_loop("p2p", [this, w, idx] { w->post([this, idx] { watchdog_.beat(idx); }); });
  }
  // The control loop answers through an async handle; unreferenced, so it
  // never keeps the loop alive at stop. finish() stops the watchdog before
  // closing it.
  uv_async_init(&loop_, &wd_async_, [](uv_async_t* a) {
    auto* d = static_cast<Daemon*>(a->data);
    d->watchdog_.beat(d->wd_main_);
  });
  wd_async_.data = this;
  wd_async_open_ = true;
  uv_unref(reinterpret_cast<uv_handle_t*>(&wd_async_));
  wd_main_ = watchdog_.add_loop("main", [this] { uv_async_send(&wd_async_); });
  watchdog_.start(cfg_->watchdog_stall_s);
}

bool Daemon::debug_freeze(const cJSON* req, AdminConn* c, cJSON* out) {
  const cJSON* l = cJSON_GetObjectItemCaseSensitive(req, "loop");
  const cJSON* sec = cJSON_GetObjectItemCaseSensitive(req, "seconds");
  std::string loop = cJSON_IsString(l) ? l->valuestring : "";
  double s = cJSON_IsNumber(sec) ? sec->valuedouble : 0;
  if (!debug_hooks_) {
    cJSON_AddStringToObject(out, "error", "debug hooks are off (start shoald with SHOAL_DEBUG_HOOKS=1)");
    return false;
  }
  if (!(s > 0 && s <= 3600)) {
    cJSON_AddStringToObject(out, "error", "seconds must be more than 0 and at most 3600");
    return false;
  }
  proxy::Worker* w = nullptr;
  if (loop == "p2p") w = p2p_worker_.get();
  for (size_t i = 0; i < workers_.size(); ++i)
    if (loop == "worker-" + std::to_string(i)) w = workers_[i].get();
  if (w == nullptr && loop != "main") {
    std::string names;
    for (const auto& n : watchdog_.names()) names += (names.empty() ? "" : ", ") + n;
    cJSON_AddStringToObject(out, "error", ("no loop " + loop + "; loops: " + names).c_str());
    return false;
  }
  log_warn("debug hook: freezing an event loop").str("loop", loop).dbl("seconds", s);
  if (w != nullptr)
    w->post([s] { std::this_thread::sleep_for(std::chrono::duration<double>(s)); });
  else
    c->freeze_s = s;
  cJSON_AddStringToObject(out, "loop", loop.c_str());
  return true;
}

// --- P2P ----------------------------------------------------------------------

// The address other peers reach our upload server at: p2p.advertise, else
// the listen address when it is a specific one, else the source address
// this host uses towards the first scheduler.
std::string derive_advertise(const config::Config& c, std::string* err) {
  if (!c.peer_advertise.empty()) return c.peer_advertise;
  const std::string& a = c.peer_listen.addr;
  bool v6 = a.find(':') != std::string::npos;
  if (a != "0.0.0.0" && a != "::") return (v6 ? "[" + a + "]" : a) + ":" + std::to_string(c.peer_listen.port);
  sockaddr_storage ss{};
  config::Endpoint e;
  if (!parse_endpoint(c.p2p_schedulers.front(), &e)) {
    *err = "cannot parse scheduler address " + c.p2p_schedulers.front();
    return "";
  }
  bool s6 = e.addr.find(':') != std::string::npos;
  int fd = socket(s6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s6)
    uv_ip6_addr(e.addr.c_str(), e.port, reinterpret_cast<sockaddr_in6*>(&ss));
  else
    uv_ip4_addr(e.addr.c_str(), e.port, reinterpret_cast<sockaddr_in*>(&ss));
  socklen_t len = sizeof ss;
  // A UDP connect sends nothing; it only asks the kernel for the route.
  if (fd < 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&ss), s6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    *err = "cannot find this host's address towards " + c.p2p_schedulers.front() + " (" + strerror(errno) +
           "): set p2p.advertise or --advertise";
    if (fd >= 0) close(fd);
    return "";
  }
  close(fd);
  char ip[64] = "";
  if (s6)
    uv_ip6_name(reinterpret_cast<sockaddr_in6*>(&ss), ip, sizeof ip);
  else
    uv_ip4_name(reinterpret_cast<sockaddr_in*>(&ss), ip, sizeof ip);
  return (s6 ? "[" + std::string(ip) + "]" : std::string(ip)) + ":" + std::to_string(c.peer_listen.port);
}

int Daemon::setup_p2p(int index, std::string* err) {
  if (cfg_->p2p_schedulers.empty()) return 0;
  if (!shared_.engine) {
    log_warn("p2p off: the task store is unavailable");
    return 0;
  }
  p2p::EngineOptions eo;
  if (!p2p::load_secret_file(cfg_->cluster_secret_file, &eo.secret, err)) return 1;
  eo.peer_id = shared_.peer_id;
  eo.schedulers = cfg_->p2p_schedulers;
  eo.listen_addr = cfg_->peer_listen.addr;
  eo.listen_port = cfg_->peer_listen.port;
  eo.advertise = derive_advertise(*cfg_, err);
  if (eo.advertise.empty()) return 1;
  eo.labels = cfg_->peer_labels;
  eo.upload_slots = cfg_->upload_slots;
  eo.upload_rate = cfg_->upload_rate;
  eo.parallel_parents = cfg_->parallel_parents;
  eo.stall_rate = cfg_->stall_rate;
  eo.stall_time_s = cfg_->stall_time_s;
  eo.mark = shared_.mark;
  eo.tls = cfg_->peer_tls;
  eo.keepalive_ms = static_cast<uint64_t>(cfg_->peer_keepalive_s * 1000);
  eo.piece_memory = cfg_->peer_piece_memory;
  p2p_worker_ = std::make_unique<proxy::Worker>(shared_, index);
  origin_fetcher_ = proxy::make_origin_fetcher(*p2p_worker_);
  p2p_ = std::make_unique<p2p::Engine>(p2p_worker_->loop(), shared_.engine.get(), origin_fetcher_.get(), eo);
  // The loop thread has not started: listening here reports errors at start.
  if (p2p_->start(err) != 0) return 1;
  shared_.p2p = p2p_.get();
  shared_.p2p_worker = p2p_worker_.get();
  return 0;
}

void Daemon::stop_p2p() {
  if (!p2p_worker_ || !p2p_) return;
  proxy::Worker* w = p2p_worker_.get();
  p2p::Engine* e = p2p_.get();
  w->post([w, e] { e->stop([w] { w->stop_accepting(); }); });
}

// --- Admin socket -------------------------------------------------------------

int Daemon::setup_admin(std::string* err) {
  const std::string& path = cfg_->admin_socket;
  auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    std::string dir = path.substr(0, slash);
    std::string cur;
    for (size_t i = 0; i <= dir.size(); ++i) {
      if (i == dir.size() || dir[i] == '/') {
        if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
          *err = "cannot create " + cur + " for the admin socket: " + strerror(errno);
          return 1;
        }
      }
      if (i < dir.size()) cur += dir[i];
    }
  }
  // A socket file left by a dead daemon is removed; one that answers is not.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      *err = "admin socket path " + path + " exists and is not a socket";
      return 1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    bool alive = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    close(fd);
    if (alive) {
      *err = "another shoald answers on " + path + "; stop it or use --admin-socket";
      return 1;
    }
    unlink(path.c_str());
  }
  uv_pipe_init(&loop_, &admin_, 0);
  admin_.data = this;
  admin_open_ = true;
  int r = uv_pipe_bind(&admin_, path.c_str());
  if (r == 0) r = uv_listen(reinterpret_cast<uv_stream_t*>(&admin_), 64, on_admin_conn);
  if (r != 0) {
    *err = "cannot listen on admin socket " + path + ": " + uv_strerror(r);
    return 1;
  }
  if (group* g = getgrnam(cfg_->admin_group.c_str())) {
    admin_gid_ = g->gr_gid;
    admin_gid_known_ = true;
    if (chown(path.c_str(), 0, g->gr_gid) != 0)
      log_warn("cannot chown admin socket").str("path", path).str("error", strerror(errno));
  }
  // Anyone may connect: `shoalctl run` is for every local user; the other
  // commands check the caller (SO_PEERCRED) themselves.
  chmod(path.c_str(), 0666);
  return 0;
}

void Daemon::on_admin_conn(uv_stream_t* server, int status) {
  auto* d = static_cast<Daemon*>(server->data);
  if (status < 0) return;
  auto* c = new AdminConn;
  c->d = d;
  uv_pipe_init(&d->loop_, &c->pipe, 0);
  c->pipe.data = c;
  auto close_cb = [](uv_handle_t* h) { delete static_cast<AdminConn*>(h->data); };
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe), close_cb);
    return;
  }
  // Only root and members of the admin group may talk to the daemon.
  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&c->pipe), &fd);
  ucred cred{};
  socklen_t len = sizeof cred;
  bool allowed = false;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    c->pid = cred.pid;
    c->uid = cred.uid;
    allowed = cred.uid == 0 || (d->admin_gid_known_ && cred.gid == d->admin_gid_);
    if (!allowed && d->admin_gid_known_) {
      if (passwd* pw = getpwuid(cred.uid)) {
        int ng = 64;
        std::vector<gid_t> groups(64);
        if (getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &ng) >= 0) {
          for (int i = 0; i < ng; ++i)
            if (groups[static_cast<size_t>(i)] == d->admin_gid_) allowed = true;
        }
      }
    }
  }
  // Refused commands are answered after the request line is read: closing
  // with it unread would make the caller's read fail with ECONNRESET
  // instead of showing the refusal.
  if (!allowed) c->denied = true;
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->pipe),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        static thread_local char b[4096];
        *buf = uv_buf_init(b, sizeof b);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* cc = static_cast<AdminConn*>(s->data);
        if (cc->answered) return;
        if (n < 0 || cc->in.size() > 64 * 1024) {
          uv_close(reinterpret_cast<uv_handle_t*>(&cc->pipe),
                   [](uv_handle_t* h) { delete static_cast<AdminConn*>(h->data); });
          return;
        }
        cc->in.append(buf->base, static_cast<size_t>(n));
        if (cc->in.find('\n') != std::string::npos) cc->d->admin_request(cc);
      });
}

void Daemon::admin_request(AdminConn* c) {
  c->answered = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->pipe));
  std::string line = c->in.substr(0, c->in.find('\n'));
  cJSON* req = cJSON_Parse(line.c_str());
  const cJSON* cmd = req ? cJSON_GetObjectItemCaseSensitive(req, "cmd") : nullptr;
  std::string name = cJSON_IsString(cmd) ? cmd->valuestring : "";
  const cJSON* arg = req ? cJSON_GetObjectItemCaseSensitive(req, "path") : nullptr;
  std::string path = cJSON_IsString(arg) ? arg->valuestring : "";
  const cJSON* nm = req ? cJSON_GetObjectItemCaseSensitive(req, "name") : nullptr;
  std::string job_name = cJSON_IsString(nm) ? nm->valuestring : "";
  auto answer = [&](bool ok, cJSON* o) {
    cJSON_AddBoolToObject(o, "ok", ok);
    char* t = cJSON_PrintUnformatted(o);
    c->out = t;
    cJSON_free(t);
    cJSON_Delete(o);
  };
  // `shoalctl run` is for every local user (the daemon moves the caller,
  // found by SO_PEERCRED, and nothing else); the rest is for the admins.
  // `client-info` tells get and preheat where the proxy and the site CA
  // are, which every user of the proxy may know.
  bool open_to_all = name == "run" || name == "client-info";
  bool deferred = false;
  if (c->denied && !open_to_all) {
    log_warn("admin command refused").str("cmd", name).num("uid", c->uid);
    c->out = "{\"ok\":false,\"error\":\"permission denied: root or the admin group only\"}";
  } else if (name == "status") {
    c->out = status_json();
  } else if (name == "client-info") {
    c->out = client_info_json();
  } else if (name == "tasks") {
    c->out = tasks_json();
  } else if (name == "gc") {
    deferred = true;
  } else if (name == "reload") {
    reload();
    c->out = "{\"ok\":true}";
  } else if ((name == "attach" || name == "detach") && path.empty()) {
    c->out = "{\"ok\":false,\"error\":\"" + name + " needs a cgroup path\"}";
  } else if (name == "attach") {
    cJSON* o = cJSON_CreateObject();
    answer(icpt_.attach(path, o), o);
  } else if (name == "detach") {
    cJSON* o = cJSON_CreateObject();
    answer(icpt_.detach(path, o), o);
  } else if (name == "run") {
    cJSON* o = cJSON_CreateObject();
    answer(c->pid > 0 && icpt_.run(c->pid, c->uid, job_name, o), o);
  } else if (name == "debug-freeze-loop") {
    cJSON* o = cJSON_CreateObject();
    answer(debug_freeze(req, c, o), o);
  } else if (name == "cleanup") {
    cJSON* o = cJSON_CreateObject();
    answer(icpt_.cleanup(o), o);
  } else {
    cJSON* o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", false);
    cJSON_AddStringToObject(o, "error", req ? ("unknown command: " + name).c_str() : "request is not JSON");
    char* t = cJSON_PrintUnformatted(o);
    c->out = t;
    cJSON_free(t);
    cJSON_Delete(o);
  }
  cJSON_Delete(req);
  if (deferred)
    admin_gc(c);
  else
    admin_send(c);
}

void Daemon::admin_send(AdminConn* c) {
  c->out += "\n";
  uv_buf_t b = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
  c->wr.data = c;
  uv_write(&c->wr, reinterpret_cast<uv_stream_t*>(&c->pipe), &b, 1, [](uv_write_t* w, int) {
    auto* cc = static_cast<AdminConn*>(w->data);
    if (cc->freeze_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(cc->freeze_s));
    uv_close(reinterpret_cast<uv_handle_t*>(&cc->pipe),
             [](uv_handle_t* h) { delete static_cast<AdminConn*>(h->data); });
  });
}

std::string Daemon::status_json() {
  auto rt = shared_.runtime();
  cJSON* o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", true);
  cJSON_AddStringToObject(o, "version", SHOAL_VERSION);
  cJSON_AddNumberToObject(o, "pid", getpid());
  cJSON_AddNumberToObject(o, "uptime_s", static_cast<double>(uv_now(&loop_) - start_ms_) / 1000.0);
  cJSON_AddStringToObject(o, "config", rt->cfg->source.c_str());
  cJSON_AddStringToObject(o, "peer", shared_.peer_id.c_str());
  cJSON_AddStringToObject(
      o, "mode", icpt_.active() ? ("explicit+transparent (" + icpt_.mode() + ")").c_str() : "explicit");
  icpt_.status(o);
  cJSON_AddBoolToObject(o, "stopping", stopping_);
  cJSON_AddStringToObject(o, "capabilities", caps_kept_.c_str());
  cJSON_AddNumberToObject(o, "workers", static_cast<double>(workers_.size()));
  cJSON_AddBoolToObject(o, "hijack", rt->ca != nullptr);
  cJSON_AddNumberToObject(o, "rules", static_cast<double>(rt->cfg->rules.size()));
  cJSON_AddNumberToObject(o, "hijack_hosts", static_cast<double>(rt->cfg->hijack_hosts.size()));
  if (rt->cfg->hijack) cJSON_AddStringToObject(o, "hijack_cert", rt->cfg->ca_cert.c_str());
  if (rt->ca) add_ca_json(o, "ca", *rt->ca, rt->cfg->ca_cert);
  if (rt->next_ca) add_ca_json(o, "next_ca", *rt->next_ca, rt->cfg->ca_next_cert);
  if (shared_.engine) {
    task::Store& st = shared_.engine->store();
    cJSON* so = cJSON_AddObjectToObject(o, "store");
    cJSON_AddStringToObject(so, "dir", st.dir().c_str());
    cJSON_AddNumberToObject(so, "tasks", static_cast<double>(st.task_count()));
    cJSON_AddNumberToObject(so, "bytes", static_cast<double>(st.total_bytes()));
    cJSON_AddNumberToObject(so, "active", static_cast<double>(shared_.engine->active()));
  }
  cJSON* ls = cJSON_AddArrayToObject(o, "listeners");
  auto add_l = [&](const char* kind, const std::string& addr) {
    cJSON* l = cJSON_CreateObject();
    cJSON_AddStringToObject(l, "kind", kind);
    cJSON_AddStringToObject(l, "address", addr.c_str());
    cJSON_AddItemToArray(ls, l);
  };
  add_l("proxy", endpoint_str(proxy_ep_));
  if (icpt_.active()) {
    add_l("transparent", endpoint_str({"127.0.0.1", cfg_->transparent_port}));
    if (transparent_v6_) add_l("transparent", endpoint_str({"::1", cfg_->transparent_port}));
  }
  add_l("metrics", endpoint_str(cfg_->metrics_listen));
  add_l("admin", cfg_->admin_socket);
  if (p2p_) {
    p2p::Engine::Status ps = p2p_->status();
    add_l("peer", ps.listen);
    cJSON* p = cJSON_AddObjectToObject(o, "p2p");
    cJSON_AddStringToObject(p, "advertise", ps.advertise.c_str());
    cJSON_AddBoolToObject(p, "tls", ps.tls);
    cJSON_AddNumberToObject(p, "downloads", static_cast<double>(ps.downloads));
    cJSON* ss = cJSON_AddArrayToObject(p, "schedulers");
    for (auto& sch : ps.schedulers) {
      cJSON* e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "address", sch.first.c_str());
      cJSON_AddBoolToObject(e, "reachable", sch.second);
      cJSON_AddItemToArray(ss, e);
    }
  }
  cJSON_AddNumberToObject(o, "connections_active", static_cast<double>(shared_.active()));
  cJSON* counters = cJSON_AddObjectToObject(o, "counters");
  for (const auto& kv : obs::metrics().snapshot())
    cJSON_AddNumberToObject(counters, kv.first.c_str(), kv.second);
  char* t = cJSON_PrintUnformatted(o);
  std::string s = t;
  cJSON_free(t);
  cJSON_Delete(o);
  return s;
}

std::string Daemon::client_info_json() {
  auto rt = shared_.runtime();
  cJSON* o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", true);
  cJSON_AddStringToObject(o, "version", SHOAL_VERSION);
  cJSON_AddStringToObject(o, "proxy", endpoint_str(proxy_ep_).c_str());
  cJSON_AddBoolToObject(o, "hijack", rt->ca != nullptr);
  if (rt->cfg->hijack) cJSON_AddStringToObject(o, "hijack_cert", rt->cfg->ca_cert.c_str());
  char* t = cJSON_PrintUnformatted(o);
  std::string s = t;
  cJSON_free(t);
  cJSON_Delete(o);
  return s;
}

// Downloads in flight (from the task table) and the stored tasks (the
// store's in-memory index), newest first, with bytes by source where this
// daemon saw them arrive.
std::string Daemon::tasks_json() {
  cJSON* o = cJSON_CreateObject();
  if (!shared_.engine) {
    cJSON_AddBoolToObject(o, "ok", false);
    cJSON_AddStringToObject(o, "error", "the task store is unavailable (see the daemon's log)");
  } else {
    task::Engine& eng = *shared_.engine;
    auto rt = shared_.runtime();
    double now = static_cast<double>(time(nullptr));
    cJSON_AddBoolToObject(o, "ok", true);
    cJSON_AddNumberToObject(o, "now", now);
    cJSON* act = cJSON_AddArrayToObject(o, "active");
    for (const auto& t : eng.active_tasks()) {
      task::ActiveTask::View v = t->view();
      const char* state = v.phase == task::ActiveTask::Phase::Starting ? "starting"
                          : v.phase == task::ActiveTask::Phase::Streaming
                              ? (v.verified ? "verified" : "downloading")
                          : v.phase == task::ActiveTask::Phase::Complete ? "complete"
                                                                         : "failed";
      cJSON* e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "id", t->id().c_str());
      cJSON_AddStringToObject(e, "url", t->url().c_str());
      cJSON_AddStringToObject(e, "state", state);
      cJSON_AddNumberToObject(e, "size", static_cast<double>(v.length));
      cJSON_AddNumberToObject(e, "done", static_cast<double>(v.stored));
      cJSON_AddNumberToObject(e, "bytes_origin", static_cast<double>(v.bytes_origin));
      cJSON_AddNumberToObject(e, "bytes_peer", static_cast<double>(v.bytes_peer));
      cJSON_AddNumberToObject(e, "started", static_cast<double>(t->started()));
      cJSON_AddNumberToObject(e, "age_s", now - static_cast<double>(t->started()));
      if (!v.failure.empty()) cJSON_AddStringToObject(e, "failure", v.failure.c_str());
      cJSON_AddItemToArray(act, e);
    }
    std::vector<task::TaskSummary> metas = eng.store().summaries();
    cJSON* sto = cJSON_AddArrayToObject(o, "stored");
    for (const auto& m : metas) {
      cJSON* e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "id", m.id.c_str());
      cJSON_AddStringToObject(e, "url", m.url.c_str());
      if (!m.digest.empty()) cJSON_AddStringToObject(e, "digest", m.digest.c_str());
      cJSON_AddNumberToObject(e, "size", static_cast<double>(m.length));
      cJSON_AddNumberToObject(e, "created", static_cast<double>(m.created));
      cJSON_AddNumberToObject(e, "last_access", static_cast<double>(m.last_access));
      cJSON_AddNumberToObject(e, "age_s", now - static_cast<double>(m.created));
      cJSON_AddNumberToObject(e, "serving", m.pins);
      task::Engine::Sources src;
      if (eng.sources(m.id, &src)) {
        if (src.fetched) {
          cJSON_AddNumberToObject(e, "bytes_origin", static_cast<double>(src.origin));
          cJSON_AddNumberToObject(e, "bytes_peer", static_cast<double>(src.peer));
        }
        cJSON_AddNumberToObject(e, "bytes_reuse", static_cast<double>(src.reuse_bytes));
        cJSON_AddNumberToObject(e, "reuse_count", static_cast<double>(src.reuse_count));
      }
      cJSON_AddItemToArray(sto, e);
    }
    cJSON* so = cJSON_AddObjectToObject(o, "store");
    cJSON_AddStringToObject(so, "dir", eng.store().dir().c_str());
    cJSON_AddNumberToObject(so, "tasks", static_cast<double>(metas.size()));
    cJSON_AddNumberToObject(so, "bytes", static_cast<double>(eng.store().total_bytes()));
    cJSON_AddNumberToObject(so, "quota", static_cast<double>(rt->cfg->disk_quota_bytes));
    cJSON_AddNumberToObject(so, "expire_s", rt->cfg->task_expire_s);
  }
  char* t = cJSON_PrintUnformatted(o);
  std::string s = t;
  cJSON_free(t);
  cJSON_Delete(o);
  return s;
}

// Joins the next GC run (starting one unless one runs: then the run after
// it, so that the caller sees a GC that began after it asked).
void Daemon::admin_gc(AdminConn* c) {
  if (!shared_.engine || stopping_) {
    c->out = shared_.engine
                 ? "{\"ok\":false,\"error\":\"shoald is stopping\"}"
                 : "{\"ok\":false,\"error\":\"the task store is unavailable (see the daemon's log)\"}";
    admin_send(c);
    return;
  }
  gc_waiters_.push_back(c);
  start_gc();
}

// --- Metrics endpoint ------------------------------------------------------------

int Daemon::setup_metrics(std::string* err) {
  sockaddr_storage ss{};
  if (make_sockaddr(cfg_->metrics_listen, &ss) != 0) {
    *err = "metrics address is not an IP: " + cfg_->metrics_listen.addr;
    return 1;
  }
  uv_tcp_init(&loop_, &metrics_);
  metrics_.data = this;
  metrics_open_ = true;
  int r = uv_tcp_bind(&metrics_, reinterpret_cast<sockaddr*>(&ss), 0);
  if (r == 0) r = uv_listen(reinterpret_cast<uv_stream_t*>(&metrics_), 64, on_metrics_conn);
  if (r != 0) {
    *err = "cannot listen on metrics " + endpoint_str(cfg_->metrics_listen) + ": " + uv_strerror(r);
    return 1;
  }
  return 0;
}

void Daemon::on_metrics_conn(uv_stream_t* server, int status) {
  auto* d = static_cast<Daemon*>(server->data);
  if (status < 0) return;
  auto* c = new MetricsConn;
  c->d = d;
  uv_tcp_init(&d->loop_, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
             [](uv_handle_t* h) { delete static_cast<MetricsConn*>(h->data); });
    return;
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        static thread_local char b[4096];
        *buf = uv_buf_init(b, sizeof b);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* cc = static_cast<MetricsConn*>(s->data);
        if (cc->answered) return;
        if (n < 0 || cc->in.size() > 16 * 1024) {
          uv_close(reinterpret_cast<uv_handle_t*>(&cc->tcp),
                   [](uv_handle_t* h) { delete static_cast<MetricsConn*>(h->data); });
          return;
        }
        cc->in.append(buf->base, static_cast<size_t>(n));
        if (cc->in.find("\r\n\r\n") != std::string::npos || cc->in.find("\n\n") != std::string::npos)
          cc->d->metrics_request(cc);
      });
}

void Daemon::metrics_request(MetricsConn* c) {
  c->answered = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
  std::string first = c->in.substr(0, c->in.find_first_of("\r\n"));
  std::string body, ctype = "text/plain; charset=utf-8";
  int status = 200;
  const char* reason = "OK";
  bool get = first.rfind("GET ", 0) == 0, head = first.rfind("HEAD ", 0) == 0;
  std::string target = first.substr(first.find(' ') + 1);
  target = target.substr(0, target.find(' '));
  if (!get && !head) {
    status = 405;
    reason = "Method Not Allowed";
    body = "the metrics endpoint is read-only: GET /metrics\n";
  } else if (target == "/metrics") {
    body = obs::metrics().render();
    ctype = "text/plain; version=0.0.4; charset=utf-8";
  } else if (target == "/healthz") {
    body = stopping_ ? "stopping\n" : "ok\n";
    if (stopping_) {
      status = 503;
      reason = "Service Unavailable";
    }
  } else {
    status = 404;
    reason = "Not Found";
    body = "not found: try /metrics\n";
  }
  c->out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + ctype +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (!head) c->out += body;
  uv_buf_t b = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
  c->wr.data = c;
  uv_write(&c->wr, reinterpret_cast<uv_stream_t*>(&c->tcp), &b, 1, [](uv_write_t* w, int) {
    auto* cc = static_cast<MetricsConn*>(w->data);
    uv_close(reinterpret_cast<uv_handle_t*>(&cc->tcp),
             [](uv_handle_t* h) { delete static_cast<MetricsConn*>(h->data); });
  });
}

// --- Signals, reload, stop ---------------------------------------------------

void Daemon::on_signal(uv_signal_t* s, int signum) {
  auto* d = static_cast<Daemon*>(s->data);
  if (signum == SIGHUP) {
    d->reload();
  } else if (signum == SIGUSR1) {
    std::string err;
    if (!obs::log_reopen(&err)) {
      fprintf(stderr, "shoald: cannot reopen log: %s\n", err.c_str());
    } else {
      log_info("log reopened");
    }
  } else {
    d->begin_stop(signum == SIGTERM ? "SIGTERM" : "SIGINT");
  }
}

void Daemon::reload() {
  log_info("reloading configuration")
      .str("config", opts_.config_path.empty() ? "<embedded default>" : opts_.config_path);
  config::LoadResult lr = load_config(opts_);
  for (const auto& d : lr.diags)
    (d.warning ? log_warn("configuration") : log_error("configuration")).str("diag", d.str());
  if (!lr.ok()) {
    log_error("reload failed; keeping the running configuration").str("errors", lr.errors_text());
    return;
  }
  std::string err;
  auto rt = proxy::Runtime::build(lr.config, ++generation_, &err);
  if (!rt) {
    log_error("reload failed; keeping the running configuration").str("errors", err);
    return;
  }
  const auto& n = *lr.config;
  if (n.proxy_listen.addr != cfg_->proxy_listen.addr || n.proxy_listen.port != cfg_->proxy_listen.port ||
      n.metrics_listen.port != cfg_->metrics_listen.port || n.admin_socket != cfg_->admin_socket ||
      n.workers != cfg_->workers || n.log_dir != cfg_->log_dir || n.admin_group != cfg_->admin_group)
    log_warn("listener, admin socket, worker and log directory changes take effect at the next restart");
  obs::Level lvl;
  if (obs::parse_level(n.log_level, &lvl)) obs::log_set_level(lvl);
  shared_.set_runtime(rt);
  log_site_cas(*rt);
  log_info("configuration reloaded").num("generation", static_cast<int64_t>(generation_));
}

void Daemon::begin_stop(const char* why) {
  if (stopping_) {
    // A second signal: do not wait for the grace period.
    if (!aborted_) {
      aborted_ = true;
      log_warn("second stop signal: resetting remaining connections");
      for (auto& w : workers_) w->abort_all();
    }
    return;
  }
  stopping_ = true;
  stop_began_ms_ = uv_now(&loop_);
  // Loops end one by one from here: none may look stalled. A stop that
  // hangs is systemd's TimeoutStopSec's to catch.
  watchdog_.stop();
  sd_notify("STOPPING=1");
  size_t active = 0;
  for (auto& w : workers_) active += w->conn_count();
  log_info("stopping")
      .str("signal", why)
      .num("connections", static_cast<int64_t>(active))
      .dbl("grace_s", grace_s());
  for (auto& w : workers_) w->stop_accepting();
  uv_timer_start(
      &stop_timer_, [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->check_stop(); }, 50, 50);
}

// A burst of clients leaves glibc holding their freed buffers in every
// thread's arena (hundreds of MiB after a thousand TLS clients), which
// counts against the unit's MemoryHigh and the node's jobs. Once no client
// connection has been left for kTrimIdleMs, give the free pages back: a few
// milliseconds on the control loop, once per busy period, and the memory is
// back within a second of the last client leaving.
void Daemon::trim_when_idle() {
  size_t active = 0;
  for (auto& w : workers_) active += w->conn_count();
  const uint64_t now = uv_now(&loop_);
  if (active > 0) {
    busy_since_trim_ = true;
    idle_since_ms_ = 0;
    return;
  }
  if (idle_since_ms_ == 0) idle_since_ms_ = now;
  if (!busy_since_trim_ || stopping_ || now - idle_since_ms_ < kTrimIdleMs) return;
  busy_since_trim_ = false;
  malloc_trim(0);
}

// Store GC runs in the thread pool (it deletes files); one at a time.
void Daemon::start_gc() {
  if (stopping_ || !shared_.engine) {
    for (AdminConn* c : gc_waiters_) {
      c->out = "{\"ok\":false,\"error\":\"shoald is stopping\"}";
      admin_send(c);
    }
    gc_waiters_.clear();
    return;
  }
  if (gc_running_) return;
  struct Job {
    uv_work_t req{};
    Daemon* d;
    uint64_t quota;
    int64_t expire;
    task::GcResult result;
    uint64_t bytes = 0, tasks = 0;
    // `shoalctl gc` callers this run answers, and what they are told about
    // the removed tasks (their metadata, taken before the run).
    std::vector<AdminConn*> waiters;
    std::map<std::string, task::TaskSummary> before;
  };
  auto rt = shared_.runtime();
  auto* j = new Job{};
  j->req.data = j;
  j->d = this;
  j->quota = rt->cfg->disk_quota_bytes;
  j->expire = static_cast<int64_t>(rt->cfg->task_expire_s);
  j->waiters = std::move(gc_waiters_);
  gc_waiters_.clear();
  gc_running_ = true;
  int r = uv_queue_work(
      &loop_, &j->req,
      [](uv_work_t* req) {
        auto* jj = static_cast<Job*>(req->data);
        task::Store& st = jj->d->shared_.engine->store();
        if (!jj->waiters.empty())
          for (auto& m : st.summaries()) jj->before.emplace(m.id, std::move(m));
        jj->result = st.gc(jj->quota, jj->expire, static_cast<int64_t>(time(nullptr)));
        jj->bytes = st.total_bytes();
        jj->tasks = st.task_count();
      },
      [](uv_work_t* req, int) {
        auto* jj = static_cast<Job*>(req->data);
        jj->d->gc_running_ = false;
        static obs::Gauge& bytes =
            obs::metrics().gauge("shoal_store_bytes", "Bytes of complete tasks in the store");
        static obs::Gauge& tasks = obs::metrics().gauge("shoal_store_tasks", "Complete tasks in the store");
        static obs::Counter& removed =
            obs::metrics().counter("shoal_store_gc_removed_total", "Tasks removed by expiry or quota");
        bytes.set(static_cast<int64_t>(jj->bytes));
        tasks.set(static_cast<int64_t>(jj->tasks));
        if (!jj->result.ids.empty()) {
          removed.inc(jj->result.ids.size());
          log_info("store gc")
              .num("removed", static_cast<int64_t>(jj->result.ids.size()))
              .num("freed_bytes", static_cast<int64_t>(jj->result.bytes))
              .num("store_bytes", static_cast<int64_t>(jj->bytes));
        }
        Daemon* d = jj->d;
        for (const auto& id : jj->result.ids) d->shared_.engine->forget(id);
        if (!jj->waiters.empty()) {
          cJSON* o = cJSON_CreateObject();
          cJSON_AddBoolToObject(o, "ok", true);
          cJSON* rm = cJSON_AddArrayToObject(o, "removed");
          for (const auto& id : jj->result.ids) {
            cJSON* e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "id", id.c_str());
            auto it = jj->before.find(id);
            if (it != jj->before.end()) {
              cJSON_AddStringToObject(e, "url", it->second.url.c_str());
              cJSON_AddNumberToObject(e, "size", static_cast<double>(it->second.length));
              cJSON_AddNumberToObject(e, "last_access", static_cast<double>(it->second.last_access));
            }
            cJSON_AddItemToArray(rm, e);
          }
          cJSON_AddNumberToObject(o, "freed_bytes", static_cast<double>(jj->result.bytes));
          cJSON_AddNumberToObject(o, "store_bytes", static_cast<double>(jj->bytes));
          cJSON_AddNumberToObject(o, "store_tasks", static_cast<double>(jj->tasks));
          char* t = cJSON_PrintUnformatted(o);
          for (AdminConn* c : jj->waiters) {
            c->out = t;
            d->admin_send(c);
          }
          cJSON_free(t);
          cJSON_Delete(o);
        }
        delete jj;
        // Callers that asked while this run was going get one of their own.
        if (!d->gc_waiters_.empty()) d->start_gc();
      });
  if (r != 0) {
    gc_running_ = false;
    for (AdminConn* c : j->waiters) {
      c->out = std::string("{\"ok\":false,\"error\":\"cannot queue the GC: ") + uv_strerror(r) + "\"}";
      admin_send(c);
    }
    delete j;
  }
}

void Daemon::check_stop() {
  size_t active = 0;
  for (auto& w : workers_) active += w->conn_count();
  if (active == 0) {
    finish();
    return;
  }
  uint64_t elapsed = uv_now(&loop_) - stop_began_ms_;
  if (!aborted_ && static_cast<double>(elapsed) >= grace_s() * 1000.0) {
    aborted_ = true;
    log_warn("grace period over: resetting remaining connections")
        .num("connections", static_cast<int64_t>(active));
    for (auto& w : workers_) w->abort_all();
  }
}

void Daemon::finish() {
  if (finished_) return;
  finished_ = true;
  // Clients are gone: downloads still running are given up, uploads to
  // other peers cut (they switch parent), the schedulers told we leave.
  stop_p2p();
  watchdog_.stop();  // before the handle it pokes goes
  if (wd_async_open_) uv_close(reinterpret_cast<uv_handle_t*>(&wd_async_), nullptr);
  uv_timer_stop(&stop_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&stop_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&gc_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&trim_timer_), nullptr);
  for (uv_signal_t* s : {&sig_hup_, &sig_usr1_, &sig_term_, &sig_int_})
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  if (admin_open_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&admin_), nullptr);
    unlink(cfg_->admin_socket.c_str());
  }
  if (metrics_open_) uv_close(reinterpret_cast<uv_handle_t*>(&metrics_), nullptr);
}

}  // namespace

int run(const Options& opts) {
  Daemon d(opts);
  return d.run();
}

}  // namespace shoal::daemon
