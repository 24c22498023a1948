"""The deterministic-response cache, end to end against the real fake upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, MemoryCache
from tests.conftest import CALLER_KEY, Clock, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


def http_client(app: AutoProxyMiddleware, key: str = CALLER_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


@pytest.fixture
async def proxy(make_proxy: MakeProxy) -> AsyncIterator[AutoProxyMiddleware]:
    app = make_proxy()
    yield app
    await app.aclose()


async def post(
    app: AutoProxyMiddleware, body: Any, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    async with http_client(app, **kw) as http:
        return await http.post("/v1/proxy/auto", json=body, headers=headers or {})


# -- policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{"temperature": 0}, {"temperature": 0.0}, {"seed": 7}, {"seed": 0, "temperature": 1}],
)
async def test_deterministic_requests_are_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, extra: dict[str, Any]
) -> None:
    first = await post(proxy, chat_body(**extra))
    second = await post(proxy, chat_body(**extra))
    assert first.headers["x-bt-cached"] == "MISS"
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.content == first.content
    assert upstream.calls == 1


@pytest.mark.parametrize("extra", [{}, {"temperature": 0.7}, {"seed": None}, {"temperature": None}])
async def test_other_requests_are_not_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, extra: dict[str, Any]
) -> None:
    first = await post(proxy, chat_body(**extra))
    second = await post(proxy, chat_body(**extra))
    assert first.headers["x-bt-cached"] == second.headers["x-bt-cached"] == "MISS"
    assert first.json()["id"] != second.json()["id"]
    assert "cache-control" not in second.headers
    assert upstream.calls == 2


async def test_use_cache_always_caches_random_requests(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    headers = {"x-bt-use-cache": "always"}
    await post(proxy, chat_body(temperature=0.9), headers)
    second = await post(proxy, chat_body(temperature=0.9), headers)
    assert second.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 1


async def test_use_cache_never_skips_deterministic_requests(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    headers = {"x-bt-use-cache": "never"}
    await post(proxy, chat_body(temperature=0), headers)
    second = await post(proxy, chat_body(temperature=0), headers)
    assert second.headers["x-bt-cached"] == "MISS"
    # And nothing was written: an auto request still misses.
    third = await post(proxy, chat_body(temperature=0))
    assert third.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 3


async def test_invalid_use_cache_value_is_400_listing_allowed(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    response = await post(proxy, chat_body(temperature=0), {"x-bt-use-cache": "sometimes"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert all(value in message for value in ("auto", "always", "never"))
    assert upstream.calls == 0


async def test_write_sets_cache_control_and_age(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    response = await post(proxy, chat_body(temperature=0))
    assert response.headers["cache-control"] == "max-age=604800"
    assert response.headers["age"] == "0"


@pytest.mark.parametrize(
    ("sent", "expected"), [("60", "60"), ("0", "1"), ("-5", "1"), ("99999999", "604800")]
)
async def test_ttl_header_is_clamped(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, sent: str, expected: str
) -> None:
    response = await post(proxy, chat_body(temperature=0), {"x-bt-cache-ttl": sent})
    assert response.headers["cache-control"] == f"max-age={expected}"


async def test_bad_ttl_header_is_400(proxy: AutoProxyMiddleware, upstream: FakeUpstream) -> None:
    response = await post(proxy, chat_body(temperature=0), {"x-bt-cache-ttl": "soon"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-bt-cache-ttl"


async def test_ttl_expiry_with_injected_clock(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    clock = Clock()
    app = make_proxy(
        cache=MemoryCache(timer=clock), cache_options=CacheOptions(clock=clock), cache_ttl=60
    )
    await post(app, chat_body(temperature=0))
    clock.now += 59
    hit = await post(app, chat_body(temperature=0))
    assert hit.headers["x-bt-cached"] == "HIT"
    assert hit.headers["age"] == "59"
    clock.now += 2
    expired = await post(app, chat_body(temperature=0))
    assert expired.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_hit_replays_answer_headers_but_not_per_call_ones(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, stream: bool
) -> None:
    """Rate-limit counts, processing time and retry advice describe the upstream call that
    filled the entry; a hit makes no call, so replaying them would mislead the caller."""
    per_call = {"retry-after": "3", "x-ratelimit-remaining-tokens": "1000"}
    body = chat_body(temperature=0, stream=stream, fake={"headers": per_call})
    first = await post(proxy, body, {"x-request-id": "one"})
    second = await post(proxy, body, {"x-request-id": "two"})
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    for name in ("x-upstream-request-id", "x-bt-used-endpoint"):
        assert second.headers[name] == first.headers[name]
    for name in ("openai-processing-ms", "x-ratelimit-remaining-requests", *per_call):
        assert name in first.headers
        assert name not in second.headers
    assert second.headers["x-request-id"] == "two"
    assert second.content == first.content
    if not stream:
        assert int(second.headers["content-length"]) == len(second.content)


class BytesCache:
    """A backend that keeps bytes, as Redis does: its hits go through CachedResponse.decode."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)


