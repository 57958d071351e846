#include "model/ape_options.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace apeserve::model {

absl::string_view EncodingModeName(EncodingMode mode) {
  switch (mode) {
    case EncodingMode::kSequential:
      return "sequential";
    case EncodingMode::kParallel:
      return "parallel";
    case EncodingMode::kApe:
      return "ape";
  }
  return "unknown";
}

absl::StatusOr<EncodingMode> ParseEncodingMode(absl::string_view name) {
  for (const EncodingMode mode :
       {EncodingMode::kSequential, EncodingMode::kParallel, EncodingMode::kApe}) {
    if (name == EncodingModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("mode '", name, "' is not one of sequential, parallel, ape"));
}

absl::string_view ApeScaleFormName(ApeScaleForm form) {
  switch (form) {
    case ApeScaleForm::kMultiplicative:
      return "multiplicative";
    case ApeScaleForm::kAdditive:
      return "additive";
  }
  return "unknown";
}

absl::StatusOr<ApeScaleForm> ParseApeScaleForm(absl::string_view name) {
  for (const ApeScaleForm form : {ApeScaleForm::kMultiplicative, ApeScaleForm::kAdditive}) {
    if (name == ApeScaleFormName(form)) return form;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("APE scale form '", name, "' is not one of multiplicative, additive"));
}

absl::Status ApeOptions::Validate() const {
  // Written as !(in range) so that NaN fails too.
  if (!(temperature > 0.0F && temperature <= 4.0F)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", temperature, " is outside (0, 4]"));
  }
  if (!(scale > 0.0F && scale <= 16.0F)) {
    return absl::InvalidArgumentError(absl::StrCat("scale ", scale, " is outside (0, 16]"));
  }
  if (form != ApeScaleForm::kMultiplicative && form != ApeScaleForm::kAdditive) {
    return absl::InvalidArgumentError(
        absl::StrCat("APE scale form ", static_cast<int>(form), " is unknown"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ApeCalibration> ParseApeCalibration(absl::string_view json) {
  const nlohmann::json parsed = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) return absl::InvalidArgumentError("calibration is not a JSON object");
  ApeOptions options{.mode = EncodingMode::kApe};
  for (const auto& [field, value] :
       {std::pair{"temperature", &options.temperature}, std::pair{"scale", &options.scale}}) {
    const auto found = parsed.find(field);
    if (found == parsed.end() || !found->is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("calibration has no number '", field, "'"));
    }
    *value = found->get<float>();
  }
  if (const auto form = parsed.find("form"); form != parsed.end()) {
    if (!form->is_string()) return absl::InvalidArgumentError("calibration 'form' is not a string");
    auto parsed_form = ParseApeScaleForm(form->get<std::string>());
    if (!parsed_form.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: ", parsed_form.status().message()));
    }
    options.form = *parsed_form;
  }
  if (absl::Status valid = options.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("calibration: ", valid.message()));
  }
  ApeCalibration calibration{.options = options, .model_fingerprint = ""};
  if (const auto model = parsed.find("model_fingerprint"); model != parsed.end()) {
    if (!model->is_string()) {
      return absl::InvalidArgumentError("calibration 'model_fingerprint' is not a string");
    }
    calibration.model_fingerprint = model->get<std::string>();
  }
  return calibration;
}

}  // namespace apeserve::model
