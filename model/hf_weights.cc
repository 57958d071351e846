// The tensors of a Hugging Face checkpoint as a WeightSource.
#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/hf_checkpoint.h"
#include "model/llama_weights.h"

namespace apeserve::model {
namespace {

class HfSource final : public WeightSource {
 public:
  explicit HfSource(const HfCheckpoint& checkpoint) : checkpoint_(checkpoint) {}

  bool Has(const std::string& name) const override { return checkpoint_.Find(name) != nullptr; }

  absl::StatusOr<torch::Tensor> Read(const std::string& name,
                                     const std::vector<int64_t>& shape) const override {
    const SafetensorsTensor* tensor = checkpoint_.Find(name);
    APE_RETURN_IF_ERROR(CheckTensor(absl::StrCat("model folder '", checkpoint_.dir(), "'"), name,
                                    tensor != nullptr, tensor ? tensor->shape : shape, shape));
    torch::ScalarType type;
    if (tensor->dtype == "F32") {
      type = torch::kFloat32;
    } else if (tensor->dtype == "F16") {
      type = torch::kFloat16;
    } else if (tensor->dtype == "BF16") {
      type = torch::kBFloat16;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is ", tensor->dtype,
                                                     "; weights must be F32, F16 or BF16"));
    }
    // Copied rather than wrapped: the mapping is read-only and may be unaligned.
    static_assert(std::endian::native == std::endian::little, "safetensors is little-endian");
    torch::Tensor values = torch::empty(shape, type);
    std::memcpy(values.data_ptr(), tensor->bytes.data(), tensor->bytes.size());
    return values.to(torch::kFloat32);
  }

 private:
  const HfCheckpoint& checkpoint_;
};

}  // namespace

std::unique_ptr<WeightSource> HfWeightSource(const HfCheckpoint& checkpoint) {
  return std::make_unique<HfSource>(checkpoint);
}

}  // namespace apeserve::model
