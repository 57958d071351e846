// apegen: generates with the inference engine alone, no server. Prints, per prompt,
// one JSON line with the generated token ids and their log-probabilities.
//
//   apegen --model=M.gguf --token_ids=1,2,3 [--max_tokens=64]
//   apegen --model=M.gguf --batch_file=prompts.jsonl --logits_out=prefill.f32
//
// A batch file holds one JSON object per line, {"token_ids": [...]}. --logits_out
// writes the fp32 logits of every prompt position, prompt after prompt, for parity
// checks against a reference implementation.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "model/engine.h"

ABSL_FLAG(std::string, model, "", "GGUF model file (required)");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "auto, float32, bfloat16 or float16");
ABSL_FLAG(std::string, token_ids, "", "comma-separated prompt token ids");
ABSL_FLAG(std::string, batch_file, "", "JSON lines of {\"token_ids\": [...]}, one prompt each");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate per prompt (greedy)");
ABSL_FLAG(std::string, logits_out, "", "write the prompt positions' fp32 logits here");

namespace {

using apeserve::model::Engine;

// log-softmax of `logits` at `index`, and the arg-max.
std::pair<int32_t, double> Greedy(const float* logits, int64_t vocab) {
  int32_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i)
    sum += std::exp(static_cast<double>(logits[i] - logits[best]));
  return {best, -std::log(sum)};
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "apegen: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "apegen: generate with the engine alone.\n"
      "Usage: apegen --model=M.gguf (--token_ids=1,2,3 | --batch_file=F.jsonl) [flags]");
  absl::ParseCommandLine(argc, argv);
  apeserve::LogToStderr();
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");

  std::vector<std::vector<int32_t>> prompts;
  if (!absl::GetFlag(FLAGS_token_ids).empty()) {
    std::vector<int32_t> ids;
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_token_ids), ',')) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) return Fail("--token_ids must be integers");
      ids.push_back(id);
    }
    prompts.push_back(std::move(ids));
  }
  if (!absl::GetFlag(FLAGS_batch_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_batch_file));
    if (!in) return Fail("cannot read --batch_file");
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const nlohmann::json json = nlohmann::json::parse(line, nullptr, false);
      if (!json.is_object() || !json.contains("token_ids")) return Fail("bad batch line: " + line);
      prompts.push_back(json.at("token_ids").get<std::vector<int32_t>>());
    }
  }
  if (prompts.empty()) return Fail("give --token_ids or --batch_file");

  apeserve::model::EngineOptions options;
  options.model_path = absl::GetFlag(FLAGS_model);
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  auto engine = Engine::Load(options);
  if (!engine.ok()) return Fail(engine.status().ToString());
  const int64_t vocab = (*engine)->config().vocab_size;

  std::ofstream logits_out;
  if (!absl::GetFlag(FLAGS_logits_out).empty()) {
    logits_out.open(absl::GetFlag(FLAGS_logits_out), std::ios::binary | std::ios::trunc);
  }
  for (const std::vector<int32_t>& prompt : prompts) {
    auto sequence = (*engine)->NewSequence();
    auto logits = (*engine)->Feed(*sequence, prompt, /*all_logits=*/logits_out.is_open());
    if (!logits.ok()) return Fail(logits.status().ToString());
    if (logits_out.is_open()) {
      logits_out.write(reinterpret_cast<const char*>(logits->data()),
                       static_cast<std::streamsize>(logits->size() * sizeof(float)));
    }
    nlohmann::json result = {{"tokens", nlohmann::json::array()},
                             {"logprobs", nlohmann::json::array()}};
    const float* last = logits->data() + logits->size() - static_cast<size_t>(vocab);
    for (int step = 0; step < absl::GetFlag(FLAGS_max_tokens); ++step) {
      const auto [token, logprob] = Greedy(last, vocab);
      result["tokens"].push_back(token);
      result["logprobs"].push_back(logprob);
      if (step + 1 == absl::GetFlag(FLAGS_max_tokens)) break;
      logits = (*engine)->Feed(*sequence, {token});
      if (!logits.ok()) return Fail(logits.status().ToString());
      last = logits->data();
    }
    std::puts(result.dump().c_str());
  }
  return logits_out.is_open() && !logits_out.flush() ? Fail("cannot write --logits_out") : 0;
}
