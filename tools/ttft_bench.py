#!/usr/bin/env python3
"""Time to first token with stored contexts: apeserve's APE against its own recompute
(SEQUENTIAL), against what users would run instead, and against the physical limit, in
one run (issue 13).

What it does, in order:
 1. Measures the machine: CPU, cores, memory, and memcpy bandwidth (the best of five
    copies of 512 MiB).
 2. Cuts documents from real prose (bench_corpus.py: Python's docstrings and Debian's
    licence texts) to each size of the grid, by the model's own tokenizer.
 3. Starts apeserve on a free loopback port with a fresh data directory and a host tier
    large enough for every document (or attaches to --server), stores the documents,
    and times each row of the grid, warm (KV from the host tier): APE and PARALLEL
    everywhere, SEQUENTIAL where the whole prompt fits the model's window.
 4. A concurrency sweep: 1, 4 and 16 streaming clients, APE, 16 x 448.
 5. Restarts the server on the same data with no host tier and times APE and PARALLEL
    again, cold: KV from the store, the OS page cache dropped before each request where
    this process may (root); the rows say whether it was.
 6. The peers, on the same token ids, model file and thread count (bench_peers.py):
    transformers and llama.cpp where the prompt fits, the authors' in-memory APE in
    Python everywhere below the paper-scale row.
 7. Writes the JSON report (--json), prints the table and the targets, draws the plot
    (--plot, matplotlib).

Grid: contexts in {1, 4, 16, 64} x tokens per context in {128, 448, 1024}, plus the
paper's scale, 128 x 1024 = 131,072 context tokens (APE only). The query is about 32
tokens; each request generates 64 tokens greedily (end of sequence ignored). Times are
taken at the client: time to first token (TTFT) from sending to the first token, end to
end (e2e) to the last; medians and nearest-rank p90 over --runs requests after one
warm-up. Where APE's time goes comes from the server's own timings: KV load, the
query's prefill, and a decode step (1000 / decode tokens per second).

The physical floor of an APE row: the bytes of its contexts' KV / the memcpy bandwidth,
plus the query's own prefill (the server's prefill time of that row: the forward pass of
the query's tokens, the contexts' KV already in place; putting it there counts as KV
load). A stricter compute floor puts the arithmetic of that prefill (the projections and
the query's attention over every context key) at the machine's float32 matmul rate,
measured in the same run, instead of the measured prefill.

  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --json ttft.json --plot docs/ttft_bench.png \
      --markdown ttft.md
  $APESERVE_HOME/venv/bin/python tools/ttft_bench.py --quick --check   # CI, ~2 min
"""

from __future__ import annotations

import argparse
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

from bench_common import (REPOSITORY, cell, import_client, machine, memcpy_gb_s,  # tools/
                          matmul_gflop_s, peak_rss_mb, percentile, start_server, stop_server)
from bench_corpus import PromptBuilder, cut_documents, prose_words

NAMESPACE = "ttft-bench"
QUESTION = ("Using only the documents above, explain in two or three sentences what they "
            "say about copies, conditions and the rights of the people who receive them.")
MODES = ("ape", "parallel", "sequential")
HEADLINE = (16, 448)
FULL = {"contexts": [1, 4, 16, 64], "tokens": [128, 448, 1024], "paper": (128, 1024),
        "runs": 5, "new_tokens": 64, "sweep": HEADLINE, "sweep_clients": [1, 4, 16],
        "sweep_seconds": 30.0}
QUICK = {"contexts": [1, 4], "tokens": [128], "paper": None, "runs": 2, "new_tokens": 8,
         "sweep": (4, 128), "sweep_clients": [1, 2], "sweep_seconds": 3.0}
# Targets of the issue, printed (never asserted).
TARGETS = {"ape_vs_sequential": 30.0, "ape_vs_transformers": 30.0, "ape_vs_llama_cpp": 10.0,
           "floor": 2.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(values) if values else None, "p90": percentile(values, 90)}


