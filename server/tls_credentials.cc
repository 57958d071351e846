#include "server/tls_credentials.h"

#include <grpcpp/security/server_credentials.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "server/config_file.h"

namespace apeserve::server {
namespace {

// Certificates and keys are a few kilobytes; a larger file is not one.
constexpr size_t kMaxPemBytes = 1 << 20;

// The text of the PEM file `path` (named `what` in errors).
absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  APE_ASSIGN_OR_RETURN(std::string pem, ReadConfigFile(path, what, kMaxPemBytes));
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "' holds no PEM block (-----BEGIN ...)"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& options) {
  if (!options.enabled()) {
    if (!options.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "a client CA needs the server's own certificate and key: give tls_cert and tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.cert_file.empty() || options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both the certificate (tls_cert) and its private key (tls_key)");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  APE_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(options.cert_file, "TLS certificate"));
  APE_ASSIGN_OR_RETURN(pair.private_key, ReadPem(options.key_file, "TLS private key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!options.client_ca_file.empty()) {
    APE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.client_ca_file, "TLS client CA"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    ssl.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace apeserve::server
