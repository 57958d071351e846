#include "model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <utility>
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

// Keys of a shared run are read in blocks of this many, every reader's queries against
// one block while it is in the first-level cache: the block is read from memory once
// for all of them.
constexpr int64_t kSharedBlock = 64;

// A run of one kv head's keys and values in memory (`length` rows of head_dim each).
struct KeyRun {
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t length = 0;
  bool contexts = false;  // APE's contexts (for a reader in APE mode); else plain
};

// One token's attention for the `group_size` query heads of one kv head: its queries
// and output (group_size rows of head_dim each), how it attends, the keys it reads
// beside the shared ones (its own cache's runs), and its scores (group_size rows of
// all its keys, shared runs first).
struct Reader {
  const float* queries = nullptr;
  float* output = nullptr;
  const ApeLayout* ape = nullptr;
  absl::Span<const KeyRun> own;
  float* scores = nullptr;
  int64_t count = 0;  // keys in all: a score row's length
};

// Softmax group of `run` for `reader`: 1 for APE's contexts, else 0 (plain).
APESERVE_ALWAYS_INLINE int GroupOf(const Reader& reader, const KeyRun& run) {
  return reader.ape != nullptr && run.contexts ? 1 : 0;
}

// scores[h * stride + j] = factor * q_h . key_j for `n` keys and every head of the group.
APESERVE_ALWAYS_INLINE void ScoreRows(int64_t group_size, int64_t head_dim, const float* queries,
                                      const float* keys, int64_t n, float factor, float* scores,
                                      int64_t stride) {
  int64_t j = 0;
  for (; j + vec::kLanes <= n; j += vec::kLanes) {
    for (int64_t h = 0; h < group_size; ++h) {
      vec::Store(factor * DotEach(queries + h * head_dim, keys + j * head_dim, head_dim),
                 scores + h * stride + j);
    }
  }
  for (; j < n; ++j) {
    for (int64_t h = 0; h < group_size; ++h) {
      scores[h * stride + j] = factor * Dot(queries + h * head_dim, keys + j * head_dim, head_dim);
    }
  }
}

// The logit factor of `run`'s keys for `reader`: softmax(a / T) for APE's contexts.
APESERVE_ALWAYS_INLINE float FactorOf(const Reader& reader, const KeyRun& run, double scale) {
  return static_cast<float>(GroupOf(reader, run) == 1 ? scale / reader.ape->temperature : scale);
}

// Turns one score row (the keys of `runs`, in order) into the weights of the values.
// APE's contexts form a softmax of their own (logits divided by T), merged with the
// plain one by the log-sum-exps as APE weighs them; prefix and local merge by plain
// log-sum-exps, which is one softmax over both. The merge's factors are known once the
// softmax sums are, so each key's weight takes its group's factor and the values are
// summed once.
APESERVE_ALWAYS_INLINE void Weigh(const Reader& reader, absl::Span<const KeyRun> shared,
                                  float* row) {
  // The row's keys: the shared runs, then the reader's own (plain loops, no lambdas, so
  // that all of it compiles for the caller's instruction set).
  const absl::Span<const KeyRun> parts[2] = {shared, reader.own};
  // Per group: the maximum, the weights e^(s - max) in place and their sum, whose log
  // is the group's log-sum-exp.
  double lse[2], total[2];
  for (int group = 0; group < 2; ++group) {
    float top = -std::numeric_limits<float>::infinity();
    int64_t offset = 0;
    for (const absl::Span<const KeyRun> runs : parts) {
      for (const KeyRun& run : runs) {
        if (GroupOf(reader, run) == group) top = std::max(top, MaxOf(row + offset, run.length));
        offset += run.length;
      }
    }
    total[group] = 0;
    offset = 0;
    for (const absl::Span<const KeyRun> runs : parts) {
      for (const KeyRun& run : runs) {
        if (GroupOf(reader, run) == group) {
          total[group] += ExpSum(row + offset, run.length, top, row + offset);
        }
        offset += run.length;
      }
    }
    lse[group] =
        total[group] > 0 ? top + std::log(total[group]) : -std::numeric_limits<double>::infinity();
  }
  const ApeLayout* ape = reader.ape;
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
  int64_t offset = 0;
  for (const absl::Span<const KeyRun> runs : parts) {
    for (const KeyRun& run : runs) {
      const int group = GroupOf(reader, run);
      const double factor =
          weight[group] == 0 ? 0.0 : weight[group] / (weight[0] + weight[1]) / total[group];
      vec::Scale(static_cast<float>(factor), row + offset, run.length);
      offset += run.length;
    }
  }
}

