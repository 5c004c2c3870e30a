// Unit tests for shoalctl's pure parts: image references, digests in URLs,
// registry challenges, token answers and manifests, command-line helpers.
#include <cstring>
#include <string>

#include "../cmocka_cpp.h"
#include "shoal/ctl/ctl.h"
#include "shoal/ctl/http_client.h"
#include "shoal/ctl/ref.h"
#include "shoal/ctl/registry.h"

namespace {

using namespace shoal::ctl;

const std::string kHex = "2cc3f0f242aa266194ea2a5f10a97aa276120aa08d0a4bdd442b990fa4168cdd";
const std::string kDigest = "sha256:" + kHex;

ImageRef parse_ok(const std::string& s) {
  ImageRef r;
  std::string why;
  bool ok = parse_image_ref(s, &r, &why);
  if (!ok) fprintf(stderr, "unexpected rejection of %s: %s\n", s.c_str(), why.c_str());
  assert_true(ok);
  return r;
}

std::string parse_bad(const std::string& s) {
  ImageRef r;
  std::string why;
  bool ok = parse_image_ref(s, &r, &why);
  if (ok) fprintf(stderr, "unexpected acceptance of %s\n", s.c_str());
  assert_false(ok);
  assert_false(why.empty());
  return why;
}

void test_ref_forms(void**) {
  ImageRef r = parse_ok("docker://registry.example.org/lab/app:1.2");
  assert_string_equal(r.scheme.c_str(), "docker");
  assert_string_equal(r.registry.c_str(), "registry.example.org");
  assert_string_equal(r.api_host.c_str(), "registry.example.org");
  assert_string_equal(r.repository.c_str(), "lab/app");
  assert_string_equal(r.tag.c_str(), "1.2");
  assert_string_equal(r.digest.c_str(), "");
  assert_string_equal(r.reference().c_str(), "1.2");
  assert_string_equal(r.str().c_str(), "registry.example.org/lab/app:1.2");

  r = parse_ok("oras://registry.shoal.test:5000/sif/hello:1");
  assert_string_equal(r.scheme.c_str(), "oras");
  assert_string_equal(r.registry.c_str(), "registry.shoal.test:5000");
  assert_string_equal(r.api_host.c_str(), "registry.shoal.test:5000");
  assert_string_equal(r.repository.c_str(), "sif/hello");
  assert_string_equal(r.tag.c_str(), "1");

  r = parse_ok("registry.example.org/lab/app@" + kDigest);
  assert_string_equal(r.scheme.c_str(), "");
  assert_string_equal(r.tag.c_str(), "");
  assert_string_equal(r.digest.c_str(), kDigest.c_str());
  assert_string_equal(r.reference().c_str(), kDigest.c_str());

  // Tag and digest: the digest decides what is fetched.
  r = parse_ok("registry.example.org/lab/app:1.2@" + kDigest);
  assert_string_equal(r.tag.c_str(), "1.2");
  assert_string_equal(r.reference().c_str(), kDigest.c_str());

  // A port is not a tag; no tag means latest.
  r = parse_ok("localhost:5000/app");
  assert_string_equal(r.registry.c_str(), "localhost:5000");
  assert_string_equal(r.repository.c_str(), "app");
  assert_string_equal(r.tag.c_str(), "latest");
  r = parse_ok("localhost/app");
  assert_string_equal(r.registry.c_str(), "localhost");
  r = parse_ok("[::1]:5000/a/b:c");
  assert_string_equal(r.registry.c_str(), "[::1]:5000");
  assert_string_equal(r.repository.c_str(), "a/b");
  assert_string_equal(r.tag.c_str(), "c");
}

void test_ref_docker_hub(void**) {
  ImageRef r = parse_ok("alpine");
  assert_string_equal(r.registry.c_str(), "docker.io");
  assert_string_equal(r.api_host.c_str(), "registry-1.docker.io");
  assert_string_equal(r.repository.c_str(), "library/alpine");
  assert_string_equal(r.tag.c_str(), "latest");
  r = parse_ok("docker://rocker/r-ver:4.3");
  assert_string_equal(r.registry.c_str(), "docker.io");
  assert_string_equal(r.repository.c_str(), "rocker/r-ver");
  assert_string_equal(r.tag.c_str(), "4.3");
  r = parse_ok("index.docker.io/ubuntu:22.04");
  assert_string_equal(r.registry.c_str(), "docker.io");
  assert_string_equal(r.repository.c_str(), "library/ubuntu");
  // Separators the distribution grammar allows.
  parse_ok("r.test/a_b/c__d/e-f/g---h/i.j:t_1.-x");
}

void test_ref_rejects(void**) {
  parse_bad("");
  parse_bad("docker://");
  parse_bad("http://registry.example.org/app:1");
  parse_bad("library://sylabs/app:1");
  parse_bad("registry.example.org/Lab/app:1");  // upper case
  parse_bad("registry.example.org//app:1");     // empty component
  parse_bad("registry.example.org/app/:1");     // empty component
  parse_bad("registry.example.org/-app:1");     // starts with a separator
  parse_bad("registry.example.org/a..b:1");     // double dot
  parse_bad("registry.example.org/a___b:1");    // triple underscore
  parse_bad("registry.example.org/app:");       // empty tag
  parse_bad("registry.example.org/app:-x");     // tag starts with '-'
  parse_bad("registry.example.org/app:" + std::string(129, 'a'));
  parse_bad("registry.example.org/app@sha256:abc");  // short digest
  parse_bad("registry.example.org/app@sha512:" + kHex + kHex);
  std::string upper = kDigest;
  upper[10] = 'A';
  parse_bad("registry.example.org/app@" + upper);
  parse_bad("registry.example.org:0/app:1");
  parse_bad("registry.example.org:70000/app:1");
  parse_bad("registry.example.org:/app:1");
  parse_bad("reg istry.example.org/app:1");
  parse_bad("registry.example.org/app:1\n");
  parse_bad("bad_host.example.org/app:1");
  assert_non_null(strstr(parse_bad("registry.example.org/app@md5:" + kHex).c_str(), "sha256"));
}

void test_digest_in_url(void**) {
  assert_string_equal(digest_in_url("https://r.test/v2/library/hello/blobs/" + kDigest).c_str(),
                      kDigest.c_str());
  assert_string_equal(digest_in_url("https://r.test/v2/a/manifests/" + kDigest + "?x=1#y").c_str(),
                      kDigest.c_str());
  assert_string_equal(digest_in_url("https://r.test/v2/a/manifests/latest").c_str(), "");
  assert_string_equal(digest_in_url("https://r.test/v2/a/blobs/" + kDigest + "x").c_str(), "");
  assert_string_equal(digest_in_url("https://r.test/v2/a/blobs/sha256:" + kHex.substr(2)).c_str(), "");
  // In the query only: not the object's digest.
  assert_string_equal(digest_in_url("https://r.test/data?d=" + kDigest).c_str(), "");
  assert_string_equal(digest_in_url("https://" + kDigest).c_str(), "");
  assert_true(valid_sha256_digest(kDigest));
  assert_false(valid_sha256_digest("sha256:" + kHex + "0"));
  assert_false(valid_sha256_digest(kHex));
}

void test_www_authenticate(void**) {
  Challenge c;
  assert_true(parse_www_authenticate(
      "Bearer realm=\"https://auth.test/token\",service=\"registry.test\",scope=\"repository:a/b:pull\"",
      &c));
  assert_string_equal(c.scheme.c_str(), "Bearer");
  assert_string_equal(c.params["realm"].c_str(), "https://auth.test/token");
  assert_string_equal(c.params["service"].c_str(), "registry.test");
  assert_string_equal(c.params["scope"].c_str(), "repository:a/b:pull");
  assert_string_equal(token_url(c, "ignored").c_str(),
                      "https://auth.test/token?service=registry.test&scope=repository%3Aa%2Fb%3Apull");

  // Several challenges, spaces, escapes, token values, upper-case names.
  assert_true(parse_www_authenticate(
      "Basic realm=\"x\", Bearer Realm=\"https://a.test/t?x=1\" , Service=svc, error=\"a\\\"b\"", &c));
  assert_string_equal(c.scheme.c_str(), "Bearer");
  assert_string_equal(c.params["realm"].c_str(), "https://a.test/t?x=1");
  assert_string_equal(c.params["service"].c_str(), "svc");
  assert_string_equal(c.params["error"].c_str(), "a\"b");
  // No scope in the challenge: the repository's pull scope.
  assert_string_equal(token_url(c, "lab/app").c_str(),
                      "https://a.test/t?x=1&service=svc&scope=repository%3Alab%2Fapp%3Apull");

  assert_true(parse_www_authenticate("Basic realm=\"Registry\"", &c));
  assert_string_equal(c.scheme.c_str(), "Basic");
  c.params.clear();
  assert_string_equal(token_url(c, "x").c_str(), "");

  assert_false(parse_www_authenticate("", &c));
  assert_false(parse_www_authenticate("Bearer realm=\"unterminated", &c));
  assert_false(parse_www_authenticate("=x", &c));
}

void test_token_response(void**) {
  std::string t;
  assert_true(parse_token_response("{\"token\":\"abc\",\"access_token\":\"def\"}", &t));
  assert_string_equal(t.c_str(), "abc");
  assert_true(parse_token_response("{\"access_token\":\"def\",\"expires_in\":300}", &t));
  assert_string_equal(t.c_str(), "def");
  assert_false(parse_token_response("{\"token\":\"\"}", &t));
  assert_false(parse_token_response("{}", &t));
  assert_false(parse_token_response("not json", &t));
  assert_false(parse_token_response("[\"token\"]", &t));
}

std::string desc(const std::string& mt, const std::string& digest, long size, const std::string& extra = "") {
  return "{\"mediaType\":\"" + mt + "\",\"digest\":\"" + digest + "\",\"size\":" + std::to_string(size) +
         extra + "}";
}

void test_manifest_image(void**) {
  std::string l2 = "sha256:" + std::string(64, 'b');
  std::string body =
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":" +
      desc("application/vnd.oci.image.config.v1+json", kDigest, 2) + ",\"layers\":[" +
      desc("application/vnd.oci.image.layer.v1.tar+gzip", l2, 8388608) + "," +
      desc("application/vnd.oci.image.layer.v1.tar", "sha256:" + std::string(64, 'c'), 10,
           ",\"urls\":[\"https://x.test/l\"]") +
      "]}";
  Manifest m;
  std::string why;
  assert_true(parse_manifest(body, "application/vnd.oci.image.manifest.v1+json", &m, &why));
  assert_true(m.kind == Manifest::Kind::Image);
  assert_true(m.has_config);
  assert_string_equal(m.config.digest.c_str(), kDigest.c_str());
  assert_int_equal(m.config.size, 2);
  assert_int_equal(m.layers.size(), 2);
  assert_string_equal(m.layers[0].digest.c_str(), l2.c_str());
  assert_int_equal(m.layers[0].size, 8388608);
  assert_false(m.layers[0].foreign);
  assert_true(m.layers[1].foreign);

  // No mediaType in the body: the Content-Type, else the fields, decide.
  std::string bare = "{\"schemaVersion\":2,\"config\":" + desc("x", kDigest, 2) + ",\"layers\":[]}";
  assert_true(parse_manifest(bare, "application/vnd.docker.distribution.manifest.v2+json", &m, &why));
  assert_true(m.kind == Manifest::Kind::Image);
  assert_true(parse_manifest(bare, "application/json", &m, &why));
  assert_string_equal(m.media_type.c_str(), "application/vnd.oci.image.manifest.v1+json");

  // An ORAS artifact manifest lists blobs.
  std::string art = "{\"mediaType\":\"application/vnd.oci.artifact.manifest.v1+json\",\"blobs\":[" +
                    desc("application/vnd.sylabs.sif.layer.v1.sif", kDigest, 4096) + "]}";
  assert_true(parse_manifest(art, "", &m, &why));
  assert_false(m.has_config);
  assert_int_equal(m.layers.size(), 1);
}

void test_manifest_index(void**) {
  std::string a = "sha256:" + std::string(64, 'a'), b = "sha256:" + std::string(64, 'b');
  std::string body =
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.list.v2+json\","
      "\"manifests\":[" +
      desc("application/vnd.docker.distribution.manifest.v2+json", a, 500,
           ",\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}") +
      "," +
      desc("application/vnd.docker.distribution.manifest.v2+json", b, 501,
           ",\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}") +
      "]}";
  Manifest m;
  std::string why;
  assert_true(parse_manifest(body, "", &m, &why));
  assert_true(m.kind == Manifest::Kind::Index);
  assert_int_equal(m.manifests.size(), 2);
  assert_string_equal(m.manifests[0].platform.c_str(), "linux/arm64/v8");
  assert_string_equal(m.manifests[1].platform.c_str(), "linux/amd64");
  assert_true(platform_matches(m.manifests[1].platform, "linux/amd64"));
  assert_false(platform_matches(m.manifests[0].platform, "linux/amd64"));
  assert_true(platform_matches(m.manifests[0].platform, "linux/arm64"));
  assert_true(platform_matches(m.manifests[0].platform, "linux/arm64/v8"));
  assert_false(platform_matches(m.manifests[0].platform, "linux/arm64/v7"));
  assert_false(platform_matches("linux/amd64", "linux/amd64/v3"));
  assert_false(platform_matches("", "linux/amd64"));
}

void test_manifest_rejects(void**) {
  Manifest m;
  std::string why;
  assert_false(parse_manifest("nope", "", &m, &why));
  assert_false(parse_manifest("{\"schemaVersion\":1,\"fsLayers\":[]}", "", &m, &why));
  assert_non_null(strstr(why.c_str(), "schema 1"));
  assert_false(parse_manifest("{\"schemaVersion\":2}",
                              "application/vnd.docker.distribution.manifest.v1+prettyjws", &m, &why));
  assert_false(parse_manifest("{\"mediaType\":\"text/html\"}", "", &m, &why));
  assert_false(parse_manifest("{\"schemaVersion\":2}", "", &m, &why));
  // Descriptors: a digest of another algorithm, a short one, a bad size.
  std::string img = "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"layers\":[";
  assert_false(parse_manifest(img + desc("x", "sha512:" + kHex + kHex, 1) + "]}", "", &m, &why));
  assert_non_null(strstr(why.c_str(), "layers[0]"));
  assert_false(parse_manifest(img + desc("x", "sha256:abc", 1) + "]}", "", &m, &why));
  assert_false(parse_manifest(img + desc("x", kDigest, -1) + "]}", "", &m, &why));
  assert_false(parse_manifest(img + "{\"digest\":\"" + kDigest + "\"}]}", "", &m, &why));
  assert_false(parse_manifest(img + "\"x\"]}", "", &m, &why));
  assert_false(parse_manifest("{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":{}}",
                              "", &m, &why));
  // A Docker image manifest needs its config.
  assert_false(
      parse_manifest("{\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\",\"layers\":[]}",
                     "", &m, &why));
}

