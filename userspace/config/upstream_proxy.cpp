// upstreamProxy parsing and noProxy matching (see upstream_proxy.h).
#include "shoal/config/upstream_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shoal::config {

namespace {

constexpr size_t kMaxCredentialsFile = 4096;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 3986 percent-decoding of userinfo; false on a malformed escape.
bool percent_decode(std::string_view s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out->push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return false;
    const int a = hex_value(s[i + 1]), b = hex_value(s[i + 2]);
    if (a < 0 || b < 0) return false;
    out->push_back(static_cast<char>(a * 16 + b));
    i += 2;
  }
  return true;
}

// A DNS name as a proxy host or noProxy entry: letters, digits, '-', '_'
// and dots between non-empty labels.
bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t label = 0;
  for (char c : s) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

bool parse_port(std::string_view s, uint16_t* port) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v < 1 || v > 65535) return false;
  *port = static_cast<uint16_t>(v);
  return true;
}

// Binary form of an IP literal; IPv4-mapped IPv6 becomes IPv4. family 0
// when s is not one.
int parse_addr(std::string_view s, uint8_t out[16]) {
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  if (s.empty() || s.size() > 45) return 0;
  const std::string z(s);
  std::memset(out, 0, 16);
  if (inet_pton(AF_INET, z.c_str(), out) == 1) return AF_INET;
  if (inet_pton(AF_INET6, z.c_str(), out) != 1) return 0;
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(out, kMapped, sizeof kMapped) == 0) {
    std::memmove(out, out + 12, 4);
    std::memset(out + 4, 0, 12);
    return AF_INET;
  }
  return AF_INET6;
}

bool prefix_equal(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

// Splits "host:port", "[v6]:port", "[v6]", a bare IPv6 literal or a bare
// name into host and port text (empty when absent).
void split_host_port(std::string_view s, std::string_view* host, std::string_view* port) {
  *port = {};
  if (!s.empty() && s.front() == '[') {
    const size_t close = s.find(']');
    if (close != std::string_view::npos && close + 1 < s.size() && s[close + 1] == ':') {
      *host = s.substr(0, close + 1);
      *port = s.substr(close + 2);
      return;
    }
    *host = s;
    return;
  }
  const size_t colon = s.find(':');
  if (colon != std::string_view::npos && s.find(':', colon + 1) == std::string_view::npos) {
    *host = s.substr(0, colon);
    *port = s.substr(colon + 1);
    return;
  }
  *host = s;  // a name, or an IPv6 literal without brackets (no port then)
}

std::string_view strip_dot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return s;
}

}  // namespace

bool parse_proxy_url(std::string_view url, UpstreamProxy* out, std::string* why) {
  const size_t sep = url.find("://");
  if (sep == std::string_view::npos) {
    *why = "must be an http:// URL with a port, e.g. http://proxy.example.org:3128";
    return false;
  }
  const std::string scheme = lower(url.substr(0, sep));
  if (scheme == "https") {
    *why = "TLS to the proxy (https://) is not supported; give its plain http:// address";
    return false;
  }
  if (scheme != "http") {
    *why = "only HTTP proxies (http://, CONNECT) are supported, not " + scheme + "://";
    return false;
  }
  std::string_view rest = url.substr(sep + 3);
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find_first_of("/?#") != std::string_view::npos) {
    *why = "a proxy URL has no path, query or fragment";
    return false;
  }
  std::string user, password;
  const size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    const std::string_view info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = info.find(':');
    const std::string_view u = info.substr(0, colon);
    const std::string_view p = colon == std::string_view::npos ? std::string_view() : info.substr(colon + 1);
    if (!percent_decode(u, &user) || !percent_decode(p, &password)) {
      *why = "bad %-escape in the URL's credentials";
      return false;
    }
    if (user.empty()) {
      *why = "the URL's credentials have no user name";
      return false;
    }
  }
  std::string_view host, port_text;
  split_host_port(rest, &host, &port_text);
  uint8_t bin[16];
  std::string h;
  if (!host.empty() && host.front() == '[') {
    if (host.back() != ']' || parse_addr(host, bin) != AF_INET6) {
      *why = "bad IPv6 address in the host";
      return false;
    }
    h = std::string(host.substr(1, host.size() - 2));
  } else if (parse_addr(host, bin) == AF_INET6) {
    *why = "an IPv6 address needs brackets, e.g. http://[fd00::1]:3128";
    return false;
  } else if (valid_name(strip_dot(host))) {
    h = lower(strip_dot(host));
  } else {
    *why = host.empty() ? "the URL has no host" : "bad host name";
    return false;
  }
  if (port_text.empty()) {
    *why = "the URL needs the proxy's port, e.g. http://proxy.example.org:3128";
    return false;
  }
  uint16_t port = 0;
  if (!parse_port(port_text, &port)) {
    *why = "port must be 1-65535";
    return false;
  }
  out->host = std::move(h);
  out->port = port;
  out->user = std::move(user);
  out->password = std::move(password);
  out->display = "http://" + (out->host.find(':') != std::string::npos ? "[" + out->host + "]" : out->host) +
                 ":" + std::to_string(port);
  return true;
}

