// The engine, the generation loop and their errors, on the embedded model.
#include "model/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "model/generator.h"
#include "tests/model/gguf_builder.h"
#include "tests/util/status_matchers.h"
#include "tests/util/temp_dir.h"
#include "tests/util/test_paths.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EngineOptions options;
    options.model_path = apeserve::testing::TestModelPath();
    options.device = "cpu";
    auto loaded = Engine::Load(options);
    ASSERT_THAT(loaded, IsOk());
    engine_ = std::move(loaded).value().release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }

  std::vector<int32_t> ChatPrompt(const std::string& question) const {
    const auto chat = engine_->chat_template();
    EXPECT_THAT(chat, IsOk());
    return engine_->tokenizer().Encode((*chat)->Render({{"user", question}}, true));
  }

  absl::StatusOr<GenerationResult> Run(const std::vector<int32_t>& prompt,
                                       const SamplingOptions& options,
                                       const TokenCallback& on_token = nullptr) const {
    auto sequence = engine_->NewSequence();
    return Generate(*engine_, *sequence, prompt, options, on_token);
  }

  static Engine* engine_;
};

Engine* EngineTest::engine_ = nullptr;

TEST_F(EngineTest, DescribesTheModel) {
  EXPECT_EQ(engine_->config().architecture, "llama");
  EXPECT_EQ(engine_->config().vocab_size, engine_->tokenizer().vocab_size());
  EXPECT_EQ(engine_->device(), "cpu");
  EXPECT_EQ(engine_->dtype(), "float32");
  ASSERT_THAT(engine_->chat_template(), IsOk());
  EXPECT_EQ((*engine_->chat_template())->format(), ChatFormat::kChatMl);
}

TEST_F(EngineTest, FingerprintsAModelWithoutLoadingIt) {
  const auto fingerprint = Engine::ModelFingerprint(apeserve::testing::TestModelPath());
  ASSERT_THAT(fingerprint, IsOk());
  EXPECT_EQ(*fingerprint, engine_->fingerprint());
  EXPECT_THAT(Engine::ModelFingerprint("/nonexistent/model.gguf"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/model.gguf")));
}

TEST_F(EngineTest, IncrementalFeedingEqualsOnePass) {
  const std::vector<int32_t> prompt = engine_->tokenizer().Encode("One, two, three, four, five");
  auto whole = engine_->NewSequence();
  const auto all = engine_->Feed(*whole, prompt, /*all_logits=*/true);
  ASSERT_THAT(all, IsOk());
  auto pieces = engine_->NewSequence();
  const size_t vocab = static_cast<size_t>(engine_->config().vocab_size);
  for (size_t i = 0; i < prompt.size(); ++i) {
    const auto step = engine_->Feed(*pieces, {prompt[i]});
    ASSERT_THAT(step, IsOk());
    float worst = 0;
    for (size_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::abs((*step)[v] - (*all)[i * vocab + v]));
    }
    EXPECT_LE(worst, 1e-4) << "position " << i;
  }
  EXPECT_EQ(pieces->length(), static_cast<int64_t>(prompt.size()));
}

TEST_F(EngineTest, StopsAtEndOfSequenceWithoutItsText) {
  SamplingOptions options;
  options.max_tokens = 64;
  const auto result = Run(ChatPrompt("What is the capital of France?"), options);
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->finish_reason, FinishReason::kEndOfSequence);
  EXPECT_EQ(result->tokens.back(), engine_->tokenizer().eos_id());
  EXPECT_THAT(result->text, HasSubstr("Paris"));
  EXPECT_THAT(result->text, ::testing::Not(HasSubstr("<|im_end|>")));
}

TEST_F(EngineTest, StopStringsCutTheTextAndStreamingAgrees) {
  SamplingOptions options;
  options.max_tokens = 40;
  options.ignore_eos = true;
  const std::vector<int32_t> prompt =
      engine_->tokenizer().Encode("The days of the week are Monday,");
  const auto free_run = Run(prompt, options);
  ASSERT_THAT(free_run, IsOk());
  ASSERT_EQ(free_run->finish_reason, FinishReason::kLength);
  ASSERT_GT(free_run->text.size(), 20U);

  // Stop at a string from the middle of what the model writes anyway.
  const std::string stop = free_run->text.substr(10, 5);
  options.stop = {stop, "never appears \x01"};
  std::string streamed;
  const auto stopped = Run(prompt, options, [&](int32_t, float, absl::string_view text) {
    streamed.append(text.data(), text.size());
    return true;
  });
  ASSERT_THAT(stopped, IsOk());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped->text, free_run->text.substr(0, free_run->text.find(stop)));
  EXPECT_EQ(streamed, stopped->text);
}

