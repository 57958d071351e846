// The running requests' KV budget: own bytes per request, shared KV counted once for as
// long as any request reads it, first come first served, and a clear refusal for a
// request that could never fit.
#include "server/kv_budget.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <utility>
#include <vector>

#include "tests/util/status_matchers.h"

namespace apeserve::server {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

// Reserves and expects a grant.
KvBudget::Reservation Grant(KvBudget& budget, size_t own,
                            const std::vector<KvBudget::Shared>& shared = {}) {
  auto reserved = budget.Reserve(own, shared);
  EXPECT_THAT(reserved, IsOk());
  EXPECT_TRUE(reserved.ok() && reserved->has_value());
  return reserved.ok() && reserved->has_value() ? **std::move(reserved) : KvBudget::Reservation();
}

TEST(KvBudgetTest, SharedKvCountsOnceWhileAnyReaderHoldsIt) {
  KvBudget budget(1000);
  const int document = 0, other = 0;  // their addresses name two stored values
  std::optional<KvBudget::Reservation> first =
      Grant(budget, 10, {{.key = &document, .bytes = 300}});
  EXPECT_EQ(budget.used(), 310U);
  EXPECT_EQ(first->bytes(), 10U);
  // The same document again, named twice by one request: still counted once.
  std::optional<KvBudget::Reservation> second =
      Grant(budget, 20, {{.key = &document, .bytes = 300}, {.key = &document, .bytes = 300}});
  EXPECT_EQ(budget.used(), 330U);
  std::optional<KvBudget::Reservation> third =
      Grant(budget, 30, {{.key = &document, .bytes = 300}, {.key = &other, .bytes = 100}});
  EXPECT_EQ(budget.used(), 460U);
  EXPECT_EQ(budget.shared_values(), 2U);

  first.reset();
  EXPECT_EQ(budget.used(), 450U) << "the document is still read by two";
  third.reset();
  EXPECT_EQ(budget.used(), 320U) << "the other document went with its last reader";
  EXPECT_EQ(budget.shared_values(), 1U);
  second.reset();
  EXPECT_EQ(budget.used(), 0U);
  EXPECT_EQ(budget.shared_values(), 0U);
}

TEST(KvBudgetTest, WhatIsAlreadyCountedDoesNotNeedRoomAgain) {
  KvBudget budget(1000);
  const int document = 0;
  KvBudget::Reservation reader = Grant(budget, 100, {{.key = &document, .bytes = 800}});
  EXPECT_EQ(budget.used(), 900U);
  // 800 + 90 alone would fit the budget, and 90 more fits what is left.
  budget.BeginRound();
  KvBudget::Reservation another = Grant(budget, 90, {{.key = &document, .bytes = 800}});
  EXPECT_EQ(budget.used(), 990U);
  // A request that needs new bytes waits, and so does anyone after it this round.
  const int fresh = 0;
  auto waits = budget.Reserve(20, std::vector<KvBudget::Shared>{{.key = &fresh, .bytes = 5}});
  ASSERT_THAT(waits, IsOk());
  EXPECT_FALSE(waits->has_value());
  auto behind = budget.Reserve(1);
  ASSERT_THAT(behind, IsOk());
  EXPECT_FALSE(behind->has_value()) << "first come, first served";
  EXPECT_EQ(budget.used(), 990U);
  EXPECT_EQ(budget.shared_values(), 1U) << "a refused request leaves no trace";
}

TEST(KvBudgetTest, ARequestLargerThanTheWholeBudgetIsRefused) {
  KvBudget budget(size_t{64} << 20);
  const int document = 0;
  EXPECT_THAT(
      budget.Reserve(size_t{40} << 20,
                     std::vector<KvBudget::Shared>{{.key = &document, .bytes = size_t{40} << 20}}),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("--max_running_kv_mib")));
  EXPECT_EQ(budget.used(), 0U);
}

TEST(KvBudgetTest, UnlimitedCountsButNeverWaits) {
  KvBudget budget(0);
  const int document = 0;
  KvBudget::Reservation a = Grant(budget, size_t{1} << 40, {{.key = &document, .bytes = 7}});
  KvBudget::Reservation b = Grant(budget, 1, {{.key = &document, .bytes = 7}});
  EXPECT_EQ(budget.used(), (size_t{1} << 40) + 8);
  KvBudget::Reservation moved = std::move(a);
  // A moved-from reservation is empty.
  // NOLINTNEXTLINE(bugprone-use-after-move,clang-analyzer-cplusplus.Move)
  EXPECT_EQ(a.bytes(), 0U);
  EXPECT_EQ(moved.bytes(), size_t{1} << 40);
}

}  // namespace
}  // namespace apeserve::server
