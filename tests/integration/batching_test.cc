// Continuous batching end to end: concurrent requests of every kind share the engine's
// steps and answer exactly as they do alone; prompts are prefilled in chunks between
// the streams' tokens; a cancelled request leaves the batch; the KV budget admits
// requests in turn.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/integration/api_fixture.h"

namespace apeserve {
namespace {

using ::apeserve::testing::ApiTest;
using ::apeserve::testing::CodeOf;
using ::apeserve::testing::kBees;
using ::apeserve::testing::kBridge;
using ::apeserve::testing::kGoats;
using ::apeserve::testing::LongStream;
using ::apeserve::testing::SetDeadline;
using ::testing::HasSubstr;

// What a Generate answered: its token ids, or its error.
struct Answer {
  grpc::Status status;
  std::vector<int32_t> tokens;
};

class BatchingTest : public ApiTest {
 protected:
  void SetUp() override {
    // Steps of 16 tokens: every prompt is fed in several chunks, between decodes.
    Start({"--max_step_tokens=16"});
    ASSERT_TRUE(Create("goats", kGoats).ok());
    ASSERT_TRUE(Create("bees", kBees).ok());
    ASSERT_TRUE(Create("bridge", kBridge).ok());
  }

  Answer Stream(const ape::v1::GenerateRequest& request) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(300));
    auto reader = clients_->generation->GenerateStream(&context, request);
    Answer answer;
    ape::v1::GenerateStreamResponse chunk;
    while (reader->Read(&chunk)) {
      answer.tokens.insert(answer.tokens.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    }
    answer.status = reader->Finish();
    return answer;
  }

  // A mix of modes, context sets, prompt lengths, answer lengths and sampling.
  static std::vector<ape::v1::GenerateRequest> MixedRequests() {
    std::vector<ape::v1::GenerateRequest> requests = {
        Greedy("Who keeps bees?", {"goats", "bees", "bridge"}, ape::v1::ENCODING_MODE_APE, 14),
        Greedy("How many goats are there, and what does Martha sell at the market?",
               {"goats", "bridge"}, ape::v1::ENCODING_MODE_PARALLEL, 9),
        Greedy("When was the bridge built?", {"bridge", "bees", "goats"},
               ape::v1::ENCODING_MODE_SEQUENTIAL, 16),
        Greedy("What won a prize?", {"bees"}, ape::v1::ENCODING_MODE_APE, 6),
        Greedy("Tell me about the river.", {}, ape::v1::ENCODING_MODE_APE, 11),
    };
    // APE at the request's own T and S, sampled with a seed.
    requests[3].mutable_ape()->set_temperature(0.6F);
    requests[3].mutable_ape()->set_scale(0.7F);
    requests[3].mutable_sampling()->set_temperature(0.9F);
    requests[3].mutable_sampling()->set_seed(17);
    // Sampled with top-p and a repetition penalty, and an inline context.
    requests[4].mutable_sampling()->set_temperature(0.7F);
    requests[4].mutable_sampling()->set_top_p(0.9F);
    requests[4].mutable_sampling()->set_repetition_penalty(1.2F);
    requests[4].mutable_sampling()->set_seed(3);
    requests[4].add_inline_contexts()->set_text("The river floods every spring.");
    return requests;
  }
};

TEST_F(BatchingTest, ConcurrentRequestsOfEveryKindAnswerExactlyAsAlone) {
  const std::vector<ape::v1::GenerateRequest> requests = MixedRequests();
  std::vector<Answer> alone;
  for (const ape::v1::GenerateRequest& request : requests) {
    alone.push_back(Stream(request));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message();
  }
  const ape::v1::Load before = Load();
  // Twice each, arriving 40 ms apart: requests join a running batch and leave it as
  // their answers end, while the others go on.
  constexpr int kRounds = 2;
  std::vector<Answer> batched(requests.size() * kRounds);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < batched.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::SleepFor(absl::Milliseconds(40) * static_cast<double>(i));
      batched[i] = Stream(requests[i % requests.size()]);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (size_t i = 0; i < batched.size(); ++i) {
    ASSERT_TRUE(batched[i].status.ok()) << i << ": " << batched[i].status.error_message();
    EXPECT_EQ(batched[i].tokens, alone[i % requests.size()].tokens) << "request #" << i;
  }
  // They did share steps: more sequences advanced than steps were run.
  const ape::v1::Load after = Load();
  const int64_t steps = after.steps() - before.steps();
  const int64_t sequences = after.stepped_sequences() - before.stepped_sequences();
  EXPECT_GT(sequences, steps * 3 / 2) << steps << " steps, " << sequences << " sequences";
}

TEST_F(BatchingTest, ScoresInABatchEqualScoresAlone) {
  ape::v1::ScoreRequest request;
  request.set_query("Who keeps bees?");
  request.add_context_ids("goats");
  request.add_context_ids("bees");
  request.set_mode(ape::v1::ENCODING_MODE_APE);
  request.add_continuations("Tom keeps bees behind the school.");
  request.add_continuations("Martha does.");
  const auto score = [&](ape::v1::ScoreResponse& reply) {
    grpc::ClientContext context;
    SetDeadline(context);
    return clients_->generation->Score(&context, request, &reply);
  };
  ape::v1::ScoreResponse alone;
  ASSERT_TRUE(score(alone).ok());
  // The same Score while two streams decode beside it.
  LongStream first(*clients_->generation, 40);
  LongStream second(*clients_->generation, 40);
  ape::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(first.reader->Read(&chunk));
  ASSERT_TRUE(second.reader->Read(&chunk));
  ape::v1::ScoreResponse batched;
  ASSERT_TRUE(score(batched).ok());
  ASSERT_EQ(batched.scores_size(), alone.scores_size());
  for (int i = 0; i < alone.scores_size(); ++i) {
    ASSERT_EQ(batched.scores(i).token_logprobs_size(), alone.scores(i).token_logprobs_size());
    for (int t = 0; t < alone.scores(i).token_logprobs_size(); ++t) {
      // The batch's products round differently (model/batch_test.cc: logits within 1e-3).
      EXPECT_NEAR(batched.scores(i).token_logprobs(t), alone.scores(i).token_logprobs(t), 2e-3);
    }
    EXPECT_EQ(batched.scores(i).greedy(), alone.scores(i).greedy());
  }
  for (LongStream* stream : {&first, &second}) {
    while (stream->reader->Read(&chunk)) {
    }
    EXPECT_TRUE(stream->reader->Finish().ok());
  }
}

TEST_F(BatchingTest, ALongPromptIsPrefilledInChunksWhileStreamsGoOn) {
  LongStream stream(*clients_->generation, 600);
  ape::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(stream.reader->Read(&chunk));
  // A SEQUENTIAL prompt of about 1,000 tokens: with 16 tokens a step, one of them the
  // stream's, it takes some 65 steps, each of which also gives the stream a token.
  std::string document;
  for (int i = 0; i < 40; ++i) document += absl::StrCat(kGoats, " ");
  ape::v1::GenerateRequest request =
      Greedy("How many goats?", {}, ape::v1::ENCODING_MODE_SEQUENTIAL, 1);
  request.add_inline_contexts()->set_text(document);
  std::atomic<bool> answered = false;
  std::atomic<int> tokens_meanwhile = 0;
  std::thread reader([&] {
    while (stream.reader->Read(&chunk)) {
      if (!answered && chunk.token_ids_size() > 0) ++tokens_meanwhile;
    }
  });
  ape::v1::GenerateResponse reply;
  const grpc::Status status = Generate(request, reply);
  answered = true;
  const int meanwhile = tokens_meanwhile;
  stream.context.TryCancel();
  reader.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(reply.usage().prompt_tokens(), 900);
  // Not frozen while the prompt was computed (one step for all of it would give 1).
  EXPECT_GE(meanwhile, 30) << "stream tokens while the prompt was prefilled";
}

TEST_F(BatchingTest, ACancelledRequestLeavesTheBatchAndTheOthersFinish) {
  LongStream cancelled(*clients_->generation, 2000);
  LongStream kept(*clients_->generation, 50);
  ape::v1::GenerateStreamResponse chunk;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cancelled.reader->Read(&chunk));
  ASSERT_TRUE(kept.reader->Read(&chunk));
  cancelled.context.TryCancel();
  while (cancelled.reader->Read(&chunk)) {
  }
  EXPECT_EQ(CodeOf(cancelled.reader->Finish()), absl::StatusCode::kCancelled);
  int tokens = 1;
  bool ended = false;
  while (kept.reader->Read(&chunk)) {
    tokens += chunk.token_ids_size();
    ended = ended || chunk.has_end();
  }
  EXPECT_TRUE(kept.reader->Finish().ok());
  EXPECT_TRUE(ended);
  EXPECT_EQ(tokens, 50);
  for (int i = 0; i < 200 && Stats().cancelled_generations() < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Stats().cancelled_generations(), 1);
  EXPECT_LT(Stats().generated_tokens(), 200) << "the cancelled one stopped at once";
}

