// A Generate, GenerateStream or Score request, checked and turned into the engine's
// terms: which contexts, what prompt, which mode and parameters. Everything a request
// can get wrong without looking at the store is refused here, with INVALID_ARGUMENT
// naming the field (or RESOURCE_EXHAUSTED naming the server limit it passes).
#ifndef APESERVE_SERVER_QUERY_PLAN_H_
#define APESERVE_SERVER_QUERY_PLAN_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ape/v1/generation.pb.h"
#include "model/ape_options.h"
#include "model/sampler.h"
#include "server/server_options.h"

namespace apeserve::server {

// One context of a query: stored (by id) or sent inline.
struct QueryContext {
  std::string id = {};  // stored: its id; inline and stored with it: the id to store under
  bool is_inline = false;
  std::string text = {};  // inline only
  bool store = false;     // inline only: store it too
  std::map<std::string, std::string> labels = {};
};

struct QueryPlan {
  std::string request_id;
  std::string namespace_id;
  std::vector<QueryContext> contexts;
  std::string query;
  std::string system_prompt;
  model::ApeOptions ape;
  // Generation only.
  model::SamplingOptions sampling = {};
  int top_logprobs = 0;
  // Score only.
  std::vector<std::string> continuations = {};
};

absl::StatusOr<QueryPlan> PlanGenerate(const ape::v1::GenerateRequest& request,
                                       const ServerOptions& options);
absl::StatusOr<QueryPlan> PlanScore(const ape::v1::ScoreRequest& request,
                                    const ServerOptions& options);

// A random context id (16 hex digits) for a request that leaves it empty.
std::string NewContextId();

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_QUERY_PLAN_H_