TEST_F(EngineTest, ATokenGeneratorEndedEarlyReleasesWhatItHeldBack) {
  const Tokenizer& tokenizer = engine_->tokenizer();
  // Logits that make greedy choose `token`.
  const auto choose = [&](int32_t token) {
    std::vector<float> logits(static_cast<size_t>(tokenizer.vocab_size()), 0.0F);
    logits[static_cast<size_t>(token)] = 10;
    return logits;
  };
  const std::vector<int32_t> hello = tokenizer.Encode("Hello world");
  ASSERT_EQ(hello.size(), 2U);
  SamplingOptions options;
  options.stop = {" world peace"};  // " world" may begin it: held back
  TokenGenerator generator(tokenizer, options, {});
  EXPECT_EQ(generator.Next(choose(hello[0])).text, "Hello");
  const TokenGenerator::Step held = generator.Next(choose(hello[1]));
  EXPECT_EQ(held.text, "");
  EXPECT_FALSE(held.finished);
  // The model's context is full: the generation ends, and " world" is text after all.
  EXPECT_EQ(generator.Finish(), " world");
  EXPECT_EQ(generator.text(), "Hello world");
}

TEST_F(EngineTest, SameSeedSameTokens) {
  SamplingOptions options;
  options.temperature = 0.9F;
  options.top_p = 0.95F;
  options.max_tokens = 24;
  options.ignore_eos = true;
  const std::vector<int32_t> prompt = engine_->tokenizer().Encode("Once upon a time");
  options.seed = 11;
  const auto first = Run(prompt, options), again = Run(prompt, options);
  options.seed = 12;
  const auto other = Run(prompt, options);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(again, IsOk());
  ASSERT_THAT(other, IsOk());
  EXPECT_EQ(first->tokens, again->tokens);
  EXPECT_NE(first->tokens, other->tokens);
  EXPECT_EQ(first->tokens.size(), 24U);
}

TEST_F(EngineTest, TheCallerCanCancel) {
  SamplingOptions options;
  options.max_tokens = 50;
  options.ignore_eos = true;
  int seen = 0;
  const auto result = Run(engine_->tokenizer().Encode("Count: 1, 2,"), options,
                          [&](int32_t, float, absl::string_view) { return ++seen < 3; });
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(result->tokens.size(), 3U);
}

TEST_F(EngineTest, RefusesBadTokensAndFullContexts) {
  auto sequence = engine_->NewSequence();
  EXPECT_THAT(engine_->Feed(*sequence, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no tokens")));
  EXPECT_THAT(engine_->Feed(*sequence, {1, 49152}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("token #1 is id 49152, outside the vocabulary of 49152")));
  EXPECT_THAT(engine_->Feed(*sequence, {-5}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("id -5")));
  const std::vector<int32_t> too_long(static_cast<size_t>(engine_->config().max_position) + 1, 1);
  EXPECT_THAT(engine_->Feed(*sequence, too_long),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("context is 8192")));
  EXPECT_EQ(sequence->length(), 0);  // nothing was half-fed
  SamplingOptions bad;
  bad.top_p = 2;
  EXPECT_THAT(Run({1}, bad), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p")));
}

// The GPU's reduced-precision path, run on the CPU: the same answer as fp32.
TEST_F(EngineTest, Bfloat16AgreesWithFloat32) {
  EngineOptions options;
  options.model_path = apeserve::testing::TestModelPath();
  options.device = "cpu";
  options.dtype = "bfloat16";
  auto bf16 = Engine::Load(options);
  ASSERT_THAT(bf16, IsOk());
  EXPECT_EQ((*bf16)->dtype(), "bfloat16");
  const std::vector<int32_t> prompt = ChatPrompt("What is the capital of France?");
  auto a = engine_->NewSequence();
  auto b = (*bf16)->NewSequence();
  const auto full = engine_->Feed(*a, prompt);
  const auto reduced = (*bf16)->Feed(*b, prompt);
  ASSERT_THAT(full, IsOk());
  ASSERT_THAT(reduced, IsOk());
  const auto argmax = [](const std::vector<float>& v) {
    return std::max_element(v.begin(), v.end()) - v.begin();
  };
  EXPECT_EQ(argmax(*full), argmax(*reduced));
  float worst = 0;
  for (size_t i = 0; i < full->size(); ++i)
    worst = std::max(worst, std::abs((*full)[i] - (*reduced)[i]));
  EXPECT_LT(worst, 1.5F);  // bf16 keeps 8 bits of mantissa through 30 layers
}

TEST(EngineLoadTest, RefusesBadOptionsAndUnsupportedModels) {
  EngineOptions options;
  options.model_path = apeserve::testing::TestModelPath();
  options.dtype = "int4";
  EXPECT_THAT(Engine::Load(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dtype 'int4'")));

  apeserve::testing::TempDir dir;
  options = EngineOptions{};
  options.model_path = dir.Join("missing.gguf");
  EXPECT_THAT(Engine::Load(options),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing.gguf")));

  options.model_path = dir.Join("gemma.gguf");
  ASSERT_TRUE(apeserve::testing::WriteFile(
      options.model_path,
      apeserve::testing::GgufBuilder().String("general.architecture", "gemma3").Build()));
  EXPECT_THAT(Engine::Load(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("architecture 'gemma3'")));
}

}  // namespace
}  // namespace apeserve::model