using KvBudgetTest = ApiTest;

TEST_F(KvBudgetTest, RequestsWaitTheirTurnForKvAndOneTooLargeIsRefused) {
  // 46,080 bytes of KV a token (float32): a stream of ~45 prompt tokens and 300 new
  // ones reserves ~15 MiB, so two do not fit 24 MiB together.
  constexpr int64_t kBudget = int64_t{24} << 20;
  Start({"--max_running_kv_mib=24"});
  LongStream first(*clients_->generation, 300);
  ape::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(first.reader->Read(&chunk));
  LongStream second(*clients_->generation, 300);
  int64_t most = 0;
  bool second_waited = false;
  int tokens = 1;
  while (first.reader->Read(&chunk)) {
    tokens += chunk.token_ids_size();
    const ape::v1::Load load = Load();
    most = std::max(most, load.running_kv_bytes());
    second_waited = second_waited || (load.running() == 2 && load.running_kv_bytes() > 0);
    EXPECT_EQ(load.max_running_kv_bytes(), kBudget);
  }
  EXPECT_TRUE(first.reader->Finish().ok());
  EXPECT_EQ(tokens, 300);
  EXPECT_GT(most, 0);
  EXPECT_LE(most, kBudget);
  EXPECT_TRUE(second_waited) << "the second was running (admitted) but held no KV";
  int second_tokens = 0;
  while (second.reader->Read(&chunk)) second_tokens += chunk.token_ids_size();
  EXPECT_TRUE(second.reader->Finish().ok());
  EXPECT_EQ(second_tokens, 300);

  // One request that could never fit is refused, naming the flag.
  ape::v1::GenerateRequest large = Greedy("Tell me a long story.", {}, ape::v1::ENCODING_MODE_APE,
                                          /*max_tokens=*/1000);
  ape::v1::GenerateResponse reply;
  const grpc::Status refused = Generate(large, reply);
  EXPECT_EQ(CodeOf(refused), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.error_message(), HasSubstr("--max_running_kv_mib"));
}

}  // namespace
}  // namespace apeserve
