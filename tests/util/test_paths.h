// Files the tests use, fixed by the build (tests/CMakeLists.txt) and overridable
// from the environment: APESERVE_TEST_MODEL, APESERVE_BINARY, APECTL_BINARY,
// APEEVAL_BINARY.
#ifndef APESERVE_TESTS_UTIL_TEST_PATHS_H_
#define APESERVE_TESTS_UTIL_TEST_PATHS_H_

#include <string>

namespace apeserve::testing {

// The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
std::string TestModelPath();
// The apeserve and apectl binaries of this build.
std::string ApeserveBinary();
std::string ApectlBinary();
// The evaluation driver, tools/apeeval.
std::string ApeevalBinary();
// A file of the source tree, e.g. SourcePath("deploy/calibration/x.json").
std::string SourcePath(const std::string& relative);
// The environment variable `name` where it is set and not empty, else `built_in`.
std::string EnvOr(const char* name, const char* built_in);

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_UTIL_TEST_PATHS_H_
