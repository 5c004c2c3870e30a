// Unit tests for shoal::rules: Dragonfly-style rule matching on Hyperscan.

// cmocka.h needs these first and has no extern "C" of its own.
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
extern "C" {
#include <cmocka.h>
}
// clang-format on

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shoal/rules/rules.h"

using shoal::rules::PatternSet;
using shoal::rules::Scratch;

namespace {

const std::string kDigest = "sha256:8a1f59ffb675680d47db6337b49d22281a139e9d709335b492be023728e11715";
const std::string kBlobUrl = "https://registry.example.test/v2/library/alpine/blobs/" + kDigest;
const std::string kManifestUrl = "https://registry.example.test/v2/library/alpine/manifests/" + kDigest;
const std::string kTagUrl = "https://registry.example.test/v2/library/alpine/manifests/3.19";

std::shared_ptr<const PatternSet> must_compile(const std::vector<std::string>& pats) {
  std::string err;
  int bad = -2;
  auto set = PatternSet::compile(pats, &err, &bad);
  if (!set) fail_msg("compile failed at %d: %s", bad, err.c_str());
  return set;
}

// The rules from Dragonfly's container-runtime guide.
void test_dragonfly_guide_rules(void**) {
  auto set = must_compile({"blobs/sha256.*", "manifests/sha256.*"});
  assert_int_equal(set->size(), 2);
  Scratch s;
  std::string err;
  assert_true(s.prepare(*set, &err));
  assert_int_equal(set->first_match(kBlobUrl, s), 0);
  assert_int_equal(set->first_match(kManifestUrl, s), 1);
  assert_int_equal(set->first_match(kTagUrl, s), -1);  // tags are not content-addressed
  assert_int_equal(set->first_match("https://registry.example.test/v2/", s), -1);
  assert_int_equal(set->first_match("", s), -1);
  // Case-sensitive, as Go's regexp.
  assert_int_equal(set->first_match("https://r/v2/x/BLOBS/SHA256:00", s), -1);
}

void test_first_rule_wins(void**) {
  auto set = must_compile({"sha256:8a1f.*15$", "blobs", "alpine", "registry"});
  Scratch s;
  // Rule 0 ends at the very end of the text, after every other rule's
  // match has been reported: still rule 0.
  assert_int_equal(set->first_match(kBlobUrl, s), 0);
  // Without rule 0's match the lowest remaining index wins, not the match
  // that ends first ("registry" ends earliest).
  assert_int_equal(set->first_match(kTagUrl, s), 2);
  assert_int_equal(set->first_match("https://registry.example.test/", s), 3);
  assert_int_equal(set->first_match("https://other.test/", s), -1);

  auto many = must_compile({"zzz", "yyy", "a", "b", "c"});
  assert_int_equal(many->first_match("cba", s), 2);
}

void test_empty_list_and_empty_pattern(void**) {
  std::string err = "untouched";
  int bad = 7;
  auto none = PatternSet::compile({}, &err, &bad);
  assert_non_null(none.get());
  assert_int_equal(none->size(), 0);
  Scratch s;
  assert_true(s.prepare(*none, &err));
  assert_int_equal(none->first_match(kBlobUrl, s), -1);
  assert_int_equal(none->first_match("", s), -1);

  // Go's MatchString("") is true for every text; ".*" must compile too.
  auto empty = must_compile({"", ".*"});
  assert_int_equal(empty->first_match(kBlobUrl, s), 0);
  assert_int_equal(empty->first_match("", s), 0);
  auto star = must_compile({"^x", ".*"});
  assert_int_equal(star->first_match("abc", s), 1);
  assert_int_equal(star->first_match("", s), 1);
}

void test_bad_pattern_reported(void**) {
  struct Case {
    std::vector<std::string> pats;
    int index;
  } cases[] = {
      {{"blobs/sha256.*", "(?<=a)b"}, 1},   // lookbehind
      {{"(", "ok"}, 0},                     // unbalanced
      {{"ok", "fine", "(a)\\1"}, 2},        // backreference
      {{"ok", "a{2,1}"}, 1},                // bad repeat bounds
      {{"ok", std::string("a\0b", 3)}, 1},  // NUL cannot reach Hyperscan
  };
  for (const Case& c : cases) {
    std::string err;
    int bad = -5;
    auto set = PatternSet::compile(c.pats, &err, &bad);
    assert_null(set.get());
    if (bad != c.index) fail_msg("want index %d, got %d (%s)", c.index, bad, err.c_str());
    assert_false(err.empty());
  }
  // Hyperscan's own words come back.
  std::string err;
  int bad = -5;
  assert_null(PatternSet::compile({"(a)\\1"}, &err, &bad).get());
  assert_non_null(strstr(err.c_str(), "Back-reference"));
  // Null outputs are allowed.
  assert_null(PatternSet::compile({"("}, nullptr, nullptr).get());
  // "a{" is a literal in PCRE (and Go), not an error.
  auto lit = must_compile({"a{"});
  Scratch s;
  assert_int_equal(lit->first_match("xa{y", s), 0);
}

void test_host_patterns(void**) {
  // hijackHTTPS.hosts[].regx is tried against "host:port", then the bare host.
  auto set = must_compile({"registry.example.test", "^mirror\\.example\\.test:5000$"});
  Scratch s;
  assert_int_equal(set->first_match("registry.example.test:443", s), 0);
  assert_int_equal(set->first_match("registry.example.test", s), 0);
  assert_int_equal(set->first_match("registryXexample.test", s), 0);  // '.' is any byte, as in Go
  assert_int_equal(set->first_match("mirror.example.test:5000", s), 1);
  assert_int_equal(set->first_match("mirror.example.test:50001", s), -1);
  assert_int_equal(set->first_match("mirror.example.test", s), -1);
  assert_int_equal(set->first_match("other.test:443", s), -1);
  // Bytes that are not UTF-8 are just bytes.
  assert_int_equal(set->first_match(std::string("\xff\xfe registry.example.test"), s), 0);
}

void test_scratch_reused_across_sets(void**) {
  auto small = must_compile({"a"});
  std::vector<std::string> big_pats;
  for (int i = 0; i < 200; ++i)
    big_pats.push_back("host" + std::to_string(i) + "\\.[a-z]+[0-9]{1,3}(x|y|z)*blobs/sha256:[0-9a-f]{64}");
  big_pats.push_back("alpine");
  auto big = must_compile(big_pats);
  Scratch s;
  std::string err;
  assert_true(s.prepare(*small, &err));
  assert_int_equal(small->first_match("cat", s), 0);
  // Not prepared for big: first_match grows the scratch itself.
  assert_int_equal(big->first_match(kBlobUrl, s), 200);
  assert_int_equal(big->first_match("host7.abc12xyblobs/" + kDigest, s), 7);
  // And the grown scratch still serves the first set.
  assert_int_equal(small->first_match("bat", s), 0);
  assert_true(s.prepare(*big, &err));
  assert_true(s.prepare(*small, &err));
  // A reload: new sets, same scratch.
  for (int round = 0; round < 100; ++round) {
    auto fresh = must_compile({"nomatch", "v2/.*/blobs/"});
    assert_int_equal(fresh->first_match(kBlobUrl, s), 1);
  }
  // An unprepared scratch works on first use.
  Scratch cold;
  assert_int_equal(big->first_match(kManifestUrl, cold), 200);
}

void test_concurrent_threads(void**) {
  auto set = must_compile({"blobs/sha256.*", "manifests/sha256.*", "alpine"});
  std::atomic<int> failures{0};
  auto worker = [&](int which) {
    Scratch s;
    std::string err;
    if (!s.prepare(*set, &err)) {
      ++failures;
      return;
    }
    for (int i = 0; i < 20000; ++i) {
      int want = (i + which) % 3 == 0 ? 0 : (i + which) % 3 == 1 ? 1 : 2;
      const std::string& url = want == 0 ? kBlobUrl : want == 1 ? kManifestUrl : kTagUrl;
      if (set->first_match(url, s) != want) ++failures;
    }
  };
  std::thread a(worker, 0), b(worker, 1), c(worker, 2);
  a.join();
  b.join();
  c.join();
  assert_int_equal(failures.load(), 0);
}

}  // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dragonfly_guide_rules),
      cmocka_unit_test(test_first_rule_wins),
      cmocka_unit_test(test_empty_list_and_empty_pattern),
      cmocka_unit_test(test_bad_pattern_reported),
      cmocka_unit_test(test_host_patterns),
      cmocka_unit_test(test_scratch_reused_across_sets),
      cmocka_unit_test(test_concurrent_threads),
  };
  return cmocka_run_group_tests_name("rules", tests, nullptr, nullptr);
}
