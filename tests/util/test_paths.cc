#include "tests/util/test_paths.h"

#include <cstdlib>
#include <string>

namespace apeserve::testing {

std::string EnvOr(const char* name, const char* built_in) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : built_in;
}

std::string TestModelPath() { return EnvOr("APESERVE_TEST_MODEL", APESERVE_TEST_MODEL); }
std::string ApeserveBinary() { return EnvOr("APESERVE_BINARY", APESERVE_BINARY); }
std::string ApectlBinary() { return EnvOr("APECTL_BINARY", APECTL_BINARY); }
std::string ApeevalBinary() { return EnvOr("APEEVAL_BINARY", APEEVAL_BINARY); }
std::string SourcePath(const std::string& relative) {
  return std::string(APESERVE_SOURCE_DIR) + "/" + relative;
}

}  // namespace apeserve::testing
