"""Token authentication and namespace isolation, through the real apeserve binary on
loopback: every RPC without a token or with a wrong one is UNAUTHENTICATED; a read
token cannot write; a token for namespace A cannot read, list, score or generate with
namespace B's documents (by id, by listing, by reference), and equal documents in A and
B do not share KV unless the operator opts in; server-wide stats need an admin token;
health stays open; SIGHUP reloads the tokens file; a bad tokens file stops the server at
start. apectl and the Python client send tokens.

Run by CTest, which sets APESERVE_BINARY, APECTL_BINARY and APESERVE_TEST_MODEL.
"""

import hashlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apeserve_process import ApeserveProcess, import_client

GRANTS = {  # name: (role, namespaces)
    "reader-a": ("read", ["a"]),
    "writer-a": ("write", ["a"]),
    "writer-b": ("write", ["b"]),
    "admin": ("admin", ["*"]),
}


def tokens_file(path: Path, tokens: dict[str, str], grants: dict) -> None:
    """Writes the tokens file: each token's SHA-256, never the token."""
    path.write_text(json.dumps({"tokens": [
        {"name": name, "sha256": hashlib.sha256(tokens[name].encode()).hexdigest(),
         "role": role, "namespaces": namespaces}
        for name, (role, namespaces) in grants.items()]}))


class Api:
    """Every RPC of the API as a callable taking the call's metadata."""

    def __init__(self, ape, channel: grpc.Channel):
        from apeserve_client.ape.v1 import (admin_pb2, admin_pb2_grpc, context_pb2,
                                            context_pb2_grpc, generation_pb2,
                                            generation_pb2_grpc)
        self.pb = {"admin": admin_pb2, "context": context_pb2, "generation": generation_pb2}
        self.contexts = context_pb2_grpc.ContextServiceStub(channel)
        self.generation = generation_pb2_grpc.GenerationServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)

    def calls(self, namespace: str, context_id: str) -> dict:
        c, g, a = self.pb["context"], self.pb["generation"], self.pb["admin"]
        create = c.CreateContextRequest(namespace=namespace, context_id=f"new-{secrets.token_hex(4)}",
                                        text="A new document.")
        greedy = g.SamplingParameters(max_tokens=1, temperature=0.0)
        generate = g.GenerateRequest(namespace=namespace, context_ids=[context_id],
                                     query="What does it say?", sampling=greedy)
        return {
            "CreateContext": lambda md: self.contexts.CreateContext(create, metadata=md, timeout=60),
            "UploadContext": lambda md: self.contexts.UploadContext(
                iter([c.UploadContextRequest(metadata=c.CreateContextRequest(
                    namespace=namespace, context_id="uploaded")),
                      c.UploadContextRequest(text_chunk=b"Uploaded text.")]),
                metadata=md, timeout=60),
            "BatchCreateContexts": lambda md: list(self.contexts.BatchCreateContexts(
                c.BatchCreateContextsRequest(contexts=[create]), metadata=md, timeout=60)),
            "GetContext": lambda md: self.contexts.GetContext(
                c.GetContextRequest(namespace=namespace, context_id=context_id), metadata=md,
                timeout=60),
            "ListContexts": lambda md: self.contexts.ListContexts(
                c.ListContextsRequest(namespace=namespace), metadata=md, timeout=60),
            "UpdateContext": lambda md: self.contexts.UpdateContext(
                c.UpdateContextRequest(context=c.Context(namespace=namespace, context_id=context_id,
                                                         labels={"seen": "yes"})),
                metadata=md, timeout=60),
            "DeleteContext": lambda md: self.contexts.DeleteContext(
                c.DeleteContextRequest(namespace=namespace, context_id="never-stored"),
                metadata=md, timeout=60),
            "Generate": lambda md: self.generation.Generate(generate, metadata=md, timeout=120),
            "GenerateStream": lambda md: list(self.generation.GenerateStream(
                generate, metadata=md, timeout=120)),
            "Score": lambda md: self.generation.Score(
                g.ScoreRequest(namespace=namespace, context_ids=[context_id], query="Is it?",
                               continuations=["Yes."]), metadata=md, timeout=120),
            "GetServerInfo": lambda md: self.admin.GetServerInfo(a.GetServerInfoRequest(),
                                                                 metadata=md, timeout=60),
            "GetModelInfo": lambda md: self.admin.GetModelInfo(a.GetModelInfoRequest(),
                                                               metadata=md, timeout=60),
            "GetStats": lambda md: self.admin.GetStats(a.GetStatsRequest(), metadata=md, timeout=60),
            "GetLoad": lambda md: self.admin.GetLoad(a.GetLoadRequest(), metadata=md, timeout=60),
        }


WRITES = {"CreateContext", "UploadContext", "BatchCreateContexts", "UpdateContext",
          "DeleteContext"}
ADMIN = {"GetStats", "GetLoad"}
SERVER_WIDE = {"GetServerInfo", "GetModelInfo", *ADMIN}


