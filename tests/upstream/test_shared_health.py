"""Provider health shared through a real Redis (and a real 3-master cluster): a provider
cooled on one instance is skipped by the other; round-robin turns go round across
instances; a Redis outage leaves each instance its own health and fails no request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, Cooldown, OpenAIProvider, RedisCache
from asgi_autoproxy._shared.redis_link import Unavailable
from asgi_autoproxy._upstream.shared_health import DEFAULT_REFRESH, SharedHealth
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, running_redis
from tests.servers import ServerThread, serve_fleet

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def _fleet() -> Iterator[list[tuple[FakeUpstream, ServerThread]]]:
    with serve_fleet(FakeUpstream, 2) as fleet:
        yield fleet


@pytest.fixture
def fleet(_fleet: list[tuple[FakeUpstream, ServerThread]]) -> list[FakeUpstream]:
    for fake, _ in _fleet:
        fake.reset()
    _fleet[0][0].overrides = {"status": 503}  # "flaky" fails every request
    return [fake for fake, _ in _fleet]


def instances(
    make_proxy: MakeProxy,
    fleet: list[tuple[FakeUpstream, ServerThread]],
    url: str | None,
    prefix: str,
    **kwargs: Any,
) -> list[AutoProxyMiddleware]:
    providers = [
        OpenAIProvider(base_url=server.url + "/v1", api_key=SERVER_KEY, name=name)
        for (_, server), name in zip(fleet, ("flaky", "steady"), strict=True)
    ]
    return [
        make_proxy(
            providers=providers,
            allow_anonymous=True,
            cache=None if url is None else RedisCache(url, prefix=prefix, timeout=0.5),
            **kwargs,
        )
        for _ in range(2)
    ]


async def ask(app: AutoProxyMiddleware, content: str = "hi") -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    ) as http:
        return await http.post("/v1/proxy/auto", json=chat_body(content))


async def test_a_provider_cooled_on_one_instance_is_skipped_by_the_other(
    make_proxy: MakeProxy,
    fleet: list[FakeUpstream],
    _fleet: list[tuple[FakeUpstream, ServerThread]],
    redis_url: str,
) -> None:
    flaky, steady = fleet
    a, b = instances(
        make_proxy,
        _fleet,
        redis_url,
        f"health-{time.monotonic_ns()}:",
        cooldown=Cooldown(after_failures=2, seconds=30),
    )
    for _ in range(2):  # A: flaky fails twice (A fails over to steady each time)
        assert (await ask(a)).status_code == 200
    assert (flaky.calls, steady.calls) == (2, 2)
    await anyio.sleep(DEFAULT_REFRESH * 1.5)  # B's mirror refreshes at most this often
    for _ in range(3):
        assert (await ask(b)).status_code == 200
    assert (flaky.calls, steady.calls) == (2, 5)  # B never tried flaky


async def test_round_robin_turns_go_round_across_instances(
    make_proxy: MakeProxy,
    fleet: list[FakeUpstream],
    _fleet: list[tuple[FakeUpstream, ServerThread]],
    server: RedisServer,
) -> None:
    flaky, steady = fleet
    flaky.overrides = {}
    a, b = instances(
        make_proxy, _fleet, server.url, "turns:", load_balancing="round_robin", cooldown=None
    )
    used = [(await ask(app)).headers["x-bt-used-endpoint"] for app in (a, b, a, b)]
    # Per process each instance would start with the first: flaky, flaky, steady, steady.
    # Shared, the turns alternate whichever instance a request reaches.
    assert used in (["flaky", "steady"] * 2, ["steady", "flaky"] * 2)
    assert (flaky.calls, steady.calls) == (2, 2)


async def test_without_shared_state_health_stays_per_process(
    make_proxy: MakeProxy,
    fleet: list[FakeUpstream],
    _fleet: list[tuple[FakeUpstream, ServerThread]],
) -> None:
    flaky, _steady = fleet
    a, b = instances(make_proxy, _fleet, None, "", cooldown=Cooldown(after_failures=2))
    for _ in range(2):
        await ask(a)
    await ask(b)
    assert flaky.calls == 3  # B knew nothing of A's failures


async def test_a_dead_redis_leaves_each_instance_its_own_health(
    make_proxy: MakeProxy,
    fleet: list[FakeUpstream],
    _fleet: list[tuple[FakeUpstream, ServerThread]],
) -> None:
    flaky, _steady = fleet
    with running_redis() as own:
        a, b = instances(make_proxy, _fleet, own.url, "dead:", cooldown=Cooldown(after_failures=2))
        own.kill()
        for app in (a, a, b, b, a, b):
            assert (await ask(app)).status_code == 200  # nothing fails
        assert flaky.calls == 4  # each instance cooled it after its own two failures
        health = a._pipeline._dispatcher.health
        assert isinstance(health, SharedHealth) and health.fallbacks > 0

        own.start()
        deadline = time.monotonic() + 10
        link = a.cache.link  # type: ignore[union-attr]
        while True:
            try:
                await link.run("ping", lambda redis: redis.ping())
                break
            except Unavailable:
                assert time.monotonic() < deadline, "Redis never came back"
                await anyio.sleep(0.05)
        # Shared again, by itself: Redis (empty) is the truth once more, so A tries flaky
        # again, and its two failures cool flaky for B as well.
        await anyio.sleep(DEFAULT_REFRESH * 1.5)
        before = flaky.calls
        for _ in range(2):
            assert (await ask(a)).status_code == 200
        await anyio.sleep(DEFAULT_REFRESH * 1.5)
        assert (await ask(b)).status_code == 200
        assert flaky.calls - before == 2
