#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "model/vector_math.h"

namespace apeserve::model {

absl::Status SamplingOptions::Validate() const {
  const auto out_of_range = [](absl::string_view field, double value, absl::string_view range) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is ", value, "; it must be ", range));
  };
  if (!(temperature >= 0 && temperature <= 100)) {
    return out_of_range("temperature", temperature, "in [0, 100]");
  }
  if (top_k < 0) return out_of_range("top_k", top_k, "0 (off) or positive");
  if (!(top_p > 0 && top_p <= 1)) return out_of_range("top_p", top_p, "in (0, 1]");
  if (!(min_p >= 0 && min_p < 1)) return out_of_range("min_p", min_p, "in [0, 1)");
  if (!(repetition_penalty > 0 && repetition_penalty <= 10)) {
    return out_of_range("repetition_penalty", repetition_penalty, "in (0, 10]");
  }
  if (max_tokens <= 0) return out_of_range("max_tokens", max_tokens, "positive");
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] is empty"));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), random_(options.seed) {}

double Sampler::Uniform() { return static_cast<double>(random_() >> 11) * 0x1.0p-53; }

Sampler::Choice Sampler::Next(absl::Span<const float> logits, absl::Span<const int32_t> history) {
  const auto vocab = static_cast<int32_t>(logits.size());
  // The model's own log-probabilities, for reporting.
  // Vectorized: with a vocabulary of 50,000 the normalizer is most of a greedy choice.
  const float raw_max = vec::MaxOf(logits.data(), vocab);
  const double raw_sum = vec::ExpSum(logits.data(), vocab, raw_max, /*to=*/nullptr);
  const auto logprob_of = [&](int32_t token) {
    return static_cast<float>(static_cast<double>(logits[static_cast<size_t>(token)] - raw_max) -
                              std::log(raw_sum));
  };

  std::vector<float> scores(logits.begin(), logits.end());
  if (options_.repetition_penalty != 1.0F) {
    const absl::flat_hash_set<int32_t> seen(history.begin(), history.end());
    for (int32_t token : seen) {
      if (token < 0 || token >= vocab) continue;
      float& s = scores[static_cast<size_t>(token)];
      s = s > 0 ? s / options_.repetition_penalty : s * options_.repetition_penalty;
    }
  }
  if (options_.temperature == 0.0F) {
    // Greedy: the first of the highest scores.
    const auto best =
        static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
    return {best, logprob_of(best)};
  }

  // Candidates by descending score; ties keep the lower id first.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  size_t keep = order.size();
  if (options_.top_k > 0) keep = std::min(keep, static_cast<size_t>(options_.top_k));
  const auto by_score = [&scores](int32_t a, int32_t b) {
    const float sa = scores[static_cast<size_t>(a)], sb = scores[static_cast<size_t>(b)];
    return sa > sb || (sa == sb && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(),
                    by_score);
  order.resize(keep);

  // Softmax with temperature over the kept candidates.
  std::vector<double> probs(order.size());
  const double top = scores[static_cast<size_t>(order[0])];
  double total = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    probs[i] = std::exp((scores[static_cast<size_t>(order[i])] - top) / options_.temperature);
    total += probs[i];
  }
  for (double& p : probs) p /= total;

  // Top-p: the smallest prefix whose mass reaches p. Min-p: relative to the best.
  size_t cut = probs.size();
  if (options_.top_p < 1.0F) {
    double mass = 0;
    for (size_t i = 0; i < probs.size(); ++i) {
      mass += probs[i];
      if (mass >= options_.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (options_.min_p > 0.0F) {
    const double floor = options_.min_p * probs[0];
    size_t i = 1;
    while (i < cut && probs[i] >= floor) ++i;
    cut = i;
  }
  double kept = 0;
  for (size_t i = 0; i < cut; ++i) kept += probs[i];
  double u = Uniform() * kept;
  for (size_t i = 0; i < cut; ++i) {
    u -= probs[i];
    if (u < 0) return {order[i], logprob_of(order[i])};
  }
  return {order[cut - 1], logprob_of(order[cut - 1])};  // rounding left a sliver
}

}  // namespace apeserve::model
