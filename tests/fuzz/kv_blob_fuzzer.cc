// Fuzzes the decoder of stored KV layers (DecodeKvBlob). The first input byte picks
// the layer asked for; the rest is the blob's body, which the fuzzer frames with the
// right magic and checksum so that mutations reach the header and payload checks (the
// unframed input is decoded too, for the frame's own checks).
#include <cstddef>
#include <cstdint>
#include <string>

#include "cache/framed_record.h"
#include "cache/kv_blob.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::cache {
namespace {

// The key the seeds (fuzz_seeds_main.cc) are written under.
const KvKey& Key() {
  static const KvKey* const key =
      new KvKey{.content_hash = "c0ffee", .model_fingerprint = "abc123", .prefix_hash = "f00d"};
  return *key;
}

void CheckDecoded(const DecodedKvLayer& decoded, uint32_t layer) {
  fuzz::Check(decoded.shape.ValidateShape().ok(), "accepted a shape that fails ValidateShape");
  fuzz::Check(layer < static_cast<uint32_t>(decoded.shape.num_layers), "layer beyond the shape");
  fuzz::Check(decoded.bytes.size() == decoded.shape.LayerBytes(),
              "decoded bytes disagree with the shape");
}

void FuzzOne(absl::string_view bytes) {
  if (bytes.empty()) return;
  const uint32_t layer = static_cast<uint8_t>(bytes[0]) % 8;
  const absl::string_view body = bytes.substr(1);
  // The body as a stored value, unframed: nearly always DATA_LOSS at the frame.
  if (absl::StatusOr<DecodedKvLayer> raw = DecodeKvBlob(body, Key(), layer); raw.ok()) {
    CheckDecoded(*raw, layer);
  }
  const std::string blob = FrameRecord("APKV", body);
  absl::StatusOr<DecodedKvLayer> decoded = DecodeKvBlob(blob, Key(), layer);
  if (!decoded.ok()) {
    fuzz::Check(absl::IsDataLoss(decoded.status()), "a damaged blob is not DATA_LOSS");
    return;
  }
  CheckDecoded(*decoded, layer);
}

}  // namespace
}  // namespace apeserve::cache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::cache::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
