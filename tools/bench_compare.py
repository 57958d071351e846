#!/usr/bin/env python3
"""The regression guard's measurement: two apeserve binaries (a base commit's and the
working tree's) side by side in one run, interleaved, on the headline figures, and the
ratios of the second to the first. tools/bench_compare.sh builds the base and calls it.

Both servers run at once, each on its own loopback port and fresh data directory, with
their defaults but a host tier that holds the whole corpus (--host_cache_mib), so only
one of them computes at a time. After storing the corpus (D documents of about T tokens
of real prose, bench_corpus.py) and one warm-up pass over every document, each round
measures one server and then the other (the order alternating from round to round):

  ingest tokens/s       a BatchCreateContexts of new documents (other texts each round,
                        the same for both servers), acknowledged durable
  warm TTFT, RAG K=16   time to first token of RAG requests (bench_workloads.py: 16
                        documents of the corpus at random, in random order, a new
                        question), KV from the host tier
  decode tok/s, batch 1 (tokens after the first) / (time after the first), one request
                        of --new_tokens tokens at a time, at the client
  tokens/s at 8 clients generated tokens (16 per request) of the RAG requests that
                        finished inside a 30 s window, 8 streaming clients starting
                        0.25 s apart (a request still running at its end is cancelled)
  peak RSS              VmHWM of each server at the end of the run

Figures are medians over the rounds (TTFT over every request); the ratio is working
tree / base, and the table says which direction is better. A figure moving more than
--tolerance in the worse direction is flagged. Nothing is asserted: --check exits 1
only when a measurement failed.

  tools/bench_compare.sh HEAD~1                     # what most changes should run
  $APESERVE_HOME/venv/bin/python tools/bench_compare.py --base A/apeserve --head B/apeserve
  # one binary, two allocator settings:
  $APESERVE_HOME/venv/bin/python tools/bench_compare.py --base B/apeserve --head B/apeserve \
      --base_env MALLOC_CONF=oversize_threshold:8388608
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_apeserve import ApeserveSystem, client_modules, store_corpus  # noqa: E402
from bench_common import add_two_builds, machine, peak_rss_mb, start_server, stop_server  # noqa: E402
from bench_corpus import cut_documents, prose_words  # noqa: E402
from bench_workloads import Draw, concurrent, rag_draws, time_one  # noqa: E402

NAMESPACE = "bench-compare"
FULL = {"documents": 64, "tokens": 448, "k": 16, "rounds": 5, "ttft_requests": 3,
        "new_tokens": 128, "concurrent_tokens": 16, "clients": 8, "window_s": 30.0,
        "ingest_documents": 4}
QUICK = {"documents": 8, "tokens": 128, "k": 4, "rounds": 2, "ttft_requests": 2,
         "new_tokens": 16, "concurrent_tokens": 4, "clients": 2, "window_s": 8.0,
         "ingest_documents": 2}
# name: (unit, True when higher is better)
FIGURES = {"warm_ttft_ms": ("ms", False), "decode_tok_s": ("tok/s", True),
           "tokens_per_s_at_clients": ("tok/s", True), "ingest_tokens_per_s": ("tok/s", True),
           "peak_rss_mib": ("MiB", False)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Side:
    """One binary under test: its server, its stored corpus, and what it measured."""

    def __init__(self, label: str, binary: str, model: str, scratch: Path, host_mib: int,
                 modules, env: dict[str, str]) -> None:
        self.label, self.modules = label, modules
        self.server, self.target = start_server(binary, model, scratch,
                                                (f"--host_cache_mib={host_mib}",), env)
        self.samples: dict[str, list[float]] = {name: [] for name in FIGURES}
        self.ids: list[str] = []

    def system(self) -> ApeserveSystem:
        grpc, _, pb, stubs = self.modules
        return ApeserveSystem(grpc, pb, stubs, self.target, NAMESPACE, self.ids)

    def client(self):
        return self.modules[1].Client(self.target, namespace=NAMESPACE, timeout=3600)

    def close(self) -> None:
        stop_server(self.server)


def measure_round(side: Side, settings: dict[str, Any], round_index: int,
                  ingest_texts: list[str]) -> None:
    """One round of every figure on `side`."""
    with side.client() as client:
        _, rate = store_corpus(client, ingest_texts, prefix=f"ingest-{round_index}-")
    side.samples["ingest_tokens_per_s"].append(rate["tokens_per_s"])
    system = side.system()
    try:
        draws = rag_draws(settings["ttft_requests"] + 1, settings["documents"], settings["k"],
                          seed=1000 + round_index)
        for draw in draws[:-1]:
            side.samples["warm_ttft_ms"].append(time_one(system, draw, 1).ttft_ms)
        decode = time_one(system, draws[-1], settings["new_tokens"]).decode_tok_s
        if decode is not None:
            side.samples["decode_tok_s"].append(decode)
    finally:
        system.close()
    systems = [side.system() for _ in range(settings["clients"])]
    try:
        row = concurrent(lambda i: systems[i],
                         lambda i: rag_draws(64, settings["documents"], settings["k"],
                                             seed=round_index * 100 + i),
                         settings["clients"], settings["window_s"], settings["concurrent_tokens"],
                         stagger_s=0.25,
                         error_types=(side.modules[0].RpcError, RuntimeError))
    finally:
        for system in systems:
            system.close()
    if row["errors"]:
        raise SystemExit(f"{side.label}: {row['errors']} failed requests: {row['first_error']}")
    side.samples["tokens_per_s_at_clients"].append(row["tokens_per_s"])
    log(f"round {round_index + 1} {side.label}: TTFT {statistics.median(side.samples['warm_ttft_ms'][-settings['ttft_requests']:]):.0f} ms, "
        f"decode {side.samples['decode_tok_s'][-1] if side.samples['decode_tok_s'] else 0:.1f} tok/s, "
        f"{row['tokens_per_s']:.1f} tok/s at {settings['clients']} clients, "
        f"ingest {rate['tokens_per_s']:.0f} tok/s")


def compare(base: Side, head: Side, tolerance: float) -> list[dict[str, Any]]:
    rows = []
    for name, (unit, higher_better) in FIGURES.items():
        a = statistics.median(base.samples[name]) if base.samples[name] else None
        b = statistics.median(head.samples[name]) if head.samples[name] else None
        ratio = b / a if a and b is not None else None
        worse = ratio is not None and ((ratio < 1 - tolerance) if higher_better
                                       else (ratio > 1 + tolerance))
        rows.append({"figure": name, "unit": unit, "higher_is_better": higher_better,
                     "base": a, "head": b, "ratio": ratio, "regression": worse,
                     "base_samples": base.samples[name], "head_samples": head.samples[name]})
    return rows


def print_table(rows: list[dict[str, Any]], base_label: str, head_label: str) -> None:
    print(f"base: {base_label}\nhead: {head_label}")
    print(f"{'figure':<26}{'unit':>7}{'base':>11}{'head':>11}{'head/base':>11}  better")
    for row in rows:
        cells = [f"{v:>11.1f}" if v is not None else f"{'-':>11}" for v in (row["base"], row["head"])]
        ratio = f"{row['ratio']:>11.3f}" if row["ratio"] is not None else f"{'-':>11}"
        flag = "  REGRESSION" if row["regression"] else ""
        print(f"{row['figure']:<26}{row['unit']:>7}{cells[0]}{cells[1]}{ratio}  "
              f"{'higher' if row['higher_is_better'] else 'lower'}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_two_builds(parser)
    parser.add_argument("--base_env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the base's server (repeatable), e.g. MALLOC_CONF=...")
    parser.add_argument("--head_env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the working tree's server (repeatable)")
    parser.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="flag a figure that moved this much in the worse direction")
    parser.add_argument("--quick", action="store_true", help="CI: a small corpus, seconds")
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure is missing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.rounds:
        settings["rounds"] = args.rounds
    home = Path(os.environ.get("APESERVE_HOME", Path.home() / ".cache/apeserve"))
    model = args.model or str(home / "models/SmolLM2-135M-Instruct.Q4_1.gguf")

    from transformers import AutoConfig, AutoTokenizer

    folder, name = str(Path(model).parent), Path(model).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    kv_bytes_per_token = (2 * config.num_hidden_layers * config.num_key_value_heads
                          * (config.hidden_size // config.num_attention_heads) * 4)
    words = prose_words()
    corpus = cut_documents(tokenizer, words, settings["documents"], settings["tokens"])
    fresh = cut_documents(tokenizer, words, settings["rounds"] * settings["ingest_documents"],
                          settings["tokens"], start=200_000 % len(words))
    scratch = Path(tempfile.mkdtemp(prefix="apeserve-compare-"))
    modules = client_modules(scratch / "lib")
    # The corpus and the rounds' new documents, float32 KV, with room to spare.
    kv_mib = (settings["documents"] + len(fresh.texts)) * settings["tokens"] * kv_bytes_per_token >> 20
    host_mib = kv_mib + 512
    sides: list[Side] = []
    try:
        for label, binary, env in (("base", args.base, args.base_env),
                                   ("head", args.head, args.head_env)):
            sides.append(Side(label, binary, model, scratch / label, host_mib, modules,
                              dict(item.split("=", 1) for item in env)))
        for side in sides:
            with side.client() as client:
                side.ids, rate = store_corpus(client, corpus.texts, prefix="doc-")
            log(f"{side.label}: stored {rate['documents']} documents, {rate['tokens_per_s']:.0f} tok/s")
            warm = side.system()  # every document once: the host tier holds them from here
            try:
                for first in range(0, len(side.ids), settings["k"]):
                    chosen = tuple(range(first, min(first + settings["k"], len(side.ids))))
                    time_one(warm, Draw(chosen, 0), 1)
            finally:
                warm.close()
        per_round = settings["ingest_documents"]
        for r in range(settings["rounds"]):
            order = sides if r % 2 == 0 else sides[::-1]
            texts = fresh.texts[r * per_round:(r + 1) * per_round]
            for side in order:
                measure_round(side, settings, r, texts)
        for side in sides:
            rss = peak_rss_mb(side.server.pid)
            if rss is not None:
                side.samples["peak_rss_mib"].append(rss)
    finally:
        for side in sides:
            side.close()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = compare(sides[0], sides[1], args.tolerance)
    print_table(rows, args.base_label, args.head_label)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine(), "settings": settings, "base": args.base_label,
             "head": args.head_label, "figures": rows, "time": time.strftime("%Y-%m-%d %H:%M:%S")},
            indent=2))
    if args.check and any(row["ratio"] is None for row in rows):
        log("check failed: a figure was not measured on both sides")
        sys.exit(1)


if __name__ == "__main__":
    main()
