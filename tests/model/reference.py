"""Helpers the Python parity tests share: greedy decoding with transformers' KV cache."""

import torch


def greedy_tokens(model, ids, count):
    """The first logits of `ids` ([len(ids), vocab], numpy) and `count` greedy tokens."""
    tokens = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        logits = out.logits[0].numpy()
        for _ in range(count):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return logits, tokens