void test_cli_helpers(void**) {
  std::string n, v;
  assert_true(parse_header_arg("Authorization: Bearer abc", &n, &v));
  assert_string_equal(n.c_str(), "Authorization");
  assert_string_equal(v.c_str(), "Bearer abc");
  assert_true(parse_header_arg("X-Empty:", &n, &v));
  assert_string_equal(v.c_str(), "");
  assert_false(parse_header_arg("no colon", &n, &v));
  assert_false(parse_header_arg(": x", &n, &v));
  assert_false(parse_header_arg("Bad Name: x", &n, &v));
  assert_false(parse_header_arg("X: a\r\nInjected: b", &n, &v));

  HostPort hp;
  assert_true(parse_host_port("127.0.0.1:65001", &hp));
  assert_string_equal(hp.host.c_str(), "127.0.0.1");
  assert_int_equal(hp.port, 65001);
  assert_true(parse_host_port("http://127.0.0.1:8080/", &hp));
  assert_int_equal(hp.port, 8080);
  assert_true(parse_host_port("[::1]:65001", &hp));
  assert_string_equal(hp.host.c_str(), "::1");
  assert_string_equal(hp.str().c_str(), "[::1]:65001");
  assert_false(parse_host_port("127.0.0.1", &hp));
  assert_false(parse_host_port("127.0.0.1:0", &hp));

  assert_string_equal(human_bytes(0).c_str(), "0 B");
  assert_string_equal(human_bytes(1023).c_str(), "1023 B");
  assert_string_equal(human_bytes(8u << 20).c_str(), "8.00 MiB");
  assert_string_equal(human_bytes(150ull << 30).c_str(), "150 GiB");
  assert_string_equal(human_age(59).c_str(), "59s");
  assert_string_equal(human_age(303).c_str(), "5m03s");
  assert_string_equal(human_age(7440).c_str(), "2h04m");
  assert_string_equal(human_age(277200).c_str(), "3d05h");
  assert_string_equal(url_encode("a b/c:d~").c_str(), "a%20b%2Fc%3Ad~");
}

}  // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ref_forms),        cmocka_unit_test(test_ref_docker_hub),
      cmocka_unit_test(test_ref_rejects),      cmocka_unit_test(test_digest_in_url),
      cmocka_unit_test(test_www_authenticate), cmocka_unit_test(test_token_response),
      cmocka_unit_test(test_manifest_image),   cmocka_unit_test(test_manifest_index),
      cmocka_unit_test(test_manifest_rejects), cmocka_unit_test(test_cli_helpers),
  };
  return cmocka_run_group_tests_name("ctl", tests, nullptr, nullptr);
}
