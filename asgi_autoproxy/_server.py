"""uvicorn's HTTP/1.1 protocols with a deadline and a size cap on each request's head.

uvicorn times nothing between a connection's first byte and its request's last header
line: its keep-alive timeout only runs while a kept-alive connection sits idle. A client
that trickles header bytes holds a connection (and what it has sent) for ever, and under
httptools uvicorn buffers the request line and headers without any size limit.

The subclasses here close both holes:

- **Deadline.** The request line and headers must all arrive within ``header_timeout``
  seconds: from the connection's start for its first request, and from the first byte of
  each next request on a kept-alive connection (and from the answer, when an answer goes
  out before its request's body is all in: the rest of that body counts as waiting for
  the next request). Past it the connection gets a ``408`` in OpenAI's error shape and is
  closed. An idle kept-alive connection stays under uvicorn's keep-alive timeout.
- **Size cap.** Once more than ``max_header_bytes`` of request line and headers have come
  in without their end, the connection gets a ``431`` and is closed, and nothing past the
  cap is handed to the parser. Under h11 the cap is at most h11's own (uvicorn's
  ``h11_max_incomplete_event_size``, 16 KiB by default), so a ``431`` comes instead of
  uvicorn's plain-text ``400``.

The cost is a length added per read while a head is coming in, a clock reading per
request, and one timer per connection at a time, re-armed lazily: a timer that fires
between requests just lapses, so a busy kept-alive connection makes a timer at most once
per ``header_timeout``.

Use them with ``uvicorn.Config(app, http=guarded_http_protocol(...))``, or from uvicorn's
command line with ``--http asgi_autoproxy._server:GuardedHttpToolsProtocol`` (or
``...:GuardedH11Protocol``) for the defaults.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal, cast

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # request line and headers, as sent

HTTPImplementation = Literal["auto", "h11", "httptools"]
HAS_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
LINGER = 2.0  # how long a refused connection drops what the client still sends
_EARLY = 0.005  # a timer may fire this much before its time; count that as on time


def refusal(
    status: int, message: str, code: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole ``connection: close`` response with an OpenAI-shaped error body."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


class _Discard(asyncio.Protocol):
    """What a refused connection becomes: it drops what it reads until the client closes
    or ``LINGER`` seconds pass."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass  # returning None: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class _HeadGuard(asyncio.Protocol):
    """The deadline and the byte count, shared by both protocols.

    Listed before uvicorn's class among the bases, so ``super()`` here is uvicorn's. Its
    state sits in slots: uvicorn's protocols already hold 28 attributes, and past 30
    CPython stops sharing the keys of instance dicts, which slows every attribute."""

    __slots__ = ("_head_bytes", "_head_cap", "_head_since", "_head_timer")

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    # uvicorn's protocols set these.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    server_state: ServerState
    logger: logging.Logger

    _head_since: float | None  # when the head now awaited began; None: none is
    _head_timer: asyncio.TimerHandle | None
    _head_bytes: int  # bytes of the awaited head so far
    _head_cap: int

    def _guard(self, head_cap: int) -> None:
        """Set up on a new connection, whose first head is awaited from now."""
        self._head_cap = head_cap
        self._head_bytes = 0
        self._head_since = None
        self._head_timer = None
        self._await_head()

    def _await_head(self) -> None:
        """Start the head's clock, unless it runs already."""
        if self._head_since is None:
            self._head_since = self.loop.time()
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout, self._head_deadline)

    def _stop_guard(self) -> None:
        self._head_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport.is_closing():
            return  # between requests: the timer lapses, and the next head arms another
        left = since + self.header_timeout - self.loop.time()
        if left > _EARLY:
            self._head_timer = self.loop.call_later(left, self._head_deadline)
            return
        self._head_since = None
        if self._close_after_response():
            return  # a pipelined head is late: the answer in progress ends the connection
        message = f"The request headers did not arrive within {self.header_timeout:g} s."
        self._refuse(408, message, "request_timeout")

    def _over_cap(self, data: bytes) -> None:
        """``data`` takes the awaited head past the cap: hand the parser the bytes up to
        the cap, then refuse if the head has still not ended, else go on with the rest."""
        fits = len(data) - (self._head_bytes - self._head_cap)
        # A read that holds a head and a large body lands here too: split it without
        # copying. Both parsers take any bytes-like object and keep no reference to it.
        view = cast(bytes, memoryview(data))
        if fits > 0:
            super().data_received(view[:fits])
            if self.transport.is_closing():
                return
        if self._head_bytes <= self._head_cap:  # reset: that head ended within the cap
            self.data_received(view[fits:])
            return
        if self._close_after_response():  # a pipelined head: stop reading it
            self.transport.pause_reading()
            return
        message = (
            f"The request line and headers are larger than the server's limit "
            f"of {self._head_cap} bytes."
        )
        self._refuse(431, message, "request_header_fields_too_large")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer and close. The write side shuts at once, so the client reads the answer
        and an end of file; what it still sends is read and dropped for up to ``LINGER``
        seconds, as closing with unread bytes would reset the connection and could
        discard the answer before the client reads it."""
        self._stop_guard()
        self.logger.warning("%s Answered %d and closed.", message, status)
        transport = self.transport
        transport.write(refusal(status, message, code, self.server_state.default_headers))
        if not transport.can_write_eof():  # TLS
            transport.close()
            return
        transport.write_eof()
        self.server_state.connections.discard(self)
        transport.set_protocol(_Discard(transport, self.loop))
        transport.resume_reading()

    def _close_after_response(self) -> bool:
        """If a response is in progress, close the connection once it ends; say so."""
        raise NotImplementedError


class GuardedH11Protocol(_HeadGuard, H11Protocol):
    """uvicorn's h11 protocol, with the head deadline and size cap."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        H11Protocol.connection_made(self, transport)
        h11_cap = self.config.h11_max_incomplete_event_size
        limit = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if h11_cap is None else h11_cap
        self._guard(min(self.max_header_bytes, limit))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_guard()
        H11Protocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:  # these bytes are (part of) a request's head
            if self._head_since is None:
                self._await_head()
            self._head_bytes += len(data)
            if self._head_bytes > self._head_cap:
                self._over_cap(data)
                return
        elif state is h11.SEND_BODY and self._head_since is None and self.cycle.response_complete:
            self._await_head()  # the rest of a body already answered: as good as a head
        H11Protocol.data_received(self, data)

    def handle_events(self) -> None:
        cycle = self.cycle
        H11Protocol.handle_events(self)
        if self.cycle is not cycle:  # uvicorn made a cycle: a whole head came in
            self._head_since = None  # the timer, if any, lapses when it fires
            self._head_bytes = 0

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_guard()
        H11Protocol.handle_websocket_upgrade(self, event)

    def _close_after_response(self) -> bool:
        if self.cycle is None or self.cycle.response_complete:
            return False
        self.cycle.keep_alive = False
        return True


