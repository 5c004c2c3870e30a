#include "shoal/task/task_id.h"

#include <openssl/evp.h>

#include <vector>

namespace shoal::task {
namespace {

bool is_hex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string_view path_of(std::string_view url) {
  auto scheme = url.find("://");
  if (scheme != std::string_view::npos) {
    auto slash = url.find('/', scheme + 3);
    url = slash == std::string_view::npos ? std::string_view("/") : url.substr(slash);
  }
  auto q = url.find_first_of("?#");
  return q == std::string_view::npos ? url : url.substr(0, q);
}

}  // namespace

std::string digest_in_path(std::string_view path) {
  path = path_of(path);
  for (std::string_view kind : {"/blobs/sha256:", "/manifests/sha256:"}) {
    auto at = path.rfind(kind);
    if (at == std::string_view::npos || path.substr(0, 4) != "/v2/") continue;
    std::string_view hex = path.substr(at + kind.size());
    if (is_hex64(hex)) return std::string(hex);
  }
  // distribution's storage driver layout, as a redirect target:
  // .../blobs/sha256/ab/abcdef.../data
  constexpr std::string_view kStore = "/blobs/sha256/";
  auto at = path.rfind(kStore);
  if (at != std::string_view::npos) {
    std::string_view rest = path.substr(at + kStore.size());
    if (rest.size() == 2 + 1 + 64 + 5 && rest.substr(2, 1) == "/" && rest.substr(67) == "/data") {
      std::string_view hex = rest.substr(3, 64);
      if (is_hex64(hex) && hex.substr(0, 2) == rest.substr(0, 2)) return std::string(hex);
    }
  }
  return "";
}

bool is_manifest_path(std::string_view path) {
  path = path_of(path);
  return path.substr(0, 4) == "/v2/" && path.find("/manifests/sha256:") != std::string_view::npos &&
         !digest_in_path(path).empty();
}

std::string repo_in_path(std::string_view path) {
  path = path_of(path);
  if (path.substr(0, 4) != "/v2/") return "";
  for (std::string_view kind : {"/blobs/", "/manifests/"}) {
    auto at = path.rfind(kind);
    if (at != std::string_view::npos && at > 4) return std::string(path.substr(4, at - 4));
  }
  return "";
}

std::string filter_query(std::string_view url, std::string_view filter) {
  auto q = url.find('?');
  if (q == std::string_view::npos || filter.empty()) return std::string(url);
  std::vector<std::string_view> drop;
  for (size_t i = 0; i <= filter.size();) {
    size_t amp = filter.find('&', i);
    if (amp == std::string_view::npos) amp = filter.size();
    if (amp > i) drop.push_back(filter.substr(i, amp - i));
    i = amp + 1;
  }
  std::string_view frag;
  std::string_view query = url.substr(q + 1);
  auto hash = query.find('#');
  if (hash != std::string_view::npos) {
    frag = query.substr(hash);
    query = query.substr(0, hash);
  }
  std::string out(url.substr(0, q));
  std::string kept;
  for (size_t i = 0; i <= query.size();) {
    size_t amp = query.find('&', i);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view param = query.substr(i, amp - i);
    std::string_view name = param.substr(0, param.find('='));
    bool dropped = false;
    for (auto d : drop)
      if (name == d) dropped = true;
    if (!param.empty() && !dropped) {
      if (!kept.empty()) kept += '&';
      kept += param;
    }
    i = amp + 1;
  }
  if (!kept.empty()) out += "?" + kept;
  out += frag;
  return out;
}

const EVP_MD* sha256_md() {
  static const EVP_MD* md = [] {
    const EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return m != nullptr ? m : EVP_sha256();
  }();
  return md;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, sha256_md(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string task_id_for(std::string_view url, std::string_view filter, bool* by_digest) {
  std::string d = digest_in_path(url);
  *by_digest = !d.empty();
  if (*by_digest) return d;
  return sha256_hex(filter_query(url, filter));
}

}  // namespace shoal::task
