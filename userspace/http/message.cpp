// Message helpers that need no parser state: errors, header lookup, URL and
// authority splitting, head serialization and canned responses. All pure and
// callable from any thread.

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "shoal/http/http.h"

namespace shoal::http {
namespace {

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool is_alnum(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// RFC 3986 reg-name: unreserved / pct-encoded / sub-delims. '%' is let
// through without checking its two hex digits; a wrong escape only makes a
// name that resolves nowhere.
bool is_reg_name_char(char c) {
  return is_alnum(c) || (c != '\0' && std::strchr("-._~%!$&'()*+,;=", c) != nullptr);
}

// Parses 1..65535 from all of s; leading zeros allowed, at most 5 digits.
bool parse_port(std::string_view s, uint16_t* out) {
  if (s.empty() || s.size() > 5) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v == 0 || v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

// Splits an authority "host[:port]" or "[v6][:port]". Userinfo is refused:
// a proxy target must not carry credentials (and "a@b" is a classic
// host-confusion trick). An empty port ("host:") is accepted as absent only
// when the port is optional.
bool split_authority(std::string_view a, bool port_required, std::string* host, uint16_t* port, bool* v6) {
  if (a.empty() || a.find('@') != std::string_view::npos) return false;
  std::string_view h, p;
  bool has_colon = false;
  if (a.front() == '[') {
    size_t close = a.find(']');
    if (close == std::string_view::npos) return false;
    h = a.substr(1, close - 1);
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      has_colon = true;
      p = rest.substr(1);
    }
    // inet_pton needs a terminated string; addresses are short.
    char buf[INET6_ADDRSTRLEN + 1];
    if (h.empty() || h.size() >= sizeof buf) return false;
    h.copy(buf, h.size());
    buf[h.size()] = '\0';
    unsigned char addr[16];
    if (inet_pton(AF_INET6, buf, addr) != 1) return false;
    *v6 = true;
  } else {
    size_t colon = a.rfind(':');
    if (colon != std::string_view::npos) {
      has_colon = true;
      h = a.substr(0, colon);
      p = a.substr(colon + 1);
    } else {
      h = a;
    }
    if (h.empty()) return false;
    for (char c : h)
      if (!is_reg_name_char(c)) return false;  // also refuses a second ':'
    *v6 = false;
  }
  *port = 0;
  if (has_colon && !p.empty()) {
    if (!parse_port(p, port)) return false;
  } else if (port_required) {
    return false;
  }
  host->assign(h.data(), h.size());
  return true;
}

void append_headers(std::string& out, const std::vector<Header>& headers) {
  for (const Header& h : headers) {
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
  out += "\r\n";
}

size_t headers_size(const std::vector<Header>& headers) {
  size_t n = 2;
  for (const Header& h : headers) n += h.name.size() + h.value.size() + 4;
  return n;
}

}  // namespace

const char* to_string(Error e) {
  switch (e) {
    case Error::None:
      return "none";
    case Error::BadMessage:
      return "malformed message";
    case Error::HeadersTooLarge:
      return "header block too large";
    case Error::AmbiguousLength:
      return "ambiguous message length";
    case Error::ObsFold:
      return "obsolete line folding";
    case Error::BadHeaderValue:
      return "CR, LF or NUL in a header line";
    case Error::UnsupportedTE:
      return "unsupported transfer coding";
    case Error::Callback:
      return "rejected by handler";
  }
  return "unknown";
}

int status_for(Error e) {
  switch (e) {
    case Error::None:
      return 200;
    case Error::HeadersTooLarge:
      return 431;
    case Error::UnsupportedTE:
      return 501;
    case Error::Callback:
      return 500;
    case Error::BadMessage:
    case Error::AmbiguousLength:
    case Error::ObsFold:
    case Error::BadHeaderValue:
      return 400;
  }
  return 400;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

const std::string* MessageHead::find(std::string_view name) const {
  for (const Header& h : headers)
    if (iequals(h.name, name)) return &h.value;
  return nullptr;
}

std::vector<const std::string*> MessageHead::find_all(std::string_view name) const {
  std::vector<const std::string*> out;
  for (const Header& h : headers)
    if (iequals(h.name, name)) out.push_back(&h.value);
  return out;
}

bool parse_absolute_url(std::string_view target, Url* out) {
  std::string_view rest;
  std::string scheme;
  if (target.size() > 7 && iequals(target.substr(0, 7), "http://")) {
    scheme = "http";
    rest = target.substr(7);
  } else if (target.size() > 8 && iequals(target.substr(0, 8), "https://")) {
    scheme = "https";
    rest = target.substr(8);
  } else {
    return false;
  }
  size_t hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  size_t end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, end);
  std::string_view path = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  Url u;
  if (!split_authority(authority, false, &u.host, &u.port, &u.ipv6_literal)) return false;
  u.scheme = std::move(scheme);
  if (path.empty() || path.front() == '?') u.path = "/";
  u.path.append(path.data(), path.size());
  *out = std::move(u);
  return true;
}

bool parse_authority(std::string_view authority, std::string* host, uint16_t* port, bool* ipv6_literal) {
  std::string h;
  uint16_t p = 0;
  bool v6 = false;
  if (!split_authority(authority, true, &h, &p, &v6)) return false;
  *host = std::move(h);
  *port = p;
  if (ipv6_literal) *ipv6_literal = v6;
  return true;
}

std::string serialize_request_head(std::string_view method, std::string_view target,
                                   const std::vector<Header>& headers) {
  std::string out;
  out.reserve(method.size() + target.size() + 11 + headers_size(headers));
  out.append(method.data(), method.size());
  out += ' ';
  out.append(target.data(), target.size());
  out += " HTTP/1.1\r\n";
  append_headers(out, headers);
  return out;
}

std::string serialize_response_head(int status, std::string_view reason, const std::vector<Header>& headers) {
  std::string out;
  out.reserve(reason.size() + 15 + headers_size(headers));
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  out.append(reason.data(), reason.size());
  out += "\r\n";
  append_headers(out, headers);
  return out;
}

std::string simple_response(int status, std::string_view body, bool keep_alive,
                            const std::vector<Header>& extra) {
  std::vector<Header> headers;
  headers.reserve(3 + extra.size());
  headers.push_back({"Content-Type", "text/plain"});
  headers.push_back({"Content-Length", std::to_string(body.size() + 1)});
  if (!keep_alive) headers.push_back({"Connection", "close"});
  headers.insert(headers.end(), extra.begin(), extra.end());
  std::string out = serialize_response_head(status, reason_phrase(status), headers);
  out.append(body.data(), body.size());
  out += '\n';
  return out;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 407:
      return "Proxy Authentication Required";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

bool is_hop_by_hop(std::string_view name, const MessageHead& head) {
  static constexpr std::string_view kFixed[] = {"Connection",
                                                "Keep-Alive",
                                                "Proxy-Connection",
                                                "Proxy-Authorization",
                                                "Proxy-Authenticate",
                                                "TE",
                                                "Trailer",
                                                "Transfer-Encoding",
                                                "Upgrade"};
  for (std::string_view f : kFixed)
    if (iequals(name, f)) return true;
  // RFC 9110 section 7.6.1: every option named in Connection is hop-by-hop.
  for (const Header& h : head.headers) {
    if (!iequals(h.name, "Connection")) continue;
    std::string_view v = h.value;
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view tok = v.substr(0, comma);
      v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
      while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
      if (!tok.empty() && iequals(tok, name)) return true;
    }
  }
  return false;
}

}  // namespace shoal::http
