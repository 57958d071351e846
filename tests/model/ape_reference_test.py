"""APE in the engine against an independent reference written from DESIGN.md §3.

The reference runs Hugging Face transformers' Llama on the embedded GGUF (fp32, CPU):
the prefix is encoded once; each context is encoded on its own after a copy of the
prefix's cache at positions p .. p+L-1; the query starts at p + max L and attends,
through an attention function registered with transformers in place of its own, to
three segments merged by their log-sum-exp exactly as the design's equations say
(float64), in either of the two forms of the context segment's log-sum-exp: the
published one, LSE_C = S * T * logsumexp(a_C / T), and the additive one,
LSE_C = T * logsumexp(a_C / T) + ln S. apegen (the engine alone) must give the same
logits at every query position and after each of its greedy tokens, for N in {2, 8}
contexts, T in {0.5, 0.9}, S in {0.5, 0.9, 1.0} and both forms (max |diff| <= 1e-3),
and, where S != 1, must be far from the other form's reference; PARALLEL is checked
the same way against transformers' own attention over the same cache. Run by CTest,
which sets APESERVE_TEST_MODEL and APEGEN.
"""

import copy
import itertools
import math
import os
import random
import unittest

import numpy as np
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from reference import engine_logits_and_tokens

TOLERANCE = 1e-3
DECODED = 8
FORMS = ("multiplicative", "additive")

# The segment layout of the query being run; read by ape_attention.
LAYOUT = {}


def ape_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """DESIGN.md §3, term by term, in float64. query [1, H, Tq, D]; key and value
    [1, Hkv, S, D] hold prefix, contexts and the local tokens (ending with the queries)."""
    del module, attention_mask, dropout, kwargs  # the segments define what is visible
    p, c = LAYOUT["prefix"], LAYOUT["contexts"]
    temperature, scale, form = LAYOUT["temperature"], LAYOUT["scale"], LAYOUT["form"]
    groups = query.shape[1] // key.shape[1]
    q = query.double()
    k = key.repeat_interleave(groups, dim=1).double()
    v = value.repeat_interleave(groups, dim=1).double()
    a = q @ k.transpose(-1, -2) * scaling  # a_j = q.k_j / sqrt(d)
    queries, local = q.shape[2], k.shape[2] - p - c
    a_p, v_p = a[..., :p], v[..., :p, :]
    a_c, v_c = a[..., p:p + c], v[..., p:p + c, :]
    a_q, v_q = a[..., p + c:], v[..., p + c:, :]
    visible = torch.arange(local)[None, :] <= torch.arange(queries)[:, None] + (local - queries)
    a_q = a_q.masked_fill(~visible, -math.inf)

    lse_p = torch.logsumexp(a_p, -1)
    o_p = torch.softmax(a_p, -1) @ v_p
    if form == "multiplicative":  # published: S multiplies the segment's log-sum-exp
        lse_c = scale * temperature * torch.logsumexp(a_c / temperature, -1)
    else:  # additive: S multiplies the segment's mass
        lse_c = temperature * torch.logsumexp(a_c / temperature, -1) + math.log(scale)
    o_c = torch.softmax(a_c / temperature, -1) @ v_c
    lse_q = torch.logsumexp(a_q, -1)
    o_q = torch.softmax(a_q, -1) @ v_q
    w = torch.softmax(torch.stack([lse_p, lse_c, lse_q]), 0).unsqueeze(-1)
    o = w[0] * o_p + w[1] * o_c + w[2] * o_q
    return o.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("ape_reference", ape_attention)

TOPICS = ["lighthouse", "river", "orchard", "comet", "library", "mine", "harbour", "glacier"]
NAMES = ["Osric Dale", "Ilse Marrow", "Petra Quell", "Anton Vey", "Mira Solt", "Joren Fisk"]


def documents(count, rng):
    """`count` short documents of different lengths, made up from a seed."""
    docs = []
    for i in range(count):
        topic, name = rng.choice(TOPICS), rng.choice(NAMES)
        sentences = [f"The {topic} of {name.split()[1]}ville was first recorded in "
                     f"{rng.randint(1500, 1990)}.",
                     f"{name} looked after it for {rng.randint(2, 40)} years.",
                     f"Visitors counted {rng.randint(10, 900)} birds there one spring.",
                     f"Its records are kept in drawer {rng.randint(1, 99)}."]
        docs.append(" ".join(sentences[:1 + (i % 4)]))
    return docs


class ApeReferenceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        cls.path = os.environ["APESERVE_TEST_MODEL"]
        folder, name = os.path.split(cls.path)
        cls.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        cls.model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32).eval()
        cls.vocab = cls.model.config.vocab_size
        cls.caches = {}

    def encode(self, text):
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt(self, count, seed):
        """Token pieces of a ChatML APE prompt (the pieces chat_template.h documents)."""
        rng = random.Random(seed)
        prefix = self.encode("<|im_start|>system\nAnswer from the documents.<|im_end|>\n"
                             "<|im_start|>user\n")
        contexts = [self.encode(doc + "\n\n") for doc in documents(count, rng)]
        query = self.encode("Who looked after the lighthouse?<|im_end|>\n<|im_start|>assistant\n")
        return prefix, contexts, query

    def context_cache(self, prefix, contexts):
        """transformers' KV of the prefix and of each context encoded on its own after it
        (positions p .. p+L-1), side by side; memoized, callers get a copy."""
        key = (tuple(prefix), tuple(tuple(c) for c in contexts))
        if key not in self.caches:
            model = self.model
            model.set_attn_implementation("sdpa")
            with torch.no_grad():
                prefix_cache = model(torch.tensor([prefix]), use_cache=True).past_key_values
                p = len(prefix)
                layers = len(prefix_cache.layers)
                keys = [[prefix_cache.layers[i].keys] for i in range(layers)]
                values = [[prefix_cache.layers[i].values] for i in range(layers)]
                for context in contexts:
                    cache = copy.deepcopy(prefix_cache)
                    model(torch.tensor([context]), past_key_values=cache, use_cache=True,
                          position_ids=torch.arange(p, p + len(context))[None])
                    for i in range(layers):
                        keys[i].append(cache.layers[i].keys[:, :, p:])
                        values[i].append(cache.layers[i].values[:, :, p:])
                combined = DynamicCache()
                for i in range(layers):
                    combined.update(torch.cat(keys[i], 2), torch.cat(values[i], 2), i)
            self.caches[key] = combined
        return copy.deepcopy(self.caches[key])

    def reference_logits(self, prefix, contexts, query, tokens, mode, temperature, scale,
                         form="multiplicative"):
        """Logits of the query positions and after each of `tokens` but the last."""
        model = self.model
        combined = self.context_cache(prefix, contexts)
        start = len(prefix) + max(len(c) for c in contexts)
        fed = query + tokens[:-1]
        LAYOUT.update(prefix=len(prefix), contexts=sum(len(c) for c in contexts),
                      temperature=temperature, scale=scale, form=form)
        model.set_attn_implementation("ape_reference" if mode == "ape" else "sdpa")
        try:
            with torch.no_grad():
                out = model(torch.tensor([fed]), past_key_values=combined, use_cache=True,
                            position_ids=torch.arange(start, start + len(fed))[None])
        finally:
            model.set_attn_implementation("sdpa")
        return out.logits[0].numpy()

    def test_engine_matches_the_reference(self):
        # One prompt per (N, T); every S and form on it.
        cases = [dict(count=n, mode="ape", temperature=t, scale=s, form=form, seed=n * 100 + i)
                 for i, (n, t) in enumerate(itertools.product([2, 8], [0.5, 0.9]))
                 for s, form in itertools.product([0.5, 0.9, 1.0], FORMS)]
        cases += [dict(count=3, mode="parallel", temperature=1.0, scale=1.0, form=FORMS[0],
                       seed=7)]
        batch = []
        for case in cases:
            prefix, contexts, query = self.prompt(case["count"], case["seed"])
            batch.append({"prefix": prefix, "contexts": contexts, "token_ids": query,
                          "mode": case["mode"], "temperature": case["temperature"],
                          "scale": case["scale"], "form": case["form"]})
        logits, generated = engine_logits_and_tokens(self.path, batch, self.vocab, DECODED,
                                                     decode_logits=True)
        worst, closest_other = 0.0, math.inf
        for case, line, got, tokens in zip(cases, batch, logits, generated):
            args = (line["prefix"], line["contexts"], line["token_ids"], tokens, case["mode"],
                    case["temperature"], case["scale"])
            want = self.reference_logits(*args, form=case["form"])
            self.assertEqual(got.shape, want.shape)
            diff = float(np.abs(got - want).max())
            worst = max(worst, diff)
            self.assertLessEqual(diff, TOLERANCE, f"{case}: max |diff| {diff}")
            if case["mode"] == "ape" and case["scale"] != 1.0:
                # A form mix-up cannot pass: the other form's reference is far away.
                other = FORMS[1 - FORMS.index(case["form"])]
                apart = float(np.abs(got - self.reference_logits(*args, form=other)).max())
                closest_other = min(closest_other, apart)
                self.assertGreater(apart, 20 * TOLERANCE, f"{case}: the {other} form is as close")
        print(f"\nmax |logit diff| over {len(cases)} cases: {worst:.3g}; "
              f"least max |diff| to the other form where S != 1: {closest_other:.3g}")

    def test_the_reference_is_sensitive_to_temperature_and_scale(self):
        # Guards the comparison above against a reference that ignores T and S.
        prefix, contexts, query = self.prompt(4, 1)
        plain = self.reference_logits(prefix, contexts, query, [0], "ape", 1.0, 1.0)
        parallel = self.reference_logits(prefix, contexts, query, [0], "parallel", 1.0, 1.0)
        sharp = self.reference_logits(prefix, contexts, query, [0], "ape", 0.5, 1.0)
        self.assertLessEqual(float(np.abs(plain - parallel).max()), 1e-3)
        self.assertGreater(float(np.abs(plain - sharp).max()), 0.05)
        for form in FORMS:
            scaled = self.reference_logits(prefix, contexts, query, [0], "ape", 1.0, 0.5, form)
            self.assertGreater(float(np.abs(plain - scaled).max()), 0.05, form)

    def test_the_two_forms_agree_only_at_unit_scale(self):
        prefix, contexts, query = self.prompt(4, 2)
        for temperature in (0.5, 0.9):
            same = [self.reference_logits(prefix, contexts, query, [0], "ape", temperature, 1.0,
                                          form) for form in FORMS]
            self.assertLessEqual(float(np.abs(same[0] - same[1]).max()), 1e-5)
            for scale in (0.5, 0.9, 1.5):
                apart = [self.reference_logits(prefix, contexts, query, [0], "ape", temperature,
                                               scale, form) for form in FORMS]
                self.assertGreater(float(np.abs(apart[0] - apart[1]).max()), 0.05,
                                   f"T={temperature}, S={scale}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
