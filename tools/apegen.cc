// apegen: generates with the inference engine alone, no server.
//
//   apegen --model=M.gguf --prompt="Tell me a joke" --chat [--temperature=0.7 --seed=1]
//   apegen --model=M.gguf --token_ids=1,2,3 [--max_tokens=64]
//   apegen --model=M.gguf --contexts_file=docs.jsonl --prompt="Who built it?" --mode=ape
//          [--ape_temperature=0.9 --ape_scale=0.9 --ape_form=multiplicative --system="..."]
//   apegen --model=M.gguf --batch_file=prompts.jsonl --logits_out=prefill.f32
//
// Prints one JSON object per prompt: the generated text, token ids, per-token
// log-probabilities, the finish reason, and timings. With --contexts_file (one JSON
// object per line, {"text": "..."}), the documents are encoded once against the chat
// template's prefix and the question attends to them in --mode (sequential, parallel
// or ape). A batch file holds one JSON object per line, {"token_ids": [...]}, or, for an
// APE prompt, {"prefix": [...], "contexts": [[...], ...], "token_ids": [...] (the
// query), "mode": "ape", "temperature": T, "scale": S, "form": "multiplicative" or
// "additive"} (unset fields take the engine's defaults); --logits_out then writes the
// fp32 logits of every prompt (query) position and of each greedy token fed after it,
// prompt after prompt, generating --max_tokens tokens regardless of end-of-sequence
// (for parity checks).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "model/engine.h"
#include "model/generator.h"
#include "model/prompt_pieces.h"

ABSL_FLAG(std::string, model, "", "GGUF model file (required)");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "auto, float32, bfloat16 or float16");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(bool, chat, false, "wrap --prompt as a user turn in the model's chat template");
ABSL_FLAG(std::string, system, "", "system prompt for --chat (default: the template's own)");
ABSL_FLAG(std::string, token_ids, "", "comma-separated prompt token ids");
ABSL_FLAG(std::string, batch_file, "", "JSON lines of {\"token_ids\": [...]}, one prompt each");
ABSL_FLAG(std::string, logits_out, "", "with --batch_file: write the prompts' fp32 logits here");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate at most");
ABSL_FLAG(float, temperature, 0.0F, "sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "keep the k most likely tokens (0: all)");
ABSL_FLAG(float, top_p, 1.0F, "nucleus sampling mass");
ABSL_FLAG(float, min_p, 0.0F, "drop tokens below min_p times the best one's probability");
ABSL_FLAG(float, repetition_penalty, 1.0F, "penalty on tokens already seen (1: off)");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "comma-separated stop strings");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past end-of-sequence");
ABSL_FLAG(std::string, contexts_file, "",
          "JSON lines of {\"text\": ...}: documents the --prompt question attends to");
ABSL_FLAG(std::string, mode, "ape", "with --contexts_file: sequential, parallel or ape");
ABSL_FLAG(float, ape_temperature, apeserve::model::kDefaultApeTemperature,
          "APE attention temperature T over the contexts");
ABSL_FLAG(float, ape_scale, apeserve::model::kDefaultApeScale,
          "APE scaling factor S of the contexts");
ABSL_FLAG(std::string, ape_form, "multiplicative",
          "how S enters APE: multiplicative (published, S·T·lse) or additive (T·lse + ln S)");

