// apeeval: the quality of APE against SEQUENTIAL and PARALLEL encoding, with the engine
// alone, on task sets built from a seed (tools/eval_tasks.h).
//
//   apeeval eval --model=M.gguf [--families=rag,lookup,icl --items=24 --seed=1]
//                [--ape_temperature=T --ape_scale=S --ape_form=F]
//                [--calibration=a.json,b.json]
//   apeeval calibrate --model=M.gguf [--families=rag,lookup,icl --items=32 --seed=2]
//                     [--forms=multiplicative,additive --temperatures=0.3,0.4,...
//                      --scales=0.2,0.3,... --refine_rounds=2]
//                     --out=calibration.json [--per_family_out=DIR]
//
// eval reports, per family and mode, the accuracy, the mean negative log-likelihood of
// the gold answer, the mean KL(SEQUENTIAL || mode) of the first answer token and the
// mean time to the first token (the contexts are pre-encoded for PARALLEL and APE, as a
// server with a warm store has them). Its APE rows: the flags' T, S and form (default:
// the published form at the authors' T = S = 0.9), and one row per calibration file.
//
// calibrate searches the APE scale form, T and S (tools/ape_calibration.h: a grid over
// both forms, then a compass search around each form's best) on the first half of each
// family's items, for the least KL of the first answer token from SEQUENTIAL, averaged
// over the families; it reports the held-out halves and each family's own best, and
// writes the choice as JSON, which eval and the server's --ape_calibration read.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "model/engine.h"
#include "tools/ape_calibration.h"
#include "tools/eval_runner.h"
#include "tools/eval_tasks.h"

ABSL_FLAG(std::string, model, "", "GGUF model file or Hugging Face folder (required)");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "auto, float32, bfloat16 or float16");
ABSL_FLAG(std::vector<std::string>, families, (std::vector<std::string>{"rag", "lookup", "icl"}),
          "task families (calibrate: the search averages over them)");
ABSL_FLAG(int, items, 24, "items per family");
ABSL_FLAG(int, contexts, 0, "documents or examples per item (0: the family's default)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the task sets");
ABSL_FLAG(std::string, system, "Answer the question using the documents.", "system prompt");
ABSL_FLAG(float, ape_temperature, apeserve::model::kDefaultApeTemperature,
          "eval: APE's temperature T");
ABSL_FLAG(float, ape_scale, apeserve::model::kDefaultApeScale, "eval: APE's scaling factor S");
ABSL_FLAG(std::string, ape_form, "multiplicative",
          "eval: how S enters APE, multiplicative (published) or additive");
ABSL_FLAG(std::vector<std::string>, calibration, {},
          "eval: also evaluate APE with the values of each of these calibrate outputs");
ABSL_FLAG(int, max_tokens, 12, "tokens generated for a free-form answer");
ABSL_FLAG(std::vector<std::string>, forms, (std::vector<std::string>{"multiplicative", "additive"}),
          "calibrate: forms searched");
ABSL_FLAG(std::vector<std::string>, temperatures,
          (std::vector<std::string>{"0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"}),
          "calibrate: T grid");
ABSL_FLAG(std::vector<std::string>, scales,
          (std::vector<std::string>{"0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0",
                                    "1.2", "1.5"}),
          "calibrate: S grid");
ABSL_FLAG(int, refine_rounds, 2,
          "calibrate: compass-search halvings after the grid, from a step of 0.05 (0: grid only)");
ABSL_FLAG(std::string, out, "", "calibrate: write the choice here (JSON)");
ABSL_FLAG(std::string, per_family_out, "",
          "calibrate: also write each family's own best to DIR/<family>.json");
ABSL_FLAG(std::string, json_out, "", "eval: also write the results here (JSON)");

