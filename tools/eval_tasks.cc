#include "tools/eval_tasks.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace apeserve::tools {
namespace {

// std::mt19937_64's sequence is fixed by the standard; the distributions are not, so
// draws go through these helpers only.
class Draw {
 public:
  explicit Draw(uint64_t seed) : random_(seed) {}
  size_t Below(size_t n) { return static_cast<size_t>(random_() % n); }
  int Between(int low, int high) { return low + static_cast<int>(Below(high - low + 1)); }
  template <typename T>
  const T& Pick(const std::vector<T>& from) {
    return from[Below(from.size())];
  }
  template <typename T>
  void Shuffle(std::vector<T>& items) {
    for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[Below(i)]);
  }

 private:
  std::mt19937_64 random_;
};

const std::vector<std::string> kFirstNames = {"Aldo",    "Brina",  "Cato",     "Delia", "Emrys",
                                              "Fenna",   "Gideon", "Hesper",   "Ivo",   "Juna",
                                              "Kasimir", "Liora",  "Magnus",   "Nell",  "Orrin",
                                              "Pilar",   "Quill",  "Rosamund", "Silas", "Tamsin"};
const std::vector<std::string> kLastNames = {
    "Abernathy", "Blackwood", "Castellane", "Dunmore",   "Everly",   "Fairweather", "Greaves",
    "Holloway",  "Ingram",    "Jessup",     "Kettering", "Lockhart", "Marchbanks",  "Northcott"};
const std::vector<std::string> kCities = {
    "Oslo",    "Lisbon", "Nairobi", "Toronto", "Kyoto", "Lima",    "Dublin", "Cairo",
    "Seville", "Hanoi",  "Perth",   "Bergen",  "Quito", "Tbilisi", "Krakow", "Manila"};
const std::vector<std::string> kJobs = {"baker",   "pilot",    "carpenter", "nurse",   "librarian",
                                        "chemist", "gardener", "architect", "teacher", "sailor"};
const std::vector<std::string> kPets = {"cat", "dog", "parrot", "tortoise", "rabbit", "goat"};
const std::vector<std::string> kPetNames = {"Biscuit", "Pepper",   "Juniper", "Marble", "Waffles",
                                            "Clover",  "Sprocket", "Nutmeg",  "Pickle", "Ziggy"};

struct Person {
  std::string name, city, job, pet, pet_name;
  int year;
};

