// Crash safety: a child process ingests in a loop and is SIGKILLed at random moments;
// after every kill the store is reopened and every acknowledged document must be
// intact and load its KV from the store (a torn write would show as a missing or
// damaged KV, hence a rebuild, which the test counts as a failure).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cache/context_registry.h"
#include "tests/cache/registry_test_util.h"
#include "tests/util/status_matchers.h"
#include "tests/util/subprocess.h"
#include "tests/util/temp_dir.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::kModelA;
using ::apeserve::testing::kPrefix;

// The numbers of the complete "ack <n>" lines the child wrote.
std::vector<int> Acknowledged(const std::string& output) {
  std::vector<int> acked;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    int n = 0;
    if (absl::ConsumePrefix(&line, "ack ") && absl::SimpleAtoi(line, &n)) acked.push_back(n);
  }
  // The last line counts only if its newline made it out.
  if (!output.empty() && output.back() != '\n' && !acked.empty()) acked.pop_back();
  return acked;
}

void ExpectWhole(ContextRegistry& registry, int n, const std::string& why) {
  const std::string id = "doc-" + std::to_string(n);
  absl::StatusOr<StoredContext> document = registry.Get("ns", id);
  ASSERT_THAT(document, IsOk()) << why;
  EXPECT_EQ(document->tokens, testing::SyntheticTokens(n % 40)) << why;
  absl::StatusOr<LoadedContext> loaded = registry.Load("ns", id, kPrefix);
  ASSERT_THAT(loaded, IsOk()) << why;
  EXPECT_NE(loaded->source, KvSource::kRebuilt) << why;
  EXPECT_EQ(loaded->context->kv.layers,
            testing::SyntheticKv(kModelA, kPrefix, loaded->context->tokens, {}).layers)
      << why;
}

TEST(ContextRegistryCrashTest, AcknowledgedDocumentsSurviveFiftyKills) {
  testing::TempDir dir;
  const std::string data = dir.Join("data");
  std::mt19937 random(5);
  std::vector<int> all_acked;
  int next = 0;
  constexpr int kKills = 50;
  for (int kill = 0; kill < kKills; ++kill) {
    const std::string out = dir.Join("out-" + std::to_string(kill));
    {
      testing::Subprocess child({APESERVE_INGEST_CHILD, data, std::to_string(next)}, out,
                                dir.Join("err"));
      absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(40, 250)(random)));
      child.Signal(SIGKILL);
      ASSERT_EQ(child.Wait(absl::Seconds(10)), 128 + SIGKILL)
          << "the child stopped on its own: " << testing::ReadFile(dir.Join("err"));
    }
    const std::vector<int> acked = Acknowledged(testing::ReadFile(out));
    all_acked.insert(all_acked.end(), acked.begin(), acked.end());
    const int last = acked.empty() ? next - 1 : acked.back();

    auto encoder = testing::MakeSyntheticEncoder(kModelA);
    absl::StatusOr<std::unique_ptr<ContextRegistry>> registry =
        ContextRegistry::Open(testing::RegistryOptions(data), encoder.encoder);
    ASSERT_THAT(registry, IsOk());
    for (const int n : all_acked) {
      ExpectWhole(
          **registry, n,
          "acknowledged document " + std::to_string(n) + " after kill " + std::to_string(kill));
    }
    // The document in flight when the kill came is either absent or whole.
    if ((*registry)->Get("ns", "doc-" + std::to_string(last + 1)).ok()) {
      ExpectWhole(**registry, last + 1,
                  "unacknowledged document after kill " + std::to_string(kill));
    }
    EXPECT_EQ(*encoder.calls, 0) << "some KV had to be rebuilt after kill " << kill;
    if (::testing::Test::HasFailure()) return;
    next = last + 2;  // skip the one in flight: it may or may not be there
  }
  RecordProperty("acknowledged_documents", static_cast<int>(all_acked.size()));
  EXPECT_GE(all_acked.size(), 50U) << "the kills came too early to test much";
}

}  // namespace
}  // namespace apeserve::cache
