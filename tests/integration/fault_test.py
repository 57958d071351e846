"""Server faults, through the real apeserve binary on loopback:

* SIGKILL during ingestion: clients store documents concurrently through every ingest
  call (CreateContext, UploadContext, BatchCreateContexts); the server is killed mid-way
  and restarted on the same data directory, twice. Every document whose call was
  acknowledged is there with the same tokens; one whose call was not may be there or
  not, but never torn; all of them answer as the same texts sent inline (the same
  tokens, log-probabilities within 2e-3), with their KV loaded from the store (nothing
  recomputed: no KV was lost or damaged).
* A full disk: the data directory is a small tmpfs. Ingestion until the disk is full is
  refused with RESOURCE_EXHAUSTED naming the cause; for longer than RocksDB waits
  between flushes of its log, the server stays healthy, serves what it holds and keeps
  refusing writes the same way. Once the tmpfs is grown, writes are accepted again
  without a restart, and after a restart the store holds every acknowledged document,
  none torn.
* A model file swapped for another (the same path, different weights): the old
  model's KV is never served. Stored documents answer as the same texts inline on the
  new model, their KV rebuilt from the stored tokens on first use and stored again;
  swapping back rebuilds it again and gives the first model's answers.
* A model file swapped for one with another tokenizer (two tokens of the vocabulary
  exchanged): the stored token ids would stand for other text, so the server refuses
  to start on that data directory, naming both tokenizers, and changes nothing there;
  the first model still serves every document.

Run by CTest (python.faults), which sets APESERVE_BINARY and APESERVE_TEST_MODEL. The
full-disk test mounts a tmpfs, which needs root (CAP_SYS_ADMIN). Where mounting is
impossible it fails, unless APESERVE_FAULTS_ALLOW_NO_MOUNT=1 lets it skip.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib
from pathlib import Path

from apeserve_process import ApeserveProcess, import_client

QUERY = "Which rights does this section describe?"
PROSE = Path("/usr/share/common-licenses/GPL-3").read_text().split()
WORKERS = 6
LOGPROB_TOLERANCE = 2e-3  # batched steps round differently (README: batching)


def document_text(key: str, number: int, words: int = 36) -> str:
    """A distinct document: its key, then a piece of the GPL-3 chosen by its number."""
    start = (number * 97) % (len(PROSE) - words)
    return f"Document {key}. " + " ".join(PROSE[start:start + words])


class Server(ApeserveProcess):
    """ApeserveProcess that can also be SIGKILLed."""

    def kill(self) -> None:
        self._server.send_signal(signal.SIGKILL)
        self._server.wait(timeout=30)
        self._stderr.close()

    def alive(self) -> bool:
        return self._server.poll() is None


class Ledger:
    """What the clients sent and what the server acknowledged, shared by threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.texts: dict[str, str] = {}  # every id sent
        self.acked: dict[str, tuple[int, str]] = {}  # id: (token_count, content_hash)
        self.errors: list[str] = []  # unexpected failures
        self.refusals: list[str] = []  # RESOURCE_EXHAUSTED messages

    def sent(self, context_id: str, text: str) -> None:
        with self.lock:
            self.texts[context_id] = text

    def ack(self, context) -> None:
        with self.lock:
            self.acked[context.context_id] = (context.token_count, context.content_hash)


def ingest(ape, address: str, ledger: Ledger, prefix: str, stop: threading.Event,
           expected_failure: threading.Event, stop_when_refused: bool = False) -> None:
    """Stores documents `prefix`-0, -1, ... until `stop` (or, with `stop_when_refused`,
    a refusal), rotating through the three ingest calls. A failure counts as an error
    unless `expected_failure` was set before it (the server was killed) or it is
    RESOURCE_EXHAUSTED (recorded as a refusal)."""
    client = ape.Client(address, timeout=120)
    number = 0
    try:
        while not stop.is_set():
            kind = number % 3
            batch = [f"{prefix}-{number + k}" for k in range(3 if kind == 2 else 1)]
            texts = {i: document_text(i, zlib.crc32(i.encode())) for i in batch}
            for context_id, text in texts.items():
                ledger.sent(context_id, text)
            number += len(batch)
            try:
                if kind == 0:
                    ledger.ack(client.create_context(texts[batch[0]], context_id=batch[0]))
                elif kind == 1:
                    ledger.ack(client.upload_context(texts[batch[0]], context_id=batch[0],
                                                     chunk_bytes=48))
                else:
                    specs = [{"text": texts[i], "context_id": i} for i in batch]
                    for progress in client.batch_create_contexts(specs):
                        if progress.ok:
                            ledger.ack(progress.context)
                        elif progress.error.code == "RESOURCE_EXHAUSTED":
                            with ledger.lock:
                                ledger.refusals.append(progress.error.message)
                        elif not expected_failure.is_set():
                            with ledger.lock:
                                ledger.errors.append(f"{progress.error}")
                    if stop_when_refused and ledger.refusals:
                        return
            except ape.ApeserveError as error:
                if expected_failure.is_set():
                    return
                with ledger.lock:
                    if error.code == "RESOURCE_EXHAUSTED":
                        ledger.refusals.append(error.message)
                    else:
                        ledger.errors.append(f"{error}")
                if stop_when_refused or error.code != "RESOURCE_EXHAUSTED":
                    return
    finally:
        client.close()


class FaultTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="apeserve-faults-")
        self.addCleanup(self.tmp.cleanup)  # last: after what subclasses clean up
        self.root = Path(self.tmp.name)
        (self.root / "lib").mkdir()
        self.ape = import_client(self.root / "lib")
        self.servers: list[Server] = []

    def tearDown(self):
        for server in self.servers:
            if server.alive():
                server.kill()

    def start(self, *flags: str) -> Server:
        (self.root / "port").unlink(missing_ok=True)  # the last server's
        server = Server(self.root, flags=flags)
        self.servers.append(server)
        return server

    def model_copy(self) -> tuple[Path, Path]:
        """The test model, and a copy of it in the test's folder (for swapping)."""
        original = Path(os.environ["APESERVE_TEST_MODEL"])
        model = self.root / "model.gguf"
        shutil.copyfile(original, model)
        return original, model

    def check_store(self, client, ledger: Ledger, can_write: bool = True) -> None:
        """Every acknowledged document is listed with its tokens; every listed one was
        sent (nothing invented) and is whole: unacknowledged ones store the tokens their
        text gives (when `can_write`), and all answer as their texts inline do, their KV
        loaded from the store."""
        listed = {c.context_id: c for c in client.list_contexts(page_size=1000)}
        for context_id, (tokens, content_hash) in ledger.acked.items():
            self.assertIn(context_id, listed, f"acknowledged {context_id} is missing")
            self.assertEqual((listed[context_id].token_count, listed[context_id].content_hash),
                             (tokens, content_hash), context_id)
        for context_id, context in listed.items():
            self.assertIn(context_id, ledger.texts, f"{context_id} was never sent")
            if context_id in ledger.acked or not can_write:
                continue
            check = client.create_context(ledger.texts[context_id], context_id="check")
            self.assertEqual((context.token_count, context.content_hash),
                             (check.token_count, check.content_hash), context_id)
            client.delete_context("check")
        ids = sorted(listed)
        for group in range(0, len(ids), 24):
            self.assert_same_answer(client, ids[group:group + 24],
                                    [ledger.texts[i] for i in ids[group:group + 24]])

    def assert_same_answer(self, client, ids: list[str], texts: list[str]):
        """Stored `ids` answer as their `texts` inline; returns the stored answer."""
        stored = client.generate(QUERY, ids, temperature=0.0, max_tokens=4)
        inline = client.generate(QUERY, inline_contexts=texts, temperature=0.0, max_tokens=4)
        self.assertEqual(stored.usage["context_tokens_recomputed"], 0, ids)
        self.assertEqual(stored.token_ids, inline.token_ids, ids)
        for a, b in zip(stored.logprobs, inline.logprobs):
            self.assertAlmostEqual(a, b, delta=LOGPROB_TOLERANCE)
        return stored


class SigkillTest(FaultTestCase):
    def test_every_acknowledged_document_survives_sigkill_during_ingestion(self):
        ledger = Ledger()
        server = self.start()
        for cycle in range(2):
            before = len(ledger.acked)
            stop, killed = threading.Event(), threading.Event()
            workers = [threading.Thread(target=ingest, args=(
                self.ape, server.address, ledger, f"c{cycle}w{w}", stop, killed))
                for w in range(WORKERS)]
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 120
            while len(ledger.acked) < before + 24 and time.monotonic() < deadline:
                time.sleep(0.02)
            killed.set()
            server.kill()  # mid-way: the workers have calls in flight
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
            self.assertEqual(ledger.errors, [])
            self.assertGreaterEqual(len(ledger.acked), before + 24, "too few acknowledged")
            self.assertGreater(len(ledger.texts), len(ledger.acked), "nothing was in flight")

            server = self.start()
            with self.ape.Client(server.address, timeout=120) as client:
                self.check_store(client, ledger)
                present = sum(1 for c in client.list_contexts(page_size=1000)
                              if c.context_id not in ledger.acked)
            print(f"SIGKILL {cycle + 1}: {len(ledger.acked)} acknowledged, "
                  f"{len(ledger.texts) - len(ledger.acked)} not (of which {present} stored, "
                  "whole): all intact", file=sys.stderr)
        server.stop()


