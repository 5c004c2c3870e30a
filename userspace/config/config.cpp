// Configuration loader: YAML text -> node tree (libyaml, every node keeps its
// file, line and column) -> validate() (pure: schema walk, then extraction
// into a Config) -> check_resources() (check.cpp: regexes, CA files).
//
// Shoal reads Dragonfly's dfget.yaml. Every key of Dragonfly's DaemonOption
// (client/config/peerhost.go) is in the schema table below, marked either
// implemented (it fills Config) or ignored (a warning "accepted, ignored").
// A key unknown to both Dragonfly and Shoal is an error. The Singularity
// guide's registryMirror and hijackHTTPS sections load both at top level (as
// the guide prints them) and under proxy: (where Dragonfly reads them).
//
// Dragonfly keys Shoal implements:
//   dataDir, logDir                      task store and log directory
//   storage.taskExpireTime               tasks unused this long are removed (6h)
//   storage.diskGCThreshold              store quota ("50Gi"); oldest go first
//   metrics: "host:port"                 same as Shoal's metrics.listen below
//   proxy.tcpListen.listen               IP literal; default 127.0.0.1
//   proxy.tcpListen.port                 65001, or a range {start: N, end: M}
//   proxy.basicAuth.{username,password}
//   proxy.whiteList[].{host,regx,ports}
//   proxy.maxConcurrency, proxy.defaultFilter
//   proxy.proxies[].{regx,useHTTPS,direct,redirect}
//   proxy.registryMirror.{url,dynamic,insecure,certs,direct,useProxies}
//   proxy.hijackHTTPS.{cert,key,hosts[].{regx,insecure,certs}}
//   proxy: PATH                          Dragonfly's "proxy section in another file"
//
// Shoal's own keys (all optional; the values shown are the defaults):
//
//   workers: 0                  # event-loop threads; 0 = one per usable CPU
//   logLevel: info              # debug | info | warn | error
//   log:
//     level: info               # the same setting as logLevel; give only one
//   admin:
//     socket: /run/shoal/shoald.sock   # shoalctl's Unix socket
//     group: shoal              # group allowed on that socket besides root
//   metrics:
//     listen: 127.0.0.1:65004   # read-only Prometheus /metrics; Dragonfly's
//                               # own spelling  metrics: "127.0.0.1:65004"
//                               # means the same ("" keeps the default; ":N"
//                               # is every address, port N, as in Go)
//   shutdown:
//     grace: 30s                # how long running transfers may finish on stop
//   watchdog:
//     stallTimeout: 30s         # an event loop stuck this long makes shoald exit
//                               # (hooks detach: fail-open; systemd restarts it); 0 = off
//   privileges:
//     dropCapabilities: true    # after start-up keep only the capabilities the
//                               # transparent mode needs at run time (false: debugging)
//   tls:
//     trustStore: /etc/ssl/certs/ca-certificates.crt  # roots for origins
//     leafCacheSize: 1024       # minted leaf certificates kept (LRU)
//     fastRecords: true         # after mbedTLS's handshake, AES-GCM records
//                               # through libcrypto (false: mbedTLS does all)
//     sessionTickets: true      # hijacked clients may resume with a ticket
//                               # (abbreviated handshake, no certificate)
//     sessionTicketLifetime: 1h # a ticket resumes for this long; its key is
//                               # replaced this often (1s to 7 days)
//   timeouts:
//     header: 30s               # a client's request head must arrive within this
//     idle: 300s                # a connection silent this long is closed
//     connect: 10s              # connecting to an origin or a peer
//   transparent:
//     mode: auto                # auto | ebpf | iptables | off
//     ports: [443]              # TCP ports of attached cgroups' connects to redirect
//     cgroups: []               # cgroup v2 paths to attach at start (absolute,
//                               # or relative to the cgroup2 mount)
//     port: 65003               # transparent listener on 127.0.0.1 and ::1
//     mark: 0x5348              # SO_MARK of Shoal's own sockets (never redirected)
//     jobParent: shoal.jobs     # shoalctl run's job cgroups are made below this
//   hijackHTTPS:                # beside Dragonfly's cert, key and hosts:
//     nextCert: ""              # the next CA of a rotation: loaded and checked
//     nextKey: ""               # like cert/key, never used to mint (both or neither)
//   proxy:
//     connectPorts: [443]       # ports CONNECT may reach; default 443 plus the
//                               # registryMirror URL's port when that is not 443
//     authCheck: true           # before serving stored or shared bytes, ask the
//                               # origin (HEAD with the client's own headers)
//                               # whether this client may have them
//     spliceTunnels: false      # true: tunnels' bytes move inside the kernel
//                               # (splice; less CPU, slower on loopback here)
//   p2p:                        # the peer side; P2P is on when schedulers is not empty
//     schedulers: []            # ["10.0.0.5:8002", "[fd00::5]:8002"]: IP literals
//     clusterSecretFile: ""     # required with schedulers: every peer request is signed
//     listen: 0.0.0.0:65002     # where other peers fetch pieces from this one
//     advertise: ""             # ip:port given to the scheduler; "" = derived at start
//     labels: {}                # strings for the scheduler's placement, e.g. {rack: r12}
//     uploadSlots: 2            # pieces served to other peers at once (1-4096)
//     uploadRate: 0             # bytes/s served to other peers; 0 = unlimited
//     parallelParents: 4        # parents one download takes pieces from (1-64)
//     stallRate: 64KiB          # a parent slower than this for stallTime ...
//     stallTime: 5s             # ... is replaced
//     tls: false                # piece links over TLS 1.2 keyed by the cluster secret
//     keepAlive: 20s            # idle time a connection to a parent or scheduler is kept
//                               # for the next request (0 = one connection per request; at most 55s)
//     pieceMemory: 64Mi         # verified pieces kept in memory to serve other peers from
//                               # (0 = only until written; at most 16Gi)
//   schedulerServer:            # the scheduler role, `shoald scheduler`
//     listen: 0.0.0.0:8002
//     clusterSecretFile: ""     # the same secret the peers hold
//     peerTimeout: 15s          # a peer silent this long is forgotten
//     originConcurrency: 2      # peers fetching one piece from the origin (1-64)
//     maxParents: 8             # parents offered in one answer (1-64)
//   upstreamProxy:              # the site proxy; off unless url is given
//     url: http://proxy.example.org:3128   # HTTP proxy (CONNECT); the port is required;
//                               # http://user:pass@host:port carries credentials
//     noProxy: []               # origins reached directly: "host" (and names below
//                               # it), ".domain" (below it only), "*", IP addresses,
//                               # networks (10.0.0.0/8, fd00::/8); ":port" optional
//     credentialsFile: ""       # "user:password" for the proxy (Basic), mode 0600;
//                               # re-read on reload; not together with URL credentials
//   Every connection Shoal makes to an origin (hijacked requests, tunnels,
//   task downloads, P2P origin pieces, credential checks) goes through the
//   site proxy; peers and schedulers never do.
//
// Rates (uploadRate, stallRate) are bytes per second: a plain number, or a
// number with a unit and an optional "/s": B, K/KB M/MB G/GB T/TB (powers of
// 1000), Ki/KiB Mi/MiB Gi/GiB Ti/TiB (powers of 1024), bit Kbit Mbit Gbit
// Tbit (bits, powers of 1000). "100MiB", "80Mbit/s" and "1.5G" are rates;
// "80Mb" is refused as ambiguous.
//
// Durations are written 500ms, 30s, 2m, 1h, 1m30s (Go's syntax) or as a plain
// number of seconds. Relative paths (dataDir, logDir, admin.socket,
// tls.trustStore, hijackHTTPS.cert/key, every certs list, both
// clusterSecretFile keys) resolve against the
// directory of the file that holds them. A key given as null (or left empty,
// "key:") keeps its default, as Dragonfly's YAML decoder does.
//
// Security rules: proxy.tcpListen on a non-loopback address needs
// proxy.basicAuth or proxy.whiteList (an error otherwise); metrics on a
// non-loopback address is a warning; p2p.schedulers needs
// p2p.clusterSecretFile (an error otherwise).
#include "shoal/config/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <string_view>
#include <utility>

namespace shoal::config {

namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxFileBytes = size_t{4} << 20;  // a config is never this big
constexpr int kMaxDepth = 64;                      // also stops alias cycles
constexpr size_t kMaxNodes = 200000;               // stops alias "billion laughs"
constexpr const char* kEmbeddedName = "<embedded default>";

// ---------------------------------------------------------------------------
// Node tree

struct Node {
  enum class Type : uint8_t { kNull, kScalar, kMap, kList };
  Type type = Type::kNull;
  int file = 0;  // index into Doc::files
  int line = 0, col = 0;
  std::string text;        // kScalar
  std::vector<Node> kids;  // kMap: key, value, key, value ...; kList: items
};

struct Source {
  std::string name;      // as shown in messages
  std::string base_dir;  // relative paths in this file resolve against it
};

struct Doc {
  std::vector<Source> files;  // [0] is the file being loaded
  Node root;
};

bool is_null_spelling(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// Copies libyaml's node graph into a Node tree. libyaml resolves aliases to
// shared nodes; copying them could explode or loop, so depth and node count
// are bounded and exceeding them is a reported error.
class TreeBuilder {
 public:
  TreeBuilder(yaml_document_t* doc, int file) : doc_(doc), file_(file) {}

  bool build(const yaml_node_t* in, int depth, Node* out) {
    out->file = file_;
    out->line = static_cast<int>(in->start_mark.line) + 1;
    out->col = static_cast<int>(in->start_mark.column) + 1;
    if (depth > kMaxDepth || ++count_ > kMaxNodes) {
      why = depth > kMaxDepth ? "nesting too deep (an alias that contains itself?)"
                              : "document too large (aliases expanding too far?)";
      line = out->line;
      col = out->col;
      return false;
    }
    switch (in->type) {
      case YAML_SCALAR_NODE: {
        out->text.assign(reinterpret_cast<const char*>(in->data.scalar.value), in->data.scalar.length);
        // Only a plain (unquoted) scalar can spell null: "" and '~' are strings.
        const bool plain = in->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        out->type = plain && is_null_spelling(out->text) ? Node::Type::kNull : Node::Type::kScalar;
        return true;
      }
      case YAML_MAPPING_NODE: {
        out->type = Node::Type::kMap;
        for (const yaml_node_pair_t* p = in->data.mapping.pairs.start; p < in->data.mapping.pairs.top; ++p) {
          out->kids.emplace_back();
          if (!build(yaml_document_get_node(doc_, p->key), depth + 1, &out->kids.back())) return false;
          out->kids.emplace_back();
          if (!build(yaml_document_get_node(doc_, p->value), depth + 1, &out->kids.back())) return false;
        }
        return true;
      }
      case YAML_SEQUENCE_NODE: {
        out->type = Node::Type::kList;
        for (const yaml_node_item_t* it = in->data.sequence.items.start; it < in->data.sequence.items.top;
             ++it) {
          out->kids.emplace_back();
          if (!build(yaml_document_get_node(doc_, *it), depth + 1, &out->kids.back())) return false;
        }
        return true;
      }
      case YAML_NO_NODE:
        break;
    }
    out->type = Node::Type::kNull;
    return true;
  }

  std::string why;
  int line = 0, col = 0;

 private:
  yaml_document_t* doc_;
  int file_;
  size_t count_ = 0;
};

// Byte offset -> 1-based line and column (libyaml's reader errors give only
// an offset).
void offset_to_line_col(std::string_view text, size_t offset, int* line, int* col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++*line;
      *col = 1;
    } else {
      ++*col;
    }
  }
}

