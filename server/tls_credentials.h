// Transport security of the gRPC port: the server's certificate and key, and the CA
// that client certificates must chain to (mutual TLS), read from PEM files at start.
// Thread-safety: plain functions.
#ifndef APESERVE_SERVER_TLS_CREDENTIALS_H_
#define APESERVE_SERVER_TLS_CREDENTIALS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace apeserve::server {

// PEM files; all empty serves plaintext (keep that port on loopback, or behind a proxy
// that terminates TLS).
struct TlsOptions {
  // The server's certificate chain and its private key: both or neither. Default: none.
  std::string cert_file;
  std::string key_file;
  // CA certificates that clients must present a certificate from (mutual TLS); needs
  // cert_file. Default: none (any client may connect; tokens then tell who it is).
  std::string client_ca_file;

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// Plaintext credentials when `options` names no files; else TLS credentials from them.
// INVALID_ARGUMENT for a key without a certificate (or the reverse), a client CA without
// a certificate, or a file that holds no PEM block; NOT_FOUND or PERMISSION_DENIED for
// a file that cannot be read. Whether the key matches the certificate is checked when
// the port opens (ApeServer::Start reports it).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& options);

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_TLS_CREDENTIALS_H_
