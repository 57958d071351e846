#include "model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/types/span.h"
#include "model/vector_math.h"

namespace apeserve::model {
namespace {

using vec::Dot;
using vec::DotEach;
using vec::ExpSum;
using vec::MaxOf;
using vec::WeightedRows;

// A run of consecutive keys and which of the two softmax groups they belong to.
struct KeyRange {
  int64_t start = 0;
  int64_t length = 0;
  int group = 0;  // 0: plain (prefix and local), 1: APE's contexts
};

// One token's attention for the `group_size` query heads of one kv head over `count`
// cached keys. APE's contexts form a softmax of their own (logits divided by T), merged
// with the plain one by the log-sum-exps as APE weighs them; prefix and local merge by
// plain log-sum-exps, which is one softmax over both. The merge's factors are known
// once the softmax sums are, so each key's weight takes its group's factor and the
// values are summed once. `queries` and `output` are group_size rows of head_dim, `keys`
// and `values` count rows; `scores` is scratch space.
APESERVE_ALWAYS_INLINE void AttendHeadGroup(int64_t group_size, int64_t head_dim, double scale,
                                            const ApeLayout* ape, const float* queries,
                                            const float* keys, const float* values, int64_t count,
                                            float* output, std::vector<float>& scores) {
  KeyRange ranges[3] = {{0, count, 0}};
  int range_count = 1;
  if (ape != nullptr && ape->context_length > 0) {
    const int64_t contexts_end = ape->prefix_length + ape->context_length;
    ranges[0] = {0, ape->prefix_length, 0};
    ranges[1] = {ape->prefix_length, ape->context_length, 1};
    ranges[2] = {contexts_end, count - contexts_end, 0};
    range_count = 3;
  }
  const absl::Span<const KeyRange> segments(ranges, static_cast<size_t>(range_count));
  scores.resize(static_cast<size_t>(group_size * count));

  // Scores, eight keys at a time, each read from memory once for the whole group.
  for (const KeyRange& range : segments) {
    const auto factor = static_cast<float>(range.group == 1 ? scale / ape->temperature : scale);
    const int64_t end = range.start + range.length;
    int64_t j = range.start;
    for (; j + vec::kLanes <= end; j += vec::kLanes) {
      for (int64_t h = 0; h < group_size; ++h) {
        vec::Store(factor * DotEach(queries + h * head_dim, keys + j * head_dim, head_dim),
                   scores.data() + h * count + j);
      }
    }
    for (; j < end; ++j) {
      for (int64_t h = 0; h < group_size; ++h) {
        scores[h * count + j] = factor * Dot(queries + h * head_dim, keys + j * head_dim, head_dim);
      }
    }
  }
  for (int64_t h = 0; h < group_size; ++h) {
    float* row = scores.data() + h * count;
    // Per group: the maximum, the weights e^(s - max) in place and their sum, whose log
    // is the group's log-sum-exp.
    double lse[2], total[2];
    for (int group = 0; group < 2; ++group) {
      float top = -std::numeric_limits<float>::infinity();
      for (const KeyRange& range : segments) {
        if (range.group == group) top = std::max(top, MaxOf(row + range.start, range.length));
      }
      total[group] = 0;
      for (const KeyRange& range : segments) {
        if (range.group == group) {
          total[group] += ExpSum(row + range.start, range.length, top, row + range.start);
        }
      }
      lse[group] = total[group] > 0 ? top + std::log(total[group])
                                    : -std::numeric_limits<double>::infinity();
    }
    if (std::isfinite(lse[1])) {  // logsumexp(a_C / T), scaled as APE weighs contexts
      lse[1] = ape->form == ApeScaleForm::kMultiplicative
                   ? lse[1] * ape->scale * ape->temperature
                   : lse[1] * ape->temperature + std::log(ape->scale);
    }
    // o = sum over groups of softmax(lse)_group * (weights / total)_group . values
    const double top = std::max(lse[0], lse[1]);
    double weight[2] = {0, 0};
    for (int group = 0; group < 2; ++group) {
      if (std::isfinite(lse[group])) weight[group] = std::exp(lse[group] - top);
    }
    for (const KeyRange& range : segments) {
      const double factor =
          weight[range.group] == 0
              ? 0.0
              : weight[range.group] / (weight[0] + weight[1]) / total[range.group];
      vec::Scale(static_cast<float>(factor), row + range.start, range.length);
    }
    WeightedRows(row, values, count, head_dim, output + h * head_dim);
  }
}

// The same code compiled twice: for any x86-64 (SSE: each vector is two halves) and,
// chosen at run time, for CPUs with AVX2 and FMA (one register).
void AttendPortable(int64_t group_size, int64_t head_dim, double scale, const ApeLayout* ape,
                    const float* queries, const float* keys, const float* values, int64_t count,
                    float* output, std::vector<float>& scores) {
  AttendHeadGroup(group_size, head_dim, scale, ape, queries, keys, values, count, output, scores);
}

#if defined(__x86_64__)
[[gnu::target("avx2,fma")]] void AttendAvx2(int64_t group_size, int64_t head_dim, double scale,
                                            const ApeLayout* ape, const float* queries,
                                            const float* keys, const float* values, int64_t count,
                                            float* output, std::vector<float>& scores) {
  AttendHeadGroup(group_size, head_dim, scale, ape, queries, keys, values, count, output, scores);
}
#endif

using AttendFunction = decltype(&AttendPortable);

AttendFunction ChooseAttend() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &AttendAvx2;
#endif
  return &AttendPortable;
}

}  // namespace