// Parses one YAML document into *root. On a syntax error appends libyaml's
// message at its position and returns false. An empty stream gives a null
// root. A second document in the stream is an error.
bool parse_yaml(std::string_view text, int file, const std::string& name, Node* root,
                std::vector<Diag>* diags) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    diags->push_back(Diag{name, 0, 0, "", "cannot initialise the YAML parser", false});
    return false;
  }
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()), text.size());
  auto syntax_error = [&]() {
    Diag d{name, 0, 0, "", "", false};
    if (parser.error == YAML_READER_ERROR) {
      offset_to_line_col(text, parser.problem_offset, &d.line, &d.col);
    } else {
      d.line = static_cast<int>(parser.problem_mark.line) + 1;
      d.col = static_cast<int>(parser.problem_mark.column) + 1;
    }
    d.message = "YAML syntax error: ";
    d.message += parser.problem ? parser.problem : "unknown problem";
    if (parser.context) {
      d.message += " (";
      d.message += parser.context;
      d.message += " at line " + std::to_string(parser.context_mark.line + 1) + ":" +
                   std::to_string(parser.context_mark.column + 1) + ")";
    }
    diags->push_back(std::move(d));
  };

  bool ok = true;
  yaml_document_t doc;
  if (!yaml_parser_load(&parser, &doc)) {  // libyaml frees doc itself on failure
    syntax_error();
    yaml_parser_delete(&parser);
    return false;
  }
  const yaml_node_t* top = yaml_document_get_root_node(&doc);
  *root = Node{};
  root->file = file;
  root->line = root->col = 1;
  if (top) {
    TreeBuilder builder(&doc, file);
    if (!builder.build(top, 0, root)) {
      diags->push_back(Diag{name, builder.line, builder.col, "", builder.why, false});
      ok = false;
    }
  }
  yaml_document_delete(&doc);
  // Dragonfly reads one document; anything after a "---" would be silently
  // dropped, so it is an error (checked even after an empty first document).
  if (ok) {
    yaml_document_t next;
    if (!yaml_parser_load(&parser, &next)) {
      syntax_error();
      ok = false;
    } else {
      if (const yaml_node_t* n = yaml_document_get_root_node(&next)) {
        diags->push_back(Diag{name, static_cast<int>(n->start_mark.line) + 1,
                              static_cast<int>(n->start_mark.column) + 1, "",
                              "a second YAML document; a config file holds exactly one", false});
        ok = false;
      }
      yaml_document_delete(&next);
    }
  }
  yaml_parser_delete(&parser);
  return ok;
}

// ---------------------------------------------------------------------------
// Scalar spellings

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// YAML 1.1 booleans, which Go's yaml.v3 still accepts for bool fields.
std::optional<bool> parse_bool(std::string_view s) {
  const std::string l = lower(s);
  if (l == "true" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "no" || l == "off") return false;
  return std::nullopt;
}

// Decimal, 0x hex or 0o octal, optional sign; nullopt on anything else or
// overflow.
std::optional<int64_t> parse_int(std::string_view s) {
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  unsigned base = 10;
  if (s.size() - i > 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
    base = 16;
    i += 2;
  } else if (s.size() - i > 2 && s[i] == '0' && s[i + 1] == 'o') {
    base = 8;
    i += 2;
  }
  if (i >= s.size()) return std::nullopt;
  uint64_t v = 0;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = static_cast<unsigned>(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = static_cast<unsigned>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      d = static_cast<unsigned>(c - 'A' + 10);
    else
      return std::nullopt;
    if (d >= base) return std::nullopt;
    if (v > (static_cast<uint64_t>(INT64_MAX) - d) / base) return std::nullopt;
    v = v * base + d;
  }
  const auto sv = static_cast<int64_t>(v);
  return neg ? -sv : sv;
}

std::optional<double> parse_number(std::string_view s) {
  if (auto i = parse_int(s)) return static_cast<double>(*i);
  if (s.empty() || !(s[0] == '-' || s[0] == '+' || s[0] == '.' || (s[0] >= '0' && s[0] <= '9')))
    return std::nullopt;
  const std::string t(s);
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(t.c_str(), &end);
  if (errno != 0 || end != t.c_str() + t.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

// Go's time.ParseDuration syntax ("1m30s", "500ms", "1.5h", units ns us µs
// ms s m h) or a plain number, which Shoal reads as seconds. Returns seconds.
std::optional<double> parse_duration(std::string_view s) {
  if (auto n = parse_number(s)) return n;
  size_t i = 0;
  double sign = 1;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) sign = s[i++] == '-' ? -1 : 1;
  if (i >= s.size()) return std::nullopt;
  double total = 0;
  while (i < s.size()) {
    const size_t num_start = i;
    bool digits = false, dot = false;
    for (; i < s.size(); ++i) {
      if (s[i] >= '0' && s[i] <= '9') {
        digits = true;
      } else if (s[i] == '.' && !dot) {
        dot = true;
      } else {
        break;
      }
    }
    if (!digits) return std::nullopt;
    const double v = std::strtod(std::string(s.substr(num_start, i - num_start)).c_str(), nullptr);
    const size_t unit_start = i;
    while (i < s.size() && !(s[i] >= '0' && s[i] <= '9') && s[i] != '.') ++i;
    const std::string_view unit = s.substr(unit_start, i - unit_start);
    double mult;
    if (unit == "ns")
      mult = 1e-9;
    else if (unit == "us" || unit == "\xc2\xb5s" || unit == "\xce\xbcs")
      mult = 1e-6;
    else if (unit == "ms")
      mult = 1e-3;
    else if (unit == "s")
      mult = 1;
    else if (unit == "m")
      mult = 60;
    else if (unit == "h")
      mult = 3600;
    else
      return std::nullopt;
    total += v * mult;
  }
  return sign * total;
}

// An IPv4 or IPv6 literal, optionally in brackets; the bare literal or
// nullopt.
std::optional<std::string> parse_ip(std::string_view s) {
  std::string t(s);
  if (t.size() >= 2 && t.front() == '[' && t.back() == ']') t = t.substr(1, t.size() - 2);
  unsigned char buf[16];
  if (inet_pton(AF_INET, t.c_str(), buf) == 1 || inet_pton(AF_INET6, t.c_str(), buf) == 1) return t;
  return std::nullopt;
}

// "host:port", "[v6]:port" or ":port" (every address, as in Go) into an
// Endpoint; *why says what is wrong otherwise.
bool parse_host_port(std::string_view s, Endpoint* out, std::string* why) {
  const size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) {
    *why = "expected host:port, e.g. 127.0.0.1:65004";
    return false;
  }
  std::string_view host = s.substr(0, colon);
  const std::string_view port = s.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  else if (host.find(':') != std::string_view::npos) {
    *why = "an IPv6 address needs brackets, e.g. [::1]:65004";
    return false;
  }
  const auto p = parse_int(port);
  if (!p || *p < 1 || *p > 65535) {
    *why = "port must be 1-65535";
    return false;
  }
  std::string addr = host.empty() ? std::string("0.0.0.0") : std::string(host);
  if (!parse_ip(addr)) {
    *why = "host must be an IP address literal such as 127.0.0.1 or [::1]";
    return false;
  }
  out->addr = std::move(addr);
  out->port = static_cast<uint16_t>(*p);
  return true;
}

// http(s)://host[:port][/path]: fills *port with the effective port.
bool parse_url(std::string_view s, uint16_t* port, std::string* why) {
  const size_t sep = s.find("://");
  const std::string scheme = sep == std::string_view::npos ? "" : lower(s.substr(0, sep));
  if (scheme != "http" && scheme != "https") {
    *why = "must be an http:// or https:// URL, e.g. https://registry.example.org";
    return false;
  }
  const std::string_view rest = s.substr(sep + 3);
  const std::string_view auth = rest.substr(0, rest.find_first_of("/?#"));
  if (auth.find('@') != std::string_view::npos) {
    *why = "credentials in the URL are not supported";
    return false;
  }
  std::string_view host = auth, port_text;
  if (!auth.empty() && auth.front() == '[') {
    const size_t close = auth.find(']');
    if (close == std::string_view::npos) {
      *why = "unclosed [ in the host";
      return false;
    }
    host = auth.substr(1, close - 1);
    if (close + 1 < auth.size()) {
      if (auth[close + 1] != ':') {
        *why = "bad host";
        return false;
      }
      port_text = auth.substr(close + 2);
    }
    if (!parse_ip(host)) {
      *why = "bad IPv6 address in the host";
      return false;
    }
  } else if (const size_t colon = auth.find(':'); colon != std::string_view::npos) {
    host = auth.substr(0, colon);
    port_text = auth.substr(colon + 1);
  }
  if (host.empty()) {
    *why = "the URL has no host";
    return false;
  }
  if (auth.front() != '[') {
    for (char c : host) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '-' || c == '_';
      if (!ok) {
        *why = "the host has a character that cannot be in a host name";
        return false;
      }
    }
  }
  *port = scheme == "https" ? 443 : 80;
  if (!port_text.empty() || auth.back() == ':') {
    const auto p = parse_int(port_text);
    if (!p || *p < 1 || *p > 65535) {
      *why = "the port must be 1-65535";
      return false;
    }
    *port = static_cast<uint16_t>(*p);
  }
  return true;
}

std::string resolve_path(const std::string& base_dir, const std::string& p) {
  const fs::path path(p);
  if (path.is_absolute()) return path.lexically_normal().string();
  return (fs::path(base_dir) / path).lexically_normal().string();
}

// ---------------------------------------------------------------------------
// Schema: every key Dragonfly's dfget.yaml can hold, plus Shoal's own.

enum class Kind : uint8_t {
  kMap,        // a mapping whose keys are in kids
  kAnyMap,     // a mapping with free-form content
  kAny,        // anything
  kMapList,    // a list of mappings whose keys are in kids
  kStrList,    // a list of scalars
  kPortList,   // a list of port numbers (ints, or strings holding ints)
  kStr,        // any scalar
  kBool,       // true/false (also yes/no/on/off, as yaml.v3 accepts)
  kInt,        // an integer
  kNum,        // a number
  kDur,        // a duration ("30s", "1m0s") or a plain number
  kPortNum,    // an integer 0-65535
  kPort,       // kPortNum, or a range mapping {start, end} (kids)
  kAddrOrMap,  // "host:port" (Dragonfly's metrics) or a mapping (Shoal's)
  kStrMap,     // a mapping of free-form names to scalars (p2p.labels)
};

enum class Use : uint8_t {
  kDragonfly,  // Dragonfly's key, implemented by Shoal
  kIgnored,    // Dragonfly's key, accepted with a warning
  kShoal,      // Shoal's own key
};

struct Key;
struct Schema {
  const Key* keys = nullptr;
  size_t n = 0;
  template <size_t N>
  constexpr Schema(const Key (&k)[N]) : keys(k), n(N) {}  // NOLINT: implicit on purpose
};
struct Key {
  const char* name;
  Kind kind;
  Use use;
  const Schema* kids = nullptr;
};

using K = Kind;
constexpr Use D = Use::kDragonfly;
constexpr Use I = Use::kIgnored;
constexpr Use S = Use::kShoal;

// Dragonfly's ListenOption.security. "cacert" is the spelling in Dragonfly's
// sample dfget.yaml (Dragonfly itself reads caCert and silently drops it).
constexpr Key kSecurityKeys[] = {
    {"insecure", K::kBool, I}, {"caCert", K::kStr, I},     {"cacert", K::kStr, I},    {"cert", K::kStr, I},
    {"key", K::kStr, I},       {"tlsVerify", K::kBool, I}, {"tlsConfig", K::kAny, I},
};
constexpr Schema kSecurity{kSecurityKeys};
constexpr Key kPortRangeKeys[] = {{"start", K::kPortNum, D}, {"end", K::kPortNum, D}};
constexpr Schema kPortRange{kPortRangeKeys};
constexpr Key kTcpListenKeys[] = {
    {"listen", K::kStr, D}, {"port", K::kPort, D, &kPortRange}, {"namespace", K::kStr, I}};
constexpr Schema kTcpListen{kTcpListenKeys};
constexpr Key kUnixListenKeys[] = {{"socket", K::kStr, I}};
constexpr Schema kUnixListen{kUnixListenKeys};
constexpr Key kListenKeys[] = {
    {"security", K::kMap, I, &kSecurity},
    {"tcpListen", K::kMap, I, &kTcpListen},
    {"unixListen", K::kMap, I, &kUnixListen},
};
constexpr Schema kListen{kListenKeys};

