"""Graceful shutdown: requests in flight finish within the grace period or are cut
cleanly; then the HTTP client and the cache backend are closed."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AutoProxyMiddleware, Limits, MemoryCache, RequestRecord
from asgi_autoproxy import _shutdown as lifecycle
from asgi_autoproxy._shutdown import InFlightRequests
from tests.conftest import CALLER_KEY
from tests.fault_upstream import FaultUpstream
from tests.faults import asgi_client, event_json, fault_body, faulty_proxy, settle, sse_events
from tests.servers import ServerThread

pytestmark = pytest.mark.anyio


class ClosableCache(MemoryCache):
    """A MemoryCache with connections to close, like a Redis backend."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def shut_down_during(
    proxy: AutoProxyMiddleware, upstream: FaultUpstream, body: dict[str, Any], request_id: str
) -> tuple[httpx.Response, float]:
    """Start ``body``, begin lifespan shutdown once upstream has it; the answer and how
    long shutdown took."""
    answers: list[httpx.Response] = []

    async def ask(http: httpx.AsyncClient) -> None:
        answers.append(
            await http.post("/v1/proxy/auto", json=body, headers={"x-request-id": request_id})
        )

    async with anyio.create_task_group() as group:
        async with LifespanManager(proxy, shutdown_timeout=10) as manager:
            http = asgi_client(manager.app)
            group.start_soon(ask, http)
            assert await settle(lambda: upstream.exchange(request_id) is not None)
            assert proxy.requests_in_flight == 1
            started = time.monotonic()
        took = time.monotonic() - started
    await http.aclose()
    return answers[0], took


async def test_request_in_flight_finishes_within_the_grace(
    fault_upstream: FaultUpstream,
) -> None:
    cache = ClosableCache()
    proxy = faulty_proxy(fault_upstream.url, shutdown_grace=5, cache=cache)
    client = proxy._clients.get()
    body = fault_body("ok", True, "finish me", chunks=6, delay=0.05)
    response, took = await shut_down_during(proxy, fault_upstream, body, "finish")
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert len(sse_events(response.content)) == 7
    assert 0.1 < took < 2.0  # shutdown waited for the stream, not for the grace period
    assert proxy.requests_in_flight == 0
    assert client.is_closed
    assert cache.closed == 1
    assert cache.stats.entries == 1  # the finished stream was cached as usual


