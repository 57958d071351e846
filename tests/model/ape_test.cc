// APE on the embedded model through the engine's public API: DESIGN.md §3's invariants
// (APE = SEQUENTIAL for one context at T = S = 1; PARALLEL = APE at T = S = 1; no
// dependence on the contexts' order), the two scale forms, the blocked kernel against
// the fused one, Score,
// many-shot prompts and the errors of mismatched KV.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/engine.h"
#include "model/generator.h"
#include "model/prompt_pieces.h"
#include "model/scorer.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_device.h"
#include "tests/util/test_paths.h"

namespace apeserve::model {
namespace {

using ::apeserve::testing::IsOk;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

// Two computations of the same logits: within float32's rounding, or the test device's
// (tests/util/test_device.h).
float Tolerance() { return ::apeserve::testing::LogitBound(1e-4F); }

// APE at T = S = 1, where it must agree with SEQUENTIAL (one context) and PARALLEL.
constexpr ApeOptions kUnitApe{.mode = EncodingMode::kApe, .temperature = 1.0F, .scale = 1.0F};

std::unique_ptr<Engine> LoadEngine(const std::string& kernel, int block) {
  EngineOptions options;
  options.model_path = apeserve::testing::TestModelPath();
  options.device = ::apeserve::testing::TestDevice();
  options.dtype = ::apeserve::testing::TestDtype();
  options.attention_kernel = kernel;
  options.attention_block = block;
  auto loaded = Engine::Load(options);
  EXPECT_THAT(loaded, IsOk());
  return loaded.ok() ? *std::move(loaded) : nullptr;
}

float MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]));
  }
  return worst;
}

int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

class ApeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { engine_ = LoadEngine("auto", 1024).release(); }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(engine_, nullptr);
    const auto chat = engine_->chat_template();
    ASSERT_THAT(chat, IsOk());
    pieces_ = std::make_unique<PromptPieces>(engine_->tokenizer(), **chat);
    auto prefix = engine_->EncodePrefix(pieces_->Prefix("You answer from the documents."));
    ASSERT_THAT(prefix, IsOk());
    prefix_ = *std::move(prefix);
  }

  std::vector<EncodedContext> Encode(const Engine& engine,
                                     const std::vector<std::string>& documents) const {
    std::vector<EncodedContext> contexts;
    for (const std::string& document : documents) {
      auto context = engine.EncodeContext(prefix_, pieces_->Context(document));
      EXPECT_THAT(context, IsOk());
      if (context.ok()) contexts.push_back(*std::move(context));
    }
    return contexts;
  }

  static std::vector<const EncodedContext*> Pointers(const std::vector<EncodedContext>& contexts,
                                                     const std::vector<size_t>& order = {}) {
    std::vector<const EncodedContext*> out;
    for (size_t i = 0; i < contexts.size(); ++i) {
      out.push_back(&contexts[order.empty() ? i : order[i]]);
    }
    return out;
  }

  // Logits of every query position, then of `decode` greedy steps whose tokens come
  // from `tokens` when given (so that two modes are compared on the same inputs).
  struct Trace {
    std::vector<float> prefill;
    std::vector<std::vector<float>> steps;
    std::vector<int32_t> tokens;
  };
  Trace Run(const Engine& engine, const std::vector<const EncodedContext*>& contexts,
            const ApeOptions& options, const std::vector<int32_t>& query, int decode,
            const std::vector<int32_t>& tokens = {}) const {
    Trace trace;
    auto sequence = engine.StartSequence(prefix_, contexts, options);
    EXPECT_THAT(sequence, IsOk());
    if (!sequence.ok()) return trace;
    auto prefill = engine.Feed(**sequence, query, /*all_logits=*/true);
    EXPECT_THAT(prefill, IsOk());
    if (!prefill.ok()) return trace;
    trace.prefill = *prefill;
    const auto vocab = static_cast<size_t>(engine.config().vocab_size);
    std::vector<float> last(prefill->end() - static_cast<std::ptrdiff_t>(vocab), prefill->end());
    for (int step = 0; step < decode; ++step) {
      const int32_t token = tokens.empty() ? Argmax(last) : tokens[static_cast<size_t>(step)];
      trace.tokens.push_back(token);
      auto next = engine.Feed(**sequence, {token});
      EXPECT_THAT(next, IsOk());
      if (!next.ok()) return trace;
      last = *std::move(next);
      trace.steps.push_back(last);
    }
    return trace;
  }

  static void ExpectSameTrace(const Trace& a, const Trace& b, float tolerance) {
    EXPECT_LE(MaxAbsDifference(a.prefill, b.prefill), tolerance) << "query prefill";
    ASSERT_EQ(a.steps.size(), b.steps.size());
    for (size_t i = 0; i < a.steps.size(); ++i) {
      EXPECT_LE(MaxAbsDifference(a.steps[i], b.steps[i]), tolerance) << "decode step " << i;
    }
  }

  const std::vector<std::string> documents_ = {
      "The lighthouse of Varn was built in 1841 by the engineer Osric Dale.",
      "Tessaly is a river town whose mayor, Ilse Marrow, keeps forty goats.",
      "The comet Ferrin-3 returns every 211 years; it was last seen in 1902.",
      "Blue copper ore from the Harth mines is smelted only in the winter months.",
  };
  std::unique_ptr<PromptPieces> pieces_;
  EncodedPrefix prefix_;
  static Engine* engine_;
};

