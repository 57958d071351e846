#include "model/sentencepiece_merges.h"

#include <algorithm>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "model/utf8.h"

namespace apeserve::model {
namespace {

// Byte offsets of the character boundaries inside `text` (not 0 nor the end).
std::vector<size_t> CharacterBoundaries(const std::string& text) {
  std::vector<size_t> boundaries;
  size_t offset = 0;
  while (offset < text.size()) {
    if (!DecodeUtf8(text, offset).has_value()) ++offset;  // an invalid byte is one character
    if (offset < text.size()) boundaries.push_back(offset);
  }
  return boundaries;
}

size_t CharacterCount(const std::string& text) { return CharacterBoundaries(text).size() + 1; }

}  // namespace

std::vector<std::pair<std::string, std::string>> SentencePieceMerges(
    const std::vector<std::string>& tokens, const std::vector<float>& scores) {
  absl::flat_hash_map<std::string, size_t> id;  // later ids win, as in a Python dict
  for (size_t i = 0; i < tokens.size(); ++i) id[tokens[i]] = i;
  absl::flat_hash_map<std::string, float> score;  // later scores win too
  for (size_t i = 0; i < tokens.size(); ++i) score[tokens[i]] = i < scores.size() ? scores[i] : 0;

  struct Merge {
    std::string left, right;
    float score;
    size_t left_chars, right_chars;
  };
  std::vector<Merge> merges;
  absl::flat_hash_set<std::string> seen;  // each token once, at its first position
  for (const std::string& token : tokens) {
    if (!seen.insert(token).second) continue;
    std::vector<Merge> local;
    for (size_t cut : CharacterBoundaries(token)) {
      std::string left = token.substr(0, cut), right = token.substr(cut);
      if (id.contains(left) && id.contains(right)) {
        const size_t left_chars = CharacterCount(left), right_chars = CharacterCount(right);
        local.push_back({std::move(left), std::move(right), score[token], left_chars, right_chars});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&id](const Merge& a, const Merge& b) {
      return std::make_pair(id[a.left], id[a.right]) < std::make_pair(id[b.left], id[b.right]);
    });
    for (Merge& merge : local) merges.push_back(std::move(merge));
  }
  // Best first; the sort is stable, so equal keys keep the order built above.
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tie(a.score, a.left_chars, a.right_chars) >
           std::tie(b.score, b.left_chars, b.right_chars);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (Merge& merge : merges) out.emplace_back(std::move(merge.left), std::move(merge.right));
  return out;
}

}  // namespace apeserve::model
