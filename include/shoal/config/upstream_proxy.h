// The site proxy (upstreamProxy): the HTTP proxy Shoal's own connections to
// origins go through with CONNECT, the hosts that bypass it (noProxy), and
// the proxy's credentials. Pure parsing and matching, shared by the config
// loader (which reports errors at their YAML position) and the proxy module
// (which decides per origin connection). No I/O except
// load_proxy_credentials(). Any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shoal::config {

// One noProxy entry. The spellings follow the NO_PROXY conventions of curl
// and Go, so a site's existing value can be copied entry by entry:
//   "*"                   every host (the proxy is never used)
//   "example.org"         that host and every name below it
//   ".example.org"        names below it only ("*.example.org" is the same)
//   "10.1.2.3", "fd00::1" that address
//   "10.0.0.0/8", "fd00::/8"  addresses in that network
// A host or address entry may carry a port ("registry.local:5000",
// "[fd00::1]:443"); it then matches that port only. Names compare
// case-insensitively, without a trailing dot.
struct NoProxyEntry {
  enum class Kind { Any, Domain, Subdomains, Cidr };
  Kind kind = Kind::Any;
  std::string name;       // Domain, Subdomains: lower-case, no leading or trailing dot
  int family = 0;         // Cidr: AF_INET or AF_INET6
  uint8_t addr[16] = {};  // Cidr: network address (4 bytes used for AF_INET)
  int prefix = 0;         // Cidr: prefix length (32 / 128 for a single address)
  uint16_t port = 0;      // 0: any port
  std::string text;       // as written, for messages
};

struct UpstreamProxy {
  bool enabled = false;  // upstreamProxy.url given
  std::string host;      // name or IP literal (no brackets)
  uint16_t port = 0;
  // From the URL's userinfo (percent-decoded), or empty. Secret: never log.
  std::string user, password;
  std::string credentials_file;  // absolute path, or empty
  std::vector<NoProxyEntry> no_proxy;
  // "http://host:port", never with credentials: the name logs and errors use.
  std::string display;
};

// Parses "http://[user[:password]@]host:port[/]". The port is required
// (proxies listen on 3128, 8080, 80...: a guessed default sends every pull
// to the wrong place). Refuses https:// (TLS to the proxy), socks, a path,
// query or fragment, and a bad host or port. Fills host, port, user,
// password and display of *out; leaves the rest. False with *why (which never
// repeats the credentials).
bool parse_proxy_url(std::string_view url, UpstreamProxy* out, std::string* why);

// Parses one noProxy entry (see NoProxyEntry). False with *why.
bool parse_no_proxy_entry(std::string_view s, NoProxyEntry* out, std::string* why);

// True when a connection to host:port bypasses the proxy. host is a name or
// an IP literal (brackets allowed); dial, when not empty, is the IP address
// the connection would be made to without the proxy (a transparently
// intercepted connection's original destination): address entries match it
// too. IPv4-mapped IPv6 addresses compare as IPv4.
bool no_proxy_match(const std::vector<NoProxyEntry>& list, std::string_view host, uint16_t port,
                    std::string_view dial = {});

// The credentials file's text: "user:password" on the first line (a final
// newline is dropped). The user must not be empty; the password may be, and
// may hold ':'. False with *why (which never repeats the text).
bool parse_proxy_credentials(std::string_view text, std::string* user, std::string* password,
                             std::string* why);

// Reads and parses a credentials file: a regular file no one but its owner
// may access (like the CA key and the cluster secret), at most 4 KiB.
// False with *why naming the file.
bool load_proxy_credentials(const std::string& path, std::string* user, std::string* password,
                            std::string* why);

}  // namespace shoal::config
