#include "model/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "model/byte_level.h"
#include "model/fingerprint.h"
#include "model/gguf_file.h"
#include "model/json_reading.h"
#include "model/regex_splitter.h"
#include "model/sentencepiece_merges.h"
#include "model/utf8.h"

namespace apeserve::model {
namespace {

// SentencePiece's stand-in for a space, U+2581.
constexpr absl::string_view kSpaceMark = "\xE2\x96\x81";

// The byte of a "<0xXX>" token.
std::optional<uint8_t> ByteToken(absl::string_view token) {
  int value = 0;
  if (token.size() != 6 || !absl::StartsWith(token, "<0x") || token[5] != '>' ||
      !absl::SimpleHexAtoi(token.substr(3, 2), &value)) {
    return std::nullopt;
  }
  return static_cast<uint8_t>(value);
}

// GGUF token types (llama.cpp's llama_token_type).
constexpr int64_t kControlToken = 3;
constexpr int64_t kUserDefinedToken = 4;
constexpr size_t kMaxVocabulary = size_t{1} << 24;

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

// The split patterns of a tokenizer.json pre-tokenizer, appended to `patterns`.
absl::Status ReadPreTokenizer(const nlohmann::json& pre, std::vector<std::string>& patterns) {
  if (pre.is_null()) return absl::OkStatus();
  const std::string type = pre.value("type", "");
  if (type == "Sequence") {
    for (const auto& inner : pre.at("pretokenizers")) {
      APE_RETURN_IF_ERROR(ReadPreTokenizer(inner, patterns));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    if (pre.value("add_prefix_space", false)) {
      return absl::InvalidArgumentError(
          "tokenizer.json: ByteLevel add_prefix_space is not supported");
    }
    if (pre.value("use_regex", true)) patterns.emplace_back(PreTokenizerPattern("gpt2"));
    return absl::OkStatus();
  }
  if (type == "Digits") {
    patterns.emplace_back(pre.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return absl::OkStatus();
  }
  if (type == "Split") {
    if (pre.value("behavior", "") != "Isolated" || pre.value("invert", false)) {
      return absl::InvalidArgumentError(
          "tokenizer.json: only Split pre-tokenizers with Isolated behavior are supported");
    }
    const auto& pattern = pre.at("pattern");
    if (pattern.contains("Regex")) {
      patterns.push_back(pattern.at("Regex").get<std::string>());
    } else {
      patterns.push_back(absl::StrCat("\\Q", pattern.at("String").get<std::string>(), "\\E"));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: pre-tokenizer '", type, "' is not supported"));
}

// A token given in tokenizer_config.json as "text" or {"content": "text"}; "" when
// absent or null. INVALID_ARGUMENT naming `key` for anything else.
absl::StatusOr<std::string> TokenText(const nlohmann::json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: ", key,
                                                 " is neither a string nor an object with a "
                                                 "string \"content\", but ",
                                                 it->type_name()));
}

// The fields of the spec that decide which ids a text gets and which text an id stands
// for, in a fixed order; numbers as decimal text, so that the fingerprint does not
// depend on the machine's byte order. Not BOS, EOS and the ids that end generation:
// they change what is generated, not what stored ids mean.
std::string FingerprintSpec(const Tokenizer::Spec& spec) {
  FingerprintBuilder builder;
  builder.AddField("tokens");
  for (const std::string& token : spec.tokens) builder.AddField(token);
  builder.AddField("merges");
  for (const auto& [left, right] : spec.merges) {
    builder.AddField(left);
    builder.AddField(right);
  }
  builder.AddField("added");
  for (const Tokenizer::Spec::Added& added : spec.added) {
    builder.AddField(added.content);
    builder.AddField(absl::StrCat(added.id, added.special ? "s" : ""));
  }
  builder.AddField("split");
  for (const std::string& pattern : spec.split_patterns) builder.AddField(pattern);
  builder.AddField(absl::StrCat(spec.ignore_merges, spec.sentencepiece, spec.add_prefix_space, " ",
                                spec.unk_id));
  return builder.Finish();
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& file) {
  APE_ASSIGN_OR_RETURN(const std::string model, file.GetString("tokenizer.ggml.model"));
  if (model != "gpt2" && model != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(
        "model file '", file.path(), "' has a '", model,
        "' tokenizer; apeserve reads byte-level ('gpt2') and SentencePiece ('llama') BPE"));
  }
  Spec spec;
  spec.sentencepiece = model == "llama";
  APE_ASSIGN_OR_RETURN(spec.tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  if (spec.tokens.empty() || spec.tokens.size() > kMaxVocabulary) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary of ", spec.tokens.size(), " tokens"));
  }
  std::vector<std::string> merges;
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    APE_ASSIGN_OR_RETURN(merges, file.GetStringArray("tokenizer.ggml.merges"));
  } else if (spec.sentencepiece) {
    // SentencePiece files rank merges by score instead of listing them.
    APE_ASSIGN_OR_RETURN(const std::vector<double> scores,
                         file.GetFloatArray("tokenizer.ggml.scores"));
    spec.merges =
        SentencePieceMerges(spec.tokens, std::vector<float>(scores.begin(), scores.end()));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("model file '", file.path(), "' has no tokenizer.ggml.merges"));
  }
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const size_t space = merges[rank].find(' ');
    if (space == std::string::npos || merges[rank].find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank, " '", merges[rank], "' is not two tokens"));
    }
    spec.merges.emplace_back(merges[rank].substr(0, space), merges[rank].substr(space + 1));
  }
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    APE_ASSIGN_OR_RETURN(const std::vector<int64_t> types,
                         file.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != spec.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.token_type has ", types.size(),
                                                     " entries for ", spec.tokens.size(),
                                                     " tokens"));
    }
    for (size_t id = 0; id < types.size(); ++id) {
      const std::string& token = spec.tokens[id];
      // A control token spelled outside the byte alphabet is a mislabel; the reference
      // converter leaves it out of the added tokens, and so do we.
      const bool control =
          types[id] == kControlToken && (spec.sentencepiece || UnspellBytes(token).has_value());
      if (control || types[id] == kUserDefinedToken) {
        spec.added.push_back({token, static_cast<int32_t>(id), control});
      }
    }
  }
  std::string pre = "default";
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    APE_ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
  }
  spec.split_patterns.emplace_back(PreTokenizerPattern(pre));
  const auto vocab = static_cast<int32_t>(spec.tokens.size());
  APE_ASSIGN_OR_RETURN(spec.bos_id, OptionalId(file, "tokenizer.ggml.bos_token_id", vocab));
  APE_ASSIGN_OR_RETURN(spec.eos_id, OptionalId(file, "tokenizer.ggml.eos_token_id", vocab));
  APE_ASSIGN_OR_RETURN(spec.unk_id, OptionalId(file, "tokenizer.ggml.unknown_token_id", vocab));
  // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
  spec.add_bos = spec.sentencepiece;
  if (file.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    APE_ASSIGN_OR_RETURN(spec.add_bos, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (file.Find("tokenizer.ggml.add_space_prefix") != nullptr) {
    APE_ASSIGN_OR_RETURN(spec.add_prefix_space, file.GetBool("tokenizer.ggml.add_space_prefix"));
  }
  if (spec.sentencepiece) spec.split_patterns.clear();  // one pre-token per text span
  return FromSpec(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJson(
    absl::string_view tokenizer_json, absl::string_view config_json,
    absl::string_view generation_config_json) {
  APE_ASSIGN_OR_RETURN(const nlohmann::json json,
                       ParseJsonObject(tokenizer_json, "tokenizer.json"));
  nlohmann::json config = nlohmann::json::object();
  if (!config_json.empty()) {
    APE_ASSIGN_OR_RETURN(config, ParseJsonObject(config_json, "tokenizer_config.json"));
  }
  Spec spec;
  try {
    const auto& model = json.at("model");
    if (model.value("type", "") != "BPE" || model.value("byte_fallback", false)) {
      return absl::InvalidArgumentError(
          "tokenizer.json: only byte-level BPE models are supported (no byte_fallback)");
    }
    if (json.contains("normalizer") && !json.at("normalizer").is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: normalizer '",
                                                     json.at("normalizer").value("type", "?"),
                                                     "' is not supported"));
    }
    spec.ignore_merges = model.value("ignore_merges", false);
    const auto place = [&spec](int64_t id, const std::string& token) -> absl::Status {
      if (id < 0 || static_cast<size_t>(id) >= kMaxVocabulary) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: token id ", id));
      }
      if (static_cast<size_t>(id) >= spec.tokens.size())
        spec.tokens.resize(static_cast<size_t>(id) + 1);
      spec.tokens[static_cast<size_t>(id)] = token;
      return absl::OkStatus();
    };
    // Ids through JsonInteger: get<int64_t>() of a float out of range is undefined.
    const auto id_of_json = [](const nlohmann::json& id,
                               absl::string_view token) -> absl::StatusOr<int64_t> {
      const std::optional<int64_t> value = JsonInteger(id);
      if (!value.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: token '", token, "' has id ",
                         id.is_number() ? id.dump() : id.type_name(), ", not an integer"));
      }
      return *value;
    };
    for (const auto& [token, id] : model.at("vocab").items()) {
      APE_ASSIGN_OR_RETURN(const int64_t value, id_of_json(id, token));
      APE_RETURN_IF_ERROR(place(value, token));
    }
    for (const auto& merge : model.at("merges")) {
      if (merge.is_array() && merge.size() == 2) {
        spec.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
        continue;
      }
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge '", text, "'"));
      }
      spec.merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    }
    for (const auto& added : json.value("added_tokens", nlohmann::json::array())) {
      const std::string content = added.at("content").get<std::string>();
      APE_ASSIGN_OR_RETURN(const int64_t id, id_of_json(added.at("id"), content));
      if (static_cast<size_t>(id) >= spec.tokens.size() ||
          spec.tokens[static_cast<size_t>(id)].empty()) {
        APE_RETURN_IF_ERROR(place(id, SpellBytes(content)));
      }
      spec.added.push_back({content, static_cast<int32_t>(id), added.value("special", false)});
    }
    APE_RETURN_IF_ERROR(
        ReadPreTokenizer(json.value("pre_tokenizer", nlohmann::json()), spec.split_patterns));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", e.what()));
  }
  // BOS and EOS by their text, as tokenizer_config.json names them.
  const auto id_of = [&spec](const std::string& text) {
    for (const Spec::Added& added : spec.added) {
      if (added.content == text) return added.id;
    }
    return -1;
  };
  APE_ASSIGN_OR_RETURN(const std::string bos_text, TokenText(config, "bos_token"));
  APE_ASSIGN_OR_RETURN(const std::string eos_text, TokenText(config, "eos_token"));
  spec.bos_id = id_of(bos_text);
  spec.eos_id = id_of(eos_text);
  if (!generation_config_json.empty()) {
    APE_ASSIGN_OR_RETURN(const nlohmann::json generation,
                         ParseJsonObject(generation_config_json, "generation_config.json"));
    // "eos_token_id" is one id or a list of them.
    nlohmann::json ids = generation.value("eos_token_id", nlohmann::json());
    if (ids.is_number_integer()) ids = nlohmann::json::array({ids});
    for (const auto& id : ids.is_array() ? ids : nlohmann::json::array()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          static_cast<size_t>(id.get<int64_t>()) >= spec.tokens.size()) {
        return absl::InvalidArgumentError(absl::StrCat("generation_config.json: eos_token_id ",
                                                       id.dump(), " is outside the vocabulary"));
      }
      if (spec.eos_id < 0) spec.eos_id = id.get<int32_t>();
      spec.extra_eos_ids.push_back(id.get<int32_t>());
    }
  }
  bool add_bos = false;  // absent or null: no BOS
  if (const auto it = config.find("add_bos_token"); it != config.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer_config.json: add_bos_token must be true or false, not ", it->type_name()));
    }
    add_bos = it->get<bool>();
  }
  spec.add_bos = add_bos && spec.bos_id >= 0;
  return FromSpec(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSpec(Spec spec) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  const auto vocab = static_cast<int32_t>(spec.tokens.size());
  t->token_bytes_.resize(spec.tokens.size());
  t->special_.assign(spec.tokens.size(), false);
  for (int32_t id = 0; id < vocab; ++id) {
    const std::string& token = spec.tokens[static_cast<size_t>(id)];
    if (token.empty()) continue;
    if (spec.sentencepiece) {
      // "▁" stands for a space; "<0xXX>" for one byte.
      const std::optional<uint8_t> byte = ByteToken(token);
      t->token_bytes_[static_cast<size_t>(id)] =
          byte.has_value() ? std::string(1, static_cast<char>(*byte))
                           : absl::StrReplaceAll(token, {{kSpaceMark, " "}});
      t->spelled_to_id_[token] = id;
      continue;
    }
    // Tokens are spelled in the byte alphabet; one that is not stands for its own
    // UTF-8 bytes, as the reference converter reads it.
    const std::optional<std::string> raw = UnspellBytes(token);
    t->token_bytes_[static_cast<size_t>(id)] = raw.has_value() ? *raw : token;
    t->spelled_to_id_[raw.has_value() ? token : SpellBytes(token)] = id;  // later ids win
  }
  for (const Spec::Added& added : spec.added) {
    if (added.id < 0 || added.id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("added token '", added.content, "' has id ",
                                                     added.id, " outside the vocabulary"));
    }
    t->token_bytes_[static_cast<size_t>(added.id)] = added.content;
    t->special_[static_cast<size_t>(added.id)] = added.special;
    t->added_.emplace_back(added.content, added.id);
  }
  // Longest first, so that a token is never cut short by one of its own prefixes.
  std::stable_sort(t->added_.begin(), t->added_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  // Some vocabularies leave out rare control bytes; like the reference (BPE without an
  // unknown token), those bytes are dropped from the input.
  for (int b = 0; b < 256; ++b) {
    const auto it =
        t->spelled_to_id_.find(spec.sentencepiece ? absl::StrFormat("<0x%02X>", b)
                                                  : ByteSpelling(static_cast<uint8_t>(b)));
    t->byte_token_[b] = it == t->spelled_to_id_.end() ? -1 : it->second;
  }
  const auto find = [&t](const std::string& s) {
    const auto it = t->spelled_to_id_.find(s);
    return it == t->spelled_to_id_.end() ? -1 : it->second;
  };
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const auto& [left, right] = spec.merges[rank];
    const int32_t left_id = find(left), right_id = find(right), merged_id = find(left + right);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      return absl::InvalidArgumentError(absl::StrCat("merge #", rank, " '", left, " ", right,
                                                     "' uses a token outside the vocabulary"));
    }
    t->merges_[PairKey(left_id, right_id)] = {static_cast<int32_t>(rank), merged_id};
  }
  for (const std::string& pattern : spec.split_patterns) {
    APE_ASSIGN_OR_RETURN(std::unique_ptr<RegexSplitter> splitter, RegexSplitter::Create(pattern));
    t->splitters_.push_back(std::move(splitter));
  }
  t->ignore_merges_ = spec.ignore_merges;
  t->sentencepiece_ = spec.sentencepiece;
  t->add_prefix_space_ = spec.add_prefix_space;
  t->unk_id_ = spec.unk_id;
  t->bos_id_ = spec.bos_id;
  t->eos_id_ = spec.eos_id;
  t->extra_eos_ids_ = spec.extra_eos_ids;
  t->add_bos_ = spec.add_bos;
  t->fingerprint_ = FingerprintSpec(spec);
  return t;
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  size_t plain_start = 0;  // start of the text not yet tokenized
  const auto flush_plain = [&](size_t end) {
    if (sentencepiece_) {
      if (end == plain_start) return;
      // Spaces become "▁", and text that starts the input gets one in front.
      std::string word =
          absl::StrReplaceAll(text.substr(plain_start, end - plain_start), {{" ", kSpaceMark}});
      if (add_prefix_space_ && plain_start == 0 && !absl::StartsWith(word, kSpaceMark)) {
        word.insert(0, kSpaceMark.data(), kSpaceMark.size());
      }
      EncodePiece(word, ids);
      return;
    }
    std::vector<absl::string_view> pieces = {text.substr(plain_start, end - plain_start)};
    for (const auto& splitter : splitters_) {
      std::vector<absl::string_view> finer;
      for (absl::string_view piece : pieces) {
        for (absl::string_view part : splitter->Split(piece)) finer.push_back(part);
      }
      pieces = std::move(finer);
    }
    for (absl::string_view piece : pieces) EncodePiece(piece, ids);
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
  if (ignore_merges_) {
    const auto whole = spelled_to_id_.find(SpellBytes(piece));
    if (whole != spelled_to_id_.end()) {
      out.push_back(whole->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int prev;
    int next;
  };
  std::vector<Symbol> symbols;
  for (int32_t id : InitialSymbols(piece)) {
    symbols.push_back({id, static_cast<int>(symbols.size()) - 1, -1});
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

std::vector<int32_t> Tokenizer::InitialSymbols(absl::string_view piece) const {
  std::vector<int32_t> ids;
  ids.reserve(piece.size());
  if (!sentencepiece_) {
    // Byte-level: one symbol per byte; a byte the vocabulary lacks is dropped, as the
    // reference (BPE without an unknown token) drops it.
    for (char c : piece) {
      const int32_t id = byte_token_[static_cast<uint8_t>(c)];
      if (id >= 0) ids.push_back(id);
    }
    return ids;
  }
  // SentencePiece: one symbol per character; a character outside the vocabulary falls
  // back to its bytes' <0xXX> tokens, or else to one unknown token for a run of them.
  bool last_unknown = false;
  size_t offset = 0;
  while (offset < piece.size()) {
    const size_t start = offset;
    if (!DecodeUtf8(piece, offset).has_value()) offset = start + 1;
    const absl::string_view character = piece.substr(start, offset - start);
    if (const auto it = spelled_to_id_.find(character); it != spelled_to_id_.end()) {
      ids.push_back(it->second);
      last_unknown = false;
      continue;
    }
    bool all_bytes = true;
    for (char c : character) all_bytes = all_bytes && byte_token_[static_cast<uint8_t>(c)] >= 0;
    if (all_bytes) {
      for (char c : character) ids.push_back(byte_token_[static_cast<uint8_t>(c)]);
      last_unknown = false;
    } else if (unk_id_ >= 0 && !last_unknown) {
      ids.push_back(unk_id_);
      last_unknown = true;
    }
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    const absl::string_view bytes = TokenBytes(id);
    text.append(bytes.data(), bytes.size());
  }
  if (strips_leading_space() && absl::StartsWith(text, " ")) text.erase(0, 1);
  return text;
}

absl::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return token_bytes_[static_cast<size_t>(id)];
}

bool Tokenizer::IsEndOfSequence(int32_t id) const {
  return id >= 0 && (id == eos_id_ || std::find(extra_eos_ids_.begin(), extra_eos_ids_.end(), id) !=
                                          extra_eos_ids_.end());
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[static_cast<size_t>(id)];
}

}  // namespace apeserve::model
