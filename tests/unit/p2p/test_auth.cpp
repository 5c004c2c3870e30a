// Unit tests for request signing (auth.h): round trips, every kind of
// tampering, the time window, replays, the nonce cache's bound, response
// signatures and the secret file's checks.
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../cmocka_cpp.h"
#include "shoal/p2p/auth.h"

namespace {

using namespace shoal::p2p;
using shoal::http::Header;
using V = Verifier::Verdict;

const std::string kSecret = "0123456789abcdef-cluster";
constexpr int64_t kNow = 1700000000;
const std::string kPath = "/v1/parents";
const std::string kBody = "{\"v\":1,\"peer\":\"p\"}";

std::vector<Header> signed_headers(int64_t now = kNow, std::string* nonce = nullptr) {
  return Signer(kSecret).sign("POST", kPath, kBody, now, nonce);
}

std::string* find(std::vector<Header>* h, const char* name) {
  for (Header& x : *h) {
    if (x.name == name) return &x.value;
  }
  fail_msg("no header %s", name);
  return nullptr;
}

void test_round_trip(void**) {
  std::string nonce;
  std::vector<Header> h = signed_headers(kNow, &nonce);
  assert_int_equal(h.size(), 4);
  assert_string_equal(h[0].name.c_str(), "X-Shoal-Protocol");
  assert_string_equal(h[0].value.c_str(), "1");
  assert_string_equal(find(&h, "X-Shoal-Time")->c_str(), "1700000000");
  assert_string_equal(find(&h, "X-Shoal-Nonce")->c_str(), nonce.c_str());
  assert_int_equal(nonce.size(), 32);
  assert_int_equal(find(&h, "X-Shoal-Signature")->size(), 64);

  Verifier v(kSecret);
  std::string got;
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow, &got), V::Ok);
  assert_string_equal(got.c_str(), nonce.c_str());
  assert_int_equal(v.remembered(), 1);
  // Header names are case-insensitive.
  std::vector<Header> lower = signed_headers();
  for (Header& x : lower) {
    for (char& c : x.name) c = static_cast<char>(tolower(c));
  }
  assert_int_equal(v.verify("POST", kPath, lower, kBody, kNow), V::Ok);
  // Each request gets its own nonce.
  std::string other;
  signed_headers(kNow, &other);
  assert_string_not_equal(other.c_str(), nonce.c_str());
  // An empty body signs too.
  std::vector<Header> empty = Signer(kSecret).sign("GET", "/v1/tasks/x/pieces/0", "", kNow, nullptr);
  assert_int_equal(v.verify("GET", "/v1/tasks/x/pieces/0", empty, "", kNow), V::Ok);
  assert_string_equal(to_string(V::Ok), "ok");
  assert_string_equal(to_string(V::Replayed), "replayed");
}

