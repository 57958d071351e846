#include "server/grpc_status.h"

#include <gtest/gtest.h>

namespace apeserve::server {
namespace {

TEST(GrpcStatusTest, KeepsEveryCodeAndTheMessage) {
  // absl and gRPC number their canonical codes alike; the mapping must keep each one.
  for (int code = 1; code <= 16; ++code) {
    const absl::Status in(static_cast<absl::StatusCode>(code), "field 'x' is bad");
    const grpc::Status out = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.error_code()), code) << absl::StatusCodeToString(in.code());
    EXPECT_EQ(out.error_message(), "field 'x' is bad");
  }
}

TEST(GrpcStatusTest, KeepsOk) { EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok()); }

}  // namespace
}  // namespace apeserve::server
