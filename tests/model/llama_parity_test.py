"""The engine's forward pass against Hugging Face transformers on the embedded model.

transformers loads the same GGUF file (dequantized by the gguf package) in fp32 on the
CPU. For each prompt, apegen (the engine alone) must give the same logits at every
prompt position (max |diff| <= 1e-3) and the same 64 greedy tokens. Run by CTest, which
sets APESERVE_TEST_MODEL and APEGEN.
"""

import os
import unittest

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference import engine_logits_and_tokens, greedy_tokens

GREEDY_TOKENS = 64
TOLERANCE = 1e-3

PLAIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea,",
    "1, 1, 2, 3, 5, 8, 13,",
    "Photosynthesis is the process by which",
    "SELECT name, price FROM products WHERE",
    "La tour Eiffel se trouve à",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Q: What is 12 times 12?\nA:",
    "   leading spaces and\ttabs\n\nand blank lines",
    "日本の首都は",
    "<html><body><h1>Title</h1>",
]
CHAT_QUESTIONS = [
    "What is the boiling point of water?",
    "Write a haiku about autumn.",
    "Explain recursion in one sentence.",
    "Translate 'good morning' into Spanish.",
    "List three prime numbers.",
    "Who wrote Pride and Prejudice?",
    "What is 2 + 2?",
    "Give me a tip for learning to code.",
]


class LlamaParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        path = os.environ["APESERVE_TEST_MODEL"]
        folder, name = os.path.split(path)
        cls.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        cls.model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32).eval()
        cls.prompts = [cls.tokenizer(p).input_ids for p in PLAIN_PROMPTS]
        for question in CHAT_QUESTIONS:
            cls.prompts.append(cls.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True,
                tokenize=True, return_dict=False))
        assert len(cls.prompts) >= 20

        cls.logits, cls.generated = engine_logits_and_tokens(
            path, cls.prompts, cls.model.config.vocab_size, GREEDY_TOKENS)

    def test_logits_and_greedy_generation_match(self):
        worst = 0.0
        for i, ids in enumerate(self.prompts):
            want_logits, want_tokens = greedy_tokens(self.model, ids, GREEDY_TOKENS)
            diff = float(np.abs(self.logits[i] - want_logits).max())
            worst = max(worst, diff)
            self.assertLessEqual(diff, TOLERANCE, f"prompt {i}: max |diff| {diff}")
            self.assertEqual(self.generated[i], want_tokens,
                             f"prompt {i} diverges: {self.tokenizer.decode(want_tokens)!r}")
        print(f"\nmax |logit diff| over {len(self.prompts)} prompts: {worst:.3g}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