Engine* ApeTest::engine_ = nullptr;

TEST_F(ApeTest, OneContextAtUnitTemperatureAndScaleEqualsSequential) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, {documents_[0]});
  const std::vector<int32_t> query = pieces_->Query("Who built the lighthouse of Varn?");
  const Trace sequential =
      Run(*engine_, Pointers(contexts), {.mode = EncodingMode::kSequential}, query, 32);
  const Trace ape = Run(*engine_, Pointers(contexts), kUnitApe, query, 32, sequential.tokens);
  ExpectSameTrace(sequential, ape, Tolerance());
  // All 32 decoded steps were compared.
  EXPECT_EQ(sequential.steps.size(), 32U);
}

TEST_F(ApeTest, SequentialEqualsOnePlainSequence) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, {documents_[0], documents_[1]});
  const std::vector<int32_t> query = pieces_->Query("Who keeps goats?");
  std::vector<int32_t> whole = prefix_.tokens;
  for (const EncodedContext& context : contexts) {
    whole.insert(whole.end(), context.tokens.begin(), context.tokens.end());
  }
  whole.insert(whole.end(), query.begin(), query.end());
  auto plain = engine_->NewSequence();
  const auto expected = engine_->Feed(*plain, whole);
  ASSERT_THAT(expected, IsOk());
  const Trace sequential =
      Run(*engine_, Pointers(contexts), {.mode = EncodingMode::kSequential}, query, 0);
  const std::vector<float> last(sequential.prefill.end() - engine_->config().vocab_size,
                                sequential.prefill.end());
  EXPECT_LE(MaxAbsDifference(*expected, last), Tolerance());
}

TEST_F(ApeTest, ParallelEqualsApeAtUnitTemperatureAndScale) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("When was the comet Ferrin-3 last seen?");
  const Trace parallel =
      Run(*engine_, Pointers(contexts), {.mode = EncodingMode::kParallel}, query, 16);
  const Trace ape = Run(*engine_, Pointers(contexts), kUnitApe, query, 16, parallel.tokens);
  ExpectSameTrace(parallel, ape, Tolerance());
  // Parallel encoding is not sequential encoding: the test would notice a mode mix-up.
  const Trace sequential =
      Run(*engine_, Pointers(contexts), {.mode = EncodingMode::kSequential}, query, 0);
  EXPECT_GT(MaxAbsDifference(parallel.prefill, sequential.prefill), 0.01F);
}

TEST_F(ApeTest, ParallelAndApeIgnoreTheOrderOfContexts) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("Where is blue copper ore smelted?");
  for (const ApeOptions& options :
       {ApeOptions{.mode = EncodingMode::kParallel},
        ApeOptions{.mode = EncodingMode::kApe, .temperature = 0.6F, .scale = 0.8F}}) {
    SCOPED_TRACE(EncodingModeName(options.mode));
    const Trace forward = Run(*engine_, Pointers(contexts), options, query, 8);
    const Trace shuffled =
        Run(*engine_, Pointers(contexts, {2, 0, 3, 1}), options, query, 8, forward.tokens);
    ExpectSameTrace(forward, shuffled, Tolerance());
  }
  // Whereas the temperature and scale do change the answer's distribution.
  const Trace plain = Run(*engine_, Pointers(contexts), kUnitApe, query, 0);
  const Trace tuned =
      Run(*engine_, Pointers(contexts),
          {.mode = EncodingMode::kApe, .temperature = 0.6F, .scale = 0.8F}, query, 0);
  EXPECT_GT(MaxAbsDifference(plain.prefill, tuned.prefill), 0.01F);
}

