// Evaluation task sets for context-augmented generation, built deterministically from a
// seed (same seed, same items, on every platform): the three families of the APE
// evaluation (see tools/apeeval.cc).
//   kRag:    multi-document fact questions; one document holds the answer, the others
//            are distractors about other made-up people.
//   kLookup: one record among many key-value records spread over several documents.
//   kIcl:    in-context classification; every labelled example is its own context, and
//            the answer is one of the labels.
// Thread-safety: pure functions.
#ifndef APESERVE_TOOLS_EVAL_TASKS_H_
#define APESERVE_TOOLS_EVAL_TASKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace apeserve::tools {

enum class TaskFamily { kRag, kLookup, kIcl };

absl::string_view TaskFamilyName(TaskFamily family);
// "rag", "lookup" or "icl"; INVALID_ARGUMENT otherwise.
absl::StatusOr<TaskFamily> ParseTaskFamily(absl::string_view name);

struct EvalItem {
  std::vector<std::string> documents;  // one context each
  std::string question;
  std::string answer;  // the gold answer, as the assistant should say it
  // kIcl: every label; the prediction is the one whose answer scores highest.
  // Otherwise empty: the prediction is the greedy generation, correct when it
  // contains the answer.
  std::vector<std::string> choices;
};

struct TaskOptions {
  // Items to build. Default: 32.
  int items = 32;
  // Documents per item (kRag, kLookup) or labelled examples (kIcl). Default: 0, the
  // family's own (kRag 6, kLookup 8 documents of 4 records, kIcl 32 examples).
  int contexts = 0;
  // Default: 1.
  uint64_t seed = 1;
};

std::vector<EvalItem> MakeTasks(TaskFamily family, const TaskOptions& options);

}  // namespace apeserve::tools

#endif  // APESERVE_TOOLS_EVAL_TASKS_H_
