#!/usr/bin/env python3
"""Soak: many concurrent clients on loopback for a long time, a mix of every kind of
call, then a check that the store is whole. A tool, not a timed test: it reports what
it saw and exits 1 when a check fails.

It starts apeserve itself (a free loopback port, a fresh data directory in a temporary
folder, --server_flags) or attaches to --target. --clients threads (default 64), each
with its own channel and its own namespace (soak-NN), run for --duration seconds
(default 600) a random mix (seeded by --seed):

  ingest     CreateContext, UploadContext (text in chunks), BatchCreateContexts (2 to 4
             contexts); some texts come from a small shared pool, so identical documents
             in several namespaces share one KV while they are stored and deleted
  generate   GenerateStream over 1 to 3 of its stored contexts (one in five with an
             inline context too) or, one in four, over 1 to 3 of the shared namespace's
             six, which every client reads; up to 8 new tokens, greedy or seeded
             sampling; one stream in ten is cancelled after its first piece
  score      Score of two continuations over 1 or 2 of its contexts
  delete     DeleteContext of one of its contexts (it must have existed)
  get, list  GetContext and ListContexts, checked against what the client believes:
             each client alone writes its namespace, so the two must agree exactly

Every call is counted by RPC and status code. RESOURCE_EXHAUSTED is intended (the
started server runs 16 and queues 44: --max_queued_requests=44) and reported
apart; the client backs off briefly and goes on. Any other failure, and any answer
that disagrees with what the client believes, is an error.

Resident memory: the server's VmRSS (/proc/PID/status) every --rss_interval seconds
(for --target, give --pid). Start is the sample at the end of --warmup, then peak, end
(when the load stops) and growth = end - start, with the least-squares slope after the
warm-up and the growth in the second half of that window (a leak grows there as much as
in the first half; memory an allocator keeps after a peak does not). The
started server's host KV tier is small (--host_cache_mib=64), so that a filling cache
does not pass for a leak. Growth in the second half beyond --max_second_half_growth of
the start fails the run (5%; not with --quick, whose window is too short to tell a
slow leak from the allocator settling): that is the leak test. Growth over the whole
window beyond --max_rss_growth_mib fails it too (512 MiB): a gross bound, since that
window also holds what the server's caches are meant to fill as the load goes on
(RocksDB's memtables, the host tier, and the engine's idle KV buffers, which it keeps
for 2 s after a request, up to 1 GiB; README: KV cache buffers).

Store check, after the load: every context a client believes exists (acknowledged, not
deleted) is listed with its token count and content hash, and nothing else is; every
one answers a Generate that names it (in groups of 24), its KV loaded, not recomputed;
a sample answers exactly as the same texts sent inline. A started server is then
stopped with SIGTERM (it must exit 0), started again on the same data directory, and
checked the same way.

  $APESERVE_HOME/venv/bin/python tools/soak.py --json soak.json          # 64 x 10 min
  $APESERVE_HOME/venv/bin/python tools/soak.py --quick                   # CI, ~2 min
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (PROSE, REPOSITORY, import_client, machine, percentile,  # tools/
                          proc_status_mib, start_server, stop_server)

RPCS = ("CreateContext", "UploadContext", "BatchCreateContexts", "GenerateStream", "Score",
        "DeleteContext", "GetContext", "ListContexts")
INTENDED = "RESOURCE_EXHAUSTED"
CANCELLED = "CANCELLED (by the client)"
SHARED_NAMESPACE = "soak-shared"
QUERIES = ("What does this say about copies?", "Summarise the conditions.",
           "Who may change the program?", "What is said about warranty?")
# (name, weight) of each kind of work; ingest is skipped while a client holds MAX_OWN.
MIX = (("create", 12), ("upload", 5), ("batch", 5), ("generate", 38), ("score", 14),
       ("delete", 11), ("get", 8), ("list", 7))
MAX_OWN = 8
SERVER_FLAGS = "--sync_writes=true --host_cache_mib=64 --max_queued_requests=44"
# (full run, --quick) values of the arguments --quick changes.
PROSE_WORDS = PROSE.read_text().split()
DEFAULTS = {"duration": (600.0, 60.0), "warmup": (60.0, 30.0), "max_rss_growth_mib": (512.0, 512.0),
            "max_second_half_growth": (0.05, None)}


@dataclass
class Tally:
    """Counts of one RPC, from every client."""

    codes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies_ms: list[float] = field(default_factory=list)

    def count(self, code: str, ms: float) -> None:
        self.codes[code] += 1
        if code == "OK":
            self.latencies_ms.append(ms)


class Ledger:
    """Everything the clients saw, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tallies = {rpc: Tally() for rpc in RPCS}
        self.errors: list[str] = []  # the first few, for the report
        self.error_count = 0
        self.cancelled = 0
        self.generated_tokens = 0

    def count(self, rpc: str, code: str, ms: float) -> None:
        with self.lock:
            self.tallies[rpc].count(code, ms)

    def error(self, message: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append(message)


@dataclass
class Believed:
    """A context a client believes stored: what the server acknowledged."""

    text: str
    token_count: int
    content_hash: str


class SoakClient:
    """One client thread: its own channel and namespace, random work until the deadline."""

    def __init__(self, ape, grpc, target: str, index: int, seed: int, ledger: Ledger,
                 shared: dict[str, Believed], pool: list[str]):
        self.ape, self.ledger, self.shared, self.pool = ape, ledger, shared, pool
        self.namespace = f"soak-{index:02d}"
        self.random = random.Random(seed * 1000 + index)
        # A subchannel of its own: a TCP connection per client, as separate processes have.
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])
        self.client = ape.Client(namespace=self.namespace, timeout=600, channel=self.channel)
        self.shared_client = ape.Client(namespace=SHARED_NAMESPACE, timeout=600,
                                        channel=self.channel)
        self.own: dict[str, Believed] = {}
        self.uncertain: set[str] = set()  # ids whose last write failed other than intended
        self.serial = 0

    def run(self, deadline: float) -> None:
        kinds, weights = zip(*MIX)
        try:
            while time.monotonic() < deadline:
                kind = self.random.choices(kinds, weights)[0]
                if kind in ("create", "upload", "batch") and len(self.own) >= MAX_OWN:
                    kind = "delete"
                if kind in ("delete", "get") and not self.own:
                    kind = "create"
                getattr(self, kind)()
        finally:
            self.channel.close()

    # One call, counted; False when it failed (an intended refusal backs off first).
    def call(self, rpc: str, function, *args, **kwargs):
        start = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except self.ape.ApeserveError as error:
            self.ledger.count(rpc, error.code, (time.perf_counter() - start) * 1000)
            if error.code == INTENDED:
                time.sleep(self.random.uniform(0.5, 2.0))
            else:
                self.ledger.error(f"{self.namespace} {rpc}: {error}")
            return False, error
        self.ledger.count(rpc, "OK", (time.perf_counter() - start) * 1000)
        return True, result

    def new_text(self) -> str:
        """A fresh document of 20 to 160 words; one in five from the shared pool."""
        if self.random.random() < 0.2:
            return self.random.choice(self.pool)
        words = self.random.randint(20, 160)
        start = self.random.randrange(len(PROSE_WORDS) - words)
        return f"{self.namespace} note {self.serial}. " + " ".join(PROSE_WORDS[start:start + words])

    def new_id(self) -> str:
        self.serial += 1
        return f"c{self.serial}"

    def acknowledge(self, context, text: str) -> None:
        self.own[context.context_id] = Believed(text, context.token_count, context.content_hash)
        self.uncertain.discard(context.context_id)

    def create(self) -> None:
        context_id, text = self.new_id(), self.new_text()
        ok, context = self.call("CreateContext", self.client.create_context, text,
                                context_id=context_id)
        if ok:
            self.acknowledge(context, text)
        elif context.code != INTENDED:
            self.uncertain.add(context_id)

    def upload(self) -> None:
        context_id, text = self.new_id(), self.new_text()
        ok, context = self.call("UploadContext", self.client.upload_context, text,
                                context_id=context_id, chunk_bytes=self.random.randint(32, 2048))
        if ok:
            self.acknowledge(context, text)
        elif context.code != INTENDED:
            self.uncertain.add(context_id)

    def batch(self) -> None:
        specs = [{"context_id": self.new_id(), "text": self.new_text()}
                 for _ in range(self.random.randint(2, 4))]
        texts = {spec["context_id"]: spec["text"] for spec in specs}
        ok, progress = self.call("BatchCreateContexts",
                                 lambda: list(self.client.batch_create_contexts(specs)))
        if not ok:
            if progress.code != INTENDED:
                self.uncertain.update(texts)
            return
        for item in progress:
            context_id = specs[item.index]["context_id"]
            if item.ok:
                self.acknowledge(item.context, texts[context_id])
            elif item.error.code == INTENDED:
                self.ledger.count("BatchCreateContexts", INTENDED, 0)
            else:
                self.uncertain.add(context_id)
                self.ledger.error(f"{self.namespace} BatchCreateContexts item: {item.error}")

    def pick(self, most: int) -> list[str]:
        return self.random.sample(sorted(self.own), min(len(self.own), self.random.randint(1, most)))

    def generate(self) -> None:
        """A stream over its own contexts (one time in five with an inline one too), or,
        one time in four, over the shared namespace's that every client reads."""
        client, ids, inline = self.client, self.pick(3), []
        if not ids or self.random.random() < 0.25:
            client = self.shared_client
            ids = self.random.sample(sorted(self.shared), self.random.randint(1, 3))
        elif self.random.random() < 0.2:
            inline = [self.random.choice(self.pool)]
        sampling = {"max_tokens": self.random.randint(1, 8), "temperature": 0.0}
        if self.random.random() < 0.5:
            sampling.update(temperature=0.8, seed=self.random.randrange(1 << 30))
        cancel = self.random.random() < 0.1
        start = time.perf_counter()
        stream = client.stream(self.random.choice(QUERIES), ids, inline_contexts=inline,
                               **sampling)
        try:
            with stream:
                for _ in stream:
                    if cancel:
                        break
        except self.ape.ApeserveError as error:
            self.ledger.count("GenerateStream", error.code, (time.perf_counter() - start) * 1000)
            if error.code == INTENDED:
                time.sleep(self.random.uniform(0.5, 2.0))
            else:
                self.ledger.error(f"{client.namespace} GenerateStream {ids}: {error}")
            return
        if cancel and stream.result is None:
            with self.ledger.lock:
                self.ledger.cancelled += 1
            self.ledger.count("GenerateStream", CANCELLED, (time.perf_counter() - start) * 1000)
            return
        self.ledger.count("GenerateStream", "OK", (time.perf_counter() - start) * 1000)
        if stream.result is None or not stream.result.token_ids:
            self.ledger.error(f"{client.namespace} GenerateStream {ids}: ended without tokens")
            return
        with self.ledger.lock:
            self.ledger.generated_tokens += len(stream.result.token_ids)

    def score(self) -> None:
        ids = self.pick(2)
        ok, scores = self.call("Score", self.client.score, self.random.choice(QUERIES),
                               ["Yes, it does.", "No."], ids)
        if ok and len(scores) != 2:
            self.ledger.error(f"{self.namespace} Score: {len(scores)} scores for 2 continuations")

    def delete(self) -> None:
        context_id = self.random.choice(sorted(self.own))
        ok, existed = self.call("DeleteContext", self.client.delete_context, context_id)
        if ok:
            del self.own[context_id]
            if not existed:
                self.ledger.error(f"{self.namespace} DeleteContext {context_id}: it did not exist")
        elif existed.code != INTENDED:
            self.uncertain.add(context_id)

    def get(self) -> None:
        context_id = self.random.choice(sorted(self.own))
        ok, context = self.call("GetContext", self.client.get_context, context_id)
        believed = self.own[context_id]
        if ok and (context.token_count, context.content_hash) != (believed.token_count,
                                                                  believed.content_hash):
            self.ledger.error(f"{self.namespace} GetContext {context_id}: tokens or hash differ")

    def list(self) -> None:
        ok, listed = self.call("ListContexts",
                               lambda: [c.context_id for c in self.client.list_contexts()])
        if ok and set(listed) - self.uncertain != set(self.own) - self.uncertain:
            self.ledger.error(f"{self.namespace} ListContexts: {sorted(listed)} but it "
                              f"believes {sorted(self.own)}")