// The published form (S multiplies the context segment's log-sum-exp) and the additive
// one (ln S is added to it) agree whenever S = 1, at any T, and differ otherwise: a test
// that used the wrong form could not pass.
TEST_F(ApeTest, TheTwoScaleFormsAgreeOnlyAtUnitScale) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("Who built the lighthouse of Varn?");
  const auto run = [&](float temperature, float scale, ApeScaleForm form,
                       const std::vector<int32_t>& tokens) {
    return Run(
        *engine_, Pointers(contexts),
        {.mode = EncodingMode::kApe, .temperature = temperature, .scale = scale, .form = form},
        query, 4, tokens);
  };
  for (const float temperature : {0.6F, 1.0F, 1.3F}) {
    SCOPED_TRACE(temperature);
    const Trace published = run(temperature, 1.0F, ApeScaleForm::kMultiplicative, {});
    const Trace additive = run(temperature, 1.0F, ApeScaleForm::kAdditive, published.tokens);
    ExpectSameTrace(published, additive, Tolerance());
  }
  for (const float scale : {0.5F, 0.9F, 1.4F}) {
    SCOPED_TRACE(scale);
    const Trace published = run(0.9F, scale, ApeScaleForm::kMultiplicative, {});
    const Trace additive = run(0.9F, scale, ApeScaleForm::kAdditive, published.tokens);
    EXPECT_GT(MaxAbsDifference(published.prefill, additive.prefill), 0.01F);
  }
  // The default is the published form at the authors' recommended T = S = 0.9.
  const Trace defaults = Run(*engine_, Pointers(contexts), {}, query, 0);
  const Trace published = run(0.9F, 0.9F, ApeScaleForm::kMultiplicative, {});
  EXPECT_EQ(defaults.prefill, published.prefill);
}

