"""A typed, blocking client for apeserve's gRPC API (proto/ape/v1/*.proto)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Callable, Literal, Optional, TextIO, TypeVar, Union

import grpc
from google.protobuf import field_mask_pb2

from ._types import BatchProgress, Context, ContinuationScore, GenerateResult
from .ape.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    encoding_pb2,
    generation_pb2,
    generation_pb2_grpc,
)
from .errors import ApeserveError

Mode = Literal["sequential", "parallel", "ape"]
ApeForm = Literal["multiplicative", "additive"]
#: A document sent with a request: its text, or a mapping with the fields of the
#: proto's InlineContext (``text``, and optionally ``context_id``, ``store``, ``labels``).
InlineContext = Union[str, Mapping[str, Any]]
#: A context for batch_create_contexts: its text, or a mapping with ``text`` and
#: optionally ``context_id``, ``labels``, ``system_prompt``.
ContextSpec = Union[str, Mapping[str, Any]]

_MODES = {
    "sequential": generation_pb2.ENCODING_MODE_SEQUENTIAL,
    "parallel": generation_pb2.ENCODING_MODE_PARALLEL,
    "ape": generation_pb2.ENCODING_MODE_APE,
}
_APE_FORMS = {
    "multiplicative": encoding_pb2.APE_SCALE_FORM_MULTIPLICATIVE,
    "additive": encoding_pb2.APE_SCALE_FORM_ADDITIVE,
}
# A context's text may be up to the server's --max_context_bytes (16 MiB by default), and
# GetContext returns it: lift grpcio's 4 MiB default limit on received messages.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]

_T = TypeVar("_T")


def _call(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Runs one RPC (or one step of a stream), raising ApeserveError on failure."""
    try:
        return function(*args, **kwargs)
    except grpc.RpcError as error:
        raise ApeserveError.from_rpc_error(error) from None


def _choice(value: str, choices: Mapping[str, _T], what: str) -> _T:
    try:
        return choices[value]
    except KeyError:
        raise ValueError(f"{what} must be one of {sorted(choices)}, not {value!r}") from None


def _unset_none(**fields: Any) -> dict[str, Any]:
    # Fields the caller left as None stay unset in the message, so that the proto3
    # `optional` fields report no presence and the server applies its defaults.
    return {name: value for name, value in fields.items() if value is not None}


