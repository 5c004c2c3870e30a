// Unit tests for task identity (task_id.h).
#include <string>

#include "../cmocka_cpp.h"
#include "shoal/task/task_id.h"

namespace {

using namespace shoal::task;

const std::string kHex = "2cc3f0f242aa266194ea2a5f10a97aa276120aa08d0a4bdd442b990fa4168cdd";

void test_digest_in_path(void**) {
  assert_string_equal(digest_in_path("/v2/library/hello/blobs/sha256:" + kHex).c_str(), kHex.c_str());
  assert_string_equal(digest_in_path("https://r.test/v2/a/b/c/manifests/sha256:" + kHex + "?x=1").c_str(),
                      kHex.c_str());
  // The registry's storage layout, as a blob GET redirects to it.
  assert_string_equal(
      digest_in_path("/docker/registry/v2/blobs/sha256/2c/" + kHex + "/data?Expires=1&Signature=z").c_str(),
      kHex.c_str());
  assert_string_equal(digest_in_path("/docker/registry/v2/blobs/sha256/ff/" + kHex + "/data").c_str(), "");
  assert_string_equal(digest_in_path("/v2/x/blobs/sha256:" + kHex.substr(1)).c_str(), "");
  assert_string_equal(digest_in_path("/v2/x/blobs/sha512:" + kHex).c_str(), "");
  std::string upper = kHex;
  upper[0] = 'C';
  assert_string_equal(digest_in_path("/v2/x/blobs/sha256:" + upper).c_str(), "");
  assert_string_equal(digest_in_path("/other/blobs/sha256:" + kHex).c_str(), "");
  assert_string_equal(digest_in_path("/v2/x/manifests/latest").c_str(), "");
}

void test_repo_and_kind(void**) {
  assert_string_equal(repo_in_path("/v2/library/hello/blobs/sha256:" + kHex).c_str(), "library/hello");
  assert_string_equal(repo_in_path("/v2/a/b/c/manifests/1").c_str(), "a/b/c");
  assert_string_equal(repo_in_path("/v3/x/blobs/y").c_str(), "");
  assert_true(is_manifest_path("/v2/x/manifests/sha256:" + kHex));
  assert_false(is_manifest_path("/v2/x/manifests/latest"));
  assert_false(is_manifest_path("/v2/x/blobs/sha256:" + kHex));
}

void test_filter_query(void**) {
  const char* f = "Expires&Signature&ns";
  assert_string_equal(filter_query("https://s.test/o?Expires=1&keep=2&Signature=x", f).c_str(),
                      "https://s.test/o?keep=2");
  assert_string_equal(filter_query("https://s.test/o?Expires=1&Signature=x&ns=3", f).c_str(),
                      "https://s.test/o");
  assert_string_equal(filter_query("https://s.test/o", f).c_str(), "https://s.test/o");
  // A parameter whose name only starts like a filtered one stays.
  assert_string_equal(filter_query("https://s.test/o?Expiresx=1", f).c_str(), "https://s.test/o?Expiresx=1");
  assert_string_equal(filter_query("https://s.test/o?a=1&Expires=2#frag", f).c_str(),
                      "https://s.test/o?a=1#frag");
}

void test_task_id_for(void**) {
  bool by_digest = false;
  assert_string_equal(task_id_for("https://r.test/v2/x/blobs/sha256:" + kHex, "", &by_digest).c_str(),
                      kHex.c_str());
  assert_true(by_digest);
  // Presigned URLs that differ only in filtered parameters share a task.
  std::string a =
      task_id_for("https://s.test/obj?Expires=1&Signature=a&keep=1", "Expires&Signature", &by_digest);
  assert_false(by_digest);
  std::string b =
      task_id_for("https://s.test/obj?Signature=b&Expires=2&keep=1", "Expires&Signature", &by_digest);
  std::string c =
      task_id_for("https://s.test/obj?Expires=1&Signature=a&keep=2", "Expires&Signature", &by_digest);
  assert_string_equal(a.c_str(), b.c_str());
  assert_string_not_equal(a.c_str(), c.c_str());
  assert_int_equal(a.size(), 64);
  assert_string_equal(sha256_hex("").c_str(),
                      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace

// Run from test_store.cpp's main: one binary per module.
int run_task_id_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_digest_in_path),
      cmocka_unit_test(test_repo_and_kind),
      cmocka_unit_test(test_filter_query),
      cmocka_unit_test(test_task_id_for),
  };
  return cmocka_run_group_tests_name("task id", tests, nullptr, nullptr);
}
