// Shared pieces of the tls unit tests: CMocka includes, the throwaway PKI
// made with the openssl CLI at start-up, and byte shuttling between two
// in-memory sessions.
#pragma once

// CMocka needs these before its own header.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka.h declares print_error() and friends without C linkage.
extern "C" {
#include <cmocka.h>
}

#include <memory>
#include <string>
#include <vector>

#include "shoal/tls/cert_authority.h"
#include "shoal/tls/session.h"

namespace shoal::tls::test {

// Files under a mkdtemp directory, created once per run by make_pki().
struct Pki {
  std::string dir;
  std::string ca_crt, ca_key;              // RSA 2048 site CA, PEM, key mode 0600
  std::string ca_der, ca_key_der;          // the same CA in DER
  std::string ec_ca_crt, ec_ca_key;        // P-256 CA
  std::string other_ca_crt, other_ca_key;  // an unrelated CA
  std::string leaf_crt, leaf_key;          // a non-CA certificate signed by the CA
  std::string loose_key;                   // copy of ca_key with mode 0644
};

// Builds the PKI (aborts the run if openssl fails) and returns it.
const Pki& pki();
// Removes the directory; called once at exit.
void remove_pki();

// The loaded RSA CA, shared by tests.
const CertAuthority& ca();

// Runs a shell command, returning its exit status; output is captured into
// *out when out is non-null.
int run(const std::string& cmd, std::string* out = nullptr);

// Moves a's output into b and b's into a until both handshakes finish or
// one fails (or max_rounds pass). When one_byte, feeds a byte per step.
// Returns true when both report Ok.
bool pump_handshake(Session* a, Session* b, bool one_byte = false, int max_rounds = 100000);
// Moves everything from src's output into dst.
void transfer(Session* src, Session* dst);
// Reads every plaintext byte dst has buffered.
std::vector<uint8_t> drain(Session* dst, Status* last = nullptr);

// Helpers shared by the session and client_hello tests.
struct Endpoints {
  Rng rng;
  TrustStore trust;
  std::unique_ptr<ServerConfig> server_cfg;
  std::unique_ptr<ClientConfig> client_cfg;
  explicit Endpoints(const std::string& trust_file, bool insecure = false);
};

int run_client_hello_tests();
int run_cert_authority_tests();
int run_name_constraints_tests();
int run_session_tests();
int run_record_layer_tests();
int run_psk_tests();
int run_ticket_tests();

}  // namespace shoal::tls::test
