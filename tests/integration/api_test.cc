// The public API end to end: the real apeserve binary with the embedded model on a
// loopback port and a temporary data directory, driven through generated C++ clients.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "ape/v1/admin.grpc.pb.h"
#include "ape/v1/context.grpc.pb.h"
#include "ape/v1/generation.grpc.pb.h"
#include "cache/store.h"
#include "cache/store_keys.h"
#include "rocksdb/db.h"
#include "tests/integration/api_fixture.h"
#include "tests/util/running_server.h"
#include "tests/util/temp_dir.h"

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

TEST_F(ApiTest, ContextsAreCreatedListedReadRelabelledAndDeleted) {
  Start();
  ape::v1::Context goats;
  ASSERT_TRUE(Create("goats", kGoats, {{"topic", "farm"}}, &goats).ok());
  EXPECT_EQ(goats.namespace_(), "default");
  EXPECT_EQ(goats.context_id(), "goats");
  EXPECT_GT(goats.token_count(), 20);
  EXPECT_EQ(goats.kv_state(), ape::v1::KV_STATE_STORED);
  EXPECT_EQ(goats.content_hash().size(), 32);
  EXPECT_GT(goats.create_time().seconds(), 0);
  EXPECT_TRUE(goats.text().empty());
  ASSERT_TRUE(Create("bridge", kBridge, {{"topic", "history"}}).ok());
  ape::v1::Context generated;
  ASSERT_TRUE(Create("", kBees, {{"topic", "farm"}}, &generated).ok());
  EXPECT_EQ(generated.context_id().size(), 16) << "an id is generated when none is given";

  // Get, with and without the text.
  {
    ape::v1::GetContextRequest request;
    request.set_context_id("goats");
    request.set_include_text(true);
    grpc::ClientContext context;
    ape::v1::Context reply;
    ASSERT_TRUE(clients_->contexts->GetContext(&context, request, &reply).ok());
    EXPECT_EQ(reply.text(), kGoats);
    EXPECT_EQ(reply.token_count(), goats.token_count());
    EXPECT_EQ(reply.labels().at("topic"), "farm");
  }
  // List: one per page, in id order, to the last page; then with a label filter.
  std::vector<std::string> ids;
  ape::v1::ListContextsRequest list;
  list.set_page_size(1);
  for (int pages = 0; pages < 10; ++pages) {
    grpc::ClientContext context;
    ape::v1::ListContextsResponse page;
    ASSERT_TRUE(clients_->contexts->ListContexts(&context, list, &page).ok());
    for (const ape::v1::Context& entry : page.contexts()) ids.push_back(entry.context_id());
    if (page.next_page_token().empty()) break;
    list.set_page_token(page.next_page_token());
  }
  std::vector<std::string> expected = {"bridge", generated.context_id(), "goats"};
  std::sort(expected.begin(), expected.end());  // bytewise id order
  EXPECT_EQ(ids, expected);
  {
    ape::v1::ListContextsRequest filtered;
    (*filtered.mutable_label_filter())["topic"] = "farm";
    grpc::ClientContext context;
    ape::v1::ListContextsResponse page;
    ASSERT_TRUE(clients_->contexts->ListContexts(&context, filtered, &page).ok());
    ASSERT_EQ(page.contexts_size(), 2);
    EXPECT_EQ(page.contexts(0).context_id(),
              std::min<std::string>(generated.context_id(), "goats"));
    EXPECT_EQ(page.contexts(1).context_id(),
              std::max<std::string>(generated.context_id(), "goats"));
    EXPECT_TRUE(page.next_page_token().empty());
  }
  // Update the labels through a field mask; other paths are refused by name.
  {
    ape::v1::UpdateContextRequest request;
    request.mutable_context()->set_context_id("goats");
    (*request.mutable_context()->mutable_labels())["topic"] = "animals";
    request.mutable_update_mask()->add_paths("labels");
    grpc::ClientContext context;
    ape::v1::Context reply;
    ASSERT_TRUE(clients_->contexts->UpdateContext(&context, request, &reply).ok());
    EXPECT_EQ(reply.labels().at("topic"), "animals");
    EXPECT_EQ(reply.content_hash(), goats.content_hash());
    request.mutable_update_mask()->add_paths("text");
    grpc::ClientContext refused;
    const grpc::Status status = clients_->contexts->UpdateContext(&refused, request, &reply);
    EXPECT_EQ(CodeOf(status), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.error_message(), HasSubstr("'text'"));
  }
  // Delete is idempotent.
  for (const bool existed : {true, false}) {
    ape::v1::DeleteContextRequest request;
    request.set_context_id("bridge");
    grpc::ClientContext context;
    ape::v1::DeleteContextResponse reply;
    ASSERT_TRUE(clients_->contexts->DeleteContext(&context, request, &reply).ok());
    EXPECT_EQ(reply.existed(), existed);
  }
  {
    ape::v1::GetContextRequest request;
    request.set_context_id("bridge");
    grpc::ClientContext context;
    ape::v1::Context reply;
    const grpc::Status status = clients_->contexts->GetContext(&context, request, &reply);
    EXPECT_EQ(CodeOf(status), absl::StatusCode::kNotFound);
    EXPECT_THAT(status.error_message(), HasSubstr("bridge"));
  }
  // Bad input names the field.
  EXPECT_EQ(CodeOf(Create("empty", "")), absl::StatusCode::kInvalidArgument);
  const grpc::Status bad_namespace = Create("x", "text", {}, nullptr, "no spaces allowed");
  EXPECT_EQ(CodeOf(bad_namespace), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_namespace.error_message(), HasSubstr("namespace"));
  // Namespaces are separate: the same id elsewhere is another context.
  ASSERT_TRUE(Create("goats", kBees, {}, nullptr, "other").ok());
  ape::v1::GetContextRequest request;
  request.set_context_id("goats");
  grpc::ClientContext context;
  ape::v1::Context reply;
  ASSERT_TRUE(clients_->contexts->GetContext(&context, request, &reply).ok());
  EXPECT_EQ(reply.content_hash(), goats.content_hash());
}

