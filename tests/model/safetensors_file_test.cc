#include "model/safetensors_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "model/hf_checkpoint.h"
#include "model/model_config.h"
#include "tests/model/gguf_builder.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::GgufBuilder;
using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::apeserve::testing::TempDir;
using ::apeserve::testing::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A safetensors file with `header` (JSON) and `data`.
std::string Safetensors(const std::string& header, const std::string& data) {
  std::string bytes;
  GgufBuilder::AppendU64(bytes, header.size());
  return bytes + header + data;
}

const char kValidHeader[] =
    R"({"__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}})";

class SafetensorsFileTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const std::string& bytes) {
    const std::string path = dir_.Join("model.safetensors");
    EXPECT_TRUE(WriteFile(path, bytes));
    return SafetensorsFile::Open(path);
  }
  TempDir dir_;
};

TEST_F(SafetensorsFileTest, ReadsTensors) {
  auto file = OpenBytes(Safetensors(kValidHeader, std::string(22, '\x07')));
  ASSERT_THAT(file, IsOk());
  ASSERT_EQ((*file)->tensors().size(), 2U);
  const SafetensorsTensor* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, "F32");
  EXPECT_THAT(w->shape, ElementsAre(2, 2));
  EXPECT_EQ(w->bytes.size(), 16U);
  EXPECT_EQ((*file)->Find("b")->bytes.size(), 6U);
}

TEST_F(SafetensorsFileTest, RefusesEveryTruncation) {
  const std::string bytes = Safetensors(kValidHeader, std::string(22, '\x07'));
  for (size_t length = 0; length < bytes.size(); ++length) {
    EXPECT_THAT(OpenBytes(bytes.substr(0, length)),
                StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_))
        << length;
  }
}

TEST_F(SafetensorsFileTest, SurvivesRandomCorruption) {
  const std::string bytes = Safetensors(kValidHeader, std::string(22, '\x07'));
  std::mt19937 random(7);
  for (int trial = 0; trial < 1000; ++trial) {
    std::string corrupt = bytes;
    corrupt[random() % corrupt.size()] = static_cast<char>(random());
    const auto file = OpenBytes(corrupt);
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    }
  }
}

TEST_F(SafetensorsFileTest, RefusesMalformedHeaders) {
  const struct {
    std::string header;
    const char* message;
  } cases[] = {
      {"not json", "not a JSON object"},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "lacks a dtype, a shape or two data_offsets"},
      {R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", "unknown dtype 'Q4'"},
      {R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", "invalid shape"},
      {R"({"w": {"dtype": "F32", "shape": [1125899906842625, 2048], "data_offsets": [0, 8]}})",
       "invalid shape"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}})",
       "of a data section of 8"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", "spans bytes [8, 0)"},
      {R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
       "8 bytes for 3 F32 values"},
  };
  for (const auto& c : cases) {
    EXPECT_THAT(OpenBytes(Safetensors(c.header, std::string(8, '\0'))),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.header;
  }
  std::string huge;
  GgufBuilder::AppendU64(huge, uint64_t{1} << 40);
  EXPECT_THAT(OpenBytes(huge), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most")));
}

TEST_F(SafetensorsFileTest, CheckpointIndexMayNotLeaveTheFolder) {
  ASSERT_TRUE(WriteFile(dir_.Join("model.safetensors.index.json"),
                        R"({"weight_map": {"w": "../outside.safetensors"}})"));
  EXPECT_THAT(HfCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a file name inside")));
}

TEST_F(SafetensorsFileTest, CheckpointNeedsWeights) {
  EXPECT_THAT(HfCheckpoint::Open(dir_.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("model.safetensors")));
}

// Found by review while fuzzing: nlohmann's parser is iterative, but dumping, copying
// and comparing recurse once per level, so a header nesting arrays some 10^5 deep
// overflowed the stack (in the error message's dump of "shape").
TEST_F(SafetensorsFileTest, RefusesDeeplyNestedHeaders) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THAT(
      OpenBytes(Safetensors(
          R"({"w": {"dtype": "F32", "shape": )" + deep + R"(, "data_offsets": [0, 0]}})", "")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deeper than 64 levels")));
  const std::string nested = std::string(60, '[') + std::string(60, ']');
  EXPECT_THAT(
      OpenBytes(Safetensors(
          R"({"w": {"dtype": "F32", "shape": )" + nested + R"(, "data_offsets": [0, 0]}})", "")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid shape")));
}

TEST(HfConfigTest, ReadsBothRopeSpellings) {
  const auto v5 = ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
      "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
      "original_max_position_embeddings": 32}})");
  ASSERT_THAT(v5, IsOk());
  EXPECT_EQ(v5->rope_theta, 500000.0);
  EXPECT_EQ(v5->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(v5->rope_scaling.original_max_position, 32);
  EXPECT_EQ(v5->head_dim, 4);
  const auto v4 = ConfigFromHfJson(R"({"model_type": "qwen2", "vocab_size": 10,
      "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
      "num_attention_heads": 2, "rope_theta": 1000.0,
      "rope_scaling": {"type": "linear", "factor": 2.0}, "tie_word_embeddings": true})");
  ASSERT_THAT(v4, IsOk());
  EXPECT_EQ(v4->rope_theta, 1000.0);
  EXPECT_EQ(v4->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_TRUE(v4->attention_bias);
  EXPECT_TRUE(v4->tie_word_embeddings);
  EXPECT_EQ(v4->num_kv_heads, 2);
}

TEST(HfConfigTest, RefusesWhatItDoesNotRun) {
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "gemma3"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model_type 'gemma3'")));
  EXPECT_THAT(ConfigFromHfJson("[1]"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a JSON object")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.json")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
      "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 3,
      "num_key_value_heads": 2})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a multiple")));
}

// Found by tests/fuzz/hf_config_fuzzer.cc: an integer field holding a float that int64
// cannot hold was converted with undefined behaviour (UBSan: float-cast-overflow).
TEST(HfConfigTest, RefusesIntegersOutOfRange) {
  const std::string tail = R"(, "hidden_size": 8, "intermediate_size": 16,
      "num_hidden_layers": 1, "num_attention_heads": 2})";
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 4.9152e29)" + tail),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("vocab_size must be an integer, not 4.9152e+29")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10.5)" + tail),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": "10")" + tail),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("vocab_size must be an integer, not string")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10,
      "num_key_value_heads": -1e300)" +
                               tail),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_key_value_heads")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10,
      "max_position_embeddings": 18446744073709551615)" +
                               tail),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_position_embeddings")));
  EXPECT_THAT(
      ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                       "original_max_position_embeddings": 1e19})" +
                       tail),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("original_max_position_embeddings")));
  EXPECT_THAT(ConfigFromHfJson(R"({"model_type": "llama", "rope_parameters": )" +
                               std::string(100000, '[') + std::string(100000, ']') + "}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("config.json nests arrays and objects deeper than 64")));
  // An integer written as a float still reads.
  const auto whole = ConfigFromHfJson(R"({"model_type": "llama", "vocab_size": 10.0)" + tail);
  ASSERT_THAT(whole, IsOk());
  EXPECT_EQ(whole->vocab_size, 10);
}

}  // namespace
}  // namespace apeserve::model