def drop_page_cache() -> bool:
    """Writes back and drops the OS page cache; False where this process may not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def reset_peak_rss(pid: int) -> None:
    """Restarts VmHWM of `pid` from its current RSS (Linux: clear_refs 5), where allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")
    except OSError:
        pass


class Apeserve:
    """The server under test: its documents, and rows timed through gRPC."""

    def __init__(self, grpc, pb, stubs, target: str, pid: int | None) -> None:
        self.grpc, self.pb, self.pid = grpc, pb, pid
        self.channel = grpc.insecure_channel(target)
        self.stub = stubs.GenerationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def request(self, ids: list[str], mode: str, new_tokens: int) -> Any:
        pb = self.pb
        return pb.GenerateRequest(
            namespace=NAMESPACE, context_ids=ids, query=QUESTION,
            mode=pb.EncodingMode.Value(f"ENCODING_MODE_{mode.upper()}"),
            sampling=pb.SamplingParameters(max_tokens=new_tokens, temperature=0.0,
                                           ignore_eos=True))

    def once(self, request: Any) -> tuple[float, float, Any]:
        """One streamed request: client TTFT and e2e in ms, and the server's StreamEnd."""
        sent = time.perf_counter()
        first, end = None, None
        for message in self.stub.GenerateStream(request, timeout=3600):
            if message.token_ids and first is None:
                first = time.perf_counter()
            if message.HasField("end"):
                end = message.end
        done = time.perf_counter()
        if first is None or end is None:
            raise RuntimeError("the stream ended without a token or without its end")
        return (first - sent) * 1000, (done - sent) * 1000, end

    def row(self, ids: list[str], mode: str, tier: str, runs: int, new_tokens: int,
            cold: bool) -> dict[str, Any]:
        request = self.request(ids, mode, new_tokens)
        if not cold:
            self.once(request)  # warm-up: the host tier holds the KV from here on
        if self.pid is not None:
            reset_peak_rss(self.pid)
        ttft, e2e, ends, dropped = [], [], [], []
        for _ in range(runs):
            if cold:
                dropped.append(drop_page_cache())
            t, e, end = self.once(request)
            ttft.append(t)
            e2e.append(e)
            ends.append(end)
        usage = ends[-1].usage
        rates = [end.timings.decode_tokens_per_second for end in ends
                 if end.timings.decode_tokens_per_second > 0]
        row = {
            "system": "apeserve", "mode": mode, "contexts": len(ids),
            "context_tokens": usage.context_tokens, "query_tokens": usage.query_tokens,
            "prompt_tokens": usage.prompt_tokens, "new_tokens": new_tokens, "tier": tier,
            "ttft_ms": summary(ttft), "e2e_ms": summary(e2e),
            "server_ttft_ms": statistics.median(end.timings.time_to_first_token_ms for end in ends),
            "kv_load_ms": statistics.median(end.timings.kv_load_ms for end in ends),
            "prefill_ms": statistics.median(end.timings.prefill_ms for end in ends),
            "decode_tok_s": statistics.median(rates) if rates else None,
            "decode_step_ms": 1000 / statistics.median(rates) if rates else None,
            "kv_tokens_by_tier": {"host": usage.context_tokens_host,
                                  "store": usage.context_tokens_store,
                                  "recomputed": usage.context_tokens_recomputed},
            "peak_rss_mb": peak_rss_mb(self.pid) if self.pid is not None else None,
        }
        if cold:
            row["page_cache_dropped"] = all(dropped)
        return row


def fits(prefix: int, contexts: int, tokens: int, query: int, new_tokens: int, window: int) -> bool:
    """Whether a SEQUENTIAL prompt and its answer fit the model's window."""
    return prefix + contexts * tokens + query + new_tokens <= window


def grid_points(settings: dict[str, Any]) -> list[tuple[int, int]]:
    points = [(c, t) for t in settings["tokens"] for c in settings["contexts"]]
    if settings["paper"]:
        points.append(tuple(settings["paper"]))
    return points


