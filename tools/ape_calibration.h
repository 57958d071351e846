// The search behind `apeeval calibrate`: which APE scale form, temperature T and scale S
// bring APE's answers closest to SEQUENTIAL's. A coarse grid over every form, then a
// compass search that refines the best grid point of each form, on an objective that
// reports one divergence per task family; the choice is the least mean over families,
// and each family's own best is kept too. The objective is a callback, so the search
// knows nothing of engines or task sets. Thread-compatible.
#ifndef APESERVE_TOOLS_APE_CALIBRATION_H_
#define APESERVE_TOOLS_APE_CALIBRATION_H_

#include <cstddef>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/ape_options.h"

namespace apeserve::tools {

struct CalibrationSearchOptions {
  // Forms searched. Default: both.
  std::vector<model::ApeScaleForm> forms = {model::ApeScaleForm::kMultiplicative,
                                            model::ApeScaleForm::kAdditive};
  // The coarse grid. Defaults: T 0.3 .. 1.0 by 0.1; S 0.2 .. 1.0 by 0.1, then 1.2, 1.5.
  std::vector<float> temperatures = {0.3F, 0.4F, 0.5F, 0.6F, 0.7F, 0.8F, 0.9F, 1.0F};
  std::vector<float> scales = {0.2F, 0.3F, 0.4F, 0.5F, 0.6F, 0.7F, 0.8F, 0.9F, 1.0F, 1.2F, 1.5F};
  // Compass search after the grid, per form: from the form's best grid point, try T and
  // S one step up and down, move to the best improvement, and halve the steps when
  // none improves; `refine_rounds` halvings in all (0: the grid alone). The first
  // steps are `refine_step` in T and in S. Defaults: 2 rounds, step 0.05.
  int refine_rounds = 2;
  float refine_step = 0.05F;
};

// One evaluated point: the options (mode kApe) and the objective there.
struct CalibrationPoint {
  model::ApeOptions options;
  std::vector<double> family_divergence;  // one per family, the objective's order
  double mean_divergence = 0;             // their mean: what the choice minimizes
  bool refined = false;                   // found by the compass search, not the grid
};

struct CalibrationResult {
  std::vector<CalibrationPoint> points;  // every point evaluated, in order
  size_t best = 0;                       // index into points: least mean divergence
  std::vector<size_t> best_per_family;   // index into points: least divergence per family
};

// The point of least divergence among those of `form` (any form when unset): for
// `family` (an index into family_divergence), or for the mean when unset. nullopt when
// no point has the form.
std::optional<size_t> BestPoint(const CalibrationResult& result, std::optional<size_t> family,
                                std::optional<model::ApeScaleForm> form);

// Returns the divergence from SEQUENTIAL per family at `options` (the same number of
// families every call; smaller is better).
using CalibrationObjective =
    std::function<absl::StatusOr<std::vector<double>>(const model::ApeOptions& options)>;

// Called after each evaluated point, for progress reports.
using CalibrationProgress = std::function<void(const CalibrationPoint& point)>;

// INVALID_ARGUMENT: no form, an empty grid, or a grid value that fails
// ApeOptions::Validate(). Errors of the objective are returned as they are. Points
// outside ApeOptions' ranges are never evaluated; no point is evaluated twice.
absl::StatusOr<CalibrationResult> SearchApeCalibration(const CalibrationSearchOptions& options,
                                                       const CalibrationObjective& objective,
                                                       const CalibrationProgress& progress = {});

}  // namespace apeserve::tools

#endif  // APESERVE_TOOLS_APE_CALIBRATION_H_
