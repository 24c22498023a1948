"""Coalesced requests: errors are not hits."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, MemoryCache
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


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
