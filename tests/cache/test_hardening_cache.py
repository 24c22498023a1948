"""Cache hardening: what may be cached, what a key is made of, and how fresh a served
entry must be. Every test drives the middleware against a real HTTP upstream on
127.0.0.1 (the shared fake upstream, or a scripted one served by uvicorn here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_autoproxy import (
    AutoProxyMiddleware,
    CacheOptions,
    MemoryCache,
    OpenAIProvider,
    RedisCache,
    _json,
)
from tests.conftest import CALLER_KEY, Clock, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, running_redis
from tests.servers import ServerThread, read_request

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


async def post(
    app: AutoProxyMiddleware,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/proxy/auto",
) -> httpx.Response:
    sent = {**AUTH, "content-type": "application/json", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as http:
        return await http.post(path, content=content, headers=sent)


# -- 1. only a valid answer for its route is cached ----------------------------------------


class ScriptedUpstream:
    """Answers every request with ``status`` and the JSON ``answer``, counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = 200
        self.answer: Any = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        self.calls += 1
        body = json.dumps(self.answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def _scripted_server() -> Iterator[tuple[ScriptedUpstream, ServerThread]]:
    app = ScriptedUpstream()
    server = ServerThread(app)
    server.start()
    yield app, server
    server.stop()


@pytest.fixture
def scripted(_scripted_server: tuple[ScriptedUpstream, ServerThread]) -> ScriptedUpstream:
    app = _scripted_server[0]
    app.calls, app.status, app.answer = 0, 200, {}
    return app


@pytest.fixture
def scripted_proxy(
    make_proxy: MakeProxy, _scripted_server: tuple[ScriptedUpstream, ServerThread]
) -> AutoProxyMiddleware:
    url = _scripted_server[1].url + "/v1"
    return make_proxy(providers=[OpenAIProvider(base_url=url, name="scripted")])


CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}
COMPLETION_ANSWER = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "hi"}]}
NOT_ANSWERS = [
    {"error": {"message": "overloaded"}},
    {"error": "overloaded"},
    {"choices": "not a list"},
    {"id": "chatcmpl-1", "object": "chat.completion"},
    {**CHAT_ANSWER, "error": {"message": "overloaded"}},
]


@pytest.mark.parametrize("answer", NOT_ANSWERS)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/proxy/auto", chat_body(temperature=0)),
        ("/v1/proxy/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "seed": 1}),
    ],
)
async def test_a_200_that_is_not_an_answer_is_relayed_but_never_cached(
    scripted_proxy: AutoProxyMiddleware,
    scripted: ScriptedUpstream,
    answer: dict[str, Any],
    path: str,
    body: dict[str, Any],
) -> None:
    scripted.answer = answer
    first = await post(scripted_proxy, body, path=path)
    second = await post(scripted_proxy, body, path=path)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == answer
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "MISS")
    assert "cache-control" not in first.headers  # the max-age of a write that never happened
    assert scripted.calls == 2


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/v1/proxy/auto", chat_body(temperature=0), CHAT_ANSWER),
        ("/v1/proxy/completions", {"model": "m", "prompt": "hi", "seed": 1}, COMPLETION_ANSWER),
    ],
)
async def test_a_valid_answer_is_still_cached(
    scripted_proxy: AutoProxyMiddleware,
    scripted: ScriptedUpstream,
    path: str,
    body: dict[str, Any],
    answer: dict[str, Any],
) -> None:
    scripted.answer = answer
    first = await post(scripted_proxy, body, path=path)
    second = await post(scripted_proxy, body, path=path)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.json() == answer
    assert scripted.calls == 1


