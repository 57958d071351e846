// Token authentication and per-namespace grants. A client sends its token as
// `authorization: Bearer <token>` call metadata; the tokens file lists, for each token,
// a name, the SHA-256 of the token (never the token itself), a role and the namespaces
// it may use:
//
//   {"tokens": [
//     {"name": "ingest-bot", "sha256": "<64 hex digits>", "role": "write",
//      "namespaces": ["docs", "faq"]},
//     {"name": "ops", "sha256": "<64 hex digits>", "role": "admin", "namespaces": ["*"]}]}
//
// Roles: read (get, list, generate, score, server and model info), write (read, and
// create, upload, update, delete, store inline contexts), admin (write, and the
// server-wide stats and load). The file is read at start and again on Reload (SIGHUP);
// a file that fails to parse keeps the tokens in force. Digests are compared in
// constant time. Health checking is not behind tokens (gRPC's own service).
// Thread-safety: Check and Reload may run concurrently.
#ifndef APESERVE_SERVER_TOKEN_AUTH_H_
#define APESERVE_SERVER_TOKEN_AUTH_H_

#include <grpcpp/server_context.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace apeserve::server {

enum class Role : uint8_t { kRead = 1, kWrite = 2, kAdmin = 3 };

// "read", "write" or "admin".
absl::string_view RoleName(Role role);

// One entry of the tokens file.
struct TokenGrant {
  std::string name;
  std::array<uint8_t, 32> sha256{};
  Role role = Role::kRead;
  std::vector<std::string> namespaces;  // "*" grants every namespace
};

// The grants of a tokens file's text; INVALID_ARGUMENT naming the first bad entry
// (not JSON, a missing field, a digest that is not 64 hex digits, an unknown role, no
// namespaces, a name or digest given twice).
absl::StatusOr<std::vector<TokenGrant>> ParseTokensFile(absl::string_view text);

class TokenAuth {
 public:
  // Without a file: authentication is off and every call is allowed.
  TokenAuth() = default;
  // Reads `path`; errors as ParseTokensFile, or NOT_FOUND when it cannot be read.
  static absl::StatusOr<std::unique_ptr<TokenAuth>> Open(std::string path);

  TokenAuth(const TokenAuth&) = delete;
  TokenAuth& operator=(const TokenAuth&) = delete;

  bool enabled() const { return !path_.empty(); }
  // Tokens in force.
  size_t size() const;

  // Reads the file again and puts its tokens in force; on an error the old ones stay.
  absl::Status Reload();

  // OK when the call's token grants `needed` (or more) on `namespace_id` (nullopt: a
  // server-wide call). UNAUTHENTICATED without a bearer token or with an unknown one;
  // PERMISSION_DENIED, naming the token, outside its role or namespaces.
  absl::Status Check(const grpc::ServerContextBase& context, Role needed,
                     std::optional<absl::string_view> namespace_id) const;

 private:
  explicit TokenAuth(std::string path) : path_(std::move(path)) {}

  std::string path_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const std::vector<TokenGrant>> grants_ ABSL_GUARDED_BY(mutex_) =
      std::make_shared<const std::vector<TokenGrant>>();
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_TOKEN_AUTH_H_