bool DecodeAttentionApplies(const torch::Device& device, torch::ScalarType dtype, int64_t head_dim,
                            const ApeLayout* ape) {
  return device.is_cpu() && dtype == torch::kFloat32 && head_dim % vec::kLanes == 0 &&
         (ape == nullptr || ape->kernel == AttentionKernel::kAuto);
}

void DecodeAttention(size_t layer, const torch::Tensor& q, const torch::Tensor& k,
                     const torch::Tensor& v, absl::Span<const DecodeToken> tokens,
                     torch::Tensor& output) {
  const int64_t heads = q.size(1), kv_heads = k.size(1), d = q.size(2);
  const int64_t group_size = heads / kv_heads;
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && output.is_contiguous(),
              "decode attention needs contiguous rows");
  // Room for each token in its cache, on this thread: growing allocates.
  struct Slot {
    float* keys;  // the layer's storage, [kv_heads, capacity, head_dim]
    float* values;
    int64_t capacity;
    int64_t past;  // keys before this token
  };
  std::vector<Slot> slots;
  slots.reserve(tokens.size());
  for (const DecodeToken& token : tokens) {
    const int64_t past = token.cache->length();
    auto [keys, values] = token.cache->Extend(layer, 1);
    slots.push_back({keys.data_ptr<float>(), values.data_ptr<float>(), keys.size(1), past});
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const float* q_data = q.data_ptr<float>();
  const float* k_data = k.data_ptr<float>();
  const float* v_data = v.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  const auto items = static_cast<int64_t>(tokens.size()) * kv_heads;
  static const AttendFunction attend = ChooseAttend();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;  // scratch, reused from token to token
    for (int64_t item = begin; item < end; ++item) {
      const auto t = static_cast<size_t>(item / kv_heads);
      const int64_t g = item % kv_heads, row = tokens[t].row;
      const Slot& slot = slots[t];
      float* keys = slot.keys + g * slot.capacity * d;
      float* values = slot.values + g * slot.capacity * d;
      std::memcpy(keys + slot.past * d, k_data + (row * kv_heads + g) * d, d * sizeof(float));
      std::memcpy(values + slot.past * d, v_data + (row * kv_heads + g) * d, d * sizeof(float));
      attend(group_size, d, scale, tokens[t].ape, q_data + (row * heads + g * group_size) * d, keys,
             values, slot.past + 1, out_data + (row * heads + g * group_size) * d, scores);
    }
  });
}

}  // namespace apeserve::model
