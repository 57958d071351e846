"""The workloads of the benchmarks, the same requests for every system, and the ways they
are timed from a client's seat (issue 23).

  RAG            a corpus of D documents of real prose; each request names K of them,
                 drawn at random and in random order, and asks a new question. What a
                 retrieval-augmented service sees: a prompt cache rarely holds the
                 request's documents in that order.
  same documents the same K documents in the same order, a new question each time: a
                 prompt cache's best case.
  live traffic   C clients on the RAG workload, each starting a little after the one
                 before, while a producer stores new documents at a steady rate.

A draw is a list of document indices and a question index; every system is given the
same draws (seeded), so the same token ids. A system is anything with `stream(draw,
new_tokens)`: an iterator of (arrival time, tokens in the chunk) whose last value may
carry the server's own report (see `Timed`).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from bench_common import percentile

# Each request asks one of these (a "new question"); all are about the kind of prose the
# corpus is cut from (licences and the documentation of Python's standard library).
QUESTIONS = (
    "Using only the documents above, explain what they say about copies and the rights of "
    "the people who receive them.",
    "Which conditions do the documents above set before a work may be distributed?",
    "Summarise in two sentences what the documents above say about warranties.",
    "What do the documents above say about modified versions of a work?",
    "List three obligations that the documents above place on a distributor.",
    "According to the documents above, when does a licence terminate?",
    "What do the documents above say about patents?",
    "How do the documents above define the source code of a work?",
    "Which functions or classes do the documents above describe, and what do they return?",
    "What errors or exceptions do the documents above mention, and when are they raised?",
    "Explain the default values described in the documents above.",
    "What do the documents above say about compatibility with other versions?",
    "Name two things the documents above forbid, and why.",
    "What do the documents above say about notices that must be kept?",
    "Describe how the documents above treat object code and installation information.",
    "What do the documents above say about fees and charges?",
    "How do the documents above describe the relationship between a library and a program?",
    "What do the documents above say about third parties?",
    "Which terms do the documents above define, and how?",
    "What do the documents above say about file names, paths or directories?",
    "Give a short overview of the topics the documents above cover.",
    "What would a user need to do to comply with the documents above?",
    "What do the documents above say about liability and damages?",
    "How do the documents above treat translations of a work?",
    "What do the documents above say about threads, processes or concurrency?",
    "Which data structures do the documents above mention?",
    "What do the documents above say about encodings and text?",
    "What limits or restrictions do the documents above describe?",
    "What do the documents above say about time, dates or clocks?",
    "How do the documents above describe network connections or sockets?",
    "What do the documents above say about the author or the copyright holder?",
    "Quote one sentence from the documents above and explain it.",
)


@dataclass(frozen=True)
class Draw:
    """One request of a workload: which documents, in which order, and which question."""

    documents: tuple[int, ...]
    question: int


def rag_draws(count: int, corpus_size: int, k: int, seed: int) -> list[Draw]:
    """`count` requests of K documents drawn without replacement, in random order, each
    with the next question (cycling through QUESTIONS from a seeded start)."""
    rng = random.Random(seed)
    start = rng.randrange(len(QUESTIONS))
    return [Draw(tuple(rng.sample(range(corpus_size), k)), (start + i) % len(QUESTIONS))
            for i in range(count)]


def same_documents_draws(count: int, k: int, seed: int) -> list[Draw]:
    """`count` requests over documents 0..K-1 in that order, each a new question."""
    start = random.Random(seed).randrange(len(QUESTIONS))
    return [Draw(tuple(range(k)), (start + i) % len(QUESTIONS)) for i in range(count)]


@dataclass
class Timed:
    """One request timed at the client (milliseconds from sending), and what the server
    reported of it where it does (its own KV load, prefill and cached-token counts)."""

    ttft_ms: float
    e2e_ms: float
    tokens: int
    gaps_ms: list[float]
    server: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first per second after the first: the decode rate a user sees."""
        if self.tokens < 2 or self.e2e_ms <= self.ttft_ms:
            return None
        return (self.tokens - 1) / ((self.e2e_ms - self.ttft_ms) / 1000)


class Late(Exception):
    """A request still running when its deadline passed; it was cancelled."""


class System(Protocol):
    name: str

    def stream(self, draw: Draw, new_tokens: int,
               timeout_s: float | None = None) -> Iterator[tuple[float, int, dict]]:
        """Sends the request of `draw`; yields (arrival time, tokens in the chunk, the
        server's report or {}) for each chunk that carries tokens, and a last (time, 0,
        report) once the response has ended. Raises Late when `timeout_s` passes before
        a chunk; closing the iterator cancels the request."""


