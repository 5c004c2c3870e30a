// The peer-link PSK (see peer_tls.h).
#include "shoal/p2p/peer_tls.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "shoal/tls/session.h"

namespace shoal::p2p {

std::string derive_peer_psk(std::string_view secret) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return "";
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return "";
  char digest[] = "SHA256";
  // OSSL_PARAM wants non-const pointers; HKDF only reads these.
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(kPeerPskSalt),
                                        sizeof kPeerPskSalt - 1),
      OSSL_PARAM_construct_end(),
  };
  std::string out(kPeerPskLen, '\0');
  int ok = EVP_KDF_derive(ctx, reinterpret_cast<unsigned char*>(out.data()), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  return ok == 1 ? out : "";
}

PeerTls::PeerTls() = default;

PeerTls::~PeerTls() = default;

std::unique_ptr<PeerTls> PeerTls::create(std::string_view secret, std::string* err) {
  std::string key = derive_peer_psk(secret);
  if (key.empty()) {
    *err = "peer TLS: deriving the key from the cluster secret failed";
    return nullptr;
  }
  std::unique_ptr<PeerTls> t(new PeerTls());
  t->rng_ = std::make_unique<tls::Rng>();
  std::string why;
  t->server_ = tls::ServerConfig::psk(t->rng_.get(), key, kPeerPskIdentity, &why);
  if (t->server_ != nullptr) t->client_ = tls::ClientConfig::psk(t->rng_.get(), key, kPeerPskIdentity, &why);
  OPENSSL_cleanse(key.data(), key.size());  // mbedTLS holds its own copies
  if (t->client_ == nullptr) {
    *err = "peer TLS: " + why;
    return nullptr;
  }
  return t;
}

}  // namespace shoal::p2p
