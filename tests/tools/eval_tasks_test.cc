// The evaluation task sets: deterministic from their seed, and built so that every
// question has exactly one right answer in its documents.
#include "tools/eval_tasks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "tests/util/status_matchers.h"

namespace apeserve::tools {
namespace {

using ::apeserve::testing::IsOkAndHolds;
using ::apeserve::testing::StatusIs;
using ::testing::HasSubstr;

bool SameItems(const std::vector<EvalItem>& a, const std::vector<EvalItem>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].documents != b[i].documents || a[i].question != b[i].question ||
        a[i].answer != b[i].answer || a[i].choices != b[i].choices) {
      return false;
    }
  }
  return true;
}

TEST(EvalTasksTest, SameSeedSameItemsOtherSeedOtherItems) {
  for (const TaskFamily family : {TaskFamily::kRag, TaskFamily::kLookup, TaskFamily::kIcl}) {
    SCOPED_TRACE(TaskFamilyName(family));
    const auto first = MakeTasks(family, {.items = 10, .seed = 3});
    EXPECT_EQ(first.size(), 10U);
    EXPECT_TRUE(SameItems(first, MakeTasks(family, {.items = 10, .seed = 3})));
    EXPECT_FALSE(SameItems(first, MakeTasks(family, {.items = 10, .seed = 4})));
    for (const EvalItem& item : first) {
      EXPECT_FALSE(item.question.empty());
      EXPECT_FALSE(item.answer.empty());
    }
  }
}

TEST(EvalTasksTest, RagQuestionsNameOnePersonWhoseDocumentHoldsTheAnswer) {
  for (const EvalItem& item : MakeTasks(TaskFamily::kRag, {.items = 30, .seed = 9})) {
    ASSERT_EQ(item.documents.size(), 6U);
    int naming = 0;
    for (const std::string& document : item.documents) {
      // A document names its person first: "<First Last> was born in ...".
      const std::string person = document.substr(0, document.find(" was born"));
      if (!absl::StrContains(item.question, person)) continue;
      ++naming;
      EXPECT_TRUE(absl::StrContains(document, item.answer)) << document << " / " << item.question;
    }
    EXPECT_EQ(naming, 1) << item.question;
    EXPECT_TRUE(item.choices.empty());
  }
}

TEST(EvalTasksTest, LookupKeysAreUniqueAndTheAnswerIsTheirValue) {
  for (const EvalItem& item :
       MakeTasks(TaskFamily::kLookup, {.items = 20, .contexts = 5, .seed = 2})) {
    ASSERT_EQ(item.documents.size(), 5U);
    const std::string key =
        item.question.substr(item.question.find("record ") + 7, 7);  // "AB-1234"
    int holding = 0;
    for (const std::string& document : item.documents) {
      const std::string line = absl::StrCat("Record ", key, " has value ", item.answer, ".");
      holding += absl::StrContains(document, line) ? 1 : 0;
      EXPECT_EQ(std::count(document.begin(), document.end(), '\n'), 4);
    }
    EXPECT_EQ(holding, 1) << item.question;
  }
}

TEST(EvalTasksTest, IclExamplesAreBalancedAndTheAnswerIsALabel) {
  for (const EvalItem& item : MakeTasks(TaskFamily::kIcl, {.items = 10, .seed = 5})) {
    ASSERT_EQ(item.documents.size(), 32U);
    ASSERT_EQ(item.choices.size(), 4U);
    EXPECT_NE(std::find(item.choices.begin(), item.choices.end(), item.answer), item.choices.end());
    std::map<std::string, int> per_label;
    for (const std::string& example : item.documents) {
      ++per_label[example.substr(example.rfind("Label: ") + 7)];
    }
    for (const std::string& label : item.choices) EXPECT_EQ(per_label[label], 8) << label;
  }
}

TEST(EvalTasksTest, ParsesFamilyNames) {
  EXPECT_THAT(ParseTaskFamily("icl"), IsOkAndHolds(TaskFamily::kIcl));
  EXPECT_THAT(ParseTaskFamily("qa"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'qa' is not one of")));
}

}  // namespace
}  // namespace apeserve::tools
