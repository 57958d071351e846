#include "model/prompt_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "model/vector_math.h"

namespace apeserve::model {
namespace {

// Query rows computed together: a kv head's query heads times the tokens, up to 48 at a
// time (three 16-float vectors or six 8-float ones). A tile computes its rows rounded
// up to 16 (kSixteen), so that a prompt of 18 tokens (54 rows with three query heads
// per kv head) costs 64 rows' work, not 96; rows past the last are zero queries whose
// results are dropped.
constexpr int64_t kTileRows = 48;
constexpr int64_t kSixteen = 16;
// Tiles an item computes together when the held keys outnumber the prompt's own four
// times, each block of keys and values read once for all of them: a prompt of 18
// tokens is two tiles, and reading its 16 x 448 keys and values (330 MB, from memory)
// twice cost as much as its second tile's arithmetic. Four tiles' queries and sums
// (144 KiB) stay in the core's cache. A long prompt over few held keys (a document's
// chunk, a plain prompt) reads its own keys from the cache: one tile an item, as many
// items as tiles, shares the threads out evenly (four together: 16% slower at 512
// tokens).
constexpr int64_t kTilesPerItem = 4;
constexpr int64_t kHeldPerOwnToBundle = 4;
// Keys per block: a block's scores ([kBlock][kTileRows], 12 KiB), keys and values stay
// in the core's caches across the three passes over them.
constexpr int64_t kBlock = 64;
// The softmax groups: 0 the plain one (the prefix, the sequence's own keys, every
// segment outside APE), 1 APE's contexts (scores divided by T, the group weighed by S).
constexpr int kGroups = 2;
// A running maximum before any key: finite, so that e^(score - maximum) of a masked key
// (-inf) is e^-87 (vec::ExpOf's floor, nothing beside a visible key's 1), never NaN.
constexpr float kNone = -1e30F;

// One segment's keys and values as the kernel reads them.
struct Run {
  const float* keys = nullptr;  // kv head 0's first row
  const float* values = nullptr;
  int64_t key_stride = 0;  // floats from one kv head's rows to the next one's
  int64_t value_stride = 0;
  int64_t length = 0;
  int group = 0;
  // The sequence's own keys, its T queries their last T: query t sees the first
  // length - T + t + 1.
  bool causal = false;
};

// Keys [begin, begin + size) of runs[run].
struct Block {
  size_t run = 0;
  int64_t begin = 0;
  int64_t size = 0;
};

// One work item's online softmax for its tile's rows in each group: the running maxima,
// the sums of e^(score - maximum), and the values so weighed ([group][row][head_dim]).
struct Partial {
  float top[kGroups][kTileRows];
  float total[kGroups][kTileRows];
  std::vector<float> sums;
};

// One work item: kv head `g`'s row tiles from `tile` (up to kTilesPerItem of them) over
// part `part` of the blocks, tile k's partial at (g * tiles + tile + k) * parts + part.
// `cost`: its rows (rounded up to 16) times the keys they read, to hand the dearest
// out first.
struct Item {
  int64_t g = 0, tile = 0, part = 0;
  int64_t cost = 0;
};

// Everything the work items share.
struct Work {
  const float* q = nullptr;  // [T, heads, head_dim]
  int64_t tokens = 0, heads = 0, group_size = 0, head_dim = 0;
  int64_t rows = 0;  // tokens * group_size per kv head; row r is token r / group_size
  int64_t tiles = 0, parts = 0;
  int64_t tiles_per_item = 1;  // 1 or kTilesPerItem
  int64_t local_length = 0;    // the causal run's keys
  std::vector<Run> runs;
  std::vector<Block> blocks;
  std::vector<Item> items;
  float factors[kGroups] = {1, 1};
  std::vector<Partial>* partials = nullptr;
};

// An item's scratch: each tile's queries as columns ([tile][head_dim][kTileRows]) and a
// block's scores, then weights ([kBlock][kTileRows]).
struct Scratch {
  std::vector<float> columns, scores;
  explicit Scratch(int64_t head_dim)
      : columns(static_cast<size_t>(kTilesPerItem * head_dim * kTileRows)),
        scores(static_cast<size_t>(kBlock * kTileRows)) {}
};

template <typename V>
constexpr int64_t kLanesOf = static_cast<int64_t>(sizeof(V) / sizeof(float));

template <typename V>
APESERVE_ALWAYS_INLINE V LoadOf(const float* from) {
  V value;
  std::memcpy(&value, from, sizeof value);
  return value;
}

// x in every lane, as one broadcast (from memory where x is there). Neither V{} + x
// (the compiler may not drop the +0: -0 + 0 is +0) nor an initializer of x's becomes
// one instruction.
template <typename V>
APESERVE_ALWAYS_INLINE V Splat(float x) {
  V first{};
  first[0] = x;
  if constexpr (kLanesOf<V> == 16) {
    return __builtin_shufflevector(first, first, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  } else {
    static_assert(kLanesOf<V> == 8);
    return __builtin_shufflevector(first, first, 0, 0, 0, 0, 0, 0, 0, 0);
  }
}

template <typename V>
APESERVE_ALWAYS_INLINE void StoreOf(const V& value, float* to) {
  std::memcpy(to, &value, sizeof value);
}

// scores[j][r] = factor * key j . column r of `columns`, for the block's n keys: each
// key element broadcast once and multiplied into a whole vector of rows, a few keys at
// a time so that the multiply-adds of different accumulators overlap.
template <typename V, int64_t kRows>
APESERVE_ALWAYS_INLINE void Score(const float* columns, const float* keys, int64_t n,
                                  int64_t head_dim, float factor, float* scores) {
  constexpr int64_t kLanes = kLanesOf<V>;
  // Keys a step: kKeys * kRows accumulators, kKeys broadcasts and kRows loads, within
  // the registers (32 with AVX-512, 16 with AVX2). Four keys measured best with AVX-512
  // for tiles of 16, 32 and 48 rows (eight: a 32-row tile 1.7x slower).
  constexpr int64_t kKeys = kLanes == 16 || kRows <= 2 ? 4 : 2;
  int64_t j = 0;
  for (; j + kKeys <= n; j += kKeys) {
    V sums[kKeys][kRows] = {};
    const float* key = keys + j * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) {
      V element[kKeys];
#pragma GCC unroll 4
      for (int64_t k = 0; k < kKeys; ++k) element[k] = Splat<V>(key[k * head_dim + i]);
#pragma GCC unroll 6
      for (int64_t v = 0; v < kRows; ++v) {
        const V column = LoadOf<V>(columns + i * kTileRows + v * kLanes);
#pragma GCC unroll 4
        for (int64_t k = 0; k < kKeys; ++k) sums[k][v] += element[k] * column;
      }
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kKeys; ++k) {
#pragma GCC unroll 6
      for (int64_t v = 0; v < kRows; ++v) {
        StoreOf(sums[k][v] * factor, scores + (j + k) * kTileRows + v * kLanes);
      }
    }
  }
  for (; j < n; ++j) {
    V sums[kRows] = {};
    const float* key = keys + j * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) {
      const V element = Splat<V>(key[i]);
#pragma GCC unroll 6
      for (int64_t v = 0; v < kRows; ++v) {
        sums[v] += element * LoadOf<V>(columns + i * kTileRows + v * kLanes);
      }
    }
#pragma GCC unroll 6
    for (int64_t v = 0; v < kRows; ++v) {
      StoreOf(sums[v] * factor, scores + j * kTileRows + v * kLanes);
    }
  }
}

// Key `begin + j` of the causal run is hidden from row r when it is past limits[r].
template <typename V, int64_t kRows>
APESERVE_ALWAYS_INLINE void Mask(const float* limits, int64_t begin, int64_t n, float* scores) {
  constexpr int64_t kLanes = kLanesOf<V>;
  const V hidden = V{} - std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const V key = Splat<V>(static_cast<float>(begin + j));
    for (int64_t v = 0; v < kRows; ++v) {
      float* at = scores + j * kTileRows + v * kLanes;
      const V score = LoadOf<V>(at);
      StoreOf<V>(key > LoadOf<V>(limits + v * kLanes) ? hidden : score, at);
    }
  }
}

