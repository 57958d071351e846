#include "model/runtime.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "model/torch_error.h"

namespace apeserve::model {

RuntimeInfo GetRuntimeInfo() {
  RuntimeInfo info;
  info.torch_version = TORCH_VERSION;
  info.cuda_compiled = at::detail::getCUDAHooks().isBuilt();
  info.cuda_available = torch::cuda::is_available();
  info.cuda_device_count = info.cuda_available ? static_cast<int>(torch::cuda::device_count()) : 0;
  info.intra_op_threads = at::get_num_threads();
  return info;
}

std::string Device::ToString() const {
  switch (type) {
    case DeviceType::kCpu:
      return "cpu";
    case DeviceType::kCuda:
      return absl::StrCat("cuda:", index);
  }
  return "unknown";
}

absl::StatusOr<Device> ResolveDevice(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  const int cuda_devices =
      torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  if (lowered == "auto") {
    return cuda_devices > 0 ? Device{DeviceType::kCuda, 0} : Device{DeviceType::kCpu, 0};
  }
  if (lowered == "cpu") return Device{DeviceType::kCpu, 0};

  absl::string_view rest = lowered;
  if (!absl::ConsumePrefix(&rest, "cuda")) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", name, "' is not one of auto, cpu, cuda, cuda:N"));
  }
  int index = 0;
  if (!rest.empty() &&
      (!absl::ConsumePrefix(&rest, ":") || !absl::SimpleAtoi(rest, &index) || index < 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", name, "' is not one of auto, cpu, cuda, cuda:N"));
  }
  if (index >= cuda_devices) {
    return absl::FailedPreconditionError(absl::StrCat("device '", name,
                                                      "' was asked for, but this machine has ",
                                                      cuda_devices, " usable CUDA device(s)"));
  }
  return Device{DeviceType::kCuda, index};
}

namespace {

torch::Device ToTorch(const Device& device) {
  return device.type == DeviceType::kCuda
             ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device.index))
             : torch::Device(torch::kCPU);
}

}  // namespace

absl::Status SelfTest(const Device& device) {
  constexpr size_t kRows = 48, kInner = 64, kCols = 40;
  // Small integers keep every product exact in fp32, so the comparison can be strict.
  std::vector<float> a(kRows * kInner), b(kInner * kCols);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>(i % 5) - 2);

  torch::Tensor product;
  try {
    const auto options = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor ta = torch::from_blob(a.data(), {kRows, kInner}, options).to(ToTorch(device));
    torch::Tensor tb = torch::from_blob(b.data(), {kInner, kCols}, options).to(ToTorch(device));
    product = torch::matmul(ta, tb).to(torch::kCPU).contiguous();  // [kRows, kCols]
  } catch (const c10::Error& e) {
    // A device that fails a matmul cannot serve: UNAVAILABLE, whatever the cause.
    return absl::UnavailableError(
        FromTorchError(e, absl::StrCat("libtorch failed on ", device.ToString())).message());
  }

  const float* got = product.data_ptr<float>();
  for (size_t r = 0; r < kRows; ++r) {
    for (size_t c = 0; c < kCols; ++c) {
      float want = 0;
      for (size_t k = 0; k < kInner; ++k) want += a[r * kInner + k] * b[k * kCols + c];
      if (std::fabs(got[r * kCols + c] - want) > 0) {
        return absl::InternalError(absl::StrCat("matmul self-test on ", device.ToString(), " gave ",
                                                got[r * kCols + c], " at (", r, ",", c,
                                                "), expected ", want));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace apeserve::model
