// Task identity. Content-addressed URLs (registry blobs and manifests by
// digest, and a registry's storage paths that a blob GET redirects to) are
// named by their digest, so the registry URL, the object-store URL it
// redirects to and any mirror share one task. Any other URL is named by the
// SHA-256 of the URL without the proxy.defaultFilter query parameters (the
// ones presigned URLs change on every request). Pure functions, any thread.
#pragma once

#include <string>
#include <string_view>

struct evp_md_st;  // OpenSSL's EVP_MD

namespace shoal::task {

// The 64-hex SHA-256 digest a path names, or "":
//   /v2/<repo>/blobs/sha256:<hex>, /v2/<repo>/manifests/sha256:<hex>,
//   .../blobs/sha256/<hex[0:2]>/<hex>/data (distribution's storage layout).
// Upper-case hex, other lengths and other algorithms give "".
std::string digest_in_path(std::string_view path);

// True for /v2/<repo>/manifests/sha256:<hex> (else a blob or a plain URL).
bool is_manifest_path(std::string_view path);

// "<repo>" of a /v2/<repo>/(blobs|manifests)/... path, or "".
std::string repo_in_path(std::string_view path);

// Removes the query parameters named in filter ("Expires&Signature&ns",
// names separated by '&') from url; order of the rest kept.
std::string filter_query(std::string_view url, std::string_view filter);

// The task id for a request: digest_in_path(path of url) when there is one
// (*by_digest = true), else hex SHA-256 of filter_query(url, filter).
std::string task_id_for(std::string_view url, std::string_view filter, bool* by_digest);

// Lower-case hex of the SHA-256 of data (OpenSSL libcrypto).
std::string sha256_hex(std::string_view data);

// OpenSSL 3's SHA-256, fetched once: EVP_sha256() makes every digest
// initialization look the algorithm up again (a lock and string compares).
// Thread-safe; never null.
const ::evp_md_st* sha256_md();

}  // namespace shoal::task
