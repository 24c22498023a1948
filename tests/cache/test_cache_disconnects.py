"""Cache and coalescing behaviour when callers disconnect, over a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, MemoryCache, OpenAIProvider
from tests.conftest import CALLER_KEY, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def served_proxy(upstream_url: str) -> Iterator[tuple[ServerThread, AutoProxyMiddleware]]:
    app = AutoProxyMiddleware(
        inner_app(),
        providers=[OpenAIProvider(base_url=upstream_url, name="fake")],
        cache=MemoryCache(),
    )
    server = ServerThread(app, lifespan="on")
    server.start()
    yield server, app
    server.stop()


def client(server: ServerThread) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, headers={"authorization": f"Bearer {CALLER_KEY}"}, timeout=10
    )


def wait_until(condition: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


async def read_first_event(http: httpx.AsyncClient, body: object) -> bytes:
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            return chunk
    raise AssertionError("stream ended before its first event")


async def test_disconnect_mid_stream_stores_nothing(
    served_proxy: tuple[ServerThread, AutoProxyMiddleware], upstream: FakeUpstream
) -> None:
    server, app = served_proxy
    body = chat_body(temperature=0, stream=True, fake={"chunks": 20, "delay": 0.05})
    async with client(server) as http:
        first = await read_first_event(http, body)
        assert first.startswith(b"data: ")
    assert wait_until(lambda: upstream.disconnects == 1)
    assert upstream.chunks_sent < 20
    assert isinstance(app.cache, MemoryCache) and app.cache.stats.entries == 0
    async with client(server) as http:
        again = await http.post("/v1/proxy/auto", json=chat_body(temperature=0, stream=True))
    assert again.headers["x-bt-cached"] == "MISS"


async def test_follower_keeps_stream_alive_when_leader_leaves(
    served_proxy: tuple[ServerThread, AutoProxyMiddleware], upstream: FakeUpstream
) -> None:
    server, app = served_proxy
    body = chat_body(temperature=0, stream=True, fake={"chunks": 6, "delay": 0.05})
    follower_bytes: list[bytes] = []

    async def follower() -> None:
        for _ in range(100):  # join once the leader's upstream call is under way
            if upstream.chunks_sent:
                break
            await anyio.sleep(0.01)
        async with client(server) as http, http.stream("POST", "/v1/proxy/auto", json=body) as r:
            follower_bytes.append(await r.aread())
            assert r.headers["x-bt-cached"] == "HIT"

    stats = app.cache_stats
    assert stats is not None

    async with anyio.create_task_group() as group:
        group.start_soon(follower)
        async with client(server) as http, http.stream("POST", "/v1/proxy/auto", json=body) as r:
            chunks = r.aiter_raw()  # held, so the connection stays open while we wait
            await chunks.__anext__()
            for _ in range(100):  # leave only once the follower has joined
                if stats.coalesced:
                    break
                await anyio.sleep(0.01)
        # The leader's connection is closed here, after one event.
    assert upstream.calls == 1
    assert upstream.disconnects == 0
    assert follower_bytes[0].endswith(b"data: [DONE]\n\n")
    assert follower_bytes[0].count(b"\n\n") == 7
    assert stats.coalesced == 1


async def test_followers_retry_when_leader_abandons_before_answer(
    served_proxy: tuple[ServerThread, AutoProxyMiddleware], upstream: FakeUpstream
) -> None:
    server, _ = served_proxy
    body = chat_body(temperature=0, fake={"sleep": 0.3})

    async with client(server) as http:
        with anyio.move_on_after(0.1):
            await http.post("/v1/proxy/auto", json=body)  # the leader gives up early
    async with client(server) as http:
        response = await http.post("/v1/proxy/auto", json=body)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
