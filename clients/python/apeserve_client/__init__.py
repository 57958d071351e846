"""Python client of apeserve, the gRPC inference server with pre-encoded contexts.

    from apeserve_client import Client

    with Client("127.0.0.1:50051") as client:
        client.create_context("Paris is the capital of France.", context_id="paris")
        print(client.generate("What is the capital of France?", ["paris"]).text)

The generated gRPC stubs are in ``apeserve_client.ape.v1`` (``context_pb2``,
``generation_pb2``, ``admin_pb2`` and their ``*_pb2_grpc`` services), for what the
wrapper does not cover.
"""

from ._types import BatchProgress, Context, ContinuationScore, GenerateResult
from .client import Client, GenerateStream
from .errors import ApeserveError

__all__ = [
    "ApeserveError",
    "BatchProgress",
    "Client",
    "Context",
    "ContinuationScore",
    "GenerateResult",
    "GenerateStream",
]
__version__ = "0.1.0"
