// A small blocking HTTP/1.1 client for shoalctl's get and preheat: every
// request goes through an HTTP proxy (the local shoald's explicit listener)
// when one is set, as an absolute-form request for http:// URLs and through a
// CONNECT tunnel for https:// ones, which shoald either hijacks (configured
// hosts: the leaf is signed by the site CA) or splices to the origin. TLS is
// Shoal's own tls::Session (mbedTLS handshake, libcrypto records) verified
// against the system store plus the given CA files. One connection per
// request (Connection: close). Redirects are followed (at most 10; the
// Authorization header is dropped when the host changes, as registry
// clients do, since object stores refuse it).
//
// Not thread-safe: one HttpClient per thread. Errors are values: false with
// *err saying what failed, e.g. "CONNECT registry.example.org:443 through
// 127.0.0.1:65001: 403 Forbidden" or "registry.example.org:443: TLS:
// certificate verification failed: ... (add the CA with --cacert)".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shoal/http/http.h"

namespace shoal::ctl {

struct HostPort {
  std::string host;  // name or IP literal (no brackets)
  uint16_t port = 0;
  std::string str() const;  // "host:port", "[v6]:port"
};

// "host:port", "[v6]:port", "http://host:port[/]"; false on anything else.
bool parse_host_port(const std::string& s, HostPort* out);

struct ClientOptions {
  std::optional<HostPort> proxy;      // none: connect to origins directly
  std::vector<std::string> ca_files;  // extra trust anchors (PEM files or directories)
  bool system_store = true;           // also trust $SSL_CERT_FILE or the Debian bundle
  int timeout_s = 60;                 // connect timeout and longest silence on a connection
  std::string user_agent = "shoalctl";
};

struct Response {
  int status = 0;
  std::string reason;
  std::string url;  // after redirects
  std::vector<http::Header> headers;
  int64_t content_length = -1;
  std::string body;  // the body of a non-2xx answer (first 64 KiB); empty for 2xx
  const std::string* find(const char* name) const;
};

class HttpClient {
 public:
  // nullptr with *err when a CA file cannot be read or TLS cannot be set up.
  static std::unique_ptr<HttpClient> create(const ClientOptions& opts, std::string* err);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Called once per final 2xx response before its body; return false to
  // stop (the request then fails with *err "stopped").
  using HeadFn = std::function<bool(const Response&)>;
  // Body bytes of a 2xx response as they arrive; return false to stop.
  using BodyFn = std::function<bool(const char* data, size_t len)>;

  // Sends method (GET or HEAD) to url with headers, following redirects.
  // True when a final response arrived whole (any status: the caller looks
  // at resp->status); false with *err on network, TLS, proxy or framing
  // failures, too many redirects, or a callback's stop.
  bool request(const std::string& method, const std::string& url, const std::vector<http::Header>& headers,
               Response* resp, const HeadFn& on_head, const BodyFn& on_body, std::string* err);

 private:
  struct Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal::ctl
