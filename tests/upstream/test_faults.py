"""Upstream faults: every one ends in a clear, well-formed answer, is never cached,
leaks nothing, and leaves the proxy serving healthy requests."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from asgi_autoproxy import AutoProxyMiddleware, MemoryCache
from asgi_autoproxy import _cancel as background
from asgi_autoproxy import _idle_timeout as idle
from tests.fault_upstream import FAULTS, STREAM_ONLY, FaultUpstream
from tests.faults import (
    IDLE_TIMEOUT,
    asgi_client,
    check_outcome,
    event_json,
    expected,
    fault_body,
    faulty_proxy,
    open_fds,
    pool_counts,
    settle,
    sse_events,
    tasks_now,
)

pytestmark = pytest.mark.anyio

FAULT_KINDS = ["refused", *(k for k in FAULTS if k != "ok")]
CASES = [
    (kind, stream)
    for kind in FAULT_KINDS
    for stream in (False, True)
    if stream or kind not in STREAM_ONLY
]


@pytest.fixture
async def proxy(fault_upstream: FaultUpstream) -> AsyncIterator[AutoProxyMiddleware]:
    app = faulty_proxy(fault_upstream.url)
    yield app
    await app.aclose()


def assert_nothing_cached(proxy: AutoProxyMiddleware, already: int = 0) -> None:
    """No write beyond the ``already`` cached entries."""
    stats = proxy.cache_stats
    assert stats is not None and stats.writes == already
    assert isinstance(proxy.cache, MemoryCache) and proxy.cache.stats.entries == already


async def assert_serves_healthy(proxy: AutoProxyMiddleware, content: str = "healthy") -> None:
    """Fresh answers from upstream, whole and streamed, and the stream cached."""
    async with asgi_client(proxy) as http:
        whole = await http.post("/v1/proxy/auto", json=fault_body("ok", False, content))
        streamed = await http.post("/v1/proxy/auto", json=fault_body("ok", True, content))
        again = await http.post("/v1/proxy/auto", json=fault_body("ok", True, content))
    assert whole.status_code == 200 and whole.json()["object"] == "chat.completion"
    assert whole.headers["x-bt-cached"] == streamed.headers["x-bt-cached"] == "MISS"
    assert streamed.status_code == 200 and streamed.content.endswith(b"data: [DONE]\n\n")
    assert again.headers["x-bt-cached"] == "HIT" and again.content == streamed.content


@pytest.mark.parametrize(("kind", "stream"), CASES)
async def test_fault_gets_a_clear_answer_and_nothing_is_cached(
    proxy: AutoProxyMiddleware, fault_upstream: FaultUpstream, kind: str, stream: bool
) -> None:
    async with asgi_client(proxy) as http:
        response = await http.post(
            "/v1/proxy/auto", json=fault_body(kind, stream), headers={"x-request-id": kind}
        )
    check_outcome(response, expected(kind, stream))
    assert_nothing_cached(proxy)
    if kind != "refused":  # the upstream's side of the exchange ends within a second
        exchange = fault_upstream.exchange(kind)
        assert exchange is not None
        assert await settle(lambda: exchange.outcome is not None, within=1.0)
    await assert_serves_healthy(proxy)


@pytest.fixture(params=["loop timer", "watchdog"])
def idle_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways idle.py guards a stream: a loop timer on asyncio, and the watchdog task
    under an anyio task group and cancel scope that other event loops (trio) get."""
    if request.param == "watchdog":
        monkeypatch.setattr(idle, "on_asyncio", lambda: False)
        monkeypatch.setattr(background, "on_asyncio", lambda: False)
        monkeypatch.setattr(background, "current_asyncio_task", lambda: None)
    return str(request.param)


async def test_stalled_stream_ends_after_the_idle_timeout(
    proxy: AutoProxyMiddleware, fault_upstream: FaultUpstream, idle_guard: str
) -> None:
    started = time.monotonic()
    async with asgi_client(proxy) as http:
        response = await http.post(
            "/v1/proxy/auto", json=fault_body("stall", True), headers={"x-request-id": "stall"}
        )
    took = time.monotonic() - started
    events = sse_events(response.content)
    assert [event_json(e)["object"] for e in events[:-1]] == ["chat.completion.chunk"]
    error = event_json(events[-1])["error"]
    assert f"no data arrived for {IDLE_TIMEOUT:g} s" in error["message"]
    assert IDLE_TIMEOUT <= took < IDLE_TIMEOUT + 1.0
    exchange = fault_upstream.exchange("stall")
    assert exchange is not None
    assert await settle(lambda: exchange.outcome == "peer_closed", within=1.0)  # proxy hung up


async def test_idle_timeout_counts_silence_not_slow_streams(
    proxy: AutoProxyMiddleware, idle_guard: str
) -> None:
    # Ten chunks 0.1 s apart take 1 s in all, but no gap reaches the 0.3 s idle limit.
    body = fault_body("ok", True, fault_delay=None)
    body["fault"] = {"kind": "ok", "chunks": 10, "delay": 0.1}
    async with asgi_client(proxy) as http:
        response = await http.post("/v1/proxy/auto", json=body)
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert len(sse_events(response.content)) == 11


