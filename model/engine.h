// The inference engine: a model loaded onto a device, and sequences that feed it
// tokens and read back logits. The border of model/: no torch type crosses it, and
// every libtorch error becomes an absl::Status here.
//
// Thread-safety: an Engine is immutable after Load() and may serve many threads; a
// Sequence belongs to one thread at a time.
#ifndef APESERVE_MODEL_ENGINE_H_
#define APESERVE_MODEL_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/ape_options.h"
#include "model/chat_template.h"
#include "model/encoded_context.h"
#include "model/gguf_header.h"
#include "model/model_config.h"
#include "model/prompt_pieces.h"
#include "model/runtime.h"
#include "model/tokenizer.h"

namespace apeserve::model {

// What a server checks before it loads a model, in milliseconds rather than the load's
// seconds, so that a typo fails fast: the file's GGUF header, the device (resolved and
// self-tested) and the libtorch it runs on.
struct PreloadCheck {
  GgufHeader header;
  std::string device;  // e.g. "cpu", "cuda:0"
  RuntimeInfo runtime;
};
// Errors as ReadGgufHeader's (the file), ResolveDevice's (the device name) and
// SelfTest's (a device that fails).
absl::StatusOr<PreloadCheck> CheckBeforeLoad(const std::string& model_path,
                                             const std::string& device);

// For threads beside the engine's (the server's I/O pool): the torch work the calling
// thread does from now on (copying a document's KV out of its sequence, say) runs on
// that thread alone. Without it the thread brings its own team of intra-op threads,
// which take the cores a step is using and stretch the step that streams wait on.
void KeepTorchOnThisThread();

struct EngineOptions {
  // A GGUF model file, or a Hugging Face model folder (config.json, safetensors,
  // tokenizer.json). Required.
  std::string model_path;
  // "auto", "cpu", "cuda" or "cuda:N". Default: "auto" (the first GPU, else the CPU).
  std::string device = "auto";
  // Compute dtype: "auto", "float32", "bfloat16" or "float16".
  // Default: "auto" (float32 on the CPU, bfloat16 on a GPU).
  std::string dtype = "auto";
  // How APE attends over a segment: "auto" (a fused kernel that returns the
  // log-sum-exp where the device has one, else blocked) or "blocked". Default: "auto".
  std::string attention_kernel = "auto";
  // Keys per block of the blocked kernel; memory grows with queries x block.
  // Default: 1024.
  int attention_block = 1024;
  // CPU threads of a step that only decodes (one token per sequence). Such a step is
  // bound by memory, not arithmetic, and threads that wait for a core stall it: on a
  // small machine, a core left to the RPCs serves better. 0: libtorch's threads less
  // one, at least 1. Default: 0.
  int decode_threads = 0;
  // CPU threads of prompt work (prefill chunks, encoding contexts). 0: libtorch's
  // threads (the cores, or OMP_NUM_THREADS). Default: 0.
  int prefill_threads = 0;
};

class Engine {
 public:
  // A token sequence being decoded: its length and its KV cache.
  class Sequence;

  // Loads and dequantizes the model onto the device.
  // NOT_FOUND / PERMISSION_DENIED: the model file cannot be read. INVALID_ARGUMENT: a
  // malformed file, an unsupported architecture, or a bad device or dtype name.
  // FAILED_PRECONDITION: a CUDA device that does not exist. RESOURCE_EXHAUSTED: out of
  // memory.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const EngineOptions& options);

