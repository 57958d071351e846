#include "tools/ape_calibration.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

namespace apeserve::tools {
namespace {

using model::ApeOptions;
using model::ApeScaleForm;

// Values live on a 1e-4 lattice, so that 0.3 + 0.05 + 0.05 is the grid's 0.4 and a
// point reached twice is evaluated once.
int64_t OnLattice(float value) { return std::llround(static_cast<double>(value) * 1e4); }
float Snapped(float value) {
  return static_cast<float>(static_cast<double>(OnLattice(value)) / 1e4);
}

// A compass search may keep moving at one step size; this bounds its walk per size.
constexpr int kMaxMovesPerStep = 8;

class Search {
 public:
  Search(const CalibrationObjective& objective, const CalibrationProgress& progress)
      : objective_(objective), progress_(progress) {}

  // The index of the point at (form, T, S), evaluating it if it is new; nullopt when
  // the values are outside ApeOptions' ranges.
  absl::StatusOr<std::optional<size_t>> Evaluate(ApeScaleForm form, float temperature, float scale,
                                                 bool refined) {
    const ApeOptions options{.mode = model::EncodingMode::kApe,
                             .temperature = Snapped(temperature),
                             .scale = Snapped(scale),
                             .form = form};
    if (!options.Validate().ok()) return std::nullopt;
    const auto key =
        std::make_tuple(static_cast<int>(form), OnLattice(temperature), OnLattice(scale));
    if (const auto found = seen_.find(key); found != seen_.end()) return found->second;
    absl::StatusOr<std::vector<double>> divergence = objective_(options);
    if (!divergence.ok()) return divergence.status();
    if (divergence->empty() ||
        (!result_.points.empty() &&
         divergence->size() != result_.points.front().family_divergence.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the calibration objective returned ", divergence->size(),
                       " families' divergences, not the same non-zero number at every point"));
    }
    CalibrationPoint point{
        .options = options, .family_divergence = *std::move(divergence), .refined = refined};
    point.mean_divergence =
        std::accumulate(point.family_divergence.begin(), point.family_divergence.end(), 0.0) /
        static_cast<double>(point.family_divergence.size());
    result_.points.push_back(std::move(point));
    if (progress_) progress_(result_.points.back());
    seen_.emplace(key, result_.points.size() - 1);
    return result_.points.size() - 1;
  }

  // Refines the point at `start` by compass search in T and S, within its form.
  absl::Status Refine(size_t start, int rounds, float first_step) {
    size_t center = start;
    float step = first_step;
    for (int round = 0, moves = 0; round < rounds;) {
      const CalibrationPoint& here = result_.points[center];
      const ApeScaleForm form = here.options.form;
      const float t = here.options.temperature, s = here.options.scale;
      std::optional<size_t> better;
      double least = here.mean_divergence;
      for (const auto& [dt, ds] : std::array<std::pair<float, float>, 4>{
               {{step, 0.0F}, {-step, 0.0F}, {0.0F, step}, {0.0F, -step}}}) {
        absl::StatusOr<std::optional<size_t>> neighbour =
            Evaluate(form, t + dt, s + ds, /*refined=*/true);
        if (!neighbour.ok()) return neighbour.status();
        if (neighbour->has_value() && result_.points[**neighbour].mean_divergence < least) {
          least = result_.points[**neighbour].mean_divergence;
          better = *neighbour;
        }
      }
      if (better.has_value() && ++moves <= kMaxMovesPerStep) {
        center = *better;
        continue;
      }
      step /= 2;
      moves = 0;
      ++round;
    }
    return absl::OkStatus();
  }

  CalibrationResult Finish() && {
    result_.best = *BestPoint(result_, std::nullopt, std::nullopt);
    const size_t families = result_.points.front().family_divergence.size();
    for (size_t f = 0; f < families; ++f) {
      result_.best_per_family.push_back(*BestPoint(result_, f, std::nullopt));
    }
    return std::move(result_);
  }

  const std::vector<CalibrationPoint>& points() const { return result_.points; }

 private:
  const CalibrationObjective& objective_;
  const CalibrationProgress& progress_;
  CalibrationResult result_;
  std::map<std::tuple<int, int64_t, int64_t>, size_t> seen_;
};

}  // namespace

std::optional<size_t> BestPoint(const CalibrationResult& result, std::optional<size_t> family,
                                std::optional<ApeScaleForm> form) {
  const auto divergence = [&](size_t i) {
    const CalibrationPoint& point = result.points[i];
    return family.has_value() ? point.family_divergence[*family] : point.mean_divergence;
  };
  std::optional<size_t> best;
  for (size_t i = 0; i < result.points.size(); ++i) {
    if (form.has_value() && result.points[i].options.form != *form) continue;
    if (!best.has_value() || divergence(i) < divergence(*best)) best = i;
  }
  return best;
}

absl::StatusOr<CalibrationResult> SearchApeCalibration(const CalibrationSearchOptions& options,
                                                       const CalibrationObjective& objective,
                                                       const CalibrationProgress& progress) {
  if (options.forms.empty()) return absl::InvalidArgumentError("no APE scale form to search");
  if (options.temperatures.empty() || options.scales.empty()) {
    return absl::InvalidArgumentError("the calibration grid needs temperatures and scales");
  }
  for (const ApeScaleForm form : options.forms) {
    for (const float t : options.temperatures) {
      for (const float s : options.scales) {
        // As Evaluate() will see it, on the lattice.
        const ApeOptions point{.temperature = Snapped(t), .scale = Snapped(s), .form = form};
        if (absl::Status valid = point.Validate(); !valid.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("calibration grid: ", valid.message()));
        }
      }
    }
  }
  if (!(options.refine_step > 0) || options.refine_rounds < 0) {
    return absl::InvalidArgumentError("refinement needs a positive step and rounds >= 0");
  }

  Search search(objective, progress);
  for (const ApeScaleForm form : options.forms) {
    std::optional<size_t> best;
    for (const float t : options.temperatures) {
      for (const float s : options.scales) {
        absl::StatusOr<std::optional<size_t>> index = search.Evaluate(form, t, s, false);
        if (!index.ok()) return index.status();
        const CalibrationPoint& point = search.points()[**index];
        if (!best.has_value() || point.mean_divergence < search.points()[*best].mean_divergence) {
          best = *index;
        }
      }
    }
    if (absl::Status refined = search.Refine(*best, options.refine_rounds, options.refine_step);
        !refined.ok()) {
      return refined;
    }
  }
  return std::move(search).Finish();
}

}  // namespace apeserve::tools