constexpr Key kNetAddrKeys[] = {{"type", K::kStr, I}, {"addr", K::kStr, I}};
constexpr Schema kNetAddr{kNetAddrKeys};
constexpr Key kKeepAliveKeys[] = {{"interval", K::kDur, I}};
constexpr Schema kKeepAlive{kKeepAliveKeys};
constexpr Key kSeedPeerKeys[] = {{"enable", K::kBool, I},
                                 {"type", K::kStr, I},
                                 {"clusterID", K::kInt, I},
                                 {"keepAlive", K::kMap, I, &kKeepAlive}};
constexpr Schema kSeedPeer{kSeedPeerKeys};
constexpr Key kManagerKeys[] = {{"enable", K::kBool, I},
                                {"netAddrs", K::kMapList, I, &kNetAddr},
                                {"refreshInterval", K::kDur, I},
                                {"seedPeer", K::kMap, I, &kSeedPeer}};
constexpr Schema kManager{kManagerKeys};
constexpr Key kSchedulerKeys[] = {{"manager", K::kMap, I, &kManager},
                                  {"netAddrs", K::kMapList, I, &kNetAddr},
                                  {"scheduleTimeout", K::kDur, I},
                                  {"disableAutoBackSource", K::kBool, I}};
constexpr Schema kScheduler{kSchedulerKeys};
// listenIP, securityDomain and netTopology are from older dfget.yaml files.
constexpr Key kHostKeys[] = {{"idc", K::kStr, I},        {"location", K::kStr, I},
                             {"hostname", K::kStr, I},   {"advertiseIP", K::kStr, I},
                             {"listenIP", K::kStr, I},   {"securityDomain", K::kStr, I},
                             {"netTopology", K::kStr, I}};
constexpr Schema kHost{kHostKeys};
constexpr Key kTransportKeys[] = {{"dialTimeout", K::kDur, I},           {"keepAlive", K::kDur, I},
                                  {"maxIdleConns", K::kInt, I},          {"idleConnTimeout", K::kDur, I},
                                  {"responseHeaderTimeout", K::kDur, I}, {"tlsHandshakeTimeout", K::kDur, I},
                                  {"expectContinueTimeout", K::kDur, I}};
constexpr Schema kTransport{kTransportKeys};
constexpr Key kConcurrentKeys[] = {{"thresholdSize", K::kStr, I},  {"thresholdSpeed", K::kStr, I},
                                   {"goroutineCount", K::kInt, I}, {"initBackoff", K::kNum, I},
                                   {"maxBackoff", K::kNum, I},     {"maxAttempts", K::kInt, I}};
constexpr Schema kConcurrent{kConcurrentKeys};
constexpr Key kRecursiveKeys[] = {{"goroutineCount", K::kInt, I}};
constexpr Schema kRecursive{kRecursiveKeys};
// defaultPattern is in Dragonfly's own test daemon.yaml.
constexpr Key kDownloadKeys[] = {{"totalRateLimit", K::kStr, I},
                                 {"perPeerRateLimit", K::kStr, I},
                                 {"trafficShaperType", K::kStr, I},
                                 {"pieceDownloadTimeout", K::kDur, I},
                                 {"grpcDialTimeout", K::kDur, I},
                                 {"downloadGRPC", K::kMap, I, &kListen},
                                 {"peerGRPC", K::kMap, I, &kListen},
                                 {"calculateDigest", K::kBool, I},
                                 {"transportOption", K::kMap, I, &kTransport},
                                 {"getPiecesMaxRetry", K::kInt, I},
                                 {"prefetch", K::kBool, I},
                                 {"watchdogTimeout", K::kDur, I},
                                 {"concurrent", K::kMap, I, &kConcurrent},
                                 {"syncPieceViaHTTPS", K::kBool, I},
                                 {"splitRunningTasks", K::kBool, I},
                                 {"resourceClients", K::kAnyMap, I},
                                 {"recursiveConcurrent", K::kMap, I, &kRecursive},
                                 {"cacheRecursiveMetadata", K::kDur, I},
                                 {"defaultPattern", K::kStr, I}};
constexpr Schema kDownload{kDownloadKeys};
constexpr Key kUploadKeys[] = {{"security", K::kMap, I, &kSecurity},
                               {"tcpListen", K::kMap, I, &kTcpListen},
                               {"unixListen", K::kMap, I, &kUnixListen},
                               {"rateLimit", K::kStr, I}};
constexpr Schema kUpload{kUploadKeys};
constexpr Key kObjectStorageKeys[] = {
    {"enable", K::kBool, I},
    {"filter", K::kStr, I},
    {"maxReplicas", K::kInt, I},
    {"security", K::kMap, I, &kSecurity},
    {"tcpListen", K::kMap, I, &kTcpListen},
    {"unixListen", K::kMap, I, &kUnixListen},
};
constexpr Schema kObjectStorage{kObjectStorageKeys};
constexpr Key kStorageKeys[] = {{"dataPath", K::kStr, I},        {"taskExpireTime", K::kDur, D},
                                {"diskGCThreshold", K::kStr, D}, {"diskGCThresholdPercent", K::kNum, I},
                                {"multiplex", K::kBool, I},      {"strategy", K::kStr, I},
                                {"writeBufferSize", K::kStr, I}};
constexpr Schema kStorage{kStorageKeys};
constexpr Key kHealthKeys[] = {{"security", K::kMap, I, &kSecurity},
                               {"tcpListen", K::kMap, I, &kTcpListen},
                               {"unixListen", K::kMap, I, &kUnixListen},
                               {"path", K::kStr, I}};
constexpr Schema kHealth{kHealthKeys};
constexpr Key kReloadKeys[] = {{"interval", K::kDur, I}};
constexpr Schema kReload{kReloadKeys};
constexpr Key kNetworkKeys[] = {{"enableIPv6", K::kBool, I}};
constexpr Schema kNetwork{kNetworkKeys};
constexpr Key kAnnouncerKeys[] = {{"schedulerInterval", K::kDur, I}};
constexpr Schema kAnnouncer{kAnnouncerKeys};
constexpr Key kProbeKeys[] = {{"interval", K::kDur, I}};
constexpr Schema kProbe{kProbeKeys};
constexpr Key kNetTopoKeys[] = {{"enable", K::kBool, I}, {"probe", K::kMap, I, &kProbe}};
constexpr Schema kNetTopo{kNetTopoKeys};
constexpr Key kCertSpecKeys[] = {
    {"dnsNames", K::kStrList, I}, {"ipAddresses", K::kStrList, I}, {"validityPeriod", K::kDur, I}};
constexpr Schema kCertSpec{kCertSpecKeys};
constexpr Key kGlobalSecurityKeys[] = {{"autoIssueCert", K::kBool, I},
                                       {"caCert", K::kStr, I},
                                       {"tlsVerify", K::kBool, I},
                                       {"tlsPolicy", K::kStr, I},
                                       {"certSpec", K::kMap, I, &kCertSpec}};
constexpr Schema kGlobalSecurity{kGlobalSecurityKeys};
constexpr Key kTelemetryKeys[] = {{"jaeger", K::kStr, I}};  // older dfget.yaml
constexpr Schema kTelemetry{kTelemetryKeys};

// The proxy: the part Shoal implements.
constexpr Key kMirrorKeys[] = {{"url", K::kStr, D},       {"dynamic", K::kBool, D},
                               {"insecure", K::kBool, D}, {"certs", K::kStrList, D},
                               {"direct", K::kBool, D},   {"useProxies", K::kBool, D}};
constexpr Schema kMirror{kMirrorKeys};
constexpr Key kHijackHostKeys[] = {
    {"regx", K::kStr, D}, {"insecure", K::kBool, D}, {"certs", K::kStrList, D}};
constexpr Schema kHijackHost{kHijackHostKeys};
constexpr Key kHijackKeys[] = {
    {"cert", K::kStr, D},     {"key", K::kStr, D},     {"hosts", K::kMapList, D, &kHijackHost},
    {"nextCert", K::kStr, S}, {"nextKey", K::kStr, S}, {"sni", K::kMapList, I, &kTcpListen}};
constexpr Schema kHijack{kHijackKeys};
constexpr Key kBasicAuthKeys[] = {{"username", K::kStr, D}, {"password", K::kStr, D}};
constexpr Schema kBasicAuth{kBasicAuthKeys};
constexpr Key kWhiteListKeys[] = {{"host", K::kStr, D}, {"regx", K::kStr, D}, {"ports", K::kPortList, D}};
constexpr Schema kWhiteList{kWhiteListKeys};
constexpr Key kRuleKeys[] = {
    {"regx", K::kStr, D}, {"useHTTPS", K::kBool, D}, {"direct", K::kBool, D}, {"redirect", K::kStr, D}};
constexpr Schema kRule{kRuleKeys};
constexpr Key kProxyKeys[] = {
    {"security", K::kMap, I, &kSecurity},
    {"tcpListen", K::kMap, D, &kTcpListen},
    {"unixListen", K::kMap, I, &kUnixListen},
    {"basicAuth", K::kMap, D, &kBasicAuth},
    {"defaultFilter", K::kStr, D},
    {"defaultTag", K::kStr, I},
    {"defaultApplication", K::kStr, I},
    {"defaultPriority", K::kStr, I},
    {"maxConcurrency", K::kInt, D},
    {"registryMirror", K::kMap, D, &kMirror},
    {"extraRegistryMirrors", K::kMapList, I, &kMirror},
    {"whiteList", K::kMapList, D, &kWhiteList},
    {"proxies", K::kMapList, D, &kRule},
    {"hijackHTTPS", K::kMap, D, &kHijack},
    {"dumpHTTPContent", K::kBool, I},
    {"connectPorts", K::kPortList, S},
    {"authCheck", K::kBool, S},
    {"spliceTunnels", K::kBool, S},
};
constexpr Schema kProxy{kProxyKeys};

// Shoal's own sections.
constexpr Key kLogKeys[] = {{"level", K::kStr, S}};
constexpr Schema kLog{kLogKeys};
constexpr Key kAdminKeys[] = {{"socket", K::kStr, S}, {"group", K::kStr, S}};
constexpr Schema kAdmin{kAdminKeys};
constexpr Key kMetricsKeys[] = {{"listen", K::kStr, S}};
constexpr Schema kMetrics{kMetricsKeys};
constexpr Key kShutdownKeys[] = {{"grace", K::kDur, S}};
constexpr Schema kShutdown{kShutdownKeys};
constexpr Key kWatchdogKeys[] = {{"stallTimeout", K::kDur, S}};
constexpr Schema kWatchdog{kWatchdogKeys};
constexpr Key kPrivilegesKeys[] = {{"dropCapabilities", K::kBool, S}};
constexpr Schema kPrivileges{kPrivilegesKeys};
constexpr Key kTlsKeys[] = {{"trustStore", K::kStr, S},
                            {"leafCacheSize", K::kInt, S},
                            {"fastRecords", K::kBool, S},
                            {"sessionTickets", K::kBool, S},
                            {"sessionTicketLifetime", K::kDur, S}};
constexpr Schema kTls{kTlsKeys};
constexpr Key kTimeoutsKeys[] = {{"header", K::kDur, S}, {"idle", K::kDur, S}, {"connect", K::kDur, S}};
constexpr Schema kTimeouts{kTimeoutsKeys};
constexpr Key kTransparentKeys[] = {{"mode", K::kStr, S},        {"ports", K::kPortList, S},
                                    {"cgroups", K::kStrList, S}, {"port", K::kInt, S},
                                    {"mark", K::kInt, S},        {"jobParent", K::kStr, S}};
