// Shared pieces of the registry's torch-free tests: options for a temporary store, and
// checks that loaded KV equals what the synthetic model computes for it.
#ifndef APESERVE_TESTS_CACHE_REGISTRY_TEST_UTIL_H_
#define APESERVE_TESTS_CACHE_REGISTRY_TEST_UTIL_H_

#include <string>

#include "cache/context_registry.h"
#include "tests/cache/synthetic_kv.h"

namespace apeserve::testing {

inline constexpr char kModelA[] = "aaaa0001";
inline constexpr char kModelB[] = "bbbb0002";
inline constexpr char kPrefix[] = "ffff0001";

// A store at `path` for `fingerprint`, without fsync (tests do not lose power).
inline cache::ContextRegistryOptions RegistryOptions(const std::string& path,
                                                     const std::string& fingerprint = kModelA) {
  cache::ContextRegistryOptions options;
  options.store.path = path;
  options.model_fingerprint = fingerprint;
  options.sync_writes = false;
  return options;
}

// Document number `n` of namespace "ns", id "doc-<n>", with SyntheticTokens(content).
inline cache::ContextInput SyntheticContext(int n, int content) {
  return {.namespace_id = "ns",
          .id = "doc-" + std::to_string(n),
          .tokens = SyntheticTokens(content),
          .text = "text " + std::to_string(content),
          .labels = {{"n", std::to_string(n)}}};
}

}  // namespace apeserve::testing

#endif  // APESERVE_TESTS_CACHE_REGISTRY_TEST_UTIL_H_
