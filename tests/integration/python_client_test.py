"""The Python client (clients/python) against the real apeserve binary.

Starts apeserve on a free loopback port, as grpc_surface_test.py does, and drives every
method of apeserve_client.Client. Uses the installed package when there is one;
otherwise it builds the package from the checkout into a temporary folder, generating
the stubs with the package's own generator, so that it needs no pip install. Run by
CTest, which sets APESERVE_BINARY and APESERVE_TEST_MODEL.
"""

import datetime
import os
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from apeserve_process import ApeserveProcess, import_client

QUERY = "What is the capital of France?"
GREEDY = {"temperature": 0.0, "max_tokens": 8}


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-client-")
        root = Path(cls.tmp.name)
        (root / "lib").mkdir()
        cls.ape = import_client(root / "lib")
        cls.server = ApeserveProcess(root)
        cls.client = cls.ape.Client(cls.server.address, timeout=60)
        # Two documents for the generation tests.
        cls.france = cls.client.create_context(
            "Paris is the capital of France.", context_id="geo-france"
        )
        cls.italy = cls.client.create_context(
            "Rome is the capital of Italy.", context_id="geo-italy"
        )
        cls.doc_ids = [cls.france.context_id, cls.italy.context_id]

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def _list_calls(self) -> int:
        return sum(
            m.count
            for m in self.client.stats().methods
            if m.method == "ListContexts" and m.code == "OK"
        )

    # Contexts -----------------------------------------------------------------------

    def test_create_returns_the_stored_context(self):
        before = datetime.datetime.now(datetime.timezone.utc)
        context = self.client.create_context("A short note.", labels={"kind": "note"})
        self.assertEqual(context.namespace, "default")
        self.assertTrue(context.context_id)  # chosen by the server
        self.assertGreater(context.token_count, 0)
        self.assertEqual(context.labels, {"kind": "note"})
        self.assertRegex(context.content_hash, "^[0-9a-f]{32}$")
        self.assertEqual(context.kv_state, "stored")
        self.assertLess(abs((context.created - before).total_seconds()), 60)
        self.assertIsNone(context.text)

    def test_list_pages_through_a_label_filter(self):
        ids = [f"list-{i}" for i in range(3)]
        for i, context_id in enumerate(ids):
            self.client.create_context(
                f"Listed document {i}.", context_id, labels={"suite": "list", "n": str(i)}
            )
        self.client.create_context("Not listed.", "list-other", labels={"suite": "other"})
        calls = self._list_calls()
        listed = list(self.client.list_contexts(label_filter={"suite": "list"}, page_size=1))
        self.assertEqual([c.context_id for c in listed], ids)
        self.assertEqual([c.labels["n"] for c in listed], ["0", "1", "2"])
        self.assertGreaterEqual(self._list_calls() - calls, 3)  # one page per context
        everything = {c.context_id for c in self.client.list_contexts()}
        self.assertLessEqual({*ids, "list-other", *self.doc_ids}, everything)

    def test_get_update_and_delete(self):
        text = "Labels change; tokens never do."
        created = self.client.create_context(text, "crud", labels={"a": "1", "b": "2"})
        got = self.client.get_context("crud", include_text=True)
        self.assertEqual(got.text, text)
        self.assertEqual(got.token_count, created.token_count)
        self.assertIsNone(self.client.get_context("crud").text)

        updated = self.client.update_labels("crud", {"b": "3", "c": "4"})
        self.assertEqual(updated.labels, {"b": "3", "c": "4"})
        self.assertEqual(updated.content_hash, created.content_hash)
        self.assertEqual(self.client.get_context("crud").labels, {"b": "3", "c": "4"})
        self.assertEqual(
            [c.context_id for c in self.client.list_contexts(label_filter={"c": "4"})], ["crud"]
        )

        self.assertTrue(self.client.delete_context("crud"))
        self.assertFalse(self.client.delete_context("crud"))
        with self.assertRaises(self.ape.ApeserveError) as raised:
            self.client.get_context("crud")
        self.assertEqual(raised.exception.code, "NOT_FOUND")
        self.assertIn("crud", raised.exception.message)

    def test_retention_pinned_and_time_to_live(self):
        kept = self.client.create_context("Kept however full the store is.", "kept", pinned=True)
        self.assertTrue(kept.pinned)
        self.assertIsNone(kept.expires)
        brief = self.client.create_context("Gone within the hour.", "brief", ttl=3600)
        self.assertIsNotNone(brief.expires)
        remaining = (brief.expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        self.assertAlmostEqual(remaining, 3600, delta=60)
        self.assertFalse(self.client.update_retention("kept", pinned=False).pinned)
        self.assertIsNone(self.client.update_retention("brief", never_expire=True).expires)
        soon = self.client.update_retention("brief", ttl=0.5)
        self.assertIsNotNone(soon.expires)
        time.sleep(1.0)
        with self.assertRaises(self.ape.ApeserveError) as raised:
            self.client.get_context("brief")
        self.assertEqual(raised.exception.code, "NOT_FOUND")
        with self.assertRaises(ValueError):
            self.client.update_retention("kept")

    def test_upload_in_chunks_that_split_characters(self):
        text = "Ünïcödé façade — naïve café. " * 20
        path = Path(self.tmp.name) / "upload.txt"
        path.write_text(text, encoding="utf-8")
        from_path = self.client.upload_context(path, "upload-path", {"src": "file"}, chunk_bytes=7)
        self.assertEqual(self.client.get_context("upload-path", include_text=True).text, text)
        self.assertEqual(from_path.labels, {"src": "file"})
        with open(path, encoding="utf-8") as file:
            from_file = self.client.upload_context(file, "upload-file", chunk_bytes=5)
        from_text = self.client.upload_context(text, "upload-text", chunk_bytes=3)
        from_whole = self.client.create_context(text, "upload-whole")
        hashes = {c.content_hash for c in (from_path, from_file, from_text, from_whole)}
        self.assertEqual(len(hashes), 1)

    def test_batch_reports_each_context_and_progress(self):
        results = list(
            self.client.batch_create_contexts(
                [
                    "First batch document.",
                    {"text": "", "context_id": "batch-empty"},
                    {"text": "Third batch document.", "context_id": "batch-3", "labels": {"x": "y"}},
                ]
            )
        )
        self.assertEqual([r.index for r in results], [0, 1, 2])
        self.assertEqual([r.done for r in results], [1, 2, 3])
        self.assertEqual({r.total for r in results}, {3})
        self.assertEqual([r.ok for r in results], [True, False, True])
        self.assertEqual(results[1].error.code, "INVALID_ARGUMENT")
        self.assertEqual(results[2].context.context_id, "batch-3")
        self.assertEqual(results[2].context.labels, {"x": "y"})
        self.assertEqual(
            results[2].tokens_stored,
            results[0].context.token_count + results[2].context.token_count,
        )

    # Generation ---------------------------------------------------------------------

    def test_generate_in_every_mode(self):
        context_tokens = self.france.token_count + self.italy.token_count
        for mode in ("sequential", "parallel", "ape"):
            with self.subTest(mode=mode):
                result = self.client.generate(QUERY, self.doc_ids, mode=mode, **GREEDY)
                self.assertTrue(result.text)
                self.assertLessEqual(len(result.token_ids), 8)
                self.assertEqual(len(result.logprobs), len(result.token_ids))
                self.assertIn(result.finish_reason, ("length", "end_of_sequence"))
                usage = result.usage
                self.assertEqual(usage["generated_tokens"], len(result.token_ids))
                self.assertEqual(usage["context_tokens"], context_tokens)
                self.assertGreater(usage["query_tokens"], 0)
                self.assertGreater(result.timings["total_ms"], 0)
                if mode == "sequential":
                    self.assertEqual(usage["context_tokens_recomputed"], context_tokens)
        # Stored KV by now: APE loads all of it from one tier or another.
        usage = self.client.generate(QUERY, self.doc_ids, mode="ape", **GREEDY).usage
        loaded = sum(usage[f"context_tokens_{tier}"] for tier in ("store", "host", "device"))
        self.assertEqual(loaded, usage["context_tokens"])
        self.assertEqual(usage["context_tokens_recomputed"], 0)

    def test_stream_yields_the_generated_text(self):
        expected = self.client.generate(QUERY, self.doc_ids, request_id="whole", **GREEDY)
        with self.client.stream(QUERY, self.doc_ids, request_id="streamed", **GREEDY) as stream:
            pieces = list(stream)
        self.assertTrue(all(pieces))
        self.assertEqual("".join(pieces), expected.text)
        self.assertEqual(stream.result.text, expected.text)
        self.assertEqual(stream.result.token_ids, expected.token_ids)
        self.assertEqual(stream.result.finish_reason, expected.finish_reason)
        self.assertEqual(stream.result.usage["generated_tokens"], len(expected.token_ids))
        self.assertEqual(stream.result.request_id, "streamed")

    def test_inline_and_ape_parameters(self):
        result = self.client.generate(
            "What does the note say?",
            inline_contexts=["The note says hello.", {"text": "Kept.", "store": True, "context_id": "inline-kept"}],
            ape_temperature=0.8,
            ape_scale=1.0,
            ape_form="additive",
            stop=["\n"],
            **GREEDY,
        )
        self.assertEqual(result.usage["context_tokens_recomputed"], result.usage["context_tokens"])
        self.assertEqual(self.client.get_context("inline-kept", include_text=True).text, "Kept.")

    def test_score_one_entry_per_continuation(self):
        continuations = ["Paris.", "The capital of France is Berlin."]
        for mode in ("sequential", "ape"):
            with self.subTest(mode=mode):
                scores = self.client.score(QUERY, continuations, self.doc_ids, mode=mode)
                self.assertEqual(len(scores), len(continuations))
                for score in scores:
                    self.assertGreater(len(score.token_ids), 0)
                    self.assertEqual(len(score.token_logprobs), len(score.token_ids))
                    self.assertTrue(all(lp <= 0 for lp in score.token_logprobs))
                    self.assertAlmostEqual(
                        score.total_logprob, sum(score.token_logprobs), delta=1e-4
                    )

    def test_unknown_context_raises_not_found(self):
        for call in (
            lambda: self.client.generate(QUERY, ["geo-france", "no-such-doc"], **GREEDY),
            lambda: self.client.score(QUERY, ["Paris."], ["no-such-doc"]),
            lambda: list(self.client.stream(QUERY, ["no-such-doc"], **GREEDY)),
        ):
            with self.assertRaises(self.ape.ApeserveError) as raised:
                call()
            self.assertEqual(raised.exception.code, "NOT_FOUND")
            self.assertIn("no-such-doc", raised.exception.message)

    def test_arguments_checked_before_sending(self):
        with self.assertRaises(ValueError):
            self.client.generate(QUERY, mode="serial")
        with self.assertRaises(ValueError):
            self.client.generate(QUERY, ape_form="exponential")
        with self.assertRaises(TypeError):
            self.client.generate(QUERY, "geo-france")
        # Unset sampling values stay unset (proto3 `optional`), so the server's defaults
        # apply; set ones are sent, zeros included.
        request = self.client._generate_request(
            query=QUERY, context_ids=(), inline_contexts=(), mode="ape", system_prompt="",
            stop=(), ape_temperature=None, ape_scale=0.5, ape_form=None, request_id="",
            temperature=0.0, max_tokens=None, top_k=None, top_p=None, min_p=None,
            repetition_penalty=None, seed=None,
        )  # fmt: skip
        self.assertTrue(request.sampling.HasField("temperature"))
        for name in ("max_tokens", "top_k", "top_p", "min_p", "repetition_penalty", "seed"):
            self.assertFalse(request.sampling.HasField(name), name)
        self.assertFalse(request.ape.HasField("temperature"))
        self.assertEqual(request.ape.scale, 0.5)

    # Administration -----------------------------------------------------------------

    def test_admin_calls(self):
        model = self.client.model_info()
        self.assertEqual(model.context_length, 8192)
        self.assertEqual(model.architecture, "llama")
        self.assertEqual(model.device, "cpu")
        info = self.client.server_info()
        self.assertEqual(info.model.path, os.environ["APESERVE_TEST_MODEL"])
        self.assertEqual(info.device, "cpu")
        self.assertGreater(info.ape_defaults.temperature, 0)
        load = self.client.load()
        self.assertGreater(load.max_running, 0)
        self.assertFalse(load.draining)
        stats = self.client.stats()
        self.assertGreaterEqual(stats.contexts_stored, 2)
        self.assertTrue(any(m.method == "CreateContext" for m in stats.methods))

    def test_health(self):
        self.assertTrue(self.client.health())
        # Without grpcio-health-checking the client calls the method by hand.
        with mock.patch.dict(sys.modules, {"grpc_health.v1": None}):
            self.assertTrue(self.client.health())
        with self.ape.Client("127.0.0.1:1", timeout=5) as nobody:
            self.assertFalse(nobody.health())


if __name__ == "__main__":
    unittest.main(verbosity=2)
