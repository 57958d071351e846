// Attention of one sequence's prompt tokens (a question after its stored contexts, a
// chunk of a document being encoded, any prompt, from one token to a prefill chunk)
// over the segments it holds (its prefix and stored contexts, read where they lie, or
// an APE cache's parts) and over its own cache, on the CPU in float32,
// in one pass over every key per layer. The scores are laid out key by key with the
// query rows side by side in vectors, so that neither keys nor values are transposed or
// packed, the softmax's maxima and sums are vector operations across rows, and every
// multiply-add reads one operand from a register. Through torch each segment was one
// fused attention call per layer, packing its small matrices again, then a merge of as
// many parts: about 100 ms of a 265-ms warm time to first token over 16 contexts of 448
// tokens (issue 24), at under half of the CPU's multiply-add rate.
// Internal to model/ (torch types). Thread-safe for distinct outputs.
#ifndef APESERVE_MODEL_PROMPT_ATTENTION_H_
#define APESERVE_MODEL_PROMPT_ATTENTION_H_

#include <torch/torch.h>

#include <cstdint>

#include "absl/types/span.h"
#include "model/attention.h"

namespace apeserve::model {

// Whether PromptAttention computes on `device` in `dtype` with these heads and layout:
// the CPU, float32, head_dim a multiple of 16, APE's kernel kAuto (kBlocked and the
// others stay torch's, for the tests that compare kernels).
bool PromptAttentionApplies(const torch::Device& device, torch::ScalarType dtype, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, const ApeLayout* ape);

// Writes to `output` ([T, heads, head_dim], contiguous) the attention of `q` ([T, heads,
// head_dim], contiguous, unscaled) over every key of `held` and then, causally, over
// `local_keys`, `local_values` ([kv_heads, S, head_dim], rows contiguous, the queries
// their last T): AttendOverSegments' result, within float rounding, laid out as the
// model's rows. Throws c10::Error on tensors it cannot read.
void PromptAttention(const torch::Tensor& q, absl::Span<const KeySegment> held,
                     const torch::Tensor& local_keys, const torch::Tensor& local_values,
                     const ApeLayout* ape, torch::Tensor& output);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_PROMPT_ATTENTION_H_
