"""Generates the gRPC stubs while the package is built, so that none are committed.

The stubs come from the repository's proto/ape/v1/*.proto (two levels up: pip builds a
local directory in place) or from $APESERVE_PROTO_ROOT. They are written into the built
package as apeserve_client/ape/v1/, by apeserve_client/_generate.py, which also runs the
repository's integration test from a checkout.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent.resolve()
PROTO_ROOT = Path(os.environ.get("APESERVE_PROTO_ROOT", HERE.parent.parent / "proto"))


def _generator():
    # Loaded by path: importing apeserve_client would import the stubs it is to write.
    spec = importlib.util.spec_from_file_location(
        "_apeserve_generate", HERE / "apeserve_client" / "_generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """build_py, then the stubs into the built package (the source one when editable)."""

    def run(self):
        super().run()
        if not (PROTO_ROOT / "ape" / "v1").is_dir():
            raise SystemExit(
                f"apeserve's .proto files are not in {PROTO_ROOT}: build from the "
                "repository (pip install ./clients/python) or set APESERVE_PROTO_ROOT"
            )
        package = HERE if self.editable_mode else Path(self.build_lib)
        _generator().generate_stubs(PROTO_ROOT, package / "apeserve_client")


setup(
    cmdclass={"build_py": BuildPyWithStubs},
    install_requires=_generator().runtime_requirements(),
)