TEST_F(ApiTest, APinnedContextKeepsItsKvUnderEvictionPressure) {
  // 4 MiB of stored KV hold about three of these contexts (45 KiB of KV per token). No
  // host tier: every load reads the store (or rebuilds), not what ingestion wrote through.
  Start({"--stored_kv_mib=4", "--host_cache_mib=0"});
  ape::v1::CreateContextRequest pinned;
  pinned.set_context_id("pinned");
  pinned.set_text(kGoats);
  pinned.set_pinned(true);
  {
    grpc::ClientContext context;
    ape::v1::Context reply;
    ASSERT_TRUE(clients_->contexts->CreateContext(&context, pinned, &reply).ok());
    EXPECT_TRUE(reply.pinned());
  }
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(Create(absl::StrCat("filler-", i), absl::StrCat(kGoats, " Filler ", i, ".")).ok());
  }
  const auto kv_state = [&](const std::string& id) {
    ape::v1::GetContextRequest request;
    request.set_context_id(id);
    grpc::ClientContext context;
    ape::v1::Context reply;
    EXPECT_TRUE(clients_->contexts->GetContext(&context, request, &reply).ok());
    return reply.kv_state();
  };
  EXPECT_EQ(kv_state("pinned"), ape::v1::KV_STATE_STORED);
  EXPECT_EQ(kv_state("filler-0"), ape::v1::KV_STATE_EVICTED);
  EXPECT_EQ(kv_state("filler-5"), ape::v1::KV_STATE_STORED);
  EXPECT_EQ(Stats().pinned_contents(), 1);
  ape::v1::GenerateResponse reply;
  ASSERT_TRUE(
      Generate(Greedy("How many goats?", {"pinned"}, ape::v1::ENCODING_MODE_APE, 4), reply).ok());
  EXPECT_EQ(reply.usage().context_tokens_store(), reply.usage().context_tokens());
  // An evicted context is rebuilt from its stored tokens.
  ASSERT_TRUE(
      Generate(Greedy("How many goats?", {"filler-0"}, ape::v1::ENCODING_MODE_APE, 4), reply).ok());
  EXPECT_EQ(reply.usage().context_tokens_recomputed(), reply.usage().context_tokens());

  // Unpinned later through an update.
  ape::v1::UpdateContextRequest update;
  update.mutable_context()->set_context_id("pinned");
  update.mutable_context()->set_pinned(false);
  update.mutable_update_mask()->add_paths("pinned");
  grpc::ClientContext context;
  ape::v1::Context updated;
  ASSERT_TRUE(clients_->contexts->UpdateContext(&context, update, &updated).ok());
  EXPECT_FALSE(updated.pinned());
  EXPECT_EQ(Stats().pinned_contents(), 0);
}