async def test_idle_guard_keeps_a_timeout_the_stream_raised_itself(idle_guard: str) -> None:
    # Only the guard's own expiry is absorbed; any other TimeoutError is the caller's.
    with pytest.raises(TimeoutError, match="from the body"):
        async with idle.idle_limit(5.0) as watch:
            watch.waiting()
            raise TimeoutError("from the body")
    async with idle.idle_limit(0.05) as watch:
        watch.waiting()
        await anyio.sleep(1.0)  # cut short by the guard
    assert watch.expired


async def test_idle_guard_does_not_count_time_spent_relaying(idle_guard: str) -> None:
    async with idle.idle_limit(0.1) as watch:
        for _ in range(3):
            watch.waiting()
            await anyio.sleep(0.01)  # the upstream answers at once...
            watch.arrived()
            await anyio.sleep(0.15)  # ...and a slow caller takes longer than the limit
    assert not watch.expired


async def test_malformed_sse_stops_before_the_bad_event(proxy: AutoProxyMiddleware) -> None:
    async with asgi_client(proxy) as http:
        response = await http.post("/v1/proxy/auto", json=fault_body("malformed_sse", True))
    events = sse_events(response.content)
    assert len(events) == 2  # the good chunk, then our error; the bad event is not relayed
    assert "not valid JSON" in event_json(events[-1])["error"]["message"]


async def test_upstream_error_event_is_relayed_as_the_last_event(
    proxy: AutoProxyMiddleware,
) -> None:
    async with asgi_client(proxy) as http:
        response = await http.post("/v1/proxy/auto", json=fault_body("error_event", True))
    last = event_json(sse_events(response.content)[-1])
    assert last["error"]["message"] == "overloaded mid-stream"


# A mix of fast faults, with a few slow ones (each costs one timeout).
_MIX = {kind: 8 for kind in FAULT_KINDS}
_MIX.update(slow_headers=1, slow_body=1, stall=1, reset_mid_body=4, reset_mid_stream=4)
_CONCURRENCY = 16
_REQUESTS = 1000


@pytest.mark.slow
async def test_a_thousand_faults_leak_nothing(fault_upstream: FaultUpstream) -> None:
    """fds, tasks and pooled connections are the same before and after 1,000 faults."""
    fault_upstream.reset()
    proxy = faulty_proxy(fault_upstream.url)
    rng = random.Random(8)
    kinds = list(_MIX)
    weights = [_MIX[k] for k in kinds]
    plan = []
    for index in range(_REQUESTS):
        kind = rng.choices(kinds, weights)[0]
        stream = kind in STREAM_ONLY or (rng.random() < 0.5 and kind != "reset_mid_body")
        # Some bodies repeat, so identical faulted requests also coalesce.
        plan.append((kind, stream, f"q{index % 700}"))
    async with asgi_client(proxy) as http:
        await assert_serves_healthy(proxy)  # the client and pool exist before we count
        assert_nothing_cached(proxy, already=2)
        await anyio.sleep(0.1)
        fds_before, tasks_before = open_fds(), tasks_now()
        upstream_before = fault_upstream.open_connections
        pool_before = sum(pool_counts(proxy))
        assert upstream_before == pool_before
        started = time.monotonic()
        outcomes: list[tuple[str, bool, int]] = []
        limiter = anyio.Semaphore(_CONCURRENCY)

        async def one(kind: str, stream: bool, content: str) -> None:
            async with limiter:
                response = await http.post("/v1/proxy/auto", json=fault_body(kind, stream, content))
            check_outcome(response, expected(kind, stream))
            outcomes.append((kind, stream, response.status_code))

        async with anyio.create_task_group() as group:
            for kind, stream, content in plan:
                group.start_soon(one, kind, stream, content)
        took = time.monotonic() - started
        assert len(outcomes) == _REQUESTS
        assert_nothing_cached(proxy, already=2)  # the two healthy answers above

        # Every upstream socket still open is an idle one in the proxy's pool.
        assert await settle(lambda: fault_upstream.open_connections == sum(pool_counts(proxy)))
        idle, in_use = pool_counts(proxy)
        assert in_use == 0
        assert idle <= _CONCURRENCY + pool_before
        assert await settle(lambda: tasks_now() == tasks_before)
        # Each open connection holds two fds in this process (proxy side and upstream side).
        fds_after = open_fds()
        opened_since = fault_upstream.open_connections - upstream_before
        assert fds_after - 2 * opened_since <= fds_before, (fds_before, fds_after, opened_since)
        await assert_serves_healthy(proxy, "healthy after")
    await proxy.aclose()
    print(f"1000 faulted requests in {took:.1f} s")
