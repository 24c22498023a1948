"""Clients that hang up at random points of 500 streams, over a real server.

Each upstream connection closes within a second of its client leaving, no task is
left behind, and the cache holds only whole streams.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import MemoryCache, RequestRecord
from asgi_autoproxy._cache.entry import CachedResponse
from tests.conftest import CALLER_KEY
from tests.fault_upstream import FaultUpstream
from tests.faults import fault_body, faulty_proxy, settle
from tests.servers import ServerThread

pytestmark = pytest.mark.anyio

STREAMS = 500
CONCURRENCY = 25
CHUNKS = 8
DELAY = 0.01
READ_ALL = CHUNKS + 2  # more events than a stream has ([DONE] included)


class RecordingCache(MemoryCache):
    """A MemoryCache that also keeps every entry written, decoded, for inspection."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[CachedResponse] = []

    def set_object(self, key: str, value: Any, size: int, ttl: float) -> None:
        entry = CachedResponse.decode(value) if isinstance(value, bytes) else value
        assert isinstance(entry, CachedResponse)
        self.written.append(entry)
        super().set_object(key, value, size, ttl)


class LoopSpy:
    """Wraps the app to learn the server's event loop, where the proxy's tasks live."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def run(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=5)


async def _task_count() -> int:
    return len(asyncio.all_tasks())


@dataclass
class Hangup:
    request_id: str
    after_events: int | None
    """Events read before hanging up; None: hang up before the headers arrive."""
    closed_at: float = 0.0
    completed: bool = False


async def run_stream(http: httpx.AsyncClient, hangup: Hangup, rng: random.Random) -> None:
    headers = {"x-request-id": hangup.request_id}
    if hangup.after_events is None:
        # The upstream is slow to answer; the client gives up first.
        # Same chunk count as the others: if the hang-up is noticed only after the whole
        # (complete) stream went through, caching it is right, and it is CHUNKS long.
        body = fault_body("slow_headers", True, hangup.request_id, wait=0.3, chunks=CHUNKS)
        with anyio.move_on_after(rng.uniform(0.02, 0.2)):
            await http.post("/v1/proxy/auto", json=body, headers=headers)
            hangup.completed = True
        hangup.closed_at = time.monotonic()
        return
    body = fault_body("ok", True, hangup.request_id, chunks=CHUNKS, delay=DELAY)
    async with http.stream("POST", "/v1/proxy/auto", json=body, headers=headers) as response:
        assert response.status_code == 200
        seen = 0
        async for chunk in response.aiter_raw():
            seen += chunk.count(b"\n\n")
            if seen >= hangup.after_events:
                break
        else:
            hangup.completed = True
    hangup.closed_at = time.monotonic()


@pytest.mark.slow
async def test_random_hangups_close_upstream_and_cache_no_partial_stream(
    fault_upstream: FaultUpstream,
) -> None:
    fault_upstream.reset()
    cache = RecordingCache()
    records: list[RequestRecord] = []
    proxy = faulty_proxy(fault_upstream.url, cache=cache, on_request=records.append)
    spy = LoopSpy(proxy)
    server = ServerThread(spy, lifespan="on")
    server.start()
    rng = random.Random(500)
    # None: before the headers; 0..CHUNKS: after that many events; READ_ALL: never.
    points: list[int | None] = [None, *range(CHUNKS + 1), READ_ALL]
    hangups = [Hangup(f"s{i}", rng.choice(points)) for i in range(STREAMS)]
    try:
        async with httpx.AsyncClient(
            base_url=server.url,
            headers={"authorization": f"Bearer {CALLER_KEY}"},
            timeout=10,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as http:
            await http.post("/v1/proxy/auto", json=fault_body("ok", False, "warm-up"))
            tasks_before = spy.run(_task_count())
            limiter = anyio.Semaphore(CONCURRENCY)

            async def one(hangup: Hangup) -> None:
                async with limiter:
                    await run_stream(http, hangup, rng)

            async with anyio.create_task_group() as group:
                for hangup in hangups:
                    group.start_soon(one, hangup)

        left_early = [h for h in hangups if not h.completed]
        assert STREAMS // 2 < len(left_early) < STREAMS
        # Every exchange the proxy started upstream ends within 1 s of its client leaving.
        assert await settle(
            lambda: all(
                (e := fault_upstream.exchange(h.request_id)) is None or e.outcome is not None
                for h in left_early
            ),
            within=2.0,
        )
        late = []
        for hangup in left_early:
            exchange = fault_upstream.exchange(hangup.request_id)
            if exchange is None:
                continue  # the client left before the proxy called upstream
            assert exchange.ended_at is not None
            if exchange.ended_at - hangup.closed_at > 1.0:
                late.append((hangup, exchange))
        assert not late, late[:3]
        assert fault_upstream.peer_closes > STREAMS // 4  # streams were really cut upstream

        # Nothing left running in the server, and only idle connections left upstream.
        assert await settle(lambda: spy.run(_task_count()) <= tasks_before)
        assert await settle(lambda: fault_upstream.open_connections <= CONCURRENCY)

        # The cache holds whole streams only: each ends with [DONE] after every chunk.
        assert cache.written
        for entry in cache.written:
            assert entry.stream or entry.parts[0].startswith(b"{")
            if entry.stream:
                assert len(entry.parts) == CHUNKS + 1 and entry.parts[-1] == b"data: [DONE]\n\n"
        assert cache.stats.entries == len(cache.written)
        read_all = sum(1 for h in hangups if h.completed)
        assert len(cache.written) >= read_all + 1  # + the warm-up
        # The hook saw each request; those cut short say the client left.
        by_id = {r.request_id: r for r in records}
        for hangup in left_early:
            record = by_id.get(hangup.request_id)
            if record is not None and record.status is None:
                assert record.client_disconnected
    finally:
        server.stop()
