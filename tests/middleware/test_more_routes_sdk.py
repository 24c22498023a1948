"""The official SDKs, unchanged, on the routes beside chat: ``openai`` on ``/embeddings``,
``/moderations`` and ``/responses``, ``anthropic`` on the native ``/anthropic`` route.

The middleware runs under a real server; the fake upstreams (OpenAI's and Anthropic's,
on 127.0.0.1) record what they received.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from anthropic import Anthropic, AsyncAnthropic
from openai import AsyncOpenAI, OpenAI

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, inner_app
from tests.fake_anthropic import MESSAGE_ID, FakeAnthropic
from tests.fake_openai_routes import VECTOR
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve

CLAUDE = "claude-sonnet-4-5"


@pytest.fixture(scope="module")
def proxy_url(
    _upstream_server: tuple[FakeUpstream, ServerThread],
    _anthropic_server: tuple[FakeAnthropic, ServerThread],
) -> Iterator[str]:
    """Pass-through keys: both providers send the caller's own key upstream. No cache,
    so that every call reaches the upstreams (the cache has tests of its own)."""
    providers = [
        AnthropicProvider(base_url=_anthropic_server[1].url, name="claude"),
        OpenAIProvider(base_url=_upstream_server[1].url + "/v1", name="fake"),
    ]
    app = AutoProxyMiddleware(inner_app(), providers=providers, cache=None)
    with serve(app, lifespan="on") as server:
        yield server.url + "/v1/proxy"


@pytest.fixture
def sdk(proxy_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=proxy_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def claude_sdk(proxy_url: str) -> Iterator[Anthropic]:
    with Anthropic(
        base_url=proxy_url + "/anthropic", api_key=CALLER_KEY, max_retries=0, timeout=10
    ) as client:
        yield client


def only_request(upstream: FakeUpstream, path: str) -> dict[str, object]:
    [seen] = upstream.requests
    assert seen.path == path
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"
    return dict(seen.json)


# -- embeddings and moderations ---------------------------------------------------------


def test_embeddings_create(sdk: OpenAI, upstream: FakeUpstream) -> None:
    # The SDK asks for base64 by default and decodes it: the bytes came through intact.
    result = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [item.embedding for item in result.data] == [VECTOR, VECTOR]
    assert result.usage.prompt_tokens == 5
    sent = only_request(upstream, "/v1/embeddings")
    assert sent["input"] == ["a", "b"] and sent["encoding_format"] == "base64"


def test_embeddings_create_as_floats(sdk: OpenAI, upstream: FakeUpstream) -> None:
    result = sdk.embeddings.create(
        model="text-embedding-3-large", input="x", encoding_format="float", dimensions=3
    )
    assert result.data[0].embedding == VECTOR
    assert only_request(upstream, "/v1/embeddings")["dimensions"] == 3


def test_moderations_create(sdk: OpenAI, upstream: FakeUpstream) -> None:
    result = sdk.moderations.create(model="omni-moderation-latest", input="I will kill time")
    assert result.results[0].flagged is True
    assert result.results[0].categories.violence is True
    assert only_request(upstream, "/v1/moderations")["model"] == "omni-moderation-latest"


def test_moderations_without_a_model_go_upstream_as_sent(
    sdk: OpenAI, upstream: FakeUpstream
) -> None:
    """The API's model is optional: the body goes upstream without one, as sent."""
    result = sdk.moderations.create(input="hello")
    assert result.results[0].flagged is False
    assert "model" not in only_request(upstream, "/v1/moderations")


# -- responses ---------------------------------------------------------------------------


def test_responses_create(sdk: OpenAI, upstream: FakeUpstream) -> None:
    response = sdk.responses.create(model="gpt-4.1-mini", input="hi", temperature=0.3)
    assert response.output_text == "echo #1: hi"
    assert response.usage is not None and response.usage.total_tokens == 8
    sent = only_request(upstream, "/v1/responses")
    assert sent["input"] == "hi" and sent["temperature"] == 0.3


