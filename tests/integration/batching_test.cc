// Continuous batching end to end: concurrent requests of every kind share the engine's
// steps and answer exactly as they do alone; prompts are prefilled in chunks between
// the streams' tokens; a cancelled request leaves the batch; the KV budget admits
// requests in turn, and counts the KV that requests share once; documents are
// ingested while answers stream, without stalling them.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
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

// A number field of /proc/<pid>/status (e.g. "VmRSS:" in kB, "Threads:"), -1 if
// unreadable.
int64_t ProcessStatus(pid_t pid, absl::string_view field) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    int64_t value = 0;
    if (absl::StartsWith(line, field) &&
        absl::SimpleAtoi(
            absl::StripAsciiWhitespace(absl::StripSuffix(absl::StripPrefix(line, field), "kB")),
            &value)) {
      return value;
    }
  }
  return -1;
}

// The resident memory of process `pid` in bytes, 0 if unreadable.
int64_t ResidentBytes(pid_t pid) {
  return std::max<int64_t>(ProcessStatus(pid, "VmRSS:"), 0) << 10;
}

TEST_F(BatchingTest, WaitingCallsHoldNoThread) {
  // One request runs at a time; forty streams wait their turn in the queue. A
  // synchronous handler would hold a thread for each.
  Stop();
  Start({"--max_running_requests=1"}, "threads");
  constexpr int kStreams = 40;
  const int64_t before = ProcessStatus(server_->process().pid(), "Threads:");
  ASSERT_GT(before, 0);
  std::vector<std::unique_ptr<LongStream>> streams;
  streams.reserve(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<LongStream>(*clients_->generation, 2000));
  }
  ape::v1::Load load;
  for (int i = 0; i < 600; ++i) {
    load = Load();
    if (load.queued() + load.running() == kStreams) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(load.queued() + load.running(), kStreams) << "every stream reached the server";
  const int64_t during = ProcessStatus(server_->process().pid(), "Threads:");
  EXPECT_LT(during - before, kStreams / 4)
      << before << " threads before, " << during << " with " << kStreams << " open streams";
  for (auto& stream : streams) stream->context.TryCancel();
  for (auto& stream : streams) {
    ape::v1::GenerateStreamResponse chunk;
    while (stream->reader->Read(&chunk)) {
    }
    EXPECT_EQ(stream->reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
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

TEST_F(KvBudgetTest, SixteenRequestsOverTheSameContextsHoldOneCopyOfTheirKv) {
  Start();
  // 16 documents of about 120 tokens each: one copy of their KV is about 90 MB.
  constexpr int kDocuments = 16, kClients = 16, kAnswer = 24;
  std::vector<std::string> ids;
  int64_t context_tokens = 0;
  for (int d = 0; d < kDocuments; ++d) {
    std::string text = absl::StrCat("Ledger ", d, " of the harbour office.");
    for (int line = 0; line < 10; ++line) {
      absl::StrAppend(&text, " On day ", line + 1, " ship ", d * 10 + line, " unloaded ",
                      (d + 3) * (line + 7), " barrels of salt.");
    }
    ape::v1::Context created;
    ASSERT_TRUE(Create(absl::StrCat("ledger-", d), text, {}, &created).ok());
    context_tokens += created.token_count();
    ids.push_back(absl::StrCat("ledger-", d));
  }
  ape::v1::GenerateRequest request =
      Greedy("Which ship unloaded the most salt?", ids, ape::v1::ENCODING_MODE_APE, kAnswer);
  request.mutable_sampling()->set_ignore_eos(true);
  ape::v1::GenerateResponse reply;
  ASSERT_TRUE(Generate(request, reply).ok());  // warms the tiers and the buffers
  const int64_t per_token = 46080;             // float32 KV of the embedded model
  const int64_t one_copy = context_tokens * per_token;
  const int64_t own = (reply.usage().query_tokens() + kAnswer) * per_token;
  const int64_t rss_before = ResidentBytes(server_->process().pid());
  ASSERT_GT(rss_before, 0);

  std::atomic<int> done{0};
  std::vector<std::thread> clients;
  clients.reserve(kClients);
  std::vector<grpc::Status> statuses(kClients);
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      ape::v1::GenerateResponse answer;
      statuses[static_cast<size_t>(c)] = Generate(request, answer);
      ++done;
    });
  }
  int64_t most_kv = 0, most_rss = 0;
  int32_t most_running = 0;
  while (done.load() < kClients) {
    const ape::v1::Load load = Load();
    most_kv = std::max<int64_t>(most_kv, load.running_kv_bytes());
    most_running = std::max(most_running, load.running());
    most_rss = std::max(most_rss, ResidentBytes(server_->process().pid()));
    absl::SleepFor(absl::Milliseconds(5));
  }
  for (std::thread& client : clients) client.join();
  for (const grpc::Status& status : statuses) EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(most_running, 8) << "the requests ran together";
  // The gauge: the contexts once (and the prefix), then each request's own tokens.
  EXPECT_GE(most_kv, one_copy);
  EXPECT_LE(most_kv, one_copy + kClients * own + (int64_t{4} << 20))
      << "one copy is " << (one_copy >> 20) << " MiB, each request's own " << (own >> 10) << " KiB";
  // Sixteen private copies would have added about 1.4 GB.
  EXPECT_LT(most_rss - rss_before, 2 * one_copy)
      << "RSS grew from " << (rss_before >> 20) << " to " << (most_rss >> 20) << " MiB";
}