async def test_a_stream_carrying_an_error_event_is_never_cached(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("stream, then fail", temperature=0, stream=True, fake={"error_event_after": 1})
    for _ in range(2):
        response = await post(app, body)
        assert response.status_code == 200
        assert response.headers["x-bt-cached"] == "MISS"
        assert b"overloaded mid-stream" in response.content
    assert upstream.calls == 2


# -- 2. duplicate keys ---------------------------------------------------------------------

DUPLICATED = [
    b'{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a","content":"b"}]}',
    b'{"model":"gpt-4o-mini","messages":[],"x":{"y":[{"z":{"k":1,"k":2}}]}}',
    # Colons in strings and escaped colons must not hide a duplicate.
    b'{"model":"m:1","messages":[],"t\\u003a":"a:b","t\\u003a":"a\\u003ab"}',
    b'{"model":"m","a":"\\u003a\\u003a\\u003a","a":1}',
    b'{"model":"m","messages":[],"f\\u003a":1,"f:":2}',  # one key, written two ways
]


@pytest.mark.parametrize("raw", DUPLICATED)
async def test_duplicate_keys_are_rejected_without_echoing_values(
    make_proxy: MakeProxy, upstream: FakeUpstream, raw: bytes
) -> None:
    app = make_proxy()
    response = await post(app, raw=raw)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "duplicate" in error["message"].lower()
    for value in (b"gpt-4o", b'"b"', b"a:b"):
        assert value.decode() not in error["message"]
    assert upstream.calls == 0


async def test_a_duplicate_key_cannot_reach_another_body_s_entry(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """The key used to take the last value while upstream could read the first."""
    app = make_proxy()
    cached = b'{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"A"}]}'
    assert (await post(app, raw=cached)).headers["x-bt-cached"] == "MISS"
    split = (
        b'{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"B"}],'
        b'"messages":[{"role":"user","content":"A"}]}'
    )
    for _ in range(2):  # twice: a rejected body never gets a remembered plan either
        response = await post(app, raw=split)
        assert response.status_code == 400
        assert "x-bt-cached" not in response.headers
    assert app._pipeline.cache.plan_memo is not None and len(app._pipeline.cache.plan_memo) == 1
    assert upstream.calls == 1


NOT_DUPLICATED = [
    b'{"model":"m","messages":[{"role":"user","content":"time: 10:30, url https://x:8/a"}]}',
    b'{"model":"m","messages":[],"a:b":{"a:b":"c:d"},"c":{"a:b":1}}',
    b'{"model":"m","messages":[],"e":"\\u003a\\u003A:","f\\u003a":1,"g:":2}',
    b'{"model":"m","messages":[],"lit":"\\\\u003a and \\\\u003A are text here"}',
    b'{"model":"m","messages":[],"s":"\\u00e9\\ud83d\\ude00:"}',
]


@pytest.mark.parametrize("raw", NOT_DUPLICATED)
async def test_colons_and_escapes_without_duplicates_are_accepted(
    make_proxy: MakeProxy, upstream: FakeUpstream, raw: bytes
) -> None:
    response = await post(make_proxy(), raw=raw)
    assert response.status_code == 200, response.text
    assert upstream.calls == 1


_keys = st.sampled_from(["a", "b", ":", "a:b", "\\u003a", "\\\\u003a", "\\u00e9"])
_strings = st.sampled_from(["", ":", "x:y", "\\u003a", "\\u003A", "\\\\u003a", "\\\\", '\\"'])


def _json_texts() -> st.SearchStrategy[str]:
    """JSON texts written by hand, so they can repeat keys and hold escapes."""
    scalars = st.one_of(
        _strings.map(lambda s: f'"{s}"'),
        st.sampled_from(["1", "1.0", "1e2", "true", "null"]),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
    )

    def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        arrays = st.lists(children, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        members = st.lists(st.tuples(_keys, children), max_size=4)
        objects = members.map(lambda ms: "{" + ",".join(f'"{k}" : {v}' for k, v in ms) + "}")
        return arrays | objects

    return st.recursive(scalars, containers, max_leaves=12)


def _has_duplicates(text: str) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in items}) < len(items)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found


@settings(max_examples=400, deadline=None)
@given(_json_texts())
def test_strict_reading_agrees_with_the_standard_library(text: str) -> None:
    """Duplicates found exactly where they are; every integer read exactly."""
    for raw in (text.encode(), text.replace(" : ", ":").encode()):  # the compact way too
        try:
            value = _json.strict(raw, _json.loads(raw))
        except _json.DuplicateKeyError:
            assert _has_duplicates(text)
        else:
            assert not _has_duplicates(text)
            assert json.dumps(value) == json.dumps(json.loads(raw))  # 1.0 and 1 apart


@pytest.mark.parametrize("colon_every", [10, 1000, 100_000])
@pytest.mark.parametrize("duplicated", [False, True])
async def test_long_bodies_are_checked_for_duplicates_too(
    make_proxy: MakeProxy, upstream: FakeUpstream, colon_every: int, duplicated: bool
) -> None:
    """Long bodies count their colons another way (hopping between sparse ones)."""
    text = ("x" * (colon_every - 1) + ":") * (200_000 // colon_every)
    body = chat_body(text, temperature=0.5)
    raw = json.dumps(body).encode()  # spaced, so not byte for byte what the proxy writes
    if duplicated:
        raw = raw[:-1] + b', "temperature": 0.7}'
    response = await post(make_proxy(), raw=raw)
    assert response.status_code == (400 if duplicated else 200), response.text
    assert upstream.calls == (0 if duplicated else 1)


# -- 3. integers stay exact ----------------------------------------------------------------


@pytest.mark.parametrize(
    "seeds",
    [(2**64, 2**64 + 1), (-(2**63) - 1, -(2**63) - 2), (10**30, 10**30 + 1)],
)
async def test_integers_past_64_bits_get_their_own_entries(
    make_proxy: MakeProxy, upstream: FakeUpstream, seeds: tuple[int, int]
) -> None:
    app = make_proxy()
    bodies = [json.dumps(chat_body("big seed", seed=seed)).encode() for seed in seeds]
    first = [await post(app, raw=raw) for raw in bodies]
    assert [r.headers["x-bt-cached"] for r in first] == ["MISS", "MISS"]
    assert upstream.calls == 2
    assert [request.json["seed"] for request in upstream.requests] == list(seeds)
    again = [await post(app, raw=raw) for raw in bodies]
    assert [r.headers["x-bt-cached"] for r in again] == ["HIT", "HIT"]
    assert [r.json() for r in again] == [r.json() for r in first]
    assert first[0].json() != first[1].json()
    assert upstream.calls == 2


# -- 4. equal numbers key alike ------------------------------------------------------------

EQUAL_BODIES = [
    (b'"temperature":0', b'"temperature":0.0'),
    (b'"temperature":0', b'"temperature":-0.0'),
    (b'"seed":100,"temperature":1', b'"seed":1e2,"temperature":1.0'),
    (b'"temperature":0,"x":[{"n":3}]', b'"temperature":0,"x":[{"n":3.0}]'),
    (b'"seed":18446744073709551616', b'"seed":1.8446744073709552e19'),
]


def _chat_raw(fields: bytes, content: bytes = b"hi") -> bytes:
    head = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + content + b'"}],'
    return head + fields + b"}"


@pytest.mark.parametrize(("one", "other"), EQUAL_BODIES)
async def test_equal_numbers_written_differently_share_an_entry(
    make_proxy: MakeProxy, upstream: FakeUpstream, one: bytes, other: bytes
) -> None:
    app = make_proxy()
    first = await post(app, raw=_chat_raw(one))
    second = await post(app, raw=_chat_raw(other))
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    assert upstream.calls == 1


async def test_equal_numbers_written_differently_share_a_flight(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    slow = b'"fake":{"sleep":0.5},'
    responses: list[httpx.Response] = []

    async def send(fields: bytes) -> None:
        responses.append(await post(app, raw=_chat_raw(slow + fields, b"flight")))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send, b'"temperature":0')
        await anyio.sleep(0.2)  # the first is upstream by now
        tasks.start_soon(send, b'"temperature":0.0')
    assert sorted(r.headers["x-bt-cached"] for r in responses) == ["HIT", "MISS"]
    assert responses[0].json() == responses[1].json()
    assert upstream.calls == 1


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b'"seed":1,"logprobs":true', b'"seed":1,"logprobs":1'),
        (b'"seed":1,"x":false', b'"seed":1,"x":0'),
        (b'"seed":1,"x":0.5', b'"seed":1,"x":0'),
        (b'"seed":1,"x":"1"', b'"seed":1,"x":1'),
        (b'"seed":9007199254740993', b'"seed":9007199254740992'),
    ],
)
async def test_different_values_do_not_share(
    make_proxy: MakeProxy, upstream: FakeUpstream, one: bytes, other: bytes
) -> None:
    app = make_proxy()
    first = await post(app, raw=_chat_raw(one))
    second = await post(app, raw=_chat_raw(other))
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "MISS")
    assert upstream.calls == 2


