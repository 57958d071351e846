// The merges of a SentencePiece BPE vocabulary, which GGUF files do not store:
// recovered from the tokens and their scores the way the Hugging Face converter does,
// so that both rank the same pairs in the same order.
#ifndef APESERVE_MODEL_SENTENCEPIECE_MERGES_H_
#define APESERVE_MODEL_SENTENCEPIECE_MERGES_H_

#include <string>
#include <utility>
#include <vector>

namespace apeserve::model {

// Every split of every token into two tokens of the vocabulary, best first: by the
// merged token's score, then by the longer left and right parts, ties in vocabulary
// order.
std::vector<std::pair<std::string, std::string>> SentencePieceMerges(
    const std::vector<std::string>& tokens, const std::vector<float>& scores);

}  // namespace apeserve::model

#endif  // APESERVE_MODEL_SENTENCEPIECE_MERGES_H_
