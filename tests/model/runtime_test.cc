#include "model/runtime.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::IsOkAndHolds;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(TorchTest, MatmulMatchesProductComputedByHand) {
  const torch::Tensor a = torch::arange(12, torch::kFloat32).reshape({3, 4}) - 5;   // [3, 4]
  const torch::Tensor b = torch::arange(8, torch::kFloat32).reshape({4, 2}) * 0.5;  // [4, 2]
  const torch::Tensor product = torch::matmul(a, b);                                // [3, 2]
  ASSERT_EQ(product.sizes(), (std::vector<int64_t>{3, 2}));
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 2; ++c) {
      float want = 0;
      for (int k = 0; k < 4; ++k) {
        want += (static_cast<float>(r * 4 + k) - 5) * (static_cast<float>(k * 2 + c) * 0.5F);
      }
      EXPECT_FLOAT_EQ(product[r][c].item<float>(), want) << "at (" << r << "," << c << ")";
    }
  }
}

TEST(RuntimeTest, DescribesTheLinkedLibtorch) {
  const RuntimeInfo info = GetRuntimeInfo();
  EXPECT_THAT(info.torch_version, ::testing::StartsWith("2."));
  // Every build links libtorch's CUDA backend, so one binary serves CPU and GPU hosts.
  EXPECT_TRUE(info.cuda_compiled);
  EXPECT_GE(info.intra_op_threads, 1);
  EXPECT_EQ(info.cuda_device_count > 0, info.cuda_available);
}

TEST(RuntimeTest, ResolvesCpuAndAuto) {
  EXPECT_THAT(ResolveDevice("cpu"), IsOkAndHolds(Device{DeviceType::kCpu, 0}));
  EXPECT_THAT(ResolveDevice(" CPU "), IsOkAndHolds(Device{DeviceType::kCpu, 0}));
  const auto automatic = ResolveDevice("auto");
  ASSERT_THAT(automatic, IsOk());
  EXPECT_EQ(automatic->type,
            GetRuntimeInfo().cuda_available ? DeviceType::kCuda : DeviceType::kCpu);
}

TEST(RuntimeTest, RefusesMalformedDeviceNames) {
  for (const char* name : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "cpu:0"}) {
    EXPECT_THAT(ResolveDevice(name),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("auto, cpu, cuda")))
        << "device name '" << name << "'";
  }
}

TEST(RuntimeTest, RefusesCudaDevicesThatDoNotExist) {
  const int devices = GetRuntimeInfo().cuda_device_count;
  EXPECT_THAT(ResolveDevice(absl::StrCat("cuda:", devices)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr(absl::StrCat(devices, " usable CUDA device"))));
}

TEST(RuntimeTest, CpuPassesSelfTest) { EXPECT_THAT(SelfTest(Device{}), IsOk()); }

}  // namespace
}  // namespace apeserve::model
