// peek_client_hello on real ClientHellos (produced by a client Session),
// on synthetic ones built here, and on hostile bytes.
#include <mbedtls/ssl.h>

#include <cstring>
#include <random>

#include "shoal/tls/client_hello.h"
#include "tls_test.h"

namespace shoal::tls::test {

namespace {

using Bytes = std::vector<uint8_t>;

// The first flight of a client Session for host, i.e. its ClientHello.
Bytes real_hello(const std::string& host, const char** alpn = nullptr) {
  Endpoints ep("", /*insecure=*/true);
  if (alpn != nullptr) mbedtls_ssl_conf_alpn_protocols(ep.client_cfg->conf(), alpn);
  auto c = Session::client(ep.client_cfg.get(), host);
  assert_non_null(c.get());
  assert_int_equal(static_cast<int>(c->handshake()), static_cast<int>(Status::WantRead));
  return c->output();
}

void put16(Bytes* b, size_t v) {
  b->push_back(static_cast<uint8_t>(v >> 8));
  b->push_back(static_cast<uint8_t>(v));
}

Bytes ext(uint16_t type, const Bytes& body) {
  Bytes e;
  put16(&e, type);
  put16(&e, body.size());
  e.insert(e.end(), body.begin(), body.end());
  return e;
}

Bytes sni_ext(const std::string& name, uint8_t type = 0) {
  Bytes entry{type};
  put16(&entry, name.size());
  entry.insert(entry.end(), name.begin(), name.end());
  Bytes body;
  put16(&body, entry.size());
  body.insert(body.end(), entry.begin(), entry.end());
  return ext(0, body);
}

Bytes alpn_ext(const std::vector<std::string>& protos) {
  Bytes list;
  for (const auto& p : protos) {
    list.push_back(static_cast<uint8_t>(p.size()));
    list.insert(list.end(), p.begin(), p.end());
  }
  Bytes body;
  put16(&body, list.size());
  body.insert(body.end(), list.begin(), list.end());
  return ext(16, body);
}

Bytes versions_ext(const std::vector<uint16_t>& versions) {
  Bytes body{static_cast<uint8_t>(versions.size() * 2)};
  for (uint16_t v : versions) put16(&body, v);
  return ext(43, body);
}

// A ClientHello handshake message (header included) with these extensions;
// with_ext_block=false omits the extensions block entirely.
Bytes hello_msg(const std::vector<Bytes>& exts, bool with_ext_block = true, uint16_t version = 0x0303,
                uint8_t sid_len = 0) {
  Bytes body;
  put16(&body, version);
  body.insert(body.end(), 32, 0xab);  // random
  body.push_back(sid_len);
  body.insert(body.end(), sid_len, 0x11);
  put16(&body, 4);
  put16(&body, 0xc02b);
  put16(&body, 0x1301);
  body.push_back(1);
  body.push_back(0);
  if (with_ext_block) {
    Bytes all;
    for (const auto& e : exts) all.insert(all.end(), e.begin(), e.end());
    put16(&body, all.size());
    body.insert(body.end(), all.begin(), all.end());
  }
  Bytes msg{1, static_cast<uint8_t>(body.size() >> 16), static_cast<uint8_t>(body.size() >> 8),
            static_cast<uint8_t>(body.size())};
  msg.insert(msg.end(), body.begin(), body.end());
  return msg;
}

// Frames a handshake message into records of at most chunk bytes.
Bytes records(const Bytes& msg, size_t chunk = 16384, uint8_t type = 22) {
  Bytes out;
  for (size_t off = 0; off < msg.size(); off += chunk) {
    size_t n = std::min(chunk, msg.size() - off);
    out.push_back(type);
    out.push_back(3);
    out.push_back(1);
    put16(&out, n);
    out.insert(out.end(), msg.begin() + static_cast<std::ptrdiff_t>(off),
               msg.begin() + static_cast<std::ptrdiff_t>(off + n));
  }
  return out;
}

PeekStatus peek(const Bytes& b, ClientHelloInfo* info = nullptr) {
  ClientHelloInfo tmp;
  return peek_client_hello(b.data(), b.size(), info != nullptr ? info : &tmp);
}

#define assert_peek(bytes, want) assert_string_equal(to_string(peek(bytes)), to_string(PeekStatus::want))

void test_real_hello(void**) {
  Bytes h = real_hello("Registry.Example.COM");
  ClientHelloInfo info;
  assert_int_equal(static_cast<int>(peek(h, &info)), static_cast<int>(PeekStatus::Ok));
  assert_string_equal(info.sni.c_str(), "registry.example.com");
  assert_int_equal(info.alpn.size(), 1);
  assert_string_equal(info.alpn[0].c_str(), "http/1.1");
  assert_int_equal(info.legacy_version, 0x0303);
  assert_true(info.offers_tls12);
  // Bytes after the ClientHello (the next flight) do not matter.
  h.push_back(0x17);
  assert_peek(h, Ok);
}

void test_real_hello_every_prefix(void**) {
  const Bytes h = real_hello("registry.example.com");
  for (size_t i = 0; i < h.size(); i++) {
    ClientHelloInfo info;
    PeekStatus st = peek_client_hello(h.data(), i, &info);
    if (st != PeekStatus::NeedMore) fail_msg("prefix %zu of %zu: %s", i, h.size(), to_string(st));
  }
  assert_peek(h, Ok);
}

void test_split_records_every_prefix(void**) {
  // The same message fragmented into records of 1, 7 and 100 bytes.
  Bytes h = real_hello("registry.example.com");
  Bytes msg(h.begin() + 5, h.end());
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{100}}) {
    Bytes r = records(msg, chunk);
    ClientHelloInfo info;
    assert_int_equal(static_cast<int>(peek(r, &info)), static_cast<int>(PeekStatus::Ok));
    assert_string_equal(info.sni.c_str(), "registry.example.com");
    for (size_t i = 0; i < r.size(); i++) {
      PeekStatus st = peek_client_hello(r.data(), i, &info);
      if (st != PeekStatus::NeedMore) fail_msg("chunk %zu prefix %zu: %s", chunk, i, to_string(st));
    }
  }
}