constexpr Schema kTransparent{kTransparentKeys};
// Rates are kStr: a number or a number with a unit, checked in extraction.
constexpr Key kP2pKeys[] = {{"schedulers", K::kStrList, S}, {"clusterSecretFile", K::kStr, S},
                            {"listen", K::kStr, S},         {"advertise", K::kStr, S},
                            {"labels", K::kStrMap, S},      {"uploadSlots", K::kInt, S},
                            {"uploadRate", K::kStr, S},     {"parallelParents", K::kInt, S},
                            {"stallRate", K::kStr, S},      {"stallTime", K::kDur, S},
                            {"tls", K::kBool, S},           {"keepAlive", K::kDur, S},
                            {"pieceMemory", K::kStr, S}};
constexpr Schema kP2p{kP2pKeys};
constexpr Key kSchedulerServerKeys[] = {{"listen", K::kStr, S},
                                        {"clusterSecretFile", K::kStr, S},
                                        {"peerTimeout", K::kDur, S},
                                        {"originConcurrency", K::kInt, S},
                                        {"maxParents", K::kInt, S}};
constexpr Schema kSchedulerServer{kSchedulerServerKeys};
constexpr Key kUpstreamProxyKeys[] = {
    {"url", K::kStr, S}, {"noProxy", K::kStrList, S}, {"credentialsFile", K::kStr, S}};
constexpr Schema kUpstreamProxy{kUpstreamProxyKeys};

constexpr Key kTopKeys[] = {
    // Dragonfly's base options.
    {"console", K::kBool, I},
    {"verbose", K::kBool, I},
    {"pprof-port", K::kInt, I},
    {"jaeger", K::kStr, I},
    {"service-name", K::kStr, I},
    {"telemetry", K::kMap, I, &kTelemetry},
    // Dragonfly's DaemonOption.
    {"metrics", K::kAddrOrMap, D, &kMetrics},
    {"aliveTime", K::kDur, I},
    {"gcInterval", K::kDur, I},
    {"workHome", K::kStr, I},
    {"workHomeMode", K::kInt, I},
    {"cacheDir", K::kStr, I},
    {"cacheDirMode", K::kInt, I},
    {"logDir", K::kStr, D},
    {"logMaxSize", K::kInt, I},
    {"logMaxAge", K::kInt, I},
    {"logMaxBackups", K::kInt, I},
    {"pluginDir", K::kStr, I},
    {"dataDir", K::kStr, D},
    {"dataDirMode", K::kInt, I},
    {"keepStorage", K::kBool, I},
    {"security", K::kMap, I, &kGlobalSecurity},
    {"scheduler", K::kMap, I, &kScheduler},
    {"host", K::kMap, I, &kHost},
    {"download", K::kMap, I, &kDownload},
    {"proxy", K::kMap, D, &kProxy},
    {"upload", K::kMap, I, &kUpload},
    {"objectStorage", K::kMap, I, &kObjectStorage},
    {"storage", K::kMap, D, &kStorage},
    {"health", K::kMap, I, &kHealth},
    {"reload", K::kMap, I, &kReload},
    {"network", K::kMap, I, &kNetwork},
    {"announcer", K::kMap, I, &kAnnouncer},
    {"networkTopology", K::kMap, I, &kNetTopo},
    // The Singularity guide's top-level placement of two proxy sections.
    {"registryMirror", K::kMap, D, &kMirror},
    {"hijackHTTPS", K::kMap, D, &kHijack},
    // Shoal's own.
    {"workers", K::kInt, S},
    {"logLevel", K::kStr, S},
    {"log", K::kMap, S, &kLog},
    {"admin", K::kMap, S, &kAdmin},
    {"shutdown", K::kMap, S, &kShutdown},
    {"watchdog", K::kMap, S, &kWatchdog},
    {"privileges", K::kMap, S, &kPrivileges},
    {"tls", K::kMap, S, &kTls},
    {"timeouts", K::kMap, S, &kTimeouts},
    {"transparent", K::kMap, S, &kTransparent},
    {"p2p", K::kMap, S, &kP2p},
    {"schedulerServer", K::kMap, S, &kSchedulerServer},
    {"upstreamProxy", K::kMap, S, &kUpstreamProxy},
};
constexpr Schema kTop{kTopKeys};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

const Key* find_key(const Schema& s, std::string_view name) {
  for (size_t i = 0; i < s.n; ++i)
    if (name == s.keys[i].name) return &s.keys[i];
  return nullptr;
}

// "; did you mean X?" for a near miss (keys are case-sensitive, as in
// Dragonfly), else "".
std::string suggest(const Schema& s, std::string_view name) {
  const std::string l = lower(name);
  const Key* best = nullptr;
  size_t best_d = 3;
  for (size_t i = 0; i < s.n; ++i) {
    const std::string k = lower(s.keys[i].name);
    const size_t d = k == l ? 0 : edit_distance(l, k);
    if (d < best_d && (d == 0 || (name.size() > 3 && d <= name.size() / 3))) {
      best = &s.keys[i];
      best_d = d;
    }
  }
  return best ? std::string("; did you mean ") + best->name + "?" : "";
}

const char* kind_text(Kind k) {
  switch (k) {
    case K::kBool:
      return "true or false";
    case K::kInt:
      return "an integer";
    case K::kNum:
      return "a number";
    case K::kDur:
      return "a duration such as 30s, 500ms or 2m";
    case K::kPortNum:
      return "a port number (0-65535)";
    default:
      return "a single value";
  }
}

std::string describe(const Node& n) {
  switch (n.type) {
    case Node::Type::kMap:
      return "a mapping";
    case Node::Type::kList:
      return "a list";
    case Node::Type::kNull:
      return "nothing";
    case Node::Type::kScalar:
      break;
  }
  std::string t = n.text.size() > 40 ? n.text.substr(0, 40) + "..." : n.text;
  return "\"" + t + "\"";
}

std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string at_index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

// A key and its value found in a mapping; both null when absent.
struct Found {
  const Node* key = nullptr;
  const Node* value = nullptr;
  const Node& at() const { return value && value->type != Node::Type::kNull ? *value : *key; }
  bool has(Node::Type t) const { return value && value->type == t; }
};

Found find(const Node* map, std::string_view name) {
  if (!map || map->type != Node::Type::kMap) return {};
  for (size_t i = 0; i + 1 < map->kids.size(); i += 2)
    if (map->kids[i].type == Node::Type::kScalar && map->kids[i].text == name)
      return {&map->kids[i], &map->kids[i + 1]};
  return {};
}

// ---------------------------------------------------------------------------
// validate(): a pure function of the node tree. The schema walk reports
// unknown keys, ignored keys and every type error; extraction then reads only
// values that passed (the getters below return nullopt for the rest) and
// reports semantic errors (ranges, addresses, URLs, conflicts).

class Validator {
 public:
  Validator(const Doc& doc, std::vector<Diag>* diags) : doc_(doc), diags_(diags) {}

  std::shared_ptr<Config> run() {
    auto c = std::make_shared<Config>();
    const Node& root = doc_.root;
    if (root.type == Node::Type::kMap) {
      walk_map(root, kTop, "", false);
    } else if (root.type != Node::Type::kNull) {
      error(root, "", "the top level must be a mapping of keys, got " + describe(root));
      return c;
    }
    extract(c.get());
    return c;
  }

 private:
  void diag(const Node& at, const std::string& path, std::string msg, bool warning) {
    diags_->push_back(
        Diag{doc_.files[static_cast<size_t>(at.file)].name, at.line, at.col, path, std::move(msg), warning});
  }
  void error(const Node& at, const std::string& path, std::string msg) {
    diag(at, path, std::move(msg), false);
  }
  void warn(const Node& at, const std::string& path, std::string msg) {
    diag(at, path, std::move(msg), true);
  }
  // "line 12", or "other.yaml:12" when other is in a different file than here.
  std::string where(const Node& other, const Node& here) const {
    if (other.file == here.file) return "line " + std::to_string(other.line);
    return doc_.files[static_cast<size_t>(other.file)].name + ":" + std::to_string(other.line);
  }
  Origin origin(const Node& at, const std::string& path) const {
    return Origin{doc_.files[static_cast<size_t>(at.file)].name, at.line, at.col, path};
  }
  std::string resolve(const Node& at, const std::string& p) const {
    return resolve_path(doc_.files[static_cast<size_t>(at.file)].base_dir, p);
  }

  // --- schema walk

  void walk_map(const Node& m, const Schema& s, const std::string& path, bool ignored) {
    for (size_t i = 0; i + 1 < m.kids.size(); i += 2) {
      const Node& key = m.kids[i];
      const Node& value = m.kids[i + 1];
      if (key.type != Node::Type::kScalar) {
        error(key, path, "a key must be a plain name, got " + describe(key));
        continue;
      }
      const std::string kpath = join(path, key.text);
      bool dup = false;
      for (size_t j = 0; j < i && !dup; j += 2) {
        if (m.kids[j].type == Node::Type::kScalar && m.kids[j].text == key.text) {
          error(key, kpath, "duplicate key (first at " + where(m.kids[j], key) + ")");
          dup = true;
        }
      }
      if (dup) continue;
      const Key* k = find_key(s, key.text);
      if (!k) {
        if (key.text == "<<")
          error(key, path, "YAML merge keys (<<) are not supported; write the keys out");
        else
          error(key, kpath, "unknown key" + suggest(s, key.text));
        continue;
      }
      bool child_ignored = ignored;
      if (k->use == Use::kIgnored && !ignored) {
        warn(key, kpath, "accepted, ignored");
        child_ignored = true;
      }
      walk_value(value, *k, kpath, child_ignored);
    }
  }

  bool expect(const Node& v, Node::Type t, const char* what, const std::string& path) {
    if (v.type == t) return true;
    error(v, path, std::string("expected ") + what + ", got " + describe(v));
    return false;
  }

  void walk_value(const Node& v, const Key& k, const std::string& path, bool ignored) {
    if (v.type == Node::Type::kNull) return;  // Go's decoder keeps the zero value
    switch (k.kind) {
      case K::kMap:
        if (expect(v, Node::Type::kMap, "a mapping", path)) walk_map(v, *k.kids, path, ignored);
        return;
      case K::kAnyMap:
        expect(v, Node::Type::kMap, "a mapping", path);
        return;
      case K::kAny:
        return;
      case K::kMapList:
        if (!expect(v, Node::Type::kList, "a list", path)) return;
        for (size_t i = 0; i < v.kids.size(); ++i) {
          const Node& item = v.kids[i];
          if (item.type == Node::Type::kNull)
            error(item, at_index(path, i), "empty list entry");
          else if (expect(item, Node::Type::kMap, "a mapping", at_index(path, i)))
            walk_map(item, *k.kids, at_index(path, i), ignored);
        }
        return;
      case K::kStrList:
      case K::kPortList:
        if (!expect(v, Node::Type::kList, "a list", path)) return;
        for (size_t i = 0; i < v.kids.size(); ++i)
          check_scalar(v.kids[i], k.kind == K::kPortList ? K::kPortNum : K::kStr, at_index(path, i));
        return;
      case K::kPort:
        if (v.type == Node::Type::kMap) {
          walk_map(v, *k.kids, path, ignored);
          return;
        }
        check_scalar(v, K::kPortNum, path);
        return;
      case K::kStrMap:
        if (expect(v, Node::Type::kMap, "a mapping", path)) walk_str_map(v, path);
        return;
      case K::kAddrOrMap:
        if (v.type == Node::Type::kMap) {
          walk_map(v, *k.kids, path, ignored);
          return;
        }
        if (v.type != Node::Type::kScalar)
          error(v, path, "expected host:port or a mapping, got " + describe(v));
        return;
      default:
        check_scalar(v, k.kind, path);
        return;
    }
  }

