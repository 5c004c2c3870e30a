// Configuration: YAML (libyaml) -> node tree with line/column -> validate()
// -> an immutable Config. Every problem of a file is reported in one pass as
// "file:line:col: key.path: message". Accepts Dragonfly's dfget.yaml keys:
// the Singularity guide's registryMirror / proxy / hijackHTTPS sections both at
// top level and under proxy:, every other dfget key as "accepted, ignored"
// (a warning) unless Shoal implements it. Relative paths resolve against the
// file's directory. Defaults live in defaults in this header and nowhere else.
// Shoal's own sections: workers, log, admin, metrics, shutdown, watchdog, privileges, tls,
// timeouts, transparent, proxy.{connectPorts,authCheck,spliceTunnels}, p2p (the peer side
// of peer-to-peer sharing; on when p2p.schedulers is not empty) and
// schedulerServer (read by `shoald scheduler`); config.cpp documents each key.
// A Config is immutable once loaded and is shared (shared_ptr<const Config>)
// by every thread; reload builds a new one.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/config/upstream_proxy.h"

namespace shoal::config {

struct Diag {
  std::string file;
  int line = 0, col = 0;  // 1-based; 0 when not tied to a position
  std::string path;       // key path, e.g. "proxy.proxies[1].regx"
  std::string message;
  bool warning = false;
  std::string str() const;  // "file:line:col: path: message" (warnings say "warning: ")
};

// Where a value came from, kept for messages about it after validation
// (check_resources, the rules module's compile errors). file differs from
// Config::source when Dragonfly's "proxy: PATH" names a second file.
struct Origin {
  std::string file;
  int line = 0, col = 0;  // 1-based
  std::string path;       // key path, e.g. "proxy.proxies[1].regx"
};

struct Endpoint {
  std::string addr;  // IP literal, e.g. "127.0.0.1", "::1", "0.0.0.0"
  uint16_t port = 0;
  bool is_loopback() const;
};

struct ProxyRule {  // proxy.proxies[]
  std::string regx;
  bool use_https = false;  // useHTTPS: fetch over https even if the client used http
  bool direct = false;     // never through the task engine
  std::string redirect;    // replace the host with this (Dragonfly's redirect)
  int line = 0, col = 0;   // of the regx value, for error messages
  Origin where;            // the regx value: file, line, col, key path
};

struct HijackHost {  // hijackHTTPS.hosts[]
  std::string regx;
  bool insecure = false;           // skip origin certificate verification for these hosts
  std::vector<std::string> certs;  // extra trust anchors (absolute paths)
  int line = 0, col = 0;           // of the regx value
  Origin where;                    // the regx value: file, line, col, key path
};

struct WhiteListEntry {         // proxy.whiteList[]
  std::string host;             // exact host, or empty
  std::string regx;             // host regex, or empty
  std::vector<uint16_t> ports;  // empty = any port
  int line = 0, col = 0;        // of the entry
  Origin where;                 // the regx value if any, else the entry
};

struct RegistryMirror {
  bool present = false;
  bool dynamic = false;
  std::string url;  // "https://registry.example.test[:port]"
  bool insecure = false;
  std::vector<std::string> certs;  // absolute paths
  bool direct = false;
  bool use_proxies = false;
  int line = 0;
};

struct Config {
  std::string source;  // file path, or "<embedded default>"

  // Explicit proxy (Dragonfly proxy.tcpListen; port ranges take the first free port).
  Endpoint proxy_listen{"127.0.0.1", 65001};
  uint16_t proxy_port_end = 0;  // nonzero: range proxy_listen.port..end
  bool basic_auth = false;
  std::string basic_auth_user, basic_auth_password;
  std::vector<WhiteListEntry> white_list;
  int64_t max_concurrency = 0;  // 0 = unlimited
  std::string default_filter = "Expires&Signature&ns";
  std::vector<ProxyRule> rules;
  std::vector<uint16_t> connect_ports;  // proxy.connectPorts (Shoal); default {443} + mirror port
  RegistryMirror mirror;

