"""Hugging Face folders: tiny random-weight models written by transformers, read by the
engine from config.json + safetensors, must give transformers' logits (max |diff| <=
1e-3) and greedy tokens. Covers Llama with grouped-query attention and Llama 3 rope
scaling in sharded F32, tied embeddings in BF16, Qwen2 with q/k/v bias in F16, and
Mistral. Run by CTest, which sets APESERVE_TEST_MODEL (for its tokenizer) and APEGEN.
"""

import os
import tempfile
import unittest

import numpy as np
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig,
                          Qwen2Config)

from reference import engine_logits_and_tokens, greedy_tokens

VOCAB = 49152  # the embedded model's tokenizer is saved beside each model
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
CASES = {
    "llama_gqa_llama3_rope_sharded_f32": (
        LlamaConfig(**SMALL, tie_word_embeddings=False, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64}),
        torch.float32, "2MB"),
    "llama_tied_bf16": (LlamaConfig(**SMALL, tie_word_embeddings=True), torch.bfloat16, None),
    "qwen2_bias_f16": (Qwen2Config(**SMALL, tie_word_embeddings=False), torch.float16, None),
    "mistral_f32": (MistralConfig(**SMALL, sliding_window=None, tie_word_embeddings=False),
                    torch.float32, None),
}
GREEDY_TOKENS = 16
TOLERANCE = 1e-3


class SafetensorsParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-hf-")
        folder, name = os.path.split(os.environ["APESERVE_TEST_MODEL"])
        cls.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        rng = np.random.default_rng(7)
        cls.prompts = [rng.integers(0, VOCAB, size=n).tolist() for n in (5, 17, 33)]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, case):
        config, dtype, shard = CASES[case]
        folder = os.path.join(self.tmp.name, case)
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(config)
        # Random weights attend almost uniformly, which would hide a wrong position
        # encoding; sharper queries and keys make every rotary angle count.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(8)
                layer.self_attn.k_proj.weight.mul_(8)
        model = model.to(dtype)
        model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        self.tokenizer.save_pretrained(folder)
        if shard:
            self.assertTrue(os.path.exists(os.path.join(folder, "model.safetensors.index.json")))
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

        logits, generated = engine_logits_and_tokens(folder, self.prompts, VOCAB, GREEDY_TOKENS)
        for i, ids in enumerate(self.prompts):
            want, tokens = greedy_tokens(reference, ids, GREEDY_TOKENS)
            diff = float(np.abs(logits[i] - want).max())
            self.assertLessEqual(diff, TOLERANCE, f"{case}, prompt {i}: max |diff| {diff}")
            self.assertEqual(generated[i], tokens, f"{case}, prompt {i}")

    def test_llama_gqa_llama3_rope_sharded_f32(self):
        self.check("llama_gqa_llama3_rope_sharded_f32")

    def test_llama_tied_bf16(self):
        self.check("llama_tied_bf16")

    def test_qwen2_bias_f16(self):
        self.check("qwen2_bias_f16")

    def test_mistral_f32(self):
        self.check("mistral_f32")


if __name__ == "__main__":
    unittest.main(verbosity=2)
