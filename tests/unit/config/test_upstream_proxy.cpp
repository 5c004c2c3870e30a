// Unit tests for the site proxy settings (upstreamProxy): URL parsing with
// and without credentials, noProxy entries and matching (names, domains,
// addresses, networks, ports, the transparent dial address), the credentials
// file's format and mode, and the config keys' errors with their positions.
// Run from test_config.cpp's main as a group of their own.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "shoal/config/config.h"
#include "shoal/config/upstream_proxy.h"
// clang-format off
#include "../cmocka_cpp.h"
// clang-format on

using shoal::config::NoProxyEntry;
using shoal::config::UpstreamProxy;

namespace {

std::string g_dir;  // a private directory for credentials files

bool url_ok(const char* url, UpstreamProxy* p) {
  std::string why;
  return shoal::config::parse_proxy_url(url, p, &why);
}

std::string url_error(const char* url) {
  UpstreamProxy p;
  std::string why;
  assert_false(shoal::config::parse_proxy_url(url, &p, &why));
  assert_false(why.empty());
  return why;
}

std::vector<NoProxyEntry> list(std::initializer_list<const char*> entries) {
  std::vector<NoProxyEntry> out;
  for (const char* e : entries) {
    NoProxyEntry n;
    std::string why;
    if (!shoal::config::parse_no_proxy_entry(e, &n, &why)) {
      print_error("entry %s: %s\n", e, why.c_str());
      fail();
    }
    out.push_back(n);
  }
  return out;
}

bool entry_ok(const char* e) {
  NoProxyEntry n;
  std::string why;
  return shoal::config::parse_no_proxy_entry(e, &n, &why);
}

void test_proxy_url(void**) {
  UpstreamProxy p;
  assert_true(url_ok("http://proxy.example.org:3128", &p));
  assert_string_equal(p.host.c_str(), "proxy.example.org");
  assert_int_equal(p.port, 3128);
  assert_true(p.user.empty());
  assert_string_equal(p.display.c_str(), "http://proxy.example.org:3128");

  p = UpstreamProxy{};
  assert_true(url_ok("HTTP://Proxy.Example.ORG.:8080/", &p));
  assert_string_equal(p.host.c_str(), "proxy.example.org");
  assert_int_equal(p.port, 8080);

  p = UpstreamProxy{};
  assert_true(url_ok("http://[fd00::5]:3128", &p));
  assert_string_equal(p.host.c_str(), "fd00::5");
  assert_string_equal(p.display.c_str(), "http://[fd00::5]:3128");

  p = UpstreamProxy{};
  assert_true(url_ok("http://10.0.0.1:80", &p));
  assert_string_equal(p.host.c_str(), "10.0.0.1");

  // Credentials: percent-decoded, ':' and '@' allowed in the password, and
  // never part of the display form.
  p = UpstreamProxy{};
  assert_true(url_ok("http://al%69ce:p%40ss:w@rd@proxy:3128", &p));
  assert_string_equal(p.user.c_str(), "alice");
  assert_string_equal(p.password.c_str(), "p@ss:w@rd");
  assert_string_equal(p.host.c_str(), "proxy");
  assert_string_equal(p.display.c_str(), "http://proxy:3128");
  p = UpstreamProxy{};
  assert_true(url_ok("http://bob@proxy:3128", &p));
  assert_string_equal(p.user.c_str(), "bob");
  assert_true(p.password.empty());
}

void test_proxy_url_errors(void**) {
  url_error("proxy.example.org:3128");  // no scheme
  assert_true(url_error("https://proxy:3128").find("TLS") != std::string::npos);
  assert_true(url_error("socks5://proxy:1080").find("socks5") != std::string::npos);
  assert_true(url_error("http://proxy.example.org").find("port") != std::string::npos);
  url_error("http://proxy:0");
  url_error("http://proxy:65536");
  url_error("http://proxy:31x8");
  url_error("http://proxy:3128/path");
  url_error("http://proxy:3128?q");
  url_error("http://:3128");
  url_error("http://bad_host!:3128");
  url_error("http://fd00::5:3128");  // IPv6 without brackets
  url_error("http://[fd00::zz]:3128");
  url_error("http://:secret@proxy:3128");  // no user
  url_error("http://a%zzb:x@proxy:3128");  // bad escape
  // A bad URL's message never repeats its credentials.
  std::string why = url_error("http://alice:hunter2@proxy");
  assert_true(why.find("hunter2") == std::string::npos);
  why = url_error("http://alice:hunter2@proxy:99999");
  assert_true(why.find("hunter2") == std::string::npos);
}

void test_no_proxy_entries(void**) {
  assert_true(entry_ok("*"));
  assert_true(entry_ok("registry.local"));
  assert_true(entry_ok(".example.org"));
  assert_true(entry_ok("*.example.org"));
  assert_true(entry_ok("registry.local:5000"));
  assert_true(entry_ok("10.0.0.0/8"));
  assert_true(entry_ok("10.1.2.3"));
  assert_true(entry_ok("fd00::/8"));
  assert_true(entry_ok("fd00::1"));
  assert_true(entry_ok("[fd00::1]:443"));
  assert_true(entry_ok("::ffff:10.0.0.0/104"));
  assert_false(entry_ok(""));
  assert_false(entry_ok("a,b"));
  assert_false(entry_ok("a b"));
  assert_false(entry_ok("10.0.0.0/33"));
  assert_false(entry_ok("fd00::/129"));
  assert_false(entry_ok("10.0.0.0/"));
  assert_false(entry_ok("10.0.0.0/x"));
  assert_false(entry_ok("example.org/8"));
  assert_false(entry_ok("host:0"));
  assert_false(entry_ok("host:70000"));
  assert_false(entry_ok("[fd00::zz]"));
  assert_false(entry_ok("bad..name"));
  assert_false(entry_ok("."));
  assert_false(entry_ok("http://x"));
}

void test_no_proxy_match(void**) {
  using shoal::config::no_proxy_match;
  assert_false(no_proxy_match({}, "anything", 443));
  assert_true(no_proxy_match(list({"*"}), "anything", 443));

  // "name": the host and names below it, not names that merely end alike.
  const auto dom = list({"Example.ORG."});
  assert_true(no_proxy_match(dom, "example.org", 443));
  assert_true(no_proxy_match(dom, "EXAMPLE.org.", 443));
  assert_true(no_proxy_match(dom, "registry.example.org", 443));
  assert_false(no_proxy_match(dom, "badexample.org", 443));
  assert_false(no_proxy_match(dom, "example.org.evil", 443));

  // ".name" and "*.name": below it only.
  for (const char* e : {".example.org", "*.example.org"}) {
    const auto sub = list({e});
    assert_false(no_proxy_match(sub, "example.org", 443));
    assert_true(no_proxy_match(sub, "a.b.example.org", 443));
    assert_false(no_proxy_match(sub, "xexample.org", 443));
  }

  // Ports.
  const auto port = list({"registry.local:5000", "[fd00::1]:443"});
  assert_true(no_proxy_match(port, "registry.local", 5000));
  assert_false(no_proxy_match(port, "registry.local", 443));
  assert_true(no_proxy_match(port, "fd00::1", 443));
  assert_true(no_proxy_match(port, "[fd00::1]", 443));
  assert_false(no_proxy_match(port, "fd00::1", 80));

  // Addresses and networks, on the host and on the dial address; IPv4
  // inside IPv6 compares as IPv4; names never match networks.
  const auto nets = list({"10.0.0.0/8", "192.168.1.7", "fd00::/8"});
  assert_true(no_proxy_match(nets, "10.200.3.4", 443));
  assert_false(no_proxy_match(nets, "11.0.0.1", 443));
  assert_true(no_proxy_match(nets, "192.168.1.7", 443));
  assert_false(no_proxy_match(nets, "192.168.1.8", 443));
  assert_true(no_proxy_match(nets, "fd12::1", 443));
  assert_true(no_proxy_match(nets, "[fdff::1]", 443));
  assert_false(no_proxy_match(nets, "fe80::1", 443));
  assert_true(no_proxy_match(nets, "::ffff:10.1.1.1", 443));
  assert_false(no_proxy_match(nets, "registry.example.org", 443));
  assert_true(no_proxy_match(nets, "registry.example.org", 443, "10.9.9.9"));
  assert_true(no_proxy_match(nets, "registry.example.org", 443, "::ffff:10.9.9.9"));
  assert_false(no_proxy_match(nets, "registry.example.org", 443, "8.8.8.8"));
  // An odd prefix length.
  const auto odd = list({"172.16.0.0/12", "::ffff:10.0.0.0/104"});
  assert_true(no_proxy_match(odd, "172.31.255.255", 443));
  assert_false(no_proxy_match(odd, "172.32.0.0", 443));
  assert_true(no_proxy_match(odd, "10.3.3.3", 443));
  // An address entry is not a name entry: "10.0.0.1" does not match
  // "x.10.0.0.1".
  assert_false(no_proxy_match(list({"10.0.0.1"}), "x.10.0.0.1", 443));
}

void test_credentials(void**) {
  std::string u, p, why;
  assert_true(shoal::config::parse_proxy_credentials("alice:s3:cret\n", &u, &p, &why));
  assert_string_equal(u.c_str(), "alice");
  assert_string_equal(p.c_str(), "s3:cret");
  assert_true(shoal::config::parse_proxy_credentials("bob:\r\n", &u, &p, &why));
  assert_string_equal(u.c_str(), "bob");
  assert_string_equal(p.c_str(), "");
  assert_false(shoal::config::parse_proxy_credentials("nocolon\n", &u, &p, &why));
  assert_false(shoal::config::parse_proxy_credentials(":pass\n", &u, &p, &why));
  assert_false(shoal::config::parse_proxy_credentials("a:b\nc:d\n", &u, &p, &why));
  assert_false(shoal::config::parse_proxy_credentials("a:b\tc\n", &u, &p, &why));
  assert_true(why.find("b\tc") == std::string::npos);

  const std::string f = g_dir + "/cred";
  std::ofstream(f) << "carol:pw\n";
  chmod(f.c_str(), 0644);
  assert_false(shoal::config::load_proxy_credentials(f, &u, &p, &why));
  assert_true(why.find("chmod 600") != std::string::npos);
  chmod(f.c_str(), 0600);
  assert_true(shoal::config::load_proxy_credentials(f, &u, &p, &why));
  assert_string_equal(u.c_str(), "carol");
  assert_string_equal(p.c_str(), "pw");
  assert_false(shoal::config::load_proxy_credentials(g_dir + "/missing", &u, &p, &why));
  assert_true(why.find("missing") != std::string::npos);
  assert_false(shoal::config::load_proxy_credentials(g_dir, &u, &p, &why));  // a directory
}

shoal::config::LoadResult load(const std::string& yaml) {
  return shoal::config::load_string(yaml, "up.yaml", g_dir);
}

bool has_error(const shoal::config::LoadResult& r, const char* text, int line) {
  for (const auto& d : r.diags)
    if (!d.warning && d.str().find(text) != std::string::npos && d.line == line) return true;
  print_error("no error \"%s\" at line %d in:\n%s\n", text, line, r.errors_text().c_str());
  return false;
}

void test_config_keys(void**) {
  // Off by default.
  auto r = load("workers: 1\n");
  assert_true(r.ok());
  assert_false(r.config->upstream_proxy.enabled);

  std::ofstream(g_dir + "/proxy.cred") << "dave:pw\n";
  chmod((g_dir + "/proxy.cred").c_str(), 0600);
  r = load(
      "upstreamProxy:\n"
      "  url: http://proxy.site.example:3128\n"
      "  noProxy: [localhost, 127.0.0.0/8, .cluster.example, \"[::1]:443\"]\n"
      "  credentialsFile: proxy.cred\n");
  assert_true(r.ok());
  const auto& up = r.config->upstream_proxy;
  assert_true(up.enabled);
  assert_string_equal(up.host.c_str(), "proxy.site.example");
  assert_int_equal(up.port, 3128);
  assert_int_equal(up.no_proxy.size(), 4);
  assert_string_equal(up.credentials_file.c_str(), (g_dir + "/proxy.cred").c_str());

  // Each problem at its own position, all at once; the password is not
  // quoted back.
  r = load(
      "upstreamProxy:\n"
      "  url: https://alice:hunter2@proxy:3128\n"
      "  noProxy:\n"
      "    - ok.example\n"
      "    - 10.0.0.0/40\n"
      "    - \"a, b\"\n"
      "  credentialsFile: missing.cred\n"
      "  bogus: 1\n");
  assert_false(r.ok());
  assert_true(has_error(r, "up.yaml:2:8: upstreamProxy.url: TLS to the proxy", 2));
  assert_true(has_error(r, "upstreamProxy.noProxy[1]: bad network", 5));
  assert_true(has_error(r, "upstreamProxy.noProxy[2]: one host", 6));
  assert_true(has_error(r, "upstreamProxy.bogus: unknown key", 8));
  assert_true(r.errors_text().find("hunter2") == std::string::npos);

  // Credentials twice; an unreadable file (check_resources).
  r = load(
      "upstreamProxy:\n"
      "  url: http://alice:pw@proxy:3128\n"
      "  credentialsFile: proxy.cred\n");
  assert_true(has_error(r, "upstreamProxy.credentialsFile: the url already carries credentials", 3));
  r = load(
      "upstreamProxy:\n"
      "  url: http://proxy:3128\n"
      "  credentialsFile: missing.cred\n");
  assert_true(
      has_error(r, "up.yaml:3:20: upstreamProxy.credentialsFile: cannot use the proxy credentials", 3));

  // No url: the rest is a warning, not an error.
  r = load("upstreamProxy:\n  noProxy: [a.example]\n");
  assert_true(r.ok());
  assert_false(r.config->upstream_proxy.enabled);
  bool warned = false;
  for (const auto& d : r.diags) warned |= d.warning && d.path == "upstreamProxy.url";
  assert_true(warned);
}

int setup(void**) {
  char tmpl[] = "/tmp/shoal-test-upstream-proxy.XXXXXX";
  if (!mkdtemp(tmpl)) return -1;
  g_dir = tmpl;
  return 0;
}

int teardown(void**) {
  const std::string cmd = "rm -rf '" + g_dir + "'";
  return std::system(cmd.c_str()) == 0 ? 0 : -1;
}

}  // namespace

int run_upstream_proxy_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_proxy_url),        cmocka_unit_test(test_proxy_url_errors),
      cmocka_unit_test(test_no_proxy_entries), cmocka_unit_test(test_no_proxy_match),
      cmocka_unit_test(test_credentials),      cmocka_unit_test(test_config_keys),
  };
  return cmocka_run_group_tests_name("config/upstream_proxy", tests, setup, teardown);
}
