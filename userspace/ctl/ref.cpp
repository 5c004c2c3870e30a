#include "shoal/ctl/ref.h"

#include <cstdlib>
#include <vector>

namespace shoal::ctl {

namespace {

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
bool is_lower_alnum(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'); }
bool is_alnum(char c) { return is_lower_alnum(c) || (c >= 'A' && c <= 'Z'); }

// One path component of a repository: lower-case letters and digits,
// separated by single '.', one or two '_', or any number of '-' (the
// distribution spec's grammar).
bool valid_component(std::string_view c, std::string* why) {
  if (c.empty()) {
    *why = "empty path component in the repository name";
    return false;
  }
  for (char ch : c) {
    if (ch >= 'A' && ch <= 'Z') {
      *why = "repository names are lower-case: \"" + std::string(c) + "\"";
      return false;
    }
    if (!is_lower_alnum(ch) && ch != '.' && ch != '_' && ch != '-') {
      *why =
          "invalid character '" + std::string(1, ch) + "' in repository component \"" + std::string(c) + "\"";
      return false;
    }
  }
  if (!is_lower_alnum(c.front()) || !is_lower_alnum(c.back())) {
    *why = "repository component \"" + std::string(c) + "\" must start and end with a letter or digit";
    return false;
  }
  for (size_t i = 0; i + 1 < c.size(); ++i) {
    if (c[i] == '.' && c[i + 1] == '.') {
      *why = "\"..\" in repository component \"" + std::string(c) + "\"";
      return false;
    }
  }
  if (c.find("___") != std::string_view::npos) {
    *why = "\"___\" in repository component \"" + std::string(c) + "\"";
    return false;
  }
  return true;
}

bool valid_tag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  if (!is_alnum(t[0]) && t[0] != '_') return false;
  for (char c : t)
    if (!is_alnum(c) && c != '_' && c != '.' && c != '-') return false;
  return true;
}

// host, host:port, [v6]:port; host is letters, digits, '.', '-'.
bool valid_registry(std::string_view r, std::string* why) {
  std::string_view host = r, port;
  if (!r.empty() && r[0] == '[') {
    size_t close = r.find(']');
    if (close == std::string_view::npos) {
      *why = "unterminated '[' in registry \"" + std::string(r) + "\"";
      return false;
    }
    host = r.substr(1, close - 1);
    std::string_view rest = r.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') {
        *why = "junk after ']' in registry \"" + std::string(r) + "\"";
        return false;
      }
      port = rest.substr(1);
      if (port.empty()) {
        *why = "empty port in registry \"" + std::string(r) + "\"";
        return false;
      }
    }
    for (char c : host)
      if (!is_lower_hex(c) && !(c >= 'A' && c <= 'F') && c != ':' && c != '.') {
        *why = "invalid IPv6 address in registry \"" + std::string(r) + "\"";
        return false;
      }
  } else {
    size_t colon = r.find(':');
    if (colon != std::string_view::npos) {
      host = r.substr(0, colon);
      port = r.substr(colon + 1);
      if (port.empty()) {
        *why = "empty port in registry \"" + std::string(r) + "\"";
        return false;
      }
    }
    if (host.empty()) {
      *why = "empty registry host";
      return false;
    }
    for (char c : host)
      if (!is_alnum(c) && c != '.' && c != '-') {
        *why = "invalid character '" + std::string(1, c) + "' in registry host \"" + std::string(host) + "\"";
        return false;
      }
    if (host.front() == '.' || host.front() == '-' || host.back() == '.' || host.back() == '-') {
      *why = "malformed registry host \"" + std::string(host) + "\"";
      return false;
    }
  }
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
        std::strtoul(std::string(port).c_str(), nullptr, 10) == 0 ||
        std::strtoul(std::string(port).c_str(), nullptr, 10) > 65535) {
      *why = "port of registry \"" + std::string(r) + "\" is not 1..65535";
      return false;
    }
  }
  return true;
}

}  // namespace

bool valid_sha256_digest(std::string_view d) {
  if (d.size() != 7 + 64 || d.substr(0, 7) != "sha256:") return false;
  for (char c : d.substr(7))
    if (!is_lower_hex(c)) return false;
  return true;
}

std::string ImageRef::str() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

bool parse_image_ref(std::string_view text, ImageRef* out, std::string* why) {
  ImageRef r;
  std::string_view s = text;
  size_t sep = s.find("://");
  if (sep != std::string_view::npos) {
    std::string_view scheme = s.substr(0, sep);
    if (scheme != "docker" && scheme != "oras") {
      *why = "unsupported scheme \"" + std::string(scheme) + "://\" (docker:// and oras:// are)";
      return false;
    }
    r.scheme = std::string(scheme);
    s = s.substr(sep + 3);
  }
  if (s.empty()) {
    *why = "empty image reference";
    return false;
  }
  for (char c : s)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      *why = "white space or a control character in the reference";
      return false;
    }
  size_t at = s.find('@');
  if (at != std::string_view::npos) {
    std::string_view d = s.substr(at + 1);
    if (d.substr(0, d.find(':')) != "sha256") {
      *why = "unsupported digest \"" + std::string(d) + "\" (only sha256:<64 hex> is)";
      return false;
    }
    if (!valid_sha256_digest(d)) {
      *why = "malformed digest \"" + std::string(d) + "\" (want sha256: and 64 lower-case hex digits)";
      return false;
    }
    r.digest = std::string(d);
    s = s.substr(0, at);
  }
  // A ':' after the last '/' starts the tag; one before it is a port.
  size_t slash = s.rfind('/');
  size_t colon = s.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    std::string_view t = s.substr(colon + 1);
    if (!valid_tag(t)) {
      *why = "malformed tag \"" + std::string(t) + "\"";
      return false;
    }
    r.tag = std::string(t);
    s = s.substr(0, colon);
  }
  std::string_view name = s;
  size_t first = name.find('/');
  std::string_view head = name.substr(0, first);
  if (first != std::string_view::npos &&
      (head.find('.') != std::string_view::npos || head.find(':') != std::string_view::npos ||
       head == "localhost" || (!head.empty() && head[0] == '['))) {
    if (!valid_registry(head, why)) return false;
    r.registry = std::string(head);
    name = name.substr(first + 1);
  } else {
    r.registry = "docker.io";
  }
  if (name.empty()) {
    *why = "no repository name in \"" + std::string(text) + "\"";
    return false;
  }
  size_t start = 0;
  for (;;) {
    size_t end = name.find('/', start);
    if (!valid_component(
            name.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start), why))
      return false;
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  r.repository = std::string(name);
  if (r.registry == "index.docker.io") r.registry = "docker.io";
  if (r.registry == "docker.io") {
    if (r.repository.find('/') == std::string::npos) r.repository = "library/" + r.repository;
    r.api_host = "registry-1.docker.io";
  } else {
    r.api_host = r.registry;
  }
  if (r.repository.size() > 255) {
    *why = "repository name longer than 255 characters";
    return false;
  }
  if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
  *out = std::move(r);
  return true;
}

std::string digest_in_url(std::string_view url) {
  size_t scheme = url.find("://");
  std::string_view rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  size_t path = rest.find('/');
  if (path == std::string_view::npos) return "";
  rest = rest.substr(path);
  rest = rest.substr(0, rest.find_first_of("?#"));
  std::string found;
  size_t start = 0;
  while (start < rest.size()) {
    size_t end = rest.find('/', start);
    std::string_view seg =
        rest.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (valid_sha256_digest(seg)) found = std::string(seg);
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return found;
}

}  // namespace shoal::ctl