def time_one(system: System, draw: Draw, new_tokens: int, deadline: float | None = None) -> Timed:
    """One request of `draw` on `system`, timed from sending to the first token and to
    the last. A system's prepare(draw), where it has one, runs before the clock starts.
    With a `deadline` (perf_counter time), a request still running then is cancelled
    and Late raised."""
    prepare = getattr(system, "prepare", None)
    if prepare is not None:
        prepare(draw)
    sent = time.perf_counter()
    arrivals: list[float] = []
    tokens, report = 0, {}
    timeout_s = None if deadline is None else max(0.001, deadline - sent)
    chunks = system.stream(draw, new_tokens, timeout_s)
    try:
        for at, count, server in chunks:
            if deadline is not None and at > deadline:
                raise Late()
            if count:
                arrivals.append(at)
                tokens += count
            report = server or report
    finally:
        chunks.close()
    if not arrivals:
        raise RuntimeError(f"{system.name}: the response carried no token")
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
    return Timed((arrivals[0] - sent) * 1000, (arrivals[-1] - sent) * 1000, tokens, gaps, report)


def summary(values: list[float]) -> dict[str, float | None]:
    """Median, nearest-rank p90 and p99, and the count, of `values`."""
    ordered = sorted(v for v in values if v is not None)
    return {"median": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "n": len(ordered)}


@dataclass
class Tally:
    """What one client saw of the requests that finished inside the window."""

    ttft_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    late: int = 0  # still running when the window closed: cancelled, not counted
    errors: int = 0
    first_error: str | None = None


def concurrent(system_for_client: Callable[[int], System], draws_for_client: Callable[[int], list[Draw]],
               clients: int, seconds: float, new_tokens: int, stagger_s: float,
               error_types: tuple[type[BaseException], ...] = (RuntimeError,)) -> dict[str, Any]:
    """`clients` clients, client i starting i * `stagger_s` after the first, each sending
    its own draws back to back until the window (from the first client's start, `seconds`
    long) closes. Only requests that end inside the window count: their tokens, their
    time to first token and their gaps between chunks. A request still running when the
    window closes is cancelled and counted as late."""
    start = time.perf_counter() + 0.2
    end = start + seconds

    def client(index: int) -> Tally:
        tally = Tally()
        system = system_for_client(index)
        draws = draws_for_client(index)
        time.sleep(max(0.0, start + index * stagger_s - time.perf_counter()))
        at = 0
        while time.perf_counter() < end:
            draw = draws[at % len(draws)]
            at += 1
            try:
                timed = time_one(system, draw, new_tokens, deadline=end)
            except Late:
                tally.late += 1
                break
            except error_types as error:
                tally.errors += 1
                tally.first_error = tally.first_error or str(error)
                time.sleep(0.1)
                continue
            tally.requests += 1
            tally.tokens += timed.tokens
            tally.ttft_ms.append(timed.ttft_ms)
            tally.gaps_ms.extend(timed.gaps_ms)
        return tally

    with ThreadPoolExecutor(max_workers=clients) as pool:
        tallies = list(pool.map(client, range(clients)))
    ttft = [t for tally in tallies for t in tally.ttft_ms]
    gaps = [g for tally in tallies for g in tally.gaps_ms]
    errors = [t.first_error for t in tallies if t.first_error]
    return {"clients": clients, "seconds": seconds, "stagger_s": stagger_s,
            "tokens_per_s": sum(t.tokens for t in tallies) / seconds,
            "requests": sum(t.requests for t in tallies),
            "late_requests": sum(t.late for t in tallies),
            "ttft_ms": summary(ttft), "itl_ms": summary(gaps),
            "errors": sum(t.errors for t in tallies), "first_error": errors[0] if errors else None}


class Producer:
    """Stores new documents at a steady rate in a thread of its own while the clients run
    (live traffic); `store(i)` stores the i-th and returns its token count."""

    def __init__(self, store: Callable[[int], int], per_second: float) -> None:
        self.store, self.period = store, 1 / per_second
        self.stored_documents, self.stored_tokens, self.errors = 0, 0, 0
        self.first_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Producer:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.started

    def _run(self) -> None:
        index, due = 0, time.perf_counter()
        while not self._stop.is_set():
            try:
                self.stored_tokens += self.store(index)
                self.stored_documents += 1
            except Exception as error:  # reported with the row, never hidden
                self.errors += 1
                self.first_error = self.first_error or str(error)
            index += 1
            due += self.period
            self._stop.wait(max(0.0, due - time.perf_counter()))

    def report(self) -> dict[str, Any]:
        return {"documents": self.stored_documents, "tokens": self.stored_tokens,
                "documents_per_s": self.stored_documents / self.seconds,
                "tokens_per_s": self.stored_tokens / self.seconds,
                "errors": self.errors, "first_error": self.first_error}
