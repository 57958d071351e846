#!/usr/bin/env python3
"""The race a skeptical engineer would accept (issue 23): apeserve against llama.cpp's
server at its best, transformers and our Python reimplementation of APE, on the same
token ids, the same model file and thread count, end to end, against floors that owe
nothing to apeserve's own timings.

Workloads (bench_workloads.py), every system given the same requests:
  RAG            D documents of about T tokens of real prose (bench_corpus.py); each
                 request names K of them at random, in random order, and asks a new
                 question. K = 4 and 16 for everyone; K = 64 for apeserve only (the
                 sequential prompt exceeds the model's window). The headline.
  same documents the same K = 16 documents each time, a new question: a prompt cache's
                 best case.
  concurrent     8 clients on RAG K = 16, 32 new tokens each (llama.cpp's server with 8
                 slots), for a 120-s window; a request still running when it closes is
                 cancelled and counted as late.
  live traffic   C clients on RAG K = 16 while a producer stores new documents at a
                 steady rate (apeserve; llama.cpp's server has no store and is given the
                 same clients without the producer).
  grid           contexts x tokens per context, up to the paper's 128 x 1024, each
                 request the same documents with a new question: APE and PARALLEL warm
                 (host tier) and cold (from the store, the OS page cache dropped before
                 each request where this process may), cold again with int8 storage;
                 SEQUENTIAL and the peers where the prompt fits the window.

Every row: time to first token (TTFT), time to the last of 128 new tokens (e2e) and
the decode rate after the first token, medians and nearest-rank p90 over --runs
requests after one warm-up, all timed at the client (the cold and PARALLEL rows stop
at the first token: after it they decode as the warm APE row of their point does); apeserve's rows add its server's
timings (KV load, prefill). The floor of an APE row is the larger of (a) the query's
prefill arithmetic (projections, MLP, LM head, each query token's attention over every
context key) at the float32 matmul rate measured in this run and (b) its contexts' KV
bytes at the memcpy speed measured in this run (warm) or at the data disk's sequential
read rate measured in this run with O_DIRECT (cold). Targets are printed, never asserted.

Peers (their settings are printed and stored in the report):
  llama-server  llama.cpp's own HTTP server, every row with flash attention on and with
                it off (which is faster depends on the workload; each target is judged
                against its better setting for that figure), prompt cache on,
                --cache-reuse, one slot per client (bench_llama_server.py)
  transformers  fp32, SDPA, logits for the last position only (bench_peers.py)
  ape-python    our reimplementation of APE in transformers (bench_peers.py), not the
                authors' code

  # The full run, in parts that each fit a working session on two cores (a part's
  # systems run apart where it would not; the rag part's in one run, since its targets
  # are ratios), then the README's tables and plot from all the reports together:
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --part rag --json docs/ttft_bench_rag.json
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --part grid --systems apeserve,ape-python \\
      --json docs/ttft_bench_grid_apeserve.json
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --part grid \\
      --systems llama-server,transformers --json docs/ttft_bench_grid_peers.json
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --part cold --json docs/ttft_bench_cold.json
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --merge docs/ttft_bench_*.json \\
      --plot docs/ttft_bench.png --markdown tables.md
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --quick --check   # CI, a few minutes
"""

from __future__ import annotations

import argparse
import http.client
import importlib
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

from bench_apeserve import ApeserveSystem, client_modules, document_storer, store_corpus  # noqa: E402
from bench_common import (REPOSITORY, cell, disk_read_gb_s, machine, matmul_gflop_s,  # noqa: E402
                          memcpy_gb_s, peak_rss_mb, start_server, stop_server)
from bench_corpus import PromptBuilder, cut_documents, prose_words  # noqa: E402
from bench_llama_server import FLASH_ATTENTION, default_binary  # noqa: E402
from bench_workloads import (QUESTIONS, Draw, Producer, concurrent, rag_draws,  # noqa: E402
                             same_documents_draws, summary, time_one)

NAMESPACE = "ttft-bench"
FULL = {"grid_contexts": [1, 4, 16, 64], "grid_tokens": [128, 448, 1024], "paper": (128, 1024),
        "rag_documents": 64, "rag_tokens": 448, "rag_k": [4, 16, 64], "headline_k": 16,
        "runs": 10, "new_tokens": 128, "concurrent_clients": 8, "concurrent_tokens": 32,
        "live_clients": [1, 4, 16], "live_seconds": 120.0, "stagger_s": 0.5,
        "ingest_per_s": 0.5}
QUICK = {"grid_contexts": [1, 4], "grid_tokens": [128], "paper": None,
         "rag_documents": 8, "rag_tokens": 128, "rag_k": [2, 4], "headline_k": 4,
         "runs": 2, "new_tokens": 8, "concurrent_clients": 2, "concurrent_tokens": 4,
         "live_clients": [2], "live_seconds": 12.0, "stagger_s": 0.2, "ingest_per_s": 1.0}
INT8 = "int8_per_channel"
# The targets, printed (never asserted).
TARGETS = {
    "rag_ttft_vs_llama_server": (">=", 30.0, "RAG, headline K: llama-server TTFT / APE TTFT (warm)"),
    "same_documents_ttft_vs_llama_server": (">=", 1.0,
                                            "same documents: llama-server TTFT / APE TTFT"),
    "floor_up_to_16k": ("<=", 1.5, "APE TTFT / strict floor, warm, up to 16K context tokens"),
    "floor_at_131k": ("<=", 2.0, "APE TTFT / strict floor, warm, at 131K context tokens"),
    "rag_e2e_vs_llama_server": (">=", 3.0,
                                "RAG, headline K, end to end: llama-server / APE (first token + all new tokens)"),
}


STARTED = time.monotonic()


def log(message: str) -> None:
    """A progress line, prefixed with the time since the run started (the full run takes
    hours)."""
    elapsed = int(time.monotonic() - STARTED)
    print(f"[{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {message}",
          file=sys.stderr, flush=True)