TEST_F(ApiTest, AContextWithATimeToLiveExpiresWithItsKv) {
  Start();
  ape::v1::CreateContextRequest request;
  request.set_context_id("brief");
  request.set_text(kBees);
  request.mutable_ttl()->set_seconds(1);
  ape::v1::Context created;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(clients_->contexts->CreateContext(&context, request, &created).ok());
  }
  ASSERT_TRUE(created.has_expire_time());
  EXPECT_NEAR(created.expire_time().seconds(), absl::ToUnixSeconds(absl::Now()) + 1, 2);
  ASSERT_TRUE(Create("lasting", kGoats).ok());
  // A time-to-live given later, then taken back.
  {
    ape::v1::UpdateContextRequest update;
    update.mutable_context()->set_context_id("lasting");
    update.mutable_context()->mutable_ttl()->set_seconds(1);
    update.mutable_update_mask()->add_paths("ttl");
    grpc::ClientContext context;
    ape::v1::Context reply;
    ASSERT_TRUE(clients_->contexts->UpdateContext(&context, update, &reply).ok());
    EXPECT_TRUE(reply.has_expire_time());
    update.mutable_context()->clear_expiration();
    update.mutable_update_mask()->set_paths(0, "expire_time");
    grpc::ClientContext again;
    ASSERT_TRUE(clients_->contexts->UpdateContext(&again, update, &reply).ok());
    EXPECT_FALSE(reply.has_expire_time());
  }
  absl::SleepFor(absl::Milliseconds(1500));
  ape::v1::GenerateResponse reply;
  const grpc::Status gone =
      Generate(Greedy("Who keeps bees?", {"brief"}, ape::v1::ENCODING_MODE_APE, 4), reply);
  EXPECT_EQ(CodeOf(gone), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.error_message(), HasSubstr("brief"));
  // The sweeper deletes it, KV included, within a second or so.
  for (int i = 0; i < 100 && Stats().contexts_expired() < 1; ++i)
    absl::SleepFor(absl::Milliseconds(50));
  const ape::v1::Stats stats = Stats();
  EXPECT_EQ(stats.contexts_expired(), 1);
  EXPECT_EQ(stats.store_tier().entries(), 1);
  ASSERT_TRUE(
      Generate(Greedy("How many goats?", {"lasting"}, ape::v1::ENCODING_MODE_APE, 4), reply).ok());
  // A negative time-to-live is refused by name.
  request.mutable_ttl()->set_seconds(-5);
  grpc::ClientContext context;
  ape::v1::Context refused;
  const grpc::Status status = clients_->contexts->CreateContext(&context, request, &refused);
  EXPECT_EQ(CodeOf(status), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.error_message(), HasSubstr("ttl"));
}

