#include "cache/store_keys.h"

#include <xxhash.h>

#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace apeserve::cache {
namespace {

constexpr char kLayerTag = 'l';
constexpr size_t kMaxNamespaceBytes = 128;
constexpr size_t kMaxIdBytes = 512;
constexpr size_t kMaxHashBytes = 64;

// Keys of one content (or one entry, given its name) start with `tag name /`.
std::string ContentRangeBegin(char tag, absl::string_view name) {
  return absl::StrCat(absl::string_view(&tag, 1), name, "/");
}

// The smallest key after every key that starts with ContentRangeBegin: '/' + 1.
std::string ContentRangeEnd(char tag, absl::string_view name) {
  return absl::StrCat(absl::string_view(&tag, 1), name, "0");
}

}  // namespace

std::string KvKey::Name() const {
  return absl::StrCat(content_hash, "/", model_fingerprint, "/", prefix_hash);
}

absl::Status ValidateNamespace(absl::string_view namespace_id) {
  if (namespace_id.empty() || namespace_id.size() > kMaxNamespaceBytes) {
    return absl::InvalidArgumentError(absl::StrCat("namespace must have 1 to ", kMaxNamespaceBytes,
                                                   " characters, not ", namespace_id.size()));
  }
  for (const char c : namespace_id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("namespace '", absl::CHexEscape(namespace_id),
                       "' may hold only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateContextId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("context id must have 1 to ", kMaxIdBytes, " bytes, not ", id.size()));
  }
  if (id.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("context id '", absl::CHexEscape(id), "' contains a NUL byte"));
  }
  return absl::OkStatus();
}

absl::Status ValidateHash(absl::string_view field, absl::string_view value) {
  if (value.empty() || value.size() > kMaxHashBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must have 1 to ", kMaxHashBytes, " characters, not ", value.size()));
  }
  for (const char c : value) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) &&
        !absl::ascii_islower(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " '", absl::CHexEscape(value), "' may hold only digits and lower-case letters"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKvKey(const KvKey& key) {
  if (absl::Status s = ValidateHash("content hash", key.content_hash); !s.ok()) return s;
  if (absl::Status s = ValidateHash("model fingerprint", key.model_fingerprint); !s.ok()) {
    return s;
  }
  return ValidateHash("prefix hash", key.prefix_hash);
}

std::string ContentHash(absl::Span<const int32_t> tokens, absl::string_view salt) {
  const size_t token_bytes = tokens.size() * sizeof(int32_t);
  XXH128_hash_t hash;
  if (salt.empty()) {
    hash = XXH3_128bits(tokens.data(), token_bytes);
  } else {
    // The salt's length (8 bytes) and the salt come before the tokens, so that no two
    // (salt, tokens) pairs hash the same bytes.
    std::string input(sizeof(uint64_t), '\0');
    const uint64_t salt_size = salt.size();
    std::memcpy(input.data(), &salt_size, sizeof(salt_size));
    absl::StrAppend(&input, salt);
    input.append(reinterpret_cast<const char*>(tokens.data()), token_bytes);
    hash = XXH3_128bits(input.data(), input.size());
  }
  return absl::StrFormat("%016x%016x", hash.high64, hash.low64);
}

std::string ContextKey(absl::string_view namespace_id, absl::string_view id) {
  return absl::StrCat(absl::string_view(&kContextTag, 1), namespace_id, absl::string_view("\0", 1),
                      id);
}

std::string ReferenceKey(absl::string_view content_hash, absl::string_view namespace_id,
                         absl::string_view id) {
  return absl::StrCat(ReferencePrefix(content_hash), namespace_id, absl::string_view("\0", 1), id);
}

std::string ReferencePrefix(absl::string_view content_hash) {
  return ContentRangeBegin(kReferenceTag, content_hash);
}

absl::StatusOr<std::string> ParseReferenceKey(absl::string_view key) {
  const size_t slash = key.find('/');
  if (key.size() < 2 || key[0] != kReferenceTag || slash == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", absl::CHexEscape(key), "' is not a reference key"));
  }
  return std::string(key.substr(1, slash - 1));
}

namespace {

// Big-endian, with the sign bit flipped: byte order equals numeric order.
std::string SortableMicros(absl::Time time) {
  const uint64_t value = static_cast<uint64_t>(absl::ToUnixMicros(time)) ^ (uint64_t{1} << 63);
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(value >> (56 - 8 * i));
  return bytes;
}

}  // namespace

std::string ExpiryKey(absl::Time expires, absl::string_view namespace_id, absl::string_view id) {
  return absl::StrCat(absl::string_view(&kExpiryTag, 1), SortableMicros(expires), namespace_id,
                      absl::string_view("\0", 1), id);
}

std::string ExpiryKeyLimit(absl::Time time) {
  return absl::StrCat(absl::string_view(&kExpiryTag, 1),
                      SortableMicros(time + absl::Microseconds(1)));
}

absl::StatusOr<ExpiringContext> ParseExpiryKey(absl::string_view key) {
  const size_t nul = key.find('\0', 9);
  if (key.size() < 11 || key[0] != kExpiryTag || nul == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", absl::CHexEscape(key), "' is not an expiry key"));
  }
  uint64_t sortable = 0;
  for (size_t i = 1; i <= 8; ++i) sortable = (sortable << 8) | static_cast<unsigned char>(key[i]);
  return ExpiringContext{
      .expires = absl::FromUnixMicros(static_cast<int64_t>(sortable ^ (uint64_t{1} << 63))),
      .namespace_id = std::string(key.substr(9, nul - 9)),
      .id = std::string(key.substr(nul + 1))};
}

std::string KvEntryKey(const KvKey& key) {
  return absl::StrCat(absl::string_view(&kKvEntryTag, 1), key.Name());
}

std::string KvLayerKey(const KvKey& key, uint32_t layer) {
  const char big_endian[4] = {static_cast<char>(layer >> 24), static_cast<char>(layer >> 16),
                              static_cast<char>(layer >> 8), static_cast<char>(layer)};
  return absl::StrCat(absl::string_view(&kLayerTag, 1), key.Name(), "/",
                      absl::string_view(big_endian, 4));
}

std::pair<std::string, std::string> KvEntryRange(absl::string_view content_hash) {
  return {ContentRangeBegin(kKvEntryTag, content_hash), ContentRangeEnd(kKvEntryTag, content_hash)};
}

std::pair<std::string, std::string> KvLayerRange(absl::string_view content_hash) {
  return {ContentRangeBegin(kLayerTag, content_hash), ContentRangeEnd(kLayerTag, content_hash)};
}

std::pair<std::string, std::string> KvLayerRange(const KvKey& key) {
  return {ContentRangeBegin(kLayerTag, key.Name()), ContentRangeEnd(kLayerTag, key.Name())};
}

absl::StatusOr<KvKey> ParseKvEntryKey(absl::string_view key) {
  if (!key.empty() && key[0] == kKvEntryTag) {
    const std::vector<std::string> parts = absl::StrSplit(key.substr(1), '/');
    if (parts.size() == 3) {
      KvKey parsed{
          .content_hash = parts[0], .model_fingerprint = parts[1], .prefix_hash = parts[2]};
      if (ValidateKvKey(parsed).ok()) return parsed;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", absl::CHexEscape(key), "' is not a KV entry key"));
}

}  // namespace apeserve::cache