  // A mapping of names to single values (a null value is ""): keys are
  // free-form, so only their shape and uniqueness are checked here.
  void walk_str_map(const Node& m, const std::string& path) {
    for (size_t i = 0; i + 1 < m.kids.size(); i += 2) {
      const Node& key = m.kids[i];
      const Node& value = m.kids[i + 1];
      if (key.type != Node::Type::kScalar) {
        error(key, path, "a key must be a plain name, got " + describe(key));
        continue;
      }
      const std::string kpath = join(path, key.text);
      bool dup = false;
      for (size_t j = 0; j < i && !dup; j += 2) {
        if (m.kids[j].type == Node::Type::kScalar && m.kids[j].text == key.text) {
          error(key, kpath, "duplicate key (first at " + where(m.kids[j], key) + ")");
          dup = true;
        }
      }
      if (!dup && value.type != Node::Type::kScalar && value.type != Node::Type::kNull)
        error(value, kpath, "expected a single value, got " + describe(value));
    }
  }

  bool check_scalar(const Node& v, Kind kind, const std::string& path) {
    if (v.type == Node::Type::kNull && kind != K::kPortNum) return true;
    if (v.type != Node::Type::kScalar) {
      error(v, path, std::string("expected ") + kind_text(kind) + ", got " + describe(v));
      return false;
    }
    bool ok = true;
    switch (kind) {
      case K::kBool:
        ok = parse_bool(v.text).has_value();
        break;
      case K::kInt:
        ok = parse_int(v.text).has_value();
        break;
      case K::kNum:
        ok = parse_number(v.text).has_value();
        break;
      case K::kDur:
        ok = parse_duration(v.text).has_value();
        break;
      case K::kPortNum: {
        const auto p = parse_int(v.text);
        if (p && (*p < 0 || *p > 65535)) {
          error(v, path, "port " + v.text + " is out of range (0-65535)");
          return false;
        }
        ok = p.has_value();
        break;
      }
      default:
        break;
    }
    if (!ok) error(v, path, std::string("expected ") + kind_text(kind) + ", got " + describe(v));
    return ok;
  }

  // --- typed getters: nullopt when absent, null, or already reported

  static std::optional<std::string> str_of(const Found& f) {
    if (!f.has(Node::Type::kScalar)) return std::nullopt;
    return f.value->text;
  }
  static std::optional<bool> bool_of(const Found& f) {
    if (!f.has(Node::Type::kScalar)) return std::nullopt;
    return parse_bool(f.value->text);
  }
  static std::optional<int64_t> int_of(const Found& f) {
    if (!f.has(Node::Type::kScalar)) return std::nullopt;
    return parse_int(f.value->text);
  }
  static std::optional<double> dur_of(const Found& f) {
    if (!f.has(Node::Type::kScalar)) return std::nullopt;
    return parse_duration(f.value->text);
  }
  // A value of the wrong shape, which the schema walk has already reported.
  static bool misshapen(const Found& f) {
    return f.value && f.value->type != Node::Type::kNull && f.value->type != Node::Type::kScalar;
  }
  static const Node* map_of(const Found& f) { return f.has(Node::Type::kMap) ? f.value : nullptr; }
  static const Node* list_of(const Found& f) { return f.has(Node::Type::kList) ? f.value : nullptr; }

  // A port number 1-65535 (an int, or a string holding one, as Dragonfly's
  // whiteList ports are strings); reports and returns nullopt otherwise.
  std::optional<uint16_t> port_value(const Node& v, const std::string& path) {
    if (v.type != Node::Type::kScalar) return std::nullopt;  // reported by the walk
    const auto p = parse_int(v.text);
    if (!p || *p < 0 || *p > 65535) return std::nullopt;  // reported by the walk
    if (*p == 0) {
      error(v, path, "port 0 is out of range (1-65535)");
      return std::nullopt;
    }
    return static_cast<uint16_t>(*p);
  }

  // A certs list: each entry resolved against its file's directory.
  std::vector<std::string> paths_of(const Found& f, const std::string& path) {
    std::vector<std::string> out;
    const Node* l = list_of(f);
    if (!l) return out;
    for (size_t i = 0; i < l->kids.size(); ++i) {
      const Node& item = l->kids[i];
      if (item.type != Node::Type::kScalar) continue;
      if (item.text.empty()) {
        error(item, at_index(path, i), "empty path");
        continue;
      }
      out.push_back(resolve(item, item.text));
    }
    return out;
  }

  // --- extraction

  // The Singularity guide's sections may sit at top level or under proxy:,
  // but not in both places.
  Found section(const Node* top, const Node* proxy, const char* name, std::string* path) {
    const Found a = find(top, name), b = find(proxy, name);
    if (a.key && b.key) {
      error(*b.key, join("proxy", name),
            std::string(name) + " is given twice: at top level (" + where(*a.key, *b.key) +
                ") and under proxy: (" + where(*b.key, *b.key) + "); keep one");
    }
    *path = a.key ? std::string(name) : join("proxy", name);
    return a.key ? a : b;
  }

  void extract(Config* c) {
    const Node* top = doc_.root.type == Node::Type::kMap ? &doc_.root : nullptr;
    const Found proxy = find(top, "proxy");
    const Node* pm = map_of(proxy);

    extract_listener(pm, c);
    extract_basic_auth(pm, c);
    extract_white_list(pm, c);
    if (auto v = int_of(find(pm, "maxConcurrency"))) {
      if (*v < 0)
        error(find(pm, "maxConcurrency").at(), "proxy.maxConcurrency", "must be 0 (no limit) or more");
      else
        c->max_concurrency = *v;
    }
    if (auto v = str_of(find(pm, "defaultFilter"))) c->default_filter = *v;
    if (auto v = bool_of(find(pm, "authCheck"))) c->auth_check = *v;
    if (auto v = bool_of(find(pm, "spliceTunnels"))) c->splice_tunnels = *v;
    extract_rules(pm, c);

    std::string mpath, hpath;
    const Found mirror = section(top, pm, "registryMirror", &mpath);
    const Found hijack = section(top, pm, "hijackHTTPS", &hpath);
    extract_mirror(mirror, mpath, c);
    extract_hijack(hijack, hpath, c);
    extract_connect_ports(pm, c);
    extract_shoal(top, c);
    cross_checks(top, pm, c);
  }

  void extract_listener(const Node* pm, Config* c) {
    const Node* tl = map_of(find(pm, "tcpListen"));
    const Found listen = find(tl, "listen");
    if (auto s = str_of(listen); s && !s->empty()) {
      if (auto ip = parse_ip(*s))
        c->proxy_listen.addr = *ip;
      else
        error(*listen.value, "proxy.tcpListen.listen",
              "must be an IP address literal such as 127.0.0.1, ::1 or 0.0.0.0, got " +
                  describe(*listen.value));
    }
    const Found port = find(tl, "port");
    if (port.has(Node::Type::kScalar)) {
      if (auto p = port_value(*port.value, "proxy.tcpListen.port")) c->proxy_listen.port = *p;
    } else if (const Node* range = map_of(port)) {
      const Found start = find(range, "start"), end = find(range, "end");
      std::optional<uint16_t> s, e;
      if (start.has(Node::Type::kScalar))
        s = port_value(*start.value, "proxy.tcpListen.port.start");
      else if (!start.key)
        error(*range, "proxy.tcpListen.port", "a port range needs start");
      if (end.has(Node::Type::kScalar)) e = port_value(*end.value, "proxy.tcpListen.port.end");
      if (s) c->proxy_listen.port = *s;
      if (s && e) {
        if (*e < *s)
          error(*end.value, "proxy.tcpListen.port.end",
                "end (" + std::to_string(*e) + ") is below start (" + std::to_string(*s) + ")");
        else if (*e > *s)
          c->proxy_port_end = *e;
      }
    }
  }

  void extract_basic_auth(const Node* pm, Config* c) {
    const Found ba = find(pm, "basicAuth");
    const Node* m = map_of(ba);
    if (!m) return;
    const auto user = str_of(find(m, "username"));
    const auto pass = str_of(find(m, "password"));
    bool ok = true;
    if (!user || user->empty()) {
      error(find(m, "username").key ? find(m, "username").at() : *ba.key, "proxy.basicAuth.username",
            "basicAuth needs a username");
      ok = false;
    }
    if (!pass || pass->empty()) {
      error(find(m, "password").key ? find(m, "password").at() : *ba.key, "proxy.basicAuth.password",
            "basicAuth needs a password");
      ok = false;
    }
    if (!ok) return;
    c->basic_auth = true;
    c->basic_auth_user = *user;
    c->basic_auth_password = *pass;
  }

  void extract_white_list(const Node* pm, Config* c) {
    const Node* l = list_of(find(pm, "whiteList"));
    if (!l) return;
    for (size_t i = 0; i < l->kids.size(); ++i) {
      const Node& item = l->kids[i];
      if (item.type != Node::Type::kMap) continue;
      const std::string path = at_index("proxy.whiteList", i);
      WhiteListEntry w;
      w.line = item.line;
      w.col = item.col;
      w.where = origin(item, path);
      if (auto h = str_of(find(&item, "host"))) w.host = *h;
      const Found regx = find(&item, "regx");
      if (auto r = str_of(regx)) {
        w.regx = *r;
        if (!w.regx.empty()) w.where = origin(*regx.value, join(path, "regx"));
      }
      if (const Node* ports = list_of(find(&item, "ports"))) {
        for (size_t j = 0; j < ports->kids.size(); ++j)
          if (auto p = port_value(ports->kids[j], at_index(join(path, "ports"), j))) w.ports.push_back(*p);
      }
      if (w.host.empty() && w.regx.empty())
        warn(item, path, "matches no host (give host or regx); requests it was meant for are refused");
      c->white_list.push_back(std::move(w));
    }
  }

  void extract_rules(const Node* pm, Config* c) {
    const Node* l = list_of(find(pm, "proxies"));
    if (!l) return;
    for (size_t i = 0; i < l->kids.size(); ++i) {
      const Node& item = l->kids[i];
      if (item.type != Node::Type::kMap) continue;
      const std::string path = at_index("proxy.proxies", i);
      const Found regx = find(&item, "regx");
      const auto r = str_of(regx);
      if (!r || r->empty()) {
        if (!regx.value || regx.value->type == Node::Type::kNull || r)
          error(regx.key ? *regx.key : item, join(path, "regx"), "every rule needs a regx");
        continue;
      }
      ProxyRule rule;
      rule.regx = *r;
      rule.line = regx.value->line;
      rule.col = regx.value->col;
      rule.where = origin(*regx.value, join(path, "regx"));
      rule.use_https = bool_of(find(&item, "useHTTPS")).value_or(false);
      rule.direct = bool_of(find(&item, "direct")).value_or(false);
      if (auto s = str_of(find(&item, "redirect"))) rule.redirect = *s;
      c->rules.push_back(std::move(rule));
    }
  }

  void extract_mirror(const Found& f, const std::string& path, Config* c) {
    const Node* m = map_of(f);
    if (!m) return;  // absent or null: no mirror, as in Dragonfly
    RegistryMirror& r = c->mirror;
    r.present = true;
    r.line = f.key->line;
    const Found url = find(m, "url");
    const auto u = str_of(url);
    if (!u || u->empty()) {
      if (!url.key || !url.value || url.value->type == Node::Type::kNull || u)
        error(url.key ? *url.key : *f.key, join(path, "url"),
              "registryMirror needs url, e.g. https://registry.example.org");
    } else {
      uint16_t port = 0;
      std::string why;
      if (parse_url(*u, &port, &why))
        r.url = *u;
      else
        error(*url.value, join(path, "url"), why + ", got " + describe(*url.value));
    }
    r.dynamic = bool_of(find(m, "dynamic")).value_or(false);
    r.insecure = bool_of(find(m, "insecure")).value_or(false);
    r.direct = bool_of(find(m, "direct")).value_or(false);
    r.use_proxies = bool_of(find(m, "useProxies")).value_or(false);
    r.certs = paths_of(find(m, "certs"), join(path, "certs"));
  }

