"""The cache on the routes beside chat, against real fake upstreams on 127.0.0.1.

Embeddings and moderations are cached whatever the temperature; ``/responses`` and the
native Anthropic route follow chat's rule. Replays are the first answer byte for byte,
named events included; errors, cut streams and requests that depend on state kept
upstream never are.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, OpenAIProvider, RequestRecord
from tests.conftest import CALLER_KEY, MakeProxy
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

OTHER_KEY = "sk-other-caller-0000"
PREFIX = "/v1/proxy"
CLAUDE = "claude-sonnet-4-5"

Post = Callable[..., Any]


@pytest.fixture
def records() -> list[RequestRecord]:
    return []


@pytest.fixture
async def proxy(
    make_proxy: MakeProxy, upstream_url: str, claude_url: str, records: list[RequestRecord]
) -> AsyncIterator[AutoProxyMiddleware]:
    providers = [
        AnthropicProvider(base_url=claude_url, name="claude"),
        OpenAIProvider(base_url=upstream_url, name="fake"),
    ]
    app = make_proxy(providers=providers, on_request=records.append)
    async with LifespanManager(app):
        yield app


async def post(
    app: AutoProxyMiddleware,
    route: str,
    body: dict[str, Any],
    *,
    key: str = CALLER_KEY,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with anyio.fail_after(15):
            return await client.post(
                PREFIX + route,
                content=json.dumps(body).encode(),
                headers={"authorization": f"Bearer {key}", **(headers or {})},
            )


def embedding(**extra: Any) -> dict[str, Any]:
    return {"model": "text-embedding-3-small", "input": "hello", **extra}


def responses(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "input": "hi", **extra}


def messages(**extra: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


# -- embeddings and moderations: cached by default -----------------------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/embeddings", embedding()),
        ("/embeddings", embedding(temperature=1)),  # not an embeddings field; no matter
        ("/moderations", {"input": "hello"}),
        ("/moderations", {"model": "omni-moderation-latest", "input": ["a", "b"]}),
    ],
)
async def test_cached_whatever_the_temperature(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, route: str, body: dict[str, Any]
) -> None:
    first = await post(proxy, route, body)
    second = await post(proxy, route, body)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert upstream.calls == 1
    assert upstream.requests[0].path == "/v1" + route


@pytest.mark.parametrize("headers", [{"x-bt-use-cache": "never"}, {"cache-control": "no-store"}])
async def test_callers_can_still_opt_out(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    for _ in range(2):
        answer = await post(proxy, "/embeddings", embedding(), headers=headers)
        assert answer.status_code == 200 and answer.headers.get("x-bt-cached") != "HIT"
    assert upstream.calls == 2
    # Nothing was stored either: a plain request afterwards still goes upstream.
    assert (await post(proxy, "/embeddings", embedding())).headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 3


async def test_entries_are_per_caller(proxy: AutoProxyMiddleware, upstream: FakeUpstream) -> None:
    mine = await post(proxy, "/embeddings", embedding())
    theirs = await post(proxy, "/embeddings", embedding(), key=OTHER_KEY)
    again = await post(proxy, "/embeddings", embedding(), key=OTHER_KEY)
    assert (mine.headers["x-bt-cached"], theirs.headers["x-bt-cached"]) == ("MISS", "MISS")
    assert again.headers["x-bt-cached"] == "HIT"
    assert [r.headers["authorization"] for r in upstream.requests] == [
        f"Bearer {CALLER_KEY}",
        f"Bearer {OTHER_KEY}",
    ]


async def test_identical_embeddings_in_flight_share_one_call(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, records: list[RequestRecord]
) -> None:
    body = embedding(fake={"sleep": 0.3})
    answers: list[httpx.Response] = []

    async def one() -> None:
        answers.append(await post(proxy, "/embeddings", body))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(one)
    assert upstream.calls == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sorted(r.cache or "" for r in records) == ["COALESCED"] * 4 + ["MISS"]


async def test_usage_reaches_the_hook(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, records: list[RequestRecord]
) -> None:
    await post(proxy, "/embeddings", embedding())
    await post(proxy, "/moderations", {"input": "x"})
    [embedded, moderated] = records
    assert (embedded.route, embedded.endpoint, embedded.model) == (
        "embeddings",
        "embeddings",
        "text-embedding-3-small",
    )
    assert embedded.usage is not None and embedded.usage.prompt_tokens == 5
    assert embedded.usage.total_tokens == 5
    assert (moderated.route, moderated.model) == ("moderations", "omni-moderation-latest")


async def test_usage_of_whole_responses_and_messages_reaches_the_hook(
    proxy: AutoProxyMiddleware,
    upstream: FakeUpstream,
    claude: FakeAnthropic,
    records: list[RequestRecord],
) -> None:
    claude.scenario = "cache"
    await post(proxy, "/responses", responses())
    await post(proxy, "/anthropic/v1/messages", messages())
    [responded, messaged] = records
    assert (responded.route, responded.endpoint) == ("responses", "responses")
    assert responded.usage is not None
    assert (responded.usage.prompt_tokens, responded.usage.completion_tokens) == (5, 3)
    assert (messaged.route, messaged.endpoint, messaged.provider) == (
        "anthropic",
        "messages",
        "claude",
    )
    assert messaged.usage is not None
    assert (messaged.usage.prompt_tokens, messaged.usage.total_tokens) == (165, 177)


async def test_an_upstream_error_is_never_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = embedding(fake={"status": 400})
    assert (await post(proxy, "/embeddings", body)).status_code == 400
    assert (await post(proxy, "/embeddings", body)).status_code == 400
    assert upstream.calls == 2


# -- responses: chat's rule ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "cached"),
    [
        (responses(temperature=0), {}, True),
        (responses(temperature=0.0), {}, True),
        (responses(seed=3, temperature=1), {}, True),
        (responses(), {"x-bt-use-cache": "always"}, True),
        (responses(), {}, False),
        (responses(temperature=0.7), {}, False),
        (responses(temperature=0, store=False), {}, True),
        # State kept upstream: never from the cache, whatever else the request says.
        (responses(temperature=0, previous_response_id="resp_1"), {}, False),
        (responses(temperature=0, store=True), {}, False),
        (responses(seed=1, conversation="conv_1"), {"x-bt-use-cache": "always"}, False),
        (responses(temperature=0, background=True), {}, False),
    ],
)
async def test_responses_follow_chats_rule(
    proxy: AutoProxyMiddleware,
    upstream: FakeUpstream,
    body: dict[str, Any],
    headers: dict[str, str],
    cached: bool,
) -> None:
    first = await post(proxy, "/responses", body, headers=headers)
    second = await post(proxy, "/responses", body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert upstream.calls == (1 if cached else 2)
    assert (second.headers.get("x-bt-cached") == "HIT") is cached
    if cached:
        assert second.content == first.content


async def test_responses_seed_is_kept_for_the_key_only(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    await post(proxy, "/responses", responses(seed=1))
    await post(proxy, "/responses", responses(seed=2))
    hit = await post(proxy, "/responses", responses(seed=1))
    assert hit.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 2  # two seeds, two entries
    assert all("seed" not in r.json for r in upstream.requests)
    assert upstream.requests[0].json == {"model": "gpt-4.1-mini", "input": "hi"}


async def test_responses_stream_replay_is_byte_identical(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, records: list[RequestRecord]
) -> None:
    body = responses(temperature=0, stream=True, fake={"chunks": 5})
    first = await post(proxy, "/responses", body)
    second = await post(proxy, "/responses", body)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert first.headers["content-type"].startswith("text/event-stream")
    assert second.content == first.content
    names = [line for line in first.content.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"event: response.created"
    assert names.count(b"event: response.output_text.delta") == 5
    assert names[-1] == b"event: response.completed"
    assert upstream.calls == 1
    assert records[0].usage is not None
    assert (records[0].usage.prompt_tokens, records[0].usage.completion_tokens) == (5, 3)


async def test_a_trailing_done_marker_is_harmless(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = responses(temperature=0, stream=True, fake={"done": True})
    first = await post(proxy, "/responses", body)
    second = await post(proxy, "/responses", body)
    assert first.content.endswith(b"data: [DONE]\n\n")
    assert b"event: error" not in first.content
    assert second.headers["x-bt-cached"] == "HIT" and second.content == first.content


async def test_done_alone_does_not_end_a_responses_stream(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = responses(temperature=0, stream=True, fake={"no_done": True, "done": True})
    first = await post(proxy, "/responses", body)
    assert first.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].startswith(b"event: error\n")
    assert (await post(proxy, "/responses", body)).headers["x-bt-cached"] == "MISS"


async def test_incomplete_response_is_an_answer(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    """``response.incomplete`` (the output-token cap) ends a whole stream, like chat's
    ``finish_reason: length``."""
    body = responses(temperature=0, stream=True, fake={"end": "incomplete"})
    first = await post(proxy, "/responses", body)
    second = await post(proxy, "/responses", body)
    assert second.headers["x-bt-cached"] == "HIT" and second.content == first.content
    assert b"event: error" not in first.content


@pytest.mark.parametrize("fake", [{"end": "failed"}, {"error_event_after": 2}, {"no_done": True}])
async def test_failed_or_cut_response_streams_are_never_cached(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, fake: dict[str, Any]
) -> None:
    body = responses(temperature=0, stream=True, fake=fake)
    first = await post(proxy, "/responses", body)
    second = await post(proxy, "/responses", body)
    assert second.headers["x-bt-cached"] == "MISS"
    assert upstream.calls == 2
    if fake.get("no_done"):
        # The proxy's own ending, in the Responses API's shape.
        last = first.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        name, data = last.split(b"\n")
        assert name == b"event: error"
        error = json.loads(data.removeprefix(b"data: "))
        assert error["type"] == "error" and error["code"] == "upstream_stream_error"
        assert "response.completed" in error["message"]


# -- the native Anthropic route ----------------------------------------------------------


async def test_anthropic_follows_chats_rule(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic
) -> None:
    await post(proxy, "/anthropic/v1/messages", messages())
    await post(proxy, "/anthropic/v1/messages", messages())
    assert len(claude.requests) == 2  # no temperature: not deterministic
    first = await post(proxy, "/anthropic/v1/messages", messages(temperature=0))
    second = await post(proxy, "/anthropic/messages", messages(temperature=0))
    assert second.headers["x-bt-cached"] == "HIT"  # both spellings of the route, one entry
    assert second.content == first.content
    assert len(claude.requests) == 3


async def test_anthropic_stream_replay_is_byte_identical(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic, records: list[RequestRecord]
) -> None:
    claude.scenario = "cache"
    body = messages(temperature=0, stream=True)
    first = await post(proxy, "/anthropic/v1/messages", body)
    second = await post(proxy, "/anthropic/v1/messages", body)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert first.content.startswith(b"event: message_start\ndata: ")
    assert first.content.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert b"event: ping" in first.content
    assert len(claude.requests) == 1
    # Input counts Anthropic's cache reads and writes; output comes from message_delta.
    usage = records[0].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (165, 12, 177)


async def test_anthropic_headers_that_change_the_answer_change_the_key(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic
) -> None:
    body = messages(temperature=0)
    beta = {"anthropic-beta": "prompt-caching-2024-07-31"}
    await post(proxy, "/anthropic/v1/messages", body)
    with_beta = await post(proxy, "/anthropic/v1/messages", body, headers=beta)
    again = await post(proxy, "/anthropic/v1/messages", body, headers=beta)
    older = await post(
        proxy, "/anthropic/v1/messages", body, headers={"anthropic-version": "2023-01-01"}
    )
    assert with_beta.headers["x-bt-cached"] == "MISS" and again.headers["x-bt-cached"] == "HIT"
    assert older.headers["x-bt-cached"] == "MISS"
    assert [r.headers.get("anthropic-beta") for r in claude.requests] == [
        None,
        "prompt-caching-2024-07-31",
        None,
    ]
    assert claude.requests[2].headers["anthropic-version"] == "2023-01-01"
    assert claude.requests[0].headers["anthropic-version"] == "2023-06-01"  # the default


@pytest.mark.parametrize("scenario", ["error_mid_stream", "cut"])
async def test_anthropic_broken_streams_are_never_cached(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic, scenario: str
) -> None:
    claude.scenario = scenario
    body = messages(temperature=0, stream=True)
    first = await post(proxy, "/anthropic/v1/messages", body)
    await post(proxy, "/anthropic/v1/messages", body)
    assert len(claude.requests) == 2
    last = first.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = json.loads(last.split(b"\n")[1].removeprefix(b"data: "))
    assert error["type"] == "error"
    if scenario == "cut":  # the proxy's own ending, in Anthropic's shape
        assert error["error"]["type"] == "api_error"
        assert error["error"]["code"] == "upstream_stream_error"


@pytest.mark.parametrize("scenario", ["invalid", "overloaded", "html"])
async def test_anthropic_upstream_errors(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic, scenario: str
) -> None:
    claude.scenario = scenario
    answer = await post(proxy, "/anthropic/v1/messages", messages(temperature=0))
    again = await post(proxy, "/anthropic/v1/messages", messages(temperature=0))
    assert len(claude.requests) == 2  # never cached
    error = answer.json()
    assert error["type"] == "error"
    assert again.headers["x-bt-cached"] == "MISS"
    if scenario == "invalid":  # Anthropic's own error, passed on as it came
        assert answer.status_code == 400
        assert error["error"] == {
            "type": "invalid_request_error",
            "message": "messages: roles must alternate",
        }
    elif scenario == "overloaded":
        assert answer.status_code == 529
        assert error["error"]["type"] == "overloaded_error"
    else:  # not an error body: the proxy words it, in Anthropic's shape
        assert answer.status_code == 500
        assert error["error"]["type"] == "api_error"
        assert error["error"]["code"] == "upstream_500"


async def test_anthropic_route_refusals_are_in_anthropics_shape(
    proxy: AutoProxyMiddleware, claude: FakeAnthropic
) -> None:
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        missing_key = await client.post(PREFIX + "/anthropic/v1/messages", json=messages())
        wrong_method = await client.get(
            PREFIX + "/anthropic/v1/messages", headers={"x-api-key": CALLER_KEY}
        )
        bad_json = await client.post(
            PREFIX + "/anthropic/v1/messages", content=b"{", headers={"x-api-key": CALLER_KEY}
        )
        bad_beta = await client.post(
            PREFIX + "/anthropic/v1/messages",
            json=messages(),
            headers={"x-api-key": CALLER_KEY, "anthropic-beta": "caf\u00e9".encode("latin-1")},  # type: ignore[dict-item]
        )
    expected = [
        (missing_key, 401, "authentication_error"),
        (wrong_method, 405, "invalid_request_error"),
        (bad_json, 400, "invalid_request_error"),
        (bad_beta, 400, "invalid_request_error"),
    ]
    for answer, status, kind in expected:
        assert answer.status_code == status
        body = answer.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == kind
        assert set(body["error"]) == {"type", "message", "param", "code"}
    assert bad_beta.json()["error"]["param"] == "anthropic-beta"
    assert claude.requests == []


async def test_chat_routes_keep_openais_shape(proxy: AutoProxyMiddleware) -> None:
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for route in ("/embeddings", "/moderations", "/responses", "/chat/completions"):
            answer = await client.post(PREFIX + route, json={"model": "m"})
            assert answer.status_code == 401
            assert set(answer.json()) == {"error"}


async def test_a_closed_proxy_answers_each_route_in_its_own_shape(
    make_proxy: MakeProxy, upstream_url: str, claude_url: str
) -> None:
    providers = [
        AnthropicProvider(base_url=claude_url, name="claude"),
        OpenAIProvider(base_url=upstream_url, name="fake"),
    ]
    app = make_proxy(providers=providers)
    await app.aclose()
    anthropic = await post(app, "/anthropic/v1/messages", messages())
    embeddings = await post(app, "/embeddings", embedding())
    assert anthropic.status_code == embeddings.status_code == 503
    assert anthropic.json()["error"]["type"] == "overloaded_error"
    assert anthropic.json()["error"]["code"] == "server_shutting_down"
    assert embeddings.json()["error"]["code"] == "server_shutting_down"
    assert "type" not in embeddings.json()


async def test_identical_response_streams_in_flight_share_one_call(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, records: list[RequestRecord]
) -> None:
    """Followers get the leader's named events as they come, byte for byte."""
    body = responses(temperature=0, stream=True, fake={"chunks": 4, "delay": 0.05})
    answers: list[httpx.Response] = []

    async def one() -> None:
        answers.append(await post(proxy, "/responses", body))

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(one)
    assert upstream.calls == 1
    assert len({a.content for a in answers}) == 1
    assert answers[0].content.count(b"event: response.output_text.delta\n") == 4
    assert sorted(r.cache or "" for r in records) == ["COALESCED"] * 3 + ["MISS"]