namespace {

using apeserve::model::ApeOptions;
using apeserve::model::ApeScaleForm;
using apeserve::model::EncodingMode;
using apeserve::tools::EvalRunner;
using apeserve::tools::PreparedItem;
using apeserve::tools::TaskFamily;

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

absl::StatusOr<std::vector<TaskFamily>> Families() {
  std::vector<TaskFamily> families;
  for (const std::string& name : absl::GetFlag(FLAGS_families)) {
    absl::StatusOr<TaskFamily> family = apeserve::tools::ParseTaskFamily(name);
    if (!family.ok()) return family.status();
    if (std::find(families.begin(), families.end(), *family) != families.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--families names '", name, "' twice"));
    }
    families.push_back(*family);
  }
  if (families.empty()) return absl::InvalidArgumentError("--families names no family");
  return families;
}

std::vector<apeserve::tools::EvalItem> Tasks(TaskFamily family) {
  return apeserve::tools::MakeTasks(family, {.items = absl::GetFlag(FLAGS_items),
                                             .contexts = absl::GetFlag(FLAGS_contexts),
                                             .seed = absl::GetFlag(FLAGS_seed)});
}

// A float as the decimal it was written as (0.9, not 0.8999999761581421).
double Rounded(float value) { return std::round(static_cast<double>(value) * 1e4) / 1e4; }

// "ape(multiplicative,T=0.9,S=0.9)"
std::string ApeLabel(const ApeOptions& options) {
  return absl::StrCat("ape(", apeserve::model::ApeScaleFormName(options.form),
                      ",T=", Rounded(options.temperature), ",S=", Rounded(options.scale), ")");
}

// The form, T and S of an APE setting, as calibration files and reports write them.
nlohmann::json ApeJson(const ApeOptions& options) {
  return {{"form", std::string(apeserve::model::ApeScaleFormName(options.form))},
          {"temperature", Rounded(options.temperature)},
          {"scale", Rounded(options.scale)}};
}

absl::StatusOr<ApeOptions> ReadCalibration(const apeserve::model::Engine& engine,
                                           const std::string& path) {
  auto calibration = apeserve::model::ReadApeCalibration(path);
  if (!calibration.ok()) {
    return absl::Status(calibration.status().code(),
                        absl::StrCat(path, ": ", calibration.status().message()));
  }
  if (!calibration->model_fingerprint.empty() &&
      calibration->model_fingerprint != engine.fingerprint()) {
    apeserve::LogWarning(absl::StrCat("calibration '", path, "' was made for another model"));
  }
  return calibration->options;
}

int Eval(const apeserve::model::Engine& engine, const EvalRunner& runner) {
  const auto families = Families();
  if (!families.ok()) return Fail(families.status().ToString());
  const auto form = apeserve::model::ParseApeScaleForm(absl::GetFlag(FLAGS_ape_form));
  if (!form.ok()) return Fail("--ape_form: " + form.status().ToString());
  const ApeOptions flags{.mode = EncodingMode::kApe,
                         .temperature = absl::GetFlag(FLAGS_ape_temperature),
                         .scale = absl::GetFlag(FLAGS_ape_scale),
                         .form = *form};
  if (absl::Status valid = flags.Validate(); !valid.ok()) return Fail(valid.ToString());

  struct Row {
    std::string label;
    ApeOptions options;
    std::string source;  // APE rows: "flags" or the calibration file
  };
  std::vector<Row> rows = {{"sequential", {.mode = EncodingMode::kSequential}, ""},
                           {"parallel", {.mode = EncodingMode::kParallel}, ""},
                           {ApeLabel(flags), flags, "flags"}};
  for (const std::string& path : absl::GetFlag(FLAGS_calibration)) {
    const auto calibrated = ReadCalibration(engine, path);
    if (!calibrated.ok()) return Fail("--calibration: " + calibrated.status().ToString());
    const std::string label = ApeLabel(*calibrated);
    const bool known =
        std::any_of(rows.begin(), rows.end(), [&](const Row& row) { return row.label == label; });
    if (!known) rows.push_back({label, *calibrated, path});
  }

  nlohmann::json results = {{"model_fingerprint", engine.fingerprint()},
                            {"seed", absl::GetFlag(FLAGS_seed)},
                            {"families", nlohmann::json::object()}};
  std::printf("%-8s %-34s %9s %11s %10s %14s\n", "family", "mode", "accuracy", "answer NLL",
              "KL(seq||m)", "first token ms");
  for (const TaskFamily family : *families) {
    const std::string name(apeserve::tools::TaskFamilyName(family));
    std::vector<Tally> tallies(rows.size());
    double encode_seconds = 0;
    for (const apeserve::tools::EvalItem& item : Tasks(family)) {
      auto prepared = runner.Prepare(item);
      if (!prepared.ok()) return Fail(prepared.status().ToString());
      encode_seconds += prepared->encode_seconds;
      std::vector<float> sequential;
      for (size_t m = 0; m < rows.size(); ++m) {
        auto outcome = runner.Run(*prepared, rows[m].options, absl::GetFlag(FLAGS_max_tokens));
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
    for (size_t m = 0; m < rows.size(); ++m) {
      nlohmann::json row = tallies[m].ToJson();
      if (rows[m].options.mode == EncodingMode::kApe) {
        row.update(ApeJson(rows[m].options));
        row["source"] = rows[m].source;
      }
      std::printf("%-8s %-34s %9.3f %11.3f %10.4f %14.1f\n", name.c_str(), rows[m].label.c_str(),
                  row["accuracy"].get<double>(), row["answer_nll"].get<double>(),
                  row["kl_from_sequential"].get<double>(), row["first_token_ms"].get<double>());
      family_json[rows[m].label] = row;
    }
    std::fflush(stdout);
    results["families"][name] = family_json;
  }
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_json_out)) << results.dump(2) << "\n";
  }
  return 0;
}