using IngestionTest = ApiTest;

// A document of about `tokens` tokens, different for each `seed`.
std::string LongDocument(int seed, int tokens) {
  std::string text = absl::StrCat("Report ", seed, " of the river survey.");
  for (int line = 0; line * 22 < tokens; ++line) {  // a line is about 22 tokens
    absl::StrAppend(&text, " At mile ", line + 1, " the survey team ", seed, " counted ",
                    (seed * 37 + line * 11) % 500, " trout and ", (line * 7 + seed) % 90, " eels.");
  }
  return text;
}

// The 99th percentile of `values` (sorted in place).
double Percentile99(std::vector<double>& values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[(values.size() - 1) * 99 / 100];
}

TEST_F(IngestionTest, IngestingDocumentsNeverStallsTheStreams) {
  Start();
  constexpr int kStreams = 4;
  for (int c = 0; c < kStreams; ++c) {
    ASSERT_TRUE(Create(absl::StrCat("note-", c), absl::StrCat("Note ", c, ": the ferry leaves at ",
                                                              c + 6, " in the morning."))
                    .ok());
  }
  // A server in service has ingested before: the first encode's one-off allocations
  // (its attention's buffers grow with the document) are not what this measures.
  ASSERT_TRUE(Create("warm-up", LongDocument(99, 2000)).ok());
  // Clients that ask again as soon as an answer ends, each token's arrival time
  // recorded by answer. An answer (1,500 tokens) outlasts the measurement: a new
  // request's prompt step is not what the bound is about, and it would land in one
  // window and not the other.
  struct Client {
    absl::Mutex mu;
    std::vector<std::vector<absl::Time>> answers ABSL_GUARDED_BY(mu);
    std::unique_ptr<grpc::ClientContext> call ABSL_GUARDED_BY(mu);
    bool stopped ABSL_GUARDED_BY(mu) = false;
  };
  std::vector<Client> clients(kStreams);
  std::vector<std::thread> streams;
  streams.reserve(kStreams);
  for (int c = 0; c < kStreams; ++c) {
    streams.emplace_back([&, c] {
      Client& client = clients[static_cast<size_t>(c)];
      ape::v1::GenerateRequest request =
          Greedy("When does the ferry leave?", {absl::StrCat("note-", c)},
                 ape::v1::ENCODING_MODE_APE, /*max_tokens=*/1500);
      request.mutable_sampling()->set_ignore_eos(true);
      for (;;) {
        grpc::ClientContext* call = nullptr;
        {
          absl::MutexLock lock(&client.mu);
          if (client.stopped) return;
          client.call = std::make_unique<grpc::ClientContext>();
          SetDeadline(*client.call, absl::Seconds(600));
          client.answers.emplace_back();
          call = client.call.get();
        }
        auto reader = clients_->generation->GenerateStream(call, request);
        ape::v1::GenerateStreamResponse chunk;
        while (reader->Read(&chunk)) {
          if (chunk.token_ids_size() == 0) continue;
          absl::MutexLock lock(&client.mu);
          client.answers.back().push_back(absl::Now());
        }
        const grpc::Status status = reader->Finish();
        if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
          ADD_FAILURE() << "stream " << c << " ended: " << status.error_message();
          return;
        }
      }
    });
  }
  // The gaps between an answer's tokens that arrived within [from, to).
  const auto gaps = [&](absl::Time from, absl::Time to) {
    std::vector<double> all;
    for (Client& client : clients) {
      absl::MutexLock lock(&client.mu);
      for (const std::vector<absl::Time>& times : client.answers) {
        for (size_t i = 1; i < times.size(); ++i) {
          if (times[i] >= from && times[i] < to) {
            all.push_back(absl::ToDoubleMilliseconds(times[i] - times[i - 1]));
          }
        }
      }
    }
    return all;
  };
  // However the test ends, the streams are cancelled and joined.
  absl::Cleanup stop_streams = [&] {
    for (Client& client : clients) {
      absl::MutexLock lock(&client.mu);
      client.stopped = true;
      if (client.call != nullptr) client.call->TryCancel();
    }
    for (std::thread& stream : streams) {
      if (stream.joinable()) stream.join();
    }
  };
  absl::SleepFor(absl::Seconds(2));  // all four join the batch
  const absl::Time calm = absl::Now();
  absl::SleepFor(absl::Seconds(10));
  const absl::Time ingest_start = absl::Now();
  std::vector<double> before = gaps(calm, ingest_start);
  ASSERT_GE(before.size(), 20U) << "the streams were running";
  const double p99_before = Percentile99(before);

  // Four documents of about 2,000 tokens: a batch of two, then two one by one.
  std::vector<std::string> texts;
  texts.reserve(4);
  for (int d = 0; d < 4; ++d) texts.push_back(LongDocument(d, 2000));
  int64_t stored_tokens = 0;
  {
    ape::v1::BatchCreateContextsRequest batch;
    for (int d = 0; d < 2; ++d) {
      ape::v1::CreateContextRequest* one = batch.add_contexts();
      one->set_context_id(absl::StrCat("report-", d));
      one->set_text(texts[static_cast<size_t>(d)]);
    }
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(600));
    auto reader = clients_->contexts->BatchCreateContexts(&context, batch);
    ape::v1::BatchCreateContextsResponse progress;
    int answered = 0;
    while (reader->Read(&progress)) {
      EXPECT_TRUE(progress.has_context()) << progress.error().message();
      stored_tokens += progress.context().token_count();
      ++answered;
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(answered, 2);
  }
  for (int d = 2; d < 4; ++d) {
    ape::v1::Context created;
    ASSERT_TRUE(
        Create(absl::StrCat("report-", d), texts[static_cast<size_t>(d)], {}, &created).ok());
    stored_tokens += created.token_count();
  }
  const absl::Time ingest_end = absl::Now();
  std::vector<double> during = gaps(ingest_start, ingest_end);
  std::move(stop_streams).Invoke();

  EXPECT_GE(stored_tokens, 4 * 1800);
  ASSERT_FALSE(during.empty()) << "the streams went on during ingestion";
  const double largest = *std::max_element(during.begin(), during.end());
  const double median_during = [during]() mutable {
    std::sort(during.begin(), during.end());
    return during[during.size() / 2];
  }();
  const double seconds = absl::ToDoubleSeconds(ingest_end - ingest_start);
  const double tokens_per_second = static_cast<double>(stored_tokens) / seconds;
  std::cout << "[ ingest  ] " << stored_tokens << " tokens in " << seconds << " s ("
            << tokens_per_second << " tokens/s) beside " << kStreams
            << " streams; inter-token gap p99 before " << p99_before << " ms, median during "
            << median_during << " ms, largest during " << largest << " ms (" << largest / p99_before
            << "x), " << during.size() << " tokens streamed meanwhile\n";
  RecordProperty("ingest_tokens_per_second", static_cast<int>(tokens_per_second));
  // Issue 24's bound. On two cores the largest gap landed between 1.5x and 3.3x of the
  // p99 before over 10 runs through libtorch's attention; with the prompt kernel between
  // 1.6x and 2.4x over 6 (the median gap during ingestion is about 1.3x the p99 before;
  // the rest is the machine's noise, which one p99 and one maximum amplify). Before
  // this bound the gaps were 80x (4 s).
  EXPECT_LE(largest, 3 * p99_before) << "a stream stalled while documents were encoded";
  EXPECT_GT(Load().encoded_tokens(), 0);

  // Every document is stored, and answers as the same text given inline.
  for (int d = 0; d < 4; ++d) {
    SCOPED_TRACE(::testing::Message() << "report " << d);
    const std::string query =
        absl::StrCat("How many trout did survey team ", d, " count at mile 3?");
    ape::v1::GenerateResponse stored, inline_reply;
    ASSERT_TRUE(Generate(Greedy(query, {absl::StrCat("report-", d)}, ape::v1::ENCODING_MODE_APE,
                                /*max_tokens=*/10),
                         stored)
                    .ok());
    ape::v1::GenerateRequest with_text = Greedy(query, {}, ape::v1::ENCODING_MODE_APE, 10);
    with_text.add_inline_contexts()->set_text(texts[static_cast<size_t>(d)]);
    ASSERT_TRUE(Generate(with_text, inline_reply).ok());
    EXPECT_EQ(
        std::vector<int32_t>(stored.token_ids().begin(), stored.token_ids().end()),
        std::vector<int32_t>(inline_reply.token_ids().begin(), inline_reply.token_ids().end()));
    EXPECT_EQ(stored.usage().context_tokens_store() + stored.usage().context_tokens_host(),
              stored.usage().context_tokens())
        << "served from the tiers, not recomputed";
  }
}

}  // namespace
}  // namespace apeserve
