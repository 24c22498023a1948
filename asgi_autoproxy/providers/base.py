"""The provider contract: what the middleware hands a provider and what it gets back."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

from ..headers import filter_upstream_headers

Endpoint = Literal["chat", "completion"]
ENDPOINT_PATHS: dict[Endpoint, str] = {"chat": "chat/completions", "completion": "completions"}


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One call for a provider to make, already validated by the middleware."""

    endpoint: Endpoint
    model: str
    payload: dict[str, Any]
    """The parsed JSON body. Treat it as read-only: the cache key is built from it."""
    body: bytes
    """The caller's JSON body, byte for byte, for providers that forward it unchanged."""
    stream: bool
    credential: str | None
    """The caller's own API key, for providers that hold none of their own."""
    request_id: str
    extra: dict[str, Any] = field(default_factory=dict)
    endpoint_name: str | None = None
    """The provider the caller asked for by name (``x-bt-endpoint-name``), if any."""


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream answer whose body has not been read yet.

    ``headers`` are already filtered down to the ones the caller may see. The body is
    read through ``chunks`` and the connection released by ``aclose``; the middleware
    always calls ``aclose``, also when the caller goes away.
    """

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]

    @property
    def is_event_stream(self) -> bool:
        for name, value in self.headers:
            if name == "content-type":
                return value.lower().startswith("text/event-stream")
        return False

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks]
        return b"".join(parts)

    @classmethod
    def from_httpx(cls, response: httpx.Response) -> UpstreamResponse:
        return cls(
            status=response.status_code,
            headers=filter_upstream_headers(response.headers.multi_items()),
            chunks=response.aiter_bytes(),
            aclose=response.aclose,
        )

    @classmethod
    def from_bytes(
        cls, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()
    ) -> UpstreamResponse:
        async def one_chunk() -> AsyncIterator[bytes]:
            yield body

        async def nothing_to_close() -> None:
            return None

        return cls(status, list(headers), one_chunk(), nothing_to_close)


@runtime_checkable
class Provider(Protocol):
    """An upstream the middleware can route a model to.

    Implement ``send`` to reach a new kind of upstream; see ``OpenAIProvider`` for the
    simplest one. Raise ``httpx.TransportError`` or ``httpx.TimeoutException`` (as httpx
    does) for unreachable or slow upstreams; the middleware turns them into 502 and 504.
    """

    @property
    def name(self) -> str:
        """Shown in errors, logs and ``x-bt-used-endpoint``; part of the cache key."""
        ...

    @property
    def models(self) -> Sequence[str]:
        """Glob patterns of the models this provider serves."""
        ...

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        """The endpoints this provider can serve."""
        ...

    @property
    def needs_caller_credential(self) -> bool:
        """True when the caller's own key is sent upstream (the provider holds none)."""
        ...

    def serves(self, model: str) -> bool: ...

    async def send(
        self, request: UpstreamRequest, client: httpx.AsyncClient
    ) -> UpstreamResponse: ...


class ModelPatterns:
    """Glob matching of model names, shared by the built-in providers."""

    __slots__ = ("_match_all", "_patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, str):
            raise TypeError("models must be a sequence of glob patterns, not a single string")
        self._patterns = tuple(patterns)
        self._match_all = "*" in self._patterns

    @property
    def patterns(self) -> tuple[str, ...]:
        return self._patterns

    def __call__(self, model: str) -> bool:
        return self._match_all or any(fnmatch.fnmatchcase(model, p) for p in self._patterns)