class FullDiskTest(FaultTestCase):
    def setUp(self):
        super().setUp()
        self.data = self.root / "data"
        self.data.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs",
                                  str(self.data)], capture_output=True, text=True)
        if mounted.returncode != 0:
            why = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
            if os.environ.get("APESERVE_FAULTS_ALLOW_NO_MOUNT") == "1":
                self.skipTest(why)
            self.fail(why + "; set APESERVE_FAULTS_ALLOW_NO_MOUNT=1 to skip this test")
        self.addCleanup(subprocess.run, ["umount", str(self.data)], check=True)

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.data)], check=True)

    def test_a_full_disk_refuses_writes_clearly_and_loses_nothing(self):
        ledger = Ledger()
        server = self.start()
        client = self.ape.Client(server.address, timeout=120)
        stop, never = threading.Event(), threading.Event()
        workers = [threading.Thread(target=ingest, args=(
            self.ape, server.address, ledger, f"w{w}", stop, never, True)) for w in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        self.assertEqual(ledger.errors, [])
        self.assertTrue(ledger.refusals, "the disk never filled up")
        self.assertGreater(len(ledger.acked), 3)
        for message in ledger.refusals:
            self.assertIn("No space left on device", message)
        print(f"full disk: {len(ledger.acked)} acknowledged, then RESOURCE_EXHAUSTED: "
              f"{ledger.refusals[0]}", file=sys.stderr)

        # Full, for longer than RocksDB's log flush period (5 s): healthy, serving what
        # it holds, refusing writes the same way.
        acked = sorted(ledger.acked)
        until = time.monotonic() + 7
        while time.monotonic() < until:
            self.assertTrue(client.health())
            self.assertGreaterEqual(len(list(client.list_contexts(page_size=1000))), len(acked))
            client.generate(QUERY, acked[:4], temperature=0.0, max_tokens=2)
            with self.assertRaises(self.ape.ApeserveError) as refused:
                client.create_context(document_text("late", 1), context_id="late")
            self.assertEqual(refused.exception.code, "RESOURCE_EXHAUSTED")
            self.assertIn("No space left on device", refused.exception.message)
        self.assertTrue(server.alive())
        self.check_store(client, ledger, can_write=False)

        # Space freed: writes come back without a restart (RocksDB polls every 5 s).
        self.grow("512m")
        deadline = time.monotonic() + 60
        while True:
            try:
                ledger.sent("late", document_text("late", 1))
                ledger.ack(client.create_context(ledger.texts["late"], context_id="late"))
                break
            except self.ape.ApeserveError as error:
                self.assertEqual(error.code, "RESOURCE_EXHAUSTED")
                self.assertLess(time.monotonic(), deadline, "writes never came back")
                time.sleep(0.5)
        self.check_store(client, ledger)
        client.close()
        server.stop()

        server = self.start()
        with self.ape.Client(server.address, timeout=120) as client:
            self.check_store(client, ledger)
        server.stop()


def swap_weights(source: Path, target: Path) -> None:
    """`target`: a copy of the GGUF `source` with blk.0.attn_norm.weight scaled by 1.25,
    which changes every layer's KV."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
    changed = (np.array(tensor.data, dtype=np.float32) * 1.25).astype("<f4").tobytes()
    offset = int(tensor.data_offset)
    del reader
    shutil.copyfile(source, target)
    with open(target, "r+b") as file:
        file.seek(offset)
        file.write(changed)


class ModelSwapTest(FaultTestCase):
    def test_a_swapped_model_never_serves_the_old_kv(self):
        original, model = self.model_copy()
        other = self.root / "other.gguf"
        swap_weights(original, other)
        flag = f"--model={model}"
        ids = [f"doc-{n}" for n in range(4)]
        texts = [document_text(i, n) for n, i in enumerate(ids)]
        tokens = 0

        server = self.start(flag)
        with self.ape.Client(server.address, timeout=120) as client:
            for context_id, text in zip(ids, texts):
                tokens += client.create_context(text, context_id=context_id).token_count
            first_fingerprint = client.model_info().fingerprint
            first = self.assert_same_answer(client, ids, texts)
        server.stop()

        os.replace(other, model)  # the same path, other weights
        server = self.start(flag)
        with self.ape.Client(server.address, timeout=120) as client:
            self.assertNotEqual(client.model_info().fingerprint, first_fingerprint)
            # The old model's KV was dropped at start: nothing is stored for this one.
            self.assertEqual({client.get_context(i).kv_state for i in ids}, {"evicted"})
            rebuilt = client.generate(QUERY, ids, temperature=0.0, max_tokens=4)
            self.assertEqual(rebuilt.usage["context_tokens_recomputed"], tokens)
            self.assertGreaterEqual(client.stats().kv_rebuilds, len(ids))
            # The new model's answer, as the texts inline give it, not the old one.
            second = self.assert_same_answer(client, ids, texts)
            self.assertEqual(second.token_ids, rebuilt.token_ids)
            self.assertGreater(max(abs(a - b) for a, b in zip(first.logprobs, second.logprobs)),
                               0.05, "the swapped weights do not change the answer")
            self.assertEqual({client.get_context(i).kv_state for i in ids}, {"stored"})
        server.stop()

        server = self.start(flag)  # the rebuilt KV was stored
        with self.ape.Client(server.address, timeout=120) as client:
            again = client.generate(QUERY, ids, temperature=0.0, max_tokens=4)
            self.assertEqual(again.usage["context_tokens_store"], tokens)
            self.assertEqual(again.token_ids, second.token_ids)
        server.stop()

        shutil.copyfile(original, model)  # and back
        server = self.start(flag)
        with self.ape.Client(server.address, timeout=120) as client:
            back = client.generate(QUERY, ids, temperature=0.0, max_tokens=4)
            self.assertEqual(back.usage["context_tokens_recomputed"], tokens)
            self.assertEqual(back.token_ids, first.token_ids)
            for a, b in zip(back.logprobs, first.logprobs):
                self.assertAlmostEqual(a, b, delta=LOGPROB_TOLERANCE)
        server.stop()


def swap_tokens(source: Path, target: Path, first: str = "Ġthe", second: str = "Ġand") -> None:
    """`target`: a copy of the GGUF `source` whose vocabulary has the tokens `first` and
    `second` (spelled alike in length) exchanged: a text gets other ids, and a stored id
    names another word."""
    import gguf
    import numpy as np

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(target, "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    spelled = {bytes(field.parts[i]).decode(): field.parts[i] for i in field.data}
    a, b = spelled[first], spelled[second]
    assert len(a) == len(b)
    a_bytes = np.array(a)
    a[:] = b
    b[:] = a_bytes
    reader.data.flush()
    del reader


class TokenizerSwapTest(FaultTestCase):
    def test_documents_of_another_tokenizer_are_refused_not_misread(self):
        original, model = self.model_copy()
        swap_tokens(original, self.root / "other.gguf")
        flag = f"--model={model}"
        ids = [f"doc-{n}" for n in range(3)]
        texts = [document_text(i, n) for n, i in enumerate(ids)]

        server = self.start(flag)
        with self.ape.Client(server.address, timeout=120) as client:
            stored = [client.create_context(t, context_id=i) for i, t in zip(ids, texts)]
            first = self.assert_same_answer(client, ids, texts)
        server.stop()

        # The other tokenizer gives the same texts other tokens (in a data directory of
        # its own, which it may use).
        server = self.start(f"--model={self.root / 'other.gguf'}",
                            f"--data_dir={self.root / 'other-data'}")
        with self.ape.Client(server.address, timeout=120) as client:
            for context, text in zip(stored, texts):
                self.assertNotEqual(client.create_context(text).content_hash,
                                    context.content_hash)
        server.stop()

        os.replace(self.root / "other.gguf", model)  # the same path, another tokenizer
        with self.assertRaisesRegex(RuntimeError, "holds documents tokenized by tokenizer "
                                    "[0-9a-f]{32}, but this model's tokenizer is [0-9a-f]{32}"):
            self.start(flag)

        shutil.copyfile(original, model)  # the refusal changed nothing
        server = self.start(flag)
        with self.ape.Client(server.address, timeout=120) as client:
            listed = {c.context_id: c for c in client.list_contexts()}
            self.assertEqual({i: (c.token_count, c.content_hash) for i, c in listed.items()},
                             {c.context_id: (c.token_count, c.content_hash) for c in stored})
            again = self.assert_same_answer(client, ids, texts)
            self.assertEqual(again.token_ids, first.token_ids)
        server.stop()


if __name__ == "__main__":
    unittest.main()
