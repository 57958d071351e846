#include "tests/util/test_paths.h"

#include <cstdlib>
#include <string>

namespace apeserve::testing {
namespace {

std::string FromEnvOr(const char* name, const char* built_in) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : built_in;
}

}  // namespace

std::string TestModelPath() { return FromEnvOr("APESERVE_TEST_MODEL", APESERVE_TEST_MODEL); }
std::string ApeserveBinary() { return FromEnvOr("APESERVE_BINARY", APESERVE_BINARY); }
std::string ApectlBinary() { return FromEnvOr("APECTL_BINARY", APECTL_BINARY); }
std::string ApeevalBinary() { return FromEnvOr("APEEVAL_BINARY", APEEVAL_BINARY); }
std::string SourcePath(const std::string& relative) {
  return std::string(APESERVE_SOURCE_DIR) + "/" + relative;
}

}  // namespace apeserve::testing
