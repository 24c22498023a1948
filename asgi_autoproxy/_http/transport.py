"""An ``httpx`` transport that moves bytes with aiohttp.

httpx stays the API that users and providers see; only the wire work changes hands.
httpx's own transport (httpcore) costs about 2 ms of CPU per proxied request, and more
as concurrency rises; aiohttp's connection pool and C parser cost a fraction of that.

Behaviour that differs from httpx's own transport, on purpose:

- The body comes back exactly as sent (no decompression here). httpx's
  ``Response.aiter_bytes`` decodes ``content-encoding`` itself, as it does with its own
  transport, so callers see the same bytes either way.
- HTTP/1.1 only. No proxies from the environment. Cookies are not kept.
- Timeouts come from ``request.extensions["timeout"]`` (what ``httpx.Timeout`` sets):
  ``connect`` bounds the TCP/TLS handshake, ``pool`` bounds waiting for a free
  connection, ``read`` bounds each wait for data. aiohttp has no ``write`` timeout.
- ``httpx.Limits.max_connections`` caps open connections; idle ones live for
  ``keepalive_expiry`` seconds. aiohttp has no separate keep-alive count.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport", "ConnectionCounts", "DirectResponse"]

_HTTP11 = {"http_version": b"HTTP/1.1"}
_DEFAULT_LIMITS = httpx.Limits(max_connections=512)
_TimeoutKey = tuple[float | None, float | None, float | None]


class ConnectionCounts(NamedTuple):
    idle: int
    """Open keep-alive connections waiting in the pool."""
    in_use: int
    """Connections carrying a request or an unread response right now."""


@dataclass(slots=True)
class DirectResponse:
    """An answer from ``AiohttpTransport.post``: status and headers, body not read yet."""

    status: int
    headers: list[tuple[str, str]]
    body: _ResponseStream
    """Iterate for the (decompressed) body as it arrives; always ``aclose`` it."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Use as ``httpx.AsyncClient(transport=AiohttpTransport())``.

    The aiohttp session is made on the first request, inside the running event loop,
    and closed by ``aclose`` (``AsyncClient.aclose`` calls it).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._limits = limits
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[_TimeoutKey, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            ssl=self._verify,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    def _client_timeout(self, given: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """``given`` is what ``httpx.Timeout.as_dict()`` returns."""
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            # aiohttp's ``connect`` covers waiting for the pool *and* connecting.
            both = None if pool is None or connect is None else pool + connect
            timeout = aiohttp.ClientTimeout(
                total=None, connect=both, sock_connect=connect, sock_read=read
            )
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    def _url(self, text: str) -> URL:
        """``text`` must be percent-encoded already, as httpx's URLs are."""
        # A provider calls the same few URLs over and over: parse each once.
        url = self._urls.get(text)
        if url is None:
            url = URL(text, encoded=True)  # httpx has already percent-encoded it
            if len(self._urls) < 256:
                self._urls[text] = url
        return url

    def _live_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = self._session = self._open_session()
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._live_session()
        try:
            data: Any = request.content or None
        except httpx.RequestNotRead:
            data = _body_chunks(request)
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name != "transfer-encoding"  # aiohttp frames a streamed body itself
        ]
        with _as_httpx_errors(request):
            response = await session.request(
                request.method,
                self._url(str(request.url)),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._client_timeout(request.extensions.get("timeout", {})),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        extensions = _HTTP11
        if response.reason:
            extensions = {**_HTTP11, "reason_phrase": response.reason.encode("latin-1")}
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request),
            extensions=extensions,
        )

    async def post(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout: httpx.Timeout,  # noqa: ASYNC109 - httpx's per-phase limits, handed to aiohttp
    ) -> DirectResponse:
        """POST without building httpx's Request and Response objects.

        About three times cheaper per call than going through ``httpx.AsyncClient``.
        The caller sends every header it wants (aiohttp fills in Host, Content-Length
        and its own defaults only for those left out); ``url`` must be percent-encoded. The body is
        decompressed here, and errors are raised as httpx's, like ``handle_async_request``.
        """
        session = self._live_session()
        try:  # as _as_httpx_errors does; spelt out, as it runs on every proxied request
            response = await session.request(
                "POST",
                self._url(url),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self._client_timeout(timeout.as_dict()),
                auto_decompress=True,
            )
        except aiohttp.ClientError as exc:
            raise _httpx_error(exc, None) from exc
        headers_in = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        return DirectResponse(response.status, headers_in, _ResponseStream(response, None))

    def connection_counts(self) -> ConnectionCounts:
        """Upstream connections open now, for leak checks and metrics."""
        session = self._session
        if session is None or session.closed:
            return ConnectionCounts(0, 0)
        # aiohttp has no public count; these two containers are its pool.
        connector: Any = session.connector
        idle = sum(len(conns) for conns in connector._conns.values())
        return ConnectionCounts(idle, len(connector._acquired))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseStream(httpx.AsyncByteStream):
    """Hands chunks on as they arrive; closing early drops the connection."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | None) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:  # as _as_httpx_errors does; spelt out, as it runs on every chunk
                chunk = await content.readany()
            except aiohttp.ClientError as exc:
                raise _httpx_error(exc, self._request) from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        response = self._response
        if response.content.is_eof():
            response.release()
        else:
            # Unread body: the connection cannot be reused, and the upstream must see
            # the caller has gone so it stops generating.
            response.close()


async def _body_chunks(request: httpx.Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream:  # type: ignore[union-attr]
        yield chunk


@contextmanager
def _as_httpx_errors(request: httpx.Request | None) -> Iterator[None]:
    """Raise what httpx's own transport would, so callers' ``except httpx...`` still work."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc, request) from exc


def _httpx_error(exc: aiohttp.ClientError, request: httpx.Request | None) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(
        exc,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientConnectionError):
        kind = httpx.ReadError
    else:
        kind = httpx.TransportError
    return kind(message, request=request)