# Set per response, never replayed from the entry (with a miss's cache-control: max-age).
_OWN_HEADERS = {b"age", b"x-bt-cached", b"x-request-id", b"content-length"}
# What the fake upstream sends that describes its call, not the answer: not replayed.
_PER_CALL_HEADERS = {b"openai-processing-ms", b"x-ratelimit-remaining-requests"}


@pytest.mark.parametrize("backend", [MemoryCache, BytesCache])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_hit_sends_the_stored_headers_in_order_then_its_own(
    make_proxy: MakeProxy, upstream: FakeUpstream, backend: type[Any], stream: bool
) -> None:
    clock = Clock()
    proxy = make_proxy(cache=backend(), cache_options=CacheOptions(clock=clock))
    body = chat_body(temperature=0, stream=stream)
    miss = await post(proxy, body, {"x-request-id": "one"})
    clock.now += 42
    hit = await post(proxy, body, {"x-request-id": "two"})
    assert hit.content == miss.content
    stored = [
        (k, v)
        for k, v in miss.headers.raw
        if k not in _OWN_HEADERS | _PER_CALL_HEADERS and not v.startswith(b"max-age=")
    ]
    assert len(stored) >= 3  # content-type, x-upstream-request-id, x-bt-used-endpoint
    own = [(b"x-bt-cached", b"HIT"), (b"age", b"42"), (b"x-request-id", b"two")]
    if not stream:
        own.append((b"content-length", str(len(hit.content)).encode()))
    assert hit.headers.raw == [*stored, *own]


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0"])
async def test_request_no_cache_skips_read_but_writes(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, directive: str
) -> None:
    await post(proxy, chat_body(temperature=0))
    fresh = await post(proxy, chat_body(temperature=0), {"cache-control": directive})
    assert fresh.headers["x-bt-cached"] == "MISS"
    again = await post(proxy, chat_body(temperature=0))
    assert again.headers["x-bt-cached"] == "HIT"
    assert again.content == fresh.content  # the fresh answer replaced the old entry
    assert upstream.calls == 2


