#include "cache/lru_tier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace apeserve::cache {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Optional;
using ::testing::UnorderedElementsAre;

TEST(LruTierTest, EvictsTheLeastRecentlyUsedToStayWithinItsBudget) {
  LruTier<int> tier({.capacity_bytes = 100});
  EXPECT_THAT(tier.Insert("a", 1, 40), IsEmpty());
  EXPECT_THAT(tier.Insert("b", 2, 40), IsEmpty());
  EXPECT_THAT(tier.Lookup("a"), Optional(1));  // now b is the least recently used
  EXPECT_THAT(tier.Insert("c", 3, 40), ElementsAre("b"));
  EXPECT_EQ(tier.Lookup("b"), std::nullopt);
  const TierStats stats = tier.stats();
  EXPECT_EQ(stats.entries, 2U);
  EXPECT_EQ(stats.bytes, 80U);
  EXPECT_EQ(stats.capacity_bytes, 100U);
  EXPECT_EQ(stats.hits, 1U);
  EXPECT_EQ(stats.misses, 1U);
  EXPECT_EQ(stats.evictions, 1U);
}

TEST(LruTierTest, ReplacingAnEntryCountsItsNewSizeOnly) {
  LruTier<int> tier({.capacity_bytes = 100});
  tier.Insert("a", 1, 60);
  EXPECT_THAT(tier.Insert("a", 2, 70), IsEmpty());
  EXPECT_EQ(tier.stats().bytes, 70U);
  EXPECT_THAT(tier.Lookup("a"), Optional(2));
}

TEST(LruTierTest, AnEntryLargerThanTheBudgetIsNotKept) {
  LruTier<int> tier({.capacity_bytes = 100});
  tier.Insert("small", 1, 10);
  EXPECT_THAT(tier.Insert("big", 2, 101), ElementsAre("big"));
  EXPECT_FALSE(tier.Contains("big"));
  EXPECT_TRUE(tier.Contains("small"));
  LruTier<int> off({.capacity_bytes = 0});
  EXPECT_FALSE(off.enabled());
  EXPECT_THAT(off.Insert("x", 1, 1), ElementsAre("x"));
}

TEST(LruTierTest, AnEntryEvictedWhileReadStaysValidUntilItsReadersEnd) {
  // As the host tier holds KV: shared values, which a request reading one keeps alive
  // while a writer evicts it (run under ThreadSanitizer and AddressSanitizer too).
  using Kv = std::shared_ptr<const std::vector<int>>;
  LruTier<Kv> tier({.capacity_bytes = 2});
  constexpr int kKeys = 8;
  std::atomic<bool> done = false;
  std::atomic<int> reads = 0;
  std::vector<std::thread> readers;
  readers.reserve(4);
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&, r] {
      for (int i = r; !done.load(); ++i) {
        const std::optional<Kv> held = tier.Lookup(absl::StrCat("k", i % kKeys));
        if (!held.has_value()) continue;
        std::this_thread::yield();  // the writer evicts it meanwhile
        for (const int value : **held) ASSERT_EQ(value, i % kKeys);
        ++reads;
      }
    });
  }
  for (int round = 0; round < 2000 || (reads.load() < 100 && round < 10000000); ++round) {
    const int key = round % kKeys;
    tier.Insert(absl::StrCat("k", key), std::make_shared<const std::vector<int>>(256, key), 1);
  }
  done = true;
  for (std::thread& reader : readers) reader.join();
  EXPECT_GE(reads.load(), 100);
  EXPECT_LE(tier.stats().entries, 2U);
  EXPECT_GT(tier.stats().evictions, 0U);
}

TEST(LruTierTest, IdleEntriesExpire) {
  absl::Time now = absl::FromUnixSeconds(1000);
  LruTier<int> tier(
      {.capacity_bytes = 100, .ttl = absl::Seconds(10), .clock = [&] { return now; }});
  tier.Insert("old", 1, 10);
  now += absl::Seconds(6);
  tier.Insert("new", 2, 10);
  now += absl::Seconds(6);  // old idle 12 s, new 6 s
  EXPECT_THAT(tier.EvictExpired(), ElementsAre("old"));
  EXPECT_THAT(tier.Lookup("new"), Optional(2));  // and refreshed
  now += absl::Seconds(9);
  EXPECT_THAT(tier.Lookup("new"), Optional(2));
  now += absl::Seconds(11);
  EXPECT_EQ(tier.Lookup("new"), std::nullopt);
  EXPECT_EQ(tier.stats().expirations, 2U);
  EXPECT_EQ(tier.stats().bytes, 0U);
}

TEST(LruTierTest, PinnedEntriesGoLastAndNeverExpire) {
  absl::Time now = absl::FromUnixSeconds(1000);
  const auto pinned = [](absl::string_view name) { return absl::StartsWith(name, "pin"); };
  LruTier<int> tier({.capacity_bytes = 100,
                     .ttl = absl::Seconds(10),
                     .clock = [&] { return now; },
                     .pinned = pinned});
  tier.Insert("pin-a", 1, 40);
  tier.Insert("b", 2, 40);
  // pin-a is the least recently used, but b goes first.
  EXPECT_THAT(tier.Insert("c", 3, 40), ElementsAre("b"));
  // Even the newest unpinned entry goes before a pinned one.
  EXPECT_THAT(tier.Insert("d", 4, 90), ElementsAre("c", "d"));
  tier.Insert("e", 5, 10);
  now += absl::Seconds(11);
  EXPECT_THAT(tier.EvictExpired(), ElementsAre("e"));
  EXPECT_THAT(tier.Lookup("pin-a"), Optional(1)) << "idle, but pinned";
  // With only pinned entries left to evict, they go too (the host tier's policy).
  EXPECT_THAT(tier.Insert("pin-f", 6, 90), ElementsAre("pin-a"));

  // The store's policy: pinned entries are never evicted, even past the budget.
  LruTier<int> store({.capacity_bytes = 100, .pinned = pinned, .never_evict_pinned = true});
  store.Insert("pin-a", 1, 60);
  EXPECT_THAT(store.Insert("pin-b", 2, 60), IsEmpty());
  EXPECT_THAT(store.Insert("c", 3, 10), ElementsAre("c"));
  EXPECT_THAT(store.Insert("pin-big", 4, 500), IsEmpty());
  EXPECT_EQ(store.stats().bytes, 620U);
}

TEST(LruTierTest, ErasesByNameAndByPrefix) {
  LruTier<int> tier({.capacity_bytes = 100});
  tier.Insert("x/1", 1, 1);
  tier.Insert("x/2", 2, 1);
  tier.Insert("y/1", 3, 1);
  EXPECT_TRUE(tier.Erase("y/1"));
  EXPECT_FALSE(tier.Erase("y/1"));
  EXPECT_THAT(tier.EraseWithPrefix("x/"), UnorderedElementsAre("x/1", "x/2"));
  EXPECT_EQ(tier.stats().entries, 0U);
  EXPECT_EQ(tier.stats().bytes, 0U);
}

}  // namespace
}  // namespace apeserve::cache
