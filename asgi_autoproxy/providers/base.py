"""The provider contract: what the middleware hands a provider and what it gets back."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import httpx

from asgi_autoproxy._headers import filter_upstream_headers
from asgi_autoproxy._http.client_types import UpstreamClient, UpstreamHTTPResponse
from asgi_autoproxy._http.clients import direct_lane
from asgi_autoproxy._http.decoding import decoded_chunks
from asgi_autoproxy.errors import ResponseTooLarge

Endpoint = Literal[
    "chat", "completion", "chat_via_responses", "embeddings", "moderations", "responses", "messages"
]
"""The upstream API a request goes to: OpenAI's chat, completions, embeddings, moderations
and Responses APIs, and Anthropic's native Messages API (``messages``).
``chat_via_responses``: a chat request for a model that only the Responses API serves,
translated both ways by the provider."""
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "chat/completions",
    "completion": "completions",
    "chat_via_responses": "responses",
    "embeddings": "embeddings",
    "moderations": "moderations",
    "responses": "responses",
}
"""Where an OpenAI-compatible server serves each of its endpoints, below its base URL."""
OPENAI_ENDPOINTS: tuple[Endpoint, ...] = (
    "chat",
    "completion",
    "embeddings",
    "moderations",
    "responses",
)
"""What ``OpenAIProvider`` serves by default (``chat_via_responses`` comes with chat)."""


@dataclass(slots=True)
class UpstreamRequest:
    """One call for a provider to make, already validated by the middleware; read-only.

    Not a frozen dataclass only because one costs twice as much to build on every request.
    """

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
    max_response_size: int | None = None
    """The most bytes of a whole answer to read, decoded; pass it to ``read``."""
    max_event_size: int | None = None
    """The most bytes of one SSE event; pass it to ``EventSplitter``."""
    trace_context: tuple[tuple[str, str], ...] = ()
    """W3C trace context headers (``traceparent``, ``tracestate``) to send upstream: the
    caller's own, or the proxy's attempt span's when tracing is on. ``base_headers``
    adds them; a custom provider sends them where it makes its own HTTP call."""
    usage_requested: bool = False
    """The proxy added ``stream_options.include_usage`` to ``body`` (not to ``payload``);
    the usage-only chunk the upstream then sends is left out of the caller's stream."""
    headers: tuple[tuple[str, str], ...] = ()
    """Caller headers the route passes upstream (``anthropic-version``...): lower-case
    names, each once. A provider adds them to its own where it speaks that API."""


def shown_url(url: object) -> str:
    """``url`` as messages and logs may show it: scheme, host, port and path. Never the
    userinfo (``user:pass@``) nor the query or fragment, where Azure and Gemini carry keys."""
    parts = urlsplit(str(url))
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


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
    called: str = ""
    """What was called, safe to show (``"POST http://host:port/v1/chat/completions"``, as
    ``shown_url`` writes it); named in errors about the answer. Empty when unknown."""

    @property
    def is_event_stream(self) -> bool:
        for name, value in self.headers:
            if name == "content-type":
                return value.lower().startswith("text/event-stream")
        return False

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body. Past ``limit`` bytes it raises ``ResponseTooLarge`` and reads
        no further; the caller still calls ``aclose``."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                raise ResponseTooLarge(limit)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @classmethod
    def from_httpx(
        cls, response: UpstreamHTTPResponse, called: str | None = None
    ) -> UpstreamResponse:
        """An ``httpx.Response`` or ``httpx2.Response`` opened with ``stream=True``, unread.

        ``called`` defaults to the method and shown URL of ``response.request``."""
        if called is None:
            try:
                request = response.request
            except RuntimeError:  # a response made by hand, without a request
                called = ""
            else:
                called = f"{request.method} {shown_url(request.url)}"
        return cls(
            status=response.status_code,
            headers=filter_upstream_headers(response.headers.multi_items()),
            chunks=decoded_chunks(response),
            aclose=response.aclose,
            called=called,
        )

    @classmethod
    def from_bytes(
        cls,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
        *,
        called: str = "",
    ) -> UpstreamResponse:
        async def one_chunk() -> AsyncIterator[bytes]:
            yield body

        async def nothing_to_close() -> None:
            return None

        return cls(status, list(headers), one_chunk(), nothing_to_close, called)