  // hijackHTTPS.nextCert/nextKey: both or neither, and only beside cert/key
  // (extract_hijack calls this once those are known to be there).
  void extract_next_ca(const Node* m, const std::string& path, Config* c) {
    const Found cert = find(m, "nextCert"), key = find(m, "nextKey");
    if (misshapen(cert) || misshapen(key)) return;
    const std::string cs = str_of(cert).value_or(""), ks = str_of(key).value_or("");
    if (cs.empty() && ks.empty()) return;
    if (cs.empty()) {
      error(*key.key, join(path, "nextKey"), "nextKey is given without nextCert");
      return;
    }
    if (ks.empty()) {
      error(*cert.key, join(path, "nextCert"), "nextCert is given without nextKey");
      return;
    }
    c->ca_next_cert = resolve(*cert.value, cs);
    c->ca_next_key = resolve(*key.value, ks);
    c->ca_next_cert_at = origin(*cert.value, join(path, "nextCert"));
    c->ca_next_key_at = origin(*key.value, join(path, "nextKey"));
  }

  void extract_hijack(const Found& f, const std::string& path, Config* c) {
    const Node* m = map_of(f);
    if (!m) return;
    const Found cert = find(m, "cert"), key = find(m, "key"), hosts = find(m, "hosts");
    if (const Node* l = list_of(hosts)) {
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const Node& item = l->kids[i];
        if (item.type != Node::Type::kMap) continue;
        const std::string hpath = at_index(join(path, "hosts"), i);
        const Found regx = find(&item, "regx");
        const auto r = str_of(regx);
        if (!r || r->empty()) {
          if (!regx.value || regx.value->type == Node::Type::kNull || r)
            error(regx.key ? *regx.key : item, join(hpath, "regx"), "every host needs a regx");
          continue;
        }
        HijackHost h;
        h.regx = *r;
        h.line = regx.value->line;
        h.col = regx.value->col;
        h.where = origin(*regx.value, join(hpath, "regx"));
        h.insecure = bool_of(find(&item, "insecure")).value_or(false);
        h.certs = paths_of(find(&item, "certs"), join(hpath, "certs"));
        c->hijack_hosts.push_back(std::move(h));
      }
    }
    if (misshapen(cert) || misshapen(key)) return;
    const std::string cs = str_of(cert).value_or(""), ks = str_of(key).value_or("");
    if (cs.empty() && ks.empty()) {
      if (!c->hijack_hosts.empty())
        error(*hosts.key, join(path, "hosts"),
              "hijacking hosts needs cert and key (the CA that signs the minted certificates)");
      if (const Found next = find(m, "nextCert"); next.key && str_of(next).value_or("") != "")
        error(*next.key, join(path, "nextCert"), "a next CA needs the current one (cert and key) beside it");
      return;
    }
    if (cs.empty()) {
      error(cert.key ? *cert.key : *f.key, join(path, "cert"), "key is given without cert");
      return;
    }
    if (ks.empty()) {
      error(key.key ? *key.key : *f.key, join(path, "key"), "cert is given without key");
      return;
    }
    c->hijack = true;
    c->ca_cert = resolve(*cert.value, cs);
    c->ca_key = resolve(*key.value, ks);
    c->ca_cert_line = cert.value->line;
    c->ca_key_line = key.value->line;
    c->ca_cert_at = origin(*cert.value, join(path, "cert"));
    c->ca_key_at = origin(*key.value, join(path, "key"));
    extract_next_ca(m, path, c);
    if (c->hijack_hosts.empty())
      warn(*f.key, path, "cert and key are given but no hosts: nothing is hijacked");
  }

  void extract_transparent(const Node* tm, Config* c) {
    using TM = Config::TransparentMode;
    if (const Found f = find(tm, "mode"); auto s = str_of(f)) {
      if (*s == "auto")
        c->transparent_mode = TM::Auto;
      else if (*s == "ebpf")
        c->transparent_mode = TM::Ebpf;
      else if (*s == "iptables")
        c->transparent_mode = TM::Iptables;
      else if (*s == "off")
        c->transparent_mode = TM::Off;
      else
        error(*f.value, "transparent.mode", "must be auto, ebpf, iptables or off, got \"" + *s + "\"");
    }
    if (const Node* l = list_of(find(tm, "ports"))) {
      c->transparent_ports.clear();
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const auto p = port_value(l->kids[i], at_index("transparent.ports", i));
        if (!p) continue;
        if (std::find(c->transparent_ports.begin(), c->transparent_ports.end(), *p) !=
            c->transparent_ports.end())
          warn(l->kids[i], at_index("transparent.ports", i), "port listed twice");
        else
          c->transparent_ports.push_back(*p);
      }
      if (c->transparent_ports.empty()) error(*l, "transparent.ports", "needs at least one port");
    }
    if (const Node* l = list_of(find(tm, "cgroups"))) {
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const Node& item = l->kids[i];
        if (item.type != Node::Type::kScalar) continue;
        if (item.text.empty() || item.text.find("..") != std::string::npos)
          error(item, at_index("transparent.cgroups", i), "a cgroup path without \"..\" is needed");
        else
          c->transparent_cgroups.push_back(item.text);
      }
    }
    if (const Found f = find(tm, "port"); auto v = int_of(f)) {
      if (*v < 1 || *v > 65535)
        error(*f.value, "transparent.port", "must be 1 to 65535");
      else
        c->transparent_port = static_cast<uint16_t>(*v);
    }
    if (const Found f = find(tm, "mark"); auto v = int_of(f)) {
      if (*v < 1 || *v > 0xffffffffLL)
        error(*f.value, "transparent.mark", "must be 1 to 4294967295");
      else
        c->transparent_mark = static_cast<uint32_t>(*v);
    }
    if (const Found f = find(tm, "jobParent"); auto s = str_of(f)) {
      if (s->empty() || s->find("..") != std::string::npos)
        error(*f.value, "transparent.jobParent", "a cgroup path without \"..\" is needed");
      else
        c->transparent_job_parent = *s;
    }
  }

  // An integer key with an inclusive range; reports and keeps the default
  // outside it.
  void set_count(const Found& f, const std::string& path, int64_t lo, int64_t hi, uint32_t* out) {
    const auto v = int_of(f);
    if (!v) return;
    if (*v < lo || *v > hi)
      error(*f.value, path, "must be " + std::to_string(lo) + " to " + std::to_string(hi));
    else
      *out = static_cast<uint32_t>(*v);
  }

  // A rate (see parse_rate); "" keeps the default. positive: 0 is refused.
  void set_rate(const Found& f, const std::string& path, bool positive, uint64_t* out) {
    const auto s = str_of(f);
    if (!s || s->empty()) return;
    uint64_t v = 0;
    std::string why;
    if (!parse_rate(*s, &v, &why))
      error(*f.value, path, why + ", got " + describe(*f.value));
    else if (positive && v == 0)
      error(*f.value, path, "must be more than zero");
    else
      *out = v;
  }

  // A listener "ip:port"; "" keeps the default.
  void set_listen(const Found& f, const std::string& path, Endpoint* out) {
    const auto s = str_of(f);
    if (!s || s->empty()) return;
    std::string why;
    if (!parse_listen_address(*s, out, &why)) error(*f.value, path, why + ", got " + describe(*f.value));
  }

  // A secret file's path, resolved against its file's directory; "" keeps
  // the default (none).
  void set_file(const Found& f, std::string* out) {
    if (auto s = str_of(f); s && !s->empty()) *out = resolve(*f.value, *s);
  }

  void extract_p2p(const Found& p2p, Config* c) {
    const Node* pm = map_of(p2p);
    if (!pm) return;
    const Found scheds = find(pm, "schedulers");
    const Node* l = list_of(scheds);
    if (l) {
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const Node& item = l->kids[i];
        const std::string path = at_index("p2p.schedulers", i);
        if (item.type != Node::Type::kScalar) continue;  // reported by the walk
        std::string addr, why;
        if (!parse_peer_address(item.text, &addr, &why)) {
          error(item, path, why + ", got " + describe(item));
        } else if (std::find(c->p2p_schedulers.begin(), c->p2p_schedulers.end(), addr) !=
                   c->p2p_schedulers.end()) {
          warn(item, path, "scheduler listed twice");
        } else {
          c->p2p_schedulers.push_back(std::move(addr));
        }
      }
    }
    set_file(find(pm, "clusterSecretFile"), &c->cluster_secret_file);
    // Checked on what the file asked for, so a list of only bad addresses
    // still gets this error along with theirs.
    if (l && !l->kids.empty() && c->cluster_secret_file.empty())
      error(*scheds.key, "p2p.schedulers",
            "peers sign every request with the cluster secret: set p2p.clusterSecretFile");

    const Found listen = find(pm, "listen");
    set_listen(listen, "p2p.listen", &c->peer_listen);
    if (const Found f = find(pm, "advertise"); auto s = str_of(f)) {
      std::string why;
      if (!s->empty() && !parse_peer_address(*s, &c->peer_advertise, &why))
        error(*f.value, "p2p.advertise", why + ", got " + describe(*f.value));
    }
    if (const Node* m = map_of(find(pm, "labels"))) {
      for (size_t i = 0; i + 1 < m->kids.size(); i += 2) {
        const Node& key = m->kids[i];
        const Node& value = m->kids[i + 1];
        if (key.type != Node::Type::kScalar || value.type == Node::Type::kMap ||
            value.type == Node::Type::kList || c->peer_labels.count(key.text))
          continue;  // reported by the walk
        const std::string path = join("p2p.labels", key.text);
        std::string why;
        if (!label_ok(key.text, value.text, &why))
          error(key, path, why);
        else
          c->peer_labels[key.text] = value.text;
      }
    }
    set_count(find(pm, "uploadSlots"), "p2p.uploadSlots", 1, 4096, &c->upload_slots);
    set_rate(find(pm, "uploadRate"), "p2p.uploadRate", false, &c->upload_rate);
    set_count(find(pm, "parallelParents"), "p2p.parallelParents", 1, 64, &c->parallel_parents);
    set_rate(find(pm, "stallRate"), "p2p.stallRate", true, &c->stall_rate);
    set_duration(find(pm, "stallTime"), "p2p.stallTime", false, &c->stall_time_s);
    if (auto v = bool_of(find(pm, "tls"))) c->peer_tls = *v;
    if (const Found f = find(pm, "keepAlive"); auto d = dur_of(f)) {
      // Below the upload server's 60 s idle timeout, so that this side
      // closes an idle connection first.
      if (*d < 0 || *d > 55)
        error(*f.value, "p2p.keepAlive", "must be 0 (off) to 55s");
      else
        c->peer_keepalive_s = *d;
    }
    if (const Found f = find(pm, "pieceMemory"); auto v = str_of(f)) {
      uint64_t bytes = 0;
      if (!parse_size(*v, &bytes) || bytes > (uint64_t{16} << 30))
        error(*f.value, "p2p.pieceMemory", "expected a size from 0 to 16Gi, such as 64Mi or 1Gi");
      else
        c->peer_piece_memory = bytes;
    }

    // Only a running P2P listener can collide with the other listeners.
    if (!c->p2p_schedulers.empty()) {
      const Node& at = listen.key ? listen.at() : *p2p.key;
      const uint16_t port = c->peer_listen.port;
      const uint16_t hi = std::max(c->proxy_port_end, c->proxy_listen.port);
      if (port >= c->proxy_listen.port && port <= hi && overlaps(c->peer_listen, c->proxy_listen))
        error(at, "p2p.listen", "port " + std::to_string(port) + " is also the proxy's port");
      else if (port == c->metrics_listen.port && overlaps(c->peer_listen, c->metrics_listen))
        error(at, "p2p.listen", "port " + std::to_string(port) + " is also the metrics port");
      else if (c->transparent_mode != Config::TransparentMode::Off && port == c->transparent_port &&
               (overlaps(c->peer_listen, Endpoint{"127.0.0.1", port}) ||
                overlaps(c->peer_listen, Endpoint{"::1", port})))
        error(at, "p2p.listen",
              "port " + std::to_string(port) + " is also the transparent listener's (transparent.port)");
    }
  }

  // Label names are short identifiers (they are sent to the scheduler and
  // appear in its logs); values are printable text.
  static bool label_ok(const std::string& key, const std::string& value, std::string* why) {
    if (key.empty() || key.size() > 63) {
      *why = "a label name must be 1 to 63 characters";
      return false;
    }
    for (char ch : key) {
      const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                      ch == '.' || ch == '_' || ch == '-' || ch == '/';
      if (!ok) {
        *why = "a label name may hold letters, digits and . _ - / only";
        return false;
      }
    }
    if (value.size() > 255) {
      *why = "a label value must be at most 255 characters";
      return false;
    }
    for (char ch : value) {
      if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
        *why = "a label value must not hold control characters";
        return false;
      }
    }
    return true;
  }

  void extract_scheduler_server(const Node* sm, Config* c) {
    set_listen(find(sm, "listen"), "schedulerServer.listen", &c->scheduler_listen);
    set_file(find(sm, "clusterSecretFile"), &c->scheduler_secret_file);
    set_duration(find(sm, "peerTimeout"), "schedulerServer.peerTimeout", false, &c->scheduler_peer_timeout_s);
    set_count(find(sm, "originConcurrency"), "schedulerServer.originConcurrency", 1, 64,
              &c->scheduler_origin_concurrency);
    set_count(find(sm, "maxParents"), "schedulerServer.maxParents", 1, 64, &c->scheduler_max_parents);
  }

  // upstreamProxy: the URL (credentials in it are never repeated in a
  // message), the noProxy entries, the credentials file (read by
  // check_resources and at each runtime build, not here).
  void extract_upstream_proxy(const Found& up, Config* c) {
    const Node* m = map_of(up);
    if (!m) return;
    UpstreamProxy& p = c->upstream_proxy;
    const Found url = find(m, "url");
    if (auto s = str_of(url); s && !s->empty()) {
      std::string why;
      if (parse_proxy_url(*s, &p, &why))
        p.enabled = true;
      else
        error(*url.value, "upstreamProxy.url", why);  // the value may hold a password: not quoted
    }
    if (const Node* l = list_of(find(m, "noProxy"))) {
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const Node& item = l->kids[i];
        if (item.type != Node::Type::kScalar) continue;  // reported by the walk
        NoProxyEntry e;
        std::string why;
        if (parse_no_proxy_entry(item.text, &e, &why))
          p.no_proxy.push_back(std::move(e));
        else
          error(item, at_index("upstreamProxy.noProxy", i), why + ", got " + describe(item));
      }
    }
    const Found cred = find(m, "credentialsFile");
    set_file(cred, &p.credentials_file);
    if (!p.credentials_file.empty()) {
      c->upstream_proxy_credentials_at = origin(*cred.value, "upstreamProxy.credentialsFile");
      if (!p.user.empty())
        error(*cred.value, "upstreamProxy.credentialsFile",
              "the url already carries credentials; give them in one place (the file keeps them out of "
              "the config)");
    }
    // An empty url turns the proxy off (a templated file may leave it so);
    // the other keys then do nothing, which deserves a word.
    const bool no_url = !url.value || url.value->type == Node::Type::kNull ||
                        (url.value->type == Node::Type::kScalar && url.value->text.empty());
    if (no_url && (!p.no_proxy.empty() || !p.credentials_file.empty()))
      warn(url.key ? url.at() : *up.key, "upstreamProxy.url",
           "no proxy URL: noProxy and credentialsFile have no effect");
  }

  void extract_connect_ports(const Node* pm, Config* c) {
    const Found f = find(pm, "connectPorts");
    if (const Node* l = list_of(f)) {
      for (size_t i = 0; i < l->kids.size(); ++i) {
        const auto p = port_value(l->kids[i], at_index("proxy.connectPorts", i));
        if (!p) continue;
        if (std::find(c->connect_ports.begin(), c->connect_ports.end(), *p) != c->connect_ports.end())
          warn(l->kids[i], at_index("proxy.connectPorts", i), "port listed twice");
        else
          c->connect_ports.push_back(*p);
      }
      return;
    }
    c->connect_ports = {443};
    uint16_t port = 0;
    std::string why;
    if (c->mirror.present && !c->mirror.url.empty() && parse_url(c->mirror.url, &port, &why) && port != 443)
      c->connect_ports.push_back(port);
  }

  void set_path(const Node* top, const char* name, std::string* out) {
    const Found f = find(top, name);
    if (auto s = str_of(f); s && !s->empty()) *out = resolve(*f.value, *s);
  }

  void set_duration(const Found& f, const std::string& path, bool zero_ok, double* out) {
    const auto d = dur_of(f);
    if (!d) return;
    if (*d < 0 || (!zero_ok && *d == 0)) {
      error(*f.value, path, zero_ok ? "must not be negative" : "must be more than zero");
      return;
    }
    *out = *d;
  }

  void extract_shoal(const Node* top, Config* c) {
    if (const Found f = find(top, "workers"); auto v = int_of(f)) {
      if (*v < 0 || *v > 1024)
        error(*f.value, "workers", "must be 0 (one per CPU) to 1024");
      else
        c->workers = static_cast<int>(*v);
    }
    set_path(top, "dataDir", &c->data_dir);
    set_path(top, "logDir", &c->log_dir);

    const Found lv1 = find(top, "logLevel");
    const Found log = find(top, "log");
    const Found lv2 = find(map_of(log), "level");
    if (lv1.key && lv2.key)
      error(*lv2.key, "log.level",
            "the log level is given twice: logLevel (" + where(*lv1.key, *lv2.key) + ") and log.level (" +
                where(*lv2.key, *lv2.key) + "); keep one");
    const Found& lv = lv1.key ? lv1 : lv2;
    if (auto s = str_of(lv)) {
      std::string l = lower(*s);
      if (l == "warning") l = "warn";
      if (l == "debug" || l == "info" || l == "warn" || l == "error")
        c->log_level = l;
      else
        error(*lv.value, lv1.key ? "logLevel" : "log.level",
              "must be debug, info, warn or error, got " + describe(*lv.value));
    }

    const Node* admin = map_of(find(top, "admin"));
    if (const Found f = find(admin, "socket"); auto s = str_of(f)) {
      if (s->empty())
        error(f.at(), "admin.socket", "must not be empty");
      else
        c->admin_socket = resolve(*f.value, *s);
    }
    if (const Found f = find(admin, "group"); auto s = str_of(f)) {
      if (s->empty())
        error(f.at(), "admin.group", "must not be empty");
      else
        c->admin_group = *s;
    }

    const Found metrics = find(top, "metrics");
    Found listen = metrics;
    std::string mpath = "metrics";
    if (const Node* m = map_of(metrics)) {
      listen = find(m, "listen");
      mpath = "metrics.listen";
    }
    if (auto s = str_of(listen); s && !s->empty()) {
      std::string why;
      if (!parse_host_port(*s, &c->metrics_listen, &why))
        error(*listen.value, mpath, why + ", got " + describe(*listen.value));
    }

    set_duration(find(map_of(find(top, "shutdown")), "grace"), "shutdown.grace", true, &c->shutdown_grace_s);
    set_duration(find(map_of(find(top, "watchdog")), "stallTimeout"), "watchdog.stallTimeout", true,
                 &c->watchdog_stall_s);
    if (auto v = bool_of(find(map_of(find(top, "privileges")), "dropCapabilities")))
      c->drop_capabilities = *v;

    const Node* tls = map_of(find(top, "tls"));
    const Found store = find(tls, "trustStore");
    if (auto s = str_of(store); s && !s->empty()) c->trust_store = resolve(*store.value, *s);
    if (const Found f = find(tls, "leafCacheSize"); auto v = int_of(f)) {
      if (*v < 1 || *v > 1000000)
        error(*f.value, "tls.leafCacheSize", "must be 1 to 1000000");
      else
        c->leaf_cache_size = static_cast<uint32_t>(*v);
    }
    if (auto v = bool_of(find(tls, "fastRecords"))) c->tls_fast_records = *v;
    if (auto v = bool_of(find(tls, "sessionTickets"))) c->tls_session_tickets = *v;
    if (const Found f = find(tls, "sessionTicketLifetime"); auto v = dur_of(f)) {
      // mbedTLS keeps whole seconds.
      if (*v < 1 || *v > 7 * 24 * 3600)
        error(*f.value, "tls.sessionTicketLifetime", "must be 1s to 7 days (168h)");
      else
        c->tls_ticket_lifetime_s = std::floor(*v);
    }

    extract_transparent(map_of(find(top, "transparent")), c);
    extract_p2p(find(top, "p2p"), c);
    extract_scheduler_server(map_of(find(top, "schedulerServer")), c);
    extract_upstream_proxy(find(top, "upstreamProxy"), c);

    const Node* t = map_of(find(top, "timeouts"));
    set_duration(find(t, "header"), "timeouts.header", false, &c->header_timeout_s);
    set_duration(find(t, "idle"), "timeouts.idle", false, &c->idle_timeout_s);
    set_duration(find(t, "connect"), "timeouts.connect", false, &c->connect_timeout_s);

    const Node* st = map_of(find(top, "storage"));
    set_duration(find(st, "taskExpireTime"), "storage.taskExpireTime", false, &c->task_expire_s);
    if (const Found f = find(st, "diskGCThreshold"); auto v = str_of(f)) {
      uint64_t bytes = 0;
      if (!v->empty() && !parse_size(*v, &bytes))
        error(*f.value, "storage.diskGCThreshold", "expected a size such as 50Gi, 512Mi or 100GB");
      else
        c->disk_quota_bytes = bytes;
    }
  }

  // Kubernetes-style quantities, as Dragonfly writes them: 50Gi, 100G,
  // 512Mi, 1.5Ti, plain bytes; also KB/MB/GB/TB.
  static bool parse_size(const std::string& s, uint64_t* out) {
    size_t i = 0;
    while (i < s.size() && (isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
    if (i == 0) return false;
    double n = std::strtod(s.substr(0, i).c_str(), nullptr);
    std::string unit = s.substr(i);
    double mult = 1;
    if (unit.empty() || unit == "B")
      mult = 1;
    else if (unit == "Ki" || unit == "KiB")
      mult = 1024.0;
    else if (unit == "Mi" || unit == "MiB")
      mult = 1024.0 * 1024;
    else if (unit == "Gi" || unit == "GiB")
      mult = 1024.0 * 1024 * 1024;
    else if (unit == "Ti" || unit == "TiB")
      mult = 1024.0 * 1024 * 1024 * 1024;
    else if (unit == "K" || unit == "KB")
      mult = 1e3;
    else if (unit == "M" || unit == "MB")
      mult = 1e6;
    else if (unit == "G" || unit == "GB")
      mult = 1e9;
    else if (unit == "T" || unit == "TB")
      mult = 1e12;
    else
      return false;
    *out = static_cast<uint64_t>(n * mult);
    return true;
  }

  static bool overlaps(const Endpoint& a, const Endpoint& b) {
    auto wildcard = [](const std::string& s) { return s == "0.0.0.0" || s == "::"; };
    return a.addr == b.addr || wildcard(a.addr) || wildcard(b.addr);
  }

  void cross_checks(const Node* top, const Node* pm, Config* c) {
    const Found tl = find(pm, "tcpListen");
    const Found listen = find(map_of(tl), "listen");
    if (!c->proxy_listen.is_loopback() && !c->basic_auth && c->white_list.empty()) {
      error(listen.key ? listen.at() : *tl.key, "proxy.tcpListen.listen",
            "the proxy listens on " + c->proxy_listen.addr +
                ", which is not loopback, without proxy.basicAuth or proxy.whiteList: anyone "
                "who can reach this host could use it; add one of them or listen on 127.0.0.1");
    }
    const Found metrics = find(top, "metrics");
    const uint16_t lo = c->proxy_listen.port;
    const uint16_t hi = std::max(c->proxy_port_end, lo);
    const bool clash = c->metrics_listen.port >= lo && c->metrics_listen.port <= hi &&
                       overlaps(c->metrics_listen, c->proxy_listen);
    if (metrics.key) {
      const Found ml = map_of(metrics) ? find(map_of(metrics), "listen") : metrics;
      const Node& at = ml.key ? ml.at() : *metrics.key;
      const std::string path = ml.key && ml.key != metrics.key ? "metrics.listen" : "metrics";
      if (!c->metrics_listen.is_loopback())
        warn(at, path,
             "serves /metrics on " + c->metrics_listen.addr +
                 ", which is not loopback: anyone who can reach this host can read them");
      if (clash)
        error(at, path, "port " + std::to_string(c->metrics_listen.port) + " is also the proxy's port");
    } else if (clash) {
      const Found port = find(map_of(tl), "port");
      error(port.key ? port.at() : *tl.key, "proxy.tcpListen.port",
            "the proxy's ports include " + std::to_string(c->metrics_listen.port) +
                ", the metrics port (set metrics.listen or pick other ports)");
    }
  }

  const Doc& doc_;
  std::vector<Diag>* diags_;
};

// The pure step: node tree in, Config and diagnostics out, no I/O. The
// Config is always returned (holding only values that passed); the caller
// decides from *diags whether to use it.
std::shared_ptr<Config> validate(const Doc& doc, std::vector<Diag>* diags) {
  return Validator(doc, diags).run();
}

// ---------------------------------------------------------------------------
// Loading

bool read_text_file(const std::string& path, std::string* out, std::string* why) {
  // O_NONBLOCK: opening a FIFO (or a tty) by mistake must fail below as
  // "not a regular file", not hang shoald's start or reload waiting for a
  // writer. It changes nothing for reads of a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *why = std::strerror(errno);
    return false;
  }
  struct stat st;
  bool ok = true;
  if (::fstat(fd, &st) != 0) {
    *why = std::strerror(errno);
    ok = false;
  } else if (!S_ISREG(st.st_mode)) {
    *why = "not a regular file";
    ok = false;
  } else if (static_cast<size_t>(st.st_size) > kMaxFileBytes) {
    *why = "larger than 4 MiB; that is not a config file";
    ok = false;
  }
  out->clear();
  char buf[65536];
  while (ok) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = std::strerror(errno);
      ok = false;
    } else if (n == 0) {
      break;
    } else {
      out->append(buf, static_cast<size_t>(n));
      if (out->size() > kMaxFileBytes) {
        *why = "larger than 4 MiB; that is not a config file";
        ok = false;
      }
    }
  }
  ::close(fd);
  return ok;
}

