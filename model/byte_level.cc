#include "model/byte_level.h"

#include <array>

#include "model/utf8.h"

namespace apeserve::model {
namespace {

struct Alphabet {
  static constexpr char32_t kEnd = 256 + 68;  // past the last code point in use
  std::array<char32_t, 256> code_point{};
  std::array<std::string, 256> spelling;
  std::array<int, kEnd> byte_of{};  // -1 for code points outside the alphabet

  Alphabet() {
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    byte_of.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const auto i = static_cast<size_t>(b);
      code_point[i] = printable(b) ? static_cast<char32_t>(b) : next++;
      spelling[i] = EncodeUtf8(code_point[i]);
      byte_of[code_point[i]] = b;
    }
  }
};

const Alphabet& GetAlphabet() {
  static const Alphabet* alphabet = new Alphabet();
  return *alphabet;
}

}  // namespace

char32_t ByteToCodePoint(uint8_t byte) { return GetAlphabet().code_point[byte]; }

const std::string& ByteSpelling(uint8_t byte) { return GetAlphabet().spelling[byte]; }

std::optional<std::string> UnspellBytes(absl::string_view spelled) {
  const Alphabet& alphabet = GetAlphabet();
  std::string raw;
  raw.reserve(spelled.size());
  size_t offset = 0;
  while (offset < spelled.size()) {
    const std::optional<char32_t> cp = DecodeUtf8(spelled, offset);
    if (!cp.has_value() || *cp >= Alphabet::kEnd || alphabet.byte_of[*cp] < 0) return std::nullopt;
    raw.push_back(static_cast<char>(alphabet.byte_of[*cp]));
  }
  return raw;
}

std::string SpellBytes(absl::string_view raw) {
  std::string spelled;
  spelled.reserve(raw.size() * 2);
  for (char c : raw) spelled += ByteSpelling(static_cast<uint8_t>(c));
  return spelled;
}

}  // namespace apeserve::model
