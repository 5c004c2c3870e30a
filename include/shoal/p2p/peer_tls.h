// TLS on the links between peers (p2p.tls): a downloader's piece requests
// to another peer's upload server run TLS 1.2 keyed by the cluster secret,
// so private images cross the network encrypted without a certificate per
// node. Every node derives the same pre-shared key from the secret; the
// handshake (DHE-PSK, see tls::kPskSuite) proves both ends hold it and gives
// each connection fresh keys. Requests stay signed (auth.h) as well.
// Scheduler links stay plain: they are signed and carry no image bytes.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace shoal::tls {
class Rng;
class ServerConfig;
class ClientConfig;
}  // namespace shoal::tls

namespace shoal::p2p {

constexpr char kPeerPskIdentity[] = "shoal-p2p-v1";
constexpr char kPeerPskSalt[] = "shoal-p2p-psk-v1";
constexpr size_t kPeerPskLen = 32;

// HKDF-SHA256 (RFC 5869) of the cluster secret, salt kPeerPskSalt, no info,
// kPeerPskLen bytes. Empty only when libcrypto fails. Any thread.
std::string derive_peer_psk(std::string_view secret);

// The PSK configurations of one event loop (they share its Rng): the
// upload server's and the one every piece request uses. Loop-thread only.
class PeerTls {
 public:
  // nullptr with *err when the key cannot be derived or set.
  static std::unique_ptr<PeerTls> create(std::string_view secret, std::string* err);
  ~PeerTls();
  PeerTls(const PeerTls&) = delete;
  PeerTls& operator=(const PeerTls&) = delete;
  tls::ServerConfig* server() { return server_.get(); }
  tls::ClientConfig* client() { return client_.get(); }

 private:
  PeerTls();
  std::unique_ptr<tls::Rng> rng_;
  std::unique_ptr<tls::ServerConfig> server_;
  std::unique_ptr<tls::ClientConfig> client_;
};

}  // namespace shoal::p2p
