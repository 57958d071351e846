#include "server/token_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/config_file.h"

namespace apeserve::server {
namespace {

// A tokens file is a few kilobytes; refuse what cannot be one.
constexpr size_t kMaxTokensFileBytes = 16 << 20;

std::array<uint8_t, 32> Sha256(absl::string_view bytes) {
  std::array<uint8_t, 32> digest{};
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "read") return Role::kRead;
  if (name == "write") return Role::kWrite;
  if (name == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(
      absl::StrCat("role '", name, "' is not one of read, write, admin"));
}

absl::StatusOr<TokenGrant> ParseGrant(const nlohmann::json& entry, size_t index) {
  const std::string where = absl::StrCat("tokens[", index, "]");
  const auto text = [&](const char* key) -> absl::StatusOr<std::string> {
    if (!entry.contains(key) || !entry[key].is_string() || entry[key].get<std::string>().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", key, " must be a non-empty string"));
    }
    return entry[key].get<std::string>();
  };
  if (!entry.is_object()) return absl::InvalidArgumentError(where + " is not an object");
  TokenGrant grant;
  absl::StatusOr<std::string> name = text("name");
  if (!name.ok()) return name.status();
  grant.name = *std::move(name);
  absl::StatusOr<std::string> hex = text("sha256");
  if (!hex.ok()) return hex.status();
  if (hex->size() != 64 ||
      !std::all_of(hex->begin(), hex->end(), [](char c) { return absl::ascii_isxdigit(c); })) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ".sha256 must be 64 hex digits (the SHA-256 of the token, e.g. from sha256sum)"));
  }
  const std::string bytes = absl::HexStringToBytes(*hex);
  std::copy(bytes.begin(), bytes.end(), grant.sha256.begin());
  absl::StatusOr<std::string> role_name = text("role");
  if (!role_name.ok()) return role_name.status();
  absl::StatusOr<Role> role = ParseRole(*role_name);
  if (!role.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", role.status().message()));
  grant.role = *role;
  if (!entry.contains("namespaces") || !entry["namespaces"].is_array() ||
      entry["namespaces"].empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".namespaces must list namespaces (\"*\" for all)"));
  }
  for (const nlohmann::json& item : entry["namespaces"]) {
    if (!item.is_string() || item.get<std::string>().empty()) {
      return absl::InvalidArgumentError(where + ".namespaces holds a value that is not a name");
    }
    grant.namespaces.push_back(item.get<std::string>());
  }
  return grant;
}

// The token of `context`'s `authorization: Bearer <token>` metadata, if any.
std::optional<absl::string_view> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  const auto found = metadata.find("authorization");
  if (found == metadata.end()) return std::nullopt;
  const absl::string_view value(found->second.data(), found->second.size());
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return std::nullopt;
  }
  return absl::StripAsciiWhitespace(value.substr(kScheme.size()));
}

bool Grants(const TokenGrant& grant, absl::string_view namespace_id) {
  for (const std::string& allowed : grant.namespaces) {
    if (allowed == "*" || allowed == namespace_id) return true;
  }
  return false;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kRead:
      return "read";
    case Role::kWrite:
      return "write";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<std::vector<TokenGrant>> ParseTokensFile(absl::string_view text) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("tokens") ||
      !json["tokens"].is_array()) {
    return absl::InvalidArgumentError(
        "the tokens file must be a JSON object with a \"tokens\" array");
  }
  std::vector<TokenGrant> grants;
  std::set<std::string> names;
  std::set<std::array<uint8_t, 32>> digests;
  for (size_t i = 0; i < json["tokens"].size(); ++i) {
    absl::StatusOr<TokenGrant> grant = ParseGrant(json["tokens"][i], i);
    if (!grant.ok()) return grant.status();
    if (!names.insert(grant->name).second || !digests.insert(grant->sha256).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens[", i, "] repeats the name or the digest of an earlier token"));
    }
    grants.push_back(*std::move(grant));
  }
  return grants;
}

absl::StatusOr<std::unique_ptr<TokenAuth>> TokenAuth::Open(std::string path) {
  std::unique_ptr<TokenAuth> auth(new TokenAuth(std::move(path)));
  if (absl::Status loaded = auth->Reload(); !loaded.ok()) return loaded;
  return auth;
}

size_t TokenAuth::size() const {
  absl::MutexLock lock(&mutex_);
  return grants_->size();
}

absl::Status TokenAuth::Reload() {
  if (!enabled()) return absl::OkStatus();
  absl::StatusOr<std::string> text = ReadConfigFile(path_, "tokens file", kMaxTokensFileBytes);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<TokenGrant>> grants = ParseTokensFile(*text);
  if (!grants.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens file '", path_, "': ", grants.status().message()));
  }
  auto fresh = std::make_shared<const std::vector<TokenGrant>>(*std::move(grants));
  absl::MutexLock lock(&mutex_);
  grants_ = std::move(fresh);
  return absl::OkStatus();
}

absl::Status TokenAuth::Check(const grpc::ServerContextBase& context, Role needed,
                              std::optional<absl::string_view> namespace_id) const {
  if (!enabled()) return absl::OkStatus();
  const std::optional<absl::string_view> token = BearerToken(context);
  if (!token.has_value() || token->empty()) {
    return absl::UnauthenticatedError(
        "this server needs a token: send the metadata 'authorization: Bearer <token>'");
  }
  std::shared_ptr<const std::vector<TokenGrant>> grants;
  {
    absl::MutexLock lock(&mutex_);
    grants = grants_;
  }
  const std::array<uint8_t, 32> digest = Sha256(*token);
  // Every digest is compared, each in constant time: neither the time of one
  // comparison nor where the search stops tells how close a guess came.
  const TokenGrant* match = nullptr;
  for (const TokenGrant& grant : *grants) {
    if (CRYPTO_memcmp(grant.sha256.data(), digest.data(), digest.size()) == 0) match = &grant;
  }
  if (match == nullptr) return absl::UnauthenticatedError("the token is not valid");
  if (match->role < needed) {
    return absl::PermissionDeniedError(absl::StrCat("token '", match->name, "' has the role ",
                                                    RoleName(match->role), "; this call needs ",
                                                    RoleName(needed)));
  }
  if (namespace_id.has_value() && !Grants(*match, *namespace_id)) {
    return absl::PermissionDeniedError(
        absl::StrCat("token '", match->name, "' has no grant on namespace '", *namespace_id, "'"));
  }
  return absl::OkStatus();
}

}  // namespace apeserve::server
