// shoalctl preheat REF: fetches an image's manifest, config and layers
// through the local shoald so that they land in its store and are announced
// to the cluster's P2P network before a job array pulls them.
//
//   GET /v2/REPO/manifests/TAG          (401 -> Bearer token -> again)
//   GET /v2/REPO/manifests/sha256:M     the form shoald caches
//     index? -> GET manifests/sha256:C  for the chosen platform(s)
//   GET /v2/REPO/blobs/sha256:B ...     config and layers, each hashed
//   admin "tasks"                        did shoald store them? from where?
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "shoal/ctl/ctl.h"
#include "shoal/ctl/http_client.h"
#include "shoal/ctl/ref.h"
#include "shoal/ctl/registry.h"
#include "shoal/util/hex.h"

namespace shoal::ctl {

namespace {

constexpr size_t kMaxManifest = 4 << 20;

std::string sha256_hex(const std::string& data) {
  unsigned char h[32];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), h, &n, EVP_sha256(), nullptr);
  return util::hex(h, n);
}

struct Item {
  std::string kind;    // "manifest", "index", "config", "layer"
  std::string digest;  // sha256:...
  uint64_t size = 0;
  double seconds = 0;
  std::string platform;
};

// A failure with the exit code it maps to.
struct Failure {
  int code = kExitOk;
  std::string msg;
  bool failed() const { return code != kExitOk; }
};

class Preheater {
 public:
  Preheater(HttpClient& c, ImageRef ref, std::string scheme, std::vector<http::Header> headers, bool show)
      : c_(c), ref_(std::move(ref)), scheme_(std::move(scheme)), show_(show) {
    for (auto& h : headers) {
      if (http::iequals(h.name, "Authorization"))
        user_auth_ = h.value;
      else
        headers_.push_back(h);
    }
    if (user_auth_.rfind("Bearer ", 0) == 0 || user_auth_.rfind("bearer ", 0) == 0) auth_ = user_auth_;
  }

  std::string base() const { return scheme_ + "://" + ref_.api_host + "/v2/" + ref_.repository; }

