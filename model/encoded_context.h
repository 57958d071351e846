// What the engine encodes once and reuses in any query: the shared prefix, and each
// context encoded against it. Both are plain values; a context's KV depends only on
// (model, prefix, its own tokens), which its fields name. Thread-safety: plain values.
#ifndef APESERVE_MODEL_ENCODED_CONTEXT_H_
#define APESERVE_MODEL_ENCODED_CONTEXT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/device_kv.h"
#include "model/kv_segment.h"

namespace apeserve::model {

// The prefix every query shares (BOS, system prompt, the opening of the user turn),
// at positions 0 .. p-1.
struct EncodedPrefix {
  std::vector<int32_t> tokens;
  // 32 hex digits naming (model fingerprint, tokens): contexts carry it.
  std::string hash;
  KvSegment kv;
};

// One context's keys and values, at positions p .. p+L-1 after the prefix `prefix_hash`.
struct EncodedContext {
  std::vector<int32_t> tokens;
  std::string prefix_hash;
  KvSegment kv;
  // Set by Engine::ToDevice: the same KV already on the device, used instead of
  // kv.layers (which is then empty; kv's other fields still describe the shape).
  std::shared_ptr<const DeviceKv> device = nullptr;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ENCODED_CONTEXT_H_
