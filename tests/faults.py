"""Shared helpers for the fault tests: the proxy set up against the fault upstream,
and checks that an answer is well formed."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from asgi_autoproxy import AutoProxyMiddleware, Limits, MemoryCache, OpenAIProvider
from asgi_autoproxy.providers.base import UpstreamResponse
from tests.conftest import CALLER_KEY, inner_app
from tests.fault_upstream import RETRY_AFTER, refused_url

# Short limits so slow faults cost a fraction of a second.
# The idle limit is shorter than the read timeout, as in the defaults (120 s vs 600 s), so
# a stalled stream is always ended by the idle limit, never by a race with the read.
FAST_TIMEOUT = httpx.Timeout(connect=2.0, read=0.5, write=2.0, pool=2.0)
IDLE_TIMEOUT = 0.3
REFUSED_MODEL = "refused-model"


@dataclass(frozen=True)
class Expect:
    """What the caller must get: an error status and code, or a 200 stream whose last
    event is an error (``code`` names it; None for an error relayed from upstream)."""

    status: int
    code: str | None
    stream_error: bool = False


def expected(kind: str, stream: bool) -> Expect:
    if kind == "refused" or kind.startswith("reset_before"):
        return Expect(502, "upstream_unreachable")
    if kind == "reset_mid_body":
        return Expect(502, "upstream_unreachable")
    if kind in ("slow_headers", "slow_body"):
        return Expect(504, "upstream_timeout")
    if kind == "http_500":
        return Expect(500, None)
    if kind == "http_502":
        return Expect(502, "upstream_502")
    if kind == "http_503":
        return Expect(503, None)
    if kind == "rate_limited":
        return Expect(429, None)
    if kind == "malformed_json":
        return Expect(502, "upstream_invalid_response")
    if kind == "error_event":
        return Expect(200, None, stream_error=True)
    assert stream, kind
    return Expect(200, "upstream_stream_error", stream_error=True)


def faulty_proxy(upstream_url: str, **kwargs: Any) -> AutoProxyMiddleware:
    providers = [
        OpenAIProvider(base_url=refused_url(), models=[REFUSED_MODEL], name="nowhere"),
        # Not "*": the refused model must have no provider to fail over to.
        OpenAIProvider(base_url=upstream_url, models=["gpt-*"], name="faulty"),
    ]
    options: dict[str, Any] = {
        "timeout": FAST_TIMEOUT,
        "limits": Limits(stream_idle_timeout=IDLE_TIMEOUT),
        "cache": MemoryCache(),
        **kwargs,
    }
    return AutoProxyMiddleware(inner_app(), providers=providers, **options)


def fault_body(kind: str, stream: bool, content: str = "hello", **fault: Any) -> dict[str, Any]:
    model = REFUSED_MODEL if kind == "refused" else "gpt-4o-mini"
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,  # cacheable: the proof that nothing is cached means something
        "stream": stream,
        "fault": {"kind": "ok" if kind == "refused" else kind, **fault},
    }


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
        timeout=30,
    )


def sse_events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e.strip()]


def event_json(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    return json.loads(event[6:])


def check_outcome(response: httpx.Response, expect: Expect) -> None:
    """The answer is what ``expect`` says and well formed: no half answers, no tracebacks."""
    assert response.status_code == expect.status, (response.status_code, response.text[:300])
    assert response.headers["x-request-id"]
    if expect.status != 200:
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        assert error["message"]
        if expect.code is not None:
            assert error["code"] == expect.code, error
        if expect.status == 429:
            assert response.headers["retry-after"] == RETRY_AFTER
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert events, "an empty stream"
    for event in events[:-1]:
        assert "error" not in event_json(event), event
    last = event_json(events[-1])
    assert expect.stream_error
    assert last["error"]["message"]
    if expect.code is not None:
        assert last["error"]["code"] == expect.code, last
    assert response.content.endswith(b"\n\n")
    assert b"data: [DONE]" not in response.content


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pool_counts(proxy: AutoProxyMiddleware) -> tuple[int, int]:
    """(idle, in use) upstream connections of the proxy's client, whichever transport."""
    transport: Any = proxy._clients.get()._transport
    if hasattr(transport, "connection_counts"):
        idle, in_use = transport.connection_counts()
        return idle, in_use
    pool = list(transport._pool.connections)  # httpcore internals, read for the leak check
    idle = sum(1 for c in pool if c.is_idle())
    return idle, len(pool) - idle


def tasks_now() -> int:
    return len(asyncio.all_tasks())


async def settle(condition: Callable[[], bool], within: float = 3.0) -> bool:
    """Poll until ``condition`` holds (the other side of a socket closes asynchronously)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await anyio.sleep(0.02)
    return condition()


def empty_chat_answer(stream: bool, headers: list[tuple[str, str]]) -> UpstreamResponse:
    """A minimal valid chat answer with ``headers``, whole or streamed, for custom
    providers that answer from bytes."""
    if stream:
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}
        events = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
        return UpstreamResponse.from_bytes(
            200, events, [*headers, ("content-type", "text/event-stream")]
        )
    whole = {"object": "chat.completion", "choices": []}
    return UpstreamResponse.from_bytes(
        200, json.dumps(whole).encode(), [*headers, ("content-type", "application/json")]
    )
