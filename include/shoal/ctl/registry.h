// The parts of the OCI distribution protocol `shoalctl preheat` needs that
// are pure parsing: WWW-Authenticate challenges, token responses, manifests
// and indexes. No I/O; any thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace shoal::ctl {

// The Accept header a manifest GET sends: image manifests and indexes, OCI
// and Docker.
extern const char* const kManifestAccept;

// One authentication challenge: the scheme ("Bearer", "Basic"; as sent) and
// its parameters (names lower-cased, quoted values unquoted).
struct Challenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};

// Parses a WWW-Authenticate value, which may hold several challenges
// ("Basic realm=x, Bearer realm=...") and returns the Bearer one when there
// is one, else the first. False on a value that is not a challenge list.
bool parse_www_authenticate(std::string_view value, Challenge* out);

// The token request URL of a Bearer challenge: realm?service=...&scope=...
// (query values percent-encoded). The challenge's own scope is used when it
// has one, else "repository:<repository>:pull". "" without a realm.
std::string token_url(const Challenge& c, const std::string& repository);

// The token of a token endpoint's JSON answer ("token", else
// "access_token"). False when there is neither.
bool parse_token_response(std::string_view body, std::string* token);

struct Descriptor {
  std::string media_type;
  std::string digest;  // "sha256:<hex>", checked
  uint64_t size = 0;
  std::string platform;  // "os/arch[/variant]" for index entries that have one
  bool foreign = false;  // has "urls": a non-distributable layer fetched from elsewhere
};

struct Manifest {
  enum class Kind { Image, Index };
  Kind kind = Kind::Image;
  std::string media_type;
  bool has_config = false;
  Descriptor config;                  // Image
  std::vector<Descriptor> layers;     // Image: layers, or an artifact manifest's blobs
  std::vector<Descriptor> manifests;  // Index
};

// Parses an image manifest (OCI or Docker schema 2), an index (OCI) or a
// manifest list (Docker), or an OCI artifact manifest. The kind comes from
// the body's mediaType, else content_type (parameters ignored), else from
// the fields present. Rejects Docker schema 1, unknown media types, and any
// descriptor without a sha256 digest or with a negative or missing size.
bool parse_manifest(std::string_view body, std::string_view content_type, Manifest* out, std::string* why);

// True when a descriptor's platform ("os/arch[/variant]") is what want asks
// for: os and arch equal; want's variant, if it has one, equal too.
bool platform_matches(const std::string& have, const std::string& want);

// Percent-encodes everything but RFC 3986's unreserved characters.
std::string url_encode(std::string_view s);

}  // namespace shoal::ctl