TEST_F(ApiTest, UploadsInChunksAndIngestsBatchesWithPerContextResults) {
  Start();
  const std::string text = absl::StrCat(kGoats, " ", kBridge, " ", kBees);
  {
    grpc::ClientContext context;
    ape::v1::Context reply;
    auto writer = clients_->contexts->UploadContext(&context, &reply);
    ape::v1::UploadContextRequest message;
    message.mutable_metadata()->set_context_id("uploaded");
    ASSERT_TRUE(writer->Write(message));
    for (size_t at = 0; at < text.size(); at += 7) {
      message.set_text_chunk(text.substr(at, 7));
      ASSERT_TRUE(writer->Write(message));
    }
    ASSERT_TRUE(writer->WritesDone());
    ASSERT_TRUE(writer->Finish().ok());
    ape::v1::Context whole;
    ASSERT_TRUE(Create("whole", text, {}, &whole).ok());
    EXPECT_EQ(reply.content_hash(), whole.content_hash()) << "chunks joined in order";
    EXPECT_EQ(reply.token_count(), whole.token_count());
  }
  {
    // An upload that starts with text is refused.
    grpc::ClientContext context;
    ape::v1::Context reply;
    auto writer = clients_->contexts->UploadContext(&context, &reply);
    ape::v1::UploadContextRequest message;
    message.set_text_chunk("no metadata first");
    writer->Write(message);
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    EXPECT_EQ(CodeOf(status), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.error_message(), HasSubstr("metadata"));
  }
  ape::v1::BatchCreateContextsRequest batch;
  for (const auto& [id, body] :
       std::vector<std::pair<std::string, std::string>>{{"b1", text}, {"b2", ""}, {"b3", kBees}}) {
    ape::v1::CreateContextRequest* create = batch.add_contexts();
    create->set_context_id(id);
    create->set_text(body);
  }
  grpc::ClientContext context;
  auto reader = clients_->contexts->BatchCreateContexts(&context, batch);
  std::vector<ape::v1::BatchCreateContextsResponse> replies;
  ape::v1::BatchCreateContextsResponse reply;
  while (reader->Read(&reply)) replies.push_back(reply);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(replies.size(), 3);
  EXPECT_TRUE(replies[0].has_context());
  EXPECT_EQ(replies[1].error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(replies[2].context().context_id(), "b3");
  EXPECT_EQ(replies[2].done(), 3);
  EXPECT_EQ(replies[2].total(), 3);
  EXPECT_EQ(replies[2].tokens_stored(),
            replies[0].context().token_count() + replies[2].context().token_count());
  // "whole" and b1 found the uploaded text's KV already stored.
  const ape::v1::Stats stats = Stats();
  EXPECT_EQ(stats.contexts_stored(), 4);
  EXPECT_EQ(stats.kv_shared(), 2);
}

TEST_F(ApiTest, ApeWithOneContextAtUnitTemperatureAndScaleAnswersAsSequential) {
  Start();
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ape::v1::GenerateResponse sequential, ape;
  ASSERT_TRUE(Generate(Greedy("How many goats does Martha keep?", {"goats"},
                              ape::v1::ENCODING_MODE_SEQUENTIAL, 16),
                       sequential)
                  .ok());
  ape::v1::GenerateRequest request =
      Greedy("How many goats does Martha keep?", {"goats"}, ape::v1::ENCODING_MODE_APE, 16);
  request.mutable_ape()->set_temperature(1);
  request.mutable_ape()->set_scale(1);
  ASSERT_TRUE(Generate(request, ape).ok());
  ASSERT_GT(sequential.token_ids_size(), 0);
  EXPECT_EQ(std::vector<int32_t>(ape.token_ids().begin(), ape.token_ids().end()),
            std::vector<int32_t>(sequential.token_ids().begin(), sequential.token_ids().end()));
  EXPECT_EQ(ape.text(), sequential.text());
  // SEQUENTIAL recomputes the context; APE loads it from the store.
  EXPECT_EQ(sequential.usage().context_tokens_recomputed(), sequential.usage().context_tokens());
  EXPECT_EQ(ape.usage().context_tokens_store() + ape.usage().context_tokens_host(),
            ape.usage().context_tokens());
  EXPECT_EQ(ape.usage().prompt_tokens(), sequential.usage().prompt_tokens())
      << "one context: both modes place it the same";
}

TEST_F(ApiTest, InlineContextsAnswerAsTheSameContextsStored) {
  Start();
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ASSERT_TRUE(Create("bridge", kBridge).ok());
  for (const ape::v1::EncodingMode mode :
       {ape::v1::ENCODING_MODE_APE, ape::v1::ENCODING_MODE_SEQUENTIAL}) {
    ape::v1::GenerateResponse stored, inline_reply;
    ASSERT_TRUE(
        Generate(Greedy("When was the bridge built?", {"goats", "bridge"}, mode), stored).ok());
    ape::v1::GenerateRequest request = Greedy("When was the bridge built?", {}, mode);
    request.add_inline_contexts()->set_text(kGoats);
    request.add_inline_contexts()->set_text(kBridge);
    ASSERT_TRUE(Generate(request, inline_reply).ok());
    EXPECT_EQ(inline_reply.text(), stored.text()) << ape::v1::EncodingMode_Name(mode);
    EXPECT_EQ(inline_reply.usage().context_tokens_recomputed(),
              inline_reply.usage().context_tokens());
  }
  // An inline context stored with the request can be named afterwards.
  ape::v1::GenerateRequest request = Greedy("Who keeps bees?", {}, ape::v1::ENCODING_MODE_APE);
  ape::v1::InlineContext* bees = request.add_inline_contexts();
  bees->set_text(kBees);
  bees->set_store(true);
  bees->set_context_id("bees");
  ape::v1::GenerateResponse first, second;
  ASSERT_TRUE(Generate(request, first).ok());
  EXPECT_THAT(first.stored_context_ids(), ::testing::ElementsAre("bees"));
  ASSERT_TRUE(
      Generate(Greedy("Who keeps bees?", {"bees"}, ape::v1::ENCODING_MODE_APE), second).ok());
  EXPECT_EQ(second.text(), first.text());
  EXPECT_EQ(second.usage().context_tokens_recomputed(), 0);
}

TEST_F(ApiTest, StreamsTheSameAnswerTokenByTokenAndReportsUsageOnce) {
  Start();
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ASSERT_TRUE(Create("bees", kBees).ok());
  ape::v1::GenerateRequest request =
      Greedy("Who keeps bees?", {"goats", "bees"}, ape::v1::ENCODING_MODE_APE, 20);
  request.set_request_id("stream-1");
  request.set_top_logprobs(3);
  ape::v1::GenerateResponse unary;
  ASSERT_TRUE(Generate(request, unary).ok());
  EXPECT_EQ(unary.request_id(), "stream-1");
  ASSERT_EQ(unary.logprobs_size(), unary.token_ids_size());
  EXPECT_EQ(unary.logprobs(0).top_size(), 3);
  EXPECT_EQ(unary.logprobs(0).top(0).token_id(), unary.token_ids(0)) << "greedy takes the top";

  grpc::ClientContext context;
  SetDeadline(context);
  auto reader = clients_->generation->GenerateStream(&context, request);
  std::string text;
  std::vector<int32_t> tokens;
  int ends = 0;
  ape::v1::StreamEnd end;
  ape::v1::GenerateStreamResponse chunk;
  while (reader->Read(&chunk)) {
    EXPECT_EQ(chunk.request_id(), "stream-1");
    EXPECT_EQ(ends, 0) << "nothing follows the end";
    text += chunk.text();
    tokens.insert(tokens.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (chunk.has_end()) {
      ++ends;
      end = chunk.end();
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(text, unary.text());
  EXPECT_EQ(tokens, std::vector<int32_t>(unary.token_ids().begin(), unary.token_ids().end()));
  EXPECT_EQ(end.finish_reason(), unary.finish_reason());
  EXPECT_EQ(end.usage().generated_tokens(), unary.token_ids_size());
  // Both found the KV in host memory: ingestion wrote it through.
  EXPECT_EQ(unary.usage().context_tokens_host(), unary.usage().context_tokens());
  EXPECT_EQ(end.usage().context_tokens_host(), end.usage().context_tokens());
  EXPECT_GT(end.timings().time_to_first_token_ms(), 0);
  EXPECT_GE(end.timings().total_ms(), end.timings().time_to_first_token_ms());
}

TEST_F(ApiTest, ScoresEveryContinuationPerTokenAndSummed) {
  Start();
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ape::v1::ScoreRequest request;
  request.set_request_id("score-1");
  request.add_context_ids("goats");
  request.set_query("How many goats does Martha keep?");
  request.add_continuations("Martha keeps forty goats.");
  request.add_continuations("Martha keeps three cats.");
  grpc::ClientContext context;
  SetDeadline(context);
  ape::v1::ScoreResponse reply;
  ASSERT_TRUE(clients_->generation->Score(&context, request, &reply).ok());
  EXPECT_EQ(reply.request_id(), "score-1");
  ASSERT_EQ(reply.scores_size(), 2);
  for (const ape::v1::ContinuationScore& score : reply.scores()) {
    ASSERT_EQ(score.token_logprobs_size(), score.token_ids_size());
    double sum = 0;
    for (const float logprob : score.token_logprobs()) {
      EXPECT_LE(logprob, 0);
      sum += logprob;
    }
    EXPECT_NEAR(score.total_logprob(), sum, 1e-3);
  }
  // The context makes the true answer the likelier one.
  EXPECT_GT(reply.scores(0).total_logprob(), reply.scores(1).total_logprob());
  EXPECT_EQ(reply.usage().generated_tokens(),
            reply.scores(0).token_ids_size() + reply.scores(1).token_ids_size());

  // A greedy answer scores as greedy.
  ape::v1::GenerateResponse answer;
  ASSERT_TRUE(
      Generate(Greedy(request.query(), {"goats"}, ape::v1::ENCODING_MODE_APE, 8), answer).ok());
  ape::v1::ScoreRequest own = request;
  own.clear_continuations();
  own.add_continuations(answer.text());
  grpc::ClientContext again;
  ASSERT_TRUE(clients_->generation->Score(&again, own, &reply).ok());
  EXPECT_TRUE(reply.scores(0).greedy()) << answer.text();
}

TEST_F(ApiTest, RefusesBadRequestsWithTheRightCodeNamingTheField) {
  Start({"--max_contexts_per_request=2", "--max_new_tokens=64"});
  ASSERT_TRUE(Create("goats", kGoats).ok());
  const auto expect = [&](const ape::v1::GenerateRequest& request, absl::StatusCode code,
                          const std::string& words) {
    ape::v1::GenerateResponse reply;
    const grpc::Status status = Generate(request, reply);
    EXPECT_EQ(CodeOf(status), code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(words));
  };
  const ape::v1::GenerateRequest good = Greedy("Who?", {"goats"}, ape::v1::ENCODING_MODE_APE);
  ape::v1::GenerateRequest request = good;
  request.clear_query();
  expect(request, absl::StatusCode::kInvalidArgument, "query");
  request = Greedy("Who?", {"goats", "nope", "goats"}, ape::v1::ENCODING_MODE_APE);
  expect(request, absl::StatusCode::kInvalidArgument, "--max_contexts_per_request");
  request = Greedy("Who?", {"missing-1", "missing-2"}, ape::v1::ENCODING_MODE_PARALLEL);
  expect(request, absl::StatusCode::kNotFound, "missing-1, missing-2");
  request = good;
  request.mutable_sampling()->set_temperature(-1);
  expect(request, absl::StatusCode::kInvalidArgument, "sampling: temperature");
  request = good;
  request.mutable_sampling()->set_top_p(0);
  expect(request, absl::StatusCode::kInvalidArgument, "top_p");
  request = good;
  request.mutable_sampling()->set_max_tokens(65);
  expect(request, absl::StatusCode::kInvalidArgument, "--max_new_tokens");
  request = good;
  request.mutable_ape()->set_temperature(0);
  expect(request, absl::StatusCode::kInvalidArgument, "ape: temperature");
  request = good;
  request.mutable_ape()->set_scale(17);
  expect(request, absl::StatusCode::kInvalidArgument, "ape: scale");
  request = good;
  request.add_context_ids(std::string(600, 'x'));
  expect(request, absl::StatusCode::kInvalidArgument, "context_ids[1]");
  request = good;
  request.set_top_logprobs(21);
  expect(request, absl::StatusCode::kInvalidArgument, "top_logprobs");

  // Nothing of that harmed the server: a good request still answers.
  ape::v1::GenerateResponse reply;
  EXPECT_TRUE(Generate(good, reply).ok());
}

TEST_F(ApiTest, CountsThePromptAsTheModeDoesAndRefusesWhatPassesTheWindow) {
  Start();
  // Three contexts of ~3000 tokens each (one text: its KV is encoded once and shared).
  std::string long_text;
  while (long_text.size() < 12000) absl::StrAppend(&long_text, kBridge, " ", kGoats, " ");
  ape::v1::Context stored;
  ASSERT_TRUE(Create("long-1", long_text, {}, &stored).ok());
  ASSERT_TRUE(Create("long-2", long_text).ok());
  ASSERT_TRUE(Create("long-3", long_text).ok());
  ASSERT_GT(3 * stored.token_count(), 8192) << "the three must pass the window one after another";
  ASSERT_LT(stored.token_count(), 4000);
  EXPECT_EQ(Stats().kv_shared(), 2);

  ape::v1::GenerateResponse reply;
  ape::v1::GenerateRequest too_long =
      Greedy("When?", {"long-1", "long-2", "long-3"}, ape::v1::ENCODING_MODE_SEQUENTIAL, 2);
  ape::v1::InlineContext* kept = too_long.add_inline_contexts();
  kept->set_text(kBees);
  kept->set_store(true);
  kept->set_context_id("never-stored");
  const grpc::Status sequential = Generate(too_long, reply);
  EXPECT_EQ(CodeOf(sequential), absl::StatusCode::kOutOfRange);
  {
    // A refused request stores none of its inline contexts.
    ape::v1::GetContextRequest get;
    get.set_context_id("never-stored");
    grpc::ClientContext context;
    ape::v1::Context missing;
    EXPECT_EQ(CodeOf(clients_->contexts->GetContext(&context, get, &missing)),
              absl::StatusCode::kNotFound);
  }
  EXPECT_THAT(sequential.error_message(), HasSubstr("one after the other"));
  EXPECT_THAT(sequential.error_message(), HasSubstr("8192"));
  // APE places them side by side: the same three fit.
  ASSERT_TRUE(
      Generate(Greedy("When?", {"long-1", "long-2", "long-3"}, ape::v1::ENCODING_MODE_APE, 2),
               reply)
          .ok());
  EXPECT_EQ(reply.usage().context_tokens(), 3 * stored.token_count());
  EXPECT_LT(reply.usage().prompt_tokens(), stored.token_count() + 100);
}

TEST_F(ApiTest, ARestartServesEveryStoredContextWithoutEncodingAgain) {
  const std::string data_dir = dir_.Join("restart");
  Start({}, "first", data_dir);
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ASSERT_TRUE(Create("bees", kBees).ok());
  ape::v1::GenerateResponse before;
  ASSERT_TRUE(
      Generate(Greedy("Who keeps bees?", {"goats", "bees"}, ape::v1::ENCODING_MODE_APE), before)
          .ok());
  Stop();

  Start({}, "second", data_dir);
  ape::v1::GenerateResponse after;
  ASSERT_TRUE(
      Generate(Greedy("Who keeps bees?", {"goats", "bees"}, ape::v1::ENCODING_MODE_APE), after)
          .ok());
  EXPECT_EQ(after.text(), before.text());
  EXPECT_EQ(after.usage().context_tokens_store(), after.usage().context_tokens());
  EXPECT_EQ(after.usage().context_tokens_recomputed(), 0);
  const ape::v1::Stats stats = Stats();
  EXPECT_EQ(stats.kv_rebuilds(), 0);
  EXPECT_EQ(stats.store_tier().entries(), 2);
  Stop();
}

TEST_F(ApiTest, AnUnreadableContextRecordIsDataLossAndHarmsNothingElse) {
  const std::string data_dir = dir_.Join("damaged");
  Start({}, "before", data_dir);
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ASSERT_TRUE(Create("bees", kBees).ok());
  Stop();
  {
    // The record of "goats" overwritten with bytes that are not a record.
    auto store = cache::Store::Open({.path = data_dir, .create_if_missing = false});
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)
                    ->db()
                    .Put(rocksdb::WriteOptions(), (*store)->docs(),
                         cache::ContextKey("default", "goats"), "not a record")
                    .ok());
  }
  Start({}, "after", data_dir);
  ape::v1::GetContextRequest get;
  get.set_context_id("goats");
  grpc::ClientContext context;
  ape::v1::Context reply;
  const grpc::Status status = clients_->contexts->GetContext(&context, get, &reply);
  EXPECT_EQ(CodeOf(status), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.error_message(), HasSubstr("goats"));
  ape::v1::GenerateResponse answer;
  EXPECT_EQ(CodeOf(Generate(Greedy("Who?", {"goats"}, ape::v1::ENCODING_MODE_APE, 2), answer)),
            absl::StatusCode::kDataLoss);
  // The rest of the namespace still serves and lists; the damaged one can be deleted.
  ASSERT_TRUE(
      Generate(Greedy("Who keeps bees?", {"bees"}, ape::v1::ENCODING_MODE_APE, 4), answer).ok());
  {
    grpc::ClientContext list_context;
    ape::v1::ListContextsResponse page;
    ASSERT_TRUE(clients_->contexts->ListContexts(&list_context, {}, &page).ok());
    ASSERT_EQ(page.contexts_size(), 1);
    EXPECT_EQ(page.contexts(0).context_id(), "bees");
  }
  ape::v1::DeleteContextRequest remove;
  remove.set_context_id("goats");
  grpc::ClientContext delete_context;
  ape::v1::DeleteContextResponse removed;
  ASSERT_TRUE(clients_->contexts->DeleteContext(&delete_context, remove, &removed).ok());
  EXPECT_TRUE(removed.existed());
  ASSERT_TRUE(Create("goats", kGoats).ok()) << "the id can be stored again";
  Stop();
}

TEST_F(ApiTest, SixteenConcurrentStreamsAllAnswerAsTheyWouldAlone) {
  Start();
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ASSERT_TRUE(Create("bees", kBees).ok());
  ASSERT_TRUE(Create("bridge", kBridge).ok());
  const std::vector<std::string> questions = {"Who keeps bees?", "How many goats are there?",
                                              "When was the bridge built?", "What won a prize?"};
  std::vector<std::string> alone;
  for (const std::string& question : questions) {
    ape::v1::GenerateResponse reply;
    ASSERT_TRUE(
        Generate(Greedy(question, {"goats", "bees", "bridge"}, ape::v1::ENCODING_MODE_APE), reply)
            .ok());
    alone.push_back(reply.text());
  }
  constexpr int kClients = 16;
  std::vector<std::string> texts(kClients);
  std::vector<grpc::Status> statuses(kClients);
  std::vector<std::thread> threads;
  threads.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      SetDeadline(context, absl::Seconds(300));
      auto reader = clients_->generation->GenerateStream(
          &context, Greedy(questions[i % questions.size()], {"goats", "bees", "bridge"},
                           ape::v1::ENCODING_MODE_APE));
      ape::v1::GenerateStreamResponse chunk;
      while (reader->Read(&chunk)) texts[i] += chunk.text();
      statuses[i] = reader->Finish();
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(texts[i], alone[i % questions.size()]) << i;
  }
  // The scheduler counts a task out right after its last step, which sent the answer.
  for (int i = 0; i < 50 && Load().running() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  const ape::v1::Load load = Load();
  EXPECT_EQ(load.queued(), 0);
  EXPECT_EQ(load.running(), 0);
}

TEST_F(ApiTest, AFullQueueRefusesWithResourceExhaustedAndNothingElseFails) {
  Start({"--max_running_requests=1", "--max_queued_requests=1"});
  LongStream running(*clients_->generation, 60);
  ape::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(running.reader->Read(&chunk));
  LongStream queued(*clients_->generation, 4);
  // Wait until the second waits in the queue.
  for (int i = 0; i < 200 && Load().queued() < 1; ++i) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_EQ(Load().queued(), 1);
  ape::v1::GenerateResponse reply;
  const grpc::Status refused = Generate(Greedy("Who?", {}, ape::v1::ENCODING_MODE_APE), reply);
  EXPECT_EQ(CodeOf(refused), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.error_message(), HasSubstr("--max_queued_requests"));
  int chunks = 1;
  while (running.reader->Read(&chunk)) ++chunks;
  EXPECT_TRUE(running.reader->Finish().ok());
  EXPECT_EQ(chunks, 61);  // 60 tokens and the end
  while (queued.reader->Read(&chunk)) {
  }
  EXPECT_TRUE(queued.reader->Finish().ok());
}

TEST_F(ApiTest, ACancelledStreamStopsGeneratingAtOnce) {
  Start();
  LongStream stream(*clients_->generation, 2000);
  ape::v1::GenerateStreamResponse chunk;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream.reader->Read(&chunk));
  stream.context.TryCancel();
  while (stream.reader->Read(&chunk)) {
  }
  EXPECT_EQ(CodeOf(stream.reader->Finish()), absl::StatusCode::kCancelled);
  for (int i = 0; i < 200 && Stats().cancelled_generations() < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const ape::v1::Stats stopped = Stats();
  EXPECT_EQ(stopped.cancelled_generations(), 1);
  EXPECT_LT(stopped.generated_tokens(), 100) << "stopped within a few steps of the cancel";
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Stats().generated_tokens(), stopped.generated_tokens()) << "and stays stopped";
  EXPECT_EQ(Load().running(), 0);

  // A deadline is honoured the same way, between tokens.
  ape::v1::GenerateRequest request;
  request.set_query("Tell me a very long story about goats.");
  request.mutable_sampling()->set_max_tokens(2000);
  request.mutable_sampling()->set_ignore_eos(true);
  ape::v1::GenerateResponse reply;
  const grpc::Status late = Generate(request, reply, absl::Milliseconds(800));
  EXPECT_EQ(CodeOf(late), absl::StatusCode::kDeadlineExceeded);
  for (int i = 0; i < 200 && Stats().cancelled_generations() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Stats().cancelled_generations(), 2);
}

TEST_F(ApiTest, SigtermLetsARunningStreamFinishAndExitsZero) {
  Start({"--shutdown_grace=60s"});
  LongStream stream(*clients_->generation, 40);
  ape::v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(stream.reader->Read(&chunk));
  server_->process().Signal(SIGTERM);
  int chunks = 1;
  while (stream.reader->Read(&chunk)) ++chunks;
  EXPECT_TRUE(stream.reader->Finish().ok());
  EXPECT_EQ(chunks, 41);
  EXPECT_EQ(server_->process().Wait(absl::Seconds(60)), std::optional<int>(0)) << server_->Stderr();
  EXPECT_THAT(server_->Stderr(), HasSubstr("call=GenerateStream"));
}

TEST_F(ApiTest, ServesPrometheusMetricsAndJsonLogs) {
  Start({"--log_format=json"});
  ape::v1::ServerInfo info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(clients_->admin->GetServerInfo(&context, {}, &info).ok());
  }
  ASSERT_FALSE(info.metrics_address().empty());
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ape::v1::GenerateRequest request = Greedy("Who?", {"goats"}, ape::v1::ENCODING_MODE_APE, 3);
  request.set_request_id("json-1");
  ape::v1::GenerateResponse reply;
  ASSERT_TRUE(Generate(request, reply).ok());

  const size_t colon = info.metrics_address().rfind(':');
  httplib::Client http(info.metrics_address().substr(0, colon),
                       std::stoi(info.metrics_address().substr(colon + 1)));
  const httplib::Result scrape = http.Get("/metrics");
  ASSERT_TRUE(scrape) << httplib::to_string(scrape.error());
  EXPECT_EQ(scrape->status, 200);
  EXPECT_THAT(scrape->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  const std::string& metrics = scrape->body;
  EXPECT_THAT(metrics, HasSubstr("apeserve_requests_total{method=\"Generate\",code=\"OK\"} 1\n"));
  EXPECT_THAT(metrics,
              HasSubstr("apeserve_requests_total{method=\"CreateContext\",code=\"OK\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("apeserve_time_to_first_token_seconds_count{mode=\"ape\"} 1\n"));
  EXPECT_THAT(
      metrics,
      HasSubstr("apeserve_request_duration_seconds_bucket{method=\"Generate\",le=\"+Inf\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("apeserve_generated_tokens_total 3\n"));
  EXPECT_THAT(metrics, HasSubstr("apeserve_kv_entries{tier=\"store\"} 1\n"));
  // The context's KV was written through to the host tier when it was stored.
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat("apeserve_context_tokens_total{source=\"host\"} ",
                                              reply.usage().context_tokens(), "\n")));
  EXPECT_THAT(metrics, HasSubstr("# TYPE apeserve_ingest_queued_requests gauge\n"));
  EXPECT_THAT(metrics, HasSubstr("apeserve_ingesting_requests 0\n"));
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat("apeserve_encoded_tokens_total ",
                                              reply.usage().context_tokens(), "\n")));
  EXPECT_THAT(metrics, HasSubstr("# TYPE apeserve_queued_requests gauge\n"));
  EXPECT_EQ(http.Get("/nothing-here")->status, 404);
  Stop();

  // Every log line is one JSON object; the call has its line with the request id.
  int lines = 0, calls = 0;
  std::istringstream log(server_->Stderr());
  for (std::string line; std::getline(log, line);) {
    const nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(json.is_object()) << line;
    EXPECT_TRUE(json.contains("time") && json.contains("level")) << line;
    ++lines;
    const std::string message = json.value("message", "");
    if (message.find("call=Generate request_id=json-1 status=OK") != std::string::npos) ++calls;
  }
  EXPECT_GT(lines, 5);
  EXPECT_EQ(calls, 1);
}

