"""Remembered cache plans (cache/plan_memo.py): repeats skip parsing, never the rules.

Every test runs the middleware against the real fake upstream. A remembered plan may
only shorten the way to an entry the full path would have served to the same caller.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, MemoryCache
from asgi_autoproxy._cache.remembered_plans import PlanMemo, request_digest
from asgi_autoproxy._headers import RequestHeaders
from tests.conftest import CALLER_KEY, Clock, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


async def post(
    app: AutoProxyMiddleware,
    body: Any,
    *,
    key: str | None = CALLER_KEY,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if key is not None:
        sent["authorization"] = f"Bearer {key}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as http:
        if raw is not None:
            sent["content-type"] = "application/json"
            return await http.post("/v1/proxy/auto", content=raw, headers=sent)
        return await http.post("/v1/proxy/auto", json=body, headers=sent)


def plans_found(app: AutoProxyMiddleware) -> int:
    assert app._pipeline.cache.plan_memo is not None
    return app._pipeline.cache.plan_memo.found


async def test_a_repeat_is_served_through_its_remembered_plan(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("remember me", temperature=0)
    first = await post(app, body)
    second = await post(app, body)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    assert plans_found(app) == 1
    assert upstream.calls == 1
    stats = app.cache_stats
    assert stats is not None and (stats.hits, stats.misses) == (1, 1)


async def test_another_caller_never_reaches_an_entry_through_a_remembered_plan(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("mine", temperature=0)
    await post(app, body, key="sk-alice")
    assert (await post(app, body, key="sk-alice")).headers["x-bt-cached"] == "HIT"
    bob = await post(app, body, key="sk-bob")
    assert bob.headers["x-bt-cached"] == "MISS"
    assert plans_found(app) == 1  # alice's repeat only
    assert upstream.calls == 2
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-bob"


async def test_with_shared_entries_a_keyless_caller_still_gets_401(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    # The provider forwards callers' keys, so the full path refuses a caller without
    # one before it looks at the cache; a remembered plan must not skip that.
    app = make_proxy(cache_options=CacheOptions(share_across_callers=True))
    body = chat_body("shared", temperature=0)
    await post(app, body, key="sk-alice")
    assert (await post(app, body, key="sk-bob")).headers["x-bt-cached"] == "HIT"
    keyless = await post(app, body, key=None)
    assert keyless.status_code == 401
    assert "Missing API key" in keyless.json()["error"]["message"]
    assert upstream.calls == 1


@pytest.mark.parametrize("headers", [{"x-bt-use-cache": "never"}, {"cache-control": "no-cache"}])
async def test_cache_headers_are_part_of_the_remembered_request(
    make_proxy: MakeProxy, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    app = make_proxy()
    body = chat_body("headers", temperature=0)
    await post(app, body)
    assert (await post(app, body)).headers["x-bt-cached"] == "HIT"
    other = await post(app, body, headers=headers)
    assert other.status_code == 200
    assert other.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2


async def test_a_gone_entry_takes_the_full_path_and_counts_one_miss(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    clock = Clock()
    app = make_proxy(
        cache=MemoryCache(timer=clock), cache_options=CacheOptions(clock=clock), cache_ttl=60
    )
    body = chat_body("expiring", temperature=0)
    await post(app, body)
    clock.now += 61  # the entry expires; its plan is still remembered
    again = await post(app, body)
    assert again.headers["x-bt-cached"] == "MISS"
    assert again.json()["choices"][0]["message"]["content"] == "echo #2: expiring"
    assert plans_found(app) == 1
    stats = app.cache_stats
    assert stats is not None and (stats.hits, stats.misses, stats.writes) == (0, 2, 2)
    assert (await post(app, body)).headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 2


async def test_other_bytes_for_the_same_request_still_hit_by_the_canonical_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    compact = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":0}'
    spaced = (
        b'{ "temperature": 0, "model": "gpt-4o-mini",\n'
        b' "messages": [ {"content": "x", "role": "user"} ] }'
    )
    assert (await post(app, None, raw=compact)).headers["x-bt-cached"] == "MISS"
    assert (await post(app, None, raw=spaced)).headers["x-bt-cached"] == "HIT"
    assert plans_found(app) == 0  # different bytes: the full path found the entry
    assert app._pipeline.cache.plan_memo is not None and len(app._pipeline.cache.plan_memo) == 2
    assert upstream.calls == 1


async def test_a_streamed_repeat_replays_through_its_remembered_plan(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("stream", temperature=0, stream=True, fake={"chunks": 3})
    first = await post(app, body)
    second = await post(app, body)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert second.content.endswith(b"data: [DONE]\n\n")
    assert plans_found(app) == 1
    assert upstream.calls == 1


async def test_requests_that_are_not_cached_are_not_remembered(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("creative", temperature=0.9)
    for _ in range(2):
        assert (await post(app, body)).headers["x-bt-cached"] == "MISS"
    assert app._pipeline.cache.plan_memo is not None and len(app._pipeline.cache.plan_memo) == 0
    assert upstream.calls == 2


def test_the_memo_is_bounded_and_forgets_the_oldest_first() -> None:
    memo: PlanMemo[str] = PlanMemo(max_plans=2)
    headers = RequestHeaders([])
    digests = [request_digest("auto", "caller", True, headers, b"%d" % i) for i in range(3)]
    for digest, plan in zip(digests, "abc", strict=True):
        memo.put(digest, plan)
    assert len(memo) == 2
    assert [memo.get(d) for d in digests] == [None, "b", "c"]
    assert memo.found == 2
    with pytest.raises(ValueError, match="at least 1"):
        PlanMemo(max_plans=0)


def test_every_input_of_a_plan_changes_the_digest() -> None:
    plain = RequestHeaders([])
    base = ("auto", "caller", True, plain, b"{}")
    variants = [
        ("chat", "caller", True, plain, b"{}"),
        ("auto", "other", True, plain, b"{}"),
        ("auto", "caller", False, plain, b"{}"),
        ("auto", "caller", True, RequestHeaders([(b"x-bt-endpoint-name", b"p")]), b"{}"),
        ("auto", "caller", True, RequestHeaders([(b"x-bt-use-cache", b"always")]), b"{}"),
        ("auto", "caller", True, RequestHeaders([(b"x-bt-cache-ttl", b"60")]), b"{}"),
        ("auto", "caller", True, RequestHeaders([(b"cache-control", b"no-store")]), b"{}"),
        ("auto", "caller", True, plain, b"{ }"),
    ]
    digests = {request_digest(*args) for args in [base, *variants]}
    assert len(digests) == len(variants) + 1