def store_documents(client, documents: dict[int, Any]) -> dict[int, list[str]]:
    """Stores every document set; returns the context ids of each size."""
    ids: dict[int, list[str]] = {}
    for tokens, docs in documents.items():
        specs = [{"text": text, "context_id": f"t{tokens}-{i}"} for i, text in enumerate(docs.texts)]
        ids[tokens] = []
        started = time.perf_counter()
        for start in range(0, len(specs), 16):
            for progress in client.batch_create_contexts(specs[start:start + 16]):
                if progress.error is not None:
                    raise SystemExit(f"storing {specs[start + progress.index]['context_id']}: "
                                     f"{progress.error}")
                ids[tokens].append(progress.context.context_id)
        stored = sum(docs.token_counts)
        log(f"stored {len(specs)} documents of {tokens} tokens ({stored} tokens, "
            f"{stored / (time.perf_counter() - started):.0f} tokens/s)")
    return ids


def run_apeserve(args, settings, documents, phase_rows, sweep_rows) -> dict[str, Any]:
    """Phases 3 to 5: warm rows, the sweep, cold rows. Returns what the server reported."""
    import grpc

    ape = import_client(args.scratch / "lib")
    pb = importlib.import_module("apeserve_client.ape.v1.generation_pb2")
    stubs = importlib.import_module("apeserve_client.ape.v1.generation_pb2_grpc")
    decode_bench = importlib.import_module("decode_bench")
    total_tokens = sum(sum(d.token_counts) for d in documents.values())
    largest = max(c * t for c, t in grid_points(settings))
    # Every document in the host tier, and the largest request's KV admitted.
    host_mib = total_tokens * args.kv_bytes_per_token // 2**20 + 256
    running_mib = (largest + 4096) * args.kv_bytes_per_token // 2**20 + 256
    flags = [f"--host_cache_mib={host_mib}", f"--max_running_kv_mib={running_mib}"]
    info: dict[str, Any] = {}
    for phase in ("warm", "cold"):
        if phase == "cold" and (args.server or args.no_cold):
            break
        server, target = None, args.server
        if target is None:
            phase_flags = flags if phase == "warm" else [*flags[1:], "--host_cache_mib=0"]
            server, target = start_server(args.binary, args.model, args.scratch / "server",
                                          tuple(phase_flags))
        bench = Apeserve(grpc, pb, stubs, target, server.pid if server else None)
        try:
            with ape.Client(target, namespace=NAMESPACE, timeout=3600) as client:
                if phase == "warm":
                    server_info, model_info = client.server_info(), client.model_info()
                    info = {"version": server_info.version, "device": server_info.device,
                            "model": server_info.model.path,
                            "ape_defaults": {
                                "temperature": server_info.ape_defaults.temperature,
                                "scale": server_info.ape_defaults.scale,
                                "form": "additive" if server_info.ape_defaults.form == 2
                                        else "multiplicative"},
                            "window": model_info.context_length,
                            "kv_bytes_per_token": model_info.kv_bytes_per_token}
                    ids = store_documents(client, documents)
                    args.context_ids = ids
            if phase == "cold":
                # The restarted server encodes the shared prefix on first use: not a cost
                # of cold KV, so one small request pays it before the rows.
                smallest = min(args.context_ids)
                bench.once(bench.request(args.context_ids[smallest][:1], "ape", 1))
            for contexts, tokens in grid_points(settings):
                chosen = args.context_ids[tokens][:contexts]
                paper = settings["paper"] and (contexts, tokens) == tuple(settings["paper"])
                for mode in MODES:
                    if paper and mode != "ape":
                        continue
                    if mode == "sequential" and (phase == "cold" or not fits(
                            args.prefix_tokens, contexts, tokens, args.query_tokens,
                            settings["new_tokens"], args.window)):
                        continue
                    runs = settings["runs"] if contexts * tokens < 4096 or mode != "sequential" else 3
                    tier = "none" if mode == "sequential" else phase
                    row = bench.row(chosen, mode, tier, runs, settings["new_tokens"],
                                    cold=phase == "cold")
                    row["tokens_per_context"] = tokens  # the grid's size (documents are cut to it)
                    phase_rows.append(row)
                    log(f"apeserve {mode:<10} {phase:<4} {contexts:>3} x {tokens:<4}: TTFT "
                        f"{row['ttft_ms']['median']:9.1f} ms, e2e {row['e2e_ms']['median']:9.1f} ms")
            if phase == "warm" and settings["sweep"]:
                contexts, tokens = settings["sweep"]
                request = bench.request(args.context_ids[tokens][:contexts], "ape", settings["new_tokens"])
                for clients in settings["sweep_clients"]:
                    row = decode_bench.measure(grpc, stubs, target, request, clients,
                                               settings["sweep_seconds"])
                    row.update(contexts=contexts, tokens=tokens, mode="ape")
                    sweep_rows.append(row)
                    log(f"sweep {clients:>2} clients: {row['requests_per_s']:.2f} requests/s, "
                        f"{row['tokens_per_s']:.1f} tokens/s, TTFT p50 {row['ttft_ms']['p50']}")
        finally:
            bench.close()
            if server is not None:
                stop_server(server)
    return info


