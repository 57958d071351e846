// Fuzzes the reader of a Hugging Face config.json (ConfigFromHfJson), which a
// safetensors checkpoint brings with it.
#include <cstddef>
#include <cstdint>

#include "model/model_config.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::model {
namespace {

void FuzzOne(absl::string_view json) {
  absl::StatusOr<ModelConfig> config = ConfigFromHfJson(json);
  if (config.ok()) fuzz::Check(config->Validate().ok(), "accepted a config that fails Validate");
}

}  // namespace
}  // namespace apeserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::model::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
