// How a query attends to its contexts: the three encoding modes of DESIGN.md §3 and
// APE's two parameters. Thread-safety: plain values.
#ifndef APESERVE_MODEL_APE_OPTIONS_H_
#define APESERVE_MODEL_APE_OPTIONS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::model {

enum class EncodingMode {
  // Prefix, contexts and query as one causal sequence; the contexts are recomputed.
  kSequential,
  // Contexts encoded on their own from position p; the query attends to all of them
  // with one softmax.
  kParallel,
  // PARALLEL encoding; the query's attention is merged from prefix, contexts (with
  // temperature and scale) and its own tokens by log-sum-exp.
  kApe,
};

// "sequential", "parallel" or "ape".
absl::string_view EncodingModeName(EncodingMode mode);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<EncodingMode> ParseEncodingMode(absl::string_view name);

// How S enters the context segment's log-sum-exp, which weighs the contexts against the
// prefix and the query's own tokens in APE's merge (DESIGN.md §3). With
// lse_T = logsumexp(a_C / T) over all contexts' keys:
enum class ApeScaleForm {
  // LSE_C = S · T · lse_T: the segment's mass is (Σ exp(a_C / T))^(S·T). The form of the
  // authors' released code (Infini-AI-Lab/APE, ape/ape_llama.py) and their README,
  // which recommends T = S = 0.9. The default.
  kMultiplicative,
  // LSE_C = T · lse_T + ln S: the segment's mass times S. The authors' first version,
  // and the form of their in-context-learning harness.
  kAdditive,
};
// The two forms agree for every T when S = 1 and differ otherwise; no constant change
// of S maps one onto the other, so calibrated values belong to their form.

// "multiplicative" or "additive".
absl::string_view ApeScaleFormName(ApeScaleForm form);
// INVALID_ARGUMENT for any other name.
absl::StatusOr<ApeScaleForm> ParseApeScaleForm(absl::string_view name);

// The APE defaults without a calibration: the published form at the authors'
// recommended T = S = 0.9.
inline constexpr float kDefaultApeTemperature = 0.9F;
inline constexpr float kDefaultApeScale = 0.9F;

struct ApeOptions {
  // Default: kApe.
  EncodingMode mode = EncodingMode::kApe;
  // Attention temperature T over the contexts' keys (APE only); below 1 sharpens.
  // In (0, 4]. Default: 0.9, the authors' recommendation. T = S = 1 is PARALLEL.
  float temperature = kDefaultApeTemperature;
  // Scaling factor S of the context segment against prefix and query (APE only).
  // In (0, 16]. Default: 0.9, the authors' recommendation.
  float scale = kDefaultApeScale;
  // How S is applied (APE only). Default: kMultiplicative, the published form.
  ApeScaleForm form = ApeScaleForm::kMultiplicative;

  // INVALID_ARGUMENT naming the field, its value and the allowed range.
  absl::Status Validate() const;
};

// APE's parameters chosen for a model, as `apeeval calibrate` writes them.
struct ApeCalibration {
  // Mode kApe.
  ApeOptions options;
  // The model they were chosen for (Engine::fingerprint()); empty when the file names none.
  std::string model_fingerprint = {};
};

// Reads the JSON that `apeeval calibrate` writes: an object with numbers "temperature"
// and "scale", optionally "form" ("multiplicative", the default when absent, or
// "additive") and "model_fingerprint"; other fields are ignored. INVALID_ARGUMENT: not
// such an object, or values that fail ApeOptions::Validate().
absl::StatusOr<ApeCalibration> ParseApeCalibration(absl::string_view json);

// ParseApeCalibration of the file at `path`; NOT_FOUND when it cannot be read.
absl::StatusOr<ApeCalibration> ReadApeCalibration(const std::string& path);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_APE_OPTIONS_H_