TEST_F(ApiTest, AdminServiceDescribesTheModelAndCountsCalls) {
  Start();
  ape::v1::ModelInfo model;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(clients_->admin->GetModelInfo(&context, {}, &model).ok());
  }
  EXPECT_EQ(model.architecture(), "llama");
  EXPECT_EQ(model.context_length(), 8192);
  EXPECT_EQ(model.vocab_size(), 49152);
  EXPECT_EQ(model.num_layers(), 30);
  EXPECT_EQ(model.chat_template(), "chatml");
  EXPECT_EQ(model.fingerprint().size(), 32);
  EXPECT_EQ(model.dtype(), "float32");
  EXPECT_EQ(model.device(), "cpu");
  EXPECT_EQ(model.kv_bytes_per_token(), 2 * 30 * 3 * 64 * 4);
  ASSERT_TRUE(Create("goats", kGoats).ok());
  ape::v1::GenerateResponse reply, refused;
  ASSERT_TRUE(Generate(Greedy("Who?", {"goats"}, ape::v1::ENCODING_MODE_APE, 3), reply).ok());
  EXPECT_EQ(CodeOf(Generate(Greedy("Who?", {"nope"}, ape::v1::ENCODING_MODE_APE), refused)),
            absl::StatusCode::kNotFound);
  const ape::v1::Stats stats = Stats();
  std::map<std::string, int64_t> calls;
  for (const ape::v1::MethodStats& method : stats.methods()) {
    calls[absl::StrCat(method.method(), " ", method.code())] = method.count();
  }
  EXPECT_EQ(calls["CreateContext OK"], 1);
  EXPECT_EQ(calls["Generate OK"], 1);
  EXPECT_EQ(calls["Generate NOT_FOUND"], 1);
  EXPECT_EQ(stats.generated_tokens(), reply.usage().generated_tokens());
  EXPECT_EQ(stats.contexts_stored(), 1);
  EXPECT_EQ(stats.store_tier().entries(), 1);
  const ape::v1::Load load = Load();
  EXPECT_EQ(load.max_running(), 16);
  EXPECT_EQ(load.max_queued(), 64);
  EXPECT_FALSE(load.draining());
}

}  // namespace
}  // namespace apeserve