class GenerateStream(Iterator[str]):
    """An answer being generated: iterate over it for the pieces of text as they come.

    Pieces are non-empty strings whose concatenation is the whole answer (the text of
    ``Client.generate`` for the same request). Once the iteration has finished,
    ``result`` holds the GenerateResult (token ids, finish reason, usage, timings).
    Leaving a ``with`` block, or calling ``cancel()``, before the end cancels the
    generation on the server.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._messages: list[generation_pb2.GenerateStreamResponse] = []
        self.result: Optional[GenerateResult] = None

    def __iter__(self) -> GenerateStream:
        return self

    def __next__(self) -> str:
        while self.result is None:
            try:
                message = _call(next, self._call)
            except StopIteration:
                raise ApeserveError(
                    "UNKNOWN", "the stream ended without its last message"
                ) from None
            self._messages.append(message)
            if message.HasField("end"):
                self.result = GenerateResult.from_stream(self._messages)
            if message.text:
                return message.text
        raise StopIteration

    def cancel(self) -> None:
        """Stops the generation (the server counts it as cancelled)."""
        if self.result is None:
            self._call.cancel()

    def __enter__(self) -> GenerateStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else \
            _CallDetails(details.method, details.timeout, metadata, details.credentials,
                         details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = (
            credentials, wait_for_ready, compression)


class Client:
    """A connection to an apeserve server.

    Every call blocks until the server answers and raises ApeserveError when it fails.
    Contexts are read and written in the client's ``namespace``.

    Args:
        target: ``host:port`` of the server.
        namespace: the namespace of the contexts this client names.
        timeout: deadline of each call in seconds; None waits as long as it takes (for
            the streaming calls, the deadline covers the whole stream).
        token: the API token, sent with every call as ``authorization: Bearer <token>``
            (for servers started with ``--auth_tokens_file``); None: no token.
        credentials: TLS credentials for ``target``, e.g.
            ``grpc.ssl_channel_credentials(root_certificates=ca_pem)`` (add
            ``private_key`` and ``certificate_chain`` for mutual TLS); None: plaintext.
        channel: a channel to use instead of one to ``target`` (for custom options);
            ``close()`` leaves it open.

    Usable as a context manager, which closes the client on exit.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        namespace: str = "default",
        timeout: Optional[float] = None,
        *,
        token: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel: Optional[grpc.Channel] = None,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self._owns_channel = channel is None
        if channel is None:
            channel = (grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
                       if credentials is not None
                       else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS))
        if token is not None:
            channel = grpc.intercept_channel(channel, _BearerToken(token))
        self._channel = channel
        self._contexts = context_pb2_grpc.ContextServiceStub(self._channel)
        self._generation = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel (unless it was passed in); cancels calls in progress."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Contexts ---------------------------------------------------------------------

    def create_context(
        self,
        text: str,
        context_id: str = "",
        labels: Optional[Mapping[str, str]] = None,
        system_prompt: str = "",
        *,
        pinned: bool = False,
        ttl: Optional[float] = None,
    ) -> Context:
        """Stores a document and its KV; returns once it is stored.

        An empty ``context_id`` lets the server choose one (returned). Storing an id
        again replaces that context. ``system_prompt`` encodes the KV after that system
        prompt, for queries that pass the same one. ``pinned`` keeps its KV in the
        store whatever the store's budget; ``ttl`` (seconds) deletes it, KV and all,
        that long after it is stored.
        """
        request = self._create_request(text, context_id, labels, system_prompt)
        request.pinned = pinned
        if ttl is not None:
            request.ttl.FromNanoseconds(round(ttl * 1e9))
        return Context.from_proto(
            _call(self._contexts.CreateContext, request, timeout=self.timeout)
        )

    def upload_context(
        self,
        text_or_file: Union[str, bytes, os.PathLike, BinaryIO, TextIO],
        context_id: str = "",
        labels: Optional[Mapping[str, str]] = None,
        system_prompt: str = "",
        chunk_bytes: int = 1 << 20,
    ) -> Context:
        """create_context for large documents: sends the text in chunks of ``chunk_bytes``.

        ``text_or_file`` is the text (``str``; never taken for a file name), UTF-8
        ``bytes``, a path (``pathlib.Path`` or other ``os.PathLike``) of a UTF-8 file,
        or an open file (binary or text), read from where it stands. Files are read
        chunk by chunk as they are sent, not all at once.
        """
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        metadata = self._create_request("", context_id, labels, system_prompt)

        def requests() -> Iterator[context_pb2.UploadContextRequest]:
            yield context_pb2.UploadContextRequest(metadata=metadata)
            for chunk in _chunks(text_or_file, chunk_bytes):
                yield context_pb2.UploadContextRequest(text_chunk=chunk)

        return Context.from_proto(
            _call(self._contexts.UploadContext, requests(), timeout=self.timeout)
        )

    def batch_create_contexts(self, contexts: Iterable[ContextSpec]) -> Iterator[BatchProgress]:
        """Stores many contexts in one call, yielding each one's result as it is stored.

        Each item is a text or a mapping with ``text`` and optionally ``context_id``,
        ``labels`` and ``system_prompt`` (as create_context takes them). A context that
        fails is reported in its BatchProgress (``error``) and the others go on; an
        ApeserveError is raised only when the call as a whole fails. The items are all
        sent in one request, so they are read before the first result comes.
        """
        request = context_pb2.BatchCreateContextsRequest(
            contexts=[
                self._create_request(spec)
                if isinstance(spec, str)
                else self._create_request(
                    spec["text"],
                    spec.get("context_id", ""),
                    spec.get("labels"),
                    spec.get("system_prompt", ""),
                )
                for spec in contexts
            ]
        )
        responses = _call(self._contexts.BatchCreateContexts, request, timeout=self.timeout)
        while True:
            try:
                response = _call(next, responses)
            except StopIteration:
                return
            yield BatchProgress.from_proto(response)

    def get_context(self, context_id: str, include_text: bool = False) -> Context:
        """One context's metadata, and its text when ``include_text``.

        Raises ApeserveError with code ``"NOT_FOUND"`` for an unknown id.
        """
        request = context_pb2.GetContextRequest(
            namespace=self.namespace, context_id=context_id, include_text=include_text
        )
        return Context.from_proto(
            _call(self._contexts.GetContext, request, timeout=self.timeout)
        )

    def list_contexts(
        self, label_filter: Optional[Mapping[str, str]] = None, page_size: int = 100
    ) -> Iterator[Context]:
        """Every context of the namespace (holding all of ``label_filter``'s labels).

        In id order; pages of ``page_size`` (1 to 1000) are fetched as the iteration
        goes, so contexts stored or deleted meanwhile may or may not appear.
        """
        request = context_pb2.ListContextsRequest(
            namespace=self.namespace, page_size=page_size, label_filter=label_filter or {}
        )
        while True:
            page = _call(self._contexts.ListContexts, request, timeout=self.timeout)
            for message in page.contexts:
                yield Context.from_proto(message)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def update_labels(self, context_id: str, labels: Mapping[str, str]) -> Context:
        """Replaces a context's labels with ``labels`` (all of them; ``{}`` clears them)."""
        request = context_pb2.UpdateContextRequest(
            context=context_pb2.Context(
                namespace=self.namespace, context_id=context_id, labels=labels
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
        return Context.from_proto(
            _call(self._contexts.UpdateContext, request, timeout=self.timeout)
        )

    def update_retention(
        self,
        context_id: str,
        *,
        pinned: Optional[bool] = None,
        ttl: Optional[float] = None,
        never_expire: bool = False,
    ) -> Context:
        """Changes how long a context and its KV are kept; unset arguments stay as they are.

        ``pinned``: keep (True) or stop keeping (False) its KV whatever the store's
        budget. ``ttl``: expire that many seconds from now. ``never_expire``: drop an
        expiry set before.
        """
        context = context_pb2.Context(namespace=self.namespace, context_id=context_id)
        paths = []
        if pinned is not None:
            context.pinned = pinned
            paths.append("pinned")
        if ttl is not None and never_expire:
            raise ValueError("give ttl or never_expire, not both")
        if ttl is not None:
            context.ttl.FromNanoseconds(round(ttl * 1e9))
            paths.append("ttl")
        if never_expire:
            paths.append("expire_time")
        if not paths:
            raise ValueError("nothing to change: give pinned, ttl or never_expire")
        request = context_pb2.UpdateContextRequest(
            context=context, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return Context.from_proto(
            _call(self._contexts.UpdateContext, request, timeout=self.timeout)
        )

    def delete_context(self, context_id: str) -> bool:
        """Deletes a context; returns whether it existed."""
        request = context_pb2.DeleteContextRequest(
            namespace=self.namespace, context_id=context_id
        )
        return _call(self._contexts.DeleteContext, request, timeout=self.timeout).existed

    # Generation -------------------------------------------------------------------

    def generate(
        self,
        query: str,
        context_ids: Sequence[str] = (),
        *,
        inline_contexts: Sequence[InlineContext] = (),
        mode: Mode = "ape",
        system_prompt: str = "",
        temperature: Optional[float] = None,
        max_tokens: Optional[int] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        ape_temperature: Optional[float] = None,
        ape_scale: Optional[float] = None,
        ape_form: Optional[ApeForm] = None,
        request_id: str = "",
    ) -> GenerateResult:
        """Answers ``query`` with the stored contexts ``context_ids`` (and inline ones).

        ``mode``: ``"sequential"`` recomputes the contexts as one causal sequence (the
        quality reference), ``"parallel"`` loads their stored KV side by side, ``"ape"``
        does so with APE's attention temperature and scale (``ape_*``; unset ones take
        the server's defaults, see ``server_info().ape_defaults``).

        Sampling values left as None take the server's defaults: greedy
        (``temperature`` 0), 256 tokens at most, no top-k/top-p/min-p filtering, no
        repetition penalty, seed 0. Generation stops before the first ``stop`` string.
        """
        request = self._generate_request(**_arguments(locals()))
        return GenerateResult.from_proto(
            _call(self._generation.Generate, request, timeout=self.timeout)
        )

    def stream(
        self,
        query: str,
        context_ids: Sequence[str] = (),
        *,
        inline_contexts: Sequence[InlineContext] = (),
        mode: Mode = "ape",
        system_prompt: str = "",
        temperature: Optional[float] = None,
        max_tokens: Optional[int] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        ape_temperature: Optional[float] = None,
        ape_scale: Optional[float] = None,
        ape_form: Optional[ApeForm] = None,
        request_id: str = "",
    ) -> GenerateStream:
        """generate(), streamed: iterate over the result for the text as it comes.

        ``"".join(client.stream(...))`` is the answer's text; the GenerateStream's
        ``result`` holds the whole GenerateResult once the iteration has finished::

            with client.stream("Why?", ["doc-1"]) as answer:
                for piece in answer:
                    print(piece, end="", flush=True)
            print(answer.result.usage)
        """
        request = self._generate_request(**_arguments(locals()))
        return GenerateStream(self._generation.GenerateStream(request, timeout=self.timeout))

    def score(
        self,
        query: str,
        continuations: Sequence[str],
        context_ids: Sequence[str] = (),
        *,
        inline_contexts: Sequence[InlineContext] = (),
        mode: Mode = "ape",
        system_prompt: str = "",
        ape_temperature: Optional[float] = None,
        ape_scale: Optional[float] = None,
        ape_form: Optional[ApeForm] = None,
        request_id: str = "",
    ) -> list[ContinuationScore]:
        """Log-probabilities of each continuation as the answer to ``query``.

        Each continuation is scored on its own, with the contexts and mode as in
        generate(); the result has one ContinuationScore per continuation, in order.
        Comparing ``total_logprob`` ranks candidate answers.
        """
        request = generation_pb2.ScoreRequest(
            request_id=request_id,
            namespace=self.namespace,
            context_ids=_strings(context_ids, "context_ids"),
            inline_contexts=[_inline_context(item) for item in inline_contexts],
            query=query,
            system_prompt=system_prompt,
            mode=_choice(mode, _MODES, "mode"),
            ape=_ape_parameters(ape_temperature, ape_scale, ape_form),
            continuations=_strings(continuations, "continuations"),
        )
        response = _call(self._generation.Score, request, timeout=self.timeout)
        return [ContinuationScore.from_proto(score) for score in response.scores]

    # Administration -----------------------------------------------------------------
    # These return the response messages as they are: their fields are documented in
    # proto/ape/v1/admin.proto (and typed in apeserve_client/ape/v1/admin_pb2.pyi).

    def server_info(self) -> admin_pb2.ServerInfo:
        """Version, device, model file, data directory and APE defaults of the server."""
        return _call(self._admin.GetServerInfo, admin_pb2.GetServerInfoRequest(), timeout=self.timeout)

    def model_info(self) -> admin_pb2.ModelInfo:
        """The served model: architecture, context_length, vocabulary, layers, dtype..."""
        return _call(self._admin.GetModelInfo, admin_pb2.GetModelInfoRequest(), timeout=self.timeout)

    def stats(self) -> admin_pb2.Stats:
        """Counters since the server started: calls by method and code, tokens, tiers."""
        return _call(self._admin.GetStats, admin_pb2.GetStatsRequest(), timeout=self.timeout)

    def load(self) -> admin_pb2.Load:
        """Requests queued and running now, the server's limits, and whether it drains."""
        return _call(self._admin.GetLoad, admin_pb2.GetLoadRequest(), timeout=self.timeout)

    def health(self) -> bool:
        """Whether the server reports SERVING on the standard grpc.health.v1 service.

        False, not an exception, when it is not serving or cannot be reached.
        """
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            # Without grpcio-health-checking, call the method by hand: the request
            # (service "") encodes to no bytes, and SERVING (1) in field 1 to 08 01.
            check: grpc.UnaryUnaryMultiCallable[None, bool] = self._channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=lambda _: b"",
                response_deserializer=lambda data: data == b"\x08\x01",
            )
            try:
                return check(None, timeout=self.timeout)
            except grpc.RpcError:
                return False
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    # Requests -----------------------------------------------------------------------

    def _create_request(
        self,
        text: str,
        context_id: str = "",
        labels: Optional[Mapping[str, str]] = None,
        system_prompt: str = "",
    ) -> context_pb2.CreateContextRequest:
        return context_pb2.CreateContextRequest(
            namespace=self.namespace,
            context_id=context_id,
            text=text,
            labels=labels or {},
            system_prompt=system_prompt,
        )

    def _generate_request(
        self,
        query: str,
        context_ids: Sequence[str],
        inline_contexts: Sequence[InlineContext],
        mode: str,
        system_prompt: str,
        stop: Sequence[str],
        ape_temperature: Optional[float],
        ape_scale: Optional[float],
        ape_form: Optional[str],
        request_id: str,
        **sampling: Any,
    ) -> generation_pb2.GenerateRequest:
        return generation_pb2.GenerateRequest(
            request_id=request_id,
            namespace=self.namespace,
            context_ids=_strings(context_ids, "context_ids"),
            inline_contexts=[_inline_context(item) for item in inline_contexts],
            query=query,
            system_prompt=system_prompt,
            mode=_choice(mode, _MODES, "mode"),
            ape=_ape_parameters(ape_temperature, ape_scale, ape_form),
            sampling=generation_pb2.SamplingParameters(
                stop=_strings(stop, "stop"), **_unset_none(**sampling)
            ),
        )


def _arguments(local_variables: dict[str, Any]) -> dict[str, Any]:
    # generate() and stream() share their long signature and pass their parameters on
    # by name: called first thing, their locals() are exactly their parameters.
    return {name: value for name, value in local_variables.items() if name != "self"}


def _strings(values: Sequence[str], what: str) -> list[str]:
    # A lone string is a sequence too: catch generate("q", "doc-1") early instead of
    # sending the contexts "d", "o", "c"...
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not a string")
    return list(values)


def _ape_parameters(
    temperature: Optional[float], scale: Optional[float], form: Optional[str]
) -> generation_pb2.ApeParameters:
    return generation_pb2.ApeParameters(
        **_unset_none(temperature=temperature, scale=scale),
        form=encoding_pb2.APE_SCALE_FORM_UNSPECIFIED
        if form is None
        else _choice(form, _APE_FORMS, "ape_form"),
    )


def _inline_context(item: InlineContext) -> generation_pb2.InlineContext:
    if isinstance(item, str):
        return generation_pb2.InlineContext(text=item)
    return generation_pb2.InlineContext(**item)


def _chunks(
    source: Union[str, bytes, os.PathLike, BinaryIO, TextIO], size: int
) -> Iterator[bytes]:
    """The UTF-8 bytes of ``source`` in pieces of at most ``size`` bytes.

    Pieces may split a character: the server joins them before decoding.
    """
    if isinstance(source, str):
        source = source.encode("utf-8")
    if isinstance(source, bytes):
        for start in range(0, len(source), size):
            yield source[start : start + size]
        return
    if isinstance(source, os.PathLike):
        with open(source, "rb") as file:
            yield from _chunks(file, size)
        return
    while piece := source.read(size):
        # A text file reads characters: send their UTF-8, still in pieces of size.
        if isinstance(piece, str):
            yield from _chunks(piece, size)
        else:
            yield piece