def test_responses_stream_relays_each_named_event(sdk: OpenAI, upstream: FakeUpstream) -> None:
    stream = sdk.responses.create(
        model="gpt-4.1-mini", input="hi", stream=True, extra_body={"fake": {"chunks": 4}}
    )
    with stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert only_request(upstream, "/v1/responses")["stream"] is True


def test_responses_seed_enables_caching_but_is_not_sent(
    sdk: OpenAI, upstream: FakeUpstream
) -> None:
    """The Responses API has no ``seed``: the proxy keeps it for the cache key only."""
    sdk.responses.create(model="gpt-4.1-mini", input="hi", extra_body={"seed": 7})
    sent = only_request(upstream, "/v1/responses")
    assert "seed" not in sent and sent["input"] == "hi"


def test_responses_error_event_reaches_the_sdk(sdk: OpenAI, upstream: FakeUpstream) -> None:
    """The upstream's own ``event: error`` is relayed as it came: the SDK yields it as a
    typed error event, and the stream ends there."""
    stream = sdk.responses.create(
        model="gpt-4.1-mini",
        input="hi",
        stream=True,
        extra_body={"fake": {"error_event_after": 1}},
    )
    with stream:
        events = list(stream)
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]
    assert events[-1].message == "overloaded mid-stream"  # type: ignore[union-attr]


def test_responses_stream_cut_short_raises_in_the_sdk(sdk: OpenAI, upstream: FakeUpstream) -> None:
    stream = sdk.responses.create(
        model="gpt-4.1-mini", input="hi", stream=True, extra_body={"fake": {"no_done": True}}
    )
    with stream, pytest.raises(openai.APIError, match=r"before sending response\.completed"):
        for _ in stream:
            pass


@pytest.mark.anyio
async def test_async_openai_sdk_on_every_route(proxy_url: str, upstream: FakeUpstream) -> None:
    async with AsyncOpenAI(
        base_url=proxy_url, api_key=CALLER_KEY, max_retries=0, timeout=10
    ) as sdk:
        embedded = await sdk.embeddings.create(model="text-embedding-3-small", input="a")
        moderated = await sdk.moderations.create(input="kill")
        response = await sdk.responses.create(model="gpt-4.1-mini", input="hi")
        stream = await sdk.responses.create(model="gpt-4.1-mini", input="hi", stream=True)
        names = [event.type async for event in stream]
        with pytest.raises(openai.RateLimitError):
            await sdk.embeddings.create(
                model="text-embedding-3-small", input="a", extra_body={"fake": {"status": 429}}
            )
    assert embedded.data[0].embedding == VECTOR
    assert moderated.results[0].flagged is True
    assert response.output_text == "echo #3: hi"
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert "response.output_text.delta" in names
    assert [r.path for r in upstream.requests] == [
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/responses",
        "/v1/responses",
        "/v1/embeddings",
    ]
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {CALLER_KEY}"}


# -- the native Anthropic route ------------------------------------------------------------


