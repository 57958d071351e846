// apeeval: the quality of APE against SEQUENTIAL and PARALLEL encoding, with the engine
// alone, on task sets built from a seed (tools/eval_tasks.h).
//
//   apeeval eval --model=M.gguf [--families=rag,lookup,icl --items=24 --seed=1]
//                [--ape_temperature=T --ape_scale=S | --calibration=calibration.json]
//   apeeval calibrate --model=M.gguf --family=rag [--items=32 --seed=2]
//                     [--temperatures=0.5,0.6,... --scales=0.5,0.75,...] --out=calibration.json
//
// eval reports, per family and mode, the accuracy, the mean negative log-likelihood of
// the gold answer, the mean KL(SEQUENTIAL || mode) of the first answer token and the
// mean time to the first token (the contexts are pre-encoded for PARALLEL and APE, as a
// server with a warm store has them). calibrate searches T and S on the first half of
// the items to bring APE's first-token distribution closest to SEQUENTIAL's, reports
// the held-out half, and writes the chosen values as JSON, which eval (and the server's
// --ape_calibration) reads.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
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
#include "tools/eval_runner.h"
#include "tools/eval_tasks.h"

ABSL_FLAG(std::string, model, "", "GGUF model file or Hugging Face folder (required)");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "auto, float32, bfloat16 or float16");
ABSL_FLAG(std::vector<std::string>, families, (std::vector<std::string>{"rag", "lookup", "icl"}),
          "eval: task families");
ABSL_FLAG(std::string, family, "rag", "calibrate: the task family to calibrate on");
ABSL_FLAG(int, items, 24, "items per family");
ABSL_FLAG(int, contexts, 0, "documents or examples per item (0: the family's default)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the task sets");
ABSL_FLAG(std::string, system, "Answer the question using the documents.", "system prompt");
ABSL_FLAG(float, ape_temperature, 1.0F, "eval: APE's temperature T");
ABSL_FLAG(float, ape_scale, 1.0F, "eval: APE's scaling factor S");
ABSL_FLAG(std::string, calibration, "", "eval: take T and S from this calibrate output");
ABSL_FLAG(int, max_tokens, 12, "tokens generated for a free-form answer");
ABSL_FLAG(std::vector<std::string>, temperatures,
          (std::vector<std::string>{"0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"}),
          "calibrate: T grid");
ABSL_FLAG(std::vector<std::string>, scales,
          (std::vector<std::string>{"0.25", "0.35", "0.5", "0.7", "1.0", "1.4"}),
          "calibrate: S grid");
ABSL_FLAG(std::string, out, "", "calibrate: write the chosen T and S here (JSON)");
ABSL_FLAG(std::string, json_out, "", "eval: also write the results here (JSON)");

namespace {

using apeserve::model::ApeOptions;
using apeserve::model::EncodingMode;
using apeserve::tools::EvalRunner;
using apeserve::tools::PreparedItem;

int Fail(const std::string& message) {
  std::fprintf(stderr, "apeeval: %s\n", message.c_str());
  return 1;
}

struct Tally {
  int items = 0, correct = 0;
  double nll = 0, kl = 0, first_token_seconds = 0;

  nlohmann::json ToJson() const {
    return {{"accuracy", items ? static_cast<double>(correct) / items : 0.0},
            {"answer_nll", items ? nll / items : 0.0},
            {"kl_from_sequential", items ? kl / items : 0.0},
            {"first_token_ms", items ? 1000 * first_token_seconds / items : 0.0}};
  }
};

absl::StatusOr<std::vector<float>> ParseFloats(const std::vector<std::string>& texts) {
  std::vector<float> values;
  for (const std::string& text : texts) {
    float value = 0;
    if (!absl::SimpleAtof(text, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a number"));
    }
    values.push_back(value);
  }
  return values;
}

std::vector<apeserve::tools::EvalItem> Tasks(apeserve::tools::TaskFamily family) {
  return apeserve::tools::MakeTasks(family, {.items = absl::GetFlag(FLAGS_items),
                                             .contexts = absl::GetFlag(FLAGS_contexts),
                                             .seed = absl::GetFlag(FLAGS_seed)});
}

int Eval(const apeserve::model::Engine& engine, const EvalRunner& runner) {
  ApeOptions ape{.mode = EncodingMode::kApe,
                 .temperature = absl::GetFlag(FLAGS_ape_temperature),
                 .scale = absl::GetFlag(FLAGS_ape_scale)};
  if (!absl::GetFlag(FLAGS_calibration).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_calibration));
    std::ostringstream text;
    text << in.rdbuf();
    auto calibrated = apeserve::model::ApeOptionsFromCalibration(text.str());
    if (!calibrated.ok()) return Fail("--calibration: " + calibrated.status().ToString());
    const nlohmann::json calibration = nlohmann::json::parse(text.str(), nullptr, false);
    if (calibration.value("model_fingerprint", "") != engine.fingerprint()) {
      apeserve::LogWarning("--calibration was made for another model");
    }
    ape = *calibrated;
  }
  if (absl::Status valid = ape.Validate(); !valid.ok()) return Fail(valid.ToString());
  const std::vector<std::pair<std::string, ApeOptions>> modes = {
      {"sequential", {.mode = EncodingMode::kSequential}},
      {"parallel", {.mode = EncodingMode::kParallel}},
      {absl::StrCat("ape(T=", ape.temperature, ",S=", ape.scale, ")"), ape}};