  // The fingerprint() that Load() of `model_path` (a GGUF file or a Hugging Face folder)
  // would give, from reading the weights' bytes only: no dequantization, no device.
  // Errors as Load()'s for an unreadable or malformed model.
  static absl::StatusOr<std::string> ModelFingerprint(const std::string& model_path);

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  // The model's chat format; FAILED_PRECONDITION when its metadata has no template
  // of a family we know (raw prompts still work).
  absl::StatusOr<const ChatTemplate*> chat_template() const;
  // How this model's chat template cuts an APE prompt (shared prefix, contexts,
  // query); valid while the engine lives. FAILED_PRECONDITION as chat_template().
  absl::StatusOr<PromptPieces> prompt_pieces() const;
  // The fingerprint of the model's weights (see fingerprint.h).
  const std::string& fingerprint() const;
  // "cpu" or "cuda:N", and "float32", "bfloat16" or "float16".
  std::string device() const;
  std::string dtype() const;
  // Bytes of KV a sequence holds per token: keys and values of every layer.
  size_t kv_bytes_per_token() const;

  std::unique_ptr<Sequence> NewSequence() const;
  // Frees the host KV buffers that ended sequences left and none took again within the
  // pool's idle time (kv_buffer_pool.h), so that an idle server returns them; the
  // engine also does it as sequences come and go. Thread-safe.
  void ReleaseIdleBuffers() const;

  // --- Pre-encoded contexts (DESIGN.md §3) ---

  // Encodes the shared prefix at positions 0 .. p-1 (no tokens is a valid, empty prefix).
  // INVALID_ARGUMENT: an id outside the vocabulary. OUT_OF_RANGE: longer than the
  // model's context.
  absl::StatusOr<EncodedPrefix> EncodePrefix(absl::Span<const int32_t> tokens) const;

  // Encodes one context against `prefix`: its tokens attend causally to the prefix and
  // to each other, at positions p .. p+L-1. INVALID_ARGUMENT: no tokens, a bad id, or a
  // prefix that is not this model's. OUT_OF_RANGE: p + L passes the model's context.
  absl::StatusOr<EncodedContext> EncodeContext(const EncodedPrefix& prefix,
                                               absl::Span<const int32_t> tokens) const;

  // The context that `sequence` computed: a SEQUENTIAL sequence begun on `prefix`
  // with no contexts (BeginSequence), then fed exactly `tokens` (e.g. in chunks through
  // Step, between other sequences' work). Equal to EncodeContext(prefix, tokens) up to
  // the rounding of batched matrix products. INVALID_ARGUMENT when the sequence holds
  // anything else.
  absl::StatusOr<EncodedContext> ExportContext(const Sequence& sequence,
                                               const EncodedPrefix& prefix,
                                               absl::Span<const int32_t> tokens) const;

  // A copy of `context` whose KV lives on this engine's device in its compute dtype
  // (`device` set, `kv.layers` empty, the shape kept): StartSequence then uses it with
  // no copy from the host. INVALID_ARGUMENT if the KV does not fit this model.
  absl::StatusOr<EncodedContext> ToDevice(const EncodedContext& context) const;

  // A sequence holding the prefix and `contexts` in `options.mode`, ready for the query:
  // SEQUENTIAL computes the contexts' tokens after the prefix, one causal sequence;
  // PARALLEL and APE take their stored KV (a copy of it, which the sequence owns), and
  // the query starts at position p + max L_i. Contexts may repeat. INVALID_ARGUMENT: bad options,
  // or a context or prefix whose KV does not fit this model and this prefix (the message names it).
  // OUT_OF_RANGE: the contexts pass the model's context length.
  absl::StatusOr<std::unique_ptr<Sequence>> StartSequence(
      const EncodedPrefix& prefix, absl::Span<const EncodedContext* const> contexts,
      const ApeOptions& options) const;

  // As StartSequence, but computing nothing: a SEQUENTIAL sequence then holds the
  // prefix only, and `tokens_to_feed` are its contexts' tokens, which the caller feeds
  // (e.g. in chunks, between other sequences' steps) before the query. Other modes
  // return no tokens to feed. Errors as StartSequence's.
  struct SequenceStart {
    std::unique_ptr<Sequence> sequence;
    std::vector<int32_t> tokens_to_feed;
  };
  absl::StatusOr<SequenceStart> BeginSequence(const EncodedPrefix& prefix,
                                              absl::Span<const EncodedContext* const> contexts,
                                              const ApeOptions& options) const;

