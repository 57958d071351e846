"""What a user would run instead of apeserve, in this process, on the same token ids,
the same model file and the same number of threads (llama.cpp's server, the third peer,
is in bench_llama_server.py):

  transformers  Hugging Face transformers, fp32 on the CPU, SDPA attention: the whole
                prompt prefilled at once with logits for the last position only
                (logits_to_keep=1, as its own generate() asks), then greedy decoding
                with its KV cache (what a researcher runs).
  ape-python    our reimplementation of APE in transformers (not the authors' code):
                each document's KV computed once after the prefix and kept in memory,
                and at query time the caches concatenated and attended by APE's merge
                of segments (DESIGN.md §3) in Python, fp32, grouped-query attention
                without repeating the KV. No store: the KV lives as long as the process.

Each peer's tokens() yields the time each of `new_tokens` greedy tokens is ready
(end-of-sequence ignored); PeerSystem makes a peer a bench_workloads.System.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import torch

from bench_corpus import PromptPieces


def load_transformers(model_path: str, threads: int):
    """The tokenizer and the fp32 model from a GGUF file."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    folder, name = str(Path(model_path).parent), Path(model_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    return tokenizer, model


class TransformersPeer:
    name = "transformers"

    def __init__(self, model) -> None:
        self.model = model

    def tokens(self, pieces: PromptPieces, new_tokens: int) -> Iterator[float]:
        ids = torch.tensor([pieces.sequential()])
        with torch.inference_mode():
            out = self.model(ids, use_cache=True, logits_to_keep=1)
            token = out.logits[0, -1].argmax()
            yield time.perf_counter()
            cache = out.past_key_values
            for _ in range(new_tokens - 1):
                out = self.model(token.view(1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token = out.logits[0, -1].argmax()
                yield time.perf_counter()


# The segment layout of the query being run, read by ape_attention: transformers calls
# the registered function with no room for extra arguments.
_LAYOUT: dict[str, float] = {}


def ape_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """DESIGN.md §3 in the model's dtype. query [1, H, Tq, D]; key and value [1, Hkv, S, D]
    hold the prefix, the contexts side by side and the local tokens (ending with the
    queries). The query heads of one kv head are stacked as rows ([1, Hkv, G * Tq, D]),
    so that the keys and values are used where they lie, not copied G times."""
    del module, attention_mask, dropout, kwargs  # the segments say what is visible
    p, c = int(_LAYOUT["prefix"]), int(_LAYOUT["contexts"])
    temperature, scale = _LAYOUT["temperature"], _LAYOUT["scale"]
    heads, queries, kv_heads = query.shape[1], query.shape[2], key.shape[1]
    q = query.reshape(1, kv_heads, -1, query.shape[3])
    a = q @ key.transpose(-1, -2) * scaling  # [1, Hkv, G * Tq, S]
    local = key.shape[2] - p - c
    a_p, a_c, a_q = a[..., :p], a[..., p:p + c], a[..., p + c:]
    query_index = torch.arange(queries).repeat(heads // kv_heads)[:, None]
    visible = torch.arange(local)[None, :] <= query_index + (local - queries)
    a_q = a_q.masked_fill(~visible, -math.inf)
    lse_c = torch.logsumexp(a_c / temperature, -1)
    if _LAYOUT["multiplicative"]:
        lse_c = scale * temperature * lse_c
    else:
        lse_c = temperature * lse_c + math.log(scale)
    lses = torch.stack([torch.logsumexp(a_p, -1), lse_c, torch.logsumexp(a_q, -1)])
    weights = torch.softmax(lses, 0).unsqueeze(-1)
    o = (weights[0] * (torch.softmax(a_p, -1) @ value[..., :p, :])
         + weights[1] * (torch.softmax(a_c / temperature, -1) @ value[..., p:p + c, :])
         + weights[2] * (torch.softmax(a_q, -1) @ value[..., p + c:, :]))
    o = o.reshape(1, heads, queries, -1)
    return o.transpose(1, 2).contiguous(), None


class ApePythonPeer:
    name = "ape-python"  # our reimplementation in transformers, not the authors' code

    def __init__(self, model, temperature: float, scale: float, multiplicative: bool) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register("ape_bench", ape_attention)
        self.model = model
        self.settings = {"temperature": temperature, "scale": scale,
                         "multiplicative": multiplicative}
        self.prefix: list[int] | None = None
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.documents: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def store(self, pieces: PromptPieces) -> None:
        """Encodes the prefix once and each document not yet held after it, as the authors'
        code does before queries arrive (not timed: apeserve's ingestion is not either)."""
        import copy

        with torch.inference_mode():
            if self.prefix != pieces.prefix:
                out = self.model(torch.tensor([pieces.prefix]), use_cache=True)
                self.prefix_cache = out.past_key_values
                self.prefix_kv = [(layer.keys, layer.values) for layer in self.prefix_cache.layers]
                self.prefix, self.documents = pieces.prefix, {}
            p = len(pieces.prefix)
            for context in pieces.contexts:
                if tuple(context) in self.documents:
                    continue
                cache = copy.deepcopy(self.prefix_cache)
                self.model(torch.tensor([context]), past_key_values=cache, use_cache=True,
                           position_ids=torch.arange(p, p + len(context))[None])
                self.documents[tuple(context)] = [(layer.keys[:, :, p:], layer.values[:, :, p:])
                                                  for layer in cache.layers]

    def forget_other_sizes(self, tokens: int) -> None:
        """Frees the KV of documents longer or shorter than `tokens` by more than a few."""
        self.documents = {key: kv for key, kv in self.documents.items()
                          if abs(len(key) - tokens) <= 16}

    def tokens(self, pieces: PromptPieces, new_tokens: int) -> Iterator[float]:
        from transformers import DynamicCache

        documents = [self.documents[tuple(c)] for c in pieces.contexts]  # store()d before
        _LAYOUT.update(self.settings, prefix=len(pieces.prefix),
                       contexts=sum(len(c) for c in pieces.contexts))
        position = len(pieces.prefix) + max(len(c) for c in pieces.contexts)
        self.model.set_attn_implementation("ape_bench")
        try:
            with torch.inference_mode():
                cache = DynamicCache()
                for layer, (keys, values) in enumerate(self.prefix_kv):
                    cache.update(torch.cat([keys] + [d[layer][0] for d in documents], 2),
                                 torch.cat([values] + [d[layer][1] for d in documents], 2), layer)
                fed = torch.tensor([pieces.query])
                for _ in range(new_tokens):
                    out = self.model(fed, past_key_values=cache, use_cache=True,
                                     position_ids=torch.arange(position, position + fed.shape[1])[None],
                                     logits_to_keep=1)
                    position += fed.shape[1]
                    fed = out.logits[0, -1].argmax().view(1, 1)
                    yield time.perf_counter()
        finally:
            self.model.set_attn_implementation("sdpa")


class PeerSystem:
    """A peer of this module as a bench_workloads.System: `pieces_of(draw)` gives the
    prompt's token pieces. prepare() stores the documents of the Python APE before the
    clock starts (apeserve's ingestion is not timed either)."""

    def __init__(self, peer, pieces_of, label: str | None = None) -> None:
        self.peer, self.pieces_of = peer, pieces_of
        self.name = label or peer.name

    def prepare(self, draw) -> None:
        if hasattr(self.peer, "store"):
            self.peer.store(self.pieces_of(draw))

    def stream(self, draw, new_tokens: int, timeout_s: float | None = None
               ) -> Iterator[tuple[float, int, dict]]:
        del timeout_s  # in this process, one request at a time: never given a deadline
        for at in self.peer.tokens(self.pieces_of(draw), new_tokens):
            yield at, 1, {}
        yield time.perf_counter(), 0, {}
