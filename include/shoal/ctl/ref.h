// Image references and digests as shoalctl's users write them. Pure: no I/O,
// any thread.
#pragma once

#include <string>
#include <string_view>

namespace shoal::ctl {

// A parsed image reference, e.g. "docker://registry.example.org:5000/lab/app:1.2"
// or "registry.example.org/lab/app@sha256:<64 hex>".
struct ImageRef {
  std::string scheme;      // "docker", "oras", or "" when none was written
  std::string registry;    // "registry.example.org:5000"; "docker.io" for Docker Hub
  std::string api_host;    // host[:port] to send requests to (registry-1.docker.io for docker.io)
  std::string repository;  // "lab/app"; Docker Hub single names get "library/"
  std::string tag;         // "" when only a digest was given
  std::string digest;      // "sha256:<64 lower-case hex>" or ""
  // What goes after /manifests/: the digest when there is one, else the tag.
  std::string reference() const { return digest.empty() ? tag : digest; }
  // registry/repository[:tag][@digest], the form messages print.
  std::string str() const;
};

// Accepts [docker://|oras://]NAME[:TAG][@sha256:HEX] where NAME's first
// component is a registry host when it holds a '.' or a ':' or is
// "localhost" (Docker's rule; otherwise the registry is docker.io). A
// missing tag and digest mean ":latest". Rejects other schemes, upper-case
// repository names, empty components, malformed tags, ports outside 1..65535
// and digests other than sha256 with 64 lower-case hex digits, with *why
// saying which.
bool parse_image_ref(std::string_view text, ImageRef* out, std::string* why);

// True for "sha256:" followed by exactly 64 lower-case hex digits.
bool valid_sha256_digest(std::string_view d);

// The digest a URL names: "sha256:<hex>" when the path (the query ignored)
// has a segment that is exactly a valid sha256 digest, as in
// /v2/<repo>/blobs/sha256:<hex> and /v2/<repo>/manifests/sha256:<hex>;
// "" otherwise. When several segments qualify the last one wins.
std::string digest_in_url(std::string_view url);

}  // namespace shoal::ctl