// Contexts copied to the device once (what the registry's device tier keeps) give the
// very logits of contexts copied from their bytes at every start.
TEST_F(ApeTest, DeviceResidentContextsGiveTheSameLogits) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  std::vector<EncodedContext> on_device;
  for (const EncodedContext& context : contexts) {
    auto copied = engine_->ToDevice(context);
    ASSERT_THAT(copied, IsOk());
    EXPECT_TRUE(copied->kv.layers.empty());
    ASSERT_NE(copied->device, nullptr);
    EXPECT_EQ(copied->device->bytes(), context.kv.TotalBytes());  // fp32 on both sides
    on_device.push_back(*std::move(copied));
  }
  const std::vector<int32_t> query = pieces_->Query("Who keeps forty goats?");
  const ApeOptions options{.mode = EncodingMode::kApe, .temperature = 0.7F, .scale = 0.8F};
  const Trace host = Run(*engine_, Pointers(contexts), options, query, 4);
  const Trace device = Run(*engine_, Pointers(on_device), options, query, 4, host.tokens);
  ExpectSameTrace(host, device, 0.0F);

  EncodedContext forged = on_device[0];
  forged.kv.length += 1;  // the shape no longer matches the tokens
  const EncodedContext* const forged_list[] = {&forged};
  EXPECT_THAT(engine_->StartSequence(prefix_, forged_list, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context #0")));
}

TEST_F(ApeTest, BlockedKernelEqualsFusedKernel) {
  // Blocks of 7 keys: the prefix, every context and the query span several blocks,
  // with causal masks cutting through them.
  const std::unique_ptr<Engine> blocked = LoadEngine("blocked", 7);
  ASSERT_NE(blocked, nullptr);
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("Who is the mayor of Tessaly?");
  const ApeOptions options{.mode = EncodingMode::kApe, .temperature = 0.7F, .scale = 1.3F};
  const Trace fused = Run(*engine_, Pointers(contexts), options, query, 8);
  const Trace by_blocks = Run(*blocked, Pointers(contexts), options, query, 8, fused.tokens);
  ExpectSameTrace(fused, by_blocks, Tolerance());
}

TEST_F(ApeTest, ContextKvIsDeterministicAndIndependentOfOtherContexts) {
  const std::vector<EncodedContext> once = Encode(*engine_, {documents_[2]});
  const std::vector<EncodedContext> again = Encode(*engine_, {documents_[2]});
  ASSERT_EQ(once.size(), 1U);
  ASSERT_EQ(again.size(), 1U);
  EXPECT_EQ(once[0].kv.layers, again[0].kv.layers);
  EXPECT_EQ(once[0].prefix_hash, prefix_.hash);
  EXPECT_EQ(once[0].kv.start_position, static_cast<int64_t>(prefix_.tokens.size()));
  EXPECT_EQ(once[0].kv.length, static_cast<int64_t>(once[0].tokens.size()));
  EXPECT_EQ(once[0].kv.num_layers, engine_->config().num_layers);
  EXPECT_EQ(once[0].kv.TotalBytes(),
            static_cast<size_t>(engine_->config().num_layers) * once[0].kv.LayerBytes());
}

TEST_F(ApeTest, ScoreGivesTheTeacherForcedLogProbabilities) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("Who built the lighthouse of Varn?");
  const std::vector<int32_t> answer = engine_->tokenizer().Encode("Osric Dale built it.");
  for (const EncodingMode mode :
       {EncodingMode::kSequential, EncodingMode::kParallel, EncodingMode::kApe}) {
    SCOPED_TRACE(EncodingModeName(mode));
    const ApeOptions options{.mode = mode, .temperature = 0.8F, .scale = 0.9F};
    auto sequence = engine_->StartSequence(prefix_, Pointers(contexts), options);
    ASSERT_THAT(sequence, IsOk());
    const auto score = Score(*engine_, **sequence, query, answer);
    ASSERT_THAT(score, IsOk());
    ASSERT_EQ(score->token_logprobs.size(), answer.size());

    // Step by step: feed the query, then one answer token at a time.
    const Trace steps =
        Run(*engine_, Pointers(contexts), options, query, static_cast<int>(answer.size()), answer);
    double total = 0;
    std::vector<float> last(steps.prefill.end() - engine_->config().vocab_size,
                            steps.prefill.end());
    for (size_t i = 0; i < answer.size(); ++i) {
      const std::vector<float> logprobs = LogSoftmax(last);
      EXPECT_NEAR(score->token_logprobs[i], logprobs[static_cast<size_t>(answer[i])], Tolerance());
      EXPECT_EQ(score->greedy[i], Argmax(last) == answer[i]);
      total += logprobs[static_cast<size_t>(answer[i])];
      if (i == 0) {
        EXPECT_LE(MaxAbsDifference(score->first_token_logprobs, logprobs), Tolerance());
      }
      last = steps.steps[i];
    }
    EXPECT_NEAR(score->total_logprob, total, ::apeserve::testing::LogitBound(1e-3F));
    EXPECT_LT(score->total_logprob, 0);

    // Truncating back to the contexts scores again from the same state.
    (*sequence)->Truncate(0);
    const auto rescored = Score(*engine_, **sequence, query, answer);
    ASSERT_THAT(rescored, IsOk());
    EXPECT_NEAR(rescored->total_logprob, score->total_logprob, Tolerance());
  }
}

TEST_F(ApeTest, GeneratesFromAnApeSequence) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  auto sequence = engine_->StartSequence(prefix_, Pointers(contexts), {});
  ASSERT_THAT(sequence, IsOk());
  SamplingOptions greedy;
  greedy.max_tokens = 12;
  const auto result =
      Generate(*engine_, **sequence, pieces_->Query("Who keeps forty goats?"), greedy);
  ASSERT_THAT(result, IsOk());
  EXPECT_FALSE(result->tokens.empty());
  EXPECT_FALSE(result->text.empty());
}

