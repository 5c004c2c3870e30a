// shoalctl get URL -O FILE: a download through the local daemon, like
// Dragonfly's dfget. The bytes go to FILE.tmp, are checked against the
// digest the URL (or --digest) names, and only then renamed to FILE, so a
// FILE that exists is complete.
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "shoal/ctl/ctl.h"
#include "shoal/ctl/http_client.h"
#include "shoal/ctl/ref.h"
#include "shoal/util/hex.h"

namespace shoal::ctl {

namespace {

// The partial file, removed if the user interrupts the download.
char g_tmp_path[4096];

void on_interrupt(int sig) {
  if (g_tmp_path[0]) unlink(g_tmp_path);
  signal(sig, SIG_DFL);
  raise(sig);
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

int cmd_get(const Global& g, std::vector<std::string>& args) {
  std::string url, out, digest;
  ClientArgs ca;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto is = [&](const char* name) { return a == name || a.rfind(std::string(name) + "=", 0) == 0; };
    int shared = parse_client_option("get", args, &i, &ca);
    if (shared < 0) return kExitUsage;
    if (shared > 0) continue;
    if (is("-O") || is("--output")) {
      if (!option_value(args, &i, a[1] == 'O' ? "-O" : "--output", &out)) return kExitUsage;
    } else if (is("--digest")) {
      if (!option_value(args, &i, "--digest", &digest)) return kExitUsage;
      if (!valid_sha256_digest(digest))
        return usage_error("get", "--digest wants sha256:<64 lower-case hex>, got '" + digest + "'");
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("get", "unknown option '" + a + "'");
    } else if (url.empty()) {
      url = a;
    } else {
      return usage_error("get", "one URL only, got '" + a + "' too");
    }
  }
  if (url.empty()) return usage_error("get", "needs a URL");
  if (out.empty()) return usage_error("get", "needs -O FILE");
  http::Url u;
  if (!http::parse_absolute_url(url, &u)) return usage_error("get", "not an http:// or https:// URL: " + url);
  std::string from_url = digest_in_url(url);
  if (!digest.empty() && !from_url.empty() && digest != from_url)
    return usage_error("get", "--digest " + digest + " differs from the URL's " + from_url);
  if (digest.empty()) digest = from_url;

  Access acc;
  std::unique_ptr<HttpClient> client;
  if (int rc = make_client("get", g, &ca, std::string("shoalctl/") + SHOAL_VERSION, &acc, &client);
      rc != kExitOk)
    return rc;
  const std::vector<http::Header>& headers = ca.headers;
  const bool quiet = ca.quiet;
  std::string err;

  bool to_stdout = out == "-";
  std::string tmp = out + ".tmp";
  int fd = STDOUT_FILENO;
  if (!to_stdout) {
    fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      fprintf(stderr, "shoalctl get: cannot create %s: %s\n", tmp.c_str(), strerror(errno));
      return kExitLocalIo;
    }
    snprintf(g_tmp_path, sizeof g_tmp_path, "%s", tmp.c_str());
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    signal(SIGHUP, on_interrupt);
  }
  auto drop_tmp = [&]() {
    if (to_stdout) return;
    close(fd);
    unlink(tmp.c_str());
    g_tmp_path[0] = 0;
  };

  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
  std::unique_ptr<Progress> bar;
  uint64_t got = 0;
  int write_errno = 0;
  double t0 = now_seconds();
  Response resp;
  std::string label = to_stdout ? "stdout" : out.substr(out.rfind('/') + 1);
  bool ok = client->request(
      "GET", url, headers, &resp,
      [&](const Response& r) {
        bar = std::make_unique<Progress>(
            label, r.content_length > 0 ? static_cast<uint64_t>(r.content_length) : 0, !quiet && !g.json);
        return true;
      },
      [&](const char* d, size_t n) {
        if (!write_all(fd, d, n)) {
          write_errno = errno;
          return false;
        }
        EVP_DigestUpdate(md.get(), d, n);
        got += n;
        if (bar) bar->update(got);
        return true;
      },
      &err);
  if (bar) bar->finish();
  double secs = now_seconds() - t0;
  auto report_json = [&](bool success, const std::string& error, int code) {
    if (!g.json) return;
    Json o(cJSON_CreateObject(), cJSON_Delete);
    cJSON_AddBoolToObject(o.get(), "ok", success);
    cJSON_AddStringToObject(o.get(), "url", url.c_str());
    cJSON_AddStringToObject(o.get(), "file", out.c_str());
    cJSON_AddNumberToObject(o.get(), "status", resp.status);
    cJSON_AddNumberToObject(o.get(), "bytes", static_cast<double>(got));
    cJSON_AddNumberToObject(o.get(), "seconds", secs);
    cJSON_AddStringToObject(o.get(), "proxy", acc.proxy.c_str());
    if (!digest.empty()) cJSON_AddStringToObject(o.get(), "digest", digest.c_str());
    if (!error.empty()) cJSON_AddStringToObject(o.get(), "error", error.c_str());
    cJSON_AddNumberToObject(o.get(), "exit_code", code);
    print_json(o.get());
  };
  if (!ok) {
    drop_tmp();
    if (write_errno) {
      std::string e =
          "cannot write " + (to_stdout ? std::string("stdout") : tmp) + ": " + strerror(write_errno);
      fprintf(stderr, "shoalctl get: %s\n", e.c_str());
      report_json(false, e, kExitLocalIo);
      return kExitLocalIo;
    }
    fprintf(stderr, "shoalctl get: %s: %s\n", url.c_str(), err.c_str());
    report_json(false, err, kExitFailed);
    return kExitFailed;
  }
  if (resp.status / 100 != 2) {
    drop_tmp();
    std::string e = std::to_string(resp.status) + " " + resp.reason;
    if (!resp.body.empty()) e += ": " + excerpt(resp.body);
    fprintf(stderr, "shoalctl get: %s: %s\n", url.c_str(), e.c_str());
    report_json(false, e, kExitFailed);
    return kExitFailed;
  }
  unsigned char h[32];
  unsigned int hl = 0;
  EVP_DigestFinal_ex(md.get(), h, &hl);
  std::string actual = "sha256:" + util::hex(h, hl);
  if (!digest.empty() && actual != digest) {
    drop_tmp();
    std::string e = "digest mismatch: the body hashes to " + actual + ", the URL names " + digest;
    fprintf(stderr, "shoalctl get: %s: %s\n", url.c_str(), e.c_str());
    report_json(false, e, kExitDigest);
    return kExitDigest;
  }
  if (!to_stdout) {
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp.c_str(), out.c_str()) != 0) {
      std::string e = "cannot save " + out + ": " + strerror(errno);
      unlink(tmp.c_str());
      fprintf(stderr, "shoalctl get: %s\n", e.c_str());
      report_json(false, e, kExitLocalIo);
      return kExitLocalIo;
    }
    g_tmp_path[0] = 0;
  }
  if (g.json) {
    report_json(true, "", kExitOk);
  } else if (!quiet) {
    fprintf(stderr, "saved %s: %s in %.2f s (%s/s), %s%s\n", to_stdout ? "stdout" : out.c_str(),
            human_bytes(got).c_str(), secs,
            human_bytes(secs > 0 ? static_cast<uint64_t>(static_cast<double>(got) / secs) : got).c_str(),
            actual.c_str(), digest.empty() ? "" : " (verified)");
  }
  return kExitOk;
}

}  // namespace shoal::ctl