std::string dir_of(const std::string& path) {
  const fs::path abs = fs::absolute(fs::path(path)).lexically_normal();
  return abs.parent_path().string();
}

// Dragonfly lets "proxy:" name a file that holds the proxy section. Load it
// here, before validate(), so validate() stays free of I/O; its diagnostics
// name that file and its relative paths resolve against its directory.
void include_proxy_file(Doc* doc, std::vector<Diag>* diags) {
  Node& root = doc->root;
  if (root.type != Node::Type::kMap) return;
  for (size_t i = 0; i + 1 < root.kids.size(); i += 2) {
    if (root.kids[i].type != Node::Type::kScalar || root.kids[i].text != "proxy") continue;
    Node& value = root.kids[i + 1];
    if (value.type != Node::Type::kScalar) return;
    const Source& here = doc->files[static_cast<size_t>(value.file)];
    const std::string path = resolve_path(here.base_dir, value.text);
    std::string text, why;
    if (!read_text_file(path, &text, &why)) {
      diags->push_back(Diag{here.name, value.line, value.col, "proxy",
                            "cannot read the proxy file " + path + ": " + why, false});
      value = Node{};  // reported; validate the rest without it
      return;
    }
    const int file = static_cast<int>(doc->files.size());
    doc->files.push_back(Source{path, dir_of(path)});
    Node included;
    if (!parse_yaml(text, file, path, &included, diags)) {
      value = Node{};
      return;
    }
    value = std::move(included);
    return;  // only the first "proxy" key; a duplicate is reported by validate()
  }
}