def run_peers(args, settings, documents, builder, model, rows) -> None:
    """Phase 6: the peers on the same token ids."""
    peers_module = importlib.import_module("bench_peers")
    peers = []
    wanted = args.systems.split(",")
    if "transformers" in wanted:
        peers.append(peers_module.TransformersPeer(model))
    if "llama.cpp" in wanted:
        try:
            peers.append(peers_module.LlamaCppPeer(args.model, args.threads, args.window))
        except ImportError as error:
            raise SystemExit(f"llama.cpp: {error}; deploy/setup.sh installs llama-cpp-python") from None
    ape_python = None
    if "ape-python" in wanted:
        defaults = args.server_info["ape_defaults"]
        ape_python = peers_module.ApePythonPeer(model, defaults["temperature"], defaults["scale"],
                                                multiplicative=defaults["form"] == "multiplicative")
    for contexts, tokens in grid_points(settings):
        if settings["paper"] and (contexts, tokens) == tuple(settings["paper"]):
            continue  # the paper's scale: apeserve only
        if ape_python is not None:
            ape_python.forget_other_sizes(tokens)
        pieces = builder.pieces(documents[tokens].texts[:contexts], QUESTION)
        candidates = [p for p in peers if fits(args.prefix_tokens, contexts, tokens,
                                               args.query_tokens, settings["new_tokens"],
                                               args.window)]
        if ape_python is not None:
            candidates.append(ape_python)
        for peer in candidates:
            if peer is ape_python:
                ape_python.store(pieces)
            peer.measure(pieces, settings["new_tokens"])  # warm-up
            reset_peak_rss(os.getpid())
            ttft, e2e = [], []
            runs = settings["runs"] if contexts * tokens < 4096 else 3
            for _ in range(runs):
                t, e = peer.measure(pieces, settings["new_tokens"])
                ttft.append(t)
                e2e.append(e)
            row = {"system": peer.name, "mode": "ape" if peer is ape_python else "sequential",
                   "contexts": contexts, "tokens_per_context": tokens,
                   "context_tokens": sum(len(c) for c in pieces.contexts),
                   "query_tokens": len(pieces.query), "new_tokens": settings["new_tokens"],
                   "tier": "memory" if peer is ape_python else "none",
                   "ttft_ms": summary(ttft), "e2e_ms": summary(e2e), "kv_load_ms": None,
                   "prefill_ms": None, "decode_tok_s": None,
                   "peak_rss_mb": peak_rss_mb(os.getpid())}
            rows.append(row)
            log(f"{peer.name:<12} {row['mode']:<10} {contexts:>3} x {tokens:<4}: TTFT "
                f"{row['ttft_ms']['median']:9.1f} ms, e2e {row['e2e_ms']['median']:9.1f} ms")


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