void test_tampering(void**) {
  Verifier v(kSecret);
  const std::vector<Header> h = signed_headers();
  assert_int_equal(v.verify("GET", kPath, h, kBody, kNow), V::BadSignature);
  assert_int_equal(v.verify("POST", "/v1/parents2", h, kBody, kNow), V::BadSignature);
  assert_int_equal(v.verify("POST", "/v1/Parents", h, kBody, kNow), V::BadSignature);
  assert_int_equal(v.verify("POST", kPath, h, kBody + " ", kNow), V::BadSignature);
  assert_int_equal(v.verify("POST", kPath, h, "", kNow), V::BadSignature);
  // Time moved within the window: still signed over the original.
  std::vector<Header> t = h;
  *find(&t, "X-Shoal-Time") = std::to_string(kNow + 1);
  assert_int_equal(v.verify("POST", kPath, t, kBody, kNow), V::BadSignature);
  *find(&t, "X-Shoal-Time") = "01700000000";  // same number, other text
  assert_int_equal(v.verify("POST", kPath, t, kBody, kNow), V::BadSignature);
  for (const char* bad : {"", "-1700000000", "17e8", "1700000000 ", "x", "99999999999999999999"}) {
    *find(&t, "X-Shoal-Time") = bad;
    assert_int_equal(v.verify("POST", kPath, t, kBody, kNow), V::BadSignature);
  }
  std::vector<Header> n = h;
  std::string* nonce = find(&n, "X-Shoal-Nonce");
  (*nonce)[0] = (*nonce)[0] == 'a' ? 'b' : 'a';
  assert_int_equal(v.verify("POST", kPath, n, kBody, kNow), V::BadSignature);
  *nonce = "short";
  assert_int_equal(v.verify("POST", kPath, n, kBody, kNow), V::BadSignature);
  std::vector<Header> s = h;
  std::string* sig = find(&s, "X-Shoal-Signature");
  (*sig)[63] = (*sig)[63] == '0' ? '1' : '0';
  assert_int_equal(v.verify("POST", kPath, s, kBody, kNow), V::BadSignature);
  for (char& c : *find(&s, "X-Shoal-Signature")) c = static_cast<char>(toupper(c));
  assert_int_equal(v.verify("POST", kPath, s, kBody, kNow), V::BadSignature);
  *find(&s, "X-Shoal-Signature") = "";
  assert_int_equal(v.verify("POST", kPath, s, kBody, kNow), V::BadSignature);
  // Another cluster's secret.
  Verifier other("another-secret-of-16+");
  assert_int_equal(other.verify("POST", kPath, h, kBody, kNow), V::BadSignature);
  // A repeated header is refused even when one copy is right.
  std::vector<Header> dup = h;
  dup.push_back({"x-shoal-signature", std::string(64, '0')});
  assert_int_equal(v.verify("POST", kPath, dup, kBody, kNow), V::BadSignature);
  // None of the refusals used up the nonce.
  assert_int_equal(v.remembered(), 0);
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Ok);
}

void test_time_window(void**) {
  Verifier v(kSecret);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow - 61), kBody, kNow), V::Expired);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow + 61), kBody, kNow), V::Expired);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow - 60), kBody, kNow), V::Ok);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow + 60), kBody, kNow), V::Ok);
  // The same request, presented 61 s late.
  const std::vector<Header> h = signed_headers();
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow + 61), V::Expired);
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow + 60), V::Ok);
  assert_int_equal(v.verify("POST", kPath, signed_headers(0), kBody, INT64_MAX), V::Expired);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow), kBody, INT64_MIN), V::Expired);
}

void test_replay(void**) {
  Verifier v(kSecret);
  const std::vector<Header> h = signed_headers();
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Ok);
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Replayed);
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow + 60), V::Replayed);
  // Late enough that the nonce is forgotten, and then expired anyway.
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow + 121), V::Expired);
  // Forgetting: nonces seen at kNow go once 2 * kMaxClockSkew has passed.
  for (int i = 0; i < 10; i++)
    assert_int_equal(v.verify("POST", kPath, signed_headers(), kBody, kNow), V::Ok);
  assert_int_equal(v.remembered(), 11);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow + 120), kBody, kNow + 120), V::Ok);
  assert_int_equal(v.remembered(), 12);
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow + 121), kBody, kNow + 121), V::Ok);
  assert_int_equal(v.remembered(), 2);
  // Still remembered at the very end of its window.
  const std::vector<Header> back = signed_headers(kNow + 100);
  assert_int_equal(v.verify("POST", kPath, back, kBody, kNow + 100), V::Ok);
  assert_int_equal(v.verify("POST", kPath, back, kBody, kNow + 160), V::Replayed);
}