def store_twins(api: Api, metadata: tuple) -> dict[str, str]:
    """Stores one text three times (twice in namespace a, once in b); their content hashes,
    the keys of their KV, by namespace/id."""
    c = api.pb["context"]
    hashes = {}
    for namespace, context_id in (("a", "twin-1"), ("a", "twin-2"), ("b", "twin-1")):
        stored = api.contexts.CreateContext(c.CreateContextRequest(
            namespace=namespace, context_id=context_id, text="The same note, word for word."),
            metadata=metadata, timeout=60)
        hashes[f"{namespace}/{context_id}"] = stored.content_hash
    return hashes


class AuthServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-auth-")
        root = Path(cls.tmp.name)
        cls.tokens = {name: secrets.token_urlsafe(24) for name in GRANTS}
        cls.tokens_path = root / "tokens.json"
        tokens_file(cls.tokens_path, cls.tokens, GRANTS)
        (root / "server").mkdir()
        cls.server = ApeserveProcess(root / "server",
                                     flags=(f"--auth_tokens_file={cls.tokens_path}",))
        cls.ape = import_client(root / "client")
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.api = Api(cls.ape, cls.channel)
        # One document in each namespace, stored with the Python client's token.
        for namespace, writer in (("a", "writer-a"), ("b", "writer-b")):
            with cls.ape.Client(cls.server.address, namespace=namespace, timeout=120,
                                token=cls.tokens[writer]) as client:
                client.create_context(f"The note of namespace {namespace}.",
                                      context_id=f"doc-{namespace}")

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def bearer(self, name: str) -> tuple:
        return (("authorization", f"Bearer {self.tokens[name]}"),)

    def assert_code(self, call, metadata, code: grpc.StatusCode, what: str) -> None:
        with self.assertRaises(grpc.RpcError, msg=what) as raised:
            call(metadata)
        self.assertEqual(raised.exception.code(), code, f"{what}: {raised.exception.details()}")


class AuthTest(AuthServer):
    def test_every_call_without_a_token_is_unauthenticated(self):
        for name, call in self.api.calls("a", "doc-a").items():
            self.assert_code(call, (), grpc.StatusCode.UNAUTHENTICATED, name)

    def test_an_empty_batch_from_a_stranger_is_refused_as_such(self):
        empty = self.api.pb["context"].BatchCreateContextsRequest()
        call = lambda md: list(self.api.contexts.BatchCreateContexts(empty, metadata=md,
                                                                     timeout=60))
        self.assert_code(call, (), grpc.StatusCode.UNAUTHENTICATED, "empty batch, no token")
        self.assert_code(call, self.bearer("writer-a"), grpc.StatusCode.INVALID_ARGUMENT,
                         "empty batch, a writer")

    def test_every_call_with_a_wrong_token_is_unauthenticated(self):
        for metadata in ((("authorization", "Bearer " + secrets.token_urlsafe(24)),),
                         (("authorization", self.tokens["admin"]),),  # no Bearer scheme
                         (("authorization", "Bearer "),)):
            for name, call in self.api.calls("a", "doc-a").items():
                self.assert_code(call, metadata, grpc.StatusCode.UNAUTHENTICATED, name)

    def test_health_stays_open(self):
        reply = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)

    def test_a_read_token_reads_and_cannot_write(self):
        for name, call in self.api.calls("a", "doc-a").items():
            if name in WRITES or name in ADMIN:
                self.assert_code(call, self.bearer("reader-a"),
                                 grpc.StatusCode.PERMISSION_DENIED, name)
            else:
                call(self.bearer("reader-a"))  # raises on failure

    def test_a_write_token_writes_in_its_namespace(self):
        for name, call in self.api.calls("a", "doc-a").items():
            if name not in ADMIN:
                call(self.bearer("writer-a"))

    def test_a_token_for_one_namespace_cannot_reach_another(self):
        for name, call in self.api.calls("b", "doc-b").items():
            if name in SERVER_WIDE:
                continue
            self.assert_code(call, self.bearer("writer-a"), grpc.StatusCode.PERMISSION_DENIED,
                             name)

    def test_ids_resolve_only_in_the_namespace_granted(self):
        # doc-b named from namespace a is simply not there: nothing of b leaks.
        for name in ("GetContext", "Generate", "Score"):
            self.assert_code(self.api.calls("a", "doc-b")[name], self.bearer("writer-a"),
                             grpc.StatusCode.NOT_FOUND, name)
        listed = self.api.calls("a", "doc-a")["ListContexts"](self.bearer("writer-a"))
        self.assertNotIn("doc-b", [c.context_id for c in listed.contexts])

    def test_server_wide_stats_need_an_admin_token(self):
        for name in ADMIN:
            call = self.api.calls("a", "doc-a")[name]
            self.assert_code(call, self.bearer("writer-a"), grpc.StatusCode.PERMISSION_DENIED,
                             name)
            call(self.bearer("admin"))

    def test_storing_an_inline_context_needs_write(self):
        g = self.api.pb["generation"]
        request = g.GenerateRequest(
            namespace="a", query="What does it say?",
            inline_contexts=[g.InlineContext(text="An inline note.", store=True)],
            sampling=g.SamplingParameters(max_tokens=1, temperature=0.0))
        call = lambda md: self.api.generation.Generate(request, metadata=md, timeout=120)
        self.assert_code(call, self.bearer("reader-a"), grpc.StatusCode.PERMISSION_DENIED,
                         "Generate storing inline")
        call(self.bearer("writer-a"))
        request.inline_contexts[0].store = False
        call(self.bearer("reader-a"))

    def test_equal_documents_share_kv_within_a_namespace_only(self):
        hashes = store_twins(self.api, self.bearer("admin"))
        self.assertEqual(hashes["a/twin-1"], hashes["a/twin-2"])
        self.assertNotEqual(hashes["a/twin-1"], hashes["b/twin-1"])

    def test_apectl_sends_its_token(self):
        apectl = os.environ["APECTL_BINARY"]
        common = [apectl, f"--server={self.server.address}", "--namespace=a", "--json"]
        listed = subprocess.run([*common, f"--token={self.tokens['reader-a']}", "list"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("doc-a", listed.stdout)
        from_env = subprocess.run([*common, "list"], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "APESERVE_TOKEN": self.tokens["reader-a"]})
        self.assertEqual(from_env.returncode, 0, from_env.stderr)
        refused = subprocess.run([*common, "list"], capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in os.environ.items() if k != "APESERVE_TOKEN"})
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("token", refused.stderr)

    def test_the_python_client_reports_a_refusal(self):
        with self.ape.Client(self.server.address, namespace="b", timeout=60,
                             token=self.tokens["reader-a"]) as client:
            with self.assertRaises(self.ape.ApeserveError) as raised:
                client.get_context("doc-b")
        self.assertEqual(raised.exception.code, "PERMISSION_DENIED")


