"""Coalesced requests: a stalled client holds back nobody else, and errors are not hits.

The stream tests run the proxy under uvicorn against a real upstream on 127.0.0.1 that
streams several MB, so that a client which stops reading fills every buffer on its way.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import (
    AutoProxyMiddleware,
    CacheOptions,
    MemoryCache,
    OpenAIProvider,
    RequestRecord,
)
from asgi_autoproxy import _cancel as background
from asgi_autoproxy import _idle_timeout as idle
from asgi_autoproxy import _relay as relay_module
from asgi_autoproxy._cancel import along
from tests.conftest import CALLER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, read_request

pytestmark = pytest.mark.anyio

EVENTS = 3000
EVENT_BYTES = 8192  # 3000 of them: about 24 MB, well past the socket buffers on the way
LAG = 256 * 1024  # max_follower_lag in these tests
DONE = b"data: [DONE]\n\n"


def _event(index: int) -> bytes:
    content = f"{index:08d}" + "x" * (EVENT_BYTES - 200)  # an event of about EVENT_BYTES
    chunk = {
        "id": "chatcmpl-bulk",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class BulkUpstream:
    """Streams ``EVENTS`` events of ``EVENT_BYTES``, then [DONE]. With ``gate_at``, it
    waits before that event until ``gate`` is set (10 s at most)."""

    def __init__(self, *, gate_at: int | None = None) -> None:
        self.requests = 0
        self.sent = 0
        self.disconnects = 0
        self.completed = 0
        self.gate_at = gate_at
        self.gate = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        self.requests += 1
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            for index in range(EVENTS):
                if index == self.gate_at:
                    for _ in range(1000):
                        if self.gate.is_set() or gone.is_set():
                            break
                        await asyncio.sleep(0.01)
                if gone.is_set():
                    self.disconnects += 1
                    return
                event = _event(index)
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self.sent += len(event)
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
            self.completed += 1
        finally:
            watcher.cancel()


FULL_STREAM = b"".join(_event(i) for i in range(EVENTS)) + DONE


def _proxy(upstream_url: str, records: list[RequestRecord]) -> AutoProxyMiddleware:
    return AutoProxyMiddleware(
        inner_app(),
        providers=[OpenAIProvider(base_url=upstream_url + "/v1", name="bulk")],
        cache=MemoryCache(),
        cache_options=CacheOptions(max_follower_lag=LAG),
        on_request=records.append,
        shutdown_grace=1,
    )


@pytest.fixture
def served() -> Iterator[Callable[..., tuple[BulkUpstream, ServerThread, list[RequestRecord]]]]:
    servers: list[ServerThread] = []
    upstreams: list[BulkUpstream] = []

    def start(
        *, gate_at: int | None = None
    ) -> tuple[BulkUpstream, ServerThread, list[RequestRecord]]:
        upstream = BulkUpstream(gate_at=gate_at)
        upstreams.append(upstream)
        upstream_server = ServerThread(upstream)
        upstream_server.start()
        servers.append(upstream_server)
        records: list[RequestRecord] = []
        proxy_server = ServerThread(_proxy(upstream_server.url, records), lifespan="on")
        proxy_server.start()
        servers.append(proxy_server)
        return upstream, proxy_server, records

    yield start
    for upstream in upstreams:
        upstream.gate.set()
    for server in reversed(servers):
        server.stop()


BODY = json.dumps(chat_body(temperature=0, stream=True)).encode()


def stalled_client(port: int, request_id: str) -> socket.socket:
    """Sends the stream request on a socket with a tiny receive window, then reads nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = (
        "POST /v1/proxy/auto HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {CALLER_KEY}\r\ncontent-type: application/json\r\n"
        f"x-request-id: {request_id}\r\ncontent-length: {len(BODY)}\r\n\r\n"
    )
    sock.sendall(head.encode() + BODY)
    return sock


def read_rest(sock: socket.socket, within: float = 20.0) -> bytes:
    """Everything the socket still gets: until the response's last chunk, EOF or ``within``."""
    sock.settimeout(1.0)
    data = bytearray()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\r\n0\r\n\r\n"):
            break
    return bytes(data)