void test_bounded_cache(void**) {
  Verifier v(kSecret, 3);
  for (int i = 0; i < 3; i++) assert_int_equal(v.verify("POST", kPath, signed_headers(), kBody, kNow), V::Ok);
  // Full: a fresh, valid request is refused rather than evicting a nonce
  // that could still be replayed.
  const std::vector<Header> h = signed_headers();
  assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Replayed);
  assert_int_equal(v.remembered(), 3);
  // Room again once the old ones expire.
  assert_int_equal(v.verify("POST", kPath, signed_headers(kNow + 121), kBody, kNow + 121), V::Ok);
  assert_int_equal(v.remembered(), 1);
}

void test_missing_and_version(void**) {
  Verifier v(kSecret);
  const std::vector<Header> h = signed_headers();
  for (size_t drop = 0; drop < h.size(); drop++) {
    std::vector<Header> m = h;
    m.erase(m.begin() + static_cast<std::ptrdiff_t>(drop));
    assert_int_equal(v.verify("POST", kPath, m, kBody, kNow), V::Missing);
  }
  assert_int_equal(v.verify("POST", kPath, {}, kBody, kNow), V::Missing);
  for (const char* bad : {"0", "", "x", "1.0", "-1", "9999999999"}) {
    std::vector<Header> m = h;
    *find(&m, "X-Shoal-Protocol") = bad;
    assert_int_equal(v.verify("POST", kPath, m, kBody, kNow), V::BadVersion);
  }
  // The version is not signed (the prefix "shoal-req-v1" is): a newer
  // sender's header passes.
  std::vector<Header> m = h;
  *find(&m, "X-Shoal-Protocol") = "2";
  assert_int_equal(v.verify("POST", kPath, m, kBody, kNow), V::Ok);
  assert_string_equal(to_string(V::Missing), "missing");
  assert_string_equal(to_string(V::BadVersion), "bad-version");
}

void test_response(void**) {
  Signer s(kSecret);
  std::string nonce;
  s.sign("POST", kPath, kBody, kNow, &nonce);
  const std::string answer = "{\"v\":1}";
  std::vector<Header> h = {{"Content-Type", "application/json"},
                           {"X-Shoal-Signature", s.sign_response(nonce, 200, answer)}};
  assert_true(s.check_response(nonce, 200, h, answer));
  std::vector<Header> lower = h;
  lower[1].name = "x-shoal-signature";
  assert_true(s.check_response(nonce, 200, lower, answer));
  assert_false(s.check_response(nonce, 404, h, answer));
  assert_false(s.check_response(nonce, 200, h, answer + " "));
  std::string other_nonce;
  s.sign("POST", kPath, kBody, kNow, &other_nonce);
  assert_false(s.check_response(other_nonce, 200, h, answer));  // a replayed answer
  assert_false(Signer("another-secret-of-16+").check_response(nonce, 200, h, answer));
  assert_false(s.check_response(nonce, 200, {h[0]}, answer));
  std::vector<Header> dup = h;
  dup.push_back(h[1]);
  assert_false(s.check_response(nonce, 200, dup, answer));
  std::vector<Header> bad = h;
  bad[1].value[0] = bad[1].value[0] == 'a' ? 'b' : 'a';
  assert_false(s.check_response(nonce, 200, bad, answer));
  bad[1].value = "zz";
  assert_false(s.check_response(nonce, 200, bad, answer));
  // The answer to a request the Verifier accepted, signed over its nonce.
  Verifier v(kSecret);
  std::string seen;
  std::string req_nonce;
  const std::vector<Header> req = s.sign("POST", kPath, kBody, kNow, &req_nonce);
  assert_int_equal(v.verify("POST", kPath, req, kBody, kNow, &seen), V::Ok);
  const std::vector<Header> resp = {{"X-Shoal-Signature", Signer(kSecret).sign_response(seen, 404, "{}")}};
  assert_true(s.check_response(req_nonce, 404, resp, "{}"));
}