// The block's scores into the rows' online softmax: new maxima, the earlier sums
// rescaled to them, the scores turned into weights e^(score - maximum) in place, then
// sums[r] = sums[r] * correction[r] + the values weighed, a register tile of rows by
// columns at a time with each value row loaded once for the tile's rows.
template <typename V, int64_t kRows>
APESERVE_ALWAYS_INLINE void Accumulate(float* scores, const float* values, int64_t n,
                                       int64_t head_dim, float* top, float* total, float* sums) {
  constexpr int64_t kLanes = kLanesOf<V>;
  V highest[kRows], added[kRows];
  float correction[kRows * kLanes];
  for (int64_t v = 0; v < kRows; ++v) highest[v] = LoadOf<V>(top + v * kLanes);
  for (int64_t j = 0; j < n; ++j) {
#pragma GCC unroll 6
    for (int64_t v = 0; v < kRows; ++v) {
      const V score = LoadOf<V>(scores + j * kTileRows + v * kLanes);
      highest[v] = score > highest[v] ? score : highest[v];
    }
  }
  for (int64_t v = 0; v < kRows; ++v) {
    const V before = LoadOf<V>(top + v * kLanes);
    StoreOf(vec::ExpOf(before - highest[v]), correction + v * kLanes);
    StoreOf(highest[v], top + v * kLanes);
    added[v] = V{};
  }
  for (int64_t j = 0; j < n; ++j) {
#pragma GCC unroll 6
    for (int64_t v = 0; v < kRows; ++v) {
      float* at = scores + j * kTileRows + v * kLanes;
      const V weight = vec::ExpOf(LoadOf<V>(at) - highest[v]);
      StoreOf(weight, at);
      added[v] += weight;
    }
  }
  for (int64_t v = 0; v < kRows; ++v) {
    StoreOf(LoadOf<V>(total + v * kLanes) * LoadOf<V>(correction + v * kLanes) + added[v],
            total + v * kLanes);
  }

  // Rows per register tile (dividing the tile's 16, 32 or 48) and vectors of head_dim.
  constexpr int64_t kTile = kLanes == 16 && kRows == 3 ? 6 : 4;
  constexpr int64_t kColumns = kLanes == 16 ? 4 : 2;
  static_assert(kRows * kLanes % kTile == 0);
  for (int64_t r = 0; r < kRows * kLanes; r += kTile) {
    for (int64_t c = 0; c < head_dim; c += kColumns * kLanes) {
      V acc[kTile][kColumns];
#pragma GCC unroll 6
      for (int64_t t = 0; t < kTile; ++t) {
#pragma GCC unroll 4
        for (int64_t x = 0; x < kColumns; ++x) {
          acc[t][x] = LoadOf<V>(sums + (r + t) * head_dim + c + x * kLanes) * correction[r + t];
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        const float* row = values + j * head_dim + c;
        V value[kColumns];
#pragma GCC unroll 4
        for (int64_t x = 0; x < kColumns; ++x) value[x] = LoadOf<V>(row + x * kLanes);
#pragma GCC unroll 6
        for (int64_t t = 0; t < kTile; ++t) {
          const V weight = Splat<V>(scores[j * kTileRows + r + t]);
#pragma GCC unroll 4
          for (int64_t x = 0; x < kColumns; ++x) acc[t][x] += weight * value[x];
        }
      }
#pragma GCC unroll 6
      for (int64_t t = 0; t < kTile; ++t) {
#pragma GCC unroll 4
        for (int64_t x = 0; x < kColumns; ++x) {
          StoreOf(acc[t][x], sums + (r + t) * head_dim + c + x * kLanes);
        }
      }
    }
  }
}

// One block's keys and values for one tile whose rows are kRows vectors of V.
template <typename V, int64_t kRows>
APESERVE_ALWAYS_INLINE void AttendBlock(const Work& work, const Run& run, const Block& block,
                                        const float* keys, const float* values,
                                        const float* columns, const float* limits, Partial& partial,
                                        float* scores) {
  const int64_t d = work.head_dim;
  Score<V, kRows>(columns, keys, block.size, d, work.factors[run.group], scores);
  if (run.causal) Mask<V, kRows>(limits, block.begin, block.size, scores);
  Accumulate<V, kRows>(scores, values, block.size, d, partial.top[run.group],
                       partial.total[run.group],
                       partial.sums.data() + static_cast<int64_t>(run.group) * kTileRows * d);
}

// Rows of `tile`, rounded up to whole sixteens (1 to 3).
int64_t SixteensOf(const Work& work, int64_t tile) {
  const int64_t rows = std::min(kTileRows, work.rows - tile * kTileRows);
  return (rows + kSixteen - 1) / kSixteen;
}

// The last own key that some row of `tile` sees.
int64_t LastVisibleOf(const Work& work, int64_t tile) {
  const int64_t last_row = std::min(work.rows, (tile + 1) * kTileRows) - 1;
  return work.local_length - work.tokens + last_row / work.group_size;
}

// The blocks [first, last) of part `part`.
std::pair<int64_t, int64_t> BlocksOf(const Work& work, int64_t part) {
  const auto blocks = static_cast<int64_t>(work.blocks.size());
  return {part * blocks / work.parts, (part + 1) * blocks / work.parts};
}

// Whether a tile whose rows see own keys up to `last_visible` reads `block`: own keys
// past every row's last are skipped (a long prompt's later tokens, for its first rows).
bool Reads(const Work& work, const Block& block, int64_t last_visible) {
  return !work.runs[block.run].causal || block.begin <= last_visible;
}

// The tiles an item computes together.
int64_t TilesOf(const Work& work, const Item& item) {
  return std::min(work.tiles_per_item, work.tiles - item.tile);
}

// One work item: its tiles' queries as columns, then every block of its part for each
// of its tiles.
template <typename V>
APESERVE_ALWAYS_INLINE void AttendItem(const Work& work, const Item& item, Scratch& scratch) {
  const int64_t d = work.head_dim, tiles = TilesOf(work, item);
  float limits[kTilesPerItem][kTileRows];
  int64_t sixteens[kTilesPerItem], last_visible[kTilesPerItem];
  Partial* partials[kTilesPerItem];
  for (int64_t k = 0; k < tiles; ++k) {
    const int64_t tile = item.tile + k;
    float* columns = scratch.columns.data() + k * d * kTileRows;
    for (int64_t i = 0; i < kTileRows; ++i) {
      const int64_t r = tile * kTileRows + i;
      if (r >= work.rows) {
        for (int64_t x = 0; x < d; ++x) columns[x * kTileRows + i] = 0;
        limits[k][i] = -1;
        continue;
      }
      const int64_t t = r / work.group_size;
      const float* query =
          work.q + (t * work.heads + item.g * work.group_size + r % work.group_size) * d;
      for (int64_t x = 0; x < d; ++x) columns[x * kTileRows + i] = query[x];
      limits[k][i] = static_cast<float>(work.local_length - work.tokens + t);
    }
    sixteens[k] = SixteensOf(work, tile);
    last_visible[k] = LastVisibleOf(work, tile);
    Partial& partial = (*work.partials)[static_cast<size_t>(
        (item.g * work.tiles + tile) * work.parts + item.part)];
    std::fill(&partial.top[0][0], &partial.top[0][0] + kGroups * kTileRows, kNone);
    std::fill(&partial.total[0][0], &partial.total[0][0] + kGroups * kTileRows, 0.0F);
    partial.sums.assign(static_cast<size_t>(kGroups * kTileRows * d), 0.0F);
    partials[k] = &partial;
  }

  constexpr int64_t kPerSixteen = kSixteen / kLanesOf<V>;
  float* scores = scratch.scores.data();
  const auto [first, last] = BlocksOf(work, item.part);
  for (int64_t b = first; b < last; ++b) {
    const Block& block = work.blocks[static_cast<size_t>(b)];
    const Run& run = work.runs[block.run];
    const float* keys = run.keys + item.g * run.key_stride + block.begin * d;
    const float* values = run.values + item.g * run.value_stride + block.begin * d;
    for (int64_t k = 0; k < tiles; ++k) {
      if (!Reads(work, block, last_visible[k])) continue;
      const float* columns = scratch.columns.data() + k * d * kTileRows;
      switch (sixteens[k]) {
        case 1:
          AttendBlock<V, kPerSixteen>(work, run, block, keys, values, columns, limits[k],
                                      *partials[k], scores);
          break;
        case 2:
          AttendBlock<V, 2 * kPerSixteen>(work, run, block, keys, values, columns, limits[k],
                                          *partials[k], scores);
          break;
        default:
          AttendBlock<V, 3 * kPerSixteen>(work, run, block, keys, values, columns, limits[k],
                                          *partials[k], scores);
          break;
      }
    }
  }
}

// The same code for any x86-64 or other CPU (eight-float vectors, two halves on SSE)
// and, chosen at run time, for AVX2 with FMA and for AVX-512.
void AttendPortable(const Work& work, const Item& item, Scratch& scratch) {
  AttendItem<vec::Floats>(work, item, scratch);
}

#if defined(__x86_64__)
[[gnu::target("avx2,fma")]] void AttendAvx2(const Work& work, const Item& item, Scratch& scratch) {
  AttendItem<vec::Floats>(work, item, scratch);
}

using Floats16 [[gnu::vector_size(16 * sizeof(float))]] = float;

[[gnu::target("avx512f,avx512dq,avx512vl,avx2,fma")]] void AttendAvx512(const Work& work,
                                                                        const Item& item,
                                                                        Scratch& scratch) {
  AttendItem<Floats16>(work, item, scratch);
}
#endif

using AttendFunction = void (*)(const Work&, const Item&, Scratch&);

AttendFunction ChooseAttend(int64_t head_dim) {
#if defined(__x86_64__)
  // Sixteen-float register tiles cover head_dim in 64s.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && head_dim % 64 == 0) {
    return &AttendAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &AttendAvx2;
#endif
  return &AttendPortable;
}

void CheckRows(const torch::Tensor& x, int64_t kv_heads, int64_t head_dim, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu() && x.dim() == 3 &&
                  x.size(0) == kv_heads && x.size(2) == head_dim && x.stride(2) == 1 &&
                  (x.size(1) <= 1 || x.stride(1) == head_dim),
              "prompt attention needs float32 rows of head_dim per kv head on the CPU: ", what);
}