def wait_until(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def settled(upstream: BulkUpstream, within: float = 5.0) -> int:
    """The upstream's byte count once it stopped growing for 0.3 s."""
    deadline = time.monotonic() + within
    last = -1
    while time.monotonic() < deadline and upstream.sent != last:
        last = upstream.sent
        time.sleep(0.3)
    return upstream.sent


def http(server: ServerThread) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers={"authorization": f"Bearer {CALLER_KEY}"},
        timeout=httpx.Timeout(10.0),
    )


def record(records: list[RequestRecord], request_id: str) -> RequestRecord | None:
    return next((r for r in records if r.request_id == request_id), None)


@pytest.fixture(params=["task", "anyio"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """On asyncio's own tasks, and the anyio task group and scopes other loops (trio) get."""
    if request.param == "anyio":
        monkeypatch.setattr(idle, "on_asyncio", lambda: False)
        monkeypatch.setattr(background, "on_asyncio", lambda: False)
        monkeypatch.setattr(background, "current_asyncio_task", lambda: None)
    return str(request.param)


# -- item 14: a stalled client holds back nobody else ------------------------------------


@pytest.mark.slow
async def test_a_stalled_leader_does_not_hold_back_its_follower(
    served: Callable[..., tuple[BulkUpstream, ServerThread, list[RequestRecord]]], way: str
) -> None:
    upstream, server, records = served()
    leader = stalled_client(server.port, "leader")
    try:
        assert wait_until(lambda: upstream.requests == 1)
        # Alone, the leader holds the upstream back (past the socket buffers on the way).
        held_at = settled(upstream)
        assert 0 < held_at < len(FULL_STREAM) and upstream.completed == 0
        started = time.monotonic()
        with anyio.fail_after(60):
            async with (
                http(server) as client,
                client.stream("POST", "/v1/proxy/auto", content=BODY) as response,
            ):
                assert response.headers["x-bt-cached"] == "HIT"  # coalesced onto the leader
                received = await response.aread()
        assert received == FULL_STREAM
        assert time.monotonic() - started < 30
        assert upstream.requests == 1 and upstream.completed == 1
        # The leader fell too far behind its follower: its stream was cut, without [DONE].
        rest = await anyio.to_thread.run_sync(read_rest, leader)
        assert rest.startswith(b"HTTP/1.1 200")
        assert DONE not in rest
        reported = await anyio.to_thread.run_sync(
            lambda: wait_until(lambda: record(records, "leader") is not None, 10)
        )
        dropped = record(records, "leader")
        assert reported and dropped is not None and dropped.error == "client_too_slow"
    finally:
        leader.close()


@pytest.mark.slow
async def test_a_stalled_follower_is_dropped_with_an_error_event(
    served: Callable[..., tuple[BulkUpstream, ServerThread, list[RequestRecord]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Time enough for this test to read the dropped follower's last words.
    monkeypatch.setattr(relay_module, "_DROPPED_GRACE", 60.0)
    upstream, server, records = served(gate_at=1)
    follower: socket.socket | None = None
    try:
        async with (
            http(server) as client,
            client.stream("POST", "/v1/proxy/auto", content=BODY) as response,
        ):
            chunks = response.aiter_raw()
            first = await chunks.__anext__()
            follower = stalled_client(server.port, "follower")
            await anyio.sleep(0.3)  # the follower joins while the upstream waits at its gate
            upstream.gate.set()
            with anyio.fail_after(60):
                received = first + b"".join([chunk async for chunk in chunks])
        # The leader read at its own pace, all of it.
        assert received == FULL_STREAM
        assert upstream.requests == 1
        # The follower stopped reading: dropped, told why, and its stream ended.
        rest = await anyio.to_thread.run_sync(read_rest, follower)
        assert rest.startswith(b"HTTP/1.1 200") and b"x-bt-cached: HIT" in rest
        assert DONE not in rest
        assert b'"code":"client_too_slow"' in rest.replace(b" ", b"")
        assert rest.endswith(b"\r\n0\r\n\r\n")
        assert await anyio.to_thread.run_sync(lambda: wait_until(lambda: len(records) == 2, 10))
        dropped = record(records, "follower")
        assert dropped is not None and dropped.error == "client_too_slow"
        assert dropped.cache == "COALESCED"
        kept = next(r for r in records if r.request_id != "follower")
        assert kept.error is None and not kept.client_disconnected
    finally:
        if follower is not None:
            follower.close()


@pytest.mark.slow
async def test_the_upstream_stops_once_the_follower_of_a_dropped_leader_leaves(
    served: Callable[..., tuple[BulkUpstream, ServerThread, list[RequestRecord]]],
) -> None:
    # Half way, the upstream waits (for a gate never opened): it cannot end on its own.
    upstream, server, _ = served(gate_at=EVENTS // 2)
    leader = stalled_client(server.port, "leader")
    try:
        assert wait_until(lambda: upstream.requests == 1)
        settled(upstream)
        with anyio.fail_after(30):
            async with (
                http(server) as client,
                client.stream("POST", "/v1/proxy/auto", content=BODY) as response,
            ):
                seen = 0
                async for chunk in response.aiter_raw():
                    seen += len(chunk)
                    if seen > 8 * LAG:
                        break  # the leader is far behind by now: then hang up
        # Nobody listens any more (the leader was dropped): the upstream call is cut.
        assert await anyio.to_thread.run_sync(lambda: wait_until(lambda: upstream.disconnects == 1))
        assert upstream.completed == 0
    finally:
        leader.close()


async def test_along_waits_for_its_work_and_cancels_it_when_the_block_raises(way: str) -> None:
    done: list[str] = []

    async def work(name: str, seconds: float) -> None:
        try:
            await anyio.sleep(seconds)
            done.append(name)
        except BaseException:
            done.append(f"{name} cancelled")
            raise

    async with along(lambda: work("waited", 0.05)):
        pass
    assert done == ["waited"]
    with pytest.raises(LookupError):
        async with along(lambda: work("cut", 5)):
            await anyio.sleep(0.01)
            raise LookupError("the block failed")  # bare, not in an ExceptionGroup
    assert done == ["waited", "cut cancelled"]


# -- item 5: an error is never a hit -----------------------------------------------------


def _asgi_client(app: AutoProxyMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
        timeout=30,
    )


async def _concurrently(app: AutoProxyMiddleware, body: Any, count: int) -> list[httpx.Response]:
    answers: list[httpx.Response] = []

    async def one(client: httpx.AsyncClient) -> None:
        answers.append(await client.post("/v1/proxy/auto", json=body))

    async with _asgi_client(app) as client, anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one, client)
    return answers


@pytest.mark.parametrize("status", [500, 400])
async def test_followers_of_an_upstream_error_say_miss(
    make_proxy: MakeProxy, upstream: FakeUpstream, status: int
) -> None:
    app = make_proxy(cache=MemoryCache())
    body = chat_body(temperature=0, fake={"sleep": 0.3, "status": status})
    answers = await _concurrently(app, body, 10)
    assert upstream.calls == 1  # one leader, nine followers
    assert [a.status_code for a in answers] == [status] * 10
    assert all(a.json()["error"]["message"] == f"upstream says {status}" for a in answers)
    assert [a.headers.get("x-bt-cached") for a in answers] == ["MISS"] * 10


async def test_followers_of_a_leader_that_failed_say_miss(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(cache=MemoryCache(), timeout=0.3)
    body = chat_body(temperature=0, fake={"sleep": 1.0})
    answers = await _concurrently(app, body, 10)
    assert upstream.calls == 1
    assert [a.status_code for a in answers] == [504] * 10
    labels = [a.headers.get("x-bt-cached") for a in answers]
    assert "HIT" not in labels
    assert labels.count("MISS") == 9  # the followers; the leader's own error has no label
