// How a step's tokens are shared between decodes, prompt chunks and ingestion.
#include <gtest/gtest.h>

#include "server/scheduler.h"

namespace apeserve::server {
namespace {

SchedulerOptions Options(double ingest_share) {
  return {.max_step_tokens = 64, .max_prefill_chunk = 512, .ingest_share = ingest_share};
}

TEST(StepSharesTest, WhileStreamsDecodeIngestionTakesAtMostItsShare) {
  // Four streams leave 60 tokens; ingestion alone takes no more than a quarter of them.
  const StepShares alone = ShareStep(Options(0.25), 4, /*prompts_wait=*/false,
                                     /*ingests_wait=*/true);
  EXPECT_EQ(alone.prompt_tokens, 60u);
  EXPECT_EQ(alone.ingest_most, 15u);
  EXPECT_EQ(alone.ingest_least, 0u);
  // Beside prompts it is also guaranteed that quarter.
  const StepShares beside = ShareStep(Options(0.25), 4, true, true);
  EXPECT_EQ(beside.ingest_least, 15u);
  EXPECT_EQ(beside.ingest_most, 15u);
}

TEST(StepSharesTest, WithNoStreamIngestionMayTakeAWholeChunk) {
  const StepShares alone = ShareStep(Options(0.25), 0, false, true);
  EXPECT_EQ(alone.prompt_tokens, 512u);
  EXPECT_EQ(alone.ingest_most, 512u);
  EXPECT_EQ(alone.ingest_least, 0u);
  // Beside prompts: at least its share, and what the prompts leave.
  const StepShares beside = ShareStep(Options(0.25), 0, true, true);
  EXPECT_EQ(beside.ingest_least, 128u);
  EXPECT_EQ(beside.ingest_most, 512u);
}

TEST(StepSharesTest, IngestionNeverStarvesAndPromptsKeepAQuarter) {
  // A share of 0 still moves ingestion forward a token a step.
  EXPECT_EQ(ShareStep(Options(0.0), 4, true, true).ingest_least, 1u);
  // Out-of-range shares are clamped to [0, 1].
  EXPECT_EQ(ShareStep(Options(7.0), 4, true, true).ingest_least, 60u);
  // A full batch of 64 streams leaves prompts a quarter of the step, not nothing.
  const StepShares full = ShareStep(Options(0.5), 64, true, true);
  EXPECT_EQ(full.prompt_tokens, 16u);
  EXPECT_EQ(full.ingest_least, 8u);
  EXPECT_EQ(full.ingest_most, 8u);
}

}  // namespace
}  // namespace apeserve::server
