#include "model/gguf_header.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::TempDir;
using ::apeserve::testing::WriteFile;
using ::testing::HasSubstr;

template <typename T>
void AppendLittleEndian(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

std::string Header(absl::string_view magic, uint32_t version, uint64_t tensors, uint64_t metadata) {
  std::string bytes(magic);
  AppendLittleEndian(bytes, version);
  AppendLittleEndian(bytes, tensors);
  AppendLittleEndian(bytes, metadata);
  return bytes;
}

class GgufHeaderTest : public ::testing::Test {
 protected:
  // Writes `bytes` to a fresh file and reads its header.
  absl::StatusOr<GgufHeader> ReadBytes(absl::string_view bytes) {
    const std::string path = dir_.Join("model.gguf");
    EXPECT_TRUE(WriteFile(path, bytes));
    return ReadGgufHeader(path);
  }

  TempDir dir_;
};

TEST_F(GgufHeaderTest, ReadsTheEmbeddedModel) {
  const std::string path = apeserve::testing::TestModelPath();
  const auto header = ReadGgufHeader(path);
  ASSERT_THAT(header, IsOk());
  EXPECT_EQ(header->version, 3U);
  EXPECT_GT(header->tensor_count, 0U);
  EXPECT_GT(header->metadata_count, 0U);
  EXPECT_EQ(header->file_size, std::filesystem::file_size(path));
}

TEST_F(GgufHeaderTest, ReadsAMinimalHeader) {
  std::string bytes = Header("GGUF", 2, 1, 2);
  bytes.append(64, '\0');  // room for one tensor record and two metadata pairs
  const auto header = ReadBytes(bytes);
  ASSERT_THAT(header, IsOk());
  EXPECT_EQ(header->version, 2U);
  EXPECT_EQ(header->tensor_count, 1U);
  EXPECT_EQ(header->metadata_count, 2U);
  EXPECT_EQ(header->file_size, bytes.size());
}

TEST_F(GgufHeaderTest, RefusesAMissingFile) {
  EXPECT_THAT(ReadGgufHeader(dir_.Join("absent.gguf")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("absent.gguf")));
}

TEST_F(GgufHeaderTest, RefusesAFolder) {
  EXPECT_THAT(ReadGgufHeader(dir_.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a regular file")));
}

TEST_F(GgufHeaderTest, RefusesTruncatedFiles) {
  EXPECT_THAT(ReadBytes(""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("truncated")));
  EXPECT_THAT(ReadBytes(Header("GGUF", 3, 0, 0).substr(0, 23)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("truncated")));
}

TEST_F(GgufHeaderTest, RefusesOtherFormats) {
  EXPECT_THAT(ReadBytes(Header("PK\x03\x04", 3, 0, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not a GGUF file: it starts with bytes 0x504b0304")));
  EXPECT_THAT(ReadBytes(Header("gguf", 3, 0, 0)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a GGUF file")));
}

TEST_F(GgufHeaderTest, RefusesUnsupportedVersions) {
  for (uint32_t version : {0U, 1U, 4U, 0xFFFFFFFFU}) {
    EXPECT_THAT(ReadBytes(Header("GGUF", version, 0, 0)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("GGUF version ", version))));
  }
}

TEST_F(GgufHeaderTest, RefusesCountsThatCannotFit) {
  // Absurd counts must neither overflow the size arithmetic nor pass it.
  for (const auto& [tensors, metadata] : {std::pair<uint64_t, uint64_t>{1, 0},
                                          {0, 1},
                                          {UINT64_MAX, 0},
                                          {0, UINT64_MAX},
                                          {UINT64_MAX, UINT64_MAX},
                                          {uint64_t{1} << 61, 0}}) {
    EXPECT_THAT(ReadBytes(Header("GGUF", 3, tensors, metadata)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot fit")))
        << tensors << " tensors, " << metadata << " metadata pairs";
  }
}

}  // namespace
}  // namespace apeserve::model