void test_concurrent_replay(void**) {
  Verifier v(kSecret);
  const std::vector<Header> h = signed_headers();
  std::atomic<int> ok{0}, replayed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; i++) {
        const V r = v.verify("POST", kPath, h, kBody, kNow);
        (r == V::Ok ? ok : replayed)++;
        v.verify("POST", kPath, signed_headers(), kBody, kNow);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  assert_int_equal(ok.load(), 1);
  assert_int_equal(replayed.load(), 799);
  assert_int_equal(v.remembered(), 801);
}

// The reference: OpenSSL's one-shot HMAC over the message auth.h spells
// out, in lower-case hex.
std::string reference_mac(const std::string& secret, const std::string& msg) {
  uint8_t mac[32];
  unsigned int len = 0;
  assert_non_null(HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
                       reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), mac, &len));
  assert_int_equal(len, 32);
  static const char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : mac) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 15]);
  }
  return hex;
}

std::string body_hash(const std::string& body) {
  uint8_t sum[32];
  SHA256(reinterpret_cast<const uint8_t*>(body.data()), body.size(), sum);
  static const char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : sum) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 15]);
  }
  return hex;
}

// The precomputed key states give HMAC-SHA256 itself, for secrets shorter
// than, as long as and longer than SHA-256's 64-byte block (hashed first).
void test_known_answers(void**) {
  for (size_t len : {16, 63, 64, 65, 300}) {
    std::string secret;
    for (size_t i = 0; i < len; i++) secret.push_back(static_cast<char>('!' + (i * 7) % 90));
    const Signer s(secret);
    const Signer copy = s;  // copies share the key
    for (const std::string& body : {std::string(), kBody, std::string(1000, 'b')}) {
      std::string nonce;
      std::vector<Header> h = copy.sign("POST", kPath, body, kNow, &nonce);
      const std::string msg =
          "shoal-req-v1\nPOST\n" + kPath + "\n1700000000\n" + nonce + "\n" + body_hash(body);
      assert_string_equal(find(&h, "X-Shoal-Signature")->c_str(), reference_mac(secret, msg).c_str());
      for (int status : {200, 404, -1}) {
        const std::string rmsg =
            "shoal-resp-v1\n" + nonce + "\n" + std::to_string(status) + "\n" + body_hash(body);
        assert_string_equal(s.sign_response(nonce, status, body).c_str(),
                            reference_mac(secret, rmsg).c_str());
      }
      Verifier v(secret);
      assert_int_equal(v.verify("POST", kPath, h, body, kNow), V::Ok);
    }
  }
}

// The replay cache against a model (a set and a queue, as auth.h describes
// it), small enough that its index collides and its ring wraps often:
// random fresh requests, replays of earlier ones and steps of the clock.
void test_replay_cache_model(void**) {
  constexpr size_t kCap = 64;  // an index of 128 slots
  Verifier v(kSecret, kCap);
  const Signer signer(kSecret);
  std::mt19937 rng(12345);
  struct Sent {
    std::vector<Header> h;
    std::string nonce;
    int64_t t;
  };
  std::vector<Sent> sent;
  std::set<std::string> model;
  std::deque<std::pair<int64_t, std::string>> order;
  int64_t now = kNow;
  size_t oks = 0, replays = 0;
  for (int step = 0; step < 20000; step++) {
    const auto r = rng() % 1000;
    // About one fresh request a second: the cache stays near its bound,
    // its oldest entries expiring one by one.
    if (r < 500) {
      now += r < 5 ? static_cast<int64_t>(rng() % 90) : 1;
      continue;
    }
    const Sent* req;
    Sent fresh;
    if (r < 775 || sent.empty()) {
      fresh.t = now - static_cast<int64_t>(rng() % 30);
      fresh.h = signer.sign("POST", kPath, kBody, fresh.t, &fresh.nonce);
      req = &fresh;
    } else {
      req = &sent[rng() % sent.size()];
    }
    V want = V::Ok;
    if (now > req->t + kMaxClockSkew || now < req->t - kMaxClockSkew) {
      want = V::Expired;
    } else {
      // The Verifier forgets only when a request reaches the cache.
      while (!order.empty() && order.front().first < now - 2 * kMaxClockSkew) {
        model.erase(order.front().second);
        order.pop_front();
      }
      if (model.count(req->nonce) != 0 || model.size() >= kCap) want = V::Replayed;
    }
    std::string got_nonce;
    const V got = v.verify("POST", kPath, req->h, kBody, now, &got_nonce);
    assert_int_equal(got, want);
    if (got == V::Ok) {
      assert_string_equal(got_nonce.c_str(), req->nonce.c_str());
      model.insert(req->nonce);
      order.emplace_back(order.empty() ? now : std::max(now, order.back().first), req->nonce);
      oks++;
    } else if (got == V::Replayed) {
      replays++;
    }
    if (req == &fresh) {
      sent.push_back(std::move(fresh));
      if (sent.size() > 100) sent.erase(sent.begin());
    }
    assert_int_equal(v.remembered(), model.size());
  }
  assert_true(oks > 1000);
  assert_true(replays > 1000);
}

