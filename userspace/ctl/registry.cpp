#include "shoal/ctl/registry.h"

#include <cjson/cJSON.h>

#include <cctype>
#include <memory>

#include "shoal/ctl/ref.h"

namespace shoal::ctl {

const char* const kManifestAccept =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.artifact.manifest.v1+json";

namespace {

bool is_token_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

void skip_ows(std::string_view s, size_t* i) {
  while (*i < s.size() && (s[*i] == ' ' || s[*i] == '\t')) ++*i;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

using JsonPtr = std::unique_ptr<cJSON, decltype(&cJSON_Delete)>;

const char* jstr(const cJSON* o, const char* k) {
  const cJSON* v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : nullptr;
}

bool parse_descriptor(const cJSON* d, const char* where, Descriptor* out, std::string* why) {
  if (!cJSON_IsObject(d)) {
    *why = std::string(where) + " is not an object";
    return false;
  }
  const char* dg = jstr(d, "digest");
  if (!dg || !valid_sha256_digest(dg)) {
    *why = std::string(where) + ": digest " + (dg ? "\"" + std::string(dg) + "\"" : "missing") +
           " is not sha256:<64 hex> (the only algorithm supported)";
    return false;
  }
  const cJSON* sz = cJSON_GetObjectItemCaseSensitive(d, "size");
  if (!cJSON_IsNumber(sz) || sz->valuedouble < 0 || sz->valuedouble > 9.0e15) {
    *why = std::string(where) + ": size missing or invalid";
    return false;
  }
  Descriptor r;
  r.digest = dg;
  r.size = static_cast<uint64_t>(sz->valuedouble);
  if (const char* mt = jstr(d, "mediaType")) r.media_type = mt;
  const cJSON* urls = cJSON_GetObjectItemCaseSensitive(d, "urls");
  r.foreign = cJSON_IsArray(urls) && cJSON_GetArraySize(urls) > 0;
  if (const cJSON* p = cJSON_GetObjectItemCaseSensitive(d, "platform"); cJSON_IsObject(p)) {
    const char* os = jstr(p, "os");
    const char* arch = jstr(p, "architecture");
    const char* var = jstr(p, "variant");
    if (os && arch) {
      r.platform = std::string(os) + "/" + arch;
      if (var && *var) r.platform += std::string("/") + var;
    }
  }
  *out = std::move(r);
  return true;
}

}  // namespace

bool parse_www_authenticate(std::string_view v, Challenge* out) {
  std::vector<Challenge> all;
  size_t i = 0;
  skip_ows(v, &i);
  while (i < v.size()) {
    // scheme
    size_t s = i;
    while (i < v.size() && is_token_char(v[i])) ++i;
    if (i == s) return false;
    Challenge c;
    c.scheme = std::string(v.substr(s, i - s));
    skip_ows(v, &i);
    // params: name=value, separated by commas; a token not followed by '='
    // starts the next challenge.
    for (;;) {
      while (i < v.size() && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) ++i;
      if (i >= v.size()) break;
      size_t ns = i;
      while (i < v.size() && is_token_char(v[i])) ++i;
      if (i == ns) return false;
      size_t ne = i;
      skip_ows(v, &i);
      if (i >= v.size() || v[i] != '=') {
        i = ns;  // the next challenge's scheme
        break;
      }
      ++i;
      skip_ows(v, &i);
      std::string val;
      if (i < v.size() && v[i] == '"') {
        ++i;
        bool closed = false;
        while (i < v.size()) {
          char ch = v[i++];
          if (ch == '\\' && i < v.size()) {
            val += v[i++];
          } else if (ch == '"') {
            closed = true;
            break;
          } else {
            val += ch;
          }
        }
        if (!closed) return false;
      } else {
        size_t vs = i;
        while (i < v.size() && v[i] != ',' && v[i] != ' ' && v[i] != '\t') ++i;
        val = std::string(v.substr(vs, i - vs));
      }
      c.params[lower(v.substr(ns, ne - ns))] = val;
    }
    all.push_back(std::move(c));
    skip_ows(v, &i);
  }
  if (all.empty()) return false;
  for (auto& c : all) {
    if (lower(c.scheme) == "bearer") {
      *out = c;
      return true;
    }
  }
  *out = all.front();
  return true;
}

std::string url_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string token_url(const Challenge& c, const std::string& repository) {
  auto realm = c.params.find("realm");
  if (realm == c.params.end() || realm->second.empty()) return "";
  std::string u = realm->second;
  char sep = u.find('?') == std::string::npos ? '?' : '&';
  auto service = c.params.find("service");
  if (service != c.params.end() && !service->second.empty()) {
    u += sep;
    u += "service=" + url_encode(service->second);
    sep = '&';
  }
  auto scope = c.params.find("scope");
  std::string sc = scope != c.params.end() && !scope->second.empty() ? scope->second
                                                                     : "repository:" + repository + ":pull";
  u += sep;
  u += "scope=" + url_encode(sc);
  return u;
}

bool parse_token_response(std::string_view body, std::string* token) {
  JsonPtr o(cJSON_ParseWithLength(body.data(), body.size()), cJSON_Delete);
  if (!o || !cJSON_IsObject(o.get())) return false;
  const char* t = jstr(o.get(), "token");
  if (!t || !*t) t = jstr(o.get(), "access_token");
  if (!t || !*t) return false;
  *token = t;
  return true;
}

bool parse_manifest(std::string_view body, std::string_view content_type, Manifest* out, std::string* why) {
  JsonPtr o(cJSON_ParseWithLength(body.data(), body.size()), cJSON_Delete);
  if (!o || !cJSON_IsObject(o.get())) {
    *why = "the manifest is not a JSON object";
    return false;
  }
  const cJSON* root = o.get();
  std::string mt;
  if (const char* m = jstr(root, "mediaType")) mt = m;
  if (mt.empty()) {
    std::string ct(content_type.substr(0, content_type.find(';')));
    while (!ct.empty() && (ct.back() == ' ' || ct.back() == '\t')) ct.pop_back();
    // Registries answer application/json or octet-stream for bodies
    // without a mediaType: then the fields decide.
    if (ct != "application/json" && ct != "application/octet-stream" && ct != "text/plain") mt = ct;
  }
  Manifest m;
  m.media_type = mt;
  const cJSON* schema = cJSON_GetObjectItemCaseSensitive(root, "schemaVersion");
  if (cJSON_IsNumber(schema) && schema->valueint == 1) {
    *why = "Docker schema 1 manifests are not supported";
    return false;
  }
  if (mt.empty()) {
    if (cJSON_GetObjectItemCaseSensitive(root, "manifests"))
      mt = "application/vnd.oci.image.index.v1+json";
    else if (cJSON_GetObjectItemCaseSensitive(root, "blobs"))
      mt = "application/vnd.oci.artifact.manifest.v1+json";
    else if (cJSON_GetObjectItemCaseSensitive(root, "layers") ||
             cJSON_GetObjectItemCaseSensitive(root, "config"))
      mt = "application/vnd.oci.image.manifest.v1+json";
  }
  auto list = [&](const char* key, std::vector<Descriptor>* dst, bool required) {
    const cJSON* arr = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!arr) {
      if (required) *why = std::string("no \"") + key + "\" array";
      return !required;
    }
    if (!cJSON_IsArray(arr)) {
      *why = std::string("\"") + key + "\" is not an array";
      return false;
    }
    int n = 0;
    const cJSON* d = nullptr;
    cJSON_ArrayForEach(d, arr) {
      Descriptor desc;
      if (!parse_descriptor(d, (std::string(key) + "[" + std::to_string(n) + "]").c_str(), &desc, why))
        return false;
      dst->push_back(std::move(desc));
      ++n;
    }
    return true;
  };
  if (mt == "application/vnd.oci.image.index.v1+json" ||
      mt == "application/vnd.docker.distribution.manifest.list.v2+json") {
    m.kind = Manifest::Kind::Index;
    if (!list("manifests", &m.manifests, true)) return false;
  } else if (mt == "application/vnd.oci.image.manifest.v1+json" ||
             mt == "application/vnd.docker.distribution.manifest.v2+json") {
    m.kind = Manifest::Kind::Image;
    const cJSON* cfg = cJSON_GetObjectItemCaseSensitive(root, "config");
    if (cfg) {
      if (!parse_descriptor(cfg, "config", &m.config, why)) return false;
      m.has_config = true;
    } else if (mt == "application/vnd.docker.distribution.manifest.v2+json") {
      *why = "no \"config\" in a Docker image manifest";
      return false;
    }
    if (!list("layers", &m.layers, mt == "application/vnd.docker.distribution.manifest.v2+json"))
      return false;
  } else if (mt == "application/vnd.oci.artifact.manifest.v1+json") {
    m.kind = Manifest::Kind::Image;
    if (!list("blobs", &m.layers, false)) return false;
  } else if (mt.find("manifest.v1") != std::string::npos && mt.find("docker") != std::string::npos) {
    *why = "Docker schema 1 manifests are not supported";
    return false;
  } else {
    *why = mt.empty() ? "cannot tell what kind of manifest this is (no mediaType, no layers or manifests)"
                      : "unsupported manifest media type \"" + mt + "\"";
    return false;
  }
  if (m.media_type.empty()) m.media_type = mt;
  *out = std::move(m);
  return true;
}

bool platform_matches(const std::string& have, const std::string& want) {
  if (have.empty()) return false;
  auto split = [](const std::string& p) {
    std::vector<std::string> parts;
    size_t s = 0;
    for (;;) {
      size_t e = p.find('/', s);
      parts.push_back(p.substr(s, e == std::string::npos ? std::string::npos : e - s));
      if (e == std::string::npos) break;
      s = e + 1;
    }
    return parts;
  };
  auto h = split(have), w = split(want);
  if (h.size() < 2 || w.size() < 2) return false;
  if (h[0] != w[0] || h[1] != w[1]) return false;
  if (w.size() >= 3) return h.size() >= 3 && h[2] == w[2];
  return true;
}

}  // namespace shoal::ctl
