// The prompt kernel over held segments against what it replaces, AttendOverSegments
// through torch: prompts of one token to a few hundred (row tiles of 16, 32 and 48
// rows, alone or several reading each block together), segments of lengths off the
// kernel's blocks, a prefix or none, APE in both scale forms and no APE, grouped-query
// heads, a cache with keys before the prompt, and on one thread or several.
#include "model/prompt_attention.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <optional>
#include <vector>

#include "model/attention.h"

namespace apeserve::model {
namespace {

struct Case {
  int64_t tokens = 0;  // the prompt's T
  int64_t past = 0;    // the sequence's own keys before the prompt
  int64_t heads = 9, kv_heads = 3, head_dim = 64;
  std::vector<int64_t> contexts;  // each held context's length
  int64_t prefix = 0;             // the held prefix's length; 0: none
  std::optional<ApeLayout> ape = ApeLayout{.temperature = 0.8, .scale = 0.85};
};

// Random keys and values, [kv_heads, length, head_dim]: keys spread wider than values,
// so that the softmax is far from uniform.
KeySegment RandomSegment(const Case& c, int64_t length, bool contexts) {
  return {.keys = torch::randn({c.kv_heads, length, c.head_dim}) * 2,
          .values = torch::randn({c.kv_heads, length, c.head_dim}),
          .contexts = contexts};
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// PromptAttention's rows against AttendOverSegments' for `c`; the local keys are read
// through a view of a larger buffer, as the cache hands them out.
void ExpectSameAsTorch(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<KeySegment> held;
  if (c.prefix > 0) held.push_back(RandomSegment(c, c.prefix, /*contexts=*/false));
  for (const int64_t length : c.contexts) held.push_back(RandomSegment(c, length, true));
  const int64_t local = c.past + c.tokens;
  const torch::Tensor storage_k = torch::randn({c.kv_heads, local + 17, c.head_dim}) * 2;
  const torch::Tensor storage_v = torch::randn({c.kv_heads, local + 17, c.head_dim});
  const torch::Tensor local_k = storage_k.narrow(1, 0, local);
  const torch::Tensor local_v = storage_v.narrow(1, 0, local);
  const torch::Tensor q = torch::randn({c.tokens, c.heads, c.head_dim});  // the model's rows
  const ApeLayout* ape = c.ape ? &*c.ape : nullptr;

  torch::Tensor output = torch::full_like(q, 7.0F);
  PromptAttention(q, held, local_k, local_v, ape, output);
  const torch::Tensor expected = AttendOverSegments(q.transpose(0, 1), held, local_k, local_v, ape,
                                                    AttentionKernel::kAuto, ApeLayout().block)
                                     .transpose(0, 1);  // [T, H, D]
  EXPECT_LT(MaxDiff(output, expected), 2e-5)
      << "T " << c.tokens << ", past " << c.past << ", " << c.contexts.size() << " contexts";
}

TEST(PromptAttentionTest, EqualsAttentionOverSegmentsThroughTorch) {
  const std::vector<Case> cases = {
      {.tokens = 16, .contexts = {448, 448, 448, 448}, .prefix = 30},
      {.tokens = 1, .contexts = {64}, .prefix = 30},
      {.tokens = 37, .past = 5, .contexts = {1, 63, 65, 200}, .prefix = 7},
      {.tokens = 130, .contexts = {100, 3}, .prefix = 0},
      // Held keys four times the own ones: tiles read each block together, five tiles
      // (225 rows) in two items, the last tile 33 rows computed as 48.
      {.tokens = 75, .contexts = {400, 350}, .prefix = 30},
      {.tokens = 9, .past = 70, .contexts = {}, .prefix = 30},
      {.tokens = 12, .heads = 4, .kv_heads = 4, .head_dim = 16, .contexts = {10, 90}, .prefix = 5},
      {.tokens = 5, .heads = 4, .kv_heads = 2, .head_dim = 128, .contexts = {70, 64}, .prefix = 3},
      {.tokens = 3, .heads = 8, .kv_heads = 1, .head_dim = 256, .contexts = {129}, .prefix = 0},
      {.tokens = 20, .heads = 6, .kv_heads = 2, .head_dim = 16, .contexts = {77}, .prefix = 12},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) ExpectSameAsTorch(c, seed++);
}

TEST(PromptAttentionTest, AdditiveScaleFormAndNoApeEqualTorch) {
  Case additive{.tokens = 24, .past = 3, .contexts = {300, 129}, .prefix = 20};
  additive.ape->form = ApeScaleForm::kAdditive;
  ExpectSameAsTorch(additive, 11);
  // Without APE every held key joins the one softmax.
  ExpectSameAsTorch({.tokens = 24, .contexts = {300, 129}, .prefix = 20, .ape = std::nullopt}, 12);
  // Unit temperature and scale: APE equals one softmax over everything.
  ExpectSameAsTorch({.tokens = 8, .contexts = {50, 50}, .prefix = 4, .ape = ApeLayout{}}, 13);
}

TEST(PromptAttentionTest, EqualsCausalAndApeAttentionOverOneCache) {
  // No segment held: the sequence's own keys alone, causal attention.
  torch::manual_seed(31);
  const torch::Tensor keys = torch::randn({3, 150, 64}) * 2, values = torch::randn({3, 150, 64});
  for (const int64_t tokens : {1, 7, 150}) {
    const torch::Tensor q = torch::randn({tokens, 9, 64});
    torch::Tensor output = torch::full_like(q, 7.0F);
    PromptAttention(q, {}, keys, values, nullptr, output);
    EXPECT_LT(MaxDiff(output, CausalAttention(q.transpose(0, 1), keys, values).transpose(0, 1)),
              2e-5)
        << tokens << " tokens";
  }
  // One APE cache (prefix, contexts, own keys side by side), split into its segments.
  const ApeLayout layout{
      .prefix_length = 20, .context_length = 100, .temperature = 0.7, .scale = 0.9};
  const torch::Tensor q = torch::randn({30, 9, 64});
  const ApeCacheSegments split = SplitApeCache(keys, values, layout);
  torch::Tensor output = torch::empty_like(q);
  PromptAttention(q, split.held, split.local_keys, split.local_values, &layout, output);
  EXPECT_LT(MaxDiff(output, ApeAttention(q.transpose(0, 1), keys, values, layout).transpose(0, 1)),
            2e-5);
}

TEST(PromptAttentionTest, GivesTheSameOnOneThreadAsOnSeveral) {
  // The keys are split among the threads in parts merged afterwards: the split must not
  // change the result beyond rounding.
  const Case c{.tokens = 16, .past = 2, .contexts = {448, 200, 31}, .prefix = 30};
  const int previous = at::get_num_threads();
  at::set_num_threads(1);
  ExpectSameAsTorch(c, 21);
  at::set_num_threads(std::max(previous, 3));
  ExpectSameAsTorch(c, 21);
  at::set_num_threads(previous);
}

TEST(PromptAttentionTest, RefusesWhatItCannotRead) {
  const Case c{.tokens = 4, .contexts = {8}};
  torch::manual_seed(5);
  const std::vector<KeySegment> held = {RandomSegment(c, 8, true)};
  const torch::Tensor q = torch::randn({4, c.heads, c.head_dim});
  torch::Tensor output = torch::empty_like(q);
  const torch::Tensor keys = torch::randn({c.kv_heads, 4, c.head_dim});
  // Fewer own keys than queries.
  EXPECT_THROW(
      PromptAttention(q, held, keys.narrow(1, 0, 3), keys.narrow(1, 0, 3), &*c.ape, output),
      c10::Error);
  // Half precision keys.
  EXPECT_THROW(PromptAttention(q, held, keys.to(torch::kFloat16), keys, &*c.ape, output),
               c10::Error);
  // Queries not in the model's row layout.
  EXPECT_THROW(PromptAttention(q.transpose(0, 1), held, keys, keys, &*c.ape, output), c10::Error);
}

}  // namespace
}  // namespace apeserve::model
