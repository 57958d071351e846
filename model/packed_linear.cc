#include "model/packed_linear.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>
#include <utility>

namespace apeserve::model {
namespace {

// libtorch's oneDNN operators have no C++ header: they are called through the
// dispatcher by their schemas, mkldnn::_reorder_linear_weight(Tensor, int?) and
// mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[], str?).
at::Tensor ReorderWeight(const at::Tensor& weight) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                             .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  return op.call(weight, std::nullopt);
}

at::Tensor LinearPointwise(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            std::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<std::string_view>)>();
  return op.call(x, weight, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

}  // namespace

bool CanPackLinear() {
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() &&
         c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}).has_value() &&
         c10::Dispatcher::singleton()
             .findSchema({"mkldnn::_reorder_linear_weight", ""})
             .has_value();
}

PackedLinear::PackedLinear(torch::Tensor weight, torch::Tensor bias, bool pack)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (pack && weight_.device().is_cpu() && weight_.scalar_type() == torch::kFloat32 &&
      CanPackLinear()) {
    weight_ = ReorderWeight(weight_.contiguous());
    packed_ = true;
  }
}

torch::Tensor PackedLinear::Apply(const torch::Tensor& x) const {
  if (packed_) {
    return LinearPointwise(x, weight_,
                           bias_.defined() ? std::optional<at::Tensor>(bias_) : std::nullopt);
  }
  return bias_.defined() ? torch::addmm(bias_, x, weight_.t()) : torch::mm(x, weight_.t());
}

}  // namespace apeserve::model