def add_floors(rows: list[dict[str, Any]], bandwidth_gb_s: float, gflop_s: float,
               kv_bytes_per_token: int, shape: dict[str, int], prefix: int) -> None:
    """The physical floor of each APE row of apeserve and TTFT / floor: the contexts' KV
    read once at memcpy speed, plus the query's own prefill as the server timed it (the
    KV already in place), or (the compute floor) as its arithmetic at the matmul rate."""
    for row in rows:
        if (row["system"], row["mode"]) != ("apeserve", "ape"):
            continue
        kv_bytes = row["context_tokens"] * kv_bytes_per_token
        copy_ms = kv_bytes / (bandwidth_gb_s * 1e9) * 1000
        flops = prefill_flops(shape, prefix, row["context_tokens"], row["query_tokens"])
        floor = copy_ms + row["prefill_ms"]
        compute_floor = copy_ms + flops / (gflop_s * 1e9) * 1000
        row.update(kv_bytes=kv_bytes, kv_copy_floor_ms=copy_ms, query_prefill_ms=row["prefill_ms"],
                   query_prefill_gflop=flops / 1e9, floor_ms=floor,
                   ttft_over_floor=row["ttft_ms"]["median"] / floor,
                   compute_floor_ms=compute_floor,
                   ttft_over_compute_floor=row["ttft_ms"]["median"] / compute_floor)


def find(rows, system, mode, contexts, tokens, tier=None):
    """The row of `system` in `mode` at `contexts` x `tokens` (and `tier`), or None."""
    for row in rows:
        if (row["system"], row["mode"], row["contexts"], row["tokens_per_context"]) == \
                (system, mode, contexts, tokens) and (tier is None or row["tier"] == tier):
            return row
    return None


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's ratios at the headline point and the largest gap, printed and stored."""
    contexts, tokens = HEADLINE
    out: dict[str, Any] = {"headline": {"contexts": contexts, "tokens": tokens}}
    ape = find(rows, "apeserve", "ape", contexts, tokens, "warm")
    if ape is None:
        return out
    ape_ttft = ape["ttft_ms"]["median"]
    for name, (system, mode) in {"ape_vs_sequential": ("apeserve", "sequential"),
                                 "ape_vs_transformers": ("transformers", "sequential"),
                                 "ape_vs_llama_cpp": ("llama.cpp", "sequential"),
                                 "ape_vs_ape_python": ("ape-python", "ape")}.items():
        other = find(rows, system, mode, contexts, tokens)
        if other is not None:
            out[name] = other["ttft_ms"]["median"] / ape_ttft
    sequential = find(rows, "apeserve", "sequential", contexts, tokens)
    transformers = find(rows, "transformers", "sequential", contexts, tokens)
    if sequential and transformers:
        out["sequential_prefill_vs_transformers"] = (transformers["ttft_ms"]["median"]
                                                     / sequential["ttft_ms"]["median"])
    floors = [r["ttft_over_floor"] for r in rows if "ttft_over_floor" in r and r["tier"] == "warm"]
    if floors:
        out["warm_ape_ttft_over_floor_max"] = max(floors)
        out["ape_ttft_over_floor"] = ape.get("ttft_over_floor")
        out["ape_ttft_over_compute_floor"] = ape.get("ttft_over_compute_floor")
    return out


