#!/usr/bin/env python3
"""Prefill and decode speed of the engine beside Hugging Face transformers, in one run.

Both run the same GGUF model on the CPU in fp32 with the same prompt (the engine
through tools/apegen, transformers in this process with its KV cache, SDPA attention and
logits for the last prompt position only), greedy, and report tokens per second. Usage (after the build):

  $APESERVE_HOME/venv/bin/python tools/bench_engine.py [--prompt_tokens 512]
      [--decode_tokens 64] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HOME = os.environ.get("APESERVE_HOME", os.path.expanduser("~/.cache/apeserve"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_ours(apegen, model, ids, decode_tokens):
    run = subprocess.run([apegen, "--model=" + model, "--device=cpu", "--dtype=float32",
                          "--token_ids=" + ",".join(map(str, ids)),
                          f"--max_tokens={decode_tokens}", "--ignore_eos"],
                         capture_output=True, text=True, check=True)
    out = json.loads(run.stdout.strip().split("\n")[-1])
    return len(ids) / out["time_to_first_token_s"], out["decode_tokens_per_s"]


def bench_reference(model, ids, decode_tokens):
    with torch.no_grad():
        start = time.perf_counter()
        # Logits for the last position only, as transformers' own generate() asks: the
        # other positions' LM head would be work no user pays for.
        out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        token = out.logits[0, -1].argmax()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(decode_tokens - 1):
            out = model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[0, -1].argmax()
        decode = time.perf_counter() - start
    return len(ids) / prefill, (decode_tokens - 1) / decode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--apegen", default=os.path.join(ROOT, "build", "default", "tools", "apegen"))
    parser.add_argument("--prompt_tokens", type=int, default=512)
    parser.add_argument("--decode_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    folder, name = os.path.split(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    reference.set_attn_implementation("sdpa")
    text = " ".join(f"Sentence number {i} talks about a different topic." for i in range(2000))
    ids = tokenizer(text).input_ids[:args.prompt_tokens]

    rows = {"apeserve engine": [], "transformers": []}
    for _ in range(args.repeats):
        rows["apeserve engine"].append(bench_ours(args.apegen, args.model, ids, args.decode_tokens))
        rows["transformers"].append(bench_reference(reference, ids, args.decode_tokens))
    print(f"model {name}, CPU fp32, {torch.get_num_threads()} threads, prompt {len(ids)} tokens, "
          f"decode {args.decode_tokens} tokens, median of {args.repeats}")
    print(f"{'':18} {'prefill tok/s':>14} {'decode tok/s':>13}")
    medians = {}
    for label, samples in rows.items():
        prefill = statistics.median(s[0] for s in samples)
        decode = statistics.median(s[1] for s in samples)
        medians[label] = (prefill, decode)
        print(f"{label:18} {prefill:14.1f} {decode:13.1f}")
    ours, ref = medians["apeserve engine"], medians["transformers"]
    print(f"{'ratio':18} {ours[0] / ref[0]:14.2f} {ours[1] / ref[1]:13.2f}")


if __name__ == "__main__":
    main()
