"""The engine's forward pass against Hugging Face transformers on the embedded model.

transformers loads the same GGUF file (dequantized by the gguf package) in fp32 on the
CPU. For each prompt, apegen (the engine alone) must give the same logits at every
prompt position (max |diff| <= 1e-3) and the same 64 greedy tokens. Run by CTest, which
sets APESERVE_TEST_MODEL and APEGEN.

With APESERVE_TEST_DEVICE and APESERVE_TEST_DTYPE (CTest's gpu-labelled run: cuda,
bfloat16) both sides run there instead. Two bfloat16 computations of one forward pass
round differently at every layer, so the bound is HALF_TOLERANCE, and greedy decoding
is compared up to the first token where the reference's two best logits lie within it
of each other (a tie at that precision, after which the continuations may part); the
first HALF_GREEDY_TOKENS must agree all the same.
"""

import os
import unittest

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference import DEVICE, DTYPE, engine_logits_and_tokens, greedy_tokens

GREEDY_TOKENS = 64
TOLERANCE = 1e-3
HALF_TOLERANCE = 1.0
HALF_GREEDY_TOKENS = 8

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
            folder, gguf_file=name, dtype=getattr(torch, DTYPE)).to(DEVICE).eval()
        cls.prompts = [cls.tokenizer(p).input_ids for p in PLAIN_PROMPTS]
        for question in CHAT_QUESTIONS:
            cls.prompts.append(cls.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True,
                tokenize=True, return_dict=False))
        assert len(cls.prompts) >= 20

        cls.logits, cls.generated = engine_logits_and_tokens(
            path, cls.prompts, cls.model.config.vocab_size, GREEDY_TOKENS)

    def test_logits_and_greedy_generation_match(self):
        half = DTYPE != "float32"
        tolerance = HALF_TOLERANCE if half else TOLERANCE
        worst = 0.0
        for i, ids in enumerate(self.prompts):
            want_logits, want_tokens = greedy_tokens(self.model, ids, GREEDY_TOKENS)
            diff = float(np.abs(self.logits[i] - want_logits).max())
            worst = max(worst, diff)
            self.assertLessEqual(diff, tolerance, f"prompt {i}: max |diff| {diff}")
            if not half:
                self.assertEqual(self.generated[i], want_tokens,
                                 f"prompt {i} diverges: {self.tokenizer.decode(want_tokens)!r}")
                continue
            agree = next((t for t, (a, b) in enumerate(zip(self.generated[i], want_tokens))
                          if a != b), GREEDY_TOKENS)
            self.assertGreaterEqual(agree, HALF_GREEDY_TOKENS,
                                    f"prompt {i} diverges at token {agree}: "
                                    f"{self.tokenizer.decode(want_tokens)!r}")
            if agree < GREEDY_TOKENS:
                margin = self.top_two_margin(ids + want_tokens[:agree])
                self.assertLessEqual(margin, tolerance,
                                     f"prompt {i} diverges at token {agree}, where the "
                                     f"reference's best logit leads by {margin:.3g}")
        print(f"\nmax |logit diff| over {len(self.prompts)} prompts on {DEVICE} in {DTYPE}: "
              f"{worst:.3g}")

    def top_two_margin(self, ids):
        """How far the reference's best next-token logit after `ids` leads the second."""
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=device)).logits[0, -1].float()
        top = torch.topk(logits, 2).values
        return float(top[0] - top[1])


if __name__ == "__main__":
    unittest.main(verbosity=2)