// The merged log-sum-exp of one row's group over the parts (-inf for none), and the
// maximum it is relative to.
struct GroupTotal {
  double top = kNone;
  double total = 0;
  double lse = -std::numeric_limits<double>::infinity();
};

}  // namespace

bool PromptAttentionApplies(const torch::Device& device, torch::ScalarType dtype, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, const ApeLayout* ape) {
  return device.is_cpu() && dtype == torch::kFloat32 && head_dim % 16 == 0 && kv_heads > 0 &&
         heads % kv_heads == 0 && (ape == nullptr || ape->kernel == AttentionKernel::kAuto);
}

void PromptAttention(const torch::Tensor& q, absl::Span<const KeySegment> held,
                     const torch::Tensor& local_keys, const torch::Tensor& local_values,
                     const ApeLayout* ape, torch::Tensor& output) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.scalar_type() == torch::kFloat32 &&
                  q.device().is_cpu() && output.is_contiguous() && output.sizes() == q.sizes() &&
                  output.scalar_type() == torch::kFloat32,
              "prompt attention needs contiguous float32 queries and output on the CPU");
  Work work;
  work.q = q.data_ptr<float>();
  work.tokens = q.size(0);
  work.heads = q.size(1);
  work.head_dim = q.size(2);
  const int64_t d = work.head_dim, kv_heads = local_keys.dim() == 3 ? local_keys.size(0) : 0;
  TORCH_CHECK(kv_heads > 0 && work.heads % kv_heads == 0 && d % 16 == 0,
              "query heads must be a multiple of kv heads, head_dim of 16");
  CheckRows(local_keys, kv_heads, d, "own keys");
  CheckRows(local_values, kv_heads, d, "own values");
  TORCH_CHECK(local_keys.size(1) >= work.tokens && local_values.size(1) == local_keys.size(1),
              "the sequence's own keys hold its queries");
  work.group_size = work.heads / kv_heads;
  work.rows = work.tokens * work.group_size;
  work.tiles = (work.rows + kTileRows - 1) / kTileRows;
  work.local_length = local_keys.size(1);

  // The runs: the held segments in order, then the sequence's own keys.
  const auto add_run = [&](const torch::Tensor& keys, const torch::Tensor& values, int group,
                           bool causal) {
    work.runs.push_back({.keys = keys.data_ptr<float>(),
                         .values = values.data_ptr<float>(),
                         .key_stride = keys.stride(0),
                         .value_stride = values.stride(0),
                         .length = keys.size(1),
                         .group = group,
                         .causal = causal});
  };
  for (const KeySegment& segment : held) {
    if (segment.keys.size(1) == 0) continue;
    CheckRows(segment.keys, kv_heads, d, "held keys");
    CheckRows(segment.values, kv_heads, d, "held values");
    TORCH_CHECK(segment.values.size(1) == segment.keys.size(1), "as many values as keys");
    add_run(segment.keys, segment.values, ape != nullptr && segment.contexts ? 1 : 0, false);
  }
  add_run(local_keys, local_values, 0, true);
  for (size_t run = 0; run < work.runs.size(); ++run) {
    const int64_t length = work.runs[run].length;
    for (int64_t begin = 0; begin < length; begin += kBlock) {
      work.blocks.push_back({.run = run, .begin = begin, .size = std::min(kBlock, length - begin)});
    }
  }

  // Items: each kv head's row tiles, one or kTilesPerItem at a time, over parts of the
  // blocks, merged below by their maxima and sums. Tiles together: one part per thread,
  // so that a short prompt keeps all of them busy; one tile an item: as many parts as
  // make the items a multiple of the threads (3 kv heads on 2 threads: 6 items). Their
  // costs differ (a prompt's last tile may be a third of a full one; causal blocks are
  // skipped for early rows): the threads take them dearest first.
  const auto threads = static_cast<int64_t>(at::get_num_threads());
  const auto blocks = static_cast<int64_t>(work.blocks.size());
  int64_t held_keys = 0;
  for (const Run& run : work.runs) held_keys += run.causal ? 0 : run.length;
  const bool together = held_keys >= kHeldPerOwnToBundle * work.local_length;
  work.tiles_per_item = together ? kTilesPerItem : 1;
  const int64_t per_part =
      kv_heads * ((work.tiles + work.tiles_per_item - 1) / work.tiles_per_item);
  work.parts =
      std::clamp<int64_t>(together ? threads : threads / std::gcd(per_part, threads), 1, blocks);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  work.factors[0] = static_cast<float>(scale);
  work.factors[1] = static_cast<float>(ape != nullptr ? scale / ape->temperature : scale);
  for (int64_t g = 0; g < kv_heads; ++g) {
    for (int64_t tile = 0; tile < work.tiles; tile += work.tiles_per_item) {
      for (int64_t part = 0; part < work.parts; ++part) {
        Item item{.g = g, .tile = tile, .part = part};
        for (int64_t k = 0; k < TilesOf(work, item); ++k) {
          const int64_t visible = LastVisibleOf(work, tile + k);
          const auto [first, last] = BlocksOf(work, part);
          for (int64_t b = first; b < last; ++b) {
            const Block& block = work.blocks[static_cast<size_t>(b)];
            if (Reads(work, block, visible)) item.cost += block.size * SixteensOf(work, tile + k);
          }
        }
        work.items.push_back(item);
      }
    }
  }
  std::stable_sort(work.items.begin(), work.items.end(),
                   [](const Item& a, const Item& b) { return a.cost > b.cost; });
  std::vector<Partial> partials(static_cast<size_t>(kv_heads * work.tiles * work.parts));
  work.partials = &partials;
  static const AttendFunction attend_512 = ChooseAttend(64);
  static const AttendFunction attend_16 = ChooseAttend(16);
  const AttendFunction attend = d % 64 == 0 ? attend_512 : attend_16;
  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    Scratch scratch(d);
    for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < work.items.size();
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      attend(work, work.items[i], scratch);
    }
  });

  // Each row: each group's log-sum-exp over the parts, APE's weighing of the contexts'
  // one (the published form multiplies it by T and S, the additive one by T and adds
  // ln S), and the output as the parts' sums so weighed.
  float* out = output.data_ptr<float>();
  for (int64_t g = 0; g < kv_heads; ++g) {
    for (int64_t r = 0; r < work.rows; ++r) {
      const int64_t tile = r / kTileRows, i = r % kTileRows;
      const Partial* parts = partials.data() + (g * work.tiles + tile) * work.parts;
      GroupTotal groups[kGroups];
      for (int group = 0; group < kGroups; ++group) {
        GroupTotal& sum = groups[group];
        for (int64_t p = 0; p < work.parts; ++p) {
          sum.top = std::max<double>(sum.top, parts[p].top[group][i]);
        }
        if (sum.top <= kNone / 2) continue;  // no key of this group
        for (int64_t p = 0; p < work.parts; ++p) {
          sum.total += parts[p].total[group][i] * std::exp(parts[p].top[group][i] - sum.top);
        }
        sum.lse = sum.top + std::log(sum.total);
      }
      if (std::isfinite(groups[1].lse)) {
        groups[1].lse = ape->form == ApeScaleForm::kMultiplicative
                            ? groups[1].lse * ape->scale * ape->temperature
                            : groups[1].lse * ape->temperature + std::log(ape->scale);
      }
      const double highest = std::max(groups[0].lse, groups[1].lse);
      double weights[kGroups], weight_sum = 0;
      for (int group = 0; group < kGroups; ++group) {
        weights[group] =
            std::isfinite(groups[group].lse) ? std::exp(groups[group].lse - highest) : 0.0;
        weight_sum += weights[group];
      }
      const int64_t t = r / work.group_size;
      float* row = out + (t * work.heads + g * work.group_size + r % work.group_size) * d;
      std::fill(row, row + d, 0.0F);
      for (int group = 0; group < kGroups; ++group) {
        if (weights[group] == 0) continue;
        const double share = weights[group] / weight_sum / groups[group].total;
        for (int64_t p = 0; p < work.parts; ++p) {
          const auto factor =
              static_cast<float>(share * std::exp(parts[p].top[group][i] - groups[group].top));
          if (factor == 0) continue;
          const float* sums = parts[p].sums.data() + (group * kTileRows + i) * d;
          for (int64_t x = 0; x < d; ++x) row[x] += factor * sums[x];
        }
      }
    }
  }
}

}  // namespace apeserve::model