def print_report(rows, sweep_rows, goals) -> None:
    print(f"{'system':<13}{'mode':<11}{'tier':<7}{'ctx':>4}{'ctx tokens':>11}{'TTFT ms':>10}"
          f"{'p90':>9}{'e2e ms':>10}{'KV load':>9}{'prefill':>9}{'floor':>8}{'/floor':>7}"
          f"{'/compute':>9}"
          f"{'RSS MB':>8}")
    for row in sorted(rows, key=lambda r: (r["context_tokens"], r["system"], r["mode"], r["tier"])):
        print(f"{row['system']:<13}{row['mode']:<11}{row['tier']:<7}{row['contexts']:>4}"
              f"{row['context_tokens']:>11}{cell(row['ttft_ms']['median'], 10)}"
              f"{cell(row['ttft_ms']['p90'], 9)}{cell(row['e2e_ms']['median'], 10)}"
              f"{cell(row.get('kv_load_ms'), 9)}{cell(row.get('prefill_ms'), 9)}"
              f"{cell(row.get('floor_ms'), 8)}{cell(row.get('ttft_over_floor'), 7, 2)}"
              f"{cell(row.get('ttft_over_compute_floor'), 9, 2)}"
              f"{cell(row.get('peak_rss_mb'), 8, 0)}")
    if sweep_rows:
        print(f"\n{'clients':>8}{'requests/s':>12}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p90':>10}"
              f"{'errors':>8}")
        for row in sweep_rows:
            print(f"{row['clients']:>8}{row['requests_per_s']:>12.2f}{row['tokens_per_s']:>10.1f}"
                  f"{cell(row['ttft_ms']['p50'], 10)}{cell(row['ttft_ms']['p90'], 10)}"
                  f"{row['errors']:>8}")
    print()
    for name, goal in TARGETS.items():
        value = goals.get(name if name != "floor" else "warm_ape_ttft_over_floor_max")
        if value is None:
            continue
        met = value <= goal if name == "floor" else value >= goal
        relation = "<=" if name == "floor" else ">="
        print(f"{name}: {value:.2f} (target {relation} {goal}: {'MET' if met else 'NOT MET'})")
    if goals.get("ape_ttft_over_compute_floor") is not None:
        print(f"at the headline, TTFT / compute floor: {goals['ape_ttft_over_compute_floor']:.2f}"
              " (the prefill's arithmetic at the matmul rate; not a target)")
    for name in ("ape_vs_ape_python", "sequential_prefill_vs_transformers"):
        if name in goals:
            print(f"{name}: {goals[name]:.2f} (target > 1: {'MET' if goals[name] > 1 else 'NOT MET'})")