void test_no_sni(void**) {
  // A client Session for an IP literal sends no SNI.
  ClientHelloInfo info;
  assert_int_equal(static_cast<int>(peek(real_hello("127.0.0.1"), &info)), static_cast<int>(PeekStatus::Ok));
  assert_true(info.sni.empty());
  assert_int_equal(static_cast<int>(peek(records(hello_msg({})), &info)), static_cast<int>(PeekStatus::Ok));
  assert_true(info.sni.empty());
  assert_true(info.alpn.empty());
  // No extensions block at all (an old client).
  assert_int_equal(static_cast<int>(peek(records(hello_msg({}, false)), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_true(info.offers_tls12);
  // An SNI entry of another name type is skipped.
  assert_int_equal(static_cast<int>(peek(records(hello_msg({sni_ext("x", 7)})), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_true(info.sni.empty());
}

void test_alpn_list(void**) {
  const char* protos[] = {"h2", "http/1.1", nullptr};
  ClientHelloInfo info;
  assert_int_equal(static_cast<int>(peek(real_hello("a.example", protos), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_int_equal(info.alpn.size(), 2);
  assert_string_equal(info.alpn[0].c_str(), "h2");
  assert_string_equal(info.alpn[1].c_str(), "http/1.1");
  Bytes h = records(hello_msg({sni_ext("X.Example"), alpn_ext({"h2", "http/1.1", "spdy/3"})}));
  assert_int_equal(static_cast<int>(peek(h, &info)), static_cast<int>(PeekStatus::Ok));
  assert_string_equal(info.sni.c_str(), "x.example");
  assert_int_equal(info.alpn.size(), 3);
  assert_string_equal(info.alpn[2].c_str(), "spdy/3");
  // A final dot in the SNI is dropped; a lone dot is no name.
  assert_int_equal(static_cast<int>(peek(records(hello_msg({sni_ext("Host.Example.")})), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_string_equal(info.sni.c_str(), "host.example");
  assert_peek(records(hello_msg({sni_ext(".")})), Malformed);
  // Found by fuzz_client_hello: "host.." came out as "host." (a final dot
  // the header promises never to return, and a second cache key and
  // certificate name for the same host). No empty label passes.
  for (const char* bad : {"host..", "Host.Example..", ".host", "a..b", ".."})
    assert_peek(records(hello_msg({sni_ext(bad)})), Malformed);
}

void test_supported_versions(void**) {
  ClientHelloInfo info;
  // TLS 1.3-only: legacy_version says 1.2 but the list is authoritative.
  assert_int_equal(static_cast<int>(peek(records(hello_msg({versions_ext({0x0a0a, 0x0304})})), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_false(info.offers_tls12);
  assert_int_equal(static_cast<int>(peek(records(hello_msg({versions_ext({0x0304, 0x0303})})), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_true(info.offers_tls12);
  // A TLS 1.0 client without the extension.
  assert_int_equal(static_cast<int>(peek(records(hello_msg({}, true, 0x0301)), &info)),
                   static_cast<int>(PeekStatus::Ok));
  assert_false(info.offers_tls12);
  assert_int_equal(info.legacy_version, 0x0301);
}

void test_not_tls(void**) {
  assert_peek(Bytes{}, NeedMore);
  assert_peek((Bytes{0x16}), NeedMore);
  assert_peek((Bytes{0x16, 0x03}), NeedMore);
  const std::string get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_peek(Bytes(get.begin(), get.end()), NotTls);
  assert_peek((Bytes{0x80, 0x2e, 0x01, 0x00, 0x02}), NotTls);  // SSLv2 ClientHello
  assert_peek((Bytes{0x16, 0x02}), NotTls);
  assert_peek((Bytes{0x16, 0x03, 0x05}), NotTls);
  assert_peek((Bytes{0x17, 0x03, 0x03, 0x00, 0x10}), NotTls);  // application data
  assert_peek((Bytes{0x00}), NotTls);
}

void test_malformed(void**) {
  const Bytes good = hello_msg({sni_ext("a.example"), alpn_ext({"http/1.1"})});
  assert_peek(records(good), Ok);
  // Record length 0 and over 2^14.
  assert_peek((Bytes{0x16, 0x03, 0x01, 0x00, 0x00, 0x01}), Malformed);
  assert_peek((Bytes{0x16, 0x03, 0x01, 0x40, 0x01, 0x01}), Malformed);
  // Not a ClientHello (a ServerHello), known from its first byte.
  Bytes sh = good;
  sh[0] = 2;
  assert_peek(records(sh), Malformed);
  assert_peek((Bytes{0x16, 0x03, 0x03, 0x00, 0x40, 0x02}), Malformed);
  // Handshake length over the cap, and too short to hold a ClientHello.
  assert_peek((Bytes{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00}), Malformed);
  assert_peek((Bytes{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x10}), Malformed);
  // The message continues into a record that is not a handshake record.
  Bytes r = records(good, 20);
  r[25] = 0x17;
  assert_peek(r, Malformed);
  // Handshake length one byte longer than the record holds: the rest must
  // follow in another handshake record (NeedMore), but an alert arrives.
  Bytes longer = good;
  longer[3] = static_cast<uint8_t>(longer[3] + 1);
  Bytes lr = records(longer);
  assert_peek(lr, NeedMore);
  lr.insert(lr.end(), {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28});
  assert_peek(lr, Malformed);
  // Body length mismatch inside: extensions block longer than the message.
  Bytes bad_ext = good;
  size_t ext_len_at = 4 + 2 + 32 + 1 + 2 + 4 + 1 + 1;
  bad_ext[ext_len_at + 1] = static_cast<uint8_t>(bad_ext[ext_len_at + 1] + 1);
  assert_peek(records(bad_ext), Malformed);
  // Trailing garbage after the extensions.
  Bytes trailing = hello_msg({sni_ext("a.example")});
  trailing.push_back(0);
  trailing[3] = static_cast<uint8_t>(trailing[3] + 1);
  assert_peek(records(trailing), Malformed);
  // Session id over 32 bytes.
  assert_peek(records(hello_msg({}, true, 0x0303, 33)), Malformed);
  // Bad ClientHello version major.
  assert_peek(records(hello_msg({}, true, 0x0203)), Malformed);
  // SNI: list length wrong, duplicate host_name, bad characters, empty.
  Bytes s = sni_ext("a.example");
  s[5] = static_cast<uint8_t>(s[5] + 1);
  assert_peek(records(hello_msg({s})), Malformed);
  {
    Bytes entry{0, 0, 1, 'a'};
    Bytes body{0, 8};
    body.insert(body.end(), entry.begin(), entry.end());
    body.insert(body.end(), entry.begin(), entry.end());
    assert_peek(records(hello_msg({ext(0, body)})), Malformed);
  }
  assert_peek(records(hello_msg({sni_ext(std::string("a\0b", 3))})), Malformed);
  assert_peek(records(hello_msg({sni_ext("a b")})), Malformed);
  assert_peek(records(hello_msg({sni_ext("a/b")})), Malformed);
  assert_peek(records(hello_msg({sni_ext("")})), Malformed);
  // Duplicate extensions.
  assert_peek(records(hello_msg({sni_ext("a"), sni_ext("b")})), Malformed);
  assert_peek(records(hello_msg({alpn_ext({"h2"}), alpn_ext({"h2"})})), Malformed);
  // ALPN: empty name, empty list, overlong name.
  assert_peek(records(hello_msg({alpn_ext({""})})), Malformed);
  assert_peek(records(hello_msg({ext(16, Bytes{0, 0})})), Malformed);
  assert_peek(records(hello_msg({ext(16, Bytes{0, 2, 5, 'h'})})), Malformed);
  // supported_versions of odd length.
  assert_peek(records(hello_msg({ext(43, Bytes{3, 3, 3, 4})})), Malformed);
  // An extension that claims more bytes than remain.
  {
    Bytes m = hello_msg({ext(99, Bytes{1, 2})});
    m[m.size() - 3] = 9;  // its length field: 2 -> 9
    assert_peek(records(m), Malformed);
  }
}

void test_size_limits(void**) {
  // A ClientHello that cannot complete within kMaxClientHelloBytes: 1-byte
  // records turn a 3 KB message into 18 KB of records.
  Bytes msg = hello_msg({ext(99, Bytes(3000, 0))});
  Bytes r = records(msg, 1);
  assert_true(r.size() > kMaxClientHelloBytes);
  assert_peek(r, Malformed);
  Bytes within(r.begin(), r.begin() + 16000);
  assert_peek(within, NeedMore);
  // A maximal single record is fine.
  Bytes big = hello_msg({ext(99, Bytes(16384 - hello_msg({ext(99, Bytes{})}).size(), 0))});
  assert_int_equal(big.size(), 16384);
  assert_peek(records(big), Ok);
}

void test_fuzz_smoke(void**) {
  // Random mutations of real and synthetic hellos must never crash or read
  // out of bounds (run under `make san` for the memory checks).
  std::mt19937 rng(12345);
  const Bytes seeds[] = {
      real_hello("registry.example.com"),
      records(hello_msg({sni_ext("a.example"), alpn_ext({"h2", "http/1.1"}), versions_ext({0x0304, 0x0303})}),
              9),
  };
  for (int i = 0; i < 20000; i++) {
    Bytes b = seeds[i % 2];
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; f++) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    if (rng() % 3 == 0) b.resize(rng() % b.size());
    // Copy into an exact-size heap buffer so ASan sees any overread.
    std::unique_ptr<uint8_t[]> exact(new uint8_t[b.size() + 1]);
    std::memcpy(exact.get(), b.data(), b.size());
    ClientHelloInfo info;
    PeekStatus st = peek_client_hello(exact.get(), b.size(), &info);
    if (st == PeekStatus::Ok) {
      for (char c : info.sni) assert_true(c != '\0' && !(c >= 'A' && c <= 'Z'));
    }
  }
}

}  // namespace

int run_client_hello_tests() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_real_hello),
      cmocka_unit_test(test_real_hello_every_prefix),
      cmocka_unit_test(test_split_records_every_prefix),
      cmocka_unit_test(test_no_sni),
      cmocka_unit_test(test_alpn_list),
      cmocka_unit_test(test_supported_versions),
      cmocka_unit_test(test_not_tls),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_size_limits),
      cmocka_unit_test(test_fuzz_smoke),
  };
  return cmocka_run_group_tests_name("tls/client_hello", tests, nullptr, nullptr);
}

}  // namespace shoal::tls::test