// One family's items, split in half: the first to search on, the rest held out, each
// with SEQUENTIAL's first-token distribution.
struct FamilyItems {
  std::string name;
  std::vector<PreparedItem> search = {}, held_out = {};
  std::vector<std::vector<float>> search_sequential = {}, held_out_sequential = {};
};

absl::StatusOr<FamilyItems> PrepareFamily(const EvalRunner& runner, TaskFamily family) {
  FamilyItems items{.name = std::string(apeserve::tools::TaskFamilyName(family))};
  const std::vector<apeserve::tools::EvalItem> tasks = Tasks(family);
  if (tasks.size() < 2) {
    return absl::InvalidArgumentError("--items must be at least 2 (half calibrate, half hold out)");
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto prepared = runner.Prepare(tasks[i]);
    if (!prepared.ok()) return prepared.status();
    auto sequential = runner.FirstTokenLogprobs(*prepared, {.mode = EncodingMode::kSequential});
    if (!sequential.ok()) return sequential.status();
    const bool searching = i < tasks.size() / 2;
    (searching ? items.search : items.held_out).push_back(*std::move(prepared));
    (searching ? items.search_sequential : items.held_out_sequential)
        .push_back(*std::move(sequential));
  }
  return items;
}

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

absl::StatusOr<apeserve::tools::CalibrationSearchOptions> SearchOptionsFromFlags() {
  apeserve::tools::CalibrationSearchOptions options;
  options.forms.clear();
  for (const std::string& name : absl::GetFlag(FLAGS_forms)) {
    absl::StatusOr<ApeScaleForm> form = apeserve::model::ParseApeScaleForm(name);
    if (!form.ok()) return form.status();
    options.forms.push_back(*form);
  }
  const auto temperatures = ParseFloats(absl::GetFlag(FLAGS_temperatures));
  const auto scales = ParseFloats(absl::GetFlag(FLAGS_scales));
  if (!temperatures.ok()) return temperatures.status();
  if (!scales.ok()) return scales.status();
  options.temperatures = *temperatures;
  options.scales = *scales;
  options.refine_rounds = absl::GetFlag(FLAGS_refine_rounds);
  return options;
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

int Calibrate(const apeserve::model::Engine& engine, const EvalRunner& runner) {
  const auto families = Families();
  if (!families.ok()) return Fail(families.status().ToString());
  const auto search_options = SearchOptionsFromFlags();
  if (!search_options.ok()) return Fail(search_options.status().ToString());
  std::vector<FamilyItems> items;
  for (const TaskFamily family : *families) {
    auto prepared = PrepareFamily(runner, family);
    if (!prepared.ok()) return Fail(prepared.status().ToString());
    items.push_back(*std::move(prepared));
  }

  // The objective: per family, the mean KL over its search items.
  const auto objective = [&](const ApeOptions& options) -> absl::StatusOr<std::vector<double>> {
    std::vector<double> kl;
    for (const FamilyItems& family : items) {
      auto mean = MeanKl(runner, family.search, family.search_sequential, options);
      if (!mean.ok()) return mean.status();
      kl.push_back(*mean);
    }
    return kl;
  };
  std::printf("%-14s %6s %6s %12s", "form", "T", "S", "mean KL");
  for (const FamilyItems& family : items) std::printf(" %10s", family.name.c_str());
  std::printf("\n");
  const auto progress = [](const apeserve::tools::CalibrationPoint& point) {
    std::printf("%-14s %6.4g %6.4g %12.4f",
                std::string(apeserve::model::ApeScaleFormName(point.options.form)).c_str(),
                point.options.temperature, point.options.scale, point.mean_divergence);
    for (const double kl : point.family_divergence) std::printf(" %10.4f", kl);
    std::printf("%s\n", point.refined ? "  (refined)" : "");
    std::fflush(stdout);
  };
  const auto search = apeserve::tools::SearchApeCalibration(*search_options, objective, progress);
  if (!search.ok()) return Fail(search.status().ToString());
  const ApeOptions& best = search->points[search->best].options;

  nlohmann::json points = nlohmann::json::array();
  for (const apeserve::tools::CalibrationPoint& point : search->points) {
    nlohmann::json json = ApeJson(point.options);
    json["kl_from_sequential"] = point.mean_divergence;
    for (size_t f = 0; f < items.size(); ++f) {
      json["per_family"][items[f].name] = point.family_divergence[f];
    }
    json["refined"] = point.refined;
    points.push_back(std::move(json));
  }
  nlohmann::json best_per_form = nlohmann::json::object();
  for (const ApeScaleForm form : search_options->forms) {
    const size_t index = *apeserve::tools::BestPoint(*search, std::nullopt, form);
    best_per_form[std::string(apeserve::model::ApeScaleFormName(form))] = points[index];
  }

  // Held out, per family: PARALLEL, the published defaults, the choice, the family's own
  // best, and the family's best in each form; and the first three over all families.
  const std::vector<std::pair<std::string, ApeOptions>> compared = {
      {"parallel", {.mode = EncodingMode::kParallel}},
      {"ape_published", {}},
      {"ape_calibrated", best}};
  nlohmann::json per_family = nlohmann::json::object();
  for (size_t f = 0; f < items.size(); ++f) {
    const FamilyItems& family = items[f];
    const auto held_out_kl = [&](const ApeOptions& options) {
      return MeanKl(runner, family.held_out, family.held_out_sequential, options);
    };
    // The family's best in each form, searched and held out; its best overall is the
    // better of those (held-out KL computed once per point).
    nlohmann::json per_form = nlohmann::json::object();
    std::string best_form;
    for (const ApeScaleForm form : search_options->forms) {
      const apeserve::tools::CalibrationPoint& point =
          search->points[*apeserve::tools::BestPoint(*search, f, form)];
      auto kl = held_out_kl(point.options);
      if (!kl.ok()) return Fail(kl.status().ToString());
      nlohmann::json json = ApeJson(point.options);
      json["search_kl"] = point.family_divergence[f];
      json["held_out_kl"] = *kl;
      const std::string name(apeserve::model::ApeScaleFormName(form));
      if (best_form.empty() ||
          point.family_divergence[f] < per_form[best_form]["search_kl"].get<double>()) {
        best_form = name;
      }
      per_form[name] = std::move(json);
    }
    nlohmann::json family_json = per_form[best_form];
    for (const auto& [name, options] : compared) {
      auto kl = held_out_kl(options);
      if (!kl.ok()) return Fail(kl.status().ToString());
      family_json["held_out"][name] = {{"kl_from_sequential", *kl}};
    }
    family_json["held_out"]["ape_family_calibrated"] = {
        {"kl_from_sequential", family_json["held_out_kl"]}};
    family_json["per_form"] = std::move(per_form);
    per_family[family.name] = std::move(family_json);
  }
  nlohmann::json held_out = nlohmann::json::object();
  for (const auto& entry : compared) {
    double sum = 0;
    for (const auto& family : per_family) {
      sum += family["held_out"][entry.first]["kl_from_sequential"].get<double>();
    }
    held_out[entry.first] = {{"kl_from_sequential", sum / static_cast<double>(items.size())}};
  }

  nlohmann::json result = {
      {"model_fingerprint", engine.fingerprint()},
      {"families", absl::GetFlag(FLAGS_families)},
      {"seed", absl::GetFlag(FLAGS_seed)},
      {"search_items_per_family", items.front().search.size()},
      {"held_out_items_per_family", items.front().held_out.size()},
      {"search_kl", search->points[search->best].mean_divergence},
      {"held_out", held_out},
      {"per_family", per_family},
      {"best_per_form", best_per_form},
      {"points_evaluated", search->points.size()},
      {"points", points},
  };
  result.update(ApeJson(best));
  std::printf("chosen %s\nheld out KL: parallel %.4f, published defaults %.4f, chosen %.4f\n",
              ApeLabel(best).c_str(), held_out["parallel"]["kl_from_sequential"].get<double>(),
              held_out["ape_published"]["kl_from_sequential"].get<double>(),
              held_out["ape_calibrated"]["kl_from_sequential"].get<double>());
  if (!absl::GetFlag(FLAGS_out).empty()) {
    if (absl::Status written = WriteJson(absl::GetFlag(FLAGS_out), result); !written.ok()) {
      return Fail(written.ToString());
    }
  }
  if (const std::string dir = absl::GetFlag(FLAGS_per_family_out); !dir.empty()) {
    // DIR/<family>.json: the family's best; DIR/<family>-<form>.json: its best per form.
    for (const auto& [family, json] : per_family.items()) {
      std::vector<std::pair<std::string, nlohmann::json>> files = {{family, json}};
      for (const auto& [form, own] : json["per_form"].items()) {
        files.emplace_back(absl::StrCat(family, "-", form), own);
      }
      for (auto& [name, file] : files) {
        file.erase("per_form");
        file["model_fingerprint"] = engine.fingerprint();
        file["family"] = family;
        if (absl::Status written = WriteJson(absl::StrCat(dir, "/", name, ".json"), file);
            !written.ok()) {
          return Fail(written.ToString());
        }
      }
    }
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
