// Eight-float vector arithmetic for the CPU kernels that torch's per-operation costs make
// too slow for small work (decode attention of one token, one token's log-softmax): a
// GCC/Clang vector type, loads, stores, reductions and a vectorized e^x. Compiled for the
// translation unit's instruction set (two SSE halves by default), or for AVX2 inside a
// function with that target, into which these helpers always inline.
// Internal to model/. Pure functions; thread-safe.
#ifndef APESERVE_MODEL_VECTOR_MATH_H_
#define APESERVE_MODEL_VECTOR_MATH_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// The helpers pass 32-byte vectors by value, which GCC warns (-Wpsabi) changes the
// calling convention between SSE and AVX code. They are always inlined: no call between
// differently compiled code passes a vector. Files that include this one build with
// -Wno-psabi (model/CMakeLists.txt), since GCC reports it at the end of the file.

#define APESERVE_ALWAYS_INLINE [[gnu::always_inline]] inline

namespace apeserve::model::vec {

// Eight floats in a vector register (AVX), or two halves where the target has none.
constexpr int64_t kLanes = 8;
using Floats [[gnu::vector_size(kLanes * sizeof(float))]] = float;

APESERVE_ALWAYS_INLINE Floats Load(const float* from) {
  Floats value;
  std::memcpy(&value, from, sizeof value);
  return value;
}

APESERVE_ALWAYS_INLINE void Store(const Floats& value, float* to) {
  std::memcpy(to, &value, sizeof value);
}

APESERVE_ALWAYS_INLINE Floats Broadcast(float x) { return Floats{} + x; }

APESERVE_ALWAYS_INLINE float Sum(const Floats& value) {
  float total = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) total += value[lane];
  return total;
}

APESERVE_ALWAYS_INLINE float Max(const Floats& value) {
  float top = value[0];
  for (int64_t lane = 1; lane < kLanes; ++lane) top = std::max(top, value[lane]);
  return top;
}

