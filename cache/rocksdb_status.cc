#include "cache/rocksdb_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace apeserve::cache {
namespace {

absl::StatusCode CodeOf(const rocksdb::Status& status) {
  // No default: a code added to RocksDB becomes a compiler warning here.
  switch (status.code()) {
    case rocksdb::Status::kOk:
      return absl::StatusCode::kOk;
    case rocksdb::Status::kNotFound:
      return absl::StatusCode::kNotFound;
    case rocksdb::Status::kCorruption:
      return absl::StatusCode::kDataLoss;
    case rocksdb::Status::kNotSupported:
      return absl::StatusCode::kUnimplemented;
    case rocksdb::Status::kInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case rocksdb::Status::kIOError:
      // Out of space is the caller's to fix; other I/O errors may pass on retry.
      return status.IsNoSpace() ? absl::StatusCode::kResourceExhausted
                                : absl::StatusCode::kUnavailable;
    case rocksdb::Status::kMergeInProgress:
    case rocksdb::Status::kIncomplete:
    case rocksdb::Status::kShutdownInProgress:
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
      return absl::StatusCode::kUnavailable;
    case rocksdb::Status::kTimedOut:
      return absl::StatusCode::kDeadlineExceeded;
    case rocksdb::Status::kAborted:
      return absl::StatusCode::kAborted;
    case rocksdb::Status::kExpired:
      return absl::StatusCode::kNotFound;
    case rocksdb::Status::kCompactionTooLarge:
      return absl::StatusCode::kResourceExhausted;
    case rocksdb::Status::kColumnFamilyDropped:
      return absl::StatusCode::kFailedPrecondition;
    case rocksdb::Status::kMaxCode:
      break;
  }
  return absl::StatusCode::kInternal;
}

}  // namespace

absl::Status FromRocksDb(const rocksdb::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(CodeOf(status), absl::StrCat(context, ": ", status.ToString()));
}

}  // namespace apeserve::cache
