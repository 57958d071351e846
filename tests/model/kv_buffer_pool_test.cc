// KvBufferPool: which buffers it hands back, which it refuses to keep, when it frees
// them; and KvCache on a pool: storage reused across caches, never while a view of it
// is still held.
#include "model/kv_buffer_pool.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "model/kv_cache.h"

namespace apeserve::model {
namespace {

const torch::TensorOptions kFloat = torch::TensorOptions().dtype(torch::kFloat32);

// Options under which every buffer of these small tests is pooled, for an hour.
KvBufferPool::Options Lasting() {
  KvBufferPool::Options options;
  options.max_idle = absl::Hours(1);
  options.min_buffer_bytes = 0;
  return options;
}

TEST(KvBufferPoolTest, NewBuffersAreRoundedUpToOneOfEightSizesPerDoubling) {
  KvBufferPool pool(kFloat, Lasting());
  EXPECT_EQ(pool.Take(5).numel(), 5);
  EXPECT_EQ(pool.Take(1024).numel(), 1024);
  EXPECT_EQ(pool.Take(1025).numel(), 1152);  // 1024 + 1024 / 8
  EXPECT_EQ(pool.Take(1900).numel(), 1920);
  EXPECT_EQ(pool.Take(1000).numel(), 1024);  // 512 + 8 steps of 64
  EXPECT_EQ(pool.reused(), 0);
}

TEST(KvBufferPoolTest, AGivenBufferServesTheNextRequestOfAboutItsSize) {
  KvBufferPool pool(kFloat, Lasting());
  torch::Tensor buffer = pool.Take(4000);
  const void* storage = buffer.data_ptr();
  const int64_t elements = buffer.numel();
  pool.Give(std::move(buffer));
  EXPECT_EQ(pool.idle_buffers(), 1);
  EXPECT_EQ(pool.idle_bytes(), elements * 4);

  torch::Tensor again = pool.Take(3900);  // within 25% below the idle buffer
  EXPECT_EQ(again.data_ptr(), storage);
  EXPECT_EQ(again.numel(), elements);
  EXPECT_EQ(pool.reused(), 1);
  EXPECT_EQ(pool.idle_buffers(), 0);
  EXPECT_EQ(pool.idle_bytes(), 0);
}

TEST(KvBufferPoolTest, ABufferMuchLargerThanTheRequestStaysForALargerOne) {
  KvBufferPool pool(kFloat, Lasting());
  torch::Tensor large = pool.Take(8000);
  const void* storage = large.data_ptr();
  pool.Give(std::move(large));
  EXPECT_NE(pool.Take(1000).data_ptr(), storage);
  EXPECT_EQ(pool.idle_buffers(), 1);
  EXPECT_EQ(pool.Take(7000).data_ptr(), storage);
}

TEST(KvBufferPoolTest, ATensorOverPartOfTheStorageComesBackAsTheFlatBuffer) {
  KvBufferPool pool(kFloat, Lasting());
  torch::Tensor flat = pool.Take(int64_t{3} * 100 * 8);
  const void* storage = flat.data_ptr();
  const int64_t elements = flat.numel();
  // Not a view (narrow and view keep their base alive): a tensor of its own over the
  // buffer's storage, as KvCache makes.
  torch::Tensor view = torch::empty({0}, kFloat).set_(flat.storage(), 0, {3, 100, 8});
  flat.reset();
  pool.Give(std::move(view));
  torch::Tensor again = pool.Take(elements);
  EXPECT_EQ(again.data_ptr(), storage);
  EXPECT_EQ(again.dim(), 1);
  EXPECT_EQ(again.numel(), elements);
}

TEST(KvBufferPoolTest, StorageReferencedElsewhereIsNotKept) {
  KvBufferPool pool(kFloat, Lasting());
  torch::Tensor buffer = pool.Take(1000);
  const torch::Tensor still_held = buffer.narrow(0, 10, 10);
  pool.Give(std::move(buffer));
  EXPECT_EQ(pool.idle_buffers(), 0);

  torch::Tensor strided = pool.Take(1000).view({8, -1}).t();  // not contiguous
  pool.Give(std::move(strided));
  EXPECT_EQ(pool.idle_buffers(), 0);
  pool.Give(torch::Tensor());
  EXPECT_EQ(pool.idle_buffers(), 0);
}

TEST(KvBufferPoolTest, BuffersBelowTheMinimumAreNeitherRoundedNorKept) {
  KvBufferPool::Options options = Lasting();
  options.min_buffer_bytes = int64_t{4096} * 4;
  KvBufferPool pool(kFloat, options);
  torch::Tensor small = pool.Take(4095);
  EXPECT_EQ(small.numel(), 4095);
  pool.Give(std::move(small));
  EXPECT_EQ(pool.idle_buffers(), 0);
  torch::Tensor large = pool.Take(4097);
  EXPECT_EQ(large.numel(), 4608);
  pool.Give(std::move(large));
  EXPECT_EQ(pool.idle_buffers(), 1);
}

TEST(KvBufferPoolTest, BuffersIdleLongerThanMaxIdleAreFreed) {
  KvBufferPool::Options options = Lasting();
  options.max_idle = absl::Milliseconds(1);
  KvBufferPool pool(kFloat, options);
  pool.Give(pool.Take(1000));
  EXPECT_EQ(pool.idle_buffers(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  pool.Trim();
  EXPECT_EQ(pool.idle_buffers(), 0);
  EXPECT_EQ(pool.idle_bytes(), 0);

  pool.Give(pool.Take(1000));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  pool.Take(100000);  // fits nothing idle: frees what expired on the way
  EXPECT_EQ(pool.idle_buffers(), 0);
}

TEST(KvBufferPoolTest, IdleBytesStayWithinTheBoundTheLongestIdleGoingFirst) {
  KvBufferPool::Options options = Lasting();
  options.max_idle_bytes = int64_t{3} * 1024 * 4;
  KvBufferPool pool(kFloat, options);
  torch::Tensor first = pool.Take(1024), second = pool.Take(1024), third = pool.Take(1024),
                fourth = pool.Take(1024);
  const void* first_storage = first.data_ptr();
  for (torch::Tensor* buffer : {&first, &second, &third, &fourth}) {
    pool.Give(std::move(*buffer));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(pool.idle_buffers(), 3);
  EXPECT_EQ(pool.idle_bytes(), 3 * 1024 * 4);
  for (int i = 0; i < 3; ++i) EXPECT_NE(pool.Take(1024).data_ptr(), first_storage);

  pool.Give(pool.Take(int64_t{4} * 1024));  // larger than the bound on its own: not kept
  EXPECT_EQ(pool.idle_buffers(), 0);
}

TEST(KvBufferPoolTest, ConcurrentTakersNeverShareABuffer) {
  KvBufferPool pool(kFloat, Lasting());
  std::vector<std::thread> threads;
  threads.reserve(4);
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, &failures, t] {
      for (int i = 0; i < 200; ++i) {
        torch::Tensor buffer = pool.Take(2048);
        buffer.fill_(static_cast<float>(t));
        if (!buffer.eq(static_cast<float>(t)).all().item<bool>()) ++failures[t];
        pool.Give(std::move(buffer));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
  EXPECT_GT(pool.reused(), 0);
}

// KvCache on a pool ---------------------------------------------------------------------

constexpr int64_t kLayers = 2, kKvHeads = 3, kHeadDim = 8;

torch::Tensor Tokens(int64_t count, float first) {
  return torch::arange(first, first + static_cast<float>(kKvHeads * count * kHeadDim), kFloat)
      .view({kKvHeads, count, kHeadDim});
}

TEST(KvCachePoolTest, ANewCacheReusesTheStorageOfADestroyedOneAndReadsOnlyItsOwnTokens) {
  auto pool = std::make_shared<KvBufferPool>(kFloat, Lasting());
  const void* storage = nullptr;
  {
    KvCache cache(kLayers, kKvHeads, kHeadDim, kFloat, pool);
    cache.Reserve(100);
    for (size_t layer = 0; layer < kLayers; ++layer)
      cache.Append(layer, Tokens(100, 0), Tokens(100, 1));
    storage = cache.Slice(0, 0, 1).first.data_ptr();
  }
  EXPECT_EQ(pool->idle_buffers(), 2 * kLayers);

  KvCache cache(kLayers, kKvHeads, kHeadDim, kFloat, pool);
  cache.Reserve(90);
  EXPECT_EQ(pool->reused(), 2 * kLayers);
  bool reused_first_storage = false;
  for (size_t layer = 0; layer < kLayers; ++layer) {
    const auto [keys, values] = cache.Append(layer, Tokens(40, 5000), Tokens(40, 7000));
    EXPECT_EQ(keys.size(1), 40);
    EXPECT_TRUE(torch::equal(keys, Tokens(40, 5000)));
    EXPECT_TRUE(torch::equal(values, Tokens(40, 7000)));
    reused_first_storage |= keys.data_ptr() == storage;
  }
  EXPECT_TRUE(reused_first_storage);
  EXPECT_EQ(cache.length(), 40);
}

TEST(KvCachePoolTest, OutgrownStorageGoesBackAndTheCachedTokensMoveWithTheGrowth) {
  auto pool = std::make_shared<KvBufferPool>(kFloat, Lasting());
  KvCache cache(kLayers, kKvHeads, kHeadDim, kFloat, pool);
  cache.Reserve(64);
  for (size_t layer = 0; layer < kLayers; ++layer)
    cache.Append(layer, Tokens(60, 0), Tokens(60, 1));
  for (size_t layer = 0; layer < kLayers; ++layer)
    cache.Append(layer, Tokens(200, 9), Tokens(200, 3));
  EXPECT_EQ(pool->idle_buffers(), 2 * kLayers);  // the 64-token buffers
  const auto [keys, values] = cache.Slice(1, 0, 260);
  EXPECT_TRUE(torch::equal(keys.narrow(1, 0, 60), Tokens(60, 0)));
  EXPECT_TRUE(torch::equal(keys.narrow(1, 60, 200), Tokens(200, 9)));
  EXPECT_TRUE(torch::equal(values.narrow(1, 60, 200), Tokens(200, 3)));
}

TEST(KvCachePoolTest, StorageStillViewedAfterTheCacheIsGoneIsNotReused) {
  auto pool = std::make_shared<KvBufferPool>(kFloat, Lasting());
  torch::Tensor kept;
  {
    KvCache cache(kLayers, kKvHeads, kHeadDim, kFloat, pool);
    for (size_t layer = 0; layer < kLayers; ++layer)
      cache.Append(layer, Tokens(10, 0), Tokens(10, 1));
    kept = cache.Slice(0, 0, 10).first;
  }
  EXPECT_EQ(pool->idle_buffers(), 2 * kLayers - 1);  // all but the viewed one
  KvCache next(kLayers, kKvHeads, kHeadDim, kFloat, pool);
  for (size_t layer = 0; layer < kLayers; ++layer)
    next.Append(layer, Tokens(10, -5), Tokens(10, -6));
  EXPECT_TRUE(torch::equal(kept, Tokens(10, 0)));
}

TEST(KvCachePoolTest, AMovedCacheGivesItsStorageBackOnce) {
  auto pool = std::make_shared<KvBufferPool>(kFloat, Lasting());
  {
    KvCache cache(kLayers, kKvHeads, kHeadDim, kFloat, pool);
    for (size_t layer = 0; layer < kLayers; ++layer)
      cache.Append(layer, Tokens(10, 0), Tokens(10, 1));
    KvCache moved(std::move(cache));
    EXPECT_EQ(moved.length(), 10);
  }
  EXPECT_EQ(pool->idle_buffers(), 2 * kLayers);
}

}  // namespace
}  // namespace apeserve::model
