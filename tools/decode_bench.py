#!/usr/bin/env python3
"""Aggregate decode throughput and inter-token latency under concurrent streaming
clients, on a server that runs one request at a time and on one that batches, in one
run (issue 12's "before and after" of continuous batching).

For each configuration it starts its own apeserve (a free loopback port, a fresh data
directory; the first server is stopped before the second starts) or attaches to
--server, stores --contexts contexts of about --tokens tokens cut from real prose (the
GPL-3 text every Debian system ships), sends one warm-up request, then for each client
count C runs C threads, each with its own channel, that stream the same short question
over those contexts again and again (greedy, ignore_eos, --new_tokens tokens) for
--seconds after a common start. Configurations:

  one-at-a-time  --max_running_requests=1: requests run strictly in turn (the baseline)
  batched        --batched_flags (default --max_running_requests=16)

Per (configuration, C), all timed at the client:
  tokens/s   token ids that arrived inside the window / the window's length (requests
             in flight at the window's end are finished, but later tokens not counted)
  ITL        gaps between consecutive chunks carrying token ids in one stream (a chunk
             may carry several ids: one gap), the gap ending inside the window
  TTFT       from sending a request to its first token chunk (queueing included)
  requests   streams that ended normally; errors: failed calls (the first one's message)
Percentiles are nearest-rank: the smallest value with at least p% of values at or below.

The issue's targets, both read on the batched server: at 8 clients, >= 4x the aggregate
decode throughput of the one-at-a-time server at 8 clients (the summary also gives
batched@8 / batched@1), and p90 ITL at 8 clients <= 2x the p90 ITL of one client.
They are printed, never asserted.

  $APESERVE_HOME/venv/bin/python tools/decode_bench.py --json decode.json
  $APESERVE_HOME/venv/bin/python tools/decode_bench.py --quick --check   # CI, < 1 min
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (REPOSITORY, cell, import_client, machine, percentile,  # tools/
                          start_server, stop_server, store_contexts)

NAMESPACE = "decode-bench"
QUESTION = "Summarise what these sections say about distributing copies."
TARGET_CLIENTS = 8
CONFIG_FLAGS = {"one-at-a-time": ["--max_running_requests=1"]}
# (full run, --quick) values of the arguments --quick changes.
DEFAULTS = {"clients": ("1,4,8,16", "1,4"), "seconds": (30.0, 4.0), "new_tokens": (64, 8),
            "contexts": (4, 2), "tokens": (256, 64)}


@dataclass
class Tally:
    """What one client thread saw during one measurement."""

    tokens: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    first_error: str | None = None


def make_request(pb: Any, ids: list[str], mode: str, new_tokens: int) -> Any:
    """The GenerateRequest every client sends (the wrapper's stream() has no ignore_eos)."""
    return pb.GenerateRequest(
        namespace=NAMESPACE, context_ids=ids, query=QUESTION,
        mode=pb.EncodingMode.Value(f"ENCODING_MODE_{mode.upper()}"),
        sampling=pb.SamplingParameters(max_tokens=new_tokens, temperature=0.0, ignore_eos=True))


def stream_once(stub: Any, request: Any, timeout: float) -> tuple[float, list[tuple[float, int]]]:
    """One GenerateStream: its send time and (arrival time, token ids) of each token chunk.

    Raises grpc.RpcError when the call fails, RuntimeError when it ends without `end`.
    """
    sent = time.perf_counter()
    chunks, ended = [], False
    for message in stub.GenerateStream(request, timeout=timeout):
        if message.token_ids:
            chunks.append((time.perf_counter(), len(message.token_ids)))
        ended = ended or message.HasField("end")
    if not ended:
        raise RuntimeError("the stream ended without its last message")
    return sent, chunks


def run_client(grpc: Any, stubs: Any, target: str, request: Any, seconds: float,
               barrier: threading.Barrier, clock: dict[str, float]) -> Tally:
    """One client thread: its own channel, streaming requests back to back for the window."""
    tally = Tally()
    # A local subchannel pool: a TCP connection of its own, not one shared by all channels.
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            tally.errors, tally.first_error = 1, f"could not connect to {target}"
        barrier.wait()
        start = clock["start"]
        end = start + seconds
        stub = stubs.GenerationServiceStub(channel)
        connected = tally.errors == 0
        while connected and time.perf_counter() < end:
            try:
                sent, chunks = stream_once(stub, request, timeout=seconds + 300)
            except (grpc.RpcError, RuntimeError) as error:
                tally.errors += 1
                if tally.first_error is None:
                    tally.first_error = (f"{error.code().name}: {error.details()}"
                                         if isinstance(error, grpc.RpcError) else str(error))
                time.sleep(0.1)  # a failing server answers at once: do not spin
                continue
            tally.requests += 1
            inside = [(t, n) for t, n in chunks if t <= end]
            tally.tokens += sum(n for _, n in inside)
            if inside:
                tally.ttft_ms.append((inside[0][0] - sent) * 1000)
            tally.gaps_ms.extend((b[0] - a[0]) * 1000 for a, b in zip(inside, inside[1:]))
    finally:
        channel.close()
    return tally


def measure(grpc: Any, stubs: Any, target: str, request: Any, clients: int,
            seconds: float) -> dict[str, Any]:
    """C clients for `seconds` after a common start; the row of the table."""
    clock: dict[str, float] = {}
    barrier = threading.Barrier(clients, action=lambda: clock.update(start=time.perf_counter()),
                                timeout=120)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        tallies = list(pool.map(lambda _: run_client(grpc, stubs, target, request, seconds,
                                                     barrier, clock), range(clients)))
    gaps = [g for t in tallies for g in t.gaps_ms]
    ttfts = [g for t in tallies for g in t.ttft_ms]
    errors = [t.first_error for t in tallies if t.first_error]
    return {"clients": clients, "tokens_per_s": sum(t.tokens for t in tallies) / seconds,
            "itl_ms": {"p50": percentile(gaps, 50), "p90": percentile(gaps, 90)},
            "ttft_ms": {"p50": percentile(ttfts, 50), "p90": percentile(ttfts, 90)},
            "requests": sum(t.requests for t in tallies),
            "requests_per_s": sum(t.requests for t in tallies) / seconds,
            "errors": sum(t.errors for t in tallies), "first_error": errors[0] if errors else None}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's ratios and targets, from the rows at 1 and TARGET_CLIENTS clients."""
    at = {(row["config"], row["clients"]): row for row in rows}
    batched = "attached" if any(r["config"] == "attached" for r in rows) else "batched"
    one, many = at.get((batched, 1)), at.get((batched, TARGET_CLIENTS))
    base = at.get(("one-at-a-time", TARGET_CLIENTS))
    summary: dict[str, Any] = {}
    if many and base and base["tokens_per_s"]:
        summary["throughput_vs_one_at_a_time"] = many["tokens_per_s"] / base["tokens_per_s"]
        summary["throughput_target_met"] = summary["throughput_vs_one_at_a_time"] >= 4
    if many and one and one["tokens_per_s"]:
        summary["throughput_vs_one_client"] = many["tokens_per_s"] / one["tokens_per_s"]
    if many and one and one["itl_ms"]["p90"] and many["itl_ms"]["p90"] is not None:
        summary["p90_itl_vs_one_client"] = many["itl_ms"]["p90"] / one["itl_ms"]["p90"]
        summary["itl_target_met"] = summary["p90_itl_vs_one_client"] <= 2
    return summary


def report(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The table and the target lines, on stdout."""
    print(f"{'config':<15}{'clients':>8}{'tokens/s':>10}{'ITL p50 ms':>12}{'ITL p90 ms':>12}"
          f"{'TTFT p50 ms':>13}{'requests':>10}{'errors':>8}")
    for row in rows:
        print(f"{row['config']:<15}{row['clients']:>8}{row['tokens_per_s']:>10.1f}"
              f"{cell(row['itl_ms']['p50'], 12)}{cell(row['itl_ms']['p90'], 12)}"
              f"{cell(row['ttft_ms']['p50'], 13)}{row['requests']:>10}{row['errors']:>8}")
        if row["first_error"]:
            print(f"  first error: {row['first_error']}")
    c = TARGET_CLIENTS
    if "throughput_vs_one_at_a_time" in summary:
        print(f"throughput, batched@{c} / one-at-a-time@{c}: "
              f"{summary['throughput_vs_one_at_a_time']:.2f}x (target >= 4x: "
              f"{'MET' if summary['throughput_target_met'] else 'NOT MET'})")
    if "throughput_vs_one_client" in summary:
        print(f"throughput, batched@{c} / batched@1: {summary['throughput_vs_one_client']:.2f}x")
    if "p90_itl_vs_one_client" in summary:
        print(f"p90 ITL, batched@{c} / batched@1: {summary['p90_itl_vs_one_client']:.2f}x "
              f"(target <= 2x: {'MET' if summary['itl_target_met'] else 'NOT MET'})")
    if not summary:
        print(f"targets not evaluated: they need 1 and {c} clients measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(REPOSITORY / "build/default/server/apeserve"))
    parser.add_argument("--model", default=None, help="default: the server's (embedded) model")
    parser.add_argument("--server", default=None, help="attach to this host:port instead")
    parser.add_argument("--configs", default="one-at-a-time,batched")
    parser.add_argument("--batched_flags", default="--max_running_requests=16",
                        help="extra apeserve flags of the batched server, space-separated "
                        "(give it as --batched_flags='--a=1 --b=2')")
    parser.add_argument("--mode", default="ape", choices=["ape", "sequential", "parallel"])
    parser.add_argument("--clients", default=None, help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=None, help="window per measurement")
    parser.add_argument("--new_tokens", type=int, default=None, help="max_tokens per request")
    parser.add_argument("--contexts", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="tokens per context")
    parser.add_argument("--quick", action="store_true", help="CI: small and short")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on any error or a row with no tokens (never on speed)")
    parser.add_argument("--json", default=None, help="write machine, settings, rows here")
    args = parser.parse_args()
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    counts = [int(c) for c in args.clients.split(",")]
    configs = ["attached"] if args.server else args.configs.split(",")
    for config in configs:
        if config not in ("one-at-a-time", "batched", "attached"):
            parser.error(f"unknown configuration {config!r}")

    scratch = Path(tempfile.mkdtemp(prefix="apeserve-decode-"))
    ape = import_client(scratch / "lib")
    import grpc

    pb = importlib.import_module("apeserve_client.ape.v1.generation_pb2")
    stubs = importlib.import_module("apeserve_client.ape.v1.generation_pb2_grpc")
    rows: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}
    for config in configs:
        server, target = None, args.server
        if target is None:
            flags = CONFIG_FLAGS.get(config) or args.batched_flags.split()
            server, target = start_server(args.binary, args.model, scratch / config, tuple(flags))
        try:
            with ape.Client(target, namespace=NAMESPACE) as client:
                info = client.server_info()
                servers[config] = {"device": info.device, "version": info.version,
                                   "model": info.model.path}
                ids = store_contexts(client, args.contexts, args.tokens)
            request = make_request(pb, ids, args.mode, args.new_tokens)
            with grpc.insecure_channel(target) as channel:  # warm-up: the host tier holds them
                try:
                    stream_once(stubs.GenerationServiceStub(channel), request, timeout=600)
                except (grpc.RpcError, RuntimeError) as error:
                    raise SystemExit(f"{config}: the warm-up request failed: {error}") from None
            for clients in counts:
                row = {"config": config, **measure(grpc, stubs, target, request, clients,
                                                   args.seconds)}
                rows.append(row)
                print(f"{config} @ {clients}: {row['tokens_per_s']:.1f} tokens/s",
                      file=sys.stderr, flush=True)
        finally:
            if server is not None:
                stop_server(server)
    summary = summarise(rows)
    report(rows, summary)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine(), "servers": servers, "settings": vars(args), "rows": rows,
             "summary": summary}, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    if args.check and any(row["errors"] or not row["tokens_per_s"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
