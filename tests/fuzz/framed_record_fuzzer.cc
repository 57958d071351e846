// Fuzzes the stored records of cache/: the frame itself (UnframeRecord), and the
// document and KV entry records inside it (DecodeContextRecord, DecodeKvEntryRecord).
// The input is a record's payload, which the fuzzer frames with each record's magic and
// checksum so that mutations reach the protobuf parse and the checks after it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cache/framed_record.h"
#include "cache/stored_context.h"
#include "cache/stored_kv.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::cache {
namespace {

// The document the seeds' records name (fuzz_seeds_main.cc).
constexpr absl::string_view kNamespace = "default";
constexpr absl::string_view kId = "doc-1";

void FuzzOne(absl::string_view payload) {
  // The input as a whole stored value: its frame's checks.
  (void)UnframeRecord("APDR", payload);  // DATA_LOSS or a view: either is fine

  // Framing round-trips whatever the payload.
  const std::string document = FrameRecord("APDR", payload);
  const absl::StatusOr<absl::string_view> unframed = UnframeRecord("APDR", document);
  fuzz::Check(unframed.ok() && *unframed == payload, "a framed payload does not unframe");

  absl::StatusOr<StoredContext> context = DecodeContextRecord(document, kNamespace, kId);
  if (context.ok()) {
    fuzz::Check(context->namespace_id == kNamespace && context->id == kId,
                "decoded a record of another context");
    fuzz::Check(!context->tokens.empty(), "decoded a context without tokens");
    // What reads back writes back the same.
    absl::StatusOr<StoredContext> again =
        DecodeContextRecord(EncodeContextRecord(*context), kNamespace, kId);
    fuzz::Check(again.ok() && again->tokens == context->tokens && again->text == context->text &&
                    again->labels == context->labels && again->pinned == context->pinned,
                "a decoded context does not round-trip");
  } else {
    fuzz::Check(absl::IsDataLoss(context.status()), "a damaged context record is not DATA_LOSS");
  }

  absl::StatusOr<KvEntryInfo> entry = DecodeKvEntryRecord(FrameRecord("APKE", payload));
  if (entry.ok()) {
    fuzz::Check(entry->num_layers > 0, "decoded an entry without layers");
  } else {
    fuzz::Check(absl::IsDataLoss(entry.status()), "a damaged entry record is not DATA_LOSS");
  }
}

}  // namespace
}  // namespace apeserve::cache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::cache::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
