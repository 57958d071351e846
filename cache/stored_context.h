// A document as the registry stores it, and its record's stored form: a ContextRecord
// (records.proto) framed with magic "APDR" and a checksum (framed_record.h).
#ifndef APESERVE_CACHE_DOCUMENT_H_
#define APESERVE_CACHE_DOCUMENT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace apeserve::cache {

// A document to store. Its tokens are what the KV is computed from; the text is kept
// only to be shown back.
struct ContextInput {
  std::string namespace_id;
  std::string id;
  std::vector<int32_t> tokens;
  std::string text;
  std::map<std::string, std::string> labels;
  // Retention (DESIGN.md §4): the KV of a pinned document is never evicted from the
  // store and goes last from the host tier; a document expires, KV and all, at
  // `expires`.
  bool pinned = false;
  absl::Time expires = absl::InfiniteFuture();
};

struct StoredContext {
  std::string namespace_id;
  std::string id;
  std::string content_hash;  // store_keys.h: ContentHash(tokens, content_salt)
  std::string content_salt;  // empty: KV shared across namespaces
  std::vector<int32_t> tokens;
  std::string text;
  std::map<std::string, std::string> labels;
  absl::Time created;
  bool pinned = false;
  absl::Time expires = absl::InfiniteFuture();
};

// Limits on one document; they also keep its record far below protobuf's 2 GiB.
inline constexpr size_t kMaxContextTokens = size_t{1} << 20;
inline constexpr size_t kMaxContextTextBytes = size_t{16} << 20;
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelBytes = 1024;

// INVALID_ARGUMENT naming the field: bad namespace or id, no tokens or too many, a
// negative token id, text or labels past the limits. Ids, text and labels may hold
// any bytes (UTF-8 or not).
absl::Status ValidateContextInput(const ContextInput& input);

std::string EncodeContextRecord(const StoredContext& document);

// The document stored under (namespace_id, id). DATA_LOSS, naming it, if the value
// fails its frame or checksum, does not parse, names another document, or its
// tokens do not match its content hash.
absl::StatusOr<StoredContext> DecodeContextRecord(absl::string_view value,
                                                  absl::string_view namespace_id,
                                                  absl::string_view id);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_DOCUMENT_H_