  // GET url with the registry's authorization, doing the token dance on a
  // 401 once. body_fn gets a 2xx body.
  Failure get(const std::string& url, std::vector<http::Header> extra, Response* resp,
              const HttpClient::HeadFn& head_fn, const HttpClient::BodyFn& body_fn) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::vector<http::Header> hs = headers_;
      for (auto& h : extra) hs.push_back(h);
      if (!auth_.empty()) hs.push_back({"Authorization", auth_});
      std::string err;
      if (!c_.request("GET", url, hs, resp, head_fn, body_fn, &err)) return {kExitFailed, err};
      if (resp->status != 401 || attempt == 1) break;
      const std::string* ch = resp->find("WWW-Authenticate");
      Challenge c;
      if (!ch || !parse_www_authenticate(*ch, &c))
        return {kExitFailed, "401 without a usable WWW-Authenticate challenge"};
      if (http::iequals(c.scheme, "Basic")) {
        if (user_auth_.empty() || !auth_.empty())
          return {kExitFailed,
                  "401: the registry wants Basic credentials (--header 'Authorization: Basic ...')"};
        auth_ = user_auth_;
        continue;
      }
      if (!http::iequals(c.scheme, "Bearer"))
        return {kExitFailed, "401 with an unsupported challenge: " + *ch};
      if (!auth_.empty() && auth_ != user_auth_)
        return {kExitFailed, "401 even with a fresh token: access denied"};
      if (!auth_.empty()) return {kExitFailed, "401: the registry refused the given Authorization header"};
      Failure f = fetch_token(c);
      if (f.failed()) return f;
    }
    return {};
  }

  Failure fetch_token(const Challenge& c) {
    std::string url = token_url(c, ref_.repository);
    if (url.empty()) return {kExitFailed, "the registry's Bearer challenge has no realm"};
    std::vector<http::Header> hs;
    if (!user_auth_.empty()) hs.push_back({"Authorization", user_auth_});
    Response r;
    std::string body, err;
    bool ok = c_.request(
        "GET", url, hs, &r, nullptr,
        [&](const char* d, size_t n) {
          body.append(d, n);
          return body.size() < (1 << 20);
        },
        &err);
    if (!ok) return {kExitFailed, "token from " + url + ": " + err};
    if (r.status / 100 != 2)
      return {kExitFailed,
              "token from " + url + ": " + std::to_string(r.status) + " " + r.reason + " " + excerpt(r.body)};
    std::string token;
    if (!parse_token_response(body, &token))
      return {kExitFailed, "token from " + url + ": no token in the answer"};
    auth_ = "Bearer " + token;
    return {};
  }

  // A manifest (image or index) by reference; *digest gets its sha256.
  Failure manifest(const std::string& reference, std::string* body, std::string* ctype, std::string* digest) {
    Response r;
    body->clear();
    Failure f = get(base() + "/manifests/" + reference, {{"Accept", kManifestAccept}}, &r, nullptr,
                    [&](const char* d, size_t n) {
                      body->append(d, n);
                      return body->size() <= kMaxManifest;
                    });
    if (f.failed()) return {f.code, "manifest " + reference + ": " + f.msg};
    if (r.status / 100 != 2)
      return {kExitFailed, "manifest " + reference + ": " + std::to_string(r.status) + " " + r.reason + " " +
                               excerpt(r.body)};
    *ctype = r.find("Content-Type") ? *r.find("Content-Type") : "";
    *digest = "sha256:" + sha256_hex(*body);
    if (reference.rfind("sha256:", 0) == 0 && *digest != reference)
      return {kExitDigest, "manifest " + reference + " hashes to " + *digest};
    if (const std::string* dcd = r.find("Docker-Content-Digest");
        dcd && dcd->rfind("sha256:", 0) == 0 && *dcd != *digest)
      return {kExitDigest,
              "manifest " + reference + ": the registry says " + *dcd + ", the bytes hash to " + *digest};
    return {};
  }

  // One blob, hashed as it streams and then dropped: shoald keeps it.
  Failure blob(const Item& it, size_t index, size_t count, double* seconds) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
    uint64_t got = 0;
    std::string label =
        "[" + std::to_string(index) + "/" + std::to_string(count) + "] " + it.digest.substr(7, 12);
    Progress bar(label, it.size, show_);
    Response r;
    double t0 = now_seconds();
    Failure f = get(base() + "/blobs/" + it.digest, {}, &r, nullptr, [&](const char* d, size_t n) {
      EVP_DigestUpdate(md.get(), d, n);
      got += n;
      bar.update(got);
      return true;
    });
    bar.finish();
    *seconds = now_seconds() - t0;
    if (f.failed()) return {f.code, it.kind + " " + it.digest + ": " + f.msg};
    if (r.status / 100 != 2)
      return {kExitFailed, it.kind + " " + it.digest + ": " + std::to_string(r.status) + " " + r.reason +
                               " " + excerpt(r.body)};
    unsigned char h[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(md.get(), h, &n);
    std::string hexs;
    static const char* dg = "0123456789abcdef";
    for (unsigned i = 0; i < n; ++i) {
      hexs += dg[h[i] >> 4];
      hexs += dg[h[i] & 15];
    }
    if ("sha256:" + hexs != it.digest)
      return {kExitDigest, it.kind + " " + it.digest + " hashes to sha256:" + hexs};
    if (got != it.size)
      return {kExitDigest, it.kind + " " + it.digest + ": " + std::to_string(got) +
                               " bytes, the manifest says " + std::to_string(it.size)};
    return {};
  }

 private:
  HttpClient& c_;
  ImageRef ref_;
  std::string scheme_;
  std::vector<http::Header> headers_;
  std::string user_auth_, auth_;
  bool show_;
};

