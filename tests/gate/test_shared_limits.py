"""Per-caller limits shared through a real Redis (and a real 3-master cluster): the rate
limit, tokens per minute and spend budgets hold across instances; a Redis outage falls
back to per-process books and fails no request."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
import redis as sync_redis

from asgi_autoproxy import (
    AutoProxyMiddleware,
    ModelCatalog,
    RateLimit,
    RedisCache,
    SpendBudget,
    TokenLimit,
)
from asgi_autoproxy._routing.pricing import Price
from asgi_autoproxy._shared.redis_link import Unavailable
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio

OTHER_KEY = "sk-other-caller-key-778899"
THIRD_KEY = "sk-third-caller-key-112233"
KEYS = {CALLER_KEY: "alice", OTHER_KEY: "bob", THIRD_KEY: "carol"}
# $0.1 per token both ways: the fake upstream's answers (5 in, 3 out) cost $0.80 each.
PRICE = Price(input=100_000, output=100_000)


@pytest.fixture
def priced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog prices gpt-4o-mini (another change fills real prices in)."""

    def price(self: ModelCatalog, model: str) -> Price | None:
        return PRICE if model == "gpt-4o-mini" else None

    monkeypatch.setattr(ModelCatalog, "price", price)


def instances(make_proxy: MakeProxy, url: str, prefix: str, **kwargs: Any) -> list[Any]:
    """Two middleware instances, as two processes would be, sharing one Redis."""
    return [
        make_proxy(
            provider={"api_key": SERVER_KEY},
            api_keys=KEYS,
            cache=RedisCache(url, prefix=prefix, timeout=2),
            **kwargs,
        )
        for _ in range(2)
    ]


async def ask(app: AutoProxyMiddleware, key: str = CALLER_KEY, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {key}"},
    ) as http:
        return await http.post("/v1/proxy/auto", json=chat_body(**body))


async def test_burst_2_means_2_across_instances(
    make_proxy: MakeProxy, upstream: FakeUpstream, redis_url: str
) -> None:
    a, b = instances(
        make_proxy,
        redis_url,
        f"rate-{time.monotonic_ns()}:",
        rate_limit=RateLimit(requests_per_second=0.01, burst=2),
    )
    statuses = [(await ask(app)).status_code for app in (a, b, a, b)]
    assert statuses == [200, 200, 429, 429]
    refused = await ask(b)
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert 90 <= int(refused.headers["retry-after"]) <= 100  # one request per 100 s
    assert (await ask(a, OTHER_KEY)).status_code == 200  # bob has his own bucket
    assert upstream.calls == 3


async def test_token_limit_charges_reported_usage_across_instances(
    make_proxy: MakeProxy, upstream: FakeUpstream, redis_url: str
) -> None:
    a, b = instances(
        make_proxy,
        redis_url,
        f"tokens-{time.monotonic_ns()}:",
        token_limit=TokenLimit(tokens_per_minute=10),
    )
    # Each answer reports 8 tokens: the first leaves 2, the second goes 6 below zero.
    first = await ask(a, content="one")
    second = await ask(b, content="two")
    refused = await ask(a, content="three")
    assert (first.status_code, second.status_code, refused.status_code) == (200, 200, 429)
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "token_limit_exceeded")
    assert "10 tokens per minute" in error["message"] and "resets in" in error["message"]
    # 6 tokens below zero refill at 10 per minute: 36 s.
    assert 30 <= int(refused.headers["retry-after"]) <= 37
    assert (await ask(b, content="four")).status_code == 429
    assert (await ask(b, OTHER_KEY, content="one")).status_code == 200
    assert upstream.calls == 3


async def test_spend_budget_per_day_across_instances(
    make_proxy: MakeProxy, upstream: FakeUpstream, redis_url: str, priced: None
) -> None:
    a, b = instances(
        make_proxy,
        redis_url,
        f"spend-{time.monotonic_ns()}:",
        spend_budget=SpendBudget(dollars=1.0, period="day"),
    )
    assert (await ask(a, content="one")).status_code == 200  # $0.80
    assert (await ask(b, content="two")).status_code == 200  # $1.60: over, after the answer
    refused = await ask(a, content="three")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "spend_budget_exceeded")
    midnight = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert "$1 per day" in error["message"] and midnight in error["message"]
    until_midnight = (
        datetime.fromisoformat(midnight.replace("Z", "+00:00")) - datetime.now(UTC)
    ).total_seconds()
    assert abs(int(refused.headers["retry-after"]) - until_midnight) <= 5
    assert (await ask(b, OTHER_KEY)).status_code == 200
    assert upstream.calls == 3


