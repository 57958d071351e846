#include "model/gguf_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/model/gguf_builder.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::GgufBuilder;
using ::apeserve::testing::IsOk;
using ::apeserve::testing::IsOkAndHolds;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint32_t kF32 = 0, kQ8_0 = 8;

std::string Floats(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// A small valid file: a few kinds of metadata, an F32 matrix and a Q8_0 vector.
GgufBuilder ValidBuilder() {
  GgufBuilder builder;
  builder.String("general.architecture", "llama")
      .Uint32("llama.block_count", 2)
      .Float32("llama.rope.freq_base", 10000.0F)
      .Bool("tokenizer.ggml.add_bos_token", 1)
      .StringArray("tokenizer.ggml.tokens", {"a", "b", "<s>"})
      .Tensor("w", {3, 2}, kF32, Floats({1, 2, 3, 4, 5, 6}))
      .Tensor("q", {32}, kQ8_0, std::string(34, '\x01'));
  return builder;
}

class GgufFileTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const std::string& bytes) {
    const std::string path = dir_.Join("model.gguf");
    EXPECT_TRUE(apeserve::testing::WriteFile(path, bytes));
    return GgufFile::Open(path);
  }

  TempDir dir_;
};

TEST_F(GgufFileTest, ReadsMetadataAndTensors) {
  auto file = OpenBytes(ValidBuilder().Build());
  ASSERT_THAT(file, IsOk());
  const GgufFile& gguf = **file;
  EXPECT_THAT(gguf.GetString("general.architecture"), IsOkAndHolds("llama"));
  EXPECT_THAT(gguf.GetInt("llama.block_count"), IsOkAndHolds(2));
  EXPECT_THAT(gguf.GetFloat("llama.rope.freq_base"), IsOkAndHolds(10000.0));
  EXPECT_THAT(gguf.GetFloat("llama.block_count"), IsOkAndHolds(2.0));  // integers convert
  EXPECT_THAT(gguf.GetBool("tokenizer.ggml.add_bos_token"), IsOkAndHolds(true));
  EXPECT_THAT(gguf.GetStringArray("tokenizer.ggml.tokens"),
              IsOkAndHolds(ElementsAre("a", "b", "<s>")));

  ASSERT_EQ(gguf.tensors().size(), 2U);
  const GgufTensor* w = gguf.FindTensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_THAT(w->shape, ElementsAre(2, 3));  // GGUF's [3, 2] is torch's [2, 3]
  EXPECT_EQ(w->element_count, 6);
  EXPECT_EQ(w->type->name, "F32");
  std::vector<float> values(6);
  ASSERT_THAT(Dequantize(w->type->type, w->bytes, 6, values.data()), IsOk());
  EXPECT_THAT(values, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(gguf.FindTensor("q")->bytes.size(), 34U);
  EXPECT_EQ(gguf.FindTensor("absent"), nullptr);
}

TEST_F(GgufFileTest, TypedGettersNameTheKeyAndTheTypes) {
  auto file = OpenBytes(ValidBuilder().Build());
  ASSERT_THAT(file, IsOk());
  EXPECT_THAT((*file)->GetInt("general.architecture"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'general.architecture' holds string, expected an integer")));
  EXPECT_THAT((*file)->GetString("nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no metadata 'nope'")));
  EXPECT_THAT(
      (*file)->GetIntArray("tokenizer.ggml.tokens"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected an array of integers")));
}

TEST_F(GgufFileTest, ReadsTheEmbeddedModel) {
  auto file = GgufFile::Open(apeserve::testing::TestModelPath());
  ASSERT_THAT(file, IsOk());
  EXPECT_EQ((*file)->tensors().size(), (*file)->header().tensor_count);
  EXPECT_EQ((*file)->metadata().size(), (*file)->header().metadata_count);
  EXPECT_THAT((*file)->GetString("general.architecture"), IsOkAndHolds("llama"));
  const auto tokens = (*file)->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_THAT(tokens, IsOk());
  EXPECT_THAT((*file)->GetInt("llama.vocab_size"),
              IsOkAndHolds(static_cast<int64_t>(tokens->size())));
}

// Every prefix of a valid file is refused cleanly: no crash, no out-of-bounds read
// (run under AddressSanitizer in CI), and a message that says "truncated" or names
// what does not fit.
TEST_F(GgufFileTest, RefusesEveryTruncation) {
  const std::string bytes = ValidBuilder().Build();
  for (size_t length = 0; length < bytes.size(); ++length) {
    EXPECT_THAT(OpenBytes(bytes.substr(0, length)),
                StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_))
        << "prefix of " << length << " bytes";
  }
}

// Random byte flips never crash the parser; they are read or refused.
TEST_F(GgufFileTest, SurvivesRandomCorruption) {
  const std::string bytes = ValidBuilder().Build();
  std::mt19937 random(20261122);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string corrupt = bytes;
    const int flips = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < flips; ++i) {
      corrupt[random() % corrupt.size()] = static_cast<char>(random());
    }
    const auto file = OpenBytes(corrupt);
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    }
  }
}

