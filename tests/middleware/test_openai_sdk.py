"""The real ``openai`` SDK, unchanged, pointed at ``{prefix}`` on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve

MESSAGES = [{"role": "user", "content": "hi sdk"}]


@pytest.fixture(scope="module")
def base_url(_upstream_server: tuple[FakeUpstream, ServerThread]) -> Iterator[str]:
    provider = OpenAIProvider(base_url=_upstream_server[1].url + "/v1", name="fake")
    app = AutoProxyMiddleware(inner_app(), providers=[provider])
    with serve(app, lifespan="on") as server:
        yield server.url + "/v1/proxy"


@pytest.fixture
def sdk(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as client:
        yield client


def assert_upstream_saw(upstream: FakeUpstream, path: str) -> None:
    [seen] = upstream.requests
    assert seen.path == path
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"


def test_chat_completion(sdk: OpenAI, upstream: FakeUpstream) -> None:
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.2,
    )
    assert completion.choices[0].message.content == "echo #1: hi sdk"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 8
    assert_upstream_saw(upstream, "/v1/chat/completions")
    sent = upstream.requests[0].json
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.2
    assert sent["messages"] == MESSAGES


def test_chat_completion_stream(sdk: OpenAI, upstream: FakeUpstream) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_body={"fake": {"chunks": 4}},
    )
    with stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 tok3 "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert_upstream_saw(upstream, "/v1/chat/completions")
    assert upstream.requests[0].json["stream"] is True
    assert upstream.completed_streams == 1


def test_completion(sdk: OpenAI, upstream: FakeUpstream) -> None:
    completion = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", max_tokens=5)
    assert completion.choices[0].text == "echo #1: Say"
    assert completion.object == "text_completion"
    assert_upstream_saw(upstream, "/v1/completions")
    assert upstream.requests[0].json["max_tokens"] == 5


def test_completion_stream(sdk: OpenAI, upstream: FakeUpstream) -> None:
    stream = sdk.completions.create(model="davinci-002", prompt="Say", stream=True)
    with stream:
        texts = [c.choices[0].text for c in stream]
    assert texts == ["tok0 ", "tok1 ", "tok2 "]
    assert_upstream_saw(upstream, "/v1/completions")


def test_models_list(sdk: OpenAI, upstream: FakeUpstream) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert {"gpt-4o", "o3", "gpt-3.5-turbo-instruct", "davinci-002"} <= set(ids)
    assert len(ids) == len(set(ids))
    # Served by the proxy itself from its catalog.
    assert upstream.calls == 0


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_upstream_error_raises_the_matching_exception(
    sdk: OpenAI, upstream: FakeUpstream, status: int, exception: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exception) as raised:
        sdk.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_body={"fake": {"status": status}},
        )
    assert raised.value.status_code == status
    assert f"upstream says {status}" in raised.value.message
    assert upstream.calls == 1


def test_stream_that_breaks_raises_in_the_sdk(sdk: OpenAI, upstream: FakeUpstream) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        extra_body={"fake": {"chunks": 2, "no_done": True}},
    )
    received: list[str] = []
    with stream, pytest.raises(openai.APIError, match="ended early"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["tok0 ", "tok1 "]


def test_proxy_errors_raise_in_the_sdk(base_url: str, upstream: FakeUpstream) -> None:
    with OpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as sdk:
        with pytest.raises(openai.AuthenticationError, match="Missing API key"):
            sdk.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                extra_headers={"Authorization": openai.Omit()},
            )
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(model="", messages=MESSAGES)
    assert raised.value.param == "model"
    assert upstream.calls == 0


@pytest.mark.anyio
async def test_async_client_chat_completion_models(base_url: str, upstream: FakeUpstream) -> None:
    async with AsyncOpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as sdk:
        completion = await sdk.chat.completions.create(model="o3-mini", messages=MESSAGES)
        stream = await sdk.chat.completions.create(
            model="o3-mini",
            messages=MESSAGES,
            stream=True,
        )
        deltas = [chunk.choices[0].delta.content async for chunk in stream]
        legacy = await sdk.completions.create(model="babbage-002", prompt="p")
        legacy_stream = await sdk.completions.create(model="babbage-002", prompt="p", stream=True)
        texts = [chunk.choices[0].text async for chunk in legacy_stream]
        ids = [model.id async for model in sdk.models.list()]
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(
                model="o3-mini",
                messages=MESSAGES,
                extra_body={"fake": {"status": 429}},
            )
    assert completion.choices[0].message.content == "echo #1: hi sdk"
    assert deltas == ["tok0 ", "tok1 ", "tok2 "]
    assert legacy.choices[0].text == "echo #3: p"
    assert texts == ["tok0 ", "tok1 ", "tok2 "]
    assert "o3" in ids
    assert [r.path for r in upstream.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/completions",
        "/v1/chat/completions",
    ]
    assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {CALLER_KEY}"}