bool has_errors(const std::vector<Diag>& d) {
  return std::any_of(d.begin(), d.end(), [](const Diag& x) { return !x.warning; });
}

// File order: by file (the loaded file first, then an included proxy file),
// then line and column; diagnostics without a position first.
void sort_diags(const std::vector<Source>& files, std::vector<Diag>* d) {
  auto rank = [&](const std::string& name) {
    for (size_t i = 0; i < files.size(); ++i)
      if (files[i].name == name) return i;
    return files.size();
  };
  std::stable_sort(d->begin(), d->end(), [&](const Diag& a, const Diag& b) {
    const size_t ra = rank(a.file), rb = rank(b.file);
    if (ra != rb) return ra < rb;
    if (a.line != b.line) return a.line < b.line;
    return a.col < b.col;
  });
}

LoadResult load_text(const std::string& text, const std::string& name, const std::string& base_dir) {
  LoadResult r;
  try {
    Doc doc;
    doc.files.push_back(Source{name, base_dir});
    doc.root.file = 0;
    if (parse_yaml(text, 0, name, &doc.root, &r.diags)) {
      include_proxy_file(&doc, &r.diags);
      std::shared_ptr<Config> c = validate(doc, &r.diags);
      c->source = name;
      // The Config holds only values that passed their own checks, so the
      // resource checks can run even when other keys failed: the user sees
      // a bad regex and an unknown key in the same run.
      check_resources(*c, &r.diags);
      if (!has_errors(r.diags)) r.config = std::move(c);
    }
    sort_diags(doc.files, &r.diags);
  } catch (const std::exception& e) {  // bad_alloc, filesystem_error: never past this API
    r.config.reset();
    r.diags.push_back(Diag{name, 0, 0, "", std::string("internal error: ") + e.what(), false});
  }
  return r;
}

}  // namespace

std::string Diag::str() const {
  std::string s = file;
  if (line > 0) {
    s += ":" + std::to_string(line);
    if (col > 0) s += ":" + std::to_string(col);
  }
  s += ": ";
  if (warning) s += "warning: ";
  if (!path.empty()) s += path + ": ";
  s += message;
  return s;
}

std::string LoadResult::errors_text() const {
  std::string s;
  for (const Diag& d : diags) {
    s += d.str();
    s += '\n';
  }
  return s;
}

bool Endpoint::is_loopback() const {
  unsigned char b[16];
  if (inet_pton(AF_INET, addr.c_str(), b) == 1) return b[0] == 127;
  if (inet_pton(AF_INET6, addr.c_str(), b) != 1) return false;
  static const unsigned char kLoop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, kLoop6, 16) == 0) return true;
  return std::memcmp(b, kMapped, 12) == 0 && b[12] == 127;  // ::ffff:127.x.y.z
}

bool parse_listen_address(std::string_view s, Endpoint* out, std::string* why) {
  Endpoint e;
  if (!parse_host_port(s, &e, why)) return false;
  *out = std::move(e);
  return true;
}

bool parse_peer_address(std::string_view s, std::string* out, std::string* why) {
  Endpoint e;
  if (!parse_host_port(s, &e, why)) return false;
  unsigned char b[16] = {};
  const bool v4 = inet_pton(AF_INET, e.addr.c_str(), b) == 1;
  if (!v4) inet_pton(AF_INET6, e.addr.c_str(), b);
  if (std::all_of(b, b + (v4 ? 4 : 16), [](unsigned char x) { return x == 0; })) {
    *why = "needs the address others connect to, not " + (v4 ? std::string("0.0.0.0") : std::string("::")) +
           " or an empty host";
    return false;
  }
  *out = (v4 ? e.addr : "[" + e.addr + "]") + ":" + std::to_string(e.port);
  return true;
}

bool parse_rate(std::string_view s, uint64_t* out, std::string* why) {
  *why = "expected a rate in bytes per second, e.g. 1048576, 100MiB, 80Mbit";
  size_t i = 0;
  while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.')) ++i;
  if (i == 0) {
    if (!s.empty() && s[0] == '-') *why = "must not be negative";
    return false;
  }
  const std::string num(s.substr(0, i));
  char* end = nullptr;
  const double n = std::strtod(num.c_str(), &end);
  if (end != num.c_str() + num.size()) return false;
  std::string_view unit = s.substr(i);
  if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  if (unit.size() >= 2 && unit.substr(unit.size() - 2) == "/s") unit.remove_suffix(2);
  struct Unit {
    const char* name;
    double mult;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},           {"B", 1},          {"K", 1e3},         {"k", 1e3},        {"KB", 1e3},
      {"kB", 1e3},       {"M", 1e6},        {"MB", 1e6},        {"G", 1e9},        {"GB", 1e9},
      {"T", 1e12},       {"TB", 1e12},      {"Ki", 0x1p10},     {"KiB", 0x1p10},   {"Mi", 0x1p20},
      {"MiB", 0x1p20},   {"Gi", 0x1p30},    {"GiB", 0x1p30},    {"Ti", 0x1p40},    {"TiB", 0x1p40},
      {"bit", 1.0 / 8},  {"Kbit", 1e3 / 8}, {"kbit", 1e3 / 8},  {"Mbit", 1e6 / 8}, {"mbit", 1e6 / 8},
      {"Gbit", 1e9 / 8}, {"gbit", 1e9 / 8}, {"Tbit", 1e12 / 8}, {"Kibit", 0x1p7},  {"Mibit", 0x1p17},
      {"Gibit", 0x1p27},
  };
  const Unit* u = nullptr;
  for (const Unit& k : kUnits)
    if (unit == k.name) u = &k;
  if (!u) {
    const std::string l = lower(unit);
    if (l == "b" || l == "kb" || l == "mb" || l == "gb" || l == "tb") {
      const std::string prefix =
          l == "b" ? "" : std::string(1, static_cast<char>(std::toupper(static_cast<unsigned char>(l[0]))));
      *why = "\"" + std::string(unit) + "\" is ambiguous: write " + prefix + "B for bytes or " + prefix +
             "bit for bits";
    } else {
      *why =
          "unknown unit \"" + std::string(unit) + "\"; use B, KB, MB, GB, KiB, MiB, GiB, Kbit, Mbit or Gbit";
    }
    return false;
  }
  const double bytes = n * u->mult;
  if (!std::isfinite(bytes) || bytes >= 0x1p62) {
    *why = "is too large";
    return false;
  }
  *out = static_cast<uint64_t>(bytes);
  return true;
}

LoadResult load_file(const std::string& path) {
  std::string text, why;
  if (!read_text_file(path, &text, &why)) {
    LoadResult r;
    r.diags.push_back(Diag{path, 0, 0, "", "cannot read the configuration: " + why, false});
    return r;
  }
  std::string base;
  try {
    base = dir_of(path);
  } catch (const std::exception& e) {
    LoadResult r;
    r.diags.push_back(Diag{path, 0, 0, "", std::string("cannot resolve its directory: ") + e.what(), false});
    return r;
  }
  return load_text(text, path, base);
}

LoadResult load_string(const std::string& yaml, const std::string& name, const std::string& base_dir) {
  std::string base = base_dir;
  if (base.empty()) {
    std::error_code ec;
    base = fs::current_path(ec).string();
    if (ec) base = "/";
  }
  return load_text(yaml, name, base);
}

// Explicit proxy on loopback, the Singularity guide's two rules, no
// hijacking. Every key here is one Shoal implements, so it loads without a
// single warning (a test checks that).
const char* embedded_default_yaml() {
  return R"(# Shoal's embedded default configuration (shoald --default-config).
proxy:
  tcpListen:
    listen: 127.0.0.1
    port: 65001
  proxies:
    # Only content-addressed objects go through the task engine: blobs and
    # manifests fetched by digest never change, so peers can share them.
    - regx: blobs/sha256.*
    - regx: manifests/sha256.*
dataDir: /var/lib/shoal
logDir: /var/log/shoal
)";
}

LoadResult load_embedded_default() { return load_string(embedded_default_yaml(), kEmbeddedName, "/"); }

}  // namespace shoal::config
