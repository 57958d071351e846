"""llama.cpp's own HTTP server (`llama-server`) as a peer of the benchmarks, run as its
users run it: its defaults, plus what its documentation recommends for repeated
prompts.

  flash attention   on and off, every row measured with each (`FLASH_ATTENTION`), since
                    which is faster depends on the workload: on the 2-core development
                    machine, on prefilled 7,200 new tokens faster, and off was 6x faster
                    to the first token of a cached prompt and 3x faster to decode at
                    7,000 context tokens. Its default, auto, picks on for a CPU; a
                    single setting would have raced a handicapped peer somewhere.
  prompt cache      on (`cache_prompt`, the server's default): a request re-evaluates
                    only what follows the longest prefix a slot already holds; the
                    host-memory prompt cache (`--cache-ram`, default 8 GiB) keeps other
                    prompts' states to restore
  --cache-reuse 256 chunks of 256 tokens or more found again later in the prompt are
                    shifted into place instead of recomputed
  slots             as many as concurrent clients (`-np`), one unified KV buffer
                    (`-kvu`) of the model's window per slot: its continuous batching
  threads           the same count as apeserve's peers (`-t`, `-tb`)

It is built once per machine by `deploy/setup.sh --bench-peers` from the llama.cpp
tree that the pinned `llama-cpp-python` source package vendors (no other download),
into $APESERVE_HOME/llama.cpp. Requests go to `/completion` with the prompt as token
ids, the same ids the other systems get, streamed, greedy, end-of-sequence ignored.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from bench_workloads import Draw, Late

CACHE_REUSE = 256
# The `-fa` settings every llama-server row is measured with.
FLASH_ATTENTION = ("on", "off")


def default_binary() -> Path:
    home = Path(os.environ.get("APESERVE_HOME", Path.home() / ".cache/apeserve"))
    return home / "llama.cpp/bin/llama-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """A llama-server process on a free loopback port; a context manager."""

    def __init__(self, binary: Path, model: str, threads: int, window: int, slots: int,
                 log_path: Path, flash_attention: str = "on") -> None:
        if not binary.exists():
            raise SystemExit(f"llama-server: {binary} is missing; "
                             "deploy/setup.sh --bench-peers builds it")
        self.port = free_port()
        self.flags = ["-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                      "-t", str(threads), "-tb", str(threads), "-fa", flash_attention,
                      "-np", str(slots), "-kvu", "-c", str(window * slots),
                      "--cache-reuse", str(CACHE_REUSE), "--no-webui"]
        self.binary, self.log_path, self.slots = binary, log_path, slots
        self.flash_attention = flash_attention
        self.process: subprocess.Popen | None = None

    def settings(self) -> dict[str, Any]:
        return {"binary": str(self.binary), "flags": self.flags[2:4] + self.flags[6:],
                "request": {"cache_prompt": True, "temperature": 0.0, "ignore_eos": True,
                            "stream": True, "prompt": "token ids"}}

    def __enter__(self) -> LlamaServer:
        self.process = subprocess.Popen([str(self.binary), *self.flags],
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(self.log_path, "a"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise SystemExit(f"llama-server did not start; see {self.log_path}")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class LlamaServerSystem:
    """Streams the token ids of a draw's prompt (SEQUENTIAL: prefix, documents in the
    draw's order, query) to a LlamaServer; `prompt_of(draw)` gives them."""

    name = "llama-server"

    def __init__(self, server: LlamaServer, prompt_of) -> None:
        self.server, self.prompt_of = server, prompt_of
        # What tells this system's rows from the other settings' (the report's `setting`).
        self.setting = f"fa {server.flash_attention}"

    def stream(self, draw: Draw, new_tokens: int,
               timeout_s: float | None = None) -> Iterator[tuple[float, int, dict]]:
        body = json.dumps({"prompt": self.prompt_of(draw), "n_predict": new_tokens,
                           "temperature": 0.0, "ignore_eos": True, "cache_prompt": True,
                           "stream": True})
        # Closing the connection (on return, error or a closed iterator) makes the server
        # drop the request.
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                                timeout=timeout_s or 3600)
        try:
            connection.request("POST", "/completion", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"llama-server: HTTP {response.status}: {response.read()[:300]!r}")
            predicted, final = 0, None
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                now = time.perf_counter()
                count = event.get("tokens_predicted", predicted) - predicted
                predicted += count
                if count > 0:
                    yield now, count, {}
                if event.get("stop"):
                    final = event
                    break
        except TimeoutError:
            if timeout_s is None:
                raise
            raise Late() from None
        finally:
            connection.close()
        if final is None:
            raise RuntimeError("llama-server: the stream ended without its last event")
        timings = final.get("timings", {})
        yield time.perf_counter(), 0, {
            "prompt_ms": timings.get("prompt_ms"), "prompt_evaluated": timings.get("prompt_n"),
            "prompt_cached": timings.get("cache_n"),
            "decode_tok_s": timings.get("predicted_per_second")}