  nlohmann::json results = {{"model_fingerprint", engine.fingerprint()},
                            {"seed", absl::GetFlag(FLAGS_seed)},
                            {"families", nlohmann::json::object()}};
  std::printf("%-8s %-18s %9s %11s %10s %14s\n", "family", "mode", "accuracy", "answer NLL",
              "KL(seq||m)", "first token ms");
  for (const std::string& name : absl::GetFlag(FLAGS_families)) {
    const auto family = apeserve::tools::ParseTaskFamily(name);
    if (!family.ok()) return Fail(family.status().ToString());
    std::vector<Tally> tallies(modes.size());
    double encode_seconds = 0;
    for (const apeserve::tools::EvalItem& item : Tasks(*family)) {
      auto prepared = runner.Prepare(item);
      if (!prepared.ok()) return Fail(prepared.status().ToString());
      encode_seconds += prepared->encode_seconds;
      std::vector<float> sequential;
      for (size_t m = 0; m < modes.size(); ++m) {
        auto outcome = runner.Run(*prepared, modes[m].second, absl::GetFlag(FLAGS_max_tokens));
        if (!outcome.ok()) return Fail(outcome.status().ToString());
        if (m == 0) sequential = outcome->first_token_logprobs;
        Tally& tally = tallies[m];
        ++tally.items;
        tally.correct += outcome->correct ? 1 : 0;
        tally.nll += outcome->answer_nll;
        tally.kl += apeserve::tools::KlDivergence(sequential, outcome->first_token_logprobs);
        tally.first_token_seconds += outcome->first_token_seconds;
      }
    }
    nlohmann::json family_json = {
        {"items", tallies[0].items},
        {"context_encode_ms_per_item", 1000 * encode_seconds / std::max(tallies[0].items, 1)}};
    for (size_t m = 0; m < modes.size(); ++m) {
      const nlohmann::json row = tallies[m].ToJson();
      family_json[modes[m].first] = row;
      std::printf("%-8s %-18s %9.3f %11.3f %10.4f %14.1f\n", name.c_str(), modes[m].first.c_str(),
                  row["accuracy"].get<double>(), row["answer_nll"].get<double>(),
                  row["kl_from_sequential"].get<double>(), row["first_token_ms"].get<double>());
    }
    std::fflush(stdout);
    results["families"][name] = family_json;
  }
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_json_out)) << results.dump(2) << "\n";
  }
  return 0;
}

// A float flag value as the decimal it was written as (0.9, not 0.8999999761581421).
double Rounded(float value) { return std::round(static_cast<double>(value) * 1e4) / 1e4; }

// Mean KL(SEQUENTIAL || options) over `items`, given SEQUENTIAL's distributions.
absl::StatusOr<double> MeanKl(const EvalRunner& runner, const std::vector<PreparedItem>& items,
                              const std::vector<std::vector<float>>& sequential,
                              const ApeOptions& options) {
  double total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    auto logprobs = runner.FirstTokenLogprobs(items[i], options);
    if (!logprobs.ok()) return logprobs.status();
    total += apeserve::tools::KlDivergence(sequential[i], *logprobs);
  }
  return items.empty() ? 0.0 : total / static_cast<double>(items.size());
}