// A cache emptied by expiry after a burst gives its pages back and then
// works as before.
void test_replay_cache_release(void**) {
  Verifier v(kSecret, 70000);
  const Signer signer(kSecret);
  std::vector<Header> first;
  for (int i = 0; i < 66000; i++) {
    std::vector<Header> h = signer.sign("POST", kPath, kBody, kNow, nullptr);
    assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Ok);
    if (i == 0) first = h;
  }
  assert_int_equal(v.verify("POST", kPath, first, kBody, kNow + 60), V::Replayed);
  assert_int_equal(v.remembered(), 66000);
  const std::vector<Header> late = signer.sign("POST", kPath, kBody, kNow + 121, nullptr);
  assert_int_equal(v.verify("POST", kPath, late, kBody, kNow + 121), V::Ok);
  assert_int_equal(v.remembered(), 1);
  assert_int_equal(v.verify("POST", kPath, late, kBody, kNow + 122), V::Replayed);
  for (int i = 0; i < 100; i++) {
    assert_int_equal(
        v.verify("POST", kPath, signer.sign("POST", kPath, kBody, kNow + 122, nullptr), kBody, kNow + 122),
        V::Ok);
  }
  assert_int_equal(v.remembered(), 101);
}

// Nonces past their window are forgotten at once for lookups but removed a
// few per request (a whole second's worth at once stalled a busy scheduler),
// and tidy() empties a cache left idle.
void test_forgetting_is_spread(void**) {
  Verifier v(kSecret, 70000);
  const Signer signer(kSecret);
  std::string first;
  for (int i = 0; i < 1000; i++) {
    std::string nonce;
    std::vector<Header> h = signer.sign("POST", kPath, kBody, kNow, &nonce);
    assert_int_equal(v.verify("POST", kPath, h, kBody, kNow), V::Ok);
    if (i == 500) first = nonce;  // not among the first removed
  }
  assert_int_equal(v.held(), 1000);
  const int64_t later = kNow + 2 * kMaxClockSkew + 1;
  assert_int_equal(v.verify("POST", kPath, signer.sign("POST", kPath, kBody, later, nullptr), kBody, later),
                   V::Ok);
  assert_int_equal(v.remembered(), 1);
  assert_int_equal(v.held(), 1000 - Verifier::kForgetPerRequest + 1);
  // A nonce of then, signed again with a current time, is new to the cache
  // although its old entry is still held: forgotten means forgotten.
  const std::string t = std::to_string(later);
  const std::string mac = reference_mac(
      kSecret, "shoal-req-v1\nPOST\n" + kPath + "\n" + t + "\n" + first + "\n" + body_hash(kBody));
  const std::vector<Header> again = {
      {"X-Shoal-Protocol", "1"}, {"X-Shoal-Time", t}, {"X-Shoal-Nonce", first}, {"X-Shoal-Signature", mac}};
  assert_int_equal(v.verify("POST", kPath, again, kBody, later), V::Ok);
  assert_int_equal(v.remembered(), 2);
  assert_int_equal(v.held(), 2);  // that lookup removed every forgotten entry
  assert_int_equal(v.verify("POST", kPath, again, kBody, later), V::Replayed);
  // Idle after a burst: tidy() removes up to kTidyBudget a call.
  for (size_t i = 0; i < Verifier::kTidyBudget + 10; i++)
    assert_int_equal(v.verify("POST", kPath, signer.sign("POST", kPath, kBody, later, nullptr), kBody, later),
                     V::Ok);
  const int64_t idle = later + 2 * kMaxClockSkew + 1;
  v.tidy(idle);
  assert_int_equal(v.remembered(), 0);
  assert_int_equal(v.held(), 12);
  v.tidy(idle);
  assert_int_equal(v.held(), 0);
}

