"""The client's one exception type."""

from __future__ import annotations

import grpc

# google.rpc.Code numbers (as BatchCreateContexts reports them) to gRPC status names.
_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class ApeserveError(Exception):
    """A call the server (or the transport) refused.

    Attributes:
        code: the gRPC status code name, e.g. ``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``,
            ``"UNAVAILABLE"`` (server unreachable), ``"DEADLINE_EXCEEDED"``.
        message: the server's explanation, e.g. ``"no context x in namespace 'default'"``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ApeserveError:
        """Converts the exception grpcio raises (also a grpc.Call) into an ApeserveError."""
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        return cls(code.name if code is not None else "UNKNOWN", details or str(error))

    @classmethod
    def from_code_number(cls, code: int, message: str) -> ApeserveError:
        """An error given as a google.rpc.Code number, as in a batch's per-item results."""
        return cls(_CODE_NAMES.get(code, str(code)), message)
