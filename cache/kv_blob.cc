#include "cache/kv_blob.h"

#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/framed_record.h"
#include "common/status_macros.h"

namespace apeserve::cache {
namespace {

constexpr char kKvBlobMagic[] = "APKV";

class ByteWriter {
 public:
  template <typename T>
  void Put(T value) {
    out_.append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  void PutShortString(absl::string_view text) {  // at most 255 bytes (hashes are <= 64)
    Put(static_cast<uint8_t>(text.size()));
    out_.append(text.data(), text.size());
  }
  void PutBytes(absl::string_view bytes) {
    Put(static_cast<uint64_t>(bytes.size()));
    out_.append(bytes.data(), bytes.size());
  }
  std::string Release() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads fields from untrusted bytes: every read is bounds-checked and a failed read
// leaves the reader failed, so callers check once at the end.
class ByteReader {
 public:
  explicit ByteReader(absl::string_view in) : in_(in) {}

  template <typename T>
  T Get() {
    T value{};
    if (!Take(sizeof(T))) return value;
    std::memcpy(&value, in_.data() + offset_ - sizeof(T), sizeof(T));
    return value;
  }
  absl::string_view GetShortString() { return GetSpan(Get<uint8_t>()); }
  absl::string_view GetBytes() {
    const auto size = Get<uint64_t>();
    return size > in_.size() ? (failed_ = true, absl::string_view()) : GetSpan(size);
  }
  bool ok() const { return !failed_; }
  bool at_end() const { return offset_ == in_.size(); }

 private:
  bool Take(size_t bytes) {
    if (failed_ || in_.size() - offset_ < bytes) {
      failed_ = true;
      return false;
    }
    offset_ += bytes;
    return true;
  }
  absl::string_view GetSpan(size_t bytes) {
    if (!Take(bytes)) return {};
    return in_.substr(offset_ - bytes, bytes);
  }

  absl::string_view in_;
  size_t offset_ = 0;
  bool failed_ = false;
};

absl::Status Mismatch(absl::string_view field, absl::string_view stored,
                      absl::string_view expected) {
  return absl::DataLossError(
      absl::StrCat("KV blob's ", field, " is '", stored, "', expected '", expected, "'"));
}

}  // namespace

absl::StatusOr<std::string> EncodeKvBlob(const model::KvSegment& kv, uint32_t layer,
                                         const KvKey& key, KvQuantization quantization) {
  if (layer >= kv.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV layer ", layer, " does not exist; the KV has ", kv.layers.size()));
  }
  std::optional<std::string> quantized;
  if (quantization != KvQuantization::kNone) {
    APE_ASSIGN_OR_RETURN(quantized, QuantizeLayer(kv.layers[layer], kv, quantization));
  }
  ByteWriter writer;
  writer.Put(kKvBlobFormatVersion);
  writer.Put(static_cast<uint8_t>(kv.dtype));
  writer.Put(static_cast<uint8_t>(quantization));
  writer.Put(layer);
  writer.Put(static_cast<uint32_t>(kv.num_layers));
  writer.Put(static_cast<uint32_t>(kv.kv_heads));
  writer.Put(static_cast<uint32_t>(kv.head_dim));
  writer.Put(kv.start_position);
  writer.Put(kv.length);
  writer.PutShortString(key.content_hash);
  writer.PutShortString(key.model_fingerprint);
  writer.PutShortString(key.prefix_hash);
  writer.PutBytes(quantized.has_value() ? *quantized : kv.layers[layer]);
  return FrameRecord(kKvBlobMagic, writer.Release());
}

absl::StatusOr<DecodedKvLayer> DecodeKvBlob(absl::string_view blob, const KvKey& key,
                                            uint32_t layer) {
  APE_ASSIGN_OR_RETURN(const absl::string_view body, UnframeRecord(kKvBlobMagic, blob));
  ByteReader reader(body);
  const auto version = reader.Get<uint16_t>();
  const auto dtype = reader.Get<uint8_t>();
  const auto quantization = reader.Get<uint8_t>();
  const auto stored_layer = reader.Get<uint32_t>();
  const auto num_layers = reader.Get<uint32_t>();
  const auto kv_heads = reader.Get<uint32_t>();
  const auto head_dim = reader.Get<uint32_t>();
  const auto start_position = reader.Get<int64_t>();
  const auto length = reader.Get<int64_t>();
  const absl::string_view content_hash = reader.GetShortString();
  const absl::string_view fingerprint = reader.GetShortString();
  const absl::string_view prefix_hash = reader.GetShortString();
  const absl::string_view payload = reader.GetBytes();
  if (!reader.ok() || !reader.at_end()) {
    return absl::DataLossError("KV blob's header does not parse");
  }
  if (version != kKvBlobFormatVersion) {
    return absl::DataLossError(absl::StrCat("KV blob has format version ", version,
                                            "; this build reads ", kKvBlobFormatVersion));
  }
  if (content_hash != key.content_hash) {
    return Mismatch("content hash", content_hash, key.content_hash);
  }
  if (fingerprint != key.model_fingerprint) {
    return Mismatch("model fingerprint", fingerprint, key.model_fingerprint);
  }
  if (prefix_hash != key.prefix_hash) return Mismatch("prefix hash", prefix_hash, key.prefix_hash);
  if (stored_layer != layer) {
    return Mismatch("layer", absl::StrCat(stored_layer), absl::StrCat(layer));
  }
  constexpr auto kMaxInt32 = static_cast<uint32_t>(std::numeric_limits<int32_t>::max());
  if (dtype > static_cast<uint8_t>(model::KvDtype::kFloat16) ||
      quantization > static_cast<uint8_t>(KvQuantization::kInt8PerToken) ||
      num_layers > kMaxInt32 || kv_heads > kMaxInt32 || head_dim > kMaxInt32) {
    return absl::DataLossError("KV blob's dtype, quantization or shape is out of range");
  }
  DecodedKvLayer decoded;
  decoded.shape.dtype = static_cast<model::KvDtype>(dtype);
  decoded.shape.num_layers = static_cast<int32_t>(num_layers);
  decoded.shape.kv_heads = static_cast<int32_t>(kv_heads);
  decoded.shape.head_dim = static_cast<int32_t>(head_dim);
  decoded.shape.start_position = start_position;
  decoded.shape.length = length;
  decoded.quantization = static_cast<KvQuantization>(quantization);
  // ValidateShape() bounds every dimension, so the size arithmetic below cannot overflow.
  if (num_layers == 0 || stored_layer >= num_layers) {
    return absl::DataLossError(absl::StrCat("KV blob's layer ", stored_layer, " is not below its ",
                                            num_layers, " layers"));
  }
  if (absl::Status shape = decoded.shape.ValidateShape(); !shape.ok()) {
    return absl::DataLossError(absl::StrCat("KV blob's shape: ", shape.message()));
  }
  if (payload.size() != QuantizedLayerBytes(decoded.shape, decoded.quantization)) {
    return absl::DataLossError(
        absl::StrCat("KV blob's payload has ", payload.size(), " bytes; its shape needs ",
                     QuantizedLayerBytes(decoded.shape, decoded.quantization)));
  }
  if (decoded.quantization == KvQuantization::kNone) {
    decoded.bytes.assign(payload.data(), payload.size());
  } else {
    absl::StatusOr<std::string> bytes =
        DequantizeLayer(payload, decoded.shape, decoded.quantization);
    if (!bytes.ok()) return absl::DataLossError(bytes.status().message());
    decoded.bytes = *std::move(bytes);
  }
  return decoded;
}

}  // namespace apeserve::cache
