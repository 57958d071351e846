#include "model/ape_options.h"

#include <cmath>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace apeserve::model {
namespace {

// The value of `values` whose name is `name`; INVALID_ARGUMENT listing the names.
template <typename Enum>
absl::StatusOr<Enum> ParseName(absl::string_view name, std::initializer_list<Enum> values,
                               absl::string_view (*name_of)(Enum), absl::string_view what) {
  std::vector<absl::string_view> names;
  for (const Enum value : values) {
    if (name == name_of(value)) return value;
    names.push_back(name_of(value));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " '", name, "' is not one of ", absl::StrJoin(names, ", ")));
}

}  // namespace

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
  return ParseName(name, {EncodingMode::kSequential, EncodingMode::kParallel, EncodingMode::kApe},
                   &EncodingModeName, "mode");
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
  return ParseName(name, {ApeScaleForm::kMultiplicative, ApeScaleForm::kAdditive},
                   &ApeScaleFormName, "APE scale form");
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

absl::StatusOr<ApeCalibration> ReadApeCalibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read calibration '", path, "'"));
  std::ostringstream json;
  json << in.rdbuf();
  return ParseApeCalibration(json.str());
}

}  // namespace apeserve::model