// e^x for x <= 0 (softmax weights after the maximum is subtracted), to a few float
// ulps: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^6 (error
// below 2e-7 relative), 2^n put into the exponent bits. Below -87 it returns e^-87
// (about 1e-38, nothing beside the maximum's weight of 1) rather than a subnormal.
// For any GCC vector of floats (`V`), so that kernels with wider vectors share it.
template <typename V>
APESERVE_ALWAYS_INLINE V ExpOf(V x) {
  using Bits [[gnu::vector_size(sizeof(V))]] = int32_t;
  const V floor = V{} - 87.0F;
  x = x < floor ? floor : x;
  constexpr float kLog2E = 1.44269504F;
  constexpr float kLn2High = 0.693145752F, kLn2Low = 1.42860677e-6F;  // ln 2 in two parts
  constexpr float kRound = 12582912.0F;                               // 1.5 * 2^23
  const V n = (x * kLog2E + kRound) - kRound;                         // nearest integer, exactly
  const V r = (x - n * kLn2High) - n * kLn2Low;
  V p = V{} + 1.0F / 720;
  p = p * r + 1.0F / 120;
  p = p * r + 1.0F / 24;
  p = p * r + 1.0F / 6;
  p = p * r + 0.5F;
  p = p * r + 1.0F;
  p = p * r + 1.0F;
  const Bits bits = (__builtin_convertvector(n, Bits) + 127) << 23;  // 2^n, n >= -126
  V scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

APESERVE_ALWAYS_INLINE Floats Exp(Floats x) { return ExpOf(x); }

APESERVE_ALWAYS_INLINE float Dot(const float* a, const float* b, int64_t d) {
  Floats total{};
  for (int64_t i = 0; i < d; i += kLanes) total += Load(a + i) * Load(b + i);
  return Sum(total);
}

// The largest of `n` scores, -inf for none.
APESERVE_ALWAYS_INLINE float MaxOf(const float* scores, int64_t n) {
  float top = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  if (n >= kLanes) {
    Floats lanes = Load(scores);
    for (i = kLanes; i + kLanes <= n; i += kLanes) {
      const Floats next = Load(scores + i);
      lanes = next > lanes ? next : lanes;
    }
    top = Max(lanes);
  }
  for (; i < n; ++i) top = std::max(top, scores[i]);
  return top;
}

// The sum of e^(x - top) over `n` values of `from`, each written to `to` unless that is
// null. Lanes are summed in float for at most 512 values, then in double.
APESERVE_ALWAYS_INLINE double ExpSum(const float* from, int64_t n, float top, float* to) {
  constexpr int64_t kFloatRun = 512;
  const Floats shift = Broadcast(top);
  double total = 0;
  int64_t i = 0;
  while (i + kLanes <= n) {
    Floats lanes{};
    const int64_t run_end = std::min(n, i + kFloatRun);
    for (; i + kLanes <= run_end; i += kLanes) {
      const Floats e = Exp(Load(from + i) - shift);
      if (to != nullptr) Store(e, to + i);
      lanes += e;
    }
    total += Sum(lanes);
  }
  for (; i < n; ++i) {
    const float e = std::exp(from[i] - top);
    if (to != nullptr) to[i] = e;
    total += e;
  }
  return total;
}

// Lanes 0-3: sums of a's neighbouring pairs; lanes 4-7: b's.
APESERVE_ALWAYS_INLINE Floats PairSums(const Floats& a, const Floats& b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}

// Lane i: the sum of the lanes of v[i]; eight horizontal sums in seven additions.
APESERVE_ALWAYS_INLINE Floats SumEach(const Floats (&v)[kLanes]) {
  return PairSums(PairSums(PairSums(v[0], v[1]), PairSums(v[2], v[3])),
                  PairSums(PairSums(v[4], v[5]), PairSums(v[6], v[7])));
}

// Lane r: the dot product of `a` with row r of `rows` (kLanes rows of d, one after
// another).
APESERVE_ALWAYS_INLINE Floats DotEach(const float* a, const float* rows, int64_t d) {
  // Eight accumulators named out, so that they stay in registers: the compiler does not
  // unroll a loop over an array of them at -O2.
  Floats t0{}, t1{}, t2{}, t3{}, t4{}, t5{}, t6{}, t7{};
  for (int64_t i = 0; i < d; i += kLanes) {
    const Floats chunk = Load(a + i);
    t0 += chunk * Load(rows + i);
    t1 += chunk * Load(rows + d + i);
    t2 += chunk * Load(rows + 2 * d + i);
    t3 += chunk * Load(rows + 3 * d + i);
    t4 += chunk * Load(rows + 4 * d + i);
    t5 += chunk * Load(rows + 5 * d + i);
    t6 += chunk * Load(rows + 6 * d + i);
    t7 += chunk * Load(rows + 7 * d + i);
  }
  return SumEach({t0, t1, t2, t3, t4, t5, t6, t7});
}

// x[i] *= factor for i < n.
APESERVE_ALWAYS_INLINE void Scale(float factor, float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(Load(x + i) * factor, x + i);
  for (; i < n; ++i) x[i] *= factor;
}

// out[i] = sum over j < count of weights[j] * rows[j * d + i], for i < d (a multiple of
// kLanes); with `accumulate`, added to what out holds. Eight vectors of columns at a time in
// registers, independent of each other so that the multiply-adds overlap, the rows streamed past
// them.
APESERVE_ALWAYS_INLINE void WeightedRows(const float* weights, const float* rows, int64_t count,
                                         int64_t d, float* out, bool accumulate = false) {
  const auto start = [&](int64_t at) { return accumulate ? Load(out + at) : Floats{}; };
  int64_t i = 0;
  for (; i + kLanes * kLanes <= d; i += kLanes * kLanes) {
    Floats t0 = start(i), t1 = start(i + kLanes), t2 = start(i + 2 * kLanes),
           t3 = start(i + 3 * kLanes), t4 = start(i + 4 * kLanes), t5 = start(i + 5 * kLanes),
           t6 = start(i + 6 * kLanes), t7 = start(i + 7 * kLanes);
    for (int64_t j = 0; j < count; ++j) {
      const Floats w = Broadcast(weights[j]);
      const float* row = rows + j * d + i;
      t0 += w * Load(row);
      t1 += w * Load(row + kLanes);
      t2 += w * Load(row + 2 * kLanes);
      t3 += w * Load(row + 3 * kLanes);
      t4 += w * Load(row + 4 * kLanes);
      t5 += w * Load(row + 5 * kLanes);
      t6 += w * Load(row + 6 * kLanes);
      t7 += w * Load(row + 7 * kLanes);
    }
    const Floats totals[kLanes] = {t0, t1, t2, t3, t4, t5, t6, t7};
    for (int64_t v = 0; v < kLanes; ++v) Store(totals[v], out + i + v * kLanes);
  }
  for (; i < d; i += kLanes) {
    Floats t = start(i);
    for (int64_t j = 0; j < count; ++j) t += Broadcast(weights[j]) * Load(rows + j * d + i);
    Store(t, out + i);
  }
}

}  // namespace apeserve::model::vec

#endif  // APESERVE_MODEL_VECTOR_MATH_H_