// The attention of every reader over the `shared` runs and then its own ones. A shared
// run's keys and values are read block by block, each block by all readers in turn.
APESERVE_ALWAYS_INLINE void AttendGroup(int64_t group_size, int64_t head_dim, double scale,
                                        absl::Span<const KeyRun> shared,
                                        absl::Span<const Reader> readers) {
  const int64_t d = head_dim;
  // Scores.
  int64_t offset = 0;
  for (const KeyRun& run : shared) {
    for (int64_t b = 0; b < run.length; b += kSharedBlock) {
      const int64_t n = std::min(kSharedBlock, run.length - b);
      for (const Reader& reader : readers) {
        ScoreRows(group_size, d, reader.queries, run.keys + b * d, n, FactorOf(reader, run, scale),
                  reader.scores + offset + b, reader.count);
      }
    }
    offset += run.length;
  }
  for (const Reader& reader : readers) {
    int64_t own_offset = offset;
    for (const KeyRun& run : reader.own) {
      ScoreRows(group_size, d, reader.queries, run.keys, run.length, FactorOf(reader, run, scale),
                reader.scores + own_offset, reader.count);
      own_offset += run.length;
    }
    // Weights.
    for (int64_t h = 0; h < group_size; ++h)
      Weigh(reader, shared, reader.scores + h * reader.count);
    std::memset(reader.output, 0, static_cast<size_t>(group_size * d) * sizeof(float));
  }
  // Weighted values.
  offset = 0;
  for (const KeyRun& run : shared) {
    for (int64_t b = 0; b < run.length; b += kSharedBlock) {
      const int64_t n = std::min(kSharedBlock, run.length - b);
      for (const Reader& reader : readers) {
        for (int64_t h = 0; h < group_size; ++h) {
          WeightedRows(reader.scores + h * reader.count + offset + b, run.values + b * d, n, d,
                       reader.output + h * d, /*accumulate=*/true);
        }
      }
    }
    offset += run.length;
  }
  for (const Reader& reader : readers) {
    int64_t own_offset = offset;
    for (const KeyRun& run : reader.own) {
      for (int64_t h = 0; h < group_size; ++h) {
        WeightedRows(reader.scores + h * reader.count + own_offset, run.values, run.length, d,
                     reader.output + h * d, /*accumulate=*/true);
      }
      own_offset += run.length;
    }
  }
}

// The same code compiled twice: for any x86-64 (SSE: each vector is two halves) and,
// chosen at run time, for CPUs with AVX2 and FMA (one register).
void AttendPortable(int64_t group_size, int64_t head_dim, double scale,
                    absl::Span<const KeyRun> shared, absl::Span<const Reader> readers) {
  AttendGroup(group_size, head_dim, scale, shared, readers);
}

#if defined(__x86_64__)
[[gnu::target("avx2,fma")]] void AttendAvx2(int64_t group_size, int64_t head_dim, double scale,
                                            absl::Span<const KeyRun> shared,
                                            absl::Span<const Reader> readers) {
  AttendGroup(group_size, head_dim, scale, shared, readers);
}
#endif

using AttendFunction = decltype(&AttendPortable);

AttendFunction ChooseAttend() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &AttendAvx2;
#endif
  return &AttendPortable;
}

// A run's keys and values at kv head 0, and the rows from one kv head to the next.
struct RunBase {
  KeyRun run;
  int64_t head_stride = 0;