# -- 6. a request's freshness limit holds on every path ------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _redis_proxies(
    make_proxy: MakeProxy, server: RedisServer, clock: Clock, prefix: str
) -> tuple[AutoProxyMiddleware, AutoProxyMiddleware]:
    """Two middleware instances, as two processes would be, on one Redis."""
    return tuple(  # type: ignore[return-value]
        make_proxy(
            cache=RedisCache(server.url, prefix=prefix, timeout=2),
            cache_options=CacheOptions(clock=clock, coalesce_timeout=10),
        )
        for _ in range(2)
    )


async def _until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.01)


async def test_an_entry_from_another_process_s_flight_obeys_max_age(
    make_proxy: MakeProxy, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    clock = Clock()
    a, b = _redis_proxies(make_proxy, redis_server, clock, "fresh-peer:")
    body = chat_body("fresh across processes", temperature=0, fake={"sleep": 0.5})
    assert (await post(a, body)).headers["x-bt-cached"] == "MISS"
    clock.now += 4  # the entry is 4 s old now

    fresh = {"cache-control": "max-age=1"}
    refreshed: list[httpx.Response] = []

    async def refresh() -> None:
        refreshed.append(await post(a, body, headers=fresh))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(refresh)
        await _until(lambda: upstream.calls == 2)  # A holds the Redis lock, calling upstream
        waited = await post(b, body, headers=fresh)
    assert refreshed[0].headers["x-bt-cached"] == "MISS"
    assert waited.status_code == 200
    assert waited.headers["x-bt-cached"] == "HIT"
    assert int(waited.headers["age"]) <= 1
    assert waited.json() == refreshed[0].json()  # the new answer, not the 4 s old one
    assert waited.json()["id"] == "chatcmpl-2"
    assert upstream.calls == 2


async def test_a_peer_that_stores_nothing_fresh_leaves_the_waiter_to_call_upstream(
    make_proxy: MakeProxy, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    clock = Clock()
    a, b = _redis_proxies(make_proxy, redis_server, clock, "stale-peer:")
    body = chat_body("peer fails", temperature=0, fake={"sleep": 0.5})
    assert (await post(a, body)).headers["x-bt-cached"] == "MISS"
    clock.now += 4
    upstream.overrides = {"status": 500}  # A's refresh fails: nothing new is stored
    fresh = {"cache-control": "max-age=1"}

    async def refresh() -> None:
        await post(a, body, headers=fresh)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(refresh)
        await _until(lambda: upstream.calls == 2)
        started = time.monotonic()
        waited = await post(b, body, headers=fresh)
    assert time.monotonic() - started < 5  # not the whole coalesce_timeout
    assert waited.status_code == 500  # B's own upstream call, not the stale entry
    assert upstream.calls == 3


async def test_a_remembered_plan_obeys_max_age(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    clock = Clock()
    app = make_proxy(cache=MemoryCache(timer=clock), cache_options=CacheOptions(clock=clock))
    raw = json.dumps(chat_body("memo", temperature=0)).encode()
    fresh = {"cache-control": "max-age=1"}
    assert (await post(app, raw=raw, headers=fresh)).headers["x-bt-cached"] == "MISS"
    assert (await post(app, raw=raw, headers=fresh)).headers["x-bt-cached"] == "HIT"
    clock.now += 4
    assert (await post(app, raw=raw, headers=fresh)).headers["x-bt-cached"] == "MISS"
    assert app._pipeline.cache.plan_memo is not None and app._pipeline.cache.plan_memo.found >= 2
    assert upstream.calls == 2


async def test_a_request_following_a_flight_gets_its_fresh_answer(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """An in-process flight is the answer being made now: it meets any max-age."""
    clock = Clock()
    app = make_proxy(cache=MemoryCache(timer=clock), cache_options=CacheOptions(clock=clock))
    body = chat_body("follow", temperature=0, fake={"sleep": 0.5})
    assert (await post(app, body)).headers["x-bt-cached"] == "MISS"
    clock.now += 4
    fresh = {"cache-control": "max-age=1"}
    responses: list[httpx.Response] = []

    async def send() -> None:
        responses.append(await post(app, body, headers=fresh))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send)
        await _until(lambda: upstream.calls == 2)
        tasks.start_soon(send)
    assert [r.json()["id"] for r in responses] == ["chatcmpl-2", "chatcmpl-2"]
    assert upstream.calls == 2