TEST_F(ApeTest, RefusesMismatchedKvAndBadOptions) {
  const std::vector<EncodedContext> contexts = Encode(*engine_, {documents_[0]});
  ASSERT_EQ(contexts.size(), 1U);
  auto other_prefix = engine_->EncodePrefix(pieces_->Prefix("Another system prompt."));
  ASSERT_THAT(other_prefix, IsOk());
  EXPECT_THAT(engine_->StartSequence(*other_prefix, Pointers(contexts), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context #0 was encoded")));
  // SEQUENTIAL recomputes from the tokens and needs no KV of this prefix.
  EXPECT_THAT(engine_->StartSequence(*other_prefix, Pointers(contexts),
                                     {.mode = EncodingMode::kSequential}),
              IsOk());

  EncodedContext truncated = contexts[0];
  truncated.kv.layers[3].resize(truncated.kv.layers[3].size() - 2);
  EXPECT_THAT(engine_->StartSequence(prefix_, {&truncated}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("KV layer 3 holds")));
  EncodedContext shifted = contexts[0];
  shifted.kv.start_position += 1;
  EXPECT_THAT(engine_->StartSequence(prefix_, {&shifted}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("covers positions")));
  EncodedContext wrong_heads = contexts[0];
  wrong_heads.kv.kv_heads += 1;
  for (std::string& layer : wrong_heads.kv.layers) layer.resize(wrong_heads.kv.LayerBytes());
  EXPECT_THAT(engine_->StartSequence(prefix_, {&wrong_heads}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("4 KV heads x 64; the model has 30 x 3 x 64")));

  EncodedPrefix forged = prefix_;
  forged.tokens.push_back(5);
  EXPECT_THAT(engine_->EncodeContext(forged, {1, 2}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not name its tokens")));
  EXPECT_THAT(engine_->EncodeContext(prefix_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one token")));
  EXPECT_THAT(engine_->EncodeContext(prefix_, {1, -4}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token #1 is id -4")));
  EXPECT_THAT(engine_->StartSequence(prefix_, Pointers(contexts), {.temperature = 0.0F}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("temperature 0")));
  EXPECT_THAT(engine_->StartSequence(prefix_, Pointers(contexts), {.scale = -1.0F}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scale -1")));
  EXPECT_THAT(
      engine_->StartSequence(prefix_, Pointers(contexts), {.form = static_cast<ApeScaleForm>(7)}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("form 7 is unknown")));
  EXPECT_THAT(ParseEncodingMode("serial"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'serial'")));
  EXPECT_THAT(ParseApeScaleForm("published"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'published' is not one of multiplicative, additive")));

  // Too long for the model's context in SEQUENTIAL; position reuse keeps APE inside.
  // (The KV's values do not matter to the length checks: zeros of the right shape.)
  EncodedContext long_context = contexts[0];
  long_context.tokens.assign(4200, 28);
  long_context.kv.length = 4200;
  for (std::string& layer : long_context.kv.layers) layer.assign(long_context.kv.LayerBytes(), 0);
  const std::vector<const EncodedContext*> twice{&long_context, &long_context};
  EXPECT_THAT(engine_->StartSequence(prefix_, twice, {.mode = EncodingMode::kSequential}),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("the model's context is")));
  EXPECT_THAT(engine_->StartSequence(prefix_, twice, {}), IsOk());
}

TEST_F(ApeTest, AnswersWithManyShortContexts) {
  // 256 contexts of 64 tokens each: 16,384 context tokens, twice the model's context
  // length, which only position reuse makes possible.
  constexpr int kContexts = 256;
  constexpr size_t kTokens = 64;
  std::vector<EncodedContext> contexts;
  for (int i = 0; i < kContexts; ++i) {
    std::vector<int32_t> tokens = pieces_->Context(
        absl::StrCat("Record ", i, ": the locker numbered ", 1000 + 7 * i, " holds a ",
                     i % 3 == 0 ? "red" : "green", " umbrella and ", i % 11,
                     " spare keys for the warehouse on Dock Street, filed by clerk ", i % 17,
                     " in the registry of the old harbour office, city of Mersey."));
    tokens.resize(kTokens, tokens.back());
    auto context = engine_->EncodeContext(prefix_, tokens);
    ASSERT_THAT(context, IsOk());
    contexts.push_back(*std::move(context));
  }
  const std::vector<int32_t> query = pieces_->Query("What does the locker numbered 1070 hold?");
  auto sequence = engine_->StartSequence(prefix_, Pointers(contexts),
                                         {.mode = EncodingMode::kApe, .temperature = 0.8F});
  ASSERT_THAT(sequence, IsOk());
  EXPECT_EQ((*sequence)->length(),
            static_cast<int64_t>(prefix_.tokens.size() + kContexts * kTokens));
  EXPECT_EQ((*sequence)->next_position(), static_cast<int64_t>(prefix_.tokens.size() + kTokens));
  SamplingOptions greedy;
  greedy.max_tokens = 8;
  const auto result = Generate(*engine_, **sequence, query, greedy);
  ASSERT_THAT(result, IsOk());
  EXPECT_FALSE(result->tokens.empty());
  for (const float logprob : result->logprobs) EXPECT_TRUE(std::isfinite(logprob));
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double peak_mib = static_cast<double>(usage.ru_maxrss) / 1024.0;
  RecordProperty("peak_rss_mib", static_cast<int>(peak_mib));
  std::printf("256 contexts x 64 tokens: KV %.1f MiB, peak RSS %.0f MiB, answer '%s'\n",
              static_cast<double>(contexts[0].kv.TotalBytes()) * kContexts / (1 << 20), peak_mib,
              result->text.c_str());
}

TEST_F(ApeTest, SharedKvIsReadInPlaceAndOutlivesEveryOtherHolder) {
  // A registry tier hands out its entries shared; a sequence reads them where they lie
  // and keeps them alive, so that the tier may evict one under a running request.
  const std::vector<EncodedContext> contexts = Encode(*engine_, documents_);
  const std::vector<int32_t> query = pieces_->Query("Who built the lighthouse of Varn?");
  const auto vocab = static_cast<size_t>(engine_->config().vocab_size);
  for (const EncodingMode mode : {EncodingMode::kParallel, EncodingMode::kApe}) {
    SCOPED_TRACE(EncodingModeName(mode));
    const ApeOptions options{.mode = mode, .temperature = 0.8F, .scale = 0.9F};
    std::vector<const EncodedContext*> named = Pointers(contexts);
    named.push_back(&contexts[1]);  // a context named twice
    const Trace copied = Run(*engine_, named, options, query, 6);

    auto prefix = std::make_shared<const EncodedPrefix>(prefix_);
    std::vector<std::shared_ptr<const EncodedContext>> shared;
    for (const EncodedContext& context : contexts) {
      shared.push_back(std::make_shared<const EncodedContext>(context));
      EXPECT_TRUE(engine_->ReadsInPlace(context));
    }
    shared.push_back(shared[1]);
    const std::weak_ptr<const EncodedContext> watched = shared[1];
    const std::weak_ptr<const EncodedPrefix> watched_prefix = prefix;
    auto begun = engine_->BeginSequence(prefix, shared, options);
    ASSERT_THAT(begun, IsOk());
    EXPECT_TRUE(begun->tokens_to_feed.empty());
    EXPECT_GT(watched.use_count(), 2) << "the sequence holds what it reads";
    // Every other holder lets go, as a tier evicting the entries would.
    prefix.reset();
    shared.clear();
    ASSERT_FALSE(watched.expired());
    ASSERT_FALSE(watched_prefix.expired());

    Engine::Sequence& sequence = *begun->sequence;
    size_t held = prefix_.tokens.size() + contexts[1].tokens.size();
    for (const EncodedContext& context : contexts) held += context.tokens.size();
    EXPECT_EQ(sequence.length(), static_cast<int64_t>(held)) << "the prefix and every context";
    auto prefill = engine_->Feed(sequence, query, /*all_logits=*/true);
    ASSERT_THAT(prefill, IsOk());
    EXPECT_LE(MaxAbsDifference(*prefill, copied.prefill), ::apeserve::testing::LogitBound(1e-5F));
    for (size_t step = 0; step < copied.steps.size(); ++step) {
      auto next = engine_->Feed(sequence, {copied.tokens[step]});
      ASSERT_THAT(next, IsOk());
      ASSERT_EQ(next->size(), vocab);
      EXPECT_LE(MaxAbsDifference(*next, copied.steps[step]), ::apeserve::testing::LogitBound(1e-5F))
          << "decode step " << step;
    }
    begun->sequence.reset();
    EXPECT_TRUE(watched.expired()) << "the sequence let go of what it held";
    EXPECT_TRUE(watched_prefix.expired());
  }
}

}  // namespace
}  // namespace apeserve::model
