// A linear layer's weight, prepared once for the fastest product the device has: on a
// CPU with oneDNN (libtorch's x86 and Arm builds), the weight reordered into oneDNN's
// blocked layout, which reads it about twice as fast as a plain matrix product at
// every batch size; elsewhere the plain weight and torch::addmm. Internal to model/
// (torch types). Thread-safety: immutable once made; Apply() may run concurrently.
#ifndef APESERVE_MODEL_PACKED_LINEAR_H_
#define APESERVE_MODEL_PACKED_LINEAR_H_

#include <torch/torch.h>

namespace apeserve::model {

class PackedLinear {
 public:
  PackedLinear() = default;
  // `weight` is [out, in], `bias` [out] or undefined. Packs when `pack` and the
  // weight is a float32 CPU tensor and oneDNN is there; else keeps it as it is.
  PackedLinear(torch::Tensor weight, torch::Tensor bias, bool pack);

  // x [N, in] -> [N, out].
  torch::Tensor Apply(const torch::Tensor& x) const;

 private:
  torch::Tensor weight_;  // [out, in], or oneDNN's layout when packed_
  torch::Tensor bias_;
  bool packed_ = false;
};

// Whether PackedLinear can pack on this machine (a CPU build of libtorch with oneDNN).
bool CanPackLinear();

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_PACKED_LINEAR_H_
