// The registry on a full disk, through a RocksDB file system that runs out of space on
// command: a Put that does not fit is refused with RESOURCE_EXHAUSTED naming the cause,
// the process stays up, every acknowledged document stays whole and readable, and once
// space is freed RocksDB recovers by itself and writes are accepted again. No LOG file
// is written into the data directory (RocksDB's own log goes to spdlog): Debian's
// RocksDB aborted the process when it logged again to a LOG file whose write had failed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache/context_registry.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "tests/cache/registry_test_util.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::kModelA;
using ::apeserve::testing::kPrefix;
using ::apeserve::testing::MakeSyntheticEncoder;
using ::apeserve::testing::RegistryOptions;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::SyntheticContext;
using ::apeserve::testing::SyntheticKv;
using ::apeserve::testing::SyntheticTokens;
using ::apeserve::testing::TempDir;
using ::testing::HasSubstr;

// The bytes all files of the store may still take. A write that does not fit fails as
// on a full disk, and leaves the disk full (as the part that fitted would have).
class DiskSpace {
 public:
  void Set(int64_t bytes) { left_.store(bytes); }
  rocksdb::IOStatus Take(size_t bytes) {
    if (left_.fetch_sub(static_cast<int64_t>(bytes)) < static_cast<int64_t>(bytes)) {
      left_.store(0);
      return rocksdb::IOStatus::NoSpace("injected: the test's disk is full");
    }
    return rocksdb::IOStatus::OK();
  }
  uint64_t Free() const { return static_cast<uint64_t>(std::max<int64_t>(left_.load(), 0)); }

 private:
  std::atomic<int64_t> left_{int64_t{1} << 40};
};

class SpaceCountingFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  SpaceCountingFile(std::unique_ptr<rocksdb::FSWritableFile> file, DiskSpace& space)
      : rocksdb::FSWritableFileOwnerWrapper(std::move(file)), space_(space) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* debug) override {
    if (rocksdb::IOStatus taken = space_.Take(data.size()); !taken.ok()) return taken;
    return target()->Append(data, options, debug);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& /*verification*/,
                           rocksdb::IODebugContext* debug) override {
    return Append(data, options, debug);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* debug) override {
    if (rocksdb::IOStatus taken = space_.Take(data.size()); !taken.ok()) return taken;
    return target()->PositionedAppend(data, offset, options, debug);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& /*verification*/,
                                     rocksdb::IODebugContext* debug) override {
    return PositionedAppend(data, offset, options, debug);
  }

 private:
  DiskSpace& space_;
};

class SpaceCountingFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit SpaceCountingFileSystem(DiskSpace& space)
      : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()), space_(space) {}
  // The environment made of this file system, for its loggers.
  void set_env(rocksdb::Env* env) { env_ = env; }
  const char* Name() const override { return "SpaceCountingFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* file,
                                    rocksdb::IODebugContext* debug) override {
    return Wrap(target()->NewWritableFile(name, options, file, debug), file);
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* file,
                                       rocksdb::IODebugContext* debug) override {
    return Wrap(target()->ReopenWritableFile(name, options, file, debug), file);
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& name, const std::string& old_name,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* file,
                                      rocksdb::IODebugContext* debug) override {
    return Wrap(target()->ReuseWritableFile(name, old_name, options, file, debug), file);
  }
  // A LOG file, as RocksDB makes one when it is given no logger: through this file
  // system too, so that it fills up like the rest.
  rocksdb::IOStatus NewLogger(const std::string& name, const rocksdb::IOOptions& /*options*/,
                              std::shared_ptr<rocksdb::Logger>* logger,
                              rocksdb::IODebugContext* /*debug*/) override {
    return rocksdb::status_to_io_status(rocksdb::NewEnvLogger(name, env_, logger));
  }
  rocksdb::IOStatus GetFreeSpace(const std::string& /*path*/, const rocksdb::IOOptions& /*options*/,
                                 uint64_t* free, rocksdb::IODebugContext* /*debug*/) override {
    *free = space_.Free();
    return rocksdb::IOStatus::OK();
  }

 private:
  rocksdb::IOStatus Wrap(rocksdb::IOStatus opened, std::unique_ptr<rocksdb::FSWritableFile>* file) {
    if (opened.ok()) *file = std::make_unique<SpaceCountingFile>(std::move(*file), space_);
    return opened;
  }

  DiskSpace& space_;
  rocksdb::Env* env_ = nullptr;
};

