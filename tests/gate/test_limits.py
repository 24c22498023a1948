"""Limits: body size, JSON depth, headers, concurrent upstream calls, per-caller rate."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_autoproxy import AutoProxyMiddleware, Limits, ProxyError, RateLimit
from asgi_autoproxy._gate.limits import TokenBuckets, check_json_depth
from tests.conftest import CALLER_KEY, SERVER_KEY, Clock, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

OTHER_KEY = "sk-other-caller-key-778899"


def http(app: AutoProxyMiddleware, key: str = CALLER_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def nested(depth: int) -> Any:
    """A value whose outermost container is level 1 and innermost level ``depth``."""
    value: Any = []
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


async def until_streaming(upstream: FakeUpstream) -> None:
    """Wait (bounded) until the fake upstream has sent a gated stream's first chunk."""
    for _ in range(1000):
        if upstream.chunks_sent:
            return
        await anyio.sleep(0.01)
    raise AssertionError("the upstream stream never started")


# -- body size ----------------------------------------------------------------------


async def test_body_over_limit_is_413(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(limits=Limits(max_body_size=1000))
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body("x" * 2000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "1000 bytes" in response.json()["error"]["message"]
    assert upstream.calls == 0


# -- JSON depth -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5, 16])
def test_depth_at_or_under_limit_passes(depth: int) -> None:
    value = nested(depth)
    check_json_depth(json.dumps(value).encode(), value, depth)


@pytest.mark.parametrize("depth", [2, 5, 16])
def test_depth_over_limit_fails(depth: int) -> None:
    value = nested(depth + 1)
    with pytest.raises(Exception, match="nested deeper") as info:
        check_json_depth(json.dumps(value).encode(), value, depth)
    assert getattr(info.value, "status", None) == 400


def test_brackets_inside_strings_do_not_count() -> None:
    value = {"model": "m", "messages": [{"role": "user", "content": "[[[[{{{{" * 50}]}
    check_json_depth(json.dumps(value).encode(), value, 3)


async def test_deep_body_is_400_before_reaching_upstream(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_json_depth=8))
    ok_body = chat_body(extra=nested(5))  # 1 + 5 levels
    deep_body = chat_body(extra=nested(8))
    async with http(app) as client:
        ok = await client.post("/v1/proxy/auto", json=ok_body)
        deep = await client.post("/v1/proxy/auto", json=deep_body)
    assert ok.status_code == 200
    assert deep.status_code == 400
    assert deep.json()["error"]["code"] == "json_too_deep"
    assert "8 levels" in deep.json()["error"]["message"]
    assert upstream.calls == 1


async def test_nesting_past_the_parsers_own_limit_gets_the_same_error(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await client.post(
        "/v1/proxy/auto", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "json_too_deep"
    assert upstream.calls == 0


@pytest.mark.parametrize("depth", [0, 1001])
async def test_max_json_depth_is_validated(make_proxy: MakeProxy, depth: int) -> None:
    with pytest.raises(ValueError, match="max_json_depth"):
        make_proxy(limits=Limits(max_json_depth=depth))


# -- headers ------------------------------------------------------------------------


async def test_too_many_headers_is_431(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(limits=Limits(max_header_count=20))
    many = {f"x-extra-{i}": "1" for i in range(25)}
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body(), headers=many)
        fine = await client.post("/v1/proxy/auto", json=chat_body(), headers={"x-one": "1"})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert "at most 20" in response.json()["error"]["message"]
    assert fine.status_code == 200
    assert upstream.calls == 1


async def test_too_large_headers_is_431(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(limits=Limits(max_header_bytes=4096))
    async with http(app) as client:
        response = await client.get("/v1/proxy/models", headers={"cookie": "c" * 5000})
    assert response.status_code == 431
    assert "4096" in response.json()["error"]["message"]


async def test_header_limits_leave_the_inner_app_alone(make_proxy: MakeProxy) -> None:
    app = make_proxy(limits=Limits(max_header_count=5))
    async with http(app) as client:
        response = await client.get("/", headers={f"x-{i}": "1" for i in range(10)})
    assert response.status_code == 200
    assert response.text == "inner app"


# -- concurrent upstream calls ------------------------------------------------------


async def test_upstream_cap_answers_503_with_retry_after(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_concurrent_upstream=1))
    held: list[httpx.Response] = []
    async with http(app) as client:

        async def hold_the_slot() -> None:
            body = chat_body(stream=True, fake={"gate": True, "chunks": 2})
            held.append(await client.post("/v1/proxy/auto", json=body))

        async with anyio.create_task_group() as group:
            group.start_soon(hold_the_slot)
            await until_streaming(upstream)
            refused = await client.post("/v1/proxy/auto", json=chat_body())
            models = await client.get("/v1/proxy/models")  # no upstream call: not capped
            upstream.open_gate()
        after = await client.post("/v1/proxy/auto", json=chat_body())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "upstream_capacity"
    assert models.status_code == 200
    assert held[0].status_code == 200 and "[DONE]" in held[0].text
    assert after.status_code == 200
    assert upstream.calls == 2


async def test_cache_hits_do_not_take_an_upstream_slot(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_concurrent_upstream=1))
    async with http(app) as client:
        await client.post("/v1/proxy/auto", json=chat_body("cached", temperature=0))

        async def hold_the_slot() -> None:
            body = chat_body(stream=True, fake={"gate": True, "chunks": 2})
            await client.post("/v1/proxy/auto", json=body)

        async with anyio.create_task_group() as group:
            group.start_soon(hold_the_slot)
            await until_streaming(upstream)
            hit = await client.post("/v1/proxy/auto", json=chat_body("cached", temperature=0))
            upstream.open_gate()
    assert hit.status_code == 200
    assert hit.headers["x-bt-cached"] == "HIT"


async def test_upstream_cap_is_validated(make_proxy: MakeProxy) -> None:
    with pytest.raises(ValueError, match="max_concurrent_upstream"):
        make_proxy(limits=Limits(max_concurrent_upstream=0))


# -- rate limit ---------------------------------------------------------------------


async def test_rate_limit_is_per_caller_with_retry_after(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    clock = Clock(100.0)
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys={CALLER_KEY: "alice", OTHER_KEY: "bob"},
        rate_limit=RateLimit(requests_per_second=0.5, burst=2, clock=clock),
    )
    async with http(app, CALLER_KEY) as alice, http(app, OTHER_KEY) as bob:
        statuses = [(await alice.get("/v1/proxy/models")).status_code for _ in range(2)]
        limited = await alice.post("/v1/proxy/auto", json=chat_body())
        other = await bob.post("/v1/proxy/auto", json=chat_body())
        clock.now += 1.0  # half a token: still limited, one more second to wait
        still = await alice.get("/v1/proxy/models")
        clock.now += 1.0
        again = await alice.post("/v1/proxy/auto", json=chat_body())
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert other.status_code == 200
    assert still.status_code == 429 and still.headers["retry-after"] == "1"
    assert again.status_code == 200
    assert upstream.calls == 2


async def test_keys_of_one_caller_share_a_bucket(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys={CALLER_KEY: "team", OTHER_KEY: "team"},
        rate_limit=RateLimit(requests_per_second=1, burst=1, clock=Clock(100.0)),
    )
    async with http(app, CALLER_KEY) as one, http(app, OTHER_KEY) as two:
        first = await one.get("/v1/proxy/models")
        second = await two.get("/v1/proxy/models")
    assert (first.status_code, second.status_code) == (200, 429)


async def test_refused_callers_never_spend_tokens(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """A 401 comes before the rate limit, so strangers cannot drain a caller's bucket."""
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys={CALLER_KEY: "alice"},
        rate_limit=RateLimit(requests_per_second=1, burst=1, clock=Clock(100.0)),
    )
    async with http(app, "sk-stranger") as stranger, http(app, CALLER_KEY) as alice:
        refused = [(await stranger.get("/v1/proxy/models")).status_code for _ in range(3)]
        served = await alice.get("/v1/proxy/models")
    assert refused == [401, 401, 401]
    assert served.status_code == 200


def test_bucket_memory_is_bounded_least_recent_first() -> None:
    clock = Clock(100.0)
    buckets = TokenBuckets(RateLimit(requests_per_second=1, burst=1, max_callers=2, clock=clock))
    buckets.take("a")
    buckets.take("b")
    with pytest.raises(Exception, match="Rate limit"):
        buckets.take("a")  # "a" is now the most recent
    buckets.take("c")  # evicts "b", the least recently seen
    assert len(buckets) == 2
    buckets.take("b")  # back with a full bucket
    with pytest.raises(Exception, match="Rate limit"):
        buckets.take("c")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_second": 0},
        {"requests_per_second": float("inf")},
        {"requests_per_second": 1, "burst": 0},
        {"requests_per_second": 1, "max_callers": 0},
    ],
)
def test_rate_limit_config_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(**kwargs)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(min_value=1, max_value=8))
def test_depth_check_agrees_with_a_plain_recursive_count(value: Any, limit: int) -> None:
    body = json.dumps(value).encode()
    if depth_of(value) <= limit:
        check_json_depth(body, value, limit)
    else:
        with pytest.raises(ProxyError):
            check_json_depth(body, value, limit)
