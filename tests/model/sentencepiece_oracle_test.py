"""SentencePiece-style vocabularies (Llama 2, Mistral v0.1) against Hugging Face.

A small BPE model is trained here with the sentencepiece package (byte fallback on, no
normalization) and written as a GGUF file the way llama.cpp writes Llama 2 models:
pieces, scores and piece types, no merges. The Hugging Face tokenizer built from that
file is the reference: ids must be equal over the tokenizer corpus, and our decode
(whole and streamed) must equal the reference's. Run by CTest, which sets
ORACLE_HELPER.
"""

import os
import subprocess
import tempfile
import unittest

import sentencepiece as spm
from gguf import GGUFWriter
from transformers import AutoTokenizer

from tokenizer_oracle_test import CORPUS, ENGLISH, CODE, ACCENTS, tokenize_with_ours

TRAINING_TEXT = "\n".join((ENGLISH + CODE + ACCENTS) * 3 + [
    "the cat sat on the mat", "a quick brown fox", "retrieval augmented generation",
    "parallel encoding of contexts", "the model reads the documents", "hello world again",
])


def write_sentencepiece_gguf(folder):
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(TRAINING_TEXT)
    prefix = os.path.join(folder, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=400,
        byte_fallback=True, normalization_rule_name="identity", character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 1)
    path = os.path.join(folder, "spm.gguf")
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class SentencePieceOracleTest(unittest.TestCase):
    def test_same_ids_and_text_as_reference(self):
        with tempfile.TemporaryDirectory(prefix="apeserve-spm-") as folder:
            path = write_sentencepiece_gguf(folder)
            reference = AutoTokenizer.from_pretrained(folder, gguf_file=os.path.basename(path))
            ours = tokenize_with_ours(path)
        mismatches = []
        for text, got in zip(CORPUS, ours):
            want = reference.encode(text, add_special_tokens=False)
            if got["ids"] != want:
                mismatches.append(f"{text!r}: ours {got['ids']} reference {want}")
                continue
            self.assertEqual(got["decoded"], reference.decode(want), repr(text))
            self.assertEqual("".join(got["streamed"]), got["decoded"], repr(text))
        self.assertEqual(mismatches, [], "\n".join(mismatches[:10]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
