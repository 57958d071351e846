// Runs only where a CUDA device exists: CTest label "gpu" (excluded by default).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/runtime.h"
#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;

TEST(RuntimeCudaTest, FindsTheDeviceAndPassesSelfTest) {
  const RuntimeInfo info = GetRuntimeInfo();
  ASSERT_TRUE(info.cuda_available) << "this test needs a CUDA device (CTest label gpu)";
  const auto device = ResolveDevice("auto");
  ASSERT_THAT(device, IsOk());
  EXPECT_EQ(device->ToString(), "cuda:0");
  EXPECT_THAT(SelfTest(*device), IsOk());
}

}  // namespace
}  // namespace apeserve::model
