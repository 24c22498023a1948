"""A fault-injecting OpenAI-compatible upstream: raw HTTP/1.1 over asyncio on 127.0.0.1.

Some faults (a reset before the headers, a stall mid-stream) need control of the
socket that an ASGI server would not give, so this speaks just enough HTTP/1.1 by
hand: one request at a time per connection, keep-alive, chunked SSE. The fault is
picked by a ``fault`` field in the JSON body, which the proxy forwards unchanged:

    {"fault": "reset_mid_stream"}
    {"fault": {"kind": "ok", "chunks": 20, "delay": 0.01}}
    {"fault": {"kind": "stall", "wait": 60, "ping": 0.2}}

It counts connections and records, per request id, when and how each exchange
ended, so tests can check that the proxy closes what it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FAULTS = (
    "ok",
    "reset_before_headers",
    "reset_mid_body",
    "reset_mid_stream",
    "slow_headers",
    "slow_body",
    "http_500",
    "http_502",
    "http_503",
    "rate_limited",
    "malformed_json",
    "malformed_sse",
    "error_event",
    "no_done",
    "stall",
)
STREAM_ONLY = frozenset({"reset_mid_stream", "malformed_sse", "error_event", "no_done", "stall"})
RETRY_AFTER = "7"
_REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
_REASONS[503] = "Service Unavailable"


class _PeerGone(Exception):
    """The proxy closed the connection while we were answering."""


@dataclass
class Exchange:
    """One request and how its answer ended."""

    request_id: str
    kind: str
    stream: bool
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    """complete, peer_closed (the proxy hung up first) or reset (we did)."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: FaultUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = asyncio.Event()
        self.more = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.current: Exchange | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.upstream._opened(self)
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.more.set()

    def eof_received(self) -> bool:
        self.eof = True
        self.more.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.more.set()
        self.upstream._closed(self)

    # -- reading ------------------------------------------------------------------------

    async def _fill(self) -> bool:
        if self.eof or self.lost.is_set():
            return False
        self.more.clear()
        await self.more.wait()
        return True

    async def read_request(self) -> _Request | None:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                return None
        head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
        del self.buffer[: len(head) + 4]
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not await self._fill():
                return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return _Request(method, path, headers, body)

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.lost.is_set() or self.transport is None or self.transport.is_closing():
            raise _PeerGone
        self.transport.write(data)

    async def pause(self, seconds: float) -> None:
        """Wait, but stop at once (raising) when the proxy hangs up meanwhile."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.lost.wait(), timeout=seconds)
        if self.lost.is_set():
            raise _PeerGone

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def whole(
        self, status: int, body: bytes, content_type: str, extra: list[tuple[str, str]] = ()
    ) -> None:  # type: ignore[assignment]
        headers = [("content-type", content_type), ("content-length", str(len(body))), *extra]
        self.head(status, headers)
        self.write(body)

    def stream_head(self) -> None:
        self.head(200, [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")])

    def chunk(self, data: bytes) -> None:
        self.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def event(self, data: Any) -> None:
        self.chunk(b"data: " + json.dumps(data).encode() + b"\n\n")

    def end_chunks(self) -> None:
        self.write(b"0\r\n\r\n")

    # -- the connection's life ----------------------------------------------------------

    async def serve(self) -> None:
        try:
            while True:
                request = await self.read_request()
                if request is None:
                    break
                if not await self.upstream._answer(self, request):
                    break
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()


@dataclass
class FaultUpstream:
    """Start it with ``start()``; ``url`` is its base, ``/v1`` included.

    ``keep_exchanges=False`` keeps counts only, so a long soak does not grow memory here.
    """

    keep_exchanges: bool = True
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    opened: int = 0
    closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: set[_Connection] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self.opened - self.closed

    @property
    def peer_closes(self) -> int:
        """Exchanges the proxy hung up on before the answer was complete."""
        with self._lock:
            return self.outcomes["peer_closed"]

    def exchange(self, request_id: str) -> Exchange | None:
        with self._lock:
            return self.exchanges.get(request_id)

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.outcomes.values()) + sum(
                1 for c in self._connections if c.current and c.current.outcome is None
            )

    def reset(self) -> None:
        with self._lock:
            self.exchanges.clear()
            self.outcomes.clear()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def open_server() -> None:
                self._server = await loop.create_server(
                    lambda: _Connection(self), "127.0.0.1", 0, backlog=1024
                )
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(open_server())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fault-upstream")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault upstream did not start")

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.abort()
                if connection.task is not None:
                    connection.task.cancel()
            await asyncio.sleep(0.05)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), loop)
        self._thread.join(timeout=10)
        self._loop = None

    def _opened(self, connection: _Connection) -> None:
        with self._lock:
            self.opened += 1
            self._connections.add(connection)

    def _closed(self, connection: _Connection) -> None:
        with self._lock:
            self.closed += 1
            self._connections.discard(connection)
            exchange = connection.current
            if exchange is not None and exchange.outcome is None:
                exchange.ended_at = time.monotonic()
                exchange.outcome = "peer_closed"
                self.outcomes["peer_closed"] += 1

    # -- answers --------------------------------------------------------------------------

    async def _answer(self, connection: _Connection, request: _Request) -> bool:
        """Answer one request; False when the connection must not be reused."""
        try:
            payload = json.loads(request.body) if request.body else {}
        except ValueError:
            payload = {}
        fault = payload.get("fault") or "ok"
        options: dict[str, Any] = fault if isinstance(fault, dict) else {"kind": fault}
        kind = str(options.get("kind", "ok"))
        stream = payload.get("stream") is True
        request_id = request.headers.get("x-request-id", f"anon-{time.monotonic_ns()}")
        exchange = Exchange(request_id, kind, stream, time.monotonic())
        with self._lock:
            if self.keep_exchanges:
                self.exchanges[request_id] = exchange
            connection.current = exchange
        keep = True
        try:
            keep = await _FAULT_ANSWERS[kind](connection, payload, options)
        except _PeerGone:
            keep = False
            self._end(exchange, "peer_closed")
        else:
            self._end(exchange, "complete" if keep or kind == "ok" else "reset")
        return keep

    def _end(self, exchange: Exchange, outcome: str) -> None:
        with self._lock:
            if exchange.outcome is None:
                exchange.outcome = outcome
                exchange.ended_at = time.monotonic()
                self.outcomes[outcome] += 1


def _completion(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 1700000000,
        "model": payload.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }


def _chunk(payload: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": payload.get("model"),
        "choices": [{"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}],
    }


def _usage_chunk(payload: dict[str, Any], chunks: int) -> dict[str, Any]:
    usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks}
    return {**_chunk(payload, 0), "choices": [], "usage": usage}


async def _ok(conn: _Connection, payload: dict[str, Any], options: dict[str, Any]) -> bool:
    if payload.get("stream") is not True:
        conn.whole(200, json.dumps(_completion(payload)).encode(), "application/json")
        return True
    chunks = int(options.get("chunks", 3))
    delay = float(options.get("delay", 0))
    conn.stream_head()
    for index in range(chunks):
        conn.event(_chunk(payload, index))
        if delay:
            await conn.pause(delay)
    if (payload.get("stream_options") or {}).get("include_usage"):
        conn.event(_usage_chunk(payload, chunks))
    conn.chunk(b"data: [DONE]\n\n")
    conn.end_chunks()
    return True


async def _reset_before_headers(conn: _Connection, _: dict[str, Any], __: dict[str, Any]) -> bool:
    conn.reset()
    return False


async def _reset_mid_body(conn: _Connection, payload: dict[str, Any], o: dict[str, Any]) -> bool:
    body = json.dumps(_completion(payload)).encode()
    conn.head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
    conn.write(body[: len(body) // 2])
    await conn.pause(float(o.get("delay", 0.02)))
    conn.reset()
    return False


async def _reset_mid_stream(conn: _Connection, payload: dict[str, Any], o: dict[str, Any]) -> bool:
    conn.stream_head()
    conn.event(_chunk(payload, 0))
    conn.event(_chunk(payload, 1))
    await conn.pause(float(o.get("delay", 0.02)))
    conn.reset()
    return False


async def _slow_headers(conn: _Connection, payload: dict[str, Any], o: dict[str, Any]) -> bool:
    await conn.pause(float(o.get("wait", 5)))
    return await _ok(conn, payload, o)  # then a normal answer, `chunks` and all


async def _slow_body(conn: _Connection, payload: dict[str, Any], o: dict[str, Any]) -> bool:
    body = json.dumps(_completion(payload)).encode()
    conn.head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
    conn.write(body[:10])
    await conn.pause(float(o.get("wait", 5)))
    conn.write(body[10:])
    return True


def _openai_error(status: int, message: str) -> bytes:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


async def _http_500(conn: _Connection, _: dict[str, Any], __: dict[str, Any]) -> bool:
    conn.whole(500, _openai_error(500, "The server had an error").encode(), "application/json")
    return True


async def _http_502(conn: _Connection, _: dict[str, Any], __: dict[str, Any]) -> bool:
    # What a load balancer in front of a provider sends: HTML, not OpenAI's shape.
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    conn.whole(502, html, "text/html")
    return True


async def _http_503(conn: _Connection, _: dict[str, Any], __: dict[str, Any]) -> bool:
    conn.whole(503, _openai_error(503, "Overloaded").encode(), "application/json")
    return True


async def _rate_limited(conn: _Connection, _: dict[str, Any], __: dict[str, Any]) -> bool:
    body = _openai_error(429, "Rate limit reached, retry later").encode()
    conn.whole(429, body, "application/json", [("retry-after", RETRY_AFTER)])
    return True


async def _malformed_json(conn: _Connection, payload: dict[str, Any], _: dict[str, Any]) -> bool:
    body = json.dumps(_completion(payload)).encode()[:-20]  # cut: no longer valid JSON
    conn.whole(200, body, "application/json")
    return True


async def _malformed_sse(conn: _Connection, payload: dict[str, Any], _: dict[str, Any]) -> bool:
    conn.stream_head()
    conn.event(_chunk(payload, 0))
    conn.chunk(b'data: {"id": "chatcmpl-fault", "choices": [{"delta": \n\n')
    conn.event(_chunk(payload, 2))
    conn.chunk(b"data: [DONE]\n\n")
    conn.end_chunks()
    return True


async def _error_event(conn: _Connection, payload: dict[str, Any], _: dict[str, Any]) -> bool:
    conn.stream_head()
    conn.event(_chunk(payload, 0))
    conn.event({"error": {"message": "overloaded mid-stream", "type": "server_error"}})
    conn.end_chunks()
    return True


async def _no_done(conn: _Connection, payload: dict[str, Any], _: dict[str, Any]) -> bool:
    conn.stream_head()
    for index in range(3):
        conn.event(_chunk(payload, index))
    conn.end_chunks()
    return True


async def _stall(conn: _Connection, payload: dict[str, Any], o: dict[str, Any]) -> bool:
    """No more events for ``wait`` seconds; with ``ping``, a keep-alive comment every
    ``ping`` seconds meanwhile, as providers send while a model thinks."""
    conn.stream_head()
    conn.event(_chunk(payload, 0))
    wait = float(o.get("wait", 60))  # "forever", bounded so a broken test ends
    ping = float(o.get("ping", 0))
    deadline = time.monotonic() + wait
    while ping and time.monotonic() + ping < deadline:
        await conn.pause(ping)
        conn.chunk(b": ping\n\n")
    await conn.pause(max(0.0, deadline - time.monotonic()))
    conn.end_chunks()
    return True


_FAULT_ANSWERS = {
    "ok": _ok,
    "reset_before_headers": _reset_before_headers,
    "reset_mid_body": _reset_mid_body,
    "reset_mid_stream": _reset_mid_stream,
    "slow_headers": _slow_headers,
    "slow_body": _slow_body,
    "http_500": _http_500,
    "http_502": _http_502,
    "http_503": _http_503,
    "rate_limited": _rate_limited,
    "malformed_json": _malformed_json,
    "malformed_sse": _malformed_sse,
    "error_event": _error_event,
    "no_done": _no_done,
    "stall": _stall,
}
assert set(_FAULT_ANSWERS) == set(FAULTS)


def refused_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
