// The daemon: loads configuration, owns the workers and the control loop
// (signals, admin socket, metrics endpoint). The control loop runs on the
// thread that calls run(); workers run on their own threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shoal/config/config.h"

namespace shoal::daemon {

// Command-line settings that override the configuration file.
struct Overrides {
  std::optional<std::string> data_dir, log_dir, admin_socket;
  std::optional<config::Endpoint> proxy_listen, metrics_listen;
  std::optional<int> workers;
  std::optional<config::Config::TransparentMode> transparent_mode;
  // P2P, peer side. Each holds what the matching p2p.* key would, already
  // checked by the same parser (shoal/config/config.h).
  std::optional<config::Endpoint> peer_listen;             // --peer-listen
  std::optional<std::string> peer_advertise;               // --advertise, canonical "ip:port"
  std::optional<std::vector<std::string>> p2p_schedulers;  // --scheduler, replaces the list
  std::optional<std::string> cluster_secret_file;          // --cluster-secret-file, absolute
};

struct Options {
  std::string config_path;  // empty: embedded default
  bool embedded_default = false;
  Overrides overrides;
};

// Loads and validates the configuration named by opts, applies overrides,
// then checks again the rules an override can break (an open proxy
// listener; schedulers without a cluster secret), reporting those as
// "<command line>" errors. The result's diags hold warnings too; its config
// is null when anything failed.
config::LoadResult load_config(const Options& opts);

// Runs until SIGTERM/SIGINT; returns the process exit code.
int run(const Options& opts);

// "addr:port", "[v6]:port" or ":port" → Endpoint. False on junk.
bool parse_endpoint(const std::string& s, config::Endpoint* out);

}  // namespace shoal::daemon
