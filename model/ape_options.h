// How a query attends to its contexts: the three encoding modes of DESIGN.md §3 and
// APE's two parameters. Thread-safety: plain values.
#ifndef APESERVE_MODEL_APE_OPTIONS_H_
#define APESERVE_MODEL_APE_OPTIONS_H_

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

struct ApeOptions {
  // Default: kApe.
  EncodingMode mode = EncodingMode::kApe;
  // Attention temperature T over the contexts' keys (APE only); below 1 sharpens.
  // In (0, 4]. Default: 1.
  float temperature = 1.0F;
  // Scaling factor S of the context segment against prefix and query (APE only).
  // In (0, 16]. Default: 1.
  float scale = 1.0F;

  // INVALID_ARGUMENT naming the field, its value and the allowed range.
  absl::Status Validate() const;
};

// APE's parameters from the JSON that `apeeval calibrate` writes: an object with numbers
// "temperature" and "scale" (other fields are ignored). Mode kApe. INVALID_ARGUMENT: not
// such an object, or values that fail Validate().
absl::StatusOr<ApeOptions> ApeOptionsFromCalibration(absl::string_view json);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_APE_OPTIONS_H_
