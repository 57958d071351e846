// The key schema of the data directory (DESIGN.md section 4), in one place.
//
// Column family "docs":
//   d <namespace> \0 <id>                      -> framed ContextRecord
//   r <content_hash> / <namespace> \0 <id>     -> "" or "p" (the document references that
//                                                KV; "p": and pins it)
//   x <expiry, 8 bytes> <namespace> \0 <id>     -> "" (the document expires then)
//   t                                          -> the fingerprint of the tokenizer the
//                                                documents' token ids come from
// Column family "kv":
//   m <content_hash> / <fingerprint> / <prefix_hash>           -> framed KvEntryRecord
//   l <content_hash> / <fingerprint> / <prefix_hash> / <layer> -> KV blob (kv_blob.h)
// The layer is 4 bytes big-endian so that layers sort in order. Content hash first: one
// range delete drops every KV state of a content, under any model or prefix.
#ifndef APESERVE_CACHE_STORE_KEYS_H_
#define APESERVE_CACHE_STORE_KEYS_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace apeserve::cache {

// What one stored KV state depends on: the document's tokens, the model and the
// shared prefix it was encoded after.
struct KvKey {
  std::string content_hash;
  std::string model_fingerprint;
  std::string prefix_hash;

  // "<content_hash>/<fingerprint>/<prefix_hash>": the name of the entry in every tier.
  std::string Name() const;
  bool operator==(const KvKey&) const = default;
};

// Limits on names. Namespaces: 1..128 of [A-Za-z0-9._-]. Ids: 1..512 bytes, no NUL.
// Hashes and fingerprints: 1..64 of [0-9a-z]. INVALID_ARGUMENT names the field.
absl::Status ValidateNamespace(absl::string_view namespace_id);
absl::Status ValidateContextId(absl::string_view id);
absl::Status ValidateHash(absl::string_view field, absl::string_view value);
absl::Status ValidateKvKey(const KvKey& key);

// XXH3-128 of the token ids (little-endian int32), as 32 hex digits: the key of a
// document's KV, shared by every document with the same tokens and salt. An empty salt
// hashes the tokens alone; any other salt (a namespace, when namespaces are isolated)
// is hashed before them, so that equal tokens under two salts get unrelated keys.
std::string ContentHash(absl::Span<const int32_t> tokens, absl::string_view salt);

std::string ContextKey(absl::string_view namespace_id, absl::string_view id);
// The first byte of every document key (for a scan of all of them).
inline constexpr char kContextTag = 'd';
// The one key holding the tokenizer's fingerprint (Tokenizer::fingerprint()).
inline constexpr char kTokenizerKey[] = "t";

std::string ReferenceKey(absl::string_view content_hash, absl::string_view namespace_id,
                         absl::string_view id);
// Every reference to one content starts with this.
std::string ReferencePrefix(absl::string_view content_hash);
// The value of a reference from a pinned document (others hold "").
inline constexpr char kPinnedReference[] = "p";
// The first byte of every reference key (for a scan of all of them).
inline constexpr char kReferenceTag = 'r';
// The content hash a reference key names; INVALID_ARGUMENT if it is not one.
absl::StatusOr<std::string> ParseReferenceKey(absl::string_view key);

// Expiry index: keys sort by expiry time (microseconds since the epoch, big-endian,
// offset so that times before 1970 sort first too).
std::string ExpiryKey(absl::Time expires, absl::string_view namespace_id, absl::string_view id);
// Every expiry key at or before `time` sorts before this.
std::string ExpiryKeyLimit(absl::Time time);
inline constexpr char kExpiryTag = 'x';
struct ExpiringContext {
  absl::Time expires;
  std::string namespace_id;
  std::string id;
};
// INVALID_ARGUMENT if `key` is not an expiry key.
absl::StatusOr<ExpiringContext> ParseExpiryKey(absl::string_view key);

std::string KvEntryKey(const KvKey& key);
std::string KvLayerKey(const KvKey& key, uint32_t layer);
// [begin, end) covering every entry and layer key of one content, any model or prefix.
std::pair<std::string, std::string> KvEntryRange(absl::string_view content_hash);
std::pair<std::string, std::string> KvLayerRange(absl::string_view content_hash);
// [begin, end) covering every layer key of one entry.
std::pair<std::string, std::string> KvLayerRange(const KvKey& key);
// The first byte of every KV entry key (for a scan of all entries).
inline constexpr char kKvEntryTag = 'm';
// The KvKey of an entry key; INVALID_ARGUMENT if it is not one.
absl::StatusOr<KvKey> ParseKvEntryKey(absl::string_view key);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_STORE_KEYS_H_
