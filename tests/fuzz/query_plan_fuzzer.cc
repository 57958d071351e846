// Fuzzes the request validation of the generation RPCs: the input's first byte picks
// Generate or Score and the server's limits (the defaults or tight ones); the rest is
// the request as it arrives on the wire (ParseFromArray), checked by PlanGenerate or
// PlanScore. An accepted request must be within every limit.
#include <cstddef>
#include <cstdint>

#include "ape/v1/generation.pb.h"
#include "server/query_plan.h"
#include "server/server_options.h"
#include "tests/fuzz/fuzz_support.h"

namespace apeserve::server {
namespace {

ServerOptions Options(bool tight) {
  ServerOptions options;
  if (tight) {
    options.limits.max_context_bytes = 64;
    options.limits.max_contexts_per_request = 2;
    options.limits.max_new_tokens = 8;
    options.limits.max_continuations = 2;
  }
  return options;
}

void CheckPlan(const QueryPlan& plan, const ServerOptions& options) {
  const RequestLimits& limits = options.limits;
  fuzz::Check(!plan.query.empty(), "accepted an empty query");
  fuzz::Check(plan.contexts.size() <= static_cast<size_t>(limits.max_contexts_per_request),
              "accepted more contexts than the limit");
  for (const QueryContext& context : plan.contexts) {
    fuzz::Check(!context.is_inline ||
                    (!context.text.empty() && context.text.size() <= limits.max_context_bytes),
                "accepted an inline context past the limit");
    fuzz::Check(context.is_inline || !context.id.empty(), "accepted an empty context id");
  }
  fuzz::Check(plan.ape.Validate().ok(), "accepted APE parameters that fail Validate");
  fuzz::Check(!plan.namespace_id.empty(), "planned without a namespace");
}

void FuzzOne(absl::string_view bytes) {
  if (bytes.empty()) return;
  const auto selector = static_cast<uint8_t>(bytes[0]);
  const absl::string_view wire = bytes.substr(1);
  static const ServerOptions* const kOptions[2] = {new ServerOptions(Options(false)),
                                                   new ServerOptions(Options(true))};
  const ServerOptions& options = *kOptions[(selector >> 1) & 1];
  if ((selector & 1) == 0) {
    ape::v1::GenerateRequest request;
    if (!request.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) return;
    absl::StatusOr<QueryPlan> plan = PlanGenerate(request, options);
    if (!plan.ok()) return;
    CheckPlan(*plan, options);
    fuzz::Check(plan->sampling.Validate().ok(), "accepted sampling that fails Validate");
    fuzz::Check(plan->sampling.max_tokens <= options.limits.max_new_tokens,
                "accepted max_tokens past the limit");
  } else {
    ape::v1::ScoreRequest request;
    if (!request.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) return;
    absl::StatusOr<QueryPlan> plan = PlanScore(request, options);
    if (!plan.ok()) return;
    CheckPlan(*plan, options);
    fuzz::Check(
        !plan->continuations.empty() &&
            plan->continuations.size() <= static_cast<size_t>(options.limits.max_continuations),
        "accepted continuations past the limit");
  }
}

}  // namespace
}  // namespace apeserve::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  apeserve::server::FuzzOne(apeserve::fuzz::AsView(data, size));
  return 0;
}