// What the daemon knows about the task ids: stored (with bytes by source)
// or not, after waiting up to wait_s for downloads still being committed.
Json daemon_tasks(const Global& g, const std::vector<Item>& items, double wait_s) {
  double deadline = now_seconds() + wait_s;
  for (;;) {
    Json o = json_null();
    if (admin(g, "tasks", nullptr, &o, 15000, true) != kExitOk) return json_null();
    std::set<std::string> active;
    const cJSON* e = nullptr;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o.get(), "active")) {
      const cJSON* id = cJSON_GetObjectItemCaseSensitive(e, "id");
      if (cJSON_IsString(id)) active.insert(id->valuestring);
    }
    bool pending = false;
    for (const auto& it : items) pending = pending || active.count(it.digest.substr(7));
    if (!pending || now_seconds() >= deadline) return o;
    usleep(100 * 1000);
  }
}

const cJSON* find_stored(const cJSON* tasks, const std::string& digest) {
  const cJSON* e = nullptr;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(tasks, "stored")) {
    const cJSON* id = cJSON_GetObjectItemCaseSensitive(e, "id");
    if (cJSON_IsString(id) && digest.compare(7, std::string::npos, id->valuestring) == 0) return e;
  }
  return nullptr;
}

double jnum(const cJSON* o, const char* k, double dflt = -1) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

}  // namespace