  KeyRun AtHead(int64_t g, int64_t head_dim) const {
    KeyRun at = run;
    at.keys += g * head_stride * head_dim;
    at.values += g * head_stride * head_dim;
    return at;
  }
};

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
  // Per token: room for it in its cache (on this thread: growing allocates), and its
  // runs: the held segments it reads in place, then its cache.
  struct Slot {
    float* keys;  // the layer's storage, [kv_heads, capacity, head_dim]
    float* values;
    int64_t capacity;
    int64_t past;  // keys before this token
    std::vector<RunBase> held;
    std::vector<RunBase> own;
    int64_t count = 0;  // keys attended in all
  };
  std::vector<Slot> slots(tokens.size());
  // Tokens that hold the same segments read them together: by the segments' addresses.
  std::map<std::vector<const float*>, std::vector<size_t>> sharing;
  std::vector<size_t> alone;  // tokens that hold none
  for (size_t t = 0; t < tokens.size(); ++t) {
    const DecodeToken& token = tokens[t];
    Slot& slot = slots[t];
    slot.past = token.cache->length();
    auto [keys, values] = token.cache->Extend(layer, 1);
    slot.keys = keys.data_ptr<float>();
    slot.values = values.data_ptr<float>();
    slot.capacity = keys.size(1);
    std::vector<const float*> addresses;
    for (const HeldSegment& held : token.held) {
      const torch::Tensor& held_keys = held.keys[layer];
      slot.held.push_back({.run = {.keys = held_keys.data_ptr<float>(),
                                   .values = held.values[layer].data_ptr<float>(),
                                   .length = held_keys.size(1),
                                   .contexts = held.contexts},
                           .head_stride = held_keys.size(1)});
      addresses.push_back(slot.held.back().run.keys);
      slot.count += held_keys.size(1);
    }
    const auto cached = [&](int64_t start, int64_t length, bool contexts) {
      slot.own.push_back({.run = {.keys = slot.keys + start * d,
                                  .values = slot.values + start * d,
                                  .length = length,
                                  .contexts = contexts},
                          .head_stride = slot.capacity});
      slot.count += length;
    };
    const ApeLayout* ape = token.ape;
    if (token.held.empty() && ape != nullptr && ape->context_length > 0) {
      // The cache holds prefix, contexts and local keys, one after the other.
      const int64_t contexts_end = ape->prefix_length + ape->context_length;
      cached(0, ape->prefix_length, false);
      cached(ape->prefix_length, ape->context_length, true);
      cached(contexts_end, slot.past + 1 - contexts_end, false);
    } else {
      cached(0, slot.past + 1, false);
    }
    if (addresses.empty()) {
      alone.push_back(t);
    } else {
      sharing[addresses].push_back(t);
    }
  }
  // Work items: a set of tokens that share their held segments, at one kv head. Sets
  // are split while there are fewer items than threads, so that no thread idles.
  std::vector<std::vector<size_t>> sets;
  sets.reserve(sharing.size() + alone.size());
  for (auto& [addresses, members] : sharing) sets.push_back(std::move(members));
  for (const size_t t : alone) sets.push_back({t});
  const auto threads = static_cast<size_t>(at::get_num_threads());
  while (sets.size() * static_cast<size_t>(kv_heads) < threads) {
    auto largest = std::max_element(
        sets.begin(), sets.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });
    if (largest->size() < 2) break;
    std::vector<size_t> half(largest->begin() + static_cast<std::ptrdiff_t>(largest->size() / 2),
                             largest->end());
    largest->resize(largest->size() / 2);
    sets.push_back(std::move(half));
  }

  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const float* q_data = q.data_ptr<float>();
  const float* k_data = k.data_ptr<float>();
  const float* v_data = v.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  const auto items = static_cast<int64_t>(sets.size()) * kv_heads;
  static const AttendFunction attend = ChooseAttend();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    // Scratch, reused from item to item.
    std::vector<float> scores;
    std::vector<KeyRun> shared, own;
    std::vector<Reader> readers;
    for (int64_t item = begin; item < end; ++item) {
      const std::vector<size_t>& members = sets[static_cast<size_t>(item / kv_heads)];
      const int64_t g = item % kv_heads;
      const Slot& first = slots[members.front()];
      shared.clear();
      for (const RunBase& base : first.held) shared.push_back(base.AtHead(g, d));
      own.clear();
      int64_t score_count = 0;
      for (const size_t t : members) {
        const Slot& slot = slots[t];
        for (const RunBase& base : slot.own) own.push_back(base.AtHead(g, d));
        score_count += group_size * slot.count;
      }
      scores.resize(static_cast<size_t>(score_count));
      readers.clear();
      size_t own_at = 0;
      float* next_scores = scores.data();
      for (const size_t t : members) {
        const Slot& slot = slots[t];
        const int64_t row = tokens[t].row;
        // The token's own key and value, into its cache.
        float* keys = slot.keys + g * slot.capacity * d;
        float* values = slot.values + g * slot.capacity * d;
        std::memcpy(keys + slot.past * d, k_data + (row * kv_heads + g) * d, d * sizeof(float));
        std::memcpy(values + slot.past * d, v_data + (row * kv_heads + g) * d, d * sizeof(float));
        readers.push_back({.queries = q_data + (row * heads + g * group_size) * d,
                           .output = out_data + (row * heads + g * group_size) * d,
                           .ape = tokens[t].ape,
                           .own = absl::MakeConstSpan(own).subspan(own_at, slot.own.size()),
                           .scores = next_scores,
                           .count = slot.count});
        own_at += slot.own.size();
        next_scores += group_size * slot.count;
      }
      attend(group_size, d, scale, shared, readers);
    }
  });
}

}  // namespace apeserve::model