class SharedKvTest(unittest.TestCase):
    """--share_kv_across_namespaces: the operator's opt-in to one KV per content."""

    def test_equal_documents_share_kv_across_namespaces(self):
        with tempfile.TemporaryDirectory(prefix="apeserve-shared-kv-") as tmp:
            root = Path(tmp)
            token = secrets.token_urlsafe(24)
            tokens_file(root / "tokens.json", {"admin": token}, {"admin": ("admin", ["*"])})
            (root / "server").mkdir()
            server = ApeserveProcess(root / "server", flags=(
                f"--auth_tokens_file={root / 'tokens.json'}", "--share_kv_across_namespaces"))
            try:
                import_client(root / "client")
                with grpc.insecure_channel(server.address) as channel:
                    hashes = store_twins(Api(None, channel),
                                         (("authorization", f"Bearer {token}"),))
            finally:
                server.stop()
        self.assertEqual(len(set(hashes.values())), 1, hashes)


class ReloadTest(AuthServer):
    def test_sighup_reloads_the_tokens_and_a_bad_file_keeps_them(self):
        info = self.api.calls("a", "doc-a")["GetServerInfo"]
        info(self.bearer("reader-a"))
        newcomer = secrets.token_urlsafe(24)
        grants = {k: v for k, v in GRANTS.items() if k != "reader-a"}
        grants["newcomer"] = ("read", ["a"])
        tokens_file(self.tokens_path, {**self.tokens, "newcomer": newcomer}, grants)
        self.server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:  # the reload is asynchronous to this process
            try:
                info((("authorization", f"Bearer {newcomer}"),))
                break
            except grpc.RpcError:
                self.assertLess(time.monotonic(), deadline, "SIGHUP did not reload the tokens")
                time.sleep(0.1)
        self.assert_code(info, self.bearer("reader-a"), grpc.StatusCode.UNAUTHENTICATED,
                         "a removed token")
        # A broken file is refused; the tokens in force stay.
        self.tokens_path.write_text("{not json")
        self.server.signal(signal.SIGHUP)
        time.sleep(1)
        info((("authorization", f"Bearer {newcomer}"),))


class BadTokensFileTest(unittest.TestCase):
    def test_the_server_refuses_to_start(self):
        with tempfile.TemporaryDirectory(prefix="apeserve-badtokens-") as tmp:
            root = Path(tmp)
            cases = {
                "not json": "{",
                "short digest": json.dumps({"tokens": [{"name": "x", "sha256": "ab",
                                                        "role": "read", "namespaces": ["a"]}]}),
                "bad role": json.dumps({"tokens": [{"name": "x", "sha256": "0" * 64,
                                                    "role": "owner", "namespaces": ["a"]}]}),
                "no namespaces": json.dumps({"tokens": [{"name": "x", "sha256": "0" * 64,
                                                         "role": "read", "namespaces": []}]}),
            }
            for what, text in cases.items():
                path = root / "tokens.json"
                path.write_text(text)
                result = subprocess.run(
                    [os.environ["APESERVE_BINARY"], "--model=" + os.environ["APESERVE_TEST_MODEL"],
                     f"--data_dir={root / 'data'}", "--listen=127.0.0.1:0", "--metrics_listen=",
                     "--device=cpu", f"--auth_tokens_file={path}"],
                    capture_output=True, text=True, timeout=120)
                self.assertNotEqual(result.returncode, 0, what)
                self.assertIn("tokens", result.stderr, what)


if __name__ == "__main__":
    unittest.main()