@runtime_checkable
class Provider(Protocol):
    """An upstream the middleware can route a model to: ``name``, ``serves`` and ``send``.

    Implement ``send`` to reach a new kind of upstream; see ``OpenAIProvider`` for the
    simplest one. ``client`` is the middleware's shared client, an ``httpx.AsyncClient``
    or, where the app passed one as ``http_client=``, an ``httpx2.AsyncClient``: both have
    the same API. Raise ``TransportError`` or ``TimeoutException`` (httpx's or httpx2's, as
    the clients do) for unreachable or slow upstreams; the middleware turns them into 502
    and 504.

    Anything more is optional, each a capability of its own in ``providers.capabilities``:
    ``models`` (literal names to list on ``/models``), ``endpoints`` (default: chat and
    completion), ``needs_caller_credential`` (default False: the provider holds its own
    key) and ``secrets`` (strings to scrub from answers; default none). They are read
    once, when the middleware is built.
    """

    @property
    def name(self) -> str:
        """Shown in errors, logs and ``x-bt-used-endpoint``; part of the cache key."""
        ...

    def serves(self, model: str) -> bool:
        """Whether this provider answers for ``model``."""
        ...

    async def send(self, request: UpstreamRequest, client: UpstreamClient) -> UpstreamResponse: ...


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


class HTTPProvider:
    """What the built-in providers share: a base URL, an optional server-held key, model
    patterns, static headers, and a repr and name that never show a credential.

    Subclass it for an HTTP upstream and implement ``send``; it is a convenience, not a
    requirement: any object that matches ``Provider`` will do.
    """

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None,
        models: Sequence[str],
        name: str | None,
        headers: Mapping[str, str] | None,
        endpoints: Sequence[Endpoint],
        url_hint: str = "an absolute http(s) URL",
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{self._url_keyword} must be {url_hint}, got {url!r}")
        # Host and port only: credentials in the URL must never become a visible name.
        host = parts.netloc.rpartition("@")[2]
        self._shown_url = shown_url(url).rstrip("/")
        self._called: dict[str, str] = {}  # URL -> "POST <shown URL>", see ``post``
        self._api_key = api_key or None
        self._patterns = ModelPatterns(models)
        self._name = name or host
        self._endpoints = frozenset(endpoints)
        self._static_headers = {k.lower(): v for k, v in (headers or {}).items()}

    _url_keyword = "base_url"

    def __repr__(self) -> str:
        # The key stays out of reprs, and so out of logs and tracebacks.
        key = "server-side" if self._api_key else "pass-through"
        return (
            f"{type(self).__name__}(name={self._name!r}, "
            f"{self._url_keyword}={self._shown_url!r}, key={key})"
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def models(self) -> Sequence[str]:
        return self._patterns.patterns

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        return self._endpoints

    @property
    def needs_caller_credential(self) -> bool:
        return self._api_key is None

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never reach a caller; the middleware scrubs it from bodies."""
        return (self._api_key,) if self._api_key else ()

    def serves(self, model: str) -> bool:
        return self._patterns(model)

    def key_for(self, credential: str | None) -> str | None:
        """The key to send upstream: the server-held one, else the caller's own."""
        return self._api_key or credential

    async def post(
        self, client: UpstreamClient, url: httpx.URL | str, headers: dict[str, str], body: bytes
    ) -> UpstreamResponse:
        """POST ``body`` and return the answer unread; ``headers`` must be lower-case.

        Through the client's direct lane where it has one (see ``_http.clients.DirectLane``),
        else through the client (httpx or httpx2) as any provider would.
        """
        url = str(url)
        called = self._called.get(url)
        if called is None:  # worked out once per URL: a provider calls the same few
            called = f"POST {shown_url(url)}"
            if len(self._called) < 64:
                self._called[url] = called
        lane = direct_lane(client)
        if lane is not None:
            answer = await lane.post(url, headers, body)
            return UpstreamResponse(
                status=answer.status,
                headers=filter_upstream_headers(answer.headers),
                chunks=aiter(answer.body),
                aclose=answer.body.aclose,
                called=called,
            )
        opened: UpstreamHTTPResponse
        if isinstance(client, httpx.AsyncClient):
            upstream = client.build_request("POST", url, content=body, headers=headers)
            opened = await client.send(upstream, stream=True)
        else:  # httpx2: the same calls, its own types
            sent = client.build_request("POST", url, content=body, headers=headers)
            opened = await client.send(sent, stream=True)
        return UpstreamResponse.from_httpx(opened, called)

    def base_headers(self, request: UpstreamRequest) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
            "x-request-id": request.request_id,
            **self._static_headers,
        }
        if request.trace_context:
            headers.update(request.trace_context)
        return headers