def test_anthropic_messages_create(claude_sdk: Anthropic, claude: FakeAnthropic) -> None:
    message = claude_sdk.messages.create(
        model=CLAUDE,
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert message.id == MESSAGE_ID
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Claude."
    assert message.usage.input_tokens == 25
    [seen] = claude.requests
    assert seen.path == "/v1/messages"
    # The body went upstream as it came: no translation.
    assert seen.json == {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
        "model": CLAUDE,
        "system": "Be brief.",
    }
    # The SDK sends its key as a bearer token; the provider sends it as Anthropic's header.
    assert seen.headers["x-api-key"] == CALLER_KEY
    assert "authorization" not in seen.headers
    assert seen.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION


def test_anthropic_stream_keeps_anthropic_events(
    claude_sdk: Anthropic, claude: FakeAnthropic
) -> None:
    claude.scenario = "tools"
    with claude_sdk.messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.stop_reason == "tool_use"
    assert final.content[1].input == {"city": "Paris", "unit": "c"}  # type: ignore[union-attr]


def test_anthropic_version_and_beta_pass_through(
    claude_sdk: Anthropic, claude: FakeAnthropic
) -> None:
    claude_sdk.messages.create(
        model=CLAUDE,
        max_tokens=8,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"},
    )
    [seen] = claude.requests
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "tools-2024-04-04"


def test_anthropic_sdk_with_x_api_key(proxy_url: str, claude: FakeAnthropic) -> None:
    """Anthropic-native tools send the key as ``x-api-key``; it works the same."""
    with Anthropic(
        base_url=proxy_url + "/anthropic",
        api_key=None,
        auth_token=None,
        default_headers={"x-api-key": CALLER_KEY},
        max_retries=0,
        timeout=10,
    ) as client:
        message = client.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert message.id == MESSAGE_ID
    assert claude.requests[0].headers["x-api-key"] == CALLER_KEY


def test_anthropic_errors_raise_typed_in_the_sdk(
    claude_sdk: Anthropic, claude: FakeAnthropic, proxy_url: str
) -> None:
    claude.scenario = "invalid"
    with pytest.raises(anthropic.BadRequestError) as upstream_refused:
        claude_sdk.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert upstream_refused.value.type == "invalid_request_error"
    assert upstream_refused.value.api_message == "messages: roles must alternate"
    # The proxy's own errors come in Anthropic's shape too, so the SDK types them.
    with pytest.raises(anthropic.BadRequestError) as proxy_refused:
        claude_sdk.messages.create(
            model="gpt-4o", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert proxy_refused.value.type == "invalid_request_error"
    assert "gpt-4o" in (proxy_refused.value.api_message or "")
    with (
        Anthropic(
            base_url=proxy_url + "/anthropic",
            default_headers={"x-api-key": "bad\u00e9key"},
            max_retries=0,
            timeout=10,
        ) as client,
        pytest.raises(anthropic.AuthenticationError) as unauthorized,
    ):
        client.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert unauthorized.value.type == "authentication_error"


def test_anthropic_error_event_raises_in_the_sdk(
    claude_sdk: Anthropic, claude: FakeAnthropic
) -> None:
    claude.scenario = "error_mid_stream"
    with (
        pytest.raises(anthropic.APIStatusError, match="Overloaded"),
        claude_sdk.messages.stream(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_anthropic_stream_cut_short_raises_in_the_sdk(
    claude_sdk: Anthropic, claude: FakeAnthropic
) -> None:
    """The proxy ends a cut stream with Anthropic's own ``event: error``, which the SDK
    raises on (it skips events without a name, so chat's error shape would pass silently)."""
    claude.scenario = "cut"
    with (
        pytest.raises(anthropic.APIStatusError, match="before sending message_stop") as raised,
        claude_sdk.messages.stream(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert raised.value.type == "api_error"


@pytest.mark.anyio
async def test_async_anthropic_sdk(proxy_url: str, claude: FakeAnthropic) -> None:
    async with AsyncAnthropic(
        base_url=proxy_url + "/anthropic", api_key=CALLER_KEY, max_retries=0, timeout=10
    ) as client:
        message = await client.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
        stream = await client.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        names = [event.type async for event in stream]
    assert message.content[0].text == "Hello from Claude."  # type: ignore[union-attr]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert [r.path for r in claude.requests] == ["/v1/messages", "/v1/messages"]
    assert claude.requests[1].json["stream"] is True


def test_without_v1_in_the_path_too(proxy_url: str, claude: FakeAnthropic) -> None:
    import httpx

    answer = httpx.post(
        proxy_url + "/anthropic/messages",
        json={"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"x-api-key": CALLER_KEY},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json()["type"] == "message"
    assert claude.requests[0].path == "/v1/messages"