  // As BeginSequence above, but sharing the KV instead of copying it: a PARALLEL or
  // APE sequence reads the prefix's and the contexts' KV where it lies (a registry
  // tier's entry, however many sequences read it) and keeps a reference to each until
  // it ends, so that a tier evicting one meanwhile frees nothing under it. Only the
  // sequence's own tokens (query, answer) go to its cache. KV that ReadsInPlace
  // refuses is converted once for the sequence. Errors as the other's.
  absl::StatusOr<SequenceStart> BeginSequence(
      const std::shared_ptr<const EncodedPrefix>& prefix,
      absl::Span<const std::shared_ptr<const EncodedContext>> contexts,
      const ApeOptions& options) const;

  // Whether a sequence reads this KV where it lies, with no copy: KV made by ToDevice,
  // or host KV in the compute dtype of an engine on the CPU.
  bool ReadsInPlace(const EncodedContext& context) const;
  bool ReadsInPlace(const KvSegment& host_kv) const;

  // Feeds `tokens` at the next positions of `sequence`, attending as its mode says.
  // Returns fp32 logits of the last token ([vocab]), or of every fed token
  // ([tokens.size() * vocab]) when `all_logits`. INVALID_ARGUMENT: no tokens, or an id
  // outside the vocabulary. OUT_OF_RANGE: the sequence would pass the model's context
  // length. A failure leaves the sequence as it was.
  absl::StatusOr<std::vector<float>> Feed(Sequence& sequence, absl::Span<const int32_t> tokens,
                                          bool all_logits = false) const;

  // --- Batched steps (continuous batching) ---

  // Which logits a sequence's part of a step returns.
  enum class Logits {
    kNone,  // none: a prefill chunk that is not the prompt's last
    kLast,  // of the last token fed ([vocab])
    kAll,   // of every token fed ([tokens * vocab])
  };

  // One sequence's part of a step: `tokens` fed at its next positions.
  struct StepInput {
    Sequence* sequence = nullptr;
    absl::Span<const int32_t> tokens;
    Logits logits = Logits::kLast;
  };

  // Advances several sequences in one forward pass: the tokens of all of them go
  // through the projections and the MLP as one batch, so the weights are read once
  // for the whole step; attention runs per sequence over its own KV in its own mode
  // (SEQUENTIAL, PARALLEL, or APE with its own T and S). Sequences of any length, mode
  // and context set share a step; a decode (one token) and a prefill chunk alike.
  // Returns each input's logits, in input order, as Feed's (empty for kNone).
  // A sequence's results equal those of Feed alone up to the rounding of batched
  // matrix products (see README, "Batching").
  // Errors as Feed's, for the first bad input (the message names its index), found
  // before anything runs; INVALID_ARGUMENT as well for no inputs or a sequence named
  // twice. A failure leaves every sequence as it was.
  absl::StatusOr<std::vector<std::vector<float>>> Step(absl::Span<const StepInput> inputs) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Engine::Sequence {
 public:
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;
  ~Sequence();

  // Tokens held: prefix, contexts (all of them, side by side, outside SEQUENTIAL) and
  // the tokens fed since.
  int64_t length() const;
  // The rotary position of the next token fed.
  int64_t next_position() const;
  // Forgets the tokens fed after the first `length` (e.g. to score another
  // continuation of the same query); never the prefix and contexts it started with
  // (BeginSequence's SEQUENTIAL sequences: the prefix).
  void Truncate(int64_t length);
  // Makes room for `tokens` in all, so that feeding up to that length allocates
  // nothing more (e.g. before admitting it to a KV budget).
  void Reserve(int64_t tokens);

 private:
  friend class Engine;
  struct State;  // the KV cache
  explicit Sequence(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_ENGINE_H_
