"""Streams coalesced across processes through Redis Streams, with two middleware
instances (as two processes would be) on a real redis-server: followers relay the
leader's stream live, what crosses Redis is sealed, and an upstream error or a Redis
failure makes followers go alone, never fail."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import redis

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, RedisCache
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio


def pair(make_proxy: MakeProxy, server: RedisServer, prefix: str) -> list[AutoProxyMiddleware]:
    return [
        make_proxy(
            cache=RedisCache(server.url, prefix=prefix, timeout=2),
            cache_options=CacheOptions(timeout=2),
        )
        for _ in "ab"
    ]


async def stream(app: AutoProxyMiddleware, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
        timeout=30,
    ) as http:
        return await http.post("/v1/proxy/auto", json=body)


async def until(condition: Any, within: float = 10.0) -> None:
    """Poll a condition another thread (the fake upstream's server) makes true."""
    deadline = anyio.current_time() + within
    while not condition():
        assert anyio.current_time() < deadline, "condition not met in time"
        await anyio.sleep(0.01)


async def test_a_follower_in_another_instance_relays_the_leaders_stream(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    a, b = pair(make_proxy, server, "relayed:")
    prompt = "a secret prompt about Zanzibar"
    body = chat_body(prompt, temperature=0, stream=True, fake={"gate": True, "chunks": 4})
    answers: dict[str, httpx.Response] = {}

    async def ask(name: str, app: AutoProxyMiddleware) -> None:
        answers[name] = await stream(app, body)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask, "a", a)
        await until(lambda: upstream.parked)  # A leads: its first event is out
        tasks.start_soon(ask, "b", b)
        await anyio.sleep(0.5)  # B finds A's lock and follows A's stream
        with redis.Redis.from_url(server.url) as raw:
            [name] = list(raw.scan_iter(match="relayed:stream:*"))
            items = raw.xrange(name)
        assert len(items) >= 2  # the headers and the first event, as they came
        for _, fields in items:  # sealed: neither the prompt nor the answer shows
            assert b"Zanzibar" not in fields[b"d"] and b"tok0" not in fields[b"d"]
        upstream.open_gate()
    assert upstream.calls == 1
    assert answers["a"].headers["x-bt-cached"] == "MISS"
    assert answers["b"].headers["x-bt-cached"] == "HIT"
    assert answers["b"].content == answers["a"].content
    assert answers["a"].content.endswith(b"data: [DONE]\n\n")


async def test_an_error_answer_sends_followers_upstream_themselves(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    """An error is never shared across processes: the follower asks for itself."""
    a, b = pair(make_proxy, server, "errors:")
    body = chat_body("fails", temperature=0, stream=True, fake={"status": 400, "sleep": 0.5})
    answers: list[httpx.Response] = []

    async def ask(app: AutoProxyMiddleware) -> None:
        answers.append(await stream(app, body))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask, a)
        await until(lambda: upstream.calls == 1)
        tasks.start_soon(ask, b)
    assert [r.status_code for r in answers] == [400, 400]
    assert upstream.calls == 2


async def test_a_dead_redis_leaves_streams_to_each_instance(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    with running_redis() as own:
        a, b = (
            make_proxy(cache=RedisCache(own.url, prefix="gone:", timeout=0.2, retry_after=0.2))
            for _ in "ab"
        )
        own.kill()
        body = chat_body("no redis", temperature=0, stream=True, fake={"chunks": 3})
        answers = [await stream(app, body) for app in (a, b)]
    assert [r.status_code for r in answers] == [200, 200]
    assert all(r.content.endswith(b"data: [DONE]\n\n") for r in answers)
    assert upstream.calls == 2