class RssSampler(threading.Thread):
    """VmRSS of `pid` every `interval` seconds, as (seconds since start, MiB)."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.start_time = time.monotonic()

    def sample(self) -> None:
        rss = proc_status_mib(self.pid, "VmRSS")
        if rss is not None:
            self.samples.append((time.monotonic() - self.start_time, rss))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


def rss_summary(samples: list[tuple[float, float]], warmup: float) -> dict[str, Any]:
    """Start (the last sample of the warm-up), peak and end after it, growth, slope."""
    if not samples:
        return {}
    before = [s for s in samples if s[0] <= warmup]
    after = [s for s in samples if s[0] >= warmup]
    start = (before[-1] if before else samples[0])[1]
    end = samples[-1][1]
    summary = {"start_mib": start, "peak_mib": max(r for _, r in after or samples),
               "end_mib": end, "growth_mib": end - start, "samples": len(samples)}
    if after:
        # A leak grows with the requests served, as much in the second half as in the
        # first; an allocator filling up to the peak working set slows down instead.
        middle = min(after, key=lambda s: abs(s[0] - (after[0][0] + after[-1][0]) / 2))
        summary["second_half_growth_mib"] = end - middle[1]
    if len(after) >= 3:
        n = len(after)
        mean_t = sum(t for t, _ in after) / n
        mean_r = sum(r for _, r in after) / n
        var = sum((t - mean_t) ** 2 for t, _ in after)
        if var > 0:
            slope = sum((t - mean_t) * (r - mean_r) for t, r in after) / var
            summary["slope_mib_per_min"] = slope * 60
    return summary


def rss_failures(rss: dict[str, Any], max_growth_mib: float,
                 max_second_half_growth: float | None) -> list[str]:
    """What fails a run in an rss_summary: growth over the whole window past the gross
    bound, or growth in the second half past that fraction of the start (a leak)."""
    failures = []
    if rss and rss["growth_mib"] > max_growth_mib:
        failures.append(f"RSS grew {rss['growth_mib']:.1f} MiB (limit {max_growth_mib:.0f})")
    second_half = rss.get("second_half_growth_mib") if rss else None
    if max_second_half_growth is not None and second_half is not None \
            and second_half > max_second_half_growth * rss["start_mib"]:
        failures.append(f"RSS grew {second_half:.1f} MiB in the second half, over "
                        f"{max_second_half_growth:.0%} of the {rss['start_mib']:.0f} MiB start: a leak")
    return failures


def check_store(ape, target: str, clients: list[SoakClient], shared: dict[str, Believed],
                sample: int, rng: random.Random) -> dict[str, Any]:
    """Every believed context listed with its tokens and hash and nothing else; each
    answers a Generate naming it with its KV loaded; `sample` answer as inline texts."""
    problems: list[str] = []
    checked = generated = recomputed = compared = 0
    owners = [(c.namespace, c.own, c.uncertain) for c in clients]
    owners.append((SHARED_NAMESPACE, shared, set()))
    for namespace, own, uncertain in owners:
        with ape.Client(target, namespace=namespace, timeout=600) as client:
            listed = {c.context_id: c for c in client.list_contexts(page_size=1000)}
            for context_id, believed in own.items():
                context = listed.get(context_id)
                if context is None:
                    problems.append(f"{namespace}/{context_id}: acknowledged, not listed")
                elif (context.token_count, context.content_hash) != (believed.token_count,
                                                                     believed.content_hash):
                    problems.append(f"{namespace}/{context_id}: tokens or hash differ")
            for context_id in set(listed) - set(own) - uncertain:
                problems.append(f"{namespace}/{context_id}: listed, but deleted or never stored")
            ids = sorted(set(own) & set(listed))
            checked += len(ids)
            for at in range(0, len(ids), 24):
                group = ids[at:at + 24]
                try:
                    answer = client.generate(QUERIES[0], group, temperature=0.0, max_tokens=1)
                except ape.ApeserveError as error:
                    problems.append(f"{namespace} {group}: Generate failed: {error}")
                    continue
                generated += 1
                recomputed += answer.usage["context_tokens_recomputed"]
            for context_id in rng.sample(ids, min(sample, len(ids))):
                stored = client.generate(QUERIES[1], [context_id], temperature=0.0, max_tokens=4)
                inline = client.generate(QUERIES[1], inline_contexts=[own[context_id].text],
                                         temperature=0.0, max_tokens=4)
                compared += 1
                if stored.token_ids != inline.token_ids:
                    problems.append(f"{namespace}/{context_id}: answers differently than inline")
    if recomputed:
        problems.append(f"{recomputed} context tokens recomputed: stored KV was missing")
    return {"contexts": checked, "generate_calls": generated, "recomputed_tokens": recomputed,
            "compared_with_inline": compared, "problems": problems[:50],
            "problem_count": len(problems), "ok": not problems}


def report(result: dict[str, Any]) -> None:
    """The readable tables, on stdout."""
    print(f"\n{'rpc':<21}{'requests':>9}{'ok':>9}{INTENDED:>20}{'errors':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}  other codes")
    for rpc, row in result["rpcs"].items():
        other = ", ".join(f"{c} {n}" for c, n in row["codes"].items()
                          if c not in ("OK", INTENDED, CANCELLED))
        print(f"{rpc:<21}{row['requests']:>9}{row['codes'].get('OK', 0):>9}"
              f"{row['codes'].get(INTENDED, 0):>20}{row['errors']:>8}"
              f"{row['p50_ms'] or 0:>9.0f}{row['p99_ms'] or 0:>9.0f}  {other}")
    totals = result["totals"]
    print(f"{'all':<21}{totals['requests']:>9}{totals['ok']:>9}{totals['resource_exhausted']:>20}"
          f"{totals['errors']:>8}")
    print(f"streams cancelled by the clients: {result['cancelled_streams']}; tokens generated: "
          f"{result['generated_tokens']}")
    for message in result["first_errors"]:
        print(f"  error: {message}")
    rss = result["rss"]
    if rss:
        slope = rss.get("slope_mib_per_min")
        print(f"server RSS MiB: start {rss['start_mib']:.1f} (after {result['settings']['warmup']:.0f}"
              f" s warm-up), peak {rss['peak_mib']:.1f}, end {rss['end_mib']:.1f}, growth "
              f"{rss['growth_mib']:+.1f} (limit {result['settings']['max_rss_growth_mib']:.0f})"
              + (f", slope {slope:+.2f} MiB/min" if slope is not None else "")
              + f"; growth in the second half {rss.get('second_half_growth_mib', 0):+.1f}"
              + (f" (limit {result['settings']['max_second_half_growth']:.0%} of the start)"
                 if result['settings']['max_second_half_growth'] is not None else ""))
    else:
        print("server RSS: not sampled (give --pid with --target)")
    for name, check in result["store_checks"].items():
        print(f"store check ({name}): {check['contexts']} contexts, {check['generate_calls']} "
              f"generations naming them, {check['recomputed_tokens']} tokens recomputed, "
              f"{check['compared_with_inline']} compared with inline: "
              f"{'intact' if check['ok'] else 'PROBLEMS'}")
        for problem in check["problems"][:10]:
            print(f"  {problem}")
    print("soak: " + ("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(REPOSITORY / "build/default/server/apeserve"))
    parser.add_argument("--model", default=None, help="default: the server's (embedded) model")
    parser.add_argument("--target", default=None, help="attach to this host:port instead")
    parser.add_argument("--pid", type=int, default=None, help="with --target: its process id")
    parser.add_argument("--server_flags", default=SERVER_FLAGS,
                        help="flags of the started server, space-separated")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=None, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the RSS start sample")
    parser.add_argument("--max_rss_growth_mib", type=float, default=None)
    parser.add_argument("--max_second_half_growth", type=float, default=None,
                        help="a fraction of the start RSS (default 0.05; not checked with --quick)")
    parser.add_argument("--rss_interval", type=float, default=2.0)
    parser.add_argument("--inline_sample", type=int, default=1,
                        help="contexts per namespace compared with inline in the store check")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CI: 60 s of load, 30 s of warm-up, a loose RSS bound")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args()
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)

    scratch = Path(tempfile.mkdtemp(prefix="apeserve-soak-"))
    ape = import_client(scratch / "lib")
    import grpc

    server, target, pid = None, args.target, args.pid
    flags = tuple(args.server_flags.split())
    if target is None:
        server, target = start_server(args.binary, args.model, scratch / "server", flags)
        pid = server.pid
    rng = random.Random(args.seed)
    ledger = Ledger()
    failures: list[str] = []
    store_checks: dict[str, Any] = {}
    sampler = RssSampler(pid, args.rss_interval) if pid else None
    try:
        pool = [" ".join(PROSE_WORDS[at:at + rng.randint(30, 120)])
                for at in rng.sample(range(len(PROSE_WORDS) - 200), 12)]
        shared: dict[str, Believed] = {}
        with ape.Client(target, namespace=SHARED_NAMESPACE, timeout=600) as client:
            info = client.server_info()
            for n, text in enumerate(pool[:6]):
                context = client.create_context(text, context_id=f"shared-{n}")
                shared[context.context_id] = Believed(text, context.token_count,
                                                      context.content_hash)
        clients = [SoakClient(ape, grpc, target, i, args.seed, ledger, shared, pool)
                   for i in range(args.clients)]
        print(f"soak: {args.clients} clients for {args.duration:.0f} s against {target} "
              f"({info.device}, pid {pid})", file=sys.stderr, flush=True)
        if sampler:
            sampler.sample()
            sampler.start()
        started = time.monotonic()
        deadline = started + args.duration
        threads = [threading.Thread(target=c.run, args=(deadline,)) for c in clients]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
            with ledger.lock:
                done = sum(sum(t.codes.values()) for t in ledger.tallies.values())
            print(f"  {time.monotonic() - started:6.0f} s: {done} requests, "
                  f"{ledger.error_count} errors"
                  + (f", RSS {sampler.samples[-1][1]:.0f} MiB" if sampler and sampler.samples
                     else ""), file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        if sampler:
            sampler.sample()
            sampler.stopped.set()
            sampler.join()

        store_checks["after the load"] = check_store(ape, target, clients, shared,
                                                     args.inline_sample, rng)
        with ape.Client(target, timeout=60) as client:
            stats = client.stats()
            if stats.kv_corrupt:
                failures.append(f"the server found {stats.kv_corrupt} corrupt KV entries")
            server_stats = {"kv_rebuilds": stats.kv_rebuilds, "kv_corrupt": stats.kv_corrupt,
                            "contexts_stored": stats.contexts_stored,
                            "contexts_deleted": stats.contexts_deleted,
                            "kv_shared": stats.kv_shared,
                            "cancelled_generations": stats.cancelled_generations,
                            "generated_tokens": stats.generated_tokens}
        if server is not None:
            server.send_signal(15)
            code = server.wait(timeout=120)
            if code != 0:
                failures.append(f"apeserve exited with {code} after SIGTERM")
            server, target = start_server(args.binary, args.model, scratch / "server", flags)
            store_checks["after a restart"] = check_store(ape, target, clients, shared,
                                                          args.inline_sample, rng)
    finally:
        if server is not None:
            stop_server(server)

    rpcs = {}
    for rpc, tally in ledger.tallies.items():
        requests = sum(tally.codes.values())
        errors = sum(n for c, n in tally.codes.items()
                     if c not in ("OK", INTENDED, CANCELLED))
        rpcs[rpc] = {"requests": requests, "codes": dict(tally.codes), "errors": errors,
                     "p50_ms": percentile(tally.latencies_ms, 50),
                     "p99_ms": percentile(tally.latencies_ms, 99)}
    totals = {"requests": sum(r["requests"] for r in rpcs.values()),
              "ok": sum(r["codes"].get("OK", 0) for r in rpcs.values()),
              "resource_exhausted": sum(r["codes"].get(INTENDED, 0) for r in rpcs.values()),
              "errors": ledger.error_count}
    rss = rss_summary(sampler.samples, args.warmup) if sampler else {}
    if ledger.error_count:
        failures.append(f"{ledger.error_count} errors")
    failures += rss_failures(rss, args.max_rss_growth_mib, args.max_second_half_growth)
    for name, check in store_checks.items():
        if not check["ok"]:
            failures.append(f"store check {name}: {check['problem_count']} problems")
    if not totals["ok"]:
        failures.append("no request succeeded")
    result = {"machine": machine(), "settings": {**vars(args), "elapsed_s": elapsed},
              "rpcs": rpcs, "totals": totals, "cancelled_streams": ledger.cancelled,
              "generated_tokens": ledger.generated_tokens, "first_errors": ledger.errors,
              "rss": rss, "rss_samples": sampler.samples if sampler else [],
              "server_stats": server_stats, "store_checks": store_checks,
              "passed": not failures, "failures": failures}
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
