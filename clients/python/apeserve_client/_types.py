"""Plain Python values the client returns instead of protobuf messages.

Enum values become lower-case strings without their prefix (``KV_STATE_STORED`` is
``"stored"``, ``FINISH_REASON_END_OF_SEQUENCE`` is ``"end_of_sequence"``), like the mode
strings the client takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from google.protobuf.message import Message

from .ape.v1 import context_pb2, generation_pb2
from .errors import ApeserveError


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    # An enum value newer than these stubs has no name: keep the number.
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _finish_reason(value: int) -> str:
    return _enum_name(generation_pb2.FinishReason, value, "FINISH_REASON_")


def _fields(message: Message) -> dict[str, Any]:
    # Every scalar field, zeros included (MessageToDict would leave zeros out, and
    # usage sums are easier with all keys present).
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}


@dataclass
class Context:
    """A stored context (document), as ContextService returns it.

    ``kv_state`` is ``"stored"`` (queries load its KV) or ``"evicted"`` (the next query
    that names it rebuilds the KV). ``created`` is when this id was last stored, in UTC.
    ``text`` is None unless asked for (``Client.get_context(..., include_text=True)``).
    """

    namespace: str
    context_id: str
    token_count: int
    labels: dict[str, str]
    content_hash: str
    kv_state: str
    created: datetime
    text: Optional[str] = None
    #: Its KV never leaves the store (see Client.create_context).
    pinned: bool = False
    #: When it expires (UTC), or None when it never does.
    expires: Optional[datetime] = None

    @classmethod
    def from_proto(cls, message: context_pb2.Context) -> Context:
        return cls(
            namespace=message.namespace,
            context_id=message.context_id,
            token_count=message.token_count,
            labels=dict(message.labels),
            content_hash=message.content_hash,
            kv_state=_enum_name(context_pb2.KvState, message.kv_state, "KV_STATE_"),
            created=message.create_time.ToDatetime(tzinfo=timezone.utc),
            # The server fills text only on request; an empty text is never stored.
            text=message.text or None,
            pinned=message.pinned,
            expires=message.expire_time.ToDatetime(tzinfo=timezone.utc)
            if message.HasField("expire_time")
            else None,
        )


@dataclass
class BatchProgress:
    """One context of a ``Client.batch_create_contexts`` call, and the progress so far.

    Exactly one of ``context`` (stored) and ``error`` (not stored) is set. ``done`` of
    ``total`` contexts are finished (stored or failed) and ``tokens_stored`` tokens are
    stored, counting this one.
    """

    index: int
    context: Optional[Context]
    error: Optional[ApeserveError]
    done: int
    total: int
    tokens_stored: int

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_proto(cls, message: context_pb2.BatchCreateContextsResponse) -> BatchProgress:
        failed = message.WhichOneof("result") == "error"
        return cls(
            index=message.index,
            context=None if failed else Context.from_proto(message.context),
            error=(
                ApeserveError.from_code_number(message.error.code, message.error.message)
                if failed
                else None
            ),
            done=message.done,
            total=message.total,
            tokens_stored=message.tokens_stored,
        )


@dataclass
class GenerateResult:
    """A generated answer.

    Attributes:
        text: the answer, up to (not including) a stop string.
        token_ids: every generated token, a stop string's and end-of-sequence included.
        finish_reason: ``"length"`` (max_tokens or the model's window),
            ``"end_of_sequence"`` or ``"stop"`` (a stop string).
        usage: token counts by origin, the fields of the proto's ``Usage``:
            ``prompt_tokens``, ``context_tokens``, ``context_tokens_device``,
            ``context_tokens_host``, ``context_tokens_store``,
            ``context_tokens_recomputed``, ``prefix_tokens``, ``query_tokens``,
            ``generated_tokens``.
        timings: milliseconds by phase, the fields of the proto's ``Timings``:
            ``queue_ms``, ``kv_load_ms``, ``prefill_ms``, ``time_to_first_token_ms``,
            ``decode_tokens_per_second``, ``total_ms``.
        logprobs: the log-probability of each token of ``token_ids``.
        request_id: the request's id, as the server echoed it.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    usage: dict[str, int]
    timings: dict[str, float]
    logprobs: list[float] = field(default_factory=list)
    request_id: str = ""

    @classmethod
    def from_proto(cls, message: generation_pb2.GenerateResponse) -> GenerateResult:
        return cls(
            text=message.text,
            token_ids=list(message.token_ids),
            finish_reason=_finish_reason(message.finish_reason),
            usage=_fields(message.usage),
            timings=_fields(message.timings),
            logprobs=[entry.logprob for entry in message.logprobs],
            request_id=message.request_id,
        )

    @classmethod
    def from_stream(
        cls, messages: list[generation_pb2.GenerateStreamResponse]
    ) -> GenerateResult:
        """Joins a GenerateStream's messages; the last one must carry ``end``."""
        end = messages[-1].end
        return cls(
            text="".join(m.text for m in messages),
            token_ids=[t for m in messages for t in m.token_ids],
            finish_reason=_finish_reason(end.finish_reason),
            usage=_fields(end.usage),
            timings=_fields(end.timings),
            logprobs=[entry.logprob for m in messages for entry in m.logprobs],
            request_id=messages[-1].request_id,
        )


@dataclass
class ContinuationScore:
    """The teacher-forced log-probabilities of one continuation (``Client.score``).

    ``total_logprob`` is the sum of ``token_logprobs``; ``greedy`` says whether every
    token was the model's most likely one where it stands.
    """

    token_ids: list[int]
    token_logprobs: list[float]
    total_logprob: float
    greedy: bool

    @classmethod
    def from_proto(cls, message: generation_pb2.ContinuationScore) -> ContinuationScore:
        return cls(
            token_ids=list(message.token_ids),
            token_logprobs=list(message.token_logprobs),
            total_logprob=message.total_logprob,
            greedy=message.greedy,
        )

