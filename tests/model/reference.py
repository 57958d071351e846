"""Helpers the Python parity tests share: the engine's side (apegen in parity mode) and
the reference's side (transformers' greedy decoding with its KV cache). Both run where
APESERVE_TEST_DEVICE and APESERVE_TEST_DTYPE say, the CPU in float32 unless set."""

import json
import os
import subprocess
import tempfile

import numpy as np
import torch

DEVICE = os.environ.get("APESERVE_TEST_DEVICE") or "cpu"
DTYPE = os.environ.get("APESERVE_TEST_DTYPE") or "float32"


def engine_logits_and_tokens(model, prompts, vocab, count, decode_logits=False):
    """Runs apegen (path in $APEGEN) on `prompts` with `model` on DEVICE in DTYPE: each a
    list of ids, or a batch-line dict (an APE prompt: prefix, contexts, token_ids as the
    query, mode, temperature, scale, form). Returns, per prompt, the logits of every prompt
    (query) position ([len, vocab]) — followed by those after each of the first
    count - 1 greedy tokens when `decode_logits` — and `count` greedy tokens."""
    with tempfile.TemporaryDirectory(prefix="apeserve-apegen-") as tmp:
        batch = os.path.join(tmp, "prompts.jsonl")
        with open(batch, "w") as f:
            for prompt in prompts:
                line = prompt if isinstance(prompt, dict) else {"token_ids": list(prompt)}
                f.write(json.dumps(line) + "\n")
        logits_path = os.path.join(tmp, "logits.f32")
        run = subprocess.run(
            [os.environ["APEGEN"], "--model=" + model, "--device=" + DEVICE, "--dtype=" + DTYPE,
             "--batch_file=" + batch, "--logits_out=" + logits_path, f"--max_tokens={count}"],
            capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError("apegen failed:\n" + run.stderr)
        tokens = [json.loads(line)["tokens"] for line in run.stdout.split("\n") if line]
        flat = np.fromfile(logits_path, dtype=np.float32)
    logits, offset = [], 0
    for prompt in prompts:
        length = len(prompt["token_ids"] if isinstance(prompt, dict) else prompt)
        rows = length + max(count - 1, 0)
        block = flat[offset:offset + rows * vocab].reshape(rows, vocab)
        logits.append(block if decode_logits else block[:length])
        offset += rows * vocab
    if offset != flat.size or len(tokens) != len(prompts):
        raise RuntimeError("apegen wrote an unexpected number of logits or results")
    return logits, tokens


def greedy_tokens(model, ids, count):
    """The logits of `ids` ([len(ids), vocab], numpy float32) and `count` greedy tokens,
    on the model's device."""
    tokens = []
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device), use_cache=True)
        logits = out.logits[0].float().cpu().numpy()
        for _ in range(count):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            out = model(torch.tensor([[token]], device=device), past_key_values=out.past_key_values,
                        use_cache=True)
    return logits, tokens