def markdown(rows, sweep_rows, machine_info) -> str:
    """The README's table: TTFT medians (ms) per grid point, one column per system and mode."""
    columns = [("apeserve", "ape", "warm"), ("apeserve", "ape", "cold"),
               ("apeserve", "parallel", "warm"), ("apeserve", "sequential", "none"),
               ("transformers", "sequential", "none"), ("llama.cpp", "sequential", "none"),
               ("ape-python", "ape", "memory")]
    names = ["APE warm", "APE cold", "PARALLEL warm", "SEQUENTIAL", "transformers",
             "llama.cpp", "APE in Python"]
    points = sorted({(r["contexts"], r["tokens_per_context"]) for r in rows},
                    key=lambda p: (p[0] * p[1], p[0]))
    lines = ["| contexts x tokens | context tokens | " + " | ".join(names)
             + " | APE floor | APE / floor | APE / compute floor |",
             "| --- " * (len(names) + 5) + "|"]
    for contexts, per in points:
        cells, tokens, ape = [], None, None
        for system, mode, tier in columns:
            row = find(rows, system, mode, contexts, per, tier)
            cells.append(f"{row['ttft_ms']['median']:,.0f}" if row else "-")
            if row:
                tokens = row["context_tokens"]
            if row and (system, tier) == ("apeserve", "warm") and mode == "ape":
                ape = row
        floor = f"{ape['floor_ms']:,.0f}" if ape else "-"
        ratio = f"{ape['ttft_over_floor']:.2f}x" if ape else "-"
        compute = f"{ape['ttft_over_compute_floor']:.2f}x" if ape else "-"
        lines.append(f"| {contexts} x {per} | {tokens:,} | " + " | ".join(cells)
                     + f" | {floor} | {ratio} | {compute} |")
    lines += ["", "Where APE's time goes (server timings, medians in ms; the floors' parts beside them):",
              "", "| contexts x tokens | tier | KV load | KV at memcpy speed | query prefill "
              "| prefill arithmetic at matmul rate | decode step | TTFT |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for contexts, per in points:
        for tier in ("warm", "cold"):
            row = find(rows, "apeserve", "ape", contexts, per, tier)
            if row is None or "floor_ms" not in row:
                continue
            arithmetic = row["compute_floor_ms"] - row["kv_copy_floor_ms"]
            lines.append(f"| {contexts} x {per} | {tier} | {row['kv_load_ms']:,.1f} | "
                         f"{row['kv_copy_floor_ms']:,.1f} | {row['prefill_ms']:,.1f} | "
                         f"{arithmetic:,.1f} | {cell(row.get('decode_step_ms'), 0).strip()} | "
                         f"{row['ttft_ms']['median']:,.0f} |")
    lines.append("")
    lines.append(f"Machine: {machine_info['cpu']}, {machine_info['cores']} cores, "
                 f"{machine_info['memory_gib']} GiB, memcpy {machine_info['memcpy_gb_s']:.1f} GB/s, "
                 f"float32 matmul {machine_info['matmul_gflop_s']:.0f} GFLOP/s.")
    if sweep_rows:
        lines += ["", "| clients | requests/s | generated tokens/s | TTFT p50 ms | TTFT p90 ms |",
                  "| --- | --- | --- | --- | --- |"]
        for row in sweep_rows:
            lines.append(f"| {row['clients']} | {row['requests_per_s']:.2f} | "
                         f"{row['tokens_per_s']:.1f} | {row['ttft_ms']['p50']:,.0f} | "
                         f"{row['ttft_ms']['p90']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(path: str, rows, sweep_rows) -> None:
    """TTFT against context tokens per system and mode; the concurrency sweep beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    lines: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in rows:
        tier = row["tier"] if row["system"] == "apeserve" and row["tier"] in ("warm", "cold") else ""
        key = (row["system"], row["mode"], tier)
        lines.setdefault(key, []).append((row["context_tokens"], row["ttft_ms"]["median"]))
    for (system, mode, tier), points in sorted(lines.items()):
        # Several rows share a token count (e.g. 4 x 128 and 1 x 512): their best.
        best: dict[int, float] = {}
        for tokens, ttft in points:
            best[tokens] = min(ttft, best.get(tokens, ttft))
        xs = sorted(best)
        label = f"{system} {mode}" + (f" ({tier})" if tier else "")
        left.plot(xs, [best[x] for x in xs], marker="o", markersize=3,
                  linestyle="--" if tier == "cold" else "-", label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("context tokens")
    left.set_ylabel("time to first token (ms, median)")
    left.set_title("Time to first token")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    if sweep_rows:
        clients = [r["clients"] for r in sweep_rows]
        right.plot(clients, [r["ttft_ms"]["p50"] for r in sweep_rows], marker="o", label="TTFT p50")
        right.plot(clients, [r["ttft_ms"]["p90"] for r in sweep_rows], marker="o", label="TTFT p90")
        right.set_xscale("log", base=2)
        right.set_xticks(clients, [str(c) for c in clients])
        right.set_xlabel("concurrent streaming clients")
        right.set_ylabel("time to first token (ms)")
        twin = right.twinx()
        twin.plot(clients, [r["tokens_per_s"] for r in sweep_rows], marker="s", color="gray",
                  label="generated tokens/s")
        twin.set_ylabel("generated tokens/s")
        right.set_title(f"apeserve APE, {sweep_rows[0]['contexts']} x {sweep_rows[0]['tokens']} tokens")
        right.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
        right.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(REPOSITORY / "build/default/server/apeserve"))
    parser.add_argument("--model", default=None,
                        help="GGUF file of the peers (default: the embedded model, as the server)")
    parser.add_argument("--server", default=None, help="attach to this host:port instead")
    parser.add_argument("--systems", default="apeserve,transformers,llama.cpp,ape-python")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of the peers (the server prefills on every core)")
    parser.add_argument("--runs", type=int, default=None, help="timed requests per row")
    parser.add_argument("--no_cold", action="store_true", help="skip the cold (store) rows")
    parser.add_argument("--quick", action="store_true", help="CI: a small grid, a minute or two")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a row is missing or empty (never on speed)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--plot", default=None, help="draw the plot here (PNG)")
    parser.add_argument("--markdown", default=None, help="write the README's tables here")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.runs:
        settings["runs"] = args.runs
    wanted = args.systems.split(",")
    args.scratch = Path(tempfile.mkdtemp(prefix="apeserve-ttft-"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    home = Path(os.environ.get("APESERVE_HOME", Path.home() / ".cache/apeserve"))
    args.model = args.model or str(home / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    report: dict[str, Any] = {"machine": machine(), "settings": dict(settings)}
    log("measuring memcpy bandwidth")
    report["machine"]["memcpy_gb_s"] = memcpy_gb_s()
    report["machine"]["matmul_gflop_s"] = matmul_gflop_s(args.threads)
    log(f"loading {args.model} into transformers (tokenizer, peers)")
    bench_peers = importlib.import_module("bench_peers")
    tokenizer, model = bench_peers.load_transformers(args.model, args.threads)
    builder = PromptBuilder(tokenizer)
    args.prefix_tokens = len(builder.prefix)
    args.query_tokens = len(builder.pieces([], QUESTION).query)
    args.window = model.config.max_position_embeddings
    words = prose_words()
    documents = {}
    for index, tokens in enumerate(settings["tokens"]):
        count = max(settings["contexts"])
        if settings["paper"] and settings["paper"][1] == tokens:
            count = max(count, settings["paper"][0])
        documents[tokens] = cut_documents(tokenizer, words, count, tokens, start=index * 7919)
    log(f"documents cut: {', '.join(f'{len(d.texts)} x {t}' for t, d in documents.items())}")

    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    args.kv_bytes_per_token = (2 * model.config.num_hidden_layers * model.config.num_key_value_heads
                               * (model.config.hidden_size // model.config.num_attention_heads) * 4)
    # Without the server (--systems without apeserve): the published defaults.
    args.server_info = {"ape_defaults": {"temperature": 0.9, "scale": 0.9, "form": "multiplicative"}}
    try:
        if "apeserve" in wanted:
            args.server_info = run_apeserve(args, settings, documents, rows, sweep_rows)
            args.kv_bytes_per_token = args.server_info["kv_bytes_per_token"]
        run_peers(args, settings, documents, builder, model, rows)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    config = model.config
    shape = {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
             "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
             "head_dim": config.hidden_size // config.num_attention_heads,
             "intermediate": config.intermediate_size, "vocab": config.vocab_size}
    add_floors(rows, report["machine"]["memcpy_gb_s"], report["machine"]["matmul_gflop_s"],
               args.kv_bytes_per_token, shape, args.prefix_tokens)
    goals = targets(rows)
    report.update(model={"path": args.model, "window": args.window,
                         "kv_bytes_per_token": args.kv_bytes_per_token,
                         "prefix_tokens": args.prefix_tokens, "query_tokens": args.query_tokens},
                  server=args.server_info, rows=rows, concurrency=sweep_rows, targets=goals)
    print_report(rows, sweep_rows, goals)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(args.plot, rows, sweep_rows)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, sweep_rows, report["machine"]))
    if args.check:
        problems = [r for r in rows if not r["ttft_ms"]["median"] or not r["e2e_ms"]["median"]]
        systems = {r["system"] for r in rows}
        missing = [s for s in wanted if s not in systems]
        failed_sweep = [r for r in sweep_rows if r["errors"] or not r["tokens_per_s"]]
        if problems or missing or failed_sweep or (args.plot and not Path(args.plot).stat().st_size):
            log(f"check failed: empty rows {len(problems)}, systems without rows {missing}, "
                f"sweep rows with errors {len(failed_sweep)}")
            sys.exit(1)


if __name__ == "__main__":
    main()