  // hijackHTTPS
  bool hijack = false;                    // cert+key configured
  std::string ca_cert, ca_key;            // absolute paths
  int ca_cert_line = 0, ca_key_line = 0;  // positions, for resource errors
  Origin ca_cert_at, ca_key_at;           // the same, with file, column and key path
  // hijackHTTPS.nextCert/nextKey (Shoal's): the next CA of a rotation, loaded
  // and checked beside the current one but never used to mint; empty when absent.
  std::string ca_next_cert, ca_next_key;  // absolute paths
  Origin ca_next_cert_at, ca_next_key_at;
  std::vector<HijackHost> hijack_hosts;

  // Shoal's own sections.
  int workers = 0;  // 0 = uv_available_parallelism()
  std::string data_dir = "/var/lib/shoal";
  std::string log_dir = "/var/log/shoal";
  std::string log_level = "info";
  std::string admin_socket = "/run/shoal/shoald.sock";
  std::string admin_group = "shoal";
  Endpoint metrics_listen{"127.0.0.1", 65004};
  double shutdown_grace_s = 30.0;
  double watchdog_stall_s = 30.0;  // watchdog.stallTimeout; 0 = no stall detection
  bool drop_capabilities = true;   // privileges.dropCapabilities
  std::string trust_store = "/etc/ssl/certs/ca-certificates.crt";
  uint32_t leaf_cache_size = 1024;
  bool tls_fast_records = true;           // tls.fastRecords
  bool tls_session_tickets = true;        // tls.sessionTickets
  double tls_ticket_lifetime_s = 3600.0;  // tls.sessionTicketLifetime (1 s to 7 days)

  // Transparent interception (transparent.*).
  enum class TransparentMode { Auto, Ebpf, Iptables, Off };
  TransparentMode transparent_mode = TransparentMode::Auto;
  std::vector<uint16_t> transparent_ports{443};
  std::vector<std::string> transparent_cgroups;  // as written: absolute, or relative to the cgroup2 mount
  uint16_t transparent_port = 65003;             // listener on 127.0.0.1 and ::1
  uint32_t transparent_mark = 0x5348;            // SO_MARK on Shoal's own outbound sockets
  std::string transparent_job_parent = "shoal.jobs";  // shoalctl run's cgroups go below this
  double header_timeout_s = 30.0;
  double idle_timeout_s = 300.0;
  double connect_timeout_s = 10.0;

  // Task engine.
  bool auth_check = true;           // proxy.authCheck
  bool splice_tunnels = false;      // proxy.spliceTunnels
  double task_expire_s = 6 * 3600;  // storage.taskExpireTime (Dragonfly's default)
  uint64_t disk_quota_bytes = 0;    // storage.diskGCThreshold; 0 = no quota

  // P2P, peer side (p2p.*). P2P is on when p2p_schedulers is not empty.
  std::vector<std::string> p2p_schedulers;  // p2p.schedulers: ["ip:port", ...] (IP literals; [v6]:port)
  std::string cluster_secret_file;          // p2p.clusterSecretFile (absolute, resolved like other paths)
  Endpoint peer_listen{"0.0.0.0", 65002};   // p2p.listen "ip:port"
  std::string peer_advertise;               // p2p.advertise "ip:port"; "" = derive at start
  std::map<std::string, std::string> peer_labels;  // p2p.labels: mapping of strings (e.g. rack: r12)
  uint32_t upload_slots = 2;                       // p2p.uploadSlots (1..4096)
  uint64_t upload_rate = 0;         // p2p.uploadRate, bytes/s, 0 = unlimited; syntax: see parse_rate()
  uint32_t parallel_parents = 4;    // p2p.parallelParents (1..64)
  uint64_t stall_rate = 64 * 1024;  // p2p.stallRate, bytes/s (same syntax as uploadRate)
  double stall_time_s = 5.0;        // p2p.stallTime (duration, like other durations in the file)
  bool peer_tls = false;            // p2p.tls: piece links over TLS keyed by the cluster secret
  double peer_keepalive_s = 20.0;   // p2p.keepAlive: idle connections kept (0..55 s; 0 = none)
  uint64_t peer_piece_memory = uint64_t{64} << 20;  // p2p.pieceMemory: written pieces kept in memory (bytes)
  // Scheduler role (schedulerServer.*), read by `shoald scheduler`.
  Endpoint scheduler_listen{"0.0.0.0", 8002};  // schedulerServer.listen
  std::string scheduler_secret_file;           // schedulerServer.clusterSecretFile
  double scheduler_peer_timeout_s = 15.0;      // schedulerServer.peerTimeout (duration)
  uint32_t scheduler_origin_concurrency = 3;   // schedulerServer.originConcurrency (1..64)
  uint32_t scheduler_max_parents = 8;          // schedulerServer.maxParents (1..64)