async def test_stream_still_running_after_the_grace_is_cut_with_an_error_event(
    fault_upstream: FaultUpstream,
) -> None:
    records: list[RequestRecord] = []
    cache = ClosableCache()
    proxy = faulty_proxy(
        fault_upstream.url, shutdown_grace=0.3, cache=cache, on_request=records.append
    )
    body = fault_body("ok", True, "cut me", chunks=100, delay=0.05)  # 5 s of stream
    response, took = await shut_down_during(proxy, fault_upstream, body, "cut-stream")
    assert 0.3 <= took < 1.5
    events = sse_events(response.content)
    assert len(events) >= 2
    assert all(event_json(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    error = event_json(events[-1])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    exchange = fault_upstream.exchange("cut-stream")
    assert exchange is not None
    assert await settle(lambda: exchange.outcome == "peer_closed", within=1.0)
    assert cache.stats.entries == 0  # a cut stream is never cached
    assert cache.closed == 1
    assert records[0].error == "server_shutting_down" and not records[0].client_disconnected


async def test_request_waiting_for_headers_is_cut_with_a_503(
    fault_upstream: FaultUpstream,
) -> None:
    proxy = faulty_proxy(
        fault_upstream.url, shutdown_grace=0.2, timeout=httpx.Timeout(10.0, connect=2.0)
    )
    body = fault_body("slow_headers", False, "cut early", wait=5)
    response, took = await shut_down_during(proxy, fault_upstream, body, "cut-whole")
    assert took < 1.5
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "server_shutting_down"
    assert response.headers["x-request-id"] == "cut-whole"


async def test_shutdown_without_requests_is_immediate(fault_upstream: FaultUpstream) -> None:
    cache = ClosableCache()
    proxy = faulty_proxy(fault_upstream.url, shutdown_grace=30, cache=cache)
    started = time.monotonic()
    async with LifespanManager(proxy) as manager, asgi_client(manager.app) as http:
        response = await http.post("/v1/proxy/auto", json=fault_body("ok", False))
        assert response.status_code == 200
        client = proxy._clients.get()
    assert time.monotonic() - started < 1.0
    assert client.is_closed and cache.closed == 1


def test_shutdown_keywords_are_checked() -> None:
    with pytest.raises(ValueError, match="shutdown_grace"):
        faulty_proxy("http://127.0.0.1:1/v1", shutdown_grace=-1)
    with pytest.raises(ValueError, match="stream_idle_timeout"):
        faulty_proxy("http://127.0.0.1:1/v1", limits=Limits(stream_idle_timeout=0))


def test_real_server_shutdown_lets_the_stream_finish(fault_upstream: FaultUpstream) -> None:
    """Under uvicorn: a stream in flight at shutdown ends normally, then clients close."""
    cache = ClosableCache()
    proxy = faulty_proxy(fault_upstream.url, shutdown_grace=5, cache=cache)
    server = ServerThread(proxy, lifespan="on")
    server.start()
    body = fault_body("ok", True, "real server", chunks=6, delay=0.05)
    received: list[bytes] = []
    auth = {"authorization": f"Bearer {CALLER_KEY}"}
    with httpx.Client(base_url=server.url, timeout=10, headers=auth) as http:
        with http.stream("POST", "/v1/proxy/auto", json=body) as response:
            chunks = response.iter_raw()
            received.append(next(chunks))
            stopper = _stop_in_background(server)
            received.extend(chunks)
        stopper.join(timeout=10)
    stream = b"".join(received)
    assert stream.endswith(b"data: [DONE]\n\n") and len(sse_events(stream)) == 7
    assert cache.closed == 1


def _stop_in_background(server: ServerThread) -> threading.Thread:
    thread = threading.Thread(target=server.stop)
    thread.start()
    return thread


# -- InFlightRequests on its own: which cancellations count as a shutdown cut ----------


async def _sleep_forever(started: anyio.Event) -> None:
    started.set()
    await anyio.sleep_forever()


async def _run_and_drain(in_flight: InFlightRequests) -> tuple[bool, int]:
    """One request that never ends, cut by drain; (was it cut, requests drain cut)."""
    started = anyio.Event()
    outcome: list[bool] = []

    async def request() -> None:
        outcome.append(await in_flight.run(_sleep_forever(started)))

    async with anyio.create_task_group() as group:
        group.start_soon(request)
        await started.wait()
        assert len(in_flight) == 1
        cut = await in_flight.drain(0.05)
    assert len(in_flight) == 0
    return outcome[0], cut


async def test_drain_cuts_an_asyncio_request_and_takes_its_cancel_back() -> None:
    in_flight = InFlightRequests()
    leftover: list[int] = []

    async def request_then_check() -> None:
        assert await in_flight.run(_sleep_forever(anyio.Event()))
        task = asyncio.current_task()
        assert task is not None
        leftover.append(task.cancelling())  # 0: the task goes on as if never cancelled

    async with anyio.create_task_group() as group:
        group.start_soon(request_then_check)
        await settle(lambda: len(in_flight) == 1)
        assert await in_flight.drain(0.05) == 1
    assert leftover == [0]


async def test_drain_cuts_a_request_through_a_cancel_scope_off_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The path trio takes: no asyncio task to cancel, so an anyio cancel scope is used.
    monkeypatch.setattr(lifecycle, "current_asyncio_task", lambda: None)
    assert await _run_and_drain(InFlightRequests()) == (True, 1)


async def test_a_cancel_that_is_not_shutdowns_propagates() -> None:
    in_flight = InFlightRequests()
    started = anyio.Event()
    task = asyncio.ensure_future(in_flight.run(_sleep_forever(started)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(in_flight) == 0


async def test_a_cancel_on_top_of_shutdowns_still_propagates() -> None:
    in_flight = InFlightRequests()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(in_flight.run(waiter))
    # When drain cancels the waiter, someone else cancels the task too, before it wakes.
    waiter.add_done_callback(lambda _: task.cancel())
    await anyio.lowlevel.checkpoint()
    assert len(in_flight) == 1
    assert await in_flight.drain(0) == 1
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(in_flight) == 0
