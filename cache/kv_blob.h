// The stored form of one layer of one KV state (DESIGN.md section 4), framed by
// framed_record.h (magic "APKV", XXH3-64 checksum). After the magic, little-endian:
//
//   u16 format version   u8 dtype (model::KvDtype)   u8 quantization (KvQuantization)
//   u32 layer   u32 num_layers   u32 kv_heads   u32 head_dim
//   i64 start_position   i64 length
//   u8 n + n bytes: content hash, then model fingerprint, then prefix hash
//   u64 payload bytes, then the payload: the layer's K then V (kv_segment.h) as stored,
//   raw or quantized (kv_quantization.h)
//
// A blob is used only if its frame, version, sizes, key and layer all match what the
// reader asked for; anything else reads as DATA_LOSS and the caller rebuilds the KV.
#ifndef APESERVE_CACHE_KV_BLOB_H_
#define APESERVE_CACHE_KV_BLOB_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cache/kv_quantization.h"
#include "cache/store_keys.h"
#include "model/kv_segment.h"

namespace apeserve::cache {

inline constexpr uint16_t kKvBlobFormatVersion = 1;

// Serializes layer `layer` of `kv` (which must be valid) under `key`. INVALID_ARGUMENT
// if the layer does not exist or `quantization` does not apply to the KV's dtype or
// values (the caller may store it as kNone instead).
absl::StatusOr<std::string> EncodeKvBlob(const model::KvSegment& kv, uint32_t layer,
                                         const KvKey& key, KvQuantization quantization);

// One decoded layer: the segment's shape (layers left empty) and the layer's bytes in
// shape.dtype, dequantized when it was stored as int8.
struct DecodedKvLayer {
  model::KvSegment shape;
  std::string bytes;
  KvQuantization quantization = KvQuantization::kNone;
};

// Parses and checks `blob`, expected to hold layer `layer` of `key`. DATA_LOSS naming
// the first thing that does not match.
absl::StatusOr<DecodedKvLayer> DecodeKvBlob(absl::string_view blob, const KvKey& key,
                                            uint32_t layer);

}  // namespace apeserve::cache

#endif  // APESERVE_CACHE_KV_BLOB_H_