TEST_F(GgufFileTest, RefusesMalformedMetadata) {
  const struct {
    GgufBuilder builder;
    const char* message;
  } cases[] = {
      {GgufBuilder().Raw("k", 13, ""), "unknown value type 13"},
      {GgufBuilder().Raw("k", 7, std::string(1, '\x02')), "bool of value 2"},
      {GgufBuilder().Uint32("k", 1).Uint32("k", 2), "'k' appears twice"},
      {GgufBuilder().Raw("k", 8, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8)), "truncated"},
      {GgufBuilder().Raw(std::string(2000, 'k'), 4, std::string(4, '\0')), "at most 1024"},
      {GgufBuilder().Raw("k", 9, std::string("\x04\0\0\0\xff\xff\xff\xff\xff\xff\xff\x0f", 12)),
       "more than the file holds"},
      {GgufBuilder().Raw("k", 9, std::string("\x63\0\0\0\0\0\0\0\0\0\0\0", 12)),
       "unknown element type 99"},
      {GgufBuilder().Raw("k", 10, std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8)),
       "beyond int64"},
      {GgufBuilder().Uint32("general.alignment", 24), "power of two"},
  };
  for (const auto& c : cases) {
    EXPECT_THAT(OpenBytes(c.builder.Build()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

TEST_F(GgufFileTest, RefusesNestedArraysBeyondTheDepthLimit) {
  // An array of arrays of ... of one uint8, six arrays deep: each level is its element
  // type and a count of one.
  std::string value;
  for (int depth = 0; depth < 5; ++depth) {
    GgufBuilder::AppendU32(value, 9);
    GgufBuilder::AppendU64(value, 1);
  }
  GgufBuilder::AppendU32(value, 0);
  GgufBuilder::AppendU64(value, 1);
  value.push_back('\0');
  EXPECT_THAT(OpenBytes(GgufBuilder().Raw("deep", 9, value).Build()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nests arrays deeper")));
}

TEST_F(GgufFileTest, RefusesMalformedTensors) {
  const std::string four_floats = Floats({1, 2, 3, 4});
  const struct {
    GgufBuilder builder;
    const char* message;
  } cases[] = {
      {GgufBuilder().Tensor("t", {}, kF32, ""), "has 0 dimensions"},
      {GgufBuilder().Tensor("t", {1, 1, 1, 1, 4}, kF32, four_floats), "has 5 dimensions"},
      {GgufBuilder().Tensor("t", {4, 0}, kF32, ""), "absurd extent 0"},
      {GgufBuilder().Tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, ""),
       "absurd extent"},
      {GgufBuilder().Tensor("t", {4}, 16, four_floats),
       "GGML type 16, which apeserve does not read"},
      {GgufBuilder().Tensor("t", {4}, 99, four_floats), "GGML type 99"},
      {GgufBuilder().Tensor("t", {16}, kQ8_0, std::string(34, '\0')),
       "not whole Q8_0 blocks of 32"},
      {GgufBuilder().Tensor("t", {4}, kF32, four_floats, 8), "not aligned to 32"},
      {GgufBuilder().Tensor("t", {8}, kF32, four_floats), "reaches past the end"},
      {GgufBuilder().Tensor("t", {4}, kF32, four_floats, int64_t{1} << 62), "reaches past the end"},
      {GgufBuilder().Tensor("t", {4}, kF32, four_floats).Tensor("t", {4}, kF32, four_floats),
       "'t' appears twice"},
      {GgufBuilder().Tensor("t", {4}, kF32, four_floats).OverrideCounts(1000, 0), "cannot fit"},
  };
  for (const auto& c : cases) {
    EXPECT_THAT(OpenBytes(c.builder.Build()),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.message;
  }
}

}  // namespace
}  // namespace apeserve::model
