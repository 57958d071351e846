#include "server/query_plan.h"

#include <algorithm>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/store_keys.h"
#include "common/status_macros.h"
#include "server/backend.h"

namespace apeserve::server {
namespace {

constexpr size_t kMaxRequestIdBytes = 128;
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 256;
constexpr int kMaxTopLogprobs = 20;
constexpr int kDefaultMaxTokens = 256;

absl::Status Field(absl::string_view field, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
}

absl::StatusOr<model::EncodingMode> ModeOf(ape::v1::EncodingMode mode) {
  switch (mode) {
    case ape::v1::ENCODING_MODE_UNSPECIFIED:
    case ape::v1::ENCODING_MODE_APE:
      return model::EncodingMode::kApe;
    case ape::v1::ENCODING_MODE_SEQUENTIAL:
      return model::EncodingMode::kSequential;
    case ape::v1::ENCODING_MODE_PARALLEL:
      return model::EncodingMode::kParallel;
    default:
      return absl::InvalidArgumentError(absl::StrCat("mode: unknown value ", mode));
  }
}

absl::StatusOr<model::ApeOptions> ApeOf(const ape::v1::EncodingMode mode,
                                        const ape::v1::ApeParameters& ape,
                                        const model::ApeOptions& defaults) {
  model::ApeOptions options = defaults;
  APE_ASSIGN_OR_RETURN(options.mode, ModeOf(mode));
  if (ape.has_temperature()) options.temperature = ape.temperature();
  if (ape.has_scale()) options.scale = ape.scale();
  switch (ape.form()) {
    case ape::v1::APE_SCALE_FORM_UNSPECIFIED:
      break;
    case ape::v1::APE_SCALE_FORM_MULTIPLICATIVE:
      options.form = model::ApeScaleForm::kMultiplicative;
      break;
    case ape::v1::APE_SCALE_FORM_ADDITIVE:
      options.form = model::ApeScaleForm::kAdditive;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("ape.form: unknown value ", ape.form()));
  }
  APE_RETURN_IF_ERROR(Field("ape", options.Validate()));
  return options;
}

absl::StatusOr<model::SamplingOptions> SamplingOf(const ape::v1::SamplingParameters& sampling,
                                                  const RequestLimits& limits) {
  model::SamplingOptions options;
  options.max_tokens = std::min(kDefaultMaxTokens, limits.max_new_tokens);
  if (sampling.has_max_tokens()) {
    if (sampling.max_tokens() > limits.max_new_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.max_tokens is ", sampling.max_tokens(), "; this server generates at most ",
          limits.max_new_tokens, " tokens per request (--max_new_tokens)"));
    }
    options.max_tokens = sampling.max_tokens();
  }
  if (sampling.has_temperature()) options.temperature = sampling.temperature();
  if (sampling.has_top_k()) options.top_k = sampling.top_k();
  if (sampling.has_top_p()) options.top_p = sampling.top_p();
  if (sampling.has_min_p()) options.min_p = sampling.min_p();
  if (sampling.has_repetition_penalty()) options.repetition_penalty = sampling.repetition_penalty();
  if (sampling.has_seed()) options.seed = sampling.seed();
  if (sampling.has_ignore_eos()) options.ignore_eos = sampling.ignore_eos();
  if (static_cast<size_t>(sampling.stop_size()) > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop has ", sampling.stop_size(),
                                                   " strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < sampling.stop_size(); ++i) {
    if (sampling.stop(i).size() > kMaxStopBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "] has ",
                                                     sampling.stop(i).size(), " bytes; at most ",
                                                     kMaxStopBytes));
    }
    options.stop.push_back(sampling.stop(i));
  }
  APE_RETURN_IF_ERROR(Field("sampling", options.Validate()));
  return options;
}

