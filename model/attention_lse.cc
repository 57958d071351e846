#include "model/attention_lse.h"

#include <algorithm>
#include <limits>

namespace apeserve::model {
namespace {

constexpr double kNegativeInfinity = -std::numeric_limits<double>::infinity();

// Queries of one kv head side by side: [heads, T, D] -> [kv_heads, group * T, D], so
// that grouped-query attention needs no copy of the keys. Row r of kv head g is query
// r % T of head g * group + r / T.
torch::Tensor GroupQueries(const torch::Tensor& q, int64_t kv_heads) {
  return q.reshape({kv_heads, -1, q.size(2)});
}

// Back to [heads, T, ...] from [kv_heads, group * T, ...].
torch::Tensor UngroupRows(const torch::Tensor& x, int64_t heads) {
  std::vector<int64_t> shape{heads, -1};
  if (x.dim() == 3) shape.push_back(x.size(2));
  return x.reshape(shape);
}

// Which keys of [S] each grouped row ([group * T]) may see under a causal mask:
// key j is visible to query t when j <= S - T + t.
torch::Tensor CausalVisibility(int64_t group, int64_t queries, int64_t key_start, int64_t keys,
                               int64_t total_keys, const torch::Device& device) {
  const auto options = torch::TensorOptions().device(device).dtype(torch::kInt64);
  const torch::Tensor t = torch::arange(queries, options).repeat({group}).unsqueeze(1);  // [GT, 1]
  const torch::Tensor j = torch::arange(key_start, key_start + keys, options).unsqueeze(0);
  return j <= t + (total_keys - queries);  // [GT, keys]
}

PartialAttention Blocked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                         double scale, bool causal, int64_t block) {
  const int64_t heads = q.size(0), queries = q.size(1), kv_heads = k.size(0), keys = k.size(1);
  const torch::Tensor grouped = GroupQueries(q, kv_heads).to(torch::kFloat32);  // [Hkv, GT, D]
  std::vector<PartialAttention> running;
  for (int64_t start = 0; start < keys; start += block) {
    const int64_t size = std::min(block, keys - start);
    const torch::Tensor k_block = k.narrow(1, start, size).to(torch::kFloat32);
    const torch::Tensor v_block = v.narrow(1, start, size).to(torch::kFloat32);
    torch::Tensor logits = torch::matmul(grouped, k_block.transpose(1, 2)) * scale;  // [Hkv,GT,B]
    if (causal) {
      const torch::Tensor visible =
          CausalVisibility(heads / kv_heads, queries, start, size, keys, q.device());
      logits = logits.masked_fill(visible.logical_not(), kNegativeInfinity);
    }
    const torch::Tensor lse = torch::logsumexp(logits, -1);  // [Hkv, GT]
    // A row that sees no key of this block has lse -inf: weigh it 0, not NaN.
    const torch::Tensor finite_lse = torch::where(lse.isinf(), torch::zeros_like(lse), lse);
    const torch::Tensor weights = torch::exp(logits - finite_lse.unsqueeze(-1));
    running.push_back({torch::matmul(weights, v_block), lse});
    if (running.size() == 2) running = {MergeByLse(running)};
  }
  if (running.empty()) {  // no keys at all
    return {torch::zeros_like(q, torch::kFloat32),
            torch::full({heads, queries}, kNegativeInfinity, q.options().dtype(torch::kFloat32))};
  }
  return {UngroupRows(running[0].output, heads), UngroupRows(running[0].lse, heads)};
}

PartialAttention FusedCpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          double scale, bool causal) {
  const int64_t heads = q.size(0), queries = q.size(1), kv_heads = k.size(0), keys = k.size(1);
  const torch::Tensor grouped = GroupQueries(q, kv_heads).unsqueeze(0);  // [1, Hkv, GT, D]
  std::optional<torch::Tensor> mask;
  if (causal && queries > 1) {
    // An additive mask: the kernel's own is_causal aligns the diagonal top-left, and
    // our queries are the segment's last tokens.
    const torch::Tensor visible =
        CausalVisibility(heads / kv_heads, queries, 0, keys, keys, q.device());
    mask = torch::zeros(visible.sizes(), q.options())
               .masked_fill(visible.logical_not(), kNegativeInfinity)
               .view({1, 1, -1, keys});
  }
  // With one query, causal attention sees every key: no mask at all.
  auto [output, lse] = at::_scaled_dot_product_flash_attention_for_cpu(
      grouped, k.unsqueeze(0), v.unsqueeze(0), /*dropout_p=*/0.0, /*is_causal=*/false, mask, scale);
  return {UngroupRows(output.squeeze(0).to(torch::kFloat32), heads),
          UngroupRows(lse.squeeze(0).to(torch::kFloat32), heads)};
}

// CUDA's memory-efficient kernel; its log-sum-exp rows are padded to a multiple of 32.
PartialAttention FusedCuda(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           double scale) {
  const int64_t heads = q.size(0), kv_heads = k.size(0);
  const torch::Tensor grouped = GroupQueries(q, kv_heads).unsqueeze(0).contiguous();
  auto [output, lse, seed, offset] = at::_scaled_dot_product_efficient_attention(
      grouped, k.unsqueeze(0).contiguous(), v.unsqueeze(0).contiguous(), std::nullopt,
      /*compute_log_sumexp=*/true, /*dropout_p=*/0.0, /*is_causal=*/false, scale);
  const int64_t rows = grouped.size(2);
  return {UngroupRows(output.squeeze(0).to(torch::kFloat32), heads),
          UngroupRows(lse.squeeze(0).narrow(-1, 0, rows).to(torch::kFloat32), heads)};
}

}  // namespace

PartialAttention AttendWithLse(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale, bool causal,
                               AttentionKernel kernel, int64_t block) {
  TORCH_CHECK(q.size(0) % k.size(0) == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(!causal || k.size(1) >= q.size(1), "a causal segment holds its queries");
  if (kernel == AttentionKernel::kAuto && k.size(1) > 0) {
    if (q.device().is_cpu()) return FusedCpu(q, k, v, scale, causal);
    if (q.device().is_cuda() && !causal) return FusedCuda(q, k, v, scale);
  }
  return Blocked(q, k, v, scale, causal, std::max<int64_t>(block, 1));
}

PartialAttention MergeByLse(const std::vector<PartialAttention>& parts) {
  TORCH_CHECK(!parts.empty(), "nothing to merge");
  if (parts.size() == 1) return parts[0];
  std::vector<torch::Tensor> lses;
  lses.reserve(parts.size());
  for (const PartialAttention& part : parts) lses.push_back(part.lse);
  const torch::Tensor stacked = torch::stack(lses);  // [n, ...]
  torch::Tensor top = std::get<0>(stacked.max(0));
  top = torch::where(top.isinf(), torch::zeros_like(top), top);  // all -inf: weights 0
  const torch::Tensor exps = torch::exp(stacked - top);          // [n, ...]
  const torch::Tensor total = exps.sum(0);
  const torch::Tensor divisor = torch::where(total == 0, torch::ones_like(total), total);
  torch::Tensor output = torch::zeros_like(parts[0].output);
  for (size_t i = 0; i < parts.size(); ++i) {
    output += (exps[static_cast<int64_t>(i)] / divisor).unsqueeze(-1) * parts[i].output;
  }
  return {output, top + torch::log(total)};
}

}  // namespace apeserve::model
