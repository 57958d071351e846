"""The real apeserve binary for Python tests: started on a free loopback port (and a free
metrics port) with a fresh data directory, stopped with SIGTERM. CTest sets
APESERVE_BINARY and APESERVE_TEST_MODEL.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def import_client(scratch: Path):
    """apeserve_client, installed or built from the checkout into ``scratch``."""
    try:
        import apeserve_client

        return apeserve_client
    except ImportError:
        pass
    # Built beside the sources, not in them: the checkout stays clean, and the test
    # imports the same layout a wheel installs (the stubs in apeserve_client/ape/v1).
    spec = importlib.util.spec_from_file_location(
        "_apeserve_generate", REPOSITORY / "clients/python/apeserve_client/_generate.py"
    )
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    sys.path.insert(0, str(generate.build_from_checkout(REPOSITORY, scratch)))
    import apeserve_client

    return apeserve_client


class ApeserveProcess:
    def __init__(self, root: Path, timeout: float = 120, flags: tuple[str, ...] = ()):
        """Starts apeserve with its data and logs under ``root`` and any further
        ``flags``; waits until it serves."""
        port_file = root / "port"
        self._stderr = open(root / "stderr", "w+")
        self._server = subprocess.Popen(
            [
                os.environ["APESERVE_BINARY"],
                "--model=" + os.environ["APESERVE_TEST_MODEL"],
                "--data_dir=" + str(root / "data"),
                "--listen=127.0.0.1:0",
                "--metrics_listen=127.0.0.1:0",
                "--device=cpu",
                "--port_file=" + str(port_file),
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self._server.poll() is not None or time.monotonic() > deadline:
                self._stderr.seek(0)
                raise RuntimeError("apeserve did not start:\n" + self._stderr.read())
            time.sleep(0.05)
        #: host:port of the gRPC server.
        self.address = "127.0.0.1:" + port_file.read_text().strip()

    def signal(self, number: int) -> None:
        """Sends signal ``number`` to the server."""
        self._server.send_signal(number)

    def stop(self) -> None:
        """SIGTERM; raises unless apeserve exits 0."""
        self._server.send_signal(signal.SIGTERM)
        code = self._server.wait(timeout=30)
        self._stderr.close()
        if code != 0:
            raise RuntimeError(f"apeserve exited with {code} after SIGTERM")
