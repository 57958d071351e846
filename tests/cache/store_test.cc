#include "cache/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::TempDir;
using ::testing::HasSubstr;

// The toolchain itself: Debian's RocksDB opens in a temporary folder and a value
// written there reads back the same after the database is closed and reopened.
TEST(RocksDbTest, RoundTripsAValueThroughReopen) {
  TempDir dir;
  const std::string value("value with \0 an embedded zero", 29);
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.path(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "key", value).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), dir.path(), &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string read;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), "key", &read).ok());
  EXPECT_EQ(read, value);
}

TEST(StoreTest, CreatesAStoreAndReopensIt) {
  TempDir dir;
  const std::string path = dir.Join("data");
  {
    auto store = Store::Open({.path = path});
    ASSERT_THAT(store, IsOk());
    EXPECT_EQ((*store)->path(), path);
    EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
  }
  // The schema version now comes from disk, and no creation is needed.
  auto reopened = Store::Open({.path = path, .create_if_missing = false});
  ASSERT_THAT(reopened, IsOk());
  EXPECT_EQ((*reopened)->schema_version(), kSchemaVersion);
}

TEST(StoreTest, RefusesAnEmptyPath) {
  EXPECT_THAT(Store::Open({}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("path")));
}

TEST(StoreTest, DoesNotCreateWhenNotAllowed) {
  TempDir dir;
  EXPECT_THAT(Store::Open({.path = dir.Join("absent"), .create_if_missing = false}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no data directory")));
}

TEST(StoreTest, OneOpenerAtATime) {
  TempDir dir;
  auto first = Store::Open({.path = dir.path()});
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(Store::Open({.path = dir.path()}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("lock")));
}

// Creates a plain RocksDB database (not apeserve's) at `path`, holding `keys`.
void CreatePlainDatabase(const std::string& path, const std::vector<std::string>& keys) {
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(options, path, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  for (const std::string& key : keys) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, "else's").ok());
  }
}

TEST(StoreTest, RefusesADatabaseItDidNotCreate) {
  TempDir dir;
  CreatePlainDatabase(dir.path(), {"someone"});
  EXPECT_THAT(Store::Open({.path = dir.path()}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("did not create")));
}

// A crash right after RocksDB created the folder leaves a database with no keys and
// no schema version: the next start finishes the creation instead of refusing it.
TEST(StoreTest, FinishesACreationThatWasCutShort) {
  TempDir dir;
  CreatePlainDatabase(dir.path(), {});
  auto store = Store::Open({.path = dir.path()});
  ASSERT_THAT(store, IsOk());
  EXPECT_EQ((*store)->schema_version(), kSchemaVersion);
}

TEST(StoreTest, OpensWithEveryKvCompression) {
  for (const KvCompression compression :
       {KvCompression::kNone, KvCompression::kLz4, KvCompression::kZstd}) {
    EXPECT_THAT(ParseKvCompression(KvCompressionName(compression)),
                ::apeserve::testing::IsOkAndHolds(compression));
    TempDir dir;
    EXPECT_THAT(Store::Open({.path = dir.path(), .kv_compression = compression}), IsOk());
  }
  EXPECT_THAT(ParseKvCompression("snappy"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("snappy")));
}

TEST(StoreTest, RefusesAnotherSchemaVersion) {
  TempDir dir;
  ASSERT_THAT(Store::Open({.path = dir.path()}), IsOk());
  {
    // Rewrite the recorded version as a future build would.
    rocksdb::DBOptions options;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, {}}, {"docs", {}}, {"kv", {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.path(), families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "apeserve/schema_version", "99").ok());
    for (auto* handle : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
  }
  EXPECT_THAT(
      Store::Open({.path = dir.path()}),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               HasSubstr(absl::StrCat("schema version 99; this build reads ", kSchemaVersion))));
}

}  // namespace
}  // namespace apeserve::cache
