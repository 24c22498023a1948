"""The way back to one caller: per-request state and the ASGI messages of its answer.

Kept apart from the middleware so that the pipeline writes the answer without reaching
back into the middleware; nothing here is kept on the middleware itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from asgi_autoproxy._asgi import JSON_CONTENT_TYPE, Message, Receive, Send, encode_headers
from asgi_autoproxy._gate.auth import Caller
from asgi_autoproxy._upstream.dialects import OPENAI, Dialect
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.observability import RequestTrace

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def ignore() -> None:
    return None


@dataclass(slots=True)
class Call:
    """Per-request state and the way back to the caller; never kept on the middleware."""

    request_id: str
    send: Send
    caller: Caller | None = None
    """Who asked, once authenticated; its id (never the credential) goes to logs and hooks."""
    started: bool = False
    connected: bool = True
    on_gone: Callable[[], None] = ignore
    trace: RequestTrace = field(default_factory=RequestTrace)
    dialect: Dialect = OPENAI
    """The API the caller speaks (its route's): the proxy's errors are written in it."""

    def gone(self) -> None:
        if self.connected:
            self.connected = False
            self.on_gone()

    async def _send(self, message: Message) -> None:
        if not self.connected:
            return
        try:
            await self.send(message)
        except OSError:  # some servers raise once the client has gone
            self.gone()

    async def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole response. ``headers`` (encoded, and handed over: they are appended to)
        get the request id and content-length here."""
        self.started = True
        self.trace.status = status
        headers.append((b"x-request-id", self.request_id.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.trace.completed = self.connected

    async def start_stream(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.trace.status, self.trace.streaming = 200, True
        encoded = [*_SSE_HEADERS, *headers, (b"x-request-id", self.request_id.encode())]
        await self._send({"type": "http.response.start", "status": 200, "headers": encoded})

    async def emit(self, data: bytes) -> None:
        if self.trace.first_byte_at is None:
            self.trace.first_byte_at = time.perf_counter()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self, tail: bytes) -> None:
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})
        self.trace.completed = self.connected


async def watch_disconnect(receive: Receive, call: Call) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            call.gone()
            return


async def send_json(call: Call, status: int, body: bytes) -> None:
    await call.respond(status, body, [JSON_CONTENT_TYPE])


async def send_error(
    call: Call, error: ProxyError, *, label: tuple[bytes, bytes] | None = None
) -> None:
    call.trace.error = error.code
    if call.started:
        # Too late for a status: the stream already ended or carries its own error.
        return
    headers = [JSON_CONTENT_TYPE, *encode_headers(error.headers)]
    if label is not None:
        headers.append(label)
    await call.respond(error.status, call.dialect.error_body(error), headers)
