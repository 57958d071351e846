#include "model/tokenizer.h"

#include <algorithm>
#include <queue>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/byte_level.h"
#include "model/gguf_file.h"
#include "model/regex_splitter.h"

namespace apeserve::model {
namespace {

// GGUF token types (llama.cpp's llama_token_type).
constexpr int64_t kControlToken = 3;
constexpr int64_t kUserDefinedToken = 4;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

absl::StatusOr<int32_t> OptionalId(const GgufFile& file, absl::string_view key, int32_t vocab) {
  if (file.Find(key) == nullptr) return -1;
  APE_ASSIGN_OR_RETURN(const int64_t id, file.GetInt(key));
  if (id < 0 || id >= vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata '", key, "' is ", id, ", outside the vocabulary of ", vocab));
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& file) {
  APE_ASSIGN_OR_RETURN(const std::string model, file.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", file.path(), "' has a '", model,
                     "' tokenizer; apeserve reads byte-level BPE ('gpt2') vocabularies"));
  }
  APE_ASSIGN_OR_RETURN(const std::vector<std::string> tokens,
                       file.GetStringArray("tokenizer.ggml.tokens"));
  APE_ASSIGN_OR_RETURN(const std::vector<std::string> merges,
                       file.GetStringArray("tokenizer.ggml.merges"));
  std::vector<int64_t> types(tokens.size(), 1);
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    APE_ASSIGN_OR_RETURN(types, file.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.token_type has ", types.size(),
                                                     " entries for ", tokens.size(), " tokens"));
    }
  }
  if (tokens.empty() || tokens.size() > (1U << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary of ", tokens.size(), " tokens"));
  }
  const auto vocab = static_cast<int32_t>(tokens.size());

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->token_bytes_.resize(tokens.size());
  t->special_.assign(tokens.size(), false);
  for (int32_t id = 0; id < vocab; ++id) {
    const std::string& token = tokens[static_cast<size_t>(id)];
    // Tokens are spelled in the byte alphabet; one that is not (a mislabelled control
    // token, say) stands for its own UTF-8 bytes, as the reference converter reads it.
    const std::optional<std::string> raw = UnspellBytes(token);
    t->token_bytes_[static_cast<size_t>(id)] = raw.has_value() ? *raw : token;
    t->spelled_to_id_[raw.has_value() ? token : SpellBytes(token)] = id;  // later ids win
    const int64_t type = types[static_cast<size_t>(id)];
    if ((type == kControlToken && raw.has_value()) || type == kUserDefinedToken) {
      t->added_.emplace_back(token, id);
      t->special_[static_cast<size_t>(id)] = type == kControlToken;
    }
  }
  // Longest first, so that a token is never cut short by one of its own prefixes.
  std::stable_sort(t->added_.begin(), t->added_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  // Some vocabularies leave out rare control bytes; like the reference (BPE without
  // an unknown token), those bytes are dropped from the input.
  for (int b = 0; b < 256; ++b) {
    const auto it = t->spelled_to_id_.find(ByteSpelling(static_cast<uint8_t>(b)));
    t->byte_token_[b] = it == t->spelled_to_id_.end() ? -1 : it->second;
  }
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    const size_t space = merge.find(' ');
    const auto find = [&t](const std::string& s) {
      const auto it = t->spelled_to_id_.find(s);
      return it == t->spelled_to_id_.end() ? -1 : it->second;
    };
    if (space == std::string::npos || merge.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank, " '", merge, "' is not two tokens"));
    }
    const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    const int32_t left_id = find(left), right_id = find(right), merged_id = find(left + right);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank, " '", merge, "' uses a token outside the vocabulary"));
    }
    t->merges_[PairKey(left_id, right_id)] = {static_cast<int32_t>(rank), merged_id};
  }

  std::string pre = "default";
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    APE_ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
  }
  APE_ASSIGN_OR_RETURN(t->splitter_, RegexSplitter::Create(PreTokenizerPattern(pre)));
  APE_ASSIGN_OR_RETURN(t->bos_id_, OptionalId(file, "tokenizer.ggml.bos_token_id", vocab));
  APE_ASSIGN_OR_RETURN(t->eos_id_, OptionalId(file, "tokenizer.ggml.eos_token_id", vocab));
  if (file.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    APE_ASSIGN_OR_RETURN(t->add_bos_, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  return t;
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  size_t plain_start = 0;  // start of the text not yet tokenized
  const auto flush_plain = [&](size_t end) {
    for (absl::string_view piece : splitter_->Split(text.substr(plain_start, end - plain_start))) {
      EncodePiece(piece, ids);
    }
  };
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, int32_t>* match = nullptr;
    for (const auto& added : added_) {
      if ((parse_special || !special_[static_cast<size_t>(added.second)]) &&
          absl::StartsWith(text.substr(i), added.first)) {
        match = &added;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    flush_plain(i);
    ids.push_back(match->second);
    i += match->first.size();
    plain_start = i;
  }
  flush_plain(text.size());
  return ids;
}

// Byte-pair merging of one pre-token: start from its bytes, and merge the adjacent
// pair of lowest rank (leftmost first) until no pair has a merge.
void Tokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  struct Symbol {
    int32_t id;
    int prev;
    int next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  for (char c : piece) {
    const int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id >= 0) symbols.push_back({id, static_cast<int>(symbols.size()) - 1, -1});
  }
  if (symbols.empty()) return;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) symbols[i].next = static_cast<int>(i) + 1;
  using Candidate = std::tuple<int32_t, int, int32_t, int32_t>;  // rank, position, left, right
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int position) {
    if (position < 0 || symbols[static_cast<size_t>(position)].next < 0) return;
    const int32_t left = symbols[static_cast<size_t>(position)].id;
    const int32_t right =
        symbols[static_cast<size_t>(symbols[static_cast<size_t>(position)].next)].id;
    const auto it = merges_.find(PairKey(left, right));
    if (it != merges_.end()) queue.emplace(it->second.first, position, left, right);
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);

  std::vector<bool> alive(symbols.size(), true);
  while (!queue.empty()) {
    const auto [rank, position, left, right] = queue.top();
    queue.pop();
    Symbol& first = symbols[static_cast<size_t>(position)];
    // Skip candidates that earlier merges have made stale.
    if (!alive[static_cast<size_t>(position)] || first.next < 0 || first.id != left ||
        symbols[static_cast<size_t>(first.next)].id != right) {
      continue;
    }
    const int second = first.next;
    first.id = merges_.at(PairKey(left, right)).second;
    alive[static_cast<size_t>(second)] = false;
    first.next = symbols[static_cast<size_t>(second)].next;
    if (first.next >= 0) symbols[static_cast<size_t>(first.next)].prev = position;
    consider(first.prev);
    consider(position);
  }
  for (size_t i = 0; i < symbols.size(); ++i) {
    if (alive[i]) out.push_back(symbols[i].id);
  }
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    const absl::string_view bytes = TokenBytes(id);
    text.append(bytes.data(), bytes.size());
  }
  return text;
}

absl::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return token_bytes_[static_cast<size_t>(id)];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[static_cast<size_t>(id)];
}

}  // namespace apeserve::model