  // The site proxy (upstreamProxy.*): origin connections go through it with
  // CONNECT unless noProxy matches. Off unless upstreamProxy.url is given.
  UpstreamProxy upstream_proxy;
  Origin upstream_proxy_credentials_at;  // upstreamProxy.credentialsFile, for check_resources
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // null when any error
  std::vector<Diag> diags;               // errors and warnings, in file order
  bool ok() const { return config != nullptr; }
  std::string errors_text() const;  // every diag's str(), one per line
};

// Loads a file. Missing/unreadable file is a single error naming it.
LoadResult load_file(const std::string& path);
// Loads YAML text; name is used in messages, base_dir to resolve relative paths.
LoadResult load_string(const std::string& yaml, const std::string& name, const std::string& base_dir);
// The embedded default configuration's YAML (explicit proxy on
// 127.0.0.1:65001, the guide's two rules, no hijacking).
const char* embedded_default_yaml();

// The address parsers behind the config keys, shared with the command line
// so that a flag accepts exactly what its key does. Pure; any thread.
//
// A listener: "ip:port", "[v6]:port" or ":port" (every address, as in Go).
// The host must be an IP literal, the port 1-65535.
bool parse_listen_address(std::string_view s, Endpoint* out, std::string* why);
// An address other hosts connect to (p2p.schedulers entries,
// p2p.advertise): like a listener but with an explicit, specified host
// (not ":port", 0.0.0.0 or ::). *out gets the canonical spelling,
// "10.0.0.5:8002" or "[fd00::5]:8002".
bool parse_peer_address(std::string_view s, std::string* out, std::string* why);
// A rate in bytes per second (p2p.uploadRate, p2p.stallRate): a plain
// number of bytes, or a number with a unit, optionally followed by "/s":
// B; K KB M MB G GB T TB (powers of 1000); Ki KiB Mi MiB Gi GiB Ti TiB
// (powers of 1024); bit Kbit Mbit Gbit Tbit (powers of 1000 bits; kbit,
// mbit, gbit as tc writes them, and Kibit Mibit Gibit too). Fractions are
// allowed ("1.5GiB") and round down to whole bytes. "Mb", "kb" and the like
// are refused as ambiguous (bits or bytes?).
bool parse_rate(std::string_view s, uint64_t* out, std::string* why);
LoadResult load_embedded_default();

// Checks what validation cannot see from the text alone: every regex
// (proxies, hijack hosts, white list) compiles with the rules module's
// engine, and the hijack CA loads (files readable, key matches certificate,
// certificate is a CA, key not readable by group/other). Appends one error
// per problem, positioned at the offending value (the CA's at
// hijackHTTPS.cert). load_file/load_string call it whenever the YAML parsed
// (the Config then holds only values that passed their own checks), so its
// errors arrive with the rest; call it yourself only for a Config built
// another way. Thread-safe; does file I/O.
void check_resources(const Config& config, std::vector<Diag>* out);

}  // namespace shoal::config