async def test_an_unpriced_model_is_refused_under_a_budget(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer, priced: None
) -> None:
    (app, _) = instances(make_proxy, server.url, "unpriced:", spend_budget=SpendBudget(dollars=5.0))
    refused = await ask(app, model="gpt-4o")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_priced"
    assert upstream.calls == 0


async def test_a_month_budget_resets_on_the_first_of_next_month() -> None:
    budget = SpendBudget(dollars=1, period="month")
    feb = datetime(2028, 2, 29, 23, 59, tzinfo=UTC).timestamp()
    assert budget.period_of(feb) == ("2028-02", datetime(2028, 3, 1, tzinfo=UTC).timestamp())
    dec = datetime(2026, 12, 31, 12, tzinfo=UTC).timestamp()
    assert budget.period_of(dec) == ("2026-12", datetime(2027, 1, 1, tzinfo=UTC).timestamp())


async def test_memory_storage_keeps_limits_per_process(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    a, b = instances(
        make_proxy,
        server.url,
        "memory-rate:",
        rate_limit=RateLimit(requests_per_second=0.01, burst=1, storage="memory"),
    )
    assert [(await ask(app)).status_code for app in (a, b, a)] == [200, 200, 429]


async def test_shared_state_none_keeps_limits_per_process(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    a, b = instances(
        make_proxy,
        server.url,
        "none-rate:",
        shared_state=None,
        rate_limit=RateLimit(requests_per_second=0.01, burst=1),
    )
    assert [(await ask(app)).status_code for app in (a, b, a)] == [200, 200, 429]


async def test_shared_state_can_name_another_redis_than_the_cache(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    with running_redis() as other:
        a, b = (
            make_proxy(
                provider={"api_key": SERVER_KEY},
                api_keys=KEYS,
                cache=None,
                shared_state=other.url,
                rate_limit=RateLimit(requests_per_second=0.01, burst=1),
            )
            for _ in "ab"
        )
        assert [(await ask(app)).status_code for app in (a, b)] == [200, 429]
        with sync_redis.Redis.from_url(other.url) as raw:
            assert [k for k in raw.scan_iter("asgi_autoproxy:state:limit:*")]


async def test_redis_storage_without_shared_state_fails_at_start_up(make_proxy: MakeProxy) -> None:
    with pytest.raises(ValueError, match="shared_state="):
        make_proxy(
            provider={"api_key": SERVER_KEY},
            api_keys=KEYS,
            rate_limit=RateLimit(requests_per_second=1, storage="redis"),
        )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: TokenLimit(tokens_per_minute=0), "tokens_per_minute"),
        (lambda: SpendBudget(dollars=0), "dollars"),
        (lambda: SpendBudget(dollars=1, period="week"), "period"),  # type: ignore[arg-type]
        (lambda: RateLimit(requests_per_second=1, storage="disk"), "storage"),  # type: ignore[arg-type]
    ],
)
def test_limit_settings_are_checked(factory: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


async def test_a_dead_redis_falls_back_to_per_process_limits_and_resumes(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    with running_redis() as own:
        a, b = (
            make_proxy(
                provider={"api_key": SERVER_KEY},
                api_keys=KEYS,
                cache=RedisCache(own.url, prefix="dead:", timeout=0.2, retry_after=0.2),
                rate_limit=RateLimit(requests_per_second=0.01, burst=2),
            )
            for _ in "ab"
        )
        assert [(await ask(app)).status_code for app in (a, b)] == [200, 200]
        own.kill()
        # Per process now: each instance has a full bucket of its own. Nothing fails.
        during = [(await ask(app, content=f"d{i}")).status_code for i, app in enumerate((a, b))]
        assert during == [200, 200]
        own.start()  # empty: the shared buckets start again full
        deadline = time.monotonic() + 10
        for app in (a, b):  # each instance finds Redis again by itself
            link = app.cache.link
            while True:
                try:
                    await link.run("ping", lambda redis: redis.ping())
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "Redis never came back"
                    await anyio.sleep(0.05)
        carol = [(await ask(app, THIRD_KEY)).status_code for app in (a, b, a)]
        assert carol == [200, 200, 429]  # shared again: a burst of 2 across both