std::vector<EvalItem> Rag(const TaskOptions& options) {
  Draw draw(options.seed);
  const int documents = options.contexts > 0 ? options.contexts : 6;
  std::vector<EvalItem> items;
  for (int i = 0; i < options.items; ++i) {
    std::vector<Person> people;
    std::vector<std::string> used;
    while (static_cast<int>(people.size()) < documents) {
      // Braced initializers run left to right: the draws keep their order.
      const std::string& first = draw.Pick(kFirstNames);
      const std::string& last = draw.Pick(kLastNames);
      Person person{absl::StrCat(first, " ", last),
                    draw.Pick(kCities),
                    draw.Pick(kJobs),
                    draw.Pick(kPets),
                    draw.Pick(kPetNames),
                    draw.Between(1931, 1999)};
      if (std::find(used.begin(), used.end(), person.name) != used.end()) continue;
      used.push_back(person.name);
      people.push_back(std::move(person));
    }
    EvalItem item;
    for (const Person& p : people) {
      item.documents.push_back(absl::StrCat(p.name, " was born in ", p.city, " in ", p.year, ". ",
                                            p.name, " works as a ", p.job, " and has a ", p.pet,
                                            " called ", p.pet_name, "."));
    }
    const Person& gold = people[draw.Below(people.size())];
    switch (draw.Below(3)) {
      case 0:
        item.question = absl::StrCat("In which city was ", gold.name, " born?");
        item.answer = gold.city;
        break;
      case 1:
        item.question = absl::StrCat("What is the name of ", gold.name, "'s ", gold.pet, "?");
        item.answer = gold.pet_name;
        break;
      default:
        item.question = absl::StrCat("What does ", gold.name, " work as?");
        item.answer = gold.job;
        break;
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<EvalItem> Lookup(const TaskOptions& options) {
  Draw draw(options.seed);
  const int documents = options.contexts > 0 ? options.contexts : 8;
  constexpr int kRecordsPerDocument = 4;
  std::vector<EvalItem> items;
  for (int i = 0; i < options.items; ++i) {
    std::vector<std::pair<std::string, std::string>> records;
    while (static_cast<int>(records.size()) < documents * kRecordsPerDocument) {
      // One draw per statement: the order of function arguments is unspecified.
      const auto first = static_cast<char>('A' + draw.Below(26));
      const auto second = static_cast<char>('A' + draw.Below(26));
      const int number = draw.Between(0, 9999);
      const int value = draw.Between(100, 999);
      std::string key = absl::StrFormat("%c%c-%04d", first, second, number);
      if (std::any_of(records.begin(), records.end(),
                      [&](const auto& record) { return record.first == key; })) {
        continue;  // keys are unique, so every question has one answer
      }
      records.emplace_back(std::move(key), absl::StrCat(value));
    }
    EvalItem item;
    for (int d = 0; d < documents; ++d) {
      std::string document = "Inventory records:";
      for (int r = 0; r < kRecordsPerDocument; ++r) {
        const auto& [key, value] =
            records[(static_cast<size_t>(d) * kRecordsPerDocument) + static_cast<size_t>(r)];
        absl::StrAppend(&document, "\nRecord ", key, " has value ", value, ".");
      }
      item.documents.push_back(std::move(document));
    }
    const auto& [key, value] = records[draw.Below(records.size())];
    item.question = absl::StrCat("What is the value of record ", key, "?");
    item.answer = value;
    items.push_back(std::move(item));
  }
  return items;
}

// Sentences of four topics, assembled from parts so that no two examples repeat.
struct Topic {
  std::string label;
  std::vector<std::string> subjects, actions, endings;
};

const std::vector<Topic>& Topics() {
  static const auto* topics = new std::vector<Topic>{
      {"sports",
       {"The striker", "Our goalkeeper", "The young sprinter", "The home team", "The coach"},
       {"scored twice in", "trained hard before", "celebrated after", "lost narrowly in",
        "was injured during"},
       {"the final match.", "the league game.", "the cup semifinal.", "the relay race.",
        "the penalty shootout."}},
      {"food",
       {"The chef", "My grandmother", "The bakery", "The street vendor", "Our cook"},
       {"baked fresh bread for", "simmered a spicy soup for", "served roasted vegetables at",
        "sprinkled cinnamon over", "fried dumplings for"},
       {"the dinner guests.", "the breakfast crowd.", "the harvest feast.", "the lunch menu.",
        "the dessert course."}},
      {"weather",
       {"A cold front", "Heavy rain", "The morning fog", "A thunderstorm", "Strong wind"},
       {"swept across", "flooded", "lingered over", "rolled toward", "battered"},
       {"the coastal towns.", "the valley overnight.", "the northern hills.", "the city by noon.",
        "the airport runways."}},
      {"technology",
       {"The new laptop", "The software update", "The startup's app", "The robot arm",
        "The network router"},
       {"crashed while running", "doubled the speed of", "added encryption to",
        "was redesigned around", "now supports"},
       {"the database server.", "the cloud storage.", "the video codec.", "the touchscreen driver.",
        "the wireless protocol."}},
  };
  return *topics;
}

std::vector<EvalItem> Icl(const TaskOptions& options) {
  Draw draw(options.seed);
  const int examples = options.contexts > 0 ? options.contexts : 32;
  const std::vector<Topic>& topics = Topics();
  std::vector<std::string> labels;
  labels.reserve(topics.size());
  for (const Topic& topic : topics) labels.push_back(topic.label);
  const auto sentence = [&](const Topic& topic) {
    const std::string& subject = draw.Pick(topic.subjects);
    const std::string& action = draw.Pick(topic.actions);
    const std::string& ending = draw.Pick(topic.endings);
    return absl::StrCat(subject, " ", action, " ", ending);
  };
  std::vector<EvalItem> items;
  for (int i = 0; i < options.items; ++i) {
    EvalItem item;
    for (int e = 0; e < examples; ++e) {
      const Topic& topic = topics[static_cast<size_t>(e) % topics.size()];  // balanced
      item.documents.push_back(absl::StrCat("Text: ", sentence(topic), "\nLabel: ", topic.label));
    }
    draw.Shuffle(item.documents);
    const Topic& gold = topics[draw.Below(topics.size())];
    item.question = absl::StrCat("Text: ", sentence(gold),
                                 "\nLabel this text as in the examples: sports, food, weather or "
                                 "technology.");
    item.answer = gold.label;
    item.choices = labels;
    items.push_back(std::move(item));
  }
  return items;
}

}  // namespace

absl::string_view TaskFamilyName(TaskFamily family) {
  switch (family) {
    case TaskFamily::kRag:
      return "rag";
    case TaskFamily::kLookup:
      return "lookup";
    case TaskFamily::kIcl:
      return "icl";
  }
  return "unknown";
}

absl::StatusOr<TaskFamily> ParseTaskFamily(absl::string_view name) {
  for (const TaskFamily family : {TaskFamily::kRag, TaskFamily::kLookup, TaskFamily::kIcl}) {
    if (name == TaskFamilyName(family)) return family;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("task family '", name, "' is not one of rag, lookup, icl"));
}

std::vector<EvalItem> MakeTasks(TaskFamily family, const TaskOptions& options) {
  switch (family) {
    case TaskFamily::kRag:
      return Rag(options);
    case TaskFamily::kLookup:
      return Lookup(options);
    case TaskFamily::kIcl:
      return Icl(options);
  }
  return {};
}

}  // namespace apeserve::tools
