"""Generates the gRPC stubs of apeserve's API from its .proto files.

Used by setup.py when the package is built, and by the repository's integration test to
run the client from a checkout without installing it. It imports nothing from the rest
of the package (the stubs do not exist yet when it runs), so it can be loaded by path.

Layout: the stubs of ``ape/v1/*.proto`` go to ``<out_dir>/ape/v1/`` and ``out_dir`` is
the ``apeserve_client`` package, so they import as ``apeserve_client.ape.v1.*_pb2``.
protoc writes absolute imports between them (``from ape.v1 import encoding_pb2``), which
only work with a top-level ``ape`` package; that name is already taken on PyPI (ApeWorX's
``eth-ape`` installs one), so shipping one could break either project. Instead the
imports are rewritten to relative ones (``from . import encoding_pb2``): the stubs then
work wherever ``ape/v1`` is placed, with nothing added to the top-level namespace. The
protobuf descriptors keep their file names (``ape/v1/encoding.proto``), as the server's
reflection service reports them.
"""

from __future__ import annotations

import re
from pathlib import Path

# protoc's imports of sibling modules in the ape.v1 package, in .py and .pyi output.
_SIBLING_IMPORT = re.compile(r"^from ape\.v1 import ", re.MULTILINE)


def generate_stubs(proto_root: str | Path, out_dir: str | Path) -> list[Path]:
    """Compiles ``proto_root/ape/v1/*.proto`` into ``out_dir/ape/v1/``.

    Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` with relative sibling
    imports, and the ``__init__.py`` files of ``ape`` and ``ape/v1``. Returns the paths
    written. Raises RuntimeError when protoc fails and FileNotFoundError when there are
    no .proto files.
    """
    # Imported here so that a module importing this one needs grpcio-tools only to call it.
    from grpc_tools import protoc
    import grpc_tools

    proto_root = Path(proto_root).resolve()
    out_dir = Path(out_dir).resolve()
    protos = sorted((proto_root / "ape" / "v1").glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files in {proto_root / 'ape' / 'v1'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # grpc_tools ships the well-known types (timestamp.proto, field_mask.proto).
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed: " + " ".join(args))

    package = out_dir / "ape" / "v1"
    written = []
    for path in sorted(package.glob("*_pb2*.py*")):
        text = path.read_text(encoding="utf-8")
        path.write_text(_SIBLING_IMPORT.sub("from . import ", text), encoding="utf-8")
        written.append(path)
    for init in (out_dir / "ape" / "__init__.py", package / "__init__.py"):
        init.write_text('"""Generated from apeserve\'s proto/ape/v1 at build time."""\n')
        written.append(init)
    return written


def build_from_checkout(repository: str | Path, scratch: str | Path) -> Path:
    """A runnable copy of the package from a checkout, for tests and tools.

    Copies ``clients/python/apeserve_client`` of ``repository`` into ``scratch`` and
    generates its stubs there, so that nothing is written into the checkout and the
    layout is the one a wheel installs. Returns ``scratch``: put it on ``sys.path``
    and ``import apeserve_client``.
    """
    import shutil

    repository, scratch = Path(repository), Path(scratch)
    package = scratch / "apeserve_client"
    shutil.copytree(
        repository / "clients" / "python" / "apeserve_client",
        package,
        ignore=shutil.ignore_patterns("__pycache__", "ape"),
    )
    generate_stubs(repository / "proto", package)
    return scratch


def runtime_requirements() -> list[str]:
    """The grpcio and protobuf versions that stubs generated here need at run time.

    Generated code refuses to load on older runtimes: ``*_pb2_grpc.py`` on a grpcio
    older than the grpcio-tools that wrote it, ``*_pb2.py`` on a protobuf older than
    the bundled protoc (which grpcio-tools declares as its own protobuf requirement).
    A wheel must therefore require what the tools it was built with require.
    """
    from importlib.metadata import requires, version

    protobuf = [r for r in requires("grpcio-tools") or () if r.startswith("protobuf")]
    return [f"grpcio>={version('grpcio-tools')}", *(protobuf or ["protobuf"])]
