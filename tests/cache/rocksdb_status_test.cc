#include "cache/rocksdb_status.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace apeserve::cache {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(RocksDbStatusTest, KeepsOk) { EXPECT_THAT(FromRocksDb(rocksdb::Status::OK(), "x"), IsOk()); }

TEST(RocksDbStatusTest, MapsCodesCallersActOn) {
  const struct {
    rocksdb::Status in;
    absl::StatusCode want;
  } cases[] = {
      {rocksdb::Status::NotFound("m"), absl::StatusCode::kNotFound},
      {rocksdb::Status::Corruption("m"), absl::StatusCode::kDataLoss},
      {rocksdb::Status::NotSupported("m"), absl::StatusCode::kUnimplemented},
      {rocksdb::Status::InvalidArgument("m"), absl::StatusCode::kInvalidArgument},
      {rocksdb::Status::IOError("m"), absl::StatusCode::kUnavailable},
      {rocksdb::Status::NoSpace("m"), absl::StatusCode::kResourceExhausted},
      {rocksdb::Status::Busy("m"), absl::StatusCode::kUnavailable},
      {rocksdb::Status::TryAgain("m"), absl::StatusCode::kUnavailable},
      {rocksdb::Status::ShutdownInProgress("m"), absl::StatusCode::kUnavailable},
      {rocksdb::Status::TimedOut("m"), absl::StatusCode::kDeadlineExceeded},
      {rocksdb::Status::Aborted("m"), absl::StatusCode::kAborted},
      {rocksdb::Status::ColumnFamilyDropped("m"), absl::StatusCode::kFailedPrecondition},
  };
  for (const auto& c : cases) {
    EXPECT_THAT(FromRocksDb(c.in, "reading docs"),
                StatusIs(c.want, AllOf(HasSubstr("reading docs: "), HasSubstr("m"))))
        << c.in.ToString();
  }
}

}  // namespace
}  // namespace apeserve::cache
