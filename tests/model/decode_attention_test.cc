// The batched decode attention against what it replaces: KvCache::Append, then
// CausalAttention or ApeAttention through torch, for a batch of sequences that differ in
// length, layout (causal, APE in both scale forms, with and without prefix and local
// keys) and in whether their cache must grow; and tokens that read held segments in
// place, several of them the same segments together.
#include "model/decode_attention.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <optional>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "model/attention.h"
#include "model/kv_cache.h"

namespace apeserve::model {
namespace {

constexpr int64_t kLayers = 2;

struct SequenceCase {
  int64_t past = 0;                   // keys cached before the new token
  std::optional<ApeLayout> ape = {};  // none: causal
};

struct HeadShape {
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
};

// A cache holding `past` random keys and values in every layer; the same seed gives the
// same contents.
KvCache FilledCache(const HeadShape& shape, int64_t past, uint64_t seed) {
  KvCache cache(kLayers, shape.kv_heads, shape.head_dim, torch::TensorOptions());
  torch::manual_seed(seed);
  for (size_t layer = 0; layer < kLayers; ++layer) {
    cache.Append(layer, torch::randn({shape.kv_heads, past, shape.head_dim}) * 2,
                 torch::randn({shape.kv_heads, past, shape.head_dim}));
  }
  return cache;
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// One decode step per layer over random queries, keys and values (the same `seed`, the
// same ones): `expect` gets each token's query [H, 1, D], the keys and values torch
// should attend over (its new key and value appended to `theirs`, as the step appends
// them to the token's own cache) and the kernel's output row [H, D].
using ExpectToken = absl::FunctionRef<void(size_t layer, size_t s, const torch::Tensor& q_s,
                                           const torch::Tensor& keys, const torch::Tensor& values,
                                           const torch::Tensor& output)>;
void DecodeEveryLayer(const HeadShape& shape, const std::vector<DecodeToken>& tokens,
                      std::vector<KvCache>& theirs, uint64_t seed, ExpectToken expect) {
  const auto n = static_cast<int64_t>(tokens.size());
  torch::manual_seed(seed);
  for (size_t layer = 0; layer < kLayers; ++layer) {
    SCOPED_TRACE(::testing::Message() << "layer " << layer);
    const torch::Tensor q = torch::randn({n, shape.heads, shape.head_dim}) * 1.5;
    const torch::Tensor k = torch::randn({n, shape.kv_heads, shape.head_dim}) * 2;
    const torch::Tensor v = torch::randn({n, shape.kv_heads, shape.head_dim});
    torch::Tensor output = torch::full({n, shape.heads, shape.head_dim}, NAN);
    DecodeAttention(layer, q, k, v, tokens, output);
    for (size_t s = 0; s < tokens.size(); ++s) {
      SCOPED_TRACE(::testing::Message() << "sequence " << s);
      const int64_t row = tokens[s].row;
      const auto [keys, values] = theirs[s].Append(layer, k[row].unsqueeze(1), v[row].unsqueeze(1));
      expect(layer, s, q[row].unsqueeze(1), keys, values, output[row]);
    }
  }
}

void ExpectEqualToTorch(const HeadShape& shape, const std::vector<SequenceCase>& cases) {
  const auto n = static_cast<int64_t>(cases.size());
  std::vector<KvCache> ours, theirs;
  for (size_t s = 0; s < cases.size(); ++s) {
    ours.push_back(FilledCache(shape, cases[s].past, 100 + s));
    theirs.push_back(FilledCache(shape, cases[s].past, 100 + s));
  }
  std::vector<DecodeToken> tokens;
  for (size_t s = 0; s < cases.size(); ++s) {
    ASSERT_TRUE(DecodeAttentionApplies(torch::kCPU, torch::kFloat32, shape.head_dim,
                                       cases[s].ape ? &*cases[s].ape : nullptr));
    // Rows in reverse order, so that a token's row is not its index.
    tokens.push_back({.cache = &ours[s],
                      .ape = cases[s].ape ? &*cases[s].ape : nullptr,
                      .row = n - 1 - static_cast<int64_t>(s)});
  }
  DecodeEveryLayer(shape, tokens, theirs, 1,
                   [&](size_t layer, size_t s, const torch::Tensor& q_s, const torch::Tensor& keys,
                       const torch::Tensor& values, const torch::Tensor& output) {
                     SCOPED_TRACE(::testing::Message() << cases[s].past << " past");
                     const torch::Tensor expected =
                         cases[s].ape ? ApeAttention(q_s, keys, values, *cases[s].ape)
                                      : CausalAttention(q_s, keys, values);
                     EXPECT_LT(MaxDiff(output, expected.squeeze(1)), 2e-5);
                     // The new key and value are in the cache, behind the old ones.
                     const auto [our_keys, our_values] = ours[s].Slice(layer, 0, cases[s].past + 1);
                     EXPECT_TRUE(torch::equal(our_keys, keys));
                     EXPECT_TRUE(torch::equal(our_values, values));
                   });
  for (size_t s = 0; s < cases.size(); ++s) EXPECT_EQ(ours[s].length(), cases[s].past + 1);
}

ApeLayout Ape(int64_t prefix, int64_t contexts, double temperature, double scale,
              ApeScaleForm form) {
  return {.prefix_length = prefix,
          .context_length = contexts,
          .temperature = temperature,
          .scale = scale,
          .form = form};
}

TEST(DecodeAttentionTest, ABatchOfLayoutsEqualsTorchOneByOne) {
  // 64 cached keys fill the first allocation exactly: the new token makes it grow.
  ExpectEqualToTorch(
      {.heads = 9, .kv_heads = 3, .head_dim = 64},
      {{.past = 0},
       {.past = 5},
       {.past = 64},
       {.past = 300},
       {.past = 40, .ape = Ape(7, 25, 0.6, 0.9, ApeScaleForm::kMultiplicative)},
       {.past = 40, .ape = Ape(7, 25, 0.5, 1.3, ApeScaleForm::kAdditive)},
       {.past = 33, .ape = Ape(0, 33, 0.8, 0.8, ApeScaleForm::kMultiplicative)},
       {.past = 19, .ape = Ape(19, 0, 0.6, 0.9, ApeScaleForm::kMultiplicative)},
       {.past = 1000, .ape = Ape(13, 900, 0.9, 0.95, ApeScaleForm::kMultiplicative)}});
}

TEST(DecodeAttentionTest, OtherHeadShapes) {
  // Multi-head (no grouping) with a head size of 8, and 4 query heads per kv head of 128.
  ExpectEqualToTorch(
      {.heads = 4, .kv_heads = 4, .head_dim = 8},
      {{.past = 3}, {.past = 17, .ape = Ape(2, 9, 0.7, 0.9, ApeScaleForm::kAdditive)}});
  ExpectEqualToTorch(
      {.heads = 8, .kv_heads = 2, .head_dim = 128},
      {{.past = 130}, {.past = 70, .ape = Ape(10, 50, 0.6, 1.1, ApeScaleForm::kMultiplicative)}});
}

TEST(DecodeAttentionTest, ScoresFarApartStayExact) {
  // Keys scaled up so that most weights underflow: the result is the few largest.
  KvCache ours(1, 1, 16, torch::TensorOptions()), theirs(1, 1, 16, torch::TensorOptions());
  torch::manual_seed(3);
  const torch::Tensor past_keys = torch::randn({1, 50, 16}) * 40;
  const torch::Tensor past_values = torch::randn({1, 50, 16});
  ours.Append(0, past_keys, past_values);
  theirs.Append(0, past_keys, past_values);
  const torch::Tensor q = torch::randn({1, 2, 16}) * 10;
  const torch::Tensor k = torch::randn({1, 1, 16});
  const torch::Tensor v = torch::randn({1, 1, 16});
  torch::Tensor output = torch::empty({1, 2, 16});
  const std::vector<DecodeToken> tokens = {{.cache = &ours}};
  DecodeAttention(0, q, k, v, tokens, output);
  const auto [keys, values] = theirs.Append(0, k[0].unsqueeze(1), v[0].unsqueeze(1));
  const torch::Tensor expected = CausalAttention(q[0].unsqueeze(1), keys, values);
  EXPECT_LT(MaxDiff(output[0], expected.squeeze(1)), 2e-5);
}

// Random K and V of `length` tokens in every layer, as a held segment.
HeldSegment RandomSegment(const HeadShape& shape, int64_t length, bool contexts, uint64_t seed) {
  torch::manual_seed(seed);
  HeldSegment segment{.length = length, .contexts = contexts};
  for (size_t layer = 0; layer < kLayers; ++layer) {
    segment.keys.push_back(torch::randn({shape.kv_heads, length, shape.head_dim}) * 2);
    segment.values.push_back(torch::randn({shape.kv_heads, length, shape.head_dim}));
  }
  return segment;
}

struct HeldCase {
  int64_t past = 0;
  const ApeLayout* ape = nullptr;
  absl::Span<const HeldSegment> held;
};

// Tokens that read held segments (several of them the same ones, which they read
// together) against AttendOverSegments through torch, one by one.
void ExpectHeldEqualToTorch(const HeadShape& shape, const std::vector<HeldCase>& cases) {
  const auto n = static_cast<int64_t>(cases.size());
  std::vector<KvCache> ours, theirs;
  std::vector<DecodeToken> tokens;
  for (size_t s = 0; s < cases.size(); ++s) {
    ours.push_back(FilledCache(shape, cases[s].past, 300 + s));
    theirs.push_back(FilledCache(shape, cases[s].past, 300 + s));
  }
  for (size_t s = 0; s < cases.size(); ++s) {
    tokens.push_back({.cache = &ours[s],
                      .ape = cases[s].ape,
                      .row = n - 1 - static_cast<int64_t>(s),
                      .held = cases[s].held});
  }
  DecodeEveryLayer(shape, tokens, theirs, 7,
                   [&](size_t layer, size_t s, const torch::Tensor& q_s, const torch::Tensor& keys,
                       const torch::Tensor& values, const torch::Tensor& output) {
                     std::vector<KeySegment> held;
                     for (const HeldSegment& segment : cases[s].held) {
                       held.push_back({.keys = segment.keys[layer],
                                       .values = segment.values[layer],
                                       .contexts = segment.contexts});
                     }
                     const torch::Tensor expected = AttendOverSegments(
                         q_s, held, keys, values, cases[s].ape, AttentionKernel::kAuto, 1024);
                     EXPECT_LT(MaxDiff(output, expected.squeeze(1)), 2e-5);
                   });
}

TEST(DecodeAttentionTest, TokensReadingTheSameHeldSegmentsEqualTorchOneByOne) {
  const HeadShape shape{.heads = 9, .kv_heads = 3, .head_dim = 64};
  // A prefix and three contexts, one longer than a shared block and not a multiple of it.
  const std::vector<HeldSegment> held = {
      RandomSegment(shape, 7, false, 1), RandomSegment(shape, 40, true, 2),
      RandomSegment(shape, 150, true, 3), RandomSegment(shape, 33, true, 4)};
  const ApeLayout ape{.temperature = 0.6, .scale = 0.9};
  const ApeLayout additive{.temperature = 0.5, .scale = 1.3, .form = ApeScaleForm::kAdditive};
  const absl::Span<const HeldSegment> all(held);
  ExpectHeldEqualToTorch(shape, {{.past = 3, .ape = &ape, .held = all},
                                 {.past = 0, .ape = &ape, .held = all},
                                 {.past = 64, .ape = &additive, .held = all},
                                 {.past = 9, .ape = nullptr, .held = all},  // PARALLEL
                                 {.past = 5, .ape = &ape, .held = all.subspan(0, 2)},
                                 {.past = 12, .ape = nullptr, .held = {}},
                                 {.past = 30, .ape = &ape, .held = all}});
}

TEST(DecodeAttentionTest, SharedReadersSplitAcrossThreadsStayExact) {
  // One kv head, many readers of the same segments and more threads than items: the set
  // is split between threads.
  const HeadShape shape{.heads = 4, .kv_heads = 1, .head_dim = 16};
  const std::vector<HeldSegment> held = {RandomSegment(shape, 5, false, 5),
                                         RandomSegment(shape, 70, true, 6)};
  const ApeLayout ape{.temperature = 0.7, .scale = 0.8};
  const int threads = at::get_num_threads();
  at::set_num_threads(4);
  std::vector<HeldCase> cases;
  for (int64_t i = 0; i < 6; ++i) cases.push_back({.past = i * 3, .ape = &ape, .held = held});
  ExpectHeldEqualToTorch(shape, cases);
  at::set_num_threads(threads);
}

TEST(DecodeAttentionTest, AppliesOnlyWhereItCan) {
  const ApeLayout blocked{.kernel = AttentionKernel::kBlocked};
  EXPECT_TRUE(DecodeAttentionApplies(torch::kCPU, torch::kFloat32, 64, nullptr));
  EXPECT_FALSE(DecodeAttentionApplies(torch::kCPU, torch::kBFloat16, 64, nullptr));
  EXPECT_FALSE(DecodeAttentionApplies(torch::kCPU, torch::kFloat32, 36, nullptr));
  EXPECT_FALSE(DecodeAttentionApplies(torch::kCPU, torch::kFloat32, 64, &blocked));
  EXPECT_FALSE(
      DecodeAttentionApplies(torch::Device(torch::kCUDA, 0), torch::kFloat32, 64, nullptr));
}

}  // namespace
}  // namespace apeserve::model
