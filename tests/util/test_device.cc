#include "tests/util/test_device.h"

#include <algorithm>
#include <string>

#include "tests/util/test_paths.h"

namespace apeserve::testing {

std::string TestDevice() { return EnvOr("APESERVE_TEST_DEVICE", "cpu"); }

std::string TestDtype() { return EnvOr("APESERVE_TEST_DTYPE", "float32"); }

float LogitBound(float float32_bound) {
  return TestDtype() == "float32" ? float32_bound
                                  : std::max(float32_bound, kHalfPrecisionLogitBound);
}

}  // namespace apeserve::testing
