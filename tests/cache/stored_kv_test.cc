#include "cache/stored_kv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>

#include "absl/time/time.h"
#include "cache/kv_quantization.h"
#include "rocksdb/write_batch.h"
#include "tests/cache/synthetic_kv.h"
#include "tests/util/status_matchers.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;

const KvKey kKey{.content_hash = "c0ffee", .model_fingerprint = "abc123", .prefix_hash = "f00d"};

// The reservation must hold the whole entry, or the batch grows (and copies) again.
TEST(StoredKvTest, TheReservedBatchBytesHoldTheWholeEntry) {
  struct Case {
    model::KvDtype dtype;
    int32_t layers;
    int32_t kv_heads;
    int32_t head_dim;
    int tokens_of;  // SyntheticTokens(n) has 3 + n % 13 tokens
  };
  for (const Case& c :
       {Case{model::KvDtype::kFloat32, 1, 1, 1, 0}, Case{model::KvDtype::kFloat32, 30, 3, 64, 12},
        Case{model::KvDtype::kFloat16, 4, 2, 8, 5}, Case{model::KvDtype::kBFloat16, 64, 1, 2, 1}}) {
    const model::KvSegment kv = testing::SyntheticKv(
        "m", "p", testing::SyntheticTokens(c.tokens_of),
        {.dtype = c.dtype, .num_layers = c.layers, .kv_heads = c.kv_heads, .head_dim = c.head_dim});
    for (const KvQuantization quantization :
         {KvQuantization::kNone, KvQuantization::kInt8PerChannel}) {
      rocksdb::WriteBatch batch;
      ASSERT_THAT(AddKvEntry(batch, nullptr, kKey, kv, quantization, absl::UnixEpoch()).status(),
                  IsOk());
      EXPECT_LE(batch.GetDataSize(), KvEntryBatchBytes(kv))
          << c.layers << " layers of " << kv.LayerBytes() << " bytes";
      EXPECT_GE(KvEntryBatchBytes(kv), kv.TotalBytes());
    }
  }
}

}  // namespace
}  // namespace apeserve::cache