bool parse_no_proxy_entry(std::string_view s, NoProxyEntry* out, std::string* why) {
  NoProxyEntry e;
  e.text = std::string(s);
  if (s.empty()) {
    *why = "empty entry";
    return false;
  }
  if (s.find_first_of(", \t") != std::string_view::npos) {
    *why = "one host, domain or network per entry (no commas or spaces)";
    return false;
  }
  if (s == "*") {
    *out = std::move(e);
    return true;
  }
  // CIDR: "addr/len", no port.
  if (const size_t slash = s.find('/'); slash != std::string_view::npos) {
    e.kind = NoProxyEntry::Kind::Cidr;
    e.family = parse_addr(s.substr(0, slash), e.addr);
    const std::string_view len = s.substr(slash + 1);
    const int max = e.family == AF_INET ? 32 : 128;
    int bits = 0;
    bool ok = e.family != 0 && !len.empty() && len.size() <= 3;
    for (size_t i = 0; ok && i < len.size(); ++i) {
      if (len[i] < '0' || len[i] > '9') ok = false;
      bits = bits * 10 + (len[i] - '0');
    }
    // A mapped address written with an IPv6 prefix length counts its bits
    // from the IPv4 part.
    if (ok && e.family == AF_INET && s.substr(0, slash).find(':') != std::string_view::npos) bits -= 96;
    if (!ok || bits < 0 || bits > max) {
      *why = "bad network: expected address/prefix such as 10.0.0.0/8 or fd00::/8";
      return false;
    }
    e.prefix = bits;
    *out = std::move(e);
    return true;
  }
  std::string_view host, port_text;
  split_host_port(s, &host, &port_text);
  if (!port_text.empty() && !parse_port(port_text, &e.port)) {
    *why = "port must be 1-65535";
    return false;
  }
  if (int fam = parse_addr(host, e.addr)) {
    e.kind = NoProxyEntry::Kind::Cidr;
    e.family = fam;
    e.prefix = fam == AF_INET ? 32 : 128;
    *out = std::move(e);
    return true;
  }
  if (!host.empty() && host.front() == '[') {
    *why = "bad IPv6 address";
    return false;
  }
  e.kind = NoProxyEntry::Kind::Domain;
  if (host.substr(0, 2) == "*.") {
    host.remove_prefix(2);
    e.kind = NoProxyEntry::Kind::Subdomains;
  } else if (!host.empty() && host.front() == '.') {
    host.remove_prefix(1);
    e.kind = NoProxyEntry::Kind::Subdomains;
  }
  host = strip_dot(host);
  if (!valid_name(host)) {
    *why = "expected a host name, .domain, IP address or network";
    return false;
  }
  e.name = lower(host);
  *out = std::move(e);
  return true;
}

bool no_proxy_match(const std::vector<NoProxyEntry>& list, std::string_view host, uint16_t port,
                    std::string_view dial) {
  if (list.empty()) return false;
  uint8_t host_addr[16], dial_addr[16];
  const int host_fam = parse_addr(host, host_addr);
  const int dial_fam = dial.empty() ? 0 : parse_addr(dial, dial_addr);
  const std::string name = host_fam ? std::string() : lower(strip_dot(host));
  for (const NoProxyEntry& e : list) {
    if (e.port != 0 && e.port != port) continue;
    switch (e.kind) {
      case NoProxyEntry::Kind::Any:
        return true;
      case NoProxyEntry::Kind::Domain:
      case NoProxyEntry::Kind::Subdomains: {
        if (name.empty()) break;
        if (e.kind == NoProxyEntry::Kind::Domain && name == e.name) return true;
        if (name.size() > e.name.size() + 1 &&
            name.compare(name.size() - e.name.size(), e.name.size(), e.name) == 0 &&
            name[name.size() - e.name.size() - 1] == '.')
          return true;
        break;
      }
      case NoProxyEntry::Kind::Cidr:
        if (host_fam == e.family && prefix_equal(host_addr, e.addr, e.prefix)) return true;
        if (dial_fam == e.family && prefix_equal(dial_addr, e.addr, e.prefix)) return true;
        break;
    }
  }
  return false;
}

bool parse_proxy_credentials(std::string_view text, std::string* user, std::string* password,
                             std::string* why) {
  const size_t nl = text.find('\n');
  std::string_view line = text.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (nl != std::string_view::npos && text.find_first_not_of("\r\n", nl) != std::string_view::npos) {
    *why = "expected one line, user:password";
    return false;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    *why = "expected user:password on the first line";
    return false;
  }
  for (char c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      *why = "control characters are not allowed";
      return false;
    }
  }
  *user = std::string(line.substr(0, colon));
  *password = std::string(line.substr(colon + 1));
  return true;
}

bool load_proxy_credentials(const std::string& path, std::string* user, std::string* password,
                            std::string* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    *why = path + ": " + std::strerror(errno);
    return false;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // The mode checked is the mode of the bytes read (fstat, not stat).
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    *why = path + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *why = path + ": not a regular file";
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    *why = path + ": group or others may access the proxy credentials; chmod 600 it";
    return false;
  }
  std::string text;
  char buf[1024];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = path + ": " + std::strerror(errno);
      return false;
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxCredentialsFile) {
      *why = path + ": over 4 KiB: not a credentials file";
      return false;
    }
  }
  std::string w;
  if (!parse_proxy_credentials(text, user, password, &w)) {
    *why = path + ": " + w;
    return false;
  }
  return true;
}

}  // namespace shoal::config
