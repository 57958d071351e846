#include "cache/kv_blob.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "cache/framed_record.h"
#include "tests/cache/synthetic_kv.h"
#include "tests/util/status_matchers.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

const KvKey kKey{.content_hash = "c0ffee", .model_fingerprint = "abc123", .prefix_hash = "f00d"};

model::KvSegment Segment(model::KvDtype dtype) {
  return testing::SyntheticKv("m", "p", testing::SyntheticTokens(4),
                              {.dtype = dtype, .num_layers = 3, .kv_heads = 2, .head_dim = 4});
}

TEST(KvBlobTest, RoundTripsEveryLayerBitForBitInEveryDtype) {
  for (const model::KvDtype dtype :
       {model::KvDtype::kFloat32, model::KvDtype::kBFloat16, model::KvDtype::kFloat16}) {
    const model::KvSegment kv = Segment(dtype);
    for (uint32_t layer = 0; layer < 3; ++layer) {
      absl::StatusOr<std::string> blob = EncodeKvBlob(kv, layer, kKey, KvQuantization::kNone);
      ASSERT_THAT(blob, IsOk());
      absl::StatusOr<DecodedKvLayer> decoded = DecodeKvBlob(*blob, kKey, layer);
      ASSERT_THAT(decoded, IsOk());
      EXPECT_EQ(decoded->bytes, kv.layers[layer]);
      EXPECT_EQ(decoded->shape.dtype, dtype);
      EXPECT_EQ(decoded->shape.num_layers, 3);
      EXPECT_EQ(decoded->shape.kv_heads, 2);
      EXPECT_EQ(decoded->shape.head_dim, 4);
      EXPECT_EQ(decoded->shape.start_position, kv.start_position);
      EXPECT_EQ(decoded->shape.length, kv.length);
      EXPECT_TRUE(decoded->shape.layers.empty());
    }
  }
}

TEST(KvBlobTest, ABlobForAnotherKeyOrLayerIsRefused) {
  const model::KvSegment kv = Segment(model::KvDtype::kFloat32);
  const std::string blob = *EncodeKvBlob(kv, 1, kKey, KvQuantization::kNone);
  KvKey other_model = kKey;
  other_model.model_fingerprint = "abc124";
  KvKey other_prefix = kKey;
  other_prefix.prefix_hash = "f00e";
  KvKey other_content = kKey;
  other_content.content_hash = "c0ffef";
  EXPECT_THAT(DecodeKvBlob(blob, other_model, 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("model fingerprint")));
  EXPECT_THAT(DecodeKvBlob(blob, other_prefix, 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("prefix hash")));
  EXPECT_THAT(DecodeKvBlob(blob, other_content, 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("content hash")));
  EXPECT_THAT(DecodeKvBlob(blob, kKey, 0),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("layer")));
}

TEST(KvBlobTest, EveryFlippedByteAndEveryTruncationIsDetected) {
  const std::string blob =
      *EncodeKvBlob(Segment(model::KvDtype::kBFloat16), 2, kKey, KvQuantization::kInt8PerToken);
  ASSERT_THAT(DecodeKvBlob(blob, kKey, 2), IsOk());
  for (size_t i = 0; i < blob.size(); ++i) {
    std::string damaged = blob;
    damaged[i] = static_cast<char>(damaged[i] ^ (1 << (i % 8)));
    EXPECT_THAT(DecodeKvBlob(damaged, kKey, 2), StatusIs(absl::StatusCode::kDataLoss, ::testing::_))
        << "byte " << i;
  }
  for (size_t size = 0; size < blob.size(); size += 7) {
    EXPECT_THAT(DecodeKvBlob(blob.substr(0, size), kKey, 2),
                StatusIs(absl::StatusCode::kDataLoss, ::testing::_))
        << "size " << size;
  }
}

// A blob whose checksum is right but whose header lies (a bug or a forged file) is
// still refused, and never read past its end.
TEST(KvBlobTest, AConsistentlyFramedBlobWithABadHeaderIsRefused) {
  const std::string blob =
      *EncodeKvBlob(Segment(model::KvDtype::kFloat32), 0, kKey, KvQuantization::kNone);
  const absl::string_view body = *UnframeRecord("APKV", blob);
  // Offsets after the magic: version 0, dtype 2, quantization 3, layer 4, layers 8,
  // heads 12, head dim 16.
  const struct {
    size_t offset;
    char value;
    const char* message;
  } cases[] = {{0, 9, "format version"},       {2, 7, "out of range"}, {3, 9, "out of range"},
               {8, 0, "layer 0 is not below"}, {12, 0, "shape"},       {16, 100, "payload"}};
  for (const auto& c : cases) {
    std::string forged(body);
    forged[c.offset] = c.value;
    EXPECT_THAT(DecodeKvBlob(FrameRecord("APKV", forged), kKey, 0),
                StatusIs(absl::StatusCode::kDataLoss, HasSubstr(c.message)))
        << "offset " << c.offset;
  }
}

TEST(KvBlobTest, EncodingAMissingLayerIsAnError) {
  EXPECT_THAT(EncodeKvBlob(Segment(model::KvDtype::kFloat32), 3, kKey, KvQuantization::kNone),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer 3")));
}

}  // namespace
}  // namespace apeserve::cache
