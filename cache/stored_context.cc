#include "cache/stored_context.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cache/framed_record.h"
#include "cache/records.pb.h"
#include "cache/store_keys.h"

namespace apeserve::cache {
namespace {

constexpr char kContextMagic[] = "APDR";

absl::Status Unreadable(absl::string_view namespace_id, absl::string_view id,
                        absl::string_view why) {
  return absl::DataLossError(absl::StrCat("the record of context '", namespace_id, "/",
                                          absl::CHexEscape(id), "' is unreadable: ", why));
}

}  // namespace

absl::Status ValidateContextInput(const ContextInput& input) {
  if (absl::Status status = ValidateNamespace(input.namespace_id); !status.ok()) return status;
  if (absl::Status status = ValidateContextId(input.id); !status.ok()) return status;
  if (input.tokens.empty() || input.tokens.size() > kMaxContextTokens) {
    return absl::InvalidArgumentError(absl::StrCat("a context needs 1 to ", kMaxContextTokens,
                                                   " tokens, not ", input.tokens.size()));
  }
  if (input.text.size() > kMaxContextTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a context's text may have at most ",
                                                   kMaxContextTextBytes, " bytes, not ",
                                                   input.text.size()));
  }
  if (input.labels.size() > kMaxLabels) {
    return absl::InvalidArgumentError(absl::StrCat("a context may have at most ", kMaxLabels,
                                                   " labels, not ", input.labels.size()));
  }
  for (const auto& [key, value] : input.labels) {
    if (key.empty() || key.size() > kMaxLabelBytes || value.size() > kMaxLabelBytes) {
      return absl::InvalidArgumentError(absl::StrCat("label '", absl::CHexEscape(key.substr(0, 64)),
                                                     "': keys need 1 to ", kMaxLabelBytes,
                                                     " bytes and values at most as many"));
    }
  }
  for (size_t i = 0; i < input.tokens.size(); ++i) {
    if (input.tokens[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " of the context is negative (", input.tokens[i], ")"));
    }
  }
  return absl::OkStatus();
}

std::string EncodeContextRecord(const StoredContext& document) {
  ContextRecord record;
  record.set_namespace_id(document.namespace_id);
  record.set_id(document.id);
  record.set_content_hash(document.content_hash);
  record.set_content_salt(document.content_salt);
  record.mutable_token_ids()->Add(document.tokens.begin(), document.tokens.end());
  record.set_text(document.text);
  for (const auto& [key, value] : document.labels) {
    Label* label = record.add_labels();
    label->set_key(key);
    label->set_value(value);
  }
  record.set_created_unix_micros(absl::ToUnixMicros(document.created));
  record.set_pinned(document.pinned);
  if (document.expires != absl::InfiniteFuture()) {
    record.set_expire_unix_micros(absl::ToUnixMicros(document.expires));
  }
  return FrameRecord(kContextMagic, record.SerializeAsString());
}

absl::StatusOr<StoredContext> DecodeContextRecord(absl::string_view value,
                                                  absl::string_view namespace_id,
                                                  absl::string_view id) {
  const absl::StatusOr<absl::string_view> payload = UnframeRecord(kContextMagic, value);
  if (!payload.ok()) return Unreadable(namespace_id, id, payload.status().message());
  ContextRecord record;
  if (!record.ParseFromArray(payload->data(), static_cast<int>(payload->size()))) {
    return Unreadable(namespace_id, id, "it does not parse");
  }
  if (record.namespace_id() != namespace_id || record.id() != id) {
    return Unreadable(namespace_id, id, "it names another context");
  }
  StoredContext document{
      .namespace_id = record.namespace_id(),
      .id = record.id(),
      .content_hash = record.content_hash(),
      .content_salt = record.content_salt(),
      .tokens = {record.token_ids().begin(), record.token_ids().end()},
      .text = record.text(),
      .labels = {},
      .created = absl::FromUnixMicros(record.created_unix_micros()),
      .pinned = record.pinned(),
      .expires = record.expire_unix_micros() == 0
                     ? absl::InfiniteFuture()
                     : absl::FromUnixMicros(record.expire_unix_micros()),
  };
  for (const Label& label : record.labels()) document.labels[label.key()] = label.value();
  if (document.tokens.empty() ||
      ContentHash(document.tokens, document.content_salt) != document.content_hash) {
    return Unreadable(namespace_id, id, "its tokens do not match its content hash");
  }
  return document;
}

}  // namespace apeserve::cache
