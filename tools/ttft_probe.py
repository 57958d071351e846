#!/usr/bin/env python3
"""Time to first token through a running apeserve: stored contexts in APE mode against
SEQUENTIAL over the same contexts, measured in one run (issue 11's headline figure;
tools/ issue 13 grows this into the full benchmark).

Starts apeserve on a free loopback port with a fresh data directory (or attaches to
--server), stores N contexts of about T tokens cut from real prose (the GPL-3 text
that every Debian system ships), then streams the same question in each mode and
times the first chunk at the client. Prints a table and, with --json, writes the rows.

  tools/ttft_probe.py --binary build/default/server/apeserve --contexts 16 --tokens 448
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PROSE = Path("/usr/share/common-licenses/GPL-3")


def import_client(scratch: Path):
    """apeserve_client from the checkout, its stubs generated into ``scratch``."""
    try:
        import apeserve_client  # an installed package wins

        return apeserve_client
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(
        "_generate", REPOSITORY / "clients/python/apeserve_client/_generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    sys.path.insert(0, str(generate.build_from_checkout(REPOSITORY, scratch)))
    import apeserve_client

    return apeserve_client


def start_server(binary: str, model: str | None, scratch: Path,
                 flags: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """apeserve with `flags` on a free loopback port, its data and log under `scratch`."""
    scratch.mkdir(parents=True, exist_ok=True)
    port_file = scratch / "port"
    command = [binary, f"--data_dir={scratch / 'data'}", "--listen=127.0.0.1:0",
               "--metrics_listen=", "--sync_writes=false", f"--port_file={port_file}", *flags]
    if model:
        command.append(f"--model={model}")
    server = subprocess.Popen(command, stderr=open(scratch / "server.log", "w"))
    for _ in range(1200):
        if port_file.exists() and port_file.read_text().strip():
            return server, f"127.0.0.1:{port_file.read_text().strip()}"
        if server.poll() is not None:
            break
        time.sleep(0.1)
    server.kill()
    raise SystemExit(f"apeserve did not start; see {scratch / 'server.log'}")


def store_contexts(client, count: int, tokens: int) -> list[str]:
    """`count` contexts of `tokens` tokens each (within a few), consecutive pieces of prose."""
    words = PROSE.read_text().split()
    ids, at = [], 0
    for i in range(count):
        take = int(tokens * 0.7)
        for _ in range(6):  # adjust the word count until the token count is right
            piece = " ".join(words[(at + k) % len(words)] for k in range(take))
            context = client.create_context(piece, context_id=f"probe-{i}")
            if abs(context.token_count - tokens) <= 2:
                break
            take = max(1, round(take * tokens / context.token_count))
        ids.append(context.context_id)
        at += take
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(REPOSITORY / "build/default/server/apeserve"))
    parser.add_argument("--model", default=None, help="default: the server's (embedded) model")
    parser.add_argument("--server", default=None, help="attach to this host:port instead")
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=448)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="apeserve-ttft-"))
    ape = import_client(scratch / "lib")
    server = None
    target = args.server
    if target is None:
        server, target = start_server(args.binary, args.model, scratch)
    rows = []
    try:
        with ape.Client(target) as client:
            ids = store_contexts(client, args.contexts, args.tokens)
            question = "Summarise what these sections say about distributing copies."
            for mode in ("ape", "sequential"):
                client.generate(question, context_ids=ids, mode=mode, max_tokens=1)  # warm-up
                client_ms, server_ms, load_ms, prefill_ms = [], [], [], []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    with client.stream(question, context_ids=ids, mode=mode, max_tokens=1) as stream:
                        for _piece in stream:
                            pass
                        result = stream.result
                    client_ms.append((time.perf_counter() - start) * 1000)
                    server_ms.append(result.timings["time_to_first_token_ms"])
                    load_ms.append(result.timings.get("kv_load_ms", 0.0))
                    prefill_ms.append(result.timings.get("prefill_ms", 0.0))
                rows.append({
                    "mode": mode, "contexts": args.contexts,
                    "context_tokens": result.usage["context_tokens"],
                    "prompt_tokens": result.usage["prompt_tokens"],
                    "ttft_client_ms": statistics.median(client_ms),
                    "ttft_server_ms": statistics.median(server_ms),
                    "kv_load_ms": statistics.median(load_ms),
                    "prefill_ms": statistics.median(prefill_ms),
                    "tier": "host" if result.usage.get("context_tokens_host") else "store/recomputed",
                })
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(f"{'mode':<11}{'contexts':>9}{'ctx tokens':>11}{'prompt':>8}{'TTFT client ms':>16}"
          f"{'TTFT server ms':>16}{'KV load ms':>12}{'prefill ms':>12}")
    for row in rows:
        print(f"{row['mode']:<11}{row['contexts']:>9}{row['context_tokens']:>11}"
              f"{row['prompt_tokens']:>8}{row['ttft_client_ms']:>16.1f}{row['ttft_server_ms']:>16.1f}"
              f"{row['kv_load_ms']:>12.1f}{row['prefill_ms']:>12.1f}")
    ratio = rows[1]["ttft_client_ms"] / rows[0]["ttft_client_ms"]
    print(f"SEQUENTIAL / APE time to first token: {ratio:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sequential_over_ape": ratio}, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
