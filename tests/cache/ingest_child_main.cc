// The child of ContextRegistryCrashTest: ingests documents in a loop into a store until
// it is killed, printing "ack <n>" after each Put has returned (sync on). Document n
// holds SyntheticTokens(n % kContents), so later documents share KV with earlier ones.
//
//   ingest_child <data dir> <first n>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "tests/cache/registry_test_util.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <data dir> <first n>\n", argv[0]);
    return 2;
  }
  using namespace apeserve;  // NOLINT(google-build-using-namespace): a small main
  cache::ContextRegistryOptions options = testing::RegistryOptions(argv[1]);
  options.sync_writes = true;
  auto registry = cache::ContextRegistry::Open(
      options, testing::MakeSyntheticEncoder(testing::kModelA).encoder);
  if (!registry.ok()) {
    std::fprintf(stderr, "open: %s\n", registry.status().ToString().c_str());
    return 1;
  }
  int first = 0;
  if (!absl::SimpleAtoi(argv[2], &first)) {
    std::fprintf(stderr, "first n '%s' is not a number\n", argv[2]);
    return 2;
  }
  constexpr int kContents = 40;
  for (int n = first;; ++n) {
    const auto stored =
        (*registry)->Put(testing::SyntheticContext(n, n % kContents), testing::kPrefix);
    if (!stored.ok()) {
      std::fprintf(stderr, "put %d: %s\n", n, stored.status().ToString().c_str());
      return 1;
    }
    std::printf("ack %d\n", n);
    std::fflush(stdout);
  }
}
