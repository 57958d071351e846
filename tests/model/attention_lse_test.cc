// Attention with log-sum-exp: the fused kernel and the blocked one against a plain
// softmax written out here, merging by log-sum-exp against attention over the union,
// and APE's segment merge against the equations of DESIGN.md §3.
#include "model/attention_lse.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <tuple>

#include "model/attention.h"

namespace apeserve::model {
namespace {

// Reference: [heads, T, D] queries, keys expanded to every head, a full score matrix.
PartialAttention Naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       double scale, bool causal) {
  const int64_t group = q.size(0) / k.size(0), queries = q.size(1), keys = k.size(1);
  const torch::Tensor kk = k.repeat_interleave(group, 0).to(torch::kFloat64);
  const torch::Tensor vv = v.repeat_interleave(group, 0).to(torch::kFloat64);
  torch::Tensor logits = torch::matmul(q.to(torch::kFloat64), kk.transpose(1, 2)) * scale;
  if (causal) {
    const torch::Tensor visible =
        torch::arange(keys).unsqueeze(0) <= torch::arange(queries).unsqueeze(1) + (keys - queries);
    logits = logits.masked_fill(visible.logical_not(), -INFINITY);
  }
  return {torch::matmul(torch::softmax(logits, -1), vv).to(torch::kFloat32),
          torch::logsumexp(logits, -1).to(torch::kFloat32)};
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

struct Shape {
  int64_t heads, kv_heads, queries, keys;
  bool causal;
};

class AttendWithLseTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttendWithLseTest, FusedAndBlockedEqualThePlainSoftmax) {
  const Shape shape = GetParam();
  torch::manual_seed(7);
  const torch::Tensor q = torch::randn({shape.heads, shape.queries, 16});
  const torch::Tensor k = torch::randn({shape.kv_heads, shape.keys, 16}) * 2;
  const torch::Tensor v = torch::randn({shape.kv_heads, shape.keys, 16});
  const double scale = 0.37;
  const PartialAttention expected = Naive(q, k, v, scale, shape.causal);
  for (const auto& [kernel, block] :
       {std::tuple{AttentionKernel::kAuto, 1024}, std::tuple{AttentionKernel::kBlocked, 1},
        std::tuple{AttentionKernel::kBlocked, 5}, std::tuple{AttentionKernel::kBlocked, 4096}}) {
    SCOPED_TRACE(::testing::Message()
                 << "kernel " << static_cast<int>(kernel) << " block " << block);
    const PartialAttention got = AttendWithLse(q, k, v, scale, shape.causal, kernel, block);
    ASSERT_EQ(got.output.sizes(), expected.output.sizes());
    ASSERT_EQ(got.lse.sizes(), expected.lse.sizes());
    EXPECT_LT(MaxDiff(got.output, expected.output), 1e-5);
    EXPECT_LT(MaxDiff(got.lse, expected.lse), 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttendWithLseTest,
                         ::testing::Values(Shape{6, 2, 1, 37, false}, Shape{6, 2, 9, 37, false},
                                           Shape{6, 2, 9, 37, true}, Shape{4, 4, 13, 13, true},
                                           Shape{3, 1, 1, 200, true}, Shape{6, 3, 20, 64, true}));

TEST(MergeByLseTest, MergedSegmentsEqualAttentionOverTheirUnion) {
  torch::manual_seed(11);
  const torch::Tensor q = torch::randn({4, 5, 8});
  const torch::Tensor k = torch::randn({2, 30, 8});
  const torch::Tensor v = torch::randn({2, 30, 8});
  std::vector<PartialAttention> parts;
  for (const auto& [start, length] : {std::pair{0, 4}, std::pair{4, 19}, std::pair{23, 7}}) {
    parts.push_back(AttendWithLse(q, k.narrow(1, start, length), v.narrow(1, start, length), 0.5,
                                  false, AttentionKernel::kAuto, 1024));
  }
  const PartialAttention merged = MergeByLse(parts);
  const PartialAttention whole = Naive(q, k, v, 0.5, false);
  EXPECT_LT(MaxDiff(merged.output, whole.output), 1e-5);
  EXPECT_LT(MaxDiff(merged.lse, whole.lse), 1e-5);
}

TEST(ApeAttentionTest, FollowsTheEquations) {
  torch::manual_seed(3);
  const int64_t prefix = 6, contexts = 25, local = 9, queries = 4, d = 16;
  const torch::Tensor q = torch::randn({6, queries, d});
  const torch::Tensor k = torch::randn({2, prefix + contexts + local, d}) * 1.5;
  const torch::Tensor v = torch::randn({2, prefix + contexts + local, d});
  const double temperature = 0.6, s = 0.7, scale = 1.0 / std::sqrt(static_cast<double>(d));
  // The equations, written out in float64.
  const PartialAttention p = Naive(q, k.narrow(1, 0, prefix), v.narrow(1, 0, prefix), scale, false);
  const PartialAttention c = Naive(q, k.narrow(1, prefix, contexts), v.narrow(1, prefix, contexts),
                                   scale / temperature, false);
  const PartialAttention l = Naive(q, k.narrow(1, prefix + contexts, local),
                                   v.narrow(1, prefix + contexts, local), scale, true);
  const auto merged = [&](const torch::Tensor& lse_c) {
    const torch::Tensor w = torch::softmax(torch::stack({p.lse, lse_c, l.lse}), 0).unsqueeze(-1);
    return w[0] * p.output + w[1] * c.output + w[2] * l.output;
  };
  const torch::Tensor published = merged(c.lse * temperature * s);
  const torch::Tensor additive = merged(c.lse * temperature + std::log(s));
  // The two forms are far apart here, so matching one is not matching the other.
  EXPECT_GT(MaxDiff(published, additive), 1e-2);
  for (const auto& [form, expected] : {std::pair{ApeScaleForm::kMultiplicative, published},
                                       std::pair{ApeScaleForm::kAdditive, additive}}) {
    for (const AttentionKernel kernel : {AttentionKernel::kAuto, AttentionKernel::kBlocked}) {
      SCOPED_TRACE(ApeScaleFormName(form));
      const ApeLayout layout{.prefix_length = prefix,
                             .context_length = contexts,
                             .temperature = temperature,
                             .scale = s,
                             .form = form,
                             .kernel = kernel,
                             .block = 4};
      EXPECT_LT(MaxDiff(ApeAttention(q, k, v, layout), expected), 1e-5);
    }
  }
  // At T = S = 1 the merge is one softmax over every key: causal attention.
  for (const ApeScaleForm form : {ApeScaleForm::kMultiplicative, ApeScaleForm::kAdditive}) {
    const ApeLayout unit{.prefix_length = prefix, .context_length = contexts, .form = form};
    EXPECT_LT(MaxDiff(ApeAttention(q, k, v, unit), CausalAttention(q, k, v)), 1e-5);
  }
}

TEST(ApeAttentionTest, HalfPrecisionStaysCloseToFloat) {
  torch::manual_seed(5);
  const torch::Tensor q = torch::randn({6, 3, 32});
  const torch::Tensor k = torch::randn({2, 50, 32});
  const torch::Tensor v = torch::randn({2, 50, 32});
  const ApeLayout layout{
      .prefix_length = 5, .context_length = 30, .temperature = 0.8, .scale = 1.2};
  const torch::Tensor full = ApeAttention(q, k, v, layout);
  for (const torch::ScalarType dtype : {torch::kBFloat16, torch::kFloat16}) {
    const torch::Tensor half = ApeAttention(q.to(dtype), k.to(dtype), v.to(dtype), layout);
    EXPECT_EQ(half.scalar_type(), dtype);  // the output comes back in the queries' dtype
    EXPECT_LT(MaxDiff(half, full), 0.05);
  }
}

}  // namespace
}  // namespace apeserve::model
