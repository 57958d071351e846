#include "model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

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

// Found by tests/fuzz/tokenizer_json_fuzzer.cc: an id holding a float that int64 cannot
// hold was converted with undefined behaviour (UBSan: float-cast-overflow).
TEST(TokenizerTest, RefusesIdsThatAreNotIntegers) {
  EXPECT_THAT(Tokenizer::FromHfJson(
                  R"({"model": {"type": "BPE", "vocab": {"a": 8.88889e53}, "merges": []}})", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("token 'a' has id 8.88889e+53, not an integer")));
  EXPECT_THAT(Tokenizer::FromHfJson(
                  R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                      "added_tokens": [{"id": -1e300, "content": "</s>"}]})",
                  ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token '</s>' has id")));
  EXPECT_THAT(
      Tokenizer::FromHfJson(R"({"model": {"type": "BPE", "vocab": {"a": "0"}, "merges": []}})", ""),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("has id string")));
  // Found by review while fuzzing: a document nesting arrays some 10^5 deep overflowed
  // the stack when its values were copied (json.value()) or dumped.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THAT(Tokenizer::FromHfJson(R"({"model": )" + deep + "}", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tokenizer.json nests arrays and objects deeper than 64")));
  EXPECT_THAT(Tokenizer::FromHfJson(kTokenizerJson, "", R"({"eos_token_id": )" + deep + "}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("generation_config.json nests arrays and objects deeper")));
  // An id written as a float still reads.
  EXPECT_THAT(
      Tokenizer::FromHfJson(R"({"model": {"type": "BPE", "vocab": {"a": 0.0}, "merges": []}})", ""),
      IsOk());
}

// Found by tests/fuzz/tokenizer_json_fuzzer.cc: a tokenizer_config.json value of another
// type than expected threw nlohmann::json::type_error out of FromHfJson (std::terminate).
TEST(TokenizerTest, RefusesConfigValuesOfTheWrongType) {
  EXPECT_THAT(Tokenizer::FromHfJson(kTokenizerJson, R"({"add_bos_token": "x"})"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("add_bos_token must be true or false, not string")));
  EXPECT_THAT(Tokenizer::FromHfJson(kTokenizerJson, R"({"bos_token": {"content": 1}})"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("bos_token is neither a string nor an object")));
  EXPECT_THAT(Tokenizer::FromHfJson(kTokenizerJson, R"({"eos_token": [1]})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eos_token")));
  // Null stands for absent, as Hugging Face writes it.
  const auto t = Tokenizer::FromHfJson(
      kTokenizerJson,
      R"({"bos_token": null, "eos_token": {"content": "</s>"}, "add_bos_token": null})");
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ((*t)->bos_id(), -1);
  EXPECT_EQ((*t)->eos_id(), 3);
  EXPECT_FALSE((*t)->add_bos());
}

}  // namespace
// The fingerprint is what the store records: equal tokenizers must agree on it, any
// change to what ids a text gets or what an id means must change it, and what only
// steers generation must not (a store would be refused for nothing).
TEST(TokenizerTest, TheFingerprintFollowsEveryPartOfTheSpec) {
  const auto base_spec = [] {
    Tokenizer::Spec spec;
    spec.tokens = {"a", "b", "ab", "</s>"};
    spec.merges = {{"a", "b"}};
    spec.added = {{.content = "</s>", .id = 3, .special = true}};
    spec.split_patterns = {"\\s+"};
    spec.eos_id = 3;
    return spec;
  };
  const auto fingerprint = [](const Tokenizer::Spec& spec) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromSpec(spec);
    EXPECT_THAT(tokenizer, IsOk());
    return tokenizer.ok() ? (*tokenizer)->fingerprint() : std::string();
  };
  const std::string base = fingerprint(base_spec());
  EXPECT_THAT(base, ::testing::MatchesRegex("[0-9a-f]{32}"));
  EXPECT_EQ(fingerprint(base_spec()), base);
  const std::vector<std::pair<const char*, std::function<void(Tokenizer::Spec&)>>> changes = {
      {"two tokens swapped", [](auto& s) { std::swap(s.tokens[0], s.tokens[1]); }},
      {"a token more", [](auto& s) { s.tokens.push_back("ba"); }},
      {"no merge", [](auto& s) { s.merges.clear(); }},
      {"not special", [](auto& s) { s.added[0].special = false; }},
      {"another split", [](auto& s) { s.split_patterns = {"\\d"}; }},
      {"ignore merges", [](auto& s) { s.ignore_merges = true; }},
      {"an unknown token", [](auto& s) { s.unk_id = 0; }},
  };
  for (const auto& [what, change] : changes) {
    Tokenizer::Spec changed = base_spec();
    change(changed);
    EXPECT_NE(fingerprint(changed), base) << what;
  }
  Tokenizer::Spec generation_only = base_spec();
  generation_only.eos_id = 2;
  generation_only.bos_id = 3;
  generation_only.add_bos = true;
  generation_only.extra_eos_ids = {2};
  EXPECT_EQ(fingerprint(generation_only), base);
}

}  // namespace apeserve::model
