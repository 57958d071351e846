// The device and dtype the engine's tests load the model on: the CPU in float32 unless
// APESERVE_TEST_DEVICE and APESERVE_TEST_DTYPE say otherwise (CTest's gpu-labelled run of
// the APE and batching tests sets cuda and bfloat16; tools/gpu_check.sh runs it).
#ifndef APESERVE_TESTS_UTIL_TEST_DEVICE_H_
#define APESERVE_TESTS_UTIL_TEST_DEVICE_H_

#include <string>

namespace apeserve::testing {

// "cpu", "cuda", "cuda:N": EngineOptions::device.
std::string TestDevice();
// "float32", "bfloat16", "float16": EngineOptions::dtype.
std::string TestDtype();

// How far two computations of the same logits (or log-probabilities) may lie apart on
// the test device: `float32_bound`, the test's own bound, in float32; in 16-bit types,
// whose 8 (bfloat16) or 11 (float16) bits of mantissa round each layer's sums, the
// larger of it and kHalfPrecisionLogitBound. Measured on the CPU in bfloat16 (the
// embedded model, logits up to about 30): two paths to the same logits (APE at T = S = 1
// and PARALLEL; a batch and each request alone) differ by up to 0.77.
inline constexpr float kHalfPrecisionLogitBound = 1.0F;
float LogitBound(float float32_bound);

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_UTIL_TEST_DEVICE_H_