int cmd_preheat(const Global& g, std::vector<std::string>& args) {
  std::string refs, platform = "linux/amd64";
  bool all_platforms = false, plain_http = false, platform_given = false;
  ClientArgs ca;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto is = [&](const char* name) { return a == name || a.rfind(std::string(name) + "=", 0) == 0; };
    int shared = parse_client_option("preheat", args, &i, &ca);
    if (shared < 0) return kExitUsage;
    if (shared > 0) continue;
    if (is("--platform")) {
      if (!option_value(args, &i, "--platform", &platform)) return kExitUsage;
      if (std::count(platform.begin(), platform.end(), '/') < 1 ||
          std::count(platform.begin(), platform.end(), '/') > 2)
        return usage_error("preheat", "--platform wants OS/ARCH[/VARIANT], got '" + platform + "'");
      platform_given = true;
    } else if (a == "--all-platforms") {
      all_platforms = true;
    } else if (a == "--plain-http") {
      plain_http = true;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("preheat", "unknown option '" + a + "'");
    } else if (refs.empty()) {
      refs = a;
    } else {
      return usage_error("preheat", "one REF only, got '" + a + "' too");
    }
  }
  if (refs.empty()) return usage_error("preheat", "needs a REF");
  if (all_platforms && platform_given)
    return usage_error("preheat", "--platform and --all-platforms exclude each other");
  ImageRef ref;
  std::string why;
  if (!parse_image_ref(refs, &ref, &why)) return usage_error("preheat", "bad REF '" + refs + "': " + why);
  Access acc;
  std::unique_ptr<HttpClient> client;
  if (int rc = make_client("preheat", g, &ca, std::string("shoalctl/") + SHOAL_VERSION + " (preheat)", &acc,
                           &client);
      rc != kExitOk)
    return rc;
  const std::vector<http::Header>& headers = ca.headers;
  const bool quiet = ca.quiet;
  const AccessOptions& ao = ca.ao;
  std::string err;
  bool human = !g.json && !quiet;
  Preheater ph(*client, ref, plain_http ? "http" : "https", headers, human);
  std::vector<Item> items;
  std::vector<std::string> chosen;
  double t0 = now_seconds();
  auto fail = [&](const Failure& f) {
    if (g.json) {
      Json o(cJSON_CreateObject(), cJSON_Delete);
      cJSON_AddBoolToObject(o.get(), "ok", false);
      cJSON_AddStringToObject(o.get(), "ref", ref.str().c_str());
      cJSON_AddStringToObject(o.get(), "error", f.msg.c_str());
      cJSON_AddNumberToObject(o.get(), "exit_code", f.code);
      print_json(o.get());
    }
    fprintf(stderr, "shoalctl preheat: %s: %s\n", ref.str().c_str(), f.msg.c_str());
    return f.code;
  };
  if (human) fprintf(stderr, "preheating %s through shoald at %s\n", ref.str().c_str(), acc.proxy.c_str());

  // The top manifest: by tag first when there is one (never cached), then by
  // digest, which is what shoald caches and what later pulls ask for.
  std::string body, ctype, top_digest;
  double m0 = now_seconds();
  Failure f = ph.manifest(ref.reference(), &body, &ctype, &top_digest);
  if (f.failed()) return fail(f);
  if (ref.digest.empty()) {
    std::string again, ct2, d2;
    f = ph.manifest(top_digest, &again, &ct2, &d2);
    if (f.failed()) return fail(f);
  }
  Manifest top;
  if (!parse_manifest(body, ctype, &top, &why))
    return fail({kExitFailed, "manifest " + top_digest + ": " + why});
  items.push_back({top.kind == Manifest::Kind::Index ? "index" : "manifest", top_digest, body.size(),
                   now_seconds() - m0, ""});
  std::vector<Manifest> images;
  std::vector<std::string> image_platforms;
  if (top.kind == Manifest::Kind::Index) {
    std::vector<std::string> available;
    for (const Descriptor& d : top.manifests) {
      if (!d.platform.empty()) available.push_back(d.platform);
      if (!all_platforms && !platform_matches(d.platform, platform)) continue;
      if (!all_platforms && !chosen.empty()) continue;  // the first match only
      std::string b, ct, dg;
      double c0 = now_seconds();
      f = ph.manifest(d.digest, &b, &ct, &dg);
      if (f.failed()) return fail(f);
      Manifest m;
      if (!parse_manifest(b, ct.empty() ? d.media_type : ct, &m, &why))
        return fail({kExitFailed, "manifest " + d.digest + ": " + why});
      if (m.kind == Manifest::Kind::Index)
        return fail({kExitFailed, "manifest " + d.digest + ": nested indexes are not supported"});
      items.push_back({"manifest", d.digest, b.size(), now_seconds() - c0, d.platform});
      images.push_back(std::move(m));
      image_platforms.push_back(d.platform);
      chosen.push_back(d.platform.empty() ? "unknown" : d.platform);
    }
    if (images.empty()) {
      std::string list;
      for (auto& p : available) list += (list.empty() ? "" : ", ") + p;
      return fail({kExitFailed, "no image for " + platform +
                                    " in the index (it has: " + (list.empty() ? "none" : list) + ")"});
    }
  } else {
    images.push_back(top);
    image_platforms.push_back("");
  }
  // Blobs, once each even when several images share them.
  std::vector<Item> blobs;
  std::set<std::string> seen;
  size_t foreign = 0;
  for (size_t k = 0; k < images.size(); ++k) {
    const Manifest& m = images[k];
    if (m.has_config && seen.insert(m.config.digest).second)
      blobs.push_back({"config", m.config.digest, m.config.size, 0, image_platforms[k]});
    for (const Descriptor& l : m.layers) {
      if (l.foreign) {
        ++foreign;
        continue;
      }
      if (seen.insert(l.digest).second) blobs.push_back({"layer", l.digest, l.size, 0, image_platforms[k]});
    }
  }
  uint64_t total = 0;
  for (const auto& b : blobs) total += b.size;
  if (human)
    fprintf(stderr, "%s: %zu blob(s), %s%s\n", top_digest.c_str(), blobs.size(), human_bytes(total).c_str(),
            chosen.empty() ? ""
                           : (" for " +
                              [&] {
                                std::string s;
                                for (auto& p : chosen) s += (s.empty() ? "" : ", ") + p;
                                return s;
                              }())
                                 .c_str());
  for (size_t i = 0; i < blobs.size(); ++i) {
    f = ph.blob(blobs[i], i + 1, blobs.size(), &blobs[i].seconds);
    if (f.failed()) return fail(f);
    if (human)
      fprintf(stderr, "  %-8s %s  %10s  %6.2f s\n", blobs[i].kind.c_str(), blobs[i].digest.c_str(),
              human_bytes(blobs[i].size).c_str(), blobs[i].seconds);
    items.push_back(blobs[i]);
  }
  double secs = now_seconds() - t0;

  // Did shoald keep them? Only an admin can ask; others get "unknown".
  Json tasks = ao.admin_reachable ? daemon_tasks(g, items, 5.0) : json_null();
  size_t stored = 0, missing = 0, manifests_missing = 0;
  uint64_t b_origin = 0, b_peer = 0;
  Json out(cJSON_CreateObject(), cJSON_Delete);
  cJSON* arr = cJSON_CreateArray();
  for (const auto& it : items) {
    cJSON* e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "kind", it.kind.c_str());
    cJSON_AddStringToObject(e, "digest", it.digest.c_str());
    cJSON_AddNumberToObject(e, "size", static_cast<double>(it.size));
    cJSON_AddNumberToObject(e, "seconds", it.seconds);
    if (!it.platform.empty()) cJSON_AddStringToObject(e, "platform", it.platform.c_str());
    if (tasks) {
      const cJSON* s = find_stored(tasks.get(), it.digest);
      cJSON_AddBoolToObject(e, "stored", s != nullptr);
      if (s) {
        ++stored;
        for (const char* k : {"bytes_origin", "bytes_peer", "bytes_reuse"}) {
          double v = jnum(s, k);
          if (v >= 0) cJSON_AddNumberToObject(e, k, v);
        }
        if (jnum(s, "bytes_origin") > 0) b_origin += static_cast<uint64_t>(jnum(s, "bytes_origin"));
        if (jnum(s, "bytes_peer") > 0) b_peer += static_cast<uint64_t>(jnum(s, "bytes_peer"));
      } else if (it.kind == "config" || it.kind == "layer") {
        ++missing;
      } else {
        // Manifests are cached only with a manifests/sha256 rule; pulls
        // fetch them from the registry otherwise, which costs little.
        ++manifests_missing;
      }
    }
    cJSON_AddItemToArray(arr, e);
  }
  bool ok = missing == 0;
  if (g.json) {
    cJSON_AddBoolToObject(out.get(), "ok", ok);
    cJSON_AddStringToObject(out.get(), "ref", ref.str().c_str());
    cJSON_AddStringToObject(out.get(), "manifest_digest", top_digest.c_str());
    cJSON_AddStringToObject(out.get(), "proxy", acc.proxy.c_str());
    cJSON_AddItemToObject(out.get(), "items", arr);
    cJSON_AddNumberToObject(out.get(), "blobs", static_cast<double>(blobs.size()));
    cJSON_AddNumberToObject(out.get(), "bytes", static_cast<double>(total));
    cJSON_AddNumberToObject(out.get(), "seconds", secs);
    if (foreign) cJSON_AddNumberToObject(out.get(), "foreign_layers_skipped", static_cast<double>(foreign));
    if (tasks) {
      cJSON_AddNumberToObject(out.get(), "stored", static_cast<double>(stored));
      cJSON_AddNumberToObject(out.get(), "not_stored", static_cast<double>(missing));
      cJSON_AddNumberToObject(out.get(), "manifests_not_stored", static_cast<double>(manifests_missing));
    }
    cJSON_AddNumberToObject(out.get(), "exit_code", ok ? kExitOk : kExitFailed);
    print_json(out.get());
  } else {
    cJSON_Delete(arr);
    if (!quiet) {
      printf("preheated %s (%s): %zu blob(s), %s in %.2f s", ref.str().c_str(), top_digest.c_str(),
             blobs.size(), human_bytes(total).c_str(), secs);
      if (foreign) printf(", %zu foreign layer(s) skipped", foreign);
      printf("\n");
      if (tasks) {
        printf("shoald stored %zu of %zu object(s); fetched %s from the origin, %s from peers\n", stored,
               stored + missing + manifests_missing, human_bytes(b_origin).c_str(),
               human_bytes(b_peer).c_str());
        if (manifests_missing)
          printf("note: %zu manifest(s) not cached by shoald (no proxies rule matches manifests/sha256)\n",
                 manifests_missing);
      } else {
        printf("not checked whether shoald stored them (asking needs root or the admin group, on %s)\n",
               g.socket.c_str());
      }
    }
  }
  if (!ok)
    fprintf(stderr,
            "shoalctl preheat: shoald did not store %zu object(s): is %s in hijackHTTPS.hosts, and do "
            "proxies rules "
            "match blobs/sha256 and manifests/sha256? (shoalctl status)\n",
            missing, ref.api_host.c_str());
  return ok ? kExitOk : kExitFailed;
}

}  // namespace shoal::ctl