int Calibrate(const apeserve::model::Engine& engine, const EvalRunner& runner) {
  const auto family = apeserve::tools::ParseTaskFamily(absl::GetFlag(FLAGS_family));
  if (!family.ok()) return Fail(family.status().ToString());
  const auto temperatures = ParseFloats(absl::GetFlag(FLAGS_temperatures));
  const auto scales = ParseFloats(absl::GetFlag(FLAGS_scales));
  if (!temperatures.ok() || !scales.ok()) return Fail("--temperatures and --scales take numbers");
  const std::vector<apeserve::tools::EvalItem> tasks = Tasks(*family);
  if (tasks.size() < 2) return Fail("--items must be at least 2 (half calibrate, half hold out)");

  // First half: search; second half: held out.
  std::vector<PreparedItem> search, held_out;
  std::vector<std::vector<float>> search_sequential, held_out_sequential;
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto prepared = runner.Prepare(tasks[i]);
    if (!prepared.ok()) return Fail(prepared.status().ToString());
    auto sequential = runner.FirstTokenLogprobs(*prepared, {.mode = EncodingMode::kSequential});
    if (!sequential.ok()) return Fail(sequential.status().ToString());
    const bool searching = i < tasks.size() / 2;
    (searching ? search : held_out).push_back(*std::move(prepared));
    (searching ? search_sequential : held_out_sequential).push_back(*std::move(sequential));
  }

  ApeOptions best{.mode = EncodingMode::kApe};
  double best_kl = std::numeric_limits<double>::infinity();
  nlohmann::json grid = nlohmann::json::array();
  std::printf("%6s %6s %14s\n", "T", "S", "KL(seq||ape)");
  for (const float temperature : *temperatures) {
    for (const float scale : *scales) {
      const ApeOptions options{
          .mode = EncodingMode::kApe, .temperature = temperature, .scale = scale};
      if (absl::Status valid = options.Validate(); !valid.ok()) return Fail(valid.ToString());
      auto kl = MeanKl(runner, search, search_sequential, options);
      if (!kl.ok()) return Fail(kl.status().ToString());
      std::printf("%6.2f %6.2f %14.4f\n", temperature, scale, *kl);
      grid.push_back({{"temperature", Rounded(temperature)},
                      {"scale", Rounded(scale)},
                      {"kl_from_sequential", *kl}});
      std::fflush(stdout);
      if (*kl < best_kl) {
        best_kl = *kl;
        best = options;
      }
    }
  }

  nlohmann::json held_out_json;
  for (const auto& [name, options] : std::vector<std::pair<std::string, ApeOptions>>{
           {"parallel", {.mode = EncodingMode::kParallel}},
           {"ape_default", {.mode = EncodingMode::kApe}},
           {"ape_calibrated", best}}) {
    auto kl = MeanKl(runner, held_out, held_out_sequential, options);
    if (!kl.ok()) return Fail(kl.status().ToString());
    held_out_json[name] = {{"kl_from_sequential", *kl}};
  }
  const nlohmann::json result = {
      {"model_fingerprint", engine.fingerprint()},
      {"family", absl::GetFlag(FLAGS_family)},
      {"temperature", Rounded(best.temperature)},
      {"scale", Rounded(best.scale)},
      {"search_items", search.size()},
      {"search_kl", best_kl},
      {"grid", grid},
      {"held_out_items", held_out.size()},
      {"held_out", held_out_json},
  };
  std::printf("chosen T=%.2f S=%.2f\n%s\n", best.temperature, best.scale, result.dump(2).c_str());
  if (!absl::GetFlag(FLAGS_out).empty()) {
    std::ofstream out(absl::GetFlag(FLAGS_out));
    out << result.dump(2) << "\n";
    if (!out.flush()) return Fail("cannot write --out");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "apeeval: APE's quality against sequential and parallel encoding.\n"
      "Usage: apeeval (eval | calibrate) --model=M.gguf [flags]");
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  apeserve::LogToStderr();
  if (args.size() != 2 || (std::string(args[1]) != "eval" && std::string(args[1]) != "calibrate")) {
    return Fail("give one command: eval or calibrate");
  }
  if (absl::GetFlag(FLAGS_model).empty()) return Fail("--model is required");
  apeserve::model::EngineOptions options;
  options.model_path = absl::GetFlag(FLAGS_model);
  options.device = absl::GetFlag(FLAGS_device);
  options.dtype = absl::GetFlag(FLAGS_dtype);
  auto engine = apeserve::model::Engine::Load(options);
  if (!engine.ok()) return Fail(engine.status().ToString());
  auto runner = EvalRunner::Create(**engine, absl::GetFlag(FLAGS_system));
  if (!runner.ok()) return Fail(runner.status().ToString());
  return std::string(args[1]) == "eval" ? Eval(**engine, *runner) : Calibrate(**engine, *runner);
}