// ---- Secret files ----

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/shoal-auth-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const char* name, const std::string& data, mode_t mode) const {
    const std::string p = path + "/" + name;
    const int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return p;
  }
};

void test_secret_file(void**) {
  TempDir d;
  std::string secret = "unchanged";
  std::string err;
  const std::string ok = d.write("ok", "0123456789abcdef\n", 0600);
  assert_true(load_secret_file(ok, &secret, &err));
  assert_string_equal(secret.c_str(), "0123456789abcdef");
  // Trailing whitespace of any kind goes; inner whitespace stays.
  assert_true(load_secret_file(d.write("ws", "secret with spaces \r\n\t \n", 0400), &secret, &err));
  assert_string_equal(secret.c_str(), "secret with spaces");

  secret = "unchanged";
  const std::string wide = d.write("wide", "0123456789abcdef\n", 0644);
  assert_false(load_secret_file(wide, &secret, &err));
  assert_true(err.compare(0, wide.size(), wide) == 0);  // names the file
  assert_string_equal(secret.c_str(), "unchanged");
  assert_false(load_secret_file(d.write("group", "0123456789abcdef", 0640), &secret, &err));
  assert_false(load_secret_file(d.write("gw", "0123456789abcdef", 0620), &secret, &err));
  assert_false(load_secret_file(d.write("ox", "0123456789abcdef", 0601), &secret, &err));

  const std::string short_path = d.write("short", "0123456789abcde\n\n", 0600);  // 15 bytes
  assert_false(load_secret_file(short_path, &secret, &err));
  assert_true(err.find("16") != std::string::npos);
  assert_false(load_secret_file(d.write("blank", "                    \n", 0600), &secret, &err));
  assert_false(load_secret_file(d.write("empty", "", 0600), &secret, &err));
  assert_false(load_secret_file(d.write("huge", std::string(70000, 'x'), 0600), &secret, &err));
  assert_false(load_secret_file(d.path + "/absent", &secret, &err));
  assert_true(err.find("absent") != std::string::npos);
  assert_int_equal(chmod(d.path.c_str(), 0700), 0);
  assert_false(load_secret_file(d.path, &secret, &err));  // a directory
  assert_string_equal(secret.c_str(), "unchanged");
}

}  // namespace

int run_auth_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_tampering),
      cmocka_unit_test(test_time_window),
      cmocka_unit_test(test_replay),
      cmocka_unit_test(test_bounded_cache),
      cmocka_unit_test(test_missing_and_version),
      cmocka_unit_test(test_response),
      cmocka_unit_test(test_concurrent_replay),
      cmocka_unit_test(test_known_answers),
      cmocka_unit_test(test_replay_cache_model),
      cmocka_unit_test(test_replay_cache_release),
      cmocka_unit_test(test_forgetting_is_spread),
      cmocka_unit_test(test_secret_file),
  };
  return cmocka_run_group_tests_name("p2p auth", tests, nullptr, nullptr);
}
