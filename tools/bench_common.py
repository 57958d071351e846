"""What the benchmarks under tools/ share: the Python client from the checkout, a server
started on a free loopback port and stopped, contexts cut from real prose, the machine's
description and its memory bandwidth, percentiles and table cells."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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



def add_two_builds(parser) -> None:
    """The arguments tools/bench_compare.sh passes to the tool it runs (bench_compare.py,
    service_bench.py): the two servers and how the report names them."""
    parser.add_argument("--base", required=True, help="the base commit's apeserve binary")
    parser.add_argument("--head", required=True, help="the working tree's apeserve binary")
    parser.add_argument("--base_label", default="base")
    parser.add_argument("--head_label", default="working tree")

def start_server(binary: str, model: str | None, scratch: Path,
                 flags: tuple[str, ...] = (), env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """apeserve with `flags` on a free loopback port, its data and log under `scratch`
    (data kept: a server started again on the same `scratch` finds what was stored);
    `env` is added to this process's environment."""
    scratch.mkdir(parents=True, exist_ok=True)
    port_file = scratch / "port"
    port_file.unlink(missing_ok=True)
    command = [binary, f"--data_dir={scratch / 'data'}", "--listen=127.0.0.1:0",
               "--metrics_listen=", "--sync_writes=false", f"--port_file={port_file}", *flags]
    if model:
        command.append(f"--model={model}")
    server = subprocess.Popen(command, stderr=open(scratch / "server.log", "a"),
                              env={**os.environ, **env} if env else None)
    for _ in range(1200):
        if port_file.exists() and port_file.read_text().strip():
            return server, f"127.0.0.1:{port_file.read_text().strip()}"
        if server.poll() is not None:
            break
        time.sleep(0.1)
    server.kill()
    raise SystemExit(f"apeserve did not start; see {scratch / 'server.log'}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, then wait for the exit (killed after a minute)."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


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


def machine() -> dict[str, Any]:
    """CPU model, cores and memory of this machine."""
    cpu, memory = "unknown", 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1)}


def memcpy_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """The best of `repeats` copies of a `megabytes` array into another, in GB/s (10^9
    bytes read and written once each count once: what moving KV costs)."""
    import numpy as np

    source = np.ones(megabytes << 20, dtype=np.uint8)
    target = np.empty_like(source)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return source.nbytes / best / 1e9


def matmul_gflop_s(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` float32 products of two `size` x `size` matrices on `threads`
    threads, in GFLOP/s: the dense arithmetic this machine reaches through libtorch."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.matmul(a, b)  # first call: the library's set-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def disk_read_gb_s(folder: Path, megabytes: int = 1024, repeats: int = 3) -> float | None:
    """Sequential read bandwidth of the file system holding `folder`, in GB/s, past the
    page cache: a file of `megabytes` is written and synced, then read with O_DIRECT in
    8 MiB blocks, the best of `repeats`. None where O_DIRECT is refused (e.g. tmpfs)."""
    import mmap

    block = 8 << 20
    path = folder / "disk-read-probe"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(1 << 20) * 8
    try:
        with open(path, "wb") as out:
            for _ in range(megabytes // 8):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT wants
        best = math.inf
        for _ in range(repeats):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                return None
            try:
                start = time.perf_counter()
                while os.readv(fd, [buffer]) == block:
                    pass
                best = min(best, time.perf_counter() - start)
            finally:
                os.close(fd)
        return (megabytes << 20) / best / 1e9
    finally:
        path.unlink(missing_ok=True)


def proc_status_mib(pid: int, field: str) -> float | None:
    """A kB field of /proc/`pid`/status (VmRSS, VmHWM, ...) in MiB, None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory (VmHWM) of process `pid` in MiB, None when unreadable."""
    return proc_status_mib(pid, "VmHWM")


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of them at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def cell(value: float | None, width: int, digits: int = 1) -> str:
    """A right-aligned table cell, or '-' when nothing was measured."""
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