TEST(FullDiskTest, RefusesWritesKeepsWhatWasAcknowledgedAndRecovers) {
  TempDir dir;
  DiskSpace space;
  const auto files = std::make_shared<SpaceCountingFileSystem>(space);
  const std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(files);
  files->set_env(env.get());
  ContextRegistryOptions options = RegistryOptions(dir.Join("data"));
  options.store.env = env.get();
  options.sync_writes = true;
  auto encoder = MakeSyntheticEncoder(kModelA);
  absl::StatusOr<std::unique_ptr<ContextRegistry>> opened =
      ContextRegistry::Open(options, encoder.encoder);
  ASSERT_THAT(opened, IsOk());
  ContextRegistry& registry = **opened;

  // Fill the disk: what was acknowledged before the first refusal must all survive.
  space.Set(64 << 10);
  int acknowledged = 0;
  absl::Status refused;
  for (int n = 0; n < 1000 && refused.ok(); ++n) {
    absl::StatusOr<StoredContext> stored = registry.Put(SyntheticContext(n, n), kPrefix);
    if (stored.ok()) {
      ++acknowledged;
    } else {
      refused = stored.status();
    }
  }
  ASSERT_GT(acknowledged, 0);
  EXPECT_THAT(refused,
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("No space left on device")));
  const int failed = acknowledged;  // the document that did not fit
  // Still full, for longer than RocksDB waits between flushes of its own log (5 s):
  // later writes are refused the same way, the process stays up, and reads go on.
  int refusals = 0;
  for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(6);
       std::chrono::steady_clock::now() < until; ++refusals) {
    const int n = failed + 1 + refusals % 19;
    EXPECT_THAT(registry.Put(SyntheticContext(n, n), kPrefix),
                StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("No space")));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (int n = 0; n < acknowledged; ++n) {
    absl::StatusOr<LoadedContext> loaded = registry.Load("ns", "doc-" + std::to_string(n), kPrefix);
    ASSERT_THAT(loaded, IsOk()) << n;
    EXPECT_EQ(loaded->context->kv.layers,
              SyntheticKv(kModelA, kPrefix, SyntheticTokens(n), {}).layers);
  }
  EXPECT_FALSE(std::filesystem::exists(dir.Join("data/LOG")));

  // Space freed: RocksDB's recovery (it polls the free space every few seconds) lets
  // writes in again, without a restart.
  space.Set(int64_t{1} << 40);
  const int late = failed + 100;
  absl::Status after = absl::UnknownError("not tried");
  for (int attempt = 0; attempt < 300 && !after.ok(); ++attempt) {
    after = registry.Put(SyntheticContext(late, late), kPrefix).status();
    if (!after.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_THAT(after, IsOk());

  // Reopened: every acknowledged document, and nothing of those refused.
  opened->reset();
  absl::StatusOr<std::unique_ptr<ContextRegistry>> reopened =
      ContextRegistry::Open(options, encoder.encoder);
  ASSERT_THAT(reopened, IsOk());
  std::vector<int> expected(acknowledged);
  std::iota(expected.begin(), expected.end(), 0);
  expected.push_back(late);
  for (const int n : expected) {
    absl::StatusOr<LoadedContext> loaded =
        (*reopened)->Load("ns", "doc-" + std::to_string(n), kPrefix);
    ASSERT_THAT(loaded, IsOk()) << n;
    EXPECT_EQ(loaded->source, KvSource::kStore) << n;
    EXPECT_EQ(loaded->context->kv.layers,
              SyntheticKv(kModelA, kPrefix, SyntheticTokens(n), {}).layers);
  }
  for (int n = failed; n < failed + 20; ++n) {
    EXPECT_THAT((*reopened)->Get("ns", "doc-" + std::to_string(n)),
                StatusIs(absl::StatusCode::kNotFound, HasSubstr("doc-")));
  }
}

}  // namespace
}  // namespace apeserve::cache