def drop_page_cache() -> bool:
    """Writes back and drops the OS page cache; False where this process may not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def reset_peak_rss(pid: int | None) -> None:
    """Restarts VmHWM of `pid` from its current RSS (Linux: clear_refs 5), where allowed."""
    if pid is None:
        return
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")
    except OSError:
        pass


class ColdSystem:
    """A system whose every request starts with the OS page cache dropped."""

    def __init__(self, system) -> None:
        self.system, self.name, self.dropped = system, system.name, []

    def prepare(self, draw: Draw) -> None:
        self.dropped.append(drop_page_cache())

    def stream(self, draw: Draw, new_tokens: int, timeout_s: float | None = None):
        return self.system.stream(draw, new_tokens, timeout_s)


class Bench:
    """The run's settings, corpora, prompt builder and rows."""

    def __init__(self, args, settings: dict[str, Any], tokenizer, model) -> None:
        self.args, self.settings = args, settings
        self.builder = PromptBuilder(tokenizer)
        self.window = model.config.max_position_embeddings
        config = model.config
        self.shape = {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                      "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                      "head_dim": config.hidden_size // config.num_attention_heads,
                      "intermediate": config.intermediate_size, "vocab": config.vocab_size}
        self.kv_bytes_per_token = (2 * self.shape["layers"] * self.shape["kv_heads"]
                                   * self.shape["head_dim"] * 4)
        self.query_tokens = max(len(self.builder.pieces([], q).query) for q in QUESTIONS)
        words = prose_words()
        self.grid: dict[int, Any] = {}
        for index, tokens in enumerate(settings["grid_tokens"]):
            count = max(settings["grid_contexts"])
            if settings["paper"] and settings["paper"][1] == tokens:
                count = max(count, settings["paper"][0])
            self.grid[tokens] = cut_documents(tokenizer, words, count, tokens, start=index * 7919)
        self.rag = cut_documents(tokenizer, words, settings["rag_documents"], settings["rag_tokens"],
                                 start=len(words) // 2)
        # Distinct texts for every document the producer stores (a repeated text would be
        # deduplicated by its content hash, not encoded).
        live_documents = int(len(settings["live_clients"]) * settings["live_seconds"]
                             * settings["ingest_per_s"] * 1.3) + 4
        self.fresh = cut_documents(tokenizer, words, live_documents, settings["rag_tokens"],
                                   start=len(words) * 3 // 4)
        log(f"documents cut: grid {', '.join(f'{len(d.texts)} x {t}' for t, d in self.grid.items())}; "
            f"RAG {len(self.rag.texts)} x {settings['rag_tokens']}; {len(self.fresh.texts)} to ingest live")
        self.rows: list[dict[str, Any]] = []
        self.concurrent_rows: list[dict[str, Any]] = []
        self.live_rows: list[dict[str, Any]] = []
        self.peers: dict[str, Any] = {}
        # What a failed request raises, counted (never hidden) in the concurrent rows.
        self.error_types: tuple[type[BaseException], ...] = (RuntimeError, OSError,
                                                             http.client.HTTPException)

    # What each workload is ---------------------------------------------------------

    def has(self, part: str) -> bool:
        """Whether this run measures `part`: "rag" (RAG, same documents, concurrent and
        live traffic), "grid" (the grid warm, with the peers) or "cold" (the grid from
        the store, float32 and int8)."""
        return self.args.part in ("all", part)

    def has_grid_documents(self) -> bool:
        """Whether this run stores the grid's documents: the grid part times them warm,
        the cold part from the store."""
        return self.has("grid") or self.has("cold")

    def warm(self, works: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The workloads measured warm: the grid's only in a run of the grid part (the
        cold part stores the grid's documents but times only their cold rows)."""
        return [w for w in works if w["workload"] != "grid" or self.has("grid")]

    def fits(self, context_tokens: int) -> bool:
        """Whether a SEQUENTIAL prompt of `context_tokens` and its answer fit the window."""
        return (len(self.builder.prefix) + context_tokens + self.query_tokens
                + self.settings["new_tokens"] <= self.window)

    def grid_points(self) -> list[tuple[int, int]]:
        points = [(c, t) for t in self.settings["grid_tokens"] for c in self.settings["grid_contexts"]]
        if self.settings["paper"]:
            points.append(tuple(self.settings["paper"]))
        return points

    def workloads(self, apeserve_only: bool) -> list[dict[str, Any]]:
        """Each (workload, K or grid point) with its corpus texts and draws: the warm-up
        first, then --runs timed requests."""
        runs, out = self.settings["runs"], []
        rag = self.rag.texts
        for k in self.settings["rag_k"] if self.has("rag") else []:
            context_tokens = sum(sorted(self.rag.token_counts)[-k:])
            if apeserve_only or self.fits(context_tokens):
                out.append({"workload": "rag", "contexts": k, "tokens_per_context": self.settings["rag_tokens"],
                            "texts": rag, "corpus": "rag", "fits": self.fits(context_tokens),
                            "draws": rag_draws(runs + 1, len(rag), k, seed=k)})
        k = self.settings["headline_k"]
        if self.has("rag"):
            out.append({"workload": "same documents", "contexts": k,
                        "tokens_per_context": self.settings["rag_tokens"], "texts": rag, "corpus": "rag",
                        "fits": self.fits(sum(self.rag.token_counts[:k])),
                        "draws": same_documents_draws(runs + 1, k, seed=101)})
        for contexts, tokens in self.grid_points() if self.has_grid_documents() else []:
            documents = self.grid[tokens]
            context_tokens = sum(documents.token_counts[:contexts])
            paper = self.settings["paper"] and (contexts, tokens) == tuple(self.settings["paper"])
            if apeserve_only or (self.fits(context_tokens) or not paper):
                out.append({"workload": "grid", "contexts": contexts, "tokens_per_context": tokens,
                            "texts": documents.texts, "corpus": f"grid-{tokens}", "paper": bool(paper),
                            "fits": self.fits(context_tokens),
                            "draws": same_documents_draws(runs + 1, contexts, seed=contexts * tokens)})
        return out

    def pieces_of(self, texts: list[str]):
        return lambda draw: self.builder.pieces([texts[i] for i in draw.documents],
                                                QUESTIONS[draw.question])

    # Measuring ----------------------------------------------------------------------

    def measure(self, system, work: dict[str, Any], mode: str, tier: str, pid: int | None,
                storage: str = "none") -> dict[str, Any]:
        """One row: the warm-up request (not for cold rows), then the timed ones."""
        draws = work["draws"]
        runs = self.settings["runs"]
        new_tokens = self.settings["new_tokens"]
        if tier == "cold" or mode == "parallel":
            # To the first token only. After it, a cold request decodes from the same
            # cache as a warm one, and PARALLEL as APE (the same keys, merged otherwise):
            # the warm APE row of the same point gives that decode. 128 tokens on each
            # of these rows would add two hours to the full run on two cores.
            new_tokens = 1
        if tier != "cold":
            time_one(system, draws[0], new_tokens)
        reset_peak_rss(pid)
        timed = [time_one(system, draw, new_tokens) for draw in draws[1:runs + 1]]
        server = {}
        for key in ("kv_load_ms", "prefill_ms", "ttft_ms", "queue_ms", "prompt_ms",
                    "prompt_evaluated", "prompt_cached", "context_tokens", "query_tokens"):
            values = [t.server[key] for t in timed if t.server.get(key) is not None]
            if values:
                server[key] = statistics.median(values)
        context_tokens = server.get("context_tokens") or statistics.median(
            sum(len(self.builder.context(work["texts"][i])) for i in draw.documents)
            for draw in draws[1:runs + 1])
        row = {"system": system.name.split(" ")[0], "setting": getattr(system, "setting", None),
               "mode": mode, "workload": work["workload"],
               "contexts": work["contexts"], "tokens_per_context": work["tokens_per_context"],
               "context_tokens": context_tokens, "tier": tier, "storage": storage,
               "new_tokens": new_tokens, "runs": len(timed),
               "ttft_ms": summary([t.ttft_ms for t in timed]),
               "e2e_ms": summary([t.e2e_ms for t in timed]),
               "decode_tok_s": summary([t.decode_tok_s for t in timed]),
               "server": server, "peak_rss_mb": peak_rss_mb(pid) if pid else None}
        if timed[0].server.get("kv_tokens_by_tier"):
            row["kv_tokens_by_tier"] = timed[-1].server["kv_tokens_by_tier"]
        if isinstance(system, ColdSystem):
            row["page_cache_dropped"] = bool(system.dropped) and all(system.dropped)
        self.rows.append(row)
        log(f"{with_setting(system.name, row['setting']):<22} {tier:<6} {work['workload']:<14} {work['contexts']:>3} x "
            f"{work['tokens_per_context']:<4}: TTFT {row['ttft_ms']['median']:9.1f} ms, "
            f"e2e {row['e2e_ms']['median']:9.1f} ms, decode {cell(row['decode_tok_s']['median'], 6)} tok/s")
        return row

    def run_concurrent(self, name: str, system_for_client, draws_for_client, clients: int,
                       producer_store=None, setting: str | None = None) -> dict[str, Any]:
        settings = self.settings
        if producer_store is None:
            row = concurrent(system_for_client, draws_for_client, clients, settings["live_seconds"],
                             settings["concurrent_tokens"], settings["stagger_s"], self.error_types)
            ingest = None
        else:
            with Producer(producer_store, settings["ingest_per_s"]) as producer:
                row = concurrent(system_for_client, draws_for_client, clients, settings["live_seconds"],
                                 settings["concurrent_tokens"], settings["stagger_s"], self.error_types)
            ingest = producer.report()
        row.update(system=name, setting=setting, k=settings["headline_k"], ingest=ingest)
        log(f"{label(row):<22} {clients:>2} clients{' + ingest' if ingest else ''}: "
            f"{row['tokens_per_s']:.1f} tok/s, TTFT p50 {cell(row['ttft_ms']['median'], 0)} ms, "
            f"ITL p50 {cell(row['itl_ms']['median'], 0)} ms, errors {row['errors']}")
        return row


def require_disk(bench: Bench) -> None:
    """Refuses to start when the scratch disk cannot hold the stores this part writes (a
    float32 entry per stored document, and a second store in int8 for the cold part), so
    that a full run fails in its first second, not hours in. A quarter and 1 GiB spare
    cover the write-ahead log and compaction."""
    stored = sum(bench.rag.token_counts) + sum(bench.fresh.token_counts) if bench.has("rag") else 0
    grid = sum(sum(d.token_counts) for d in bench.grid.values())
    if bench.has_grid_documents():
        stored += grid
    needed = stored * bench.kv_bytes_per_token * 1.25 + 2**30
    if bench.has("cold") and not bench.args.no_cold:
        needed += grid * bench.kv_bytes_per_token / 4 * 1.25
    free = shutil.disk_usage(bench.args.scratch).free
    if free < needed:
        raise SystemExit(f"{bench.args.scratch}: {free / 2**30:.1f} GiB free, this part's stores need "
                         f"about {needed / 2**30:.1f} GiB (set APESERVE_BENCH_DIR to a larger disk)")
    log(f"scratch disk: {free / 2**30:.1f} GiB free, the stores need about {needed / 2**30:.1f} GiB")


def run_apeserve(bench: Bench) -> dict[str, Any]:
    """apeserve: warm rows, concurrency and live traffic; then cold rows (float32 and int8
    storage). Returns what the server says of itself."""
    args, settings = bench.args, bench.settings
    grpc, ape, pb, stubs = client_modules(args.scratch / "lib")
    all_texts = sum((len(d.texts) for d in bench.grid.values()), 0) + len(bench.rag.texts) + len(bench.fresh.texts)
    largest = max(c * t for c, t in bench.grid_points())
    all_tokens = sum(sum(d.token_counts) for d in bench.grid.values()) + sum(bench.rag.token_counts) \
        + sum(bench.fresh.token_counts)
    require_disk(bench)
    host_mib = all_tokens * bench.kv_bytes_per_token // 2**20 + 512
    running_mib = (largest + 8192) * bench.kv_bytes_per_token * 2 // 2**20 + 512
    flags = (f"--host_cache_mib={host_mib}", f"--max_running_kv_mib={running_mib}")
    log(f"apeserve: {all_texts} documents, host tier {host_mib} MiB")
    ids: dict[str, list[str]] = {}
    info: dict[str, Any] = {}

    def system(target: str, corpus: str, mode: str, label: str | None = None):
        return ApeserveSystem(grpc, pb, stubs, target, NAMESPACE, ids[corpus], mode, label)

    # Warm: every document in the host tier.
    server, target = start_server(args.binary, args.model, args.scratch / "server", flags)
    try:
        with ape.Client(target, namespace=NAMESPACE, timeout=3600) as client:
            server_info, model_info = client.server_info(), client.model_info()
            defaults = server_info.ape_defaults
            info = {"version": server_info.version, "device": server_info.device,
                    "model": server_info.model.path, "flags": list(flags),
                    "ape_defaults": {"temperature": defaults.temperature, "scale": defaults.scale,
                                     "form": "additive" if defaults.form == 2 else "multiplicative"},
                    "window": model_info.context_length,
                    "kv_bytes_per_token": model_info.kv_bytes_per_token}
            if bench.has("rag"):
                ids["rag"], info["ingest_rag"] = store_corpus(client, bench.rag.texts, "rag-")
                log(f"stored the RAG corpus: {info['ingest_rag']['tokens_per_s']:.0f} tok/s")
            for tokens, documents in bench.grid.items() if bench.has_grid_documents() else ():
                ids[f"grid-{tokens}"], rate = store_corpus(client, documents.texts, f"g{tokens}-")
                info[f"ingest_grid_{tokens}"] = rate
                log(f"stored the grid's {tokens}-token documents: {rate['tokens_per_s']:.0f} tok/s")
        if bench.has("rag"):
            warm = system(target, "rag", "ape")
            try:  # the RAG corpus into the host tier
                k = settings["headline_k"]
                for first in range(0, len(ids["rag"]), k):
                    time_one(warm, Draw(tuple(range(first, min(first + k, len(ids["rag"])))), 0), 1)
            finally:
                warm.close()
        for work in bench.warm(bench.workloads(apeserve_only=True)):
            modes = ["ape"]
            if work["workload"] == "grid" and not work.get("paper"):
                modes.append("parallel")
            if work["fits"]:
                modes.append("sequential")
            for mode in modes:
                ape_system = system(target, work["corpus"], mode)
                try:
                    bench.measure(ape_system, work, mode, "none" if mode == "sequential" else "warm",
                                  server.pid)
                finally:
                    ape_system.close()
        if bench.has("rag"):
            run_apeserve_traffic(bench, system, target, ape)
    finally:
        stop_server(server)

    # Cold: KV from the store. float32 on the data just used; int8 on a store of its own.
    if args.no_cold or not bench.has("cold"):
        return info
    int8_flags = (*flags, f"--kv_storage={INT8}")
    server, target = start_server(args.binary, args.model, args.scratch / "int8", int8_flags)
    try:
        with ape.Client(target, namespace=NAMESPACE, timeout=3600) as client:
            for tokens, documents in bench.grid.items():  # the same ids as on the first store
                store_corpus(client, documents.texts, f"g{tokens}-")
    finally:
        stop_server(server)
    cold_flags = (flags[1], "--host_cache_mib=0")
    for storage, scratch in (("none", "server"), (INT8, "int8")):
        server, target = start_server(args.binary, args.model, args.scratch / scratch,
                                      (*cold_flags, f"--kv_storage={storage}"))
        try:
            first = system(target, f"grid-{bench.settings['grid_tokens'][0]}", "ape")
            try:  # the restarted server encodes the shared prefix on first use: not KV's cost
                time_one(first, Draw((0,), 0), 1)
            finally:
                first.close()
            for work in bench.workloads(apeserve_only=True):
                if work["workload"] != "grid":
                    continue
                modes = ["ape"] if work.get("paper") or storage == INT8 else ["ape", "parallel"]
                for mode in modes:
                    cold = ColdSystem(system(target, work["corpus"], mode))
                    try:
                        bench.measure(cold, work, mode, "cold", server.pid, storage=storage)
                    finally:
                        cold.system.close()
        finally:
            stop_server(server)
    return info


def run_apeserve_traffic(bench: Bench, system, target: str, ape) -> None:
    """apeserve's concurrent row, then its live rows with a producer storing documents."""
    settings = bench.settings
    k = settings["headline_k"]
    clients = settings["concurrent_clients"]
    systems = [system(target, "rag", "ape") for _ in range(max(clients, *settings["live_clients"]))]
    try:
        draws = lambda i: rag_draws(64, len(bench.rag.texts), k, seed=500 + i)  # noqa: E731
        row = bench.run_concurrent("apeserve", lambda i: systems[i], draws, clients)
        bench.concurrent_rows.append(row)
        with ape.Client(target, namespace=NAMESPACE, timeout=3600) as producer_client:
            store_one = document_storer(producer_client, bench.fresh.texts)
            for c in settings["live_clients"]:
                bench.live_rows.append(bench.run_concurrent("apeserve", lambda i: systems[i],
                                                            draws, c, store_one))
    finally:
        for s in systems:
            s.close()


def run_llama_server(bench: Bench) -> None:
    """llama.cpp's server: one slot for the rows, as many as clients for the rest; every
    row with each flash-attention setting asked for (both by default: which is faster
    depends on the workload), each a row of its own."""
    from bench_llama_server import LlamaServer, LlamaServerSystem

    args, settings = bench.args, bench.settings
    binary = Path(args.llama_server)
    def make(server, texts):
        pieces = bench.pieces_of(texts)
        return LlamaServerSystem(server, lambda draw: pieces(draw).sequential())

    log_path = args.scratch / "llama-server.log"
    def start(slots: int, flash_attention: str) -> LlamaServer:
        return LlamaServer(binary, args.model, args.threads, bench.window, slots, log_path,
                           flash_attention)

    for flash_attention in args.llama_flash_attention:
        with start(1, flash_attention) as server:
            bench.peers["llama-server"] = {**server.settings(), "flash_attention": args.llama_flash_attention}
            for work in bench.warm(bench.workloads(apeserve_only=False)):
                if work["fits"]:
                    bench.measure(make(server, work["texts"]), work, "sequential", "prompt cache",
                                  server.pid())
    if not bench.has("rag"):
        return
    k = settings["headline_k"]
    draws = lambda i: rag_draws(64, len(bench.rag.texts), k, seed=500 + i)  # noqa: E731
    for flash_attention in args.llama_flash_attention:
        for clients, rows in ([(settings["concurrent_clients"], bench.concurrent_rows)]
                              + [(c, bench.live_rows) for c in settings["live_clients"]]):
            with start(clients, flash_attention) as server:
                systems = [make(server, bench.rag.texts) for _ in range(clients)]
                rows.append(bench.run_concurrent("llama-server", lambda i: systems[i], draws, clients,
                                                 setting=systems[0].setting))
                rows[-1]["slots"] = clients


def run_in_process_peers(bench: Bench, model, wanted: list[str]) -> None:
    """transformers and our Python APE, in this process."""
    peers_module = importlib.import_module("bench_peers")
    peers = []
    if "transformers" in wanted:
        peers.append(peers_module.TransformersPeer(model))
        bench.peers["transformers"] = {"dtype": "float32", "attention": "sdpa",
                                       "logits_to_keep": 1, "threads": bench.args.threads}
    if "ape-python" in wanted:
        defaults = bench.args.server_info["ape_defaults"]
        peers.append(peers_module.ApePythonPeer(model, defaults["temperature"], defaults["scale"],
                                                multiplicative=defaults["form"] == "multiplicative"))
        bench.peers["ape-python"] = {"what": "our reimplementation of APE in transformers, not the "
                                             "authors' code", "dtype": "float32", **defaults}
    for peer in peers:
        ape = peer.name == "ape-python"
        for work in bench.warm(bench.workloads(apeserve_only=False)):
            if work.get("paper") or (not ape and not work["fits"]):
                continue
            if ape:
                peer.forget_other_sizes(work["tokens_per_context"])
            system = peers_module.PeerSystem(peer, bench.pieces_of(work["texts"]))
            bench.measure(system, work, "ape" if ape else "sequential", "memory" if ape else "none",
                          os.getpid())


# The report ------------------------------------------------------------------------------


def prefill_flops(shape: dict[str, int], prefix: int, context_tokens: int, query: int) -> float:
    """Floating-point operations of an APE query's prefill: the projections and the MLP of
    each query token, the LM head of the last, and each token's attention over the prefix,
    every context token and the query tokens up to itself (scores and weighted values)."""
    hidden, heads, kv_heads, d = shape["hidden"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    per_token = 2 * shape["layers"] * hidden * (2 * heads * d + 2 * kv_heads * d
                                                + 3 * shape["intermediate"])
    keys = sum(prefix + context_tokens + t + 1 for t in range(query))
    attention = 4 * shape["layers"] * heads * d * keys
    return per_token * query + attention + 2 * hidden * shape["vocab"]


def add_floors(bench: Bench, machine_info: dict[str, Any]) -> None:
    """The strict floor of each APE row of apeserve: the larger of the query's prefill
    arithmetic at the matmul rate and the contexts' KV bytes at memcpy speed (warm) or at
    the disk's direct read rate (cold; int8 storage: a quarter of the bytes)."""
    gflop_s, memcpy, disk = (machine_info["matmul_gflop_s"], machine_info["memcpy_gb_s"],
                             machine_info.get("disk_read_gb_s"))
    for row in bench.rows:
        if (row["system"], row["mode"]) != ("apeserve", "ape"):
            continue
        query = round(row["server"].get("query_tokens") or bench.query_tokens)
        flops = prefill_flops(bench.shape, len(bench.builder.prefix), row["context_tokens"], query)
        compute_ms = flops / (gflop_s * 1e9) * 1000
        kv_bytes = row["context_tokens"] * bench.kv_bytes_per_token
        if row["storage"] == INT8:
            kv_bytes //= 4
        rate = memcpy if row["tier"] == "warm" else disk
        bytes_ms = kv_bytes / (rate * 1e9) * 1000 if rate else 0.0
        floor = max(compute_ms, bytes_ms)
        row["floor"] = {"compute_ms": compute_ms, "gflop": flops / 1e9, "kv_bytes": kv_bytes,
                        "kv_bytes_ms": bytes_ms, "bound": "compute" if compute_ms >= bytes_ms else "bytes",
                        "ms": floor, "ttft_over_floor": row["ttft_ms"]["median"] / floor}


def find(rows, system, workload, contexts, tier=None, mode=None, tokens=None, storage="none",
         setting=None):
    """The first row of `system` at this point; None (tier, mode, tokens, setting) matches any."""
    return next(iter(find_all(rows, system, workload, contexts, tier, mode, tokens, storage, setting)), None)


def find_all(rows, system, workload, contexts, tier=None, mode=None, tokens=None, storage="none",
             setting=None) -> list[dict[str, Any]]:
    return [row for row in rows
            if (row["system"], row["workload"], row["contexts"]) == (system, workload, contexts)
            and (tier is None or row["tier"] == tier) and (mode is None or row["mode"] == mode)
            and (tokens is None or row["tokens_per_context"] == tokens) and row["storage"] == storage
            and (setting is None or row.get("setting") == setting)]


def with_setting(name: str, setting: str | None) -> str:
    """A system's name with the peer's setting, where it was measured in more than one."""
    return name + (f" ({setting})" if setting else "")


def label(row: dict[str, Any]) -> str:
    return with_setting(row["system"], row.get("setting"))


def llama_title(setting: str | None) -> str:
    """llama-server's column or row title in the tables."""
    return "llama-server" + (f", {setting}" if setting else "")


def settings_of(rows: list[dict[str, Any]], system: str) -> list[str | None]:
    """The settings `system` was measured with (llama-server: "fa on", "fa off")."""
    return sorted({row.get("setting") for row in rows if row["system"] == system}, key=str)


def targets(bench: Bench) -> dict[str, Any]:
    """The issue's targets, each against llama-server's best setting for that figure (its
    fastest first token for the first-token targets, its fastest answer end to end for
    the end-to-end target), and which setting that was."""
    rows, k = bench.rows, bench.settings["headline_k"]
    out: dict[str, Any] = {}
    ape = find(rows, "apeserve", "rag", k, "warm", "ape")
    llama = find_all(rows, "llama-server", "rag", k)
    if ape and llama:
        fastest = min(llama, key=lambda row: row["ttft_ms"]["median"])
        soonest = min(llama, key=lambda row: row["e2e_ms"]["median"])
        quickest = max(llama, key=lambda row: row["decode_tok_s"]["median"])
        out["rag_ttft_vs_llama_server"] = fastest["ttft_ms"]["median"] / ape["ttft_ms"]["median"]
        out["rag_e2e_vs_llama_server"] = soonest["e2e_ms"]["median"] / ape["e2e_ms"]["median"]
        out["rag_decode_vs_llama_server"] = (ape["decode_tok_s"]["median"]
                                             / quickest["decode_tok_s"]["median"])
        out["llama_server_settings"] = {"rag_ttft": fastest.get("setting"),
                                        "rag_e2e": soonest.get("setting"),
                                        "rag_decode": quickest.get("setting")}
    ape = find(rows, "apeserve", "same documents", k, "warm", "ape")
    llama = find_all(rows, "llama-server", "same documents", k)
    if ape and llama:
        fastest = min(llama, key=lambda row: row["ttft_ms"]["median"])
        out["same_documents_ttft_vs_llama_server"] = fastest["ttft_ms"]["median"] / ape["ttft_ms"]["median"]
        out.setdefault("llama_server_settings", {})["same_documents_ttft"] = fastest.get("setting")
    warm = [r for r in rows if "floor" in r and r["tier"] == "warm"]
    small = [r["floor"]["ttft_over_floor"] for r in warm if r["context_tokens"] <= 16_384]
    large = [r["floor"]["ttft_over_floor"] for r in warm if r["context_tokens"] > 100_000]
    if small:
        out["floor_up_to_16k"] = max(small)
    if large:
        out["floor_at_131k"] = max(large)
    return out


# Which of llama-server's settings each target was judged against (targets()).
TARGET_SETTINGS = {"rag_ttft_vs_llama_server": "rag_ttft", "rag_e2e_vs_llama_server": "rag_e2e",
                   "same_documents_ttft_vs_llama_server": "same_documents_ttft"}


def target_lines(goals: dict[str, Any]) -> list[tuple[str, str, str]]:
    lines = []
    for name, (relation, goal, what) in TARGETS.items():
        value = goals.get(name)
        if value is None:
            continue
        met = value >= goal if relation == ">=" else value <= goal
        setting = goals.get("llama_server_settings", {}).get(TARGET_SETTINGS.get(name))
        against = f"; llama-server at its best here: {setting}" if setting else ""
        lines.append((what, f"{value:.2f} (target {relation} {goal:g}{against})", "met" if met else "not met"))
    return lines


def row_systems(rows: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None, str | None, str]]:
    """The systems of the RAG tables and plot, in order: (system, mode, tier, setting,
    label), llama-server once per setting it was measured with."""
    out = [("apeserve", "ape", "warm", None, "apeserve APE"),
           ("apeserve", "sequential", "none", None, "apeserve SEQUENTIAL")]
    out += [("llama-server", None, None, setting, llama_title(setting))
            for setting in settings_of(rows, "llama-server")]
    return out + [("transformers", None, None, None, "transformers"),
                  ("ape-python", None, None, None, "APE in Python (ours)")]


def print_report(bench: Bench, goals: dict[str, Any]) -> None:
    print(f"{'system':<22}{'mode':<11}{'tier':<13}{'workload':<15}{'K':>4}{'x':>6}{'ctx tok':>9}"
          f"{'TTFT':>9}{'p90':>9}{'e2e':>9}{'dec t/s':>8}{'KV load':>9}{'prefill':>9}{'/floor':>8}")
    for row in bench.rows:
        tier = row["tier"] + ("/int8" if row["storage"] == INT8 else "")
        print(f"{label(row):<22}{row['mode']:<11}{tier:<13}{row['workload']:<15}{row['contexts']:>4}"
              f"{row['tokens_per_context']:>6}{row['context_tokens']:>9}"
              f"{cell(row['ttft_ms']['median'], 9)}{cell(row['ttft_ms']['p90'], 9)}"
              f"{cell(row['e2e_ms']['median'], 9)}{cell(row['decode_tok_s']['median'], 8)}"
              f"{cell(row['server'].get('kv_load_ms'), 9)}{cell(row['server'].get('prefill_ms'), 9)}"
              f"{cell(row.get('floor', {}).get('ttft_over_floor'), 8, 2)}")
    for title, rows in (("concurrent", bench.concurrent_rows), ("live traffic", bench.live_rows)):
        if not rows:  # a part without them
            continue
        print(f"\n{title}: {'system':<22}{'clients':>8}{'tok/s':>8}{'TTFT p50':>10}{'p99':>9}"
              f"{'ITL p50':>9}{'p99':>8}{'ingest doc/s':>14}{'errors':>8}")
        for row in rows:
            ingest = row["ingest"]["documents_per_s"] if row.get("ingest") else None
            print(f"{'':<{len(title) + 2}}{label(row):<22}{row['clients']:>8}{row['tokens_per_s']:>8.1f}"
                  f"{cell(row['ttft_ms']['median'], 10, 0)}{cell(row['ttft_ms']['p99'], 9, 0)}"
                  f"{cell(row['itl_ms']['median'], 9)}{cell(row['itl_ms']['p99'], 8)}"
                  f"{cell(ingest, 14, 2)}{row['errors']:>8}")
    print()
    for what, value, verdict in target_lines(goals):
        print(f"{what}: {value}: {verdict.upper()}")


def markdown(bench: Bench, goals: dict[str, Any],
             machine_info: dict[str, Any] | list[tuple[str, dict[str, Any]]]) -> str:
    """The README's tables."""
    rows, k = bench.rows, bench.settings["headline_k"]
    lines = []
    if any(r["workload"] in ("rag", "same documents") for r in rows):
        lines += ["| workload | system | TTFT ms (p50 / p90) | first token + "
                  f"{bench.settings['new_tokens']} tokens, ms | decode tok/s |", "| --- | --- | --- | --- | --- |"]
    for workload in ("rag", "same documents"):
        for contexts in sorted({r["contexts"] for r in rows if r["workload"] == workload}):
            for system, mode, tier, setting, title in row_systems(rows):
                row = find(rows, system, workload, contexts, tier, mode, setting=setting)
                if row is None:
                    continue
                name = "RAG" if workload == "rag" else "same documents"
                lines.append(f"| {name}, K = {contexts} | {title} | {row['ttft_ms']['median']:,.0f} / "
                             f"{row['ttft_ms']['p90']:,.0f} | {row['e2e_ms']['median']:,.0f} | "
                             f"{row['decode_tok_s']['median']:.1f} |")
    for title, group in (("Concurrent clients on RAG, K = %d" % k, bench.concurrent_rows),
                         ("Live traffic on RAG, K = %d (apeserve ingesting meanwhile)" % k, bench.live_rows)):
        if not group:
            continue
        lines += ["", f"{title}:", "", "| system | clients | tokens/s | TTFT p50 / p99 ms | "
                  "inter-token p50 / p99 ms | documents ingested/s | requests (late) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in group:
            ingest = f"{row['ingest']['documents_per_s']:.2f}" if row.get("ingest") else "-"
            lines.append(f"| {label(row)} | {row['clients']} | {row['tokens_per_s']:.1f} | "
                         f"{cell(row['ttft_ms']['median'], 0, 0).strip()} / {cell(row['ttft_ms']['p99'], 0, 0).strip()} | "
                         f"{cell(row['itl_ms']['median'], 0).strip()} / {cell(row['itl_ms']['p99'], 0).strip()} | "
                         f"{ingest} | {row['requests']} ({row['late_requests']}) |")
    columns = [("apeserve", "ape", "warm", "none", None, "APE warm"),
               ("apeserve", "ape", "cold", "none", None, "APE cold"),
               ("apeserve", "ape", "cold", INT8, None, "APE cold int8"),
               ("apeserve", "parallel", "warm", "none", None, "PARALLEL warm"),
               ("apeserve", "sequential", "none", "none", None, "SEQUENTIAL")]
    columns += [("llama-server", None, None, "none", setting, llama_title(setting))
                for setting in settings_of(rows, "llama-server")]
    columns += [("transformers", None, None, "none", None, "transformers"),
                ("ape-python", None, None, "none", None, "APE in Python")]
    points = sorted({(r["contexts"], r["tokens_per_context"]) for r in rows if r["workload"] == "grid"},
                    key=lambda p: (p[0] * p[1], p[0]))
    if not points:
        return tables_end(lines, bench, goals, machine_info)
    # A part's report has only some of the columns (the cold part: its cold ones).
    columns = [c for c in columns if any(find(rows, c[0], "grid", contexts, c[2], c[1], per, c[3], c[4])
                                         for contexts, per in points)]
    warm_floors = any("floor" in r for r in rows if r["workload"] == "grid" and r["tier"] == "warm")
    floor_titles = ["APE warm floor", "APE / floor", "floor bound"] if warm_floors else []
    titles = [c[-1] for c in columns] + floor_titles
    lines += ["", "Grid (same documents, a new question each time), median TTFT in ms:", "",
              "| contexts x tokens | context tokens | " + " | ".join(titles) + " |",
              "| --- " * (len(titles) + 2) + "|"]
    for contexts, per in points:
        cells, tokens = [], "-"
        for system, mode, tier, storage, setting, _ in columns:
            row = find(rows, system, "grid", contexts, tier, mode, per, storage, setting)
            cells.append(f"{row['ttft_ms']['median']:,.0f}" if row else "-")
            tokens = f"{round(row['context_tokens']):,}" if row and tokens == "-" else tokens
        ape = find(rows, "apeserve", "grid", contexts, "warm", "ape", per)
        floor = ape["floor"] if ape and "floor" in ape else None
        if warm_floors:
            cells += ([f"{floor['ms']:,.0f}", f"{floor['ttft_over_floor']:.2f}x", floor["bound"]]
                      if floor else ["-"] * 3)
        lines.append(f"| {contexts} x {per} | {tokens} | " + " | ".join(cells) + " |")
    decoding = [c for c in columns if c[2] != "cold" and c[1] != "parallel"]
    if decoding:  # not in the cold part's report
        lines += ["", f"Grid, first token + {bench.settings['new_tokens']} tokens, median ms (decode "
                  "tokens/s); the cold and PARALLEL rows stop at the first token:", "",
                  "| contexts x tokens | " + " | ".join(c[-1] for c in decoding) + " |",
                  "| --- " * (len(decoding) + 1) + "|"]
    for contexts, per in points if decoding else []:
        cells = []
        for system, mode, tier, storage, setting, _ in decoding:
            row = find(rows, system, "grid", contexts, tier, mode, per, storage, setting)
            cells.append(f"{row['e2e_ms']['median']:,.0f} ({cell(row['decode_tok_s']['median'], 0).strip()})"
                         if row else "-")
        lines.append(f"| {contexts} x {per} | " + " | ".join(cells) + " |")
    lines += ["", "Where APE's time goes (server timings, medians, ms) beside the floor's parts:", "",
              "| contexts x tokens | tier | KV load | KV bytes at memcpy / disk speed | query prefill | "
              "prefill arithmetic at matmul rate | TTFT | TTFT / floor |", "| --- " * 8 + "|"]
    for contexts, per in points:
        for tier, storage in (("warm", "none"), ("cold", "none"), ("cold", INT8)):
            row = find(rows, "apeserve", "grid", contexts, tier, "ape", per, storage)
            if row is None or "floor" not in row:
                continue
            tier_name = tier + (" int8" if storage == INT8 else "")
            lines.append(f"| {contexts} x {per} | {tier_name} | {cell(row['server'].get('kv_load_ms'), 0).strip()} | "
                         f"{row['floor']['kv_bytes_ms']:,.1f} | {cell(row['server'].get('prefill_ms'), 0).strip()} | "
                         f"{row['floor']['compute_ms']:,.1f} | {row['ttft_ms']['median']:,.0f} | "
                         f"{row['floor']['ttft_over_floor']:.2f}x |")
    return tables_end(lines, bench, goals, machine_info)


def tables_end(lines: list[str], bench: Bench, goals: dict[str, Any],
               machine_info: dict[str, Any] | list[tuple[str, dict[str, Any]]]) -> str:
    """The markdown: its tables, then the targets, the machine and the peers' settings."""
    return "\n".join(lines + target_table(goals)) + "\n" + machine_line(machine_info) + peers_line(bench)


def target_table(goals: dict[str, Any]) -> list[str]:
    if not target_lines(goals):  # a part that measures none (cold)
        return []
    return ["", "| target | measured | |", "| --- | --- | --- |"] + [
        f"| {what} | {value} | {verdict} |" for what, value, verdict in target_lines(goals)]


def describe_machine(machine_info: dict[str, Any]) -> str:
    disk = machine_info.get("disk_read_gb_s")
    return (f"{machine_info['cpu']}, {machine_info['cores']} cores, "
            f"{machine_info['memory_gib']} GiB, memcpy {machine_info['memcpy_gb_s']:.1f} GB/s, float32 "
            f"matmul {machine_info['matmul_gflop_s']:.0f} GFLOP/s, disk read (O_DIRECT) "
            + (f"{disk:.2f} GB/s" if disk else "not measured"))


def machine_line(machine_info: dict[str, Any] | list[tuple[str, dict[str, Any]]]) -> str:
    """The machine of a report, or of each part of a merge: where the parts' machines
    differ (their CPU), figures compare only within a part."""
    if isinstance(machine_info, dict):
        return f"\nMachine: {describe_machine(machine_info)}.\n"
    cpus = {info["cpu"] for _, info in machine_info}
    if len(cpus) == 1:
        return f"\nMachine: {describe_machine(machine_info[0][1])}.\n"
    lines = ["", "Machines: the parts ran on different machines, so a ratio between columns "
             "of different parts (in the grid, apeserve's against the peers') compares machines "
             "as well as systems; within a part, every system ran on the same one.", ""]
    lines += [f"* {label}: {describe_machine(info)}." for label, info in machine_info]
    return "\n".join(lines) + "\n"


def peers_line(bench: Bench) -> str:
    """llama-server's flags as run, with each flash-attention setting it ran with."""
    llama = bench.peers.get("llama-server")
    if not llama:
        return ""
    flags = list(llama["flags"])
    if "-fa" in flags:
        flags[flags.index("-fa") + 1] = "|".join(llama["flash_attention"])
    return (f"\nllama-server: `{' '.join(flags)}`; every row with each flash-attention setting "
            "(`-fa`), the targets against its better one for each figure.\n")


def plot(path: str, bench: Bench) -> None:
    """One panel per workload: RAG, same documents, live traffic, the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bench.rows
    figure, axes = plt.subplots(2, 2, figsize=(14, 10))
    labels = row_systems(rows)
    for axis, workload, title in ((axes[0][0], "rag", "RAG: K random documents, a new question"),
                                  (axes[0][1], "same documents", "Same documents, a new question")):
        groups = sorted({r["contexts"] for r in rows if r["workload"] == workload})
        width = 0.8 / len(labels)
        for index, (system, mode, tier, setting, title) in enumerate(labels):
            xs, ttft, e2e = [], [], []
            for g, contexts in enumerate(groups):
                row = find(rows, system, workload, contexts, tier, mode, setting=setting)
                if row:
                    xs.append(g + index * width)
                    ttft.append(row["ttft_ms"]["median"])
                    e2e.append(row["e2e_ms"]["median"])
            if xs:
                bars = axis.bar(xs, e2e, width, alpha=0.35)
                axis.bar(xs, ttft, width, color=bars[0].get_facecolor()[:3], label=title)
        axis.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [f"K = {c}" for c in groups])
        axis.set_yscale("log")
        axis.set_ylabel("ms (solid: first token; light: + %d tokens)" % bench.settings["new_tokens"])
        axis.set_title(title)
        axis.grid(True, axis="y", which="both", alpha=0.3)
        axis.legend(fontsize=7)
    axis = axes[1][0]
    live_systems = sorted({label(r) for r in bench.live_rows}, key=lambda name: (name != "apeserve", name))
    markers = dict(zip(live_systems, "osD^v"))
    for system in live_systems:
        live = [r for r in bench.live_rows if label(r) == system]
        clients = [r["clients"] for r in live]
        axis.plot(clients, [r["ttft_ms"]["median"] for r in live], marker=markers[system],
                  label=f"{system} TTFT p50")
        axis.plot(clients, [r["ttft_ms"]["p99"] for r in live], marker=markers[system], linestyle="--",
                  label=f"{system} TTFT p99")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("concurrent clients (apeserve ingesting meanwhile)")
    axis.set_ylabel("time to first token (ms)")
    axis.set_title(f"Live traffic, RAG K = {bench.settings['headline_k']}")
    axis.grid(True, which="both", alpha=0.3)
    twin = axis.twinx()
    for system in live_systems:
        live = [r for r in bench.live_rows if label(r) == system]
        twin.plot([r["clients"] for r in live], [r["tokens_per_s"] for r in live], color="gray",
                  marker=markers[system], label=f"{system} tokens/s")
    twin.set_ylabel("generated tokens/s")
    axis.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower right")
    axis = axes[1][1]
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["workload"] != "grid":
            continue
        name = f"{label(row)} {row['mode']}" + (f" ({row['tier']}{' int8' if row['storage'] == INT8 else ''})"
                                                 if row["system"] == "apeserve" and row["mode"] != "sequential" else "")
        best = series.setdefault(name, {})
        best[row["context_tokens"]] = min(row["ttft_ms"]["median"], best.get(row["context_tokens"], float("inf")))
    for name, points in sorted(series.items()):
        xs = sorted(points)
        axis.plot(xs, [points[x] for x in xs], marker="o", markersize=3,
                  linestyle="--" if "cold" in name else "-", label=name)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("context tokens")
    axis.set_ylabel("time to first token (ms, median)")
    axis.set_title("Grid: contexts x tokens, warm and cold")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


class SavedRuns:
    """The reports of separate parts read back (--merge): what the tables, the plot and the
    targets read of a Bench, so that targets across parts (the floor up to 16K context
    tokens spans the RAG and grid rows) are judged on all of them."""

    def __init__(self, paths: list[str]) -> None:
        reports = []
        for path in paths:
            try:
                report = json.loads(Path(path).read_text())
            except (OSError, ValueError) as error:
                raise SystemExit(f"--merge: cannot read {path}: {error}") from error
            if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
                raise SystemExit(f"--merge: {path} is not a ttft_bench report (no rows)")
            reports.append(report)
        seen: dict[tuple[str, str], str] = {}
        for path, report in zip(paths, reports):  # a part's systems may run separately
            systems = {row["system"] for row in report["rows"] + report.get("concurrent", [])
                       + report.get("live", [])}
            for system in systems:
                key = (str(report.get("part")), system)
                if key in seen:
                    raise SystemExit(f"--merge: {system} in part {key[0]} twice ({seen[key]}, {path})")
                seen[key] = path
        first = reports[0]["settings"]
        for path, report in zip(paths, reports):
            if bool(report["settings"].get("quick")) != bool(first.get("quick")) or any(
                    report["settings"].get(key) != first.get(key)
                    for key in ("new_tokens", "headline_k", "runs")):
                raise SystemExit(f"--merge: {path} was run with other settings than {paths[0]}")
        self.settings, self.machine = first, reports[0]["machine"]
        # Each part's machine and what ran on it: parts may come from different machines.
        self.machines = []
        for path, report in zip(paths, reports):
            systems = sorted({row["system"] for row in report["rows"]})
            self.machines.append((f"{report.get('part')} part ({', '.join(systems)}; {Path(path).name})",
                                  report["machine"]))
        self.rows = [row for report in reports for row in report["rows"]]
        self.concurrent_rows = [row for report in reports for row in report.get("concurrent", [])]
        self.live_rows = [row for report in reports for row in report.get("live", [])]
        self.peers = {name: settings for report in reports
                      for name, settings in report.get("peers", {}).items()}


def check(bench: Bench, wanted: list[str], plot_path: str | None) -> list[str]:
    """What a --check run refuses: a system (llama-server: with a flash-attention setting
    asked for) without rows in a workload or without its concurrent and live rows, an
    empty row, a failed request in the concurrent or live rows, an empty plot."""
    problems = []
    expected = ["rag", "same documents"] if bench.has("rag") else []
    if bench.has("grid") or (bench.has("cold") and not bench.args.no_cold):
        expected.append("grid")
    for system in wanted:
        settings = ([f"fa {s}" for s in bench.args.llama_flash_attention] if system == "llama-server"
                    else [None])
        for setting in settings:
            name = system + (f" ({setting})" if setting else "")
            workloads = {r["workload"] for r in bench.rows
                         if r["system"] == system and r.get("setting") == setting}
            for workload in expected:
                if workload not in workloads:
                    problems.append(f"{name}: no {workload} row")
            served = {(r["system"], r.get("setting")) for r in bench.concurrent_rows + bench.live_rows}
            if system in ("apeserve", "llama-server") and bench.has("rag") \
                    and (system, setting) not in served:
                problems.append(f"{name}: no concurrent or live-traffic row")
    for row in bench.rows:
        if not row["ttft_ms"]["median"] or not row["e2e_ms"]["median"] or not row["runs"]:
            problems.append(f"{row['system']} {row['workload']} {row['contexts']}: empty row")
    for row in bench.concurrent_rows + bench.live_rows:
        if row["errors"] or not row["requests"]:
            problems.append(f"{row['system']} at {row['clients']} clients: {row['errors']} errors, "
                            f"{row['requests']} requests ({row['first_error']})")
        if row.get("ingest") and (row["ingest"]["errors"] or not row["ingest"]["documents"]):
            problems.append(f"ingestion during live traffic: {row['ingest']}")
    if "apeserve" in wanted and bench.has("cold") and not bench.args.no_cold:
        if not any(r["storage"] == INT8 for r in bench.rows):
            problems.append("no int8 cold row")
    if plot_path and not Path(plot_path).stat().st_size:
        problems.append("empty plot")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(REPOSITORY / "build/default/server/apeserve"))
    parser.add_argument("--model", default=None,
                        help="GGUF file of every system (default: the embedded model)")
    parser.add_argument("--llama_server", default=None,
                        help="llama-server binary (default: the one deploy/setup.sh --bench-peers builds)")
    parser.add_argument("--systems", default="apeserve,llama-server,transformers,ape-python",
                        help="a part's systems may run separately and be merged (--merge)")
    parser.add_argument("--llama_flash_attention", choices=("both", "on", "off"), default="both",
                        help="llama-server's -fa for every row: both (each row with each, the "
                             "targets against its better), on or off")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of the peers (the server prefills on every core)")
    parser.add_argument("--runs", type=int, default=None, help="timed requests per row")
    parser.add_argument("--part", choices=("all", "rag", "grid", "cold"), default="all",
                        help="rag: RAG, same documents, concurrent and live traffic; grid: the "
                             "grid warm, with the peers; cold: the grid from the store, float32 "
                             "and int8 (the full run, in three runs that each fit a working "
                             "session)")
    parser.add_argument("--merge", nargs="+", metavar="REPORT", default=None,
                        help="measure nothing: the tables, plot and targets of these parts' "
                             "JSON reports together")
    parser.add_argument("--no_cold", action="store_true", help="skip the cold (store) rows")
    parser.add_argument("--quick", action="store_true", help="CI: every workload and peer, small")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a row is missing, empty or failed (never on speed)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--plot", default=None, help="draw the plot here (PNG)")
    parser.add_argument("--markdown", default=None, help="write the README's tables here")
    args = parser.parse_args()
    args.llama_flash_attention = (FLASH_ATTENTION if args.llama_flash_attention == "both"
                                  else (args.llama_flash_attention,))
    if args.merge:
        if args.json or args.check or args.quick or args.runs or args.part != "all":
            parser.error("--merge measures nothing: it takes --plot and --markdown only")
        saved = SavedRuns(args.merge)
        goals = targets(saved)
        print_report(saved, goals)
        if args.plot:
            plot(args.plot, saved)
        if args.markdown:
            Path(args.markdown).write_text(markdown(saved, goals, saved.machines))
        return
    settings = dict(QUICK if args.quick else FULL)
    if args.runs:
        settings["runs"] = args.runs
    wanted = args.systems.split(",")
    if args.part == "cold":  # the peers have no store: nothing of theirs to time cold
        wanted = [system for system in wanted if system == "apeserve"]
    home = Path(os.environ.get("APESERVE_HOME", Path.home() / ".cache/apeserve"))
    args.model = args.model or str(home / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if args.llama_server is None:
        args.llama_server = str(default_binary())
    args.scratch = Path(tempfile.mkdtemp(prefix="apeserve-ttft-", dir=os.environ.get("APESERVE_BENCH_DIR")))
    report: dict[str, Any] = {"machine": machine(), "part": args.part,
                              "settings": {**settings, "quick": args.quick}}
    log("measuring memcpy, matmul and the data disk's direct read rate")
    report["machine"]["memcpy_gb_s"] = memcpy_gb_s()
    report["machine"]["matmul_gflop_s"] = matmul_gflop_s(args.threads)
    report["machine"]["disk_read_gb_s"] = disk_read_gb_s(args.scratch, 256 if args.quick else 2048)
    log(f"loading {args.model} into transformers (tokenizer, peers)")
    tokenizer, model = importlib.import_module("bench_peers").load_transformers(args.model, args.threads)
    bench = Bench(args, settings, tokenizer, model)
    # Without the server (--systems without apeserve): the published defaults.
    args.server_info = {"ape_defaults": {"temperature": 0.9, "scale": 0.9, "form": "multiplicative"}}
    try:
        if "apeserve" in wanted:
            import grpc

            bench.error_types += (grpc.RpcError,)
            args.server_info = run_apeserve(bench)
        if "llama-server" in wanted:
            run_llama_server(bench)
        run_in_process_peers(bench, model, wanted)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    add_floors(bench, report["machine"])
    goals = targets(bench)
    report.update(model={"path": args.model, "window": bench.window,
                         "kv_bytes_per_token": bench.kv_bytes_per_token,
                         "prefix_tokens": len(bench.builder.prefix), "query_tokens_max": bench.query_tokens},
                  server=args.server_info, peers=bench.peers, rows=bench.rows,
                  concurrent=bench.concurrent_rows, live=bench.live_rows, targets=goals)
    print_report(bench, goals)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(args.plot, bench)
    if args.markdown:
        Path(args.markdown).write_text(markdown(bench, goals, report["machine"]))
    if args.check:
        problems = check(bench, wanted, args.plot)
        if problems:
            log("check failed:\n  " + "\n  ".join(problems))
            sys.exit(1)


if __name__ == "__main__":
    main()