namespace {

using apeserve::model::EncodedContext;
using apeserve::model::Engine;
using Clock = std::chrono::steady_clock;

int Fail(const std::string& message) {
  std::fprintf(stderr, "apegen: %s\n", message.c_str());
  return 1;
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

apeserve::model::SamplingOptions SamplingFromFlags() {
  apeserve::model::SamplingOptions options;
  options.temperature = absl::GetFlag(FLAGS_temperature);
  options.top_k = absl::GetFlag(FLAGS_top_k);
  options.top_p = absl::GetFlag(FLAGS_top_p);
  options.min_p = absl::GetFlag(FLAGS_min_p);
  options.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  options.stop = absl::GetFlag(FLAGS_stop);
  options.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  return options;
}

// A prompt: plain token ids, or an APE prompt whose `tokens` are the query.
struct Prompt {
  std::vector<int32_t> tokens = {};
  bool ape = false;
  std::vector<int32_t> prefix = {};
  std::vector<std::vector<int32_t>> contexts = {};
  apeserve::model::ApeOptions options = {};
};

// A sequence ready for the prompt's own tokens: empty, or holding prefix and contexts.
absl::StatusOr<std::unique_ptr<Engine::Sequence>> StartFor(const Engine& engine,
                                                           const Prompt& prompt) {
  if (!prompt.ape) return engine.NewSequence();
  auto prefix = engine.EncodePrefix(prompt.prefix);
  if (!prefix.ok()) return prefix.status();
  std::vector<EncodedContext> contexts;
  for (const std::vector<int32_t>& tokens : prompt.contexts) {
    auto context = engine.EncodeContext(*prefix, tokens);
    if (!context.ok()) return context.status();
    contexts.push_back(*std::move(context));
  }
  std::vector<const EncodedContext*> pointers;
  pointers.reserve(contexts.size());
  for (const EncodedContext& context : contexts) pointers.push_back(&context);
  return engine.StartSequence(*prefix, pointers, prompt.options);
}

// One line of --batch_file.
absl::StatusOr<Prompt> ParseBatchLine(const std::string& line) {
  const nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
  if (!json.is_object() || !json.contains("token_ids")) {
    return absl::InvalidArgumentError("bad batch line (want {\"token_ids\": ...}): " + line);
  }
  Prompt prompt;
  try {
    prompt.tokens = json.at("token_ids").get<std::vector<int32_t>>();
    if (json.contains("contexts") || json.contains("mode")) {
      prompt.ape = true;
      prompt.prefix = json.value("prefix", std::vector<int32_t>{});
      prompt.contexts = json.value("contexts", std::vector<std::vector<int32_t>>{});
      auto mode = apeserve::model::ParseEncodingMode(json.value("mode", std::string("ape")));
      if (!mode.ok()) return mode.status();
      auto form = apeserve::model::ParseApeScaleForm(
          json.value("form", std::string(apeserve::model::ApeScaleFormName(prompt.options.form))));
      if (!form.ok()) return form.status();
      prompt.options = {.mode = *mode,
                        .temperature = json.value("temperature", prompt.options.temperature),
                        .scale = json.value("scale", prompt.options.scale),
                        .form = *form};
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad batch line: ", e.what()));
  }
  return prompt;
}

// Generates for one prompt and prints the JSON result.
int GenerateOne(const Engine& engine, const Prompt& prompt,
                const apeserve::model::SamplingOptions& options) {
  const Clock::time_point start = Clock::now();
  auto started = StartFor(engine, prompt);
  if (!started.ok()) return Fail(started.status().ToString());
  Engine::Sequence& sequence = **started;
  const double encode_seconds = Seconds(start);
  double first_token_seconds = 0;
  const auto result = apeserve::model::Generate(engine, sequence, prompt.tokens, options,
                                                [&](int32_t, float, absl::string_view) {
                                                  if (first_token_seconds == 0)
                                                    first_token_seconds = Seconds(start);
                                                  return true;
                                                });
  if (!result.ok()) return Fail(result.status().ToString());
  const double total = Seconds(start);
  const auto decoded = static_cast<double>(result->tokens.size() - 1);
  const nlohmann::json out = {
      {"text", result->text},
      {"tokens", result->tokens},
      {"logprobs", result->logprobs},
      {"finish_reason", std::string(apeserve::model::FinishReasonName(result->finish_reason))},
      {"prompt_tokens", sequence.length() - static_cast<int64_t>(result->tokens.size()) + 1},
      {"encode_s", encode_seconds},
      {"time_to_first_token_s", first_token_seconds},
      {"decode_tokens_per_s", decoded > 0 ? decoded / (total - first_token_seconds) : 0.0}};
  std::puts(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

// Parity mode: every prompt position's logits, then greedy tokens regardless of EOS.
int ParityBatch(const Engine& engine, const std::vector<Prompt>& prompts,
                const std::string& logits_path) {
  std::ofstream logits_out(logits_path, std::ios::binary | std::ios::trunc);
  const int64_t vocab = engine.config().vocab_size;
  apeserve::model::SamplingOptions greedy;
  greedy.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  greedy.ignore_eos = true;
  const auto write = [&](const std::vector<float>& logits) {
    logits_out.write(reinterpret_cast<const char*>(logits.data()),
                     static_cast<std::streamsize>(logits.size() * sizeof(float)));
  };
  for (const Prompt& prompt : prompts) {
    auto sequence = StartFor(engine, prompt);
    if (!sequence.ok()) return Fail(sequence.status().ToString());
    auto logits = engine.Feed(**sequence, prompt.tokens, /*all_logits=*/true);
    if (!logits.ok()) return Fail(logits.status().ToString());
    write(*logits);
    // Continue from the last position's logits through the generator's greedy path.
    apeserve::model::Sampler sampler(greedy);
    std::vector<int32_t> tokens;
    std::vector<float> last(logits->end() - vocab, logits->end());
    for (int step = 0; step < greedy.max_tokens; ++step) {
      const auto choice = sampler.Next(last, prompt.tokens);
      tokens.push_back(choice.token);
      if (step + 1 == greedy.max_tokens) break;
      auto next = engine.Feed(**sequence, {choice.token});
      if (!next.ok()) return Fail(next.status().ToString());
      last = *std::move(next);
      write(last);
    }
    std::puts(nlohmann::json({{"tokens", tokens}}).dump().c_str());
  }
  return logits_out.flush() ? 0 : Fail("cannot write --logits_out");
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "apegen: generate with the engine alone.\n"
      "Usage: apegen --model=M.gguf (--prompt=TEXT [--chat | --contexts_file=F.jsonl] | "
      "--token_ids=1,2,3 | --batch_file=F.jsonl) [flags]");
  absl::ParseCommandLine(argc, argv);
  apeserve::LogToStderr();
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");

  apeserve::model::EngineOptions options;
  options.model_path = absl::GetFlag(FLAGS_model);
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  auto engine = Engine::Load(options);
  if (!engine.ok()) return Fail(engine.status().ToString());

  std::vector<Prompt> prompts;
  const apeserve::model::Tokenizer& tokenizer = (*engine)->tokenizer();
  if (!absl::GetFlag(FLAGS_prompt).empty() && !absl::GetFlag(FLAGS_contexts_file).empty()) {
    // An APE prompt from documents: the chat template cuts it into pieces.
    const auto chat = (*engine)->chat_template();
    if (!chat.ok()) return Fail(chat.status().ToString());
    const apeserve::model::PromptPieces pieces(tokenizer, **chat);
    Prompt prompt;
    prompt.ape = true;
    const auto mode = apeserve::model::ParseEncodingMode(absl::GetFlag(FLAGS_mode));
    if (!mode.ok()) return Fail(mode.status().ToString());
    const auto form = apeserve::model::ParseApeScaleForm(absl::GetFlag(FLAGS_ape_form));
    if (!form.ok()) return Fail("--ape_form: " + form.status().ToString());
    prompt.options = {.mode = *mode,
                      .temperature = absl::GetFlag(FLAGS_ape_temperature),
                      .scale = absl::GetFlag(FLAGS_ape_scale),
                      .form = *form};
    prompt.prefix = pieces.Prefix(absl::GetFlag(FLAGS_system));
    std::ifstream in(absl::GetFlag(FLAGS_contexts_file));
    if (!in) return Fail("cannot read --contexts_file");
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
      if (!json.is_object() || !json.contains("text") || !json["text"].is_string()) {
        return Fail("bad --contexts_file line (want {\"text\": ...}): " + line);
      }
      prompt.contexts.push_back(pieces.Context(json["text"].get<std::string>()));
    }
    prompt.tokens = pieces.Query(absl::GetFlag(FLAGS_prompt));
    prompts.push_back(std::move(prompt));
  } else if (!absl::GetFlag(FLAGS_prompt).empty()) {
    std::string text = absl::GetFlag(FLAGS_prompt);
    if (absl::GetFlag(FLAGS_chat)) {
      const auto chat = (*engine)->chat_template();
      if (!chat.ok()) return Fail(chat.status().ToString());
      std::vector<apeserve::model::ChatMessage> messages;
      if (!absl::GetFlag(FLAGS_system).empty()) {
        messages.push_back({"system", absl::GetFlag(FLAGS_system)});
      }
      messages.push_back({"user", text});
      text = (*chat)->Render(messages, /*add_generation_prompt=*/true);
    }
    std::vector<int32_t> ids = tokenizer.Encode(text);
    if (tokenizer.add_bos()) ids.insert(ids.begin(), tokenizer.bos_id());
    prompts.push_back({.tokens = std::move(ids)});
  }
  if (!absl::GetFlag(FLAGS_token_ids).empty()) {
    std::vector<int32_t> ids;
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_token_ids), ',')) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) return Fail("--token_ids must be integers");
      ids.push_back(id);
    }
    prompts.push_back({.tokens = std::move(ids)});
  }
  if (!absl::GetFlag(FLAGS_batch_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_batch_file));
    if (!in) return Fail("cannot read --batch_file");
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto prompt = ParseBatchLine(line);
      if (!prompt.ok()) return Fail(prompt.status().ToString());
      prompts.push_back(*std::move(prompt));
    }
  }
  if (prompts.empty()) return Fail("give --prompt, --token_ids or --batch_file");

  if (!absl::GetFlag(FLAGS_logits_out).empty()) {
    return ParityBatch(**engine, prompts, absl::GetFlag(FLAGS_logits_out));
  }
  const apeserve::model::SamplingOptions sampling = SamplingFromFlags();
  for (const auto& prompt : prompts) {
    if (const int rc = GenerateOne(**engine, prompt, sampling); rc != 0) return rc;
  }
  return 0;
}
