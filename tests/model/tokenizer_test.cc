#include "model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A four-token byte-level vocabulary: "a", "b", their merge "ab", and an added "</s>".
constexpr char kTokenizerJson[] = R"({
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
  "added_tokens": [{"id": 3, "content": "</s>", "special": true},
                   {"id": 4, "content": "<|eot|>", "special": true}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}
})";

TEST(TokenizerTest, ReadsTokenizerJsonWithGenerationConfig) {
  const auto t = Tokenizer::FromHfJson(kTokenizerJson, R"({"eos_token": "</s>"})",
                                       R"({"eos_token_id": [3, 4]})");
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT((*t)->Encode("abab</s>a"), ElementsAre(2, 2, 3, 0));
  EXPECT_THAT((*t)->Encode("ab</s>", /*parse_special=*/false), ElementsAre(2));  // no <, /, s, >
  EXPECT_EQ((*t)->eos_id(), 3);
  EXPECT_TRUE((*t)->IsEndOfSequence(3));
  EXPECT_TRUE((*t)->IsEndOfSequence(4));
  EXPECT_FALSE((*t)->IsEndOfSequence(2));
  EXPECT_EQ((*t)->Decode({2, 3, 0}), "ab</s>a");
  EXPECT_TRUE((*t)->IsSpecial(3));
}

TEST(TokenizerTest, RefusesWhatItDoesNotRead) {
  EXPECT_THAT(Tokenizer::FromHfJson("[]", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a JSON object")));
  EXPECT_THAT(Tokenizer::FromHfJson(R"({"model": {"type": "Unigram"}})", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte-level BPE")));
  EXPECT_THAT(Tokenizer::FromHfJson(
                  R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                      "normalizer": {"type": "NFC"}})",
                  ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("normalizer 'NFC'")));
  EXPECT_THAT(Tokenizer::FromHfJson(
                  R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]}})", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside the vocabulary")));
  EXPECT_THAT(Tokenizer::FromHfJson(kTokenizerJson, "", R"({"eos_token_id": 99})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eos_token_id 99")));
  EXPECT_THAT(Tokenizer::FromHfJson(
                  R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                      "pre_tokenizer": {"type": "Whitespace"}})",
                  ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'Whitespace'")));
}

}  // namespace
}  // namespace apeserve::model
