// libFuzzer target for request and answer authentication between peers and
// schedulers (shoal/p2p/auth.h): the signing headers of every scheduler
// request and every piece request are read from hostile bytes. Byte 0
// picks a mode, bytes 1-2 a clock offset (signed, seconds); the rest is
// '\n'-separated fields: method, path, body, then header lines "name:value".
//   0 raw:     verify() on the hostile headers alone; a forger holds no
//              secret, so the verdict can never be Ok.
//   1 signed:  a genuine request signed for the fields, its time off by the
//              offset, plus the hostile header lines: the verdict is exactly
//              what the rules in auth.h say (repeated signing header ->
//              BadSignature, skew -> Expired, else Ok and then Replayed).
//   2 flood:   one genuine request per field, the clock moving by the
//              field's first byte (backwards too), into a Verifier that
//              remembers at most 8 nonces: never over the bound, a fresh
//              nonce refused only when full.
//   3 answer:  check_response() on the hostile headers plus a genuine
//              answer signature: true only for the genuine, single
//              signature of the right status.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "shoal/http/http.h"
#include "shoal/p2p/auth.h"

using shoal::http::Header;
using shoal::http::iequals;
using shoal::p2p::Signer;
using shoal::p2p::Verifier;

namespace {

const char kSecret[] = "fuzz-cluster-secret-0123456789";
constexpr int64_t kNow = 1700000000;

void check(bool ok) {
  if (!ok) std::abort();
}

bool signing_name(const std::string& n) {
  return iequals(n, "X-Shoal-Protocol") || iequals(n, "X-Shoal-Time") || iequals(n, "X-Shoal-Nonce") ||
         iequals(n, "X-Shoal-Signature");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint8_t mode = data[0] % 4;
  const int64_t offset = static_cast<int16_t>(static_cast<uint16_t>(data[1] << 8 | data[2]));
  const std::string rest(reinterpret_cast<const char*>(data + 3), size - 3);
  std::vector<std::string> fields;
  for (size_t pos = 0;;) {
    size_t nl = rest.find('\n', pos);
    fields.push_back(rest.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  while (fields.size() < 3) fields.emplace_back();
  const std::string &method = fields[0], &path = fields[1], &body = fields[2];
  std::vector<Header> hostile;
  for (size_t i = 3; i < fields.size(); i++) {
    size_t colon = fields[i].find(':');
    hostile.push_back(
        {fields[i].substr(0, colon), colon == std::string::npos ? "" : fields[i].substr(colon + 1)});
  }
  Signer signer(kSecret);

  switch (mode) {
    case 0: {
      Verifier v(kSecret, 8);
      std::string nonce;
      Verifier::Verdict got = v.verify(method, path, hostile, body, kNow + offset, &nonce);
      check(got != Verifier::Verdict::Ok && v.remembered() == 0);
      check(to_string(got) != nullptr);
      break;
    }
    case 1: {
      Verifier v(kSecret, 8);
      std::string nonce;
      std::vector<Header> hs = signer.sign(method, path, body, kNow + offset, &nonce);
      bool repeated = false;
      for (const Header& h : hostile) repeated = repeated || signing_name(h.name);
      hs.insert(hs.end(), hostile.begin(), hostile.end());
      std::string seen;
      Verifier::Verdict got = v.verify(method, path, hs, body, kNow, &seen);
      Verifier::Verdict want = repeated                      ? Verifier::Verdict::BadSignature
                               : offset < -60 || offset > 60 ? Verifier::Verdict::Expired
                                                             : Verifier::Verdict::Ok;
      check(got == want);
      if (got == Verifier::Verdict::Ok) {
        check(seen == nonce);
        check(v.verify(method, path, hs, body, kNow, nullptr) == Verifier::Verdict::Replayed);
        // The same signature over anything else is refused.
        check(v.verify(method, path + "x", hs, body, kNow, nullptr) == Verifier::Verdict::BadSignature);
        check(v.verify(method, path, hs, body + "x", kNow, nullptr) == Verifier::Verdict::BadSignature);
      }
      break;
    }
    case 2: {
      Verifier v(kSecret, 8);
      int64_t now = kNow;
      size_t accepted = 0;
      for (size_t i = 0; i < fields.size() && i < 64; i++) {
        const int8_t step = fields[i].empty() ? 1 : static_cast<int8_t>(fields[i][0]);
        now += step;
        std::string nonce;
        std::vector<Header> hs = signer.sign("POST", fields[i], body, now, &nonce);
        Verifier::Verdict got = v.verify("POST", fields[i], hs, body, now, nullptr);
        check(v.remembered() <= 8);
        if (got == Verifier::Verdict::Ok)
          accepted++;
        else
          check(got == Verifier::Verdict::Replayed && v.remembered() == 8);
      }
      check(accepted <= fields.size());
      break;
    }
    default: {
      const int status = 100 + static_cast<int>(static_cast<uint16_t>(offset) % 500);
      const std::string nonce(32, 'a');
      std::vector<Header> hs = hostile;
      bool dup = false;
      for (const Header& h : hostile) dup = dup || iequals(h.name, "X-Shoal-Signature");
      hs.push_back({"X-Shoal-Signature", signer.sign_response(nonce, status, body)});
      check(signer.check_response(nonce, status, hs, body) == !dup);
      check(!signer.check_response(nonce, status + 1, hs, body));
      check(!signer.check_response(nonce, status, hostile, body));
      break;
    }
  }
  return 0;
}
