"""TLS on the gRPC port, through the real apeserve binary on loopback: a client that
trusts the server's CA gets answers; a plaintext client, or one trusting another CA,
does not; with a client CA, only clients holding a certificate it signed get in; apectl
speaks TLS with --tls_ca; bad certificate settings stop the server with a message that
names them. The certificates are made for each run with the openssl command.

Run by CTest, which sets APESERVE_BINARY, APECTL_BINARY and APESERVE_TEST_MODEL.
"""

import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apeserve_process import ApeserveProcess, import_client


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def issue(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A certificate signed by `ca` with `extensions` (an openssl extension section)."""
    cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
    extfile = folder / f"{name}.ext"
    extfile.write_text(extensions + "\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile))
    return cert, key


SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
CLIENT_USAGE = "extendedKeyUsage=clientAuth"


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def credentials(ca: Path, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None)


class Certificates:
    """Two CAs (the right one and a stranger), a server certificate and two client
    certificates, one from each CA."""

    def __init__(self, folder: Path):
        self.ca = make_ca(folder, "apeserve-test-ca")
        self.other_ca = make_ca(folder, "stranger-ca")
        self.server = issue(folder, "server", self.ca, SERVER_NAMES)
        self.client = issue(folder, "client", self.ca, CLIENT_USAGE)
        self.stranger = issue(folder, "stranger", self.other_ca, CLIENT_USAGE)


class ServerWithCertificates(unittest.TestCase):
    """A server started with fresh certificates and the flags `server_flags` names."""

    @classmethod
    def server_flags(cls, certs: Certificates) -> tuple[str, ...]:
        return (f"--tls_cert={certs.server[0]}", f"--tls_key={certs.server[1]}")

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-tls-")
        root = Path(cls.tmp.name)
        cls.certs = Certificates(root)
        (root / "server").mkdir()
        cls.server = ApeserveProcess(root / "server", flags=cls.server_flags(cls.certs))

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()


class TlsTest(ServerWithCertificates):

    def test_a_client_trusting_the_ca_is_served(self):
        with grpc.secure_channel(self.server.address, credentials(self.certs.ca[0])) as channel:
            self.assertEqual(health(channel), health_pb2.HealthCheckResponse.SERVING)

    def test_a_client_trusting_another_ca_is_refused(self):
        with grpc.secure_channel(self.server.address,
                                 credentials(self.certs.other_ca[0])) as channel:
            with self.assertRaises(grpc.RpcError) as raised:
                health(channel)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_a_plaintext_client_is_refused(self):
        with grpc.insecure_channel(self.server.address) as channel:
            with self.assertRaises(grpc.RpcError) as raised:
                health(channel)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_the_python_client_speaks_tls(self):
        ape = import_client(Path(self.tmp.name) / "client")
        with ape.Client(self.server.address, timeout=30,
                        credentials=credentials(self.certs.ca[0])) as client:
            self.assertEqual(client.server_info().device, "cpu")

    def test_apectl_speaks_tls(self):
        apectl = os.environ["APECTL_BINARY"]
        served = subprocess.run([apectl, f"--server={self.server.address}",
                                 f"--tls_ca={self.certs.ca[0]}", "health"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(served.returncode, 0, served.stderr)
        self.assertIn("SERVING", served.stdout)
        plaintext = subprocess.run([apectl, f"--server={self.server.address}", "--timeout=5s",
                                    "health"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(plaintext.returncode, 0)


class MutualTlsTest(ServerWithCertificates):
    @classmethod
    def server_flags(cls, certs: Certificates) -> tuple[str, ...]:
        return (*super().server_flags(certs), f"--tls_client_ca={certs.ca[0]}")

    def test_a_client_with_a_certificate_from_the_client_ca_is_served(self):
        with grpc.secure_channel(self.server.address,
                                 credentials(self.certs.ca[0], self.certs.client)) as channel:
            self.assertEqual(health(channel), health_pb2.HealthCheckResponse.SERVING)

    def test_a_client_without_a_certificate_is_refused(self):
        with grpc.secure_channel(self.server.address, credentials(self.certs.ca[0])) as channel:
            with self.assertRaises(grpc.RpcError) as raised:
                health(channel)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_a_client_with_a_certificate_from_another_ca_is_refused(self):
        with grpc.secure_channel(self.server.address,
                                 credentials(self.certs.ca[0], self.certs.stranger)) as channel:
            with self.assertRaises(grpc.RpcError) as raised:
                health(channel)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_apectl_presents_its_certificate(self):
        apectl = os.environ["APECTL_BINARY"]
        served = subprocess.run([apectl, f"--server={self.server.address}",
                                 f"--tls_ca={self.certs.ca[0]}", f"--tls_cert={self.certs.client[0]}",
                                 f"--tls_key={self.certs.client[1]}", "health"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(served.returncode, 0, served.stderr)


class BadTlsSettingsTest(unittest.TestCase):
    """The server refuses to start, with a message naming the problem."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="apeserve-badtls-")
        cls.root = Path(cls.tmp.name)
        cls.certs = Certificates(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start(self, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.environ["APESERVE_BINARY"], "--model=" + os.environ["APESERVE_TEST_MODEL"],
             f"--data_dir={self.root / 'data'}", "--listen=127.0.0.1:0",
             "--metrics_listen=", "--device=cpu", *flags],
            capture_output=True, text=True, timeout=120)

    def assert_refused(self, result: subprocess.CompletedProcess, *words: str) -> None:
        self.assertNotEqual(result.returncode, 0)
        for word in words:
            self.assertIn(word, result.stderr)

    def test_a_certificate_without_its_key(self):
        self.assert_refused(self.start(f"--tls_cert={self.certs.server[0]}"), "tls_key")

    def test_a_client_ca_without_a_certificate(self):
        self.assert_refused(self.start(f"--tls_client_ca={self.certs.ca[0]}"), "tls_cert")

    def test_a_missing_file(self):
        self.assert_refused(self.start(f"--tls_cert={self.root / 'nowhere.pem'}",
                                       f"--tls_key={self.certs.server[1]}"),
                            "nowhere.pem", "cannot be read")

    def test_a_file_that_is_not_pem(self):
        junk = self.root / "junk.pem"
        junk.write_bytes(b"\x00\x01 not a certificate")
        self.assert_refused(self.start(f"--tls_cert={junk}", f"--tls_key={self.certs.server[1]}"),
                            "junk.pem", "no PEM block")

    def test_a_key_that_does_not_match_the_certificate(self):
        self.assert_refused(self.start(f"--tls_cert={self.certs.server[0]}",
                                       f"--tls_key={self.certs.client[1]}"),
                            "TLS key does not match")


if __name__ == "__main__":
    unittest.main()