async def test_request_no_store_skips_write(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    stored_not = await post(proxy, chat_body(temperature=0), {"cache-control": "no-store"})
    assert "cache-control" not in stored_not.headers
    later = await post(proxy, chat_body(temperature=0))
    assert later.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


async def test_request_max_age_limits_entry_age(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    clock = Clock()
    app = make_proxy(cache=MemoryCache(timer=clock), cache_options=CacheOptions(clock=clock))
    await post(app, chat_body(temperature=0))
    clock.now += 30
    young = await post(app, chat_body(temperature=0), {"cache-control": "max-age=60"})
    assert young.headers["x-bt-cached"] == "HIT"
    old = await post(app, chat_body(temperature=0), {"cache-control": "max-age=10"})
    assert old.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


# -- keys --------------------------------------------------------------------------------


async def test_key_ignores_key_order_and_whitespace(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    first = b'{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    second = (
        b'{ "messages" : [ { "content" : "hi", "role" : "user" } ],\n'
        b'  "temperature": 0, "model": "gpt-4o" }'
    )
    async with http_client(proxy) as http:
        a = await http.post("/v1/proxy/auto", content=first)
        b = await http.post("/v1/proxy/auto", content=second)
    assert (a.headers["x-bt-cached"], b.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert upstream.calls == 1


async def test_different_bodies_do_not_share(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    await post(proxy, chat_body("one", temperature=0))
    other = await post(proxy, chat_body("two", temperature=0))
    assert other.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


async def test_callers_are_isolated_by_default(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    alice = await post(proxy, chat_body(temperature=0), key="sk-alice")
    bob = await post(proxy, chat_body(temperature=0), key="sk-bob")
    assert alice.headers["x-bt-cached"] == bob.headers["x-bt-cached"] == "MISS"
    assert alice.json()["id"] != bob.json()["id"]
    alice_again = await post(proxy, chat_body(temperature=0), key="sk-alice")
    assert alice_again.content == alice.content
    assert upstream.calls == 2


async def test_sharing_across_callers_is_opt_in(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(cache_options=CacheOptions(share_across_callers=True))
    await post(app, chat_body(temperature=0), key="sk-alice")
    bob = await post(app, chat_body(temperature=0), key="sk-bob")
    assert bob.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 1


async def test_endpoint_is_part_of_the_key(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = {"model": "local-model", "prompt": "p", "temperature": 0}
    async with http_client(proxy) as http:
        await http.post("/v1/proxy/completions", json=body)
        chat_route = await http.post(
            "/v1/proxy/chat/completions",
            json={**body, "messages": [{"role": "user", "content": "p"}]},
        )
        same = await http.post("/v1/proxy/auto", json=body)
    assert chat_route.headers["x-bt-cached"] == "MISS"
    assert same.headers["x-bt-cached"] == "HIT"  # /auto routed it to completions too
    assert upstream.calls == 2


async def test_cache_off_with_none(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(cache=None)
    await post(app, chat_body(temperature=0))
    second = await post(app, chat_body(temperature=0))
    assert second.headers["x-bt-cached"] == "MISS"
    assert app.cache_stats is None
    assert upstream.calls == 2


# -- never cache failures ----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 429, 500])
async def test_errors_are_never_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, status: int
) -> None:
    body = chat_body(temperature=0, fake={"status": status})
    first = await post(proxy, body)
    second = await post(proxy, body)
    assert first.status_code == second.status_code == status
    assert second.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


# -- streams -----------------------------------------------------------------------------


async def stream_bytes(app: AutoProxyMiddleware, body: Any) -> tuple[httpx.Response, bytes]:
    async with http_client(app) as http, http.stream("POST", "/v1/proxy/auto", json=body) as r:
        raw = await r.aread()
    return r, raw


async def test_stream_is_stored_and_replayed_byte_for_byte(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = chat_body(temperature=0, stream=True, fake={"chunks": 5})
    first, first_raw = await stream_bytes(proxy, body)
    second, second_raw = await stream_bytes(proxy, body)
    assert first.headers["x-bt-cached"] == "MISS"
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.headers["cache-control"] == "no-cache, no-transform"
    assert second_raw == first_raw
    assert second_raw.endswith(b"data: [DONE]\n\n")
    assert second_raw.count(b"\n\n") == 6  # five chunks and [DONE], boundaries kept
    assert upstream.calls == 1


async def test_stream_and_non_stream_never_share_an_entry(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    _, streamed = await stream_bytes(proxy, chat_body(temperature=0, stream=True))
    whole = await post(proxy, chat_body(temperature=0))
    assert whole.headers["x-bt-cached"] == "MISS"
    assert whole.json()["object"] == "chat.completion"
    assert streamed.startswith(b"data: ")
    explicit_false = await post(proxy, chat_body(temperature=0, stream=False))
    assert explicit_false.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 2


@pytest.mark.parametrize("fault", [{"no_done": True}, {"error_event_after": 1}])
async def test_failed_streams_are_never_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, fault: dict[str, Any]
) -> None:
    body = chat_body(temperature=0, stream=True, fake={"chunks": 3, **fault})
    _, first = await stream_bytes(proxy, body)
    second, _ = await stream_bytes(proxy, body)
    assert b'"error"' in first
    assert second.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


# -- coalescing --------------------------------------------------------------------------


async def test_concurrent_identical_requests_make_one_upstream_call(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = chat_body(temperature=0, fake={"sleep": 0.3})
    results: list[httpx.Response] = []

    async def one(http: httpx.AsyncClient) -> None:
        results.append(await http.post("/v1/proxy/auto", json=body))

    async with http_client(proxy) as http, anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one, http)
    assert upstream.calls == 1
    assert len(results) == 50
    assert len({r.content for r in results}) == 1
    assert all(r.status_code == 200 for r in results)
    stats = proxy.cache_stats
    assert stats is not None and stats.coalesced == 49


async def test_concurrent_identical_streams_make_one_upstream_call(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = chat_body(temperature=0, stream=True, fake={"chunks": 4, "delay": 0.05})
    results: list[bytes] = []

    async def one(http: httpx.AsyncClient) -> None:
        async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
            results.append(await response.aread())

    async with http_client(proxy) as http, anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one, http)
    assert upstream.calls == 1
    assert len(results) == 50
    assert len(set(results)) == 1
    assert results[0].endswith(b"data: [DONE]\n\n")


async def test_coalesced_followers_share_an_upstream_error_uncached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = chat_body(temperature=0, fake={"sleep": 0.2, "status": 503})
    statuses: list[int] = []

    async def one(http: httpx.AsyncClient) -> None:
        statuses.append((await http.post("/v1/proxy/auto", json=body)).status_code)

    async with http_client(proxy) as http, anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(one, http)
    assert statuses == [503] * 10
    assert upstream.calls == 1
    again = await post(proxy, body)
    assert again.status_code == 503 and upstream.calls == 2


# -- backends ----------------------------------------------------------------------------


class BrokenBackend:
    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.hang:
            await anyio.sleep(5)
        raise ConnectionError("backend down at redis://:hunter2@cache")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.calls += 1
        if self.hang:
            await anyio.sleep(5)
        raise ConnectionError("backend down")

    async def delete(self, key: str) -> None:
        raise ConnectionError("backend down")


@pytest.mark.parametrize("hang", [False, True])
async def test_failing_backend_degrades_to_miss(
    make_proxy: MakeProxy, upstream: FakeUpstream, hang: bool, caplog: pytest.LogCaptureFixture
) -> None:
    backend = BrokenBackend(hang=hang)
    app = make_proxy(cache=backend, cache_options=CacheOptions(timeout=0.05))
    with anyio.fail_after(3):
        first = await post(app, chat_body(temperature=0))
        second = await post(app, chat_body(temperature=0))
    assert first.status_code == second.status_code == 200
    assert second.headers["x-bt-cached"] == "MISS"
    assert backend.calls == 4
    stats = app.cache_stats
    assert stats is not None and stats.errors == 4
    assert "hunter2" not in caplog.text
    assert "cache get failed" in caplog.text


async def test_memory_cache_evicts_by_count() -> None:
    cache = MemoryCache(max_entries=3)
    for index in range(5):
        await cache.set(f"k{index}", b"v", ttl=60)
    await cache.get("k2")  # recently used: survives the next eviction
    await cache.set("k5", b"v", ttl=60)
    assert [await cache.get(k) is not None for k in ("k2", "k3", "k4", "k5")] == [
        True,
        False,
        True,
        True,
    ]
    stats = cache.stats
    assert stats.entries == 3
    assert stats.evictions == 3


async def test_memory_cache_evicts_by_bytes() -> None:
    cache = MemoryCache(max_bytes=10_000)
    for index in range(10):
        await cache.set(f"k{index}", bytes(3000), ttl=60)
    stats = cache.stats
    assert stats.bytes <= 10_000
    assert stats.entries == 3
    assert await cache.get("k9") is not None
    assert await cache.get("k0") is None
    await cache.set("huge", bytes(20_000), ttl=60)
    assert await cache.get("huge") is None


async def test_memory_cache_ttl_per_entry() -> None:
    clock = Clock()
    cache = MemoryCache(timer=clock)
    await cache.set("short", b"s", ttl=5)
    await cache.set("long", b"l", ttl=50)
    clock.now += 10
    assert await cache.get("short") is None
    assert await cache.get("long") == b"l"


async def test_eviction_through_the_middleware(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(cache=MemoryCache(max_entries=2))
    for word in ("a", "b", "c"):
        await post(app, chat_body(word, temperature=0))
    oldest = await post(app, chat_body("a", temperature=0))
    newest = await post(app, chat_body("c", temperature=0))
    assert oldest.headers["x-bt-cached"] == "MISS"
    assert newest.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 4


async def test_stats_count_hits_and_misses(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    for _ in range(3):
        await post(proxy, chat_body(temperature=0))
    stats = proxy.cache_stats
    assert stats is not None
    assert (stats.hits, stats.misses, stats.writes) == (2, 1, 1)
    assert isinstance(proxy.cache, MemoryCache)
    assert proxy.cache.stats.entries == 1
    assert json.loads((await post(proxy, chat_body(temperature=0))).content)["object"]


async def test_pinned_endpoint_does_not_share_the_groups_entries(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    from asgi_autoproxy import OpenAIProvider

    app = make_proxy(
        providers=[
            OpenAIProvider(base_url=upstream_url, name="first"),
            OpenAIProvider(base_url=upstream_url, name="second"),
        ]
    )
    group = await post(app, chat_body(temperature=0))
    pinned = await post(app, chat_body(temperature=0), {"x-bt-endpoint-name": "second"})
    pinned_again = await post(app, chat_body(temperature=0), {"x-bt-endpoint-name": "second"})
    assert group.headers["x-bt-used-endpoint"] == "first"
    assert pinned.headers["x-bt-cached"] == "MISS"
    assert pinned.headers["x-bt-used-endpoint"] == "second"
    assert pinned_again.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 2


@pytest.mark.parametrize("sent", ["inf", "-inf", "nan", "1e999"])
async def test_non_finite_ttl_header_is_400(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, sent: str
) -> None:
    response = await post(proxy, chat_body(temperature=0), {"x-bt-cache-ttl": sent})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-bt-cache-ttl"


async def test_non_ascii_digits_in_max_age_are_ignored(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    """Latin-1 "²" passes str.isdigit() but not int(); the directive is ignored."""
    await post(proxy, chat_body(temperature=0))
    async with http_client(proxy) as http:
        response = await http.post(
            "/v1/proxy/auto",
            json=chat_body(temperature=0),
            headers={"cache-control": "max-age=\u00b2".encode("latin-1")},
        )
    assert response.status_code == 200
    assert response.headers["x-bt-cached"] == "HIT"
