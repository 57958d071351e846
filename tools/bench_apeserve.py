"""apeserve as a system of the benchmarks (bench_workloads.System): a corpus stored
through its API, and the workloads' requests streamed over gRPC."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from bench_common import import_client
from bench_workloads import QUESTIONS, Draw, Late


def client_modules(scratch: Path) -> tuple[Any, Any, Any, Any]:
    """grpc, the Python client, and the generation service's messages and stubs."""
    ape = import_client(scratch)
    import grpc

    pb = importlib.import_module("apeserve_client.ape.v1.generation_pb2")
    stubs = importlib.import_module("apeserve_client.ape.v1.generation_pb2_grpc")
    return grpc, ape, pb, stubs


def store_corpus(client, texts: list[str], prefix: str, batch: int = 16) -> tuple[list[str], dict[str, float]]:
    """Stores `texts` as contexts `prefix`0, `prefix`1, ... in batches of `batch`; returns
    their ids and the ingestion rate (tokens and documents per second, acknowledged
    durable by the server)."""
    ids: list[str] = []
    tokens = 0
    started = time.perf_counter()
    for first in range(0, len(texts), batch):
        specs = [{"text": text, "context_id": f"{prefix}{first + i}"}
                 for i, text in enumerate(texts[first:first + batch])]
        for progress in client.batch_create_contexts(specs):
            if progress.error is not None:
                raise SystemExit(f"storing {specs[progress.index]['context_id']}: {progress.error}")
            ids.append(progress.context.context_id)
            tokens += progress.context.token_count
    seconds = time.perf_counter() - started
    return ids, {"documents": len(texts), "tokens": tokens, "seconds": seconds,
                 "tokens_per_s": tokens / seconds, "documents_per_s": len(texts) / seconds}


def document_storer(client, texts: list[str], prefix: str = "live-") -> Callable[[int], int]:
    """A producer's store(i) (bench_workloads.Producer) through `client`: stores the next
    of `texts` (cycling) as context `prefix`1, `prefix`2, ... and returns its token count."""
    at = {"next": 0}

    def store_one(_: int) -> int:
        index = at["next"] % len(texts)
        at["next"] += 1
        context = client.create_context(texts[index], context_id=f"{prefix}{at['next']}")
        return context.token_count

    return store_one


class ApeserveSystem:
    """Streams a draw's request (its documents' context ids, its question) in `mode`."""

    def __init__(self, grpc, pb, stubs, target: str, namespace: str, context_ids: list[str],
                 mode: str = "ape", label: str | None = None) -> None:
        self.grpc, self.pb = grpc, pb
        self.namespace, self.context_ids, self.mode = namespace, context_ids, mode
        self.name = label or f"apeserve {mode}"
        # A connection of its own (not a subchannel shared by every channel of the process),
        # as separate clients would have.
        self.channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = stubs.GenerationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def request(self, draw: Draw, new_tokens: int) -> Any:
        pb = self.pb
        return pb.GenerateRequest(
            namespace=self.namespace, context_ids=[self.context_ids[i] for i in draw.documents],
            query=QUESTIONS[draw.question],
            mode=pb.EncodingMode.Value(f"ENCODING_MODE_{self.mode.upper()}"),
            sampling=pb.SamplingParameters(max_tokens=new_tokens, temperature=0.0, ignore_eos=True))

    def stream(self, draw: Draw, new_tokens: int,
               timeout_s: float | None = None) -> Iterator[tuple[float, int, dict]]:
        end = None
        call = self.stub.GenerateStream(self.request(draw, new_tokens), timeout=timeout_s or 3600)
        try:
            for message in call:
                if message.token_ids:
                    yield time.perf_counter(), len(message.token_ids), {}
                if message.HasField("end"):
                    end = message.end
        except self.grpc.RpcError as error:
            if timeout_s is not None and error.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Late() from None
            raise
        finally:
            call.cancel()  # a no-op once the call has ended
        if end is None:
            raise RuntimeError(f"{self.name}: the stream ended without its last message")
        timings, usage = end.timings, end.usage
        yield time.perf_counter(), 0, {
            "ttft_ms": timings.time_to_first_token_ms, "kv_load_ms": timings.kv_load_ms,
            "prefill_ms": timings.prefill_ms, "queue_ms": timings.queue_ms,
            "decode_tok_s": timings.decode_tokens_per_second,
            "context_tokens": usage.context_tokens, "query_tokens": usage.query_tokens,
            "prompt_tokens": usage.prompt_tokens,
            "kv_tokens_by_tier": {"host": usage.context_tokens_host,
                                  "store": usage.context_tokens_store,
                                  "recomputed": usage.context_tokens_recomputed}}