if TYPE_CHECKING or HAS_HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_HeadGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol, with the head deadline and size cap."""

        __slots__ = ("_counting",)

        _counting: bool  # whether reads now go to a head (not to a body)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            HttpToolsProtocol.connection_made(self, transport)
            self._counting = True
            self._guard(self.max_header_bytes)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_guard()
            HttpToolsProtocol.connection_lost(self, exc)

        def data_received(self, data: bytes) -> None:
            if self._counting:  # these bytes are (part of) a request's head
                if self._head_since is None:
                    self._await_head()
                self._head_bytes += len(data)
                if self._head_bytes > self._head_cap:
                    self._over_cap(data)
                    return
            elif self._head_since is None and self.cycle.response_complete:
                self._await_head()  # the rest of a body already answered: as good as a head
            HttpToolsProtocol.data_received(self, data)

        def on_headers_complete(self) -> None:
            self._head_since = None  # the timer, if any, lapses when it fires
            self._head_bytes = 0
            self._counting = False
            HttpToolsProtocol.on_headers_complete(self)

        def on_message_complete(self) -> None:
            HttpToolsProtocol.on_message_complete(self)
            self._counting = True

        def _close_after_response(self) -> bool:
            if self.cycle is None or self.cycle.response_complete:
                return False
            self.cycle.keep_alive = False
            return True


def guarded_http_protocol(
    http: HTTPImplementation = "auto",
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's ``http`` implementation
    (``auto``: httptools when installed, else h11) with the given head deadline and cap."""
    if not 0 < header_timeout < float("inf"):
        raise ValueError("header_timeout must be a positive number of seconds")
    if max_header_bytes < 1:
        raise ValueError("max_header_bytes must be a positive number of bytes")
    if http not in ("auto", "h11", "httptools"):
        raise ValueError(f"http must be 'auto', 'h11' or 'httptools', got {http!r}")
    if http == "httptools" and not HAS_HTTPTOOLS:
        raise ValueError("http='httptools' needs httptools: pip install httptools")
    h11_only = http == "h11" or not HAS_HTTPTOOLS
    base: type[_HeadGuard] = GuardedH11Protocol if h11_only else GuardedHttpToolsProtocol
    settings = {
        "header_timeout": float(header_timeout),
        "max_header_bytes": max_header_bytes,
        "__module__": __name__,
    }
    return type(base.__name__, (base,), settings)