// The fields Generate and Score requests share.
template <typename Request>
absl::StatusOr<QueryPlan> PlanQuery(const Request& request, const ServerOptions& options) {
  const RequestLimits& limits = options.limits;
  QueryPlan plan;
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id has ", request.request_id().size(),
                                                   " bytes; at most ", kMaxRequestIdBytes));
  }
  plan.request_id = request.request_id();
  plan.namespace_id = request.namespace_().empty() ? kDefaultNamespace : request.namespace_();
  APE_RETURN_IF_ERROR(cache::ValidateNamespace(plan.namespace_id));
  if (request.query().empty()) {
    return absl::InvalidArgumentError("query is empty: ask something");
  }
  plan.query = request.query();
  plan.system_prompt = request.system_prompt();
  const int contexts = request.context_ids_size() + request.inline_contexts_size();
  if (contexts > limits.max_contexts_per_request) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request names ", contexts,
                     " contexts (context_ids and inline_contexts); ", "this server takes at most ",
                     limits.max_contexts_per_request, " (--max_contexts_per_request)"));
  }
  for (int i = 0; i < request.context_ids_size(); ++i) {
    APE_RETURN_IF_ERROR(Field(absl::StrCat("context_ids[", i, "]"),
                              cache::ValidateContextId(request.context_ids(i))));
    plan.contexts.push_back({.id = request.context_ids(i)});
  }
  for (int i = 0; i < request.inline_contexts_size(); ++i) {
    const ape::v1::InlineContext& context = request.inline_contexts(i);
    const std::string field = absl::StrCat("inline_contexts[", i, "]");
    if (context.text().empty()) return absl::InvalidArgumentError(field + ".text is empty");
    if (context.text().size() > limits.max_context_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat(field, ".text has ", context.text().size(), " bytes; this server takes ",
                       limits.max_context_bytes, " at most (--max_context_bytes)"));
    }
    QueryContext query_context{.is_inline = true, .text = context.text(), .store = context.store()};
    if (context.store()) {
      query_context.id = context.context_id().empty() ? NewContextId() : context.context_id();
      APE_RETURN_IF_ERROR(Field(field + ".context_id", cache::ValidateContextId(query_context.id)));
      query_context.labels.insert(context.labels().begin(), context.labels().end());
    }
    plan.contexts.push_back(std::move(query_context));
  }
  APE_ASSIGN_OR_RETURN(plan.ape, ApeOf(request.mode(), request.ape(), options.ape_defaults));
  return plan;
}

}  // namespace

absl::StatusOr<QueryPlan> PlanGenerate(const ape::v1::GenerateRequest& request,
                                       const ServerOptions& options) {
  APE_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(request, options));
  APE_ASSIGN_OR_RETURN(plan.sampling, SamplingOf(request.sampling(), options.limits));
  if (request.top_logprobs() < 0 || request.top_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs is ", request.top_logprobs(),
                                                   "; it must be in [0, ", kMaxTopLogprobs, "]"));
  }
  plan.top_logprobs = request.top_logprobs();
  return plan;
}

absl::StatusOr<QueryPlan> PlanScore(const ape::v1::ScoreRequest& request,
                                    const ServerOptions& options) {
  APE_ASSIGN_OR_RETURN(QueryPlan plan, PlanQuery(request, options));
  if (request.continuations_size() == 0) {
    return absl::InvalidArgumentError("continuations is empty: give at least one text to score");
  }
  if (request.continuations_size() > options.limits.max_continuations) {
    return absl::InvalidArgumentError(absl::StrCat(
        "continuations has ", request.continuations_size(), " texts; this server scores at most ",
        options.limits.max_continuations, " per request"));
  }
  for (int i = 0; i < request.continuations_size(); ++i) {
    if (request.continuations(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("continuations[", i, "] is empty"));
    }
    plan.continuations.push_back(request.continuations(i));
  }
  return plan;
}

std::string NewContextId() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return absl::StrFormat("%016x", random());
}

}  // namespace apeserve::server
