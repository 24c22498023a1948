"""``/auto`` and ``/chat/completions`` for the models only the Responses API serves.

The proxy runs against a real fake Responses API on 127.0.0.1 (tests/fake_responses.py)
that records what it received. Translated requests are checked against the ``openai``
SDK's ``ResponseCreateParams``; translated answers and chunks against its
``ChatCompletion`` and ``ChatCompletionChunk``; and the real SDK, sync and async, reads
them through a real server.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from asgi_autoproxy import (
    AutoProxyMiddleware,
    AzureOpenAIProvider,
    OpenAIProvider,
    RetryPolicy,
    openapi_document,
)
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_responses import (
    REFUSAL,
    RESPONSE_ID,
    TEXT,
    TEXT_PIECES,
    TOOL_CALLS,
    USAGE,
    FakeResponses,
    stream_events,
    whole_response,
)
from tests.providers.test_responses_translation import assert_valid_responses_request
from tests.servers import ServerThread, serve, serve_fleet

pytestmark = pytest.mark.anyio

MODEL = "o3-pro"
CODEX = "gpt-5.3-codex"
_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


def chat(content: Any = "Hi", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def data_events(text: str) -> list[Any]:
    found = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in found]


# -- servers and clients ----------------------------------------------------------------


@pytest.fixture(scope="module")
def _servers() -> Iterator[list[tuple[FakeResponses, ServerThread]]]:
    with serve_fleet(FakeResponses, 2) as fleet:
        yield fleet


@pytest.fixture
def fake(_servers: list[tuple[FakeResponses, ServerThread]]) -> FakeResponses:
    for each, _ in _servers:
        each.reset()
    return _servers[0][0]


@pytest.fixture
def fake_url(_servers: list[tuple[FakeResponses, ServerThread]]) -> str:
    return _servers[0][1].url


@pytest.fixture
async def proxy(fake_url: str) -> AsyncIterator[AutoProxyMiddleware]:
    provider = OpenAIProvider(base_url=fake_url + "/v1", api_key=SERVER_KEY, name="openai")
    app = AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)
    yield app
    await app.aclose()


@pytest.fixture
async def http(proxy: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


@pytest.fixture(scope="module")
def base_url(_servers: list[tuple[FakeResponses, ServerThread]]) -> Iterator[str]:
    """The proxy under a real server, in pass-through mode, for the SDK."""
    provider = OpenAIProvider(base_url=_servers[0][1].url + "/v1", name="openai")
    app = AutoProxyMiddleware(inner_app(), providers=[provider])
    with serve(app, lifespan="on") as server:
        yield server.url + "/v1/proxy"


@pytest.fixture
def sync_sdk(base_url: str, fake: FakeResponses) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
async def async_sdk(base_url: str, fake: FakeResponses) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def sent(fake: FakeResponses, number: int = 0) -> dict[str, Any]:
    """What the fake received, checked against the SDK's request types."""
    body: dict[str, Any] = fake.requests[number].json
    assert_valid_responses_request(body)
    return body


# -- the fake itself speaks the Responses API ---------------------------------------------


@pytest.mark.parametrize(
    "scenario", ["text", "tools", "refusal", "incomplete", "failed", "error_event", "cut"]
)
def test_fake_answers_match_the_sdk_types(scenario: str) -> None:
    payload = {"model": MODEL, "input": "x", "stream": True}
    Response.model_validate(whole_response(payload, scenario))
    for event in stream_events(payload, scenario):
        _EVENT.validate_python(event)


# -- whole answers ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "model"), [("/auto", MODEL), ("/chat/completions", CODEX)])
async def test_chat_request_goes_to_responses_and_comes_back_as_chat(
    http: httpx.AsyncClient, fake: FakeResponses, path: str, model: str
) -> None:
    payload = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 500,
        "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
        "seed": 3,
    }
    response = await http.post(f"/v1/proxy{path}", json=payload)
    assert response.status_code == 200, response.text
    [seen] = fake.requests
    assert seen.path == "/v1/responses"
    assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"
    body = sent(fake)
    assert body["model"] == model
    assert body["input"] == [
        {"type": "message", "role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": "Hi"},
    ]
    assert body["max_output_tokens"] == 500
    assert body["reasoning"] == {"effort": "high"}
    assert body["text"] == {"format": {"type": "json_object"}}
    assert body["store"] is False
    assert "seed" not in body and "messages" not in body and "stream" not in body

    completion = ChatCompletion.model_validate(response.json())
    assert completion.object == "chat.completion"
    assert completion.id == RESPONSE_ID
    assert completion.model == f"{model}-2025-06-10"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (36, 87, 123)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 64
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 12
    assert usage.prompt_tokens_details.cache_write_tokens == 5
    assert response.headers["x-bt-used-endpoint"] == "openai"
    assert response.headers["openai-processing-ms"] == "812"
    assert response.headers["content-type"] == "application/json"


async def test_a_chat_model_still_goes_to_chat_completions(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    await http.post("/v1/proxy/auto", json=chat(model="gpt-5"))
    assert fake.requests[0].path == "/v1/chat/completions"
    assert fake.requests[0].json["messages"] == [{"role": "user", "content": "Hi"}]


async def test_catalog_override_sends_the_model_to_chat(fake_url: str, fake: FakeResponses) -> None:
    provider = OpenAIProvider(base_url=fake_url + "/v1", api_key=SERVER_KEY)
    app = AutoProxyMiddleware(
        inner_app(), providers=[provider], model_catalog={MODEL: "chat"}, allow_anonymous=True
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        await client.post("/v1/proxy/auto", json=chat())
        await client.post("/v1/proxy/chat/completions", json=chat())
    await app.aclose()
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2


async def test_tool_calls_come_back_as_chat_tool_calls(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "tools"
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for _, name, _ in TOOL_CALLS
    ]
    response = await http.post("/v1/proxy/auto", json=chat(tools=tools, tool_choice="required"))
    body = sent(fake)
    assert [t["name"] for t in body["tools"]] == [name for _, name, _ in TOOL_CALLS]
    assert body["tool_choice"] == "required"
    choice = ChatCompletion.model_validate(response.json()).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [(i, n) for i, n, _ in TOOL_CALLS]  # type: ignore[union-attr]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris", "unit": "c"},
        {"zone": "CET"},
    ]


async def test_incomplete_for_max_output_tokens_finishes_with_length(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "incomplete"
    response = await http.post("/v1/proxy/auto", json=chat(max_completion_tokens=16))
    assert sent(fake)["max_output_tokens"] == 16
    choice = ChatCompletion.model_validate(response.json()).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "".join(TEXT_PIECES[:2])


async def test_refusal_comes_back_as_the_message_refusal(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "refusal"
    message = ChatCompletion.model_validate(
        (await http.post("/v1/proxy/auto", json=chat())).json()
    ).choices[0]
    assert message.message.refusal == REFUSAL
    assert message.message.content is None


async def test_a_failed_response_is_an_error_and_never_cached(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "failed"
    for _ in range(2):
        response = await http.post("/v1/proxy/auto", json=chat(temperature=0))
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "server_error"
        assert "failed to respond" in response.json()["error"]["message"]
        assert response.headers["x-bt-cached"] == "MISS"
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("scenario", "status"), [("invalid", 400), ("rate_limited", 429)])
async def test_upstream_errors_come_back_with_their_status(
    http: httpx.AsyncClient, fake: FakeResponses, scenario: str, status: int
) -> None:
    fake.scenario = scenario
    response = await http.post("/v1/proxy/auto", json=chat())
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_untranslatable_field_is_a_400_and_nothing_is_sent(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    response = await http.post("/v1/proxy/chat/completions", json=chat(model=CODEX, stop="###"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "stop"
    assert "'stop'" in error["message"]
    assert fake.requests == []


async def test_a_completion_request_for_a_responses_model_is_a_400(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    response = await http.post("/v1/proxy/auto", json={"model": MODEL, "prompt": "Hi"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert fake.requests == []


async def test_without_a_provider_that_can_translate_the_error_says_what_to_do(
    fake_url: str, fake: FakeResponses
) -> None:
    provider = OpenAIProvider(
        base_url=fake_url + "/v1", api_key=SERVER_KEY, endpoints=["completion"]
    )
    app = AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.post("/v1/proxy/auto", json=chat())
    await app.aclose()
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "endpoint_not_supported"
    assert "model_catalog" in error["message"]
    assert fake.requests == []


async def test_whole_answers_are_cached_on_the_callers_chat_payload(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    first = await http.post("/v1/proxy/auto", json=chat(temperature=0))
    second = await http.post("/v1/proxy/auto", json=chat(temperature=0))
    other = await http.post("/v1/proxy/auto", json=chat("Other", temperature=0))
    assert first.headers["x-bt-cached"] == "MISS"
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.content == first.content
    assert other.headers["x-bt-cached"] == "MISS"
    assert len(fake.requests) == 2


async def test_a_rate_limited_provider_fails_over_to_the_next(
    _servers: list[tuple[FakeResponses, ServerThread]], fake: FakeResponses
) -> None:
    fake.scenario = "rate_limited"
    backup = _servers[1][0]
    providers = [
        OpenAIProvider(base_url=server.url + "/v1", api_key=SERVER_KEY, name=name)
        for (_, server), name in zip(_servers, ("primary", "backup"), strict=True)
    ]
    app = AutoProxyMiddleware(
        inner_app(), providers=providers, retry=RetryPolicy(max_retries=0), allow_anonymous=True
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        whole = await client.post("/v1/proxy/auto", json=chat())
        streamed = await client.post("/v1/proxy/auto", json=chat(stream=True))
    await app.aclose()
    assert whole.headers["x-bt-used-endpoint"] == "backup"
    assert ChatCompletion.model_validate(whole.json()).choices[0].message.content == TEXT
    assert streamed.headers["x-bt-used-endpoint"] == "backup"
    assert data_events(streamed.text)[-1] == "[DONE]"
    assert [len(fake.requests), len(backup.requests)] == [2, 2]
    assert all(r.path == "/v1/responses" for r in backup.requests)


# -- streams ----------------------------------------------------------------------------


async def stream(http: httpx.AsyncClient, **extra: Any) -> tuple[list[Any], httpx.Response]:
    response = await http.post("/v1/proxy/auto", json=chat(stream=True, **extra))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return data_events(response.text), response


async def test_text_stream_becomes_valid_chunks_ending_in_done(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    events, response = await stream(http)
    assert sent(fake)["stream"] is True
    assert "event:" not in response.text  # chat chunks are unnamed
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == RESPONSE_ID and c.model == f"{MODEL}-2025-06-10" for c in chunks)
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == list(TEXT_PIECES)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (36, 87)
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.reasoning_tokens == 64


async def test_include_usage_adds_a_usage_chunk_without_choices(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    events, _ = await stream(http, stream_options={"include_usage": True})
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].usage is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == USAGE["total_tokens"]
    assert "stream_options" not in sent(fake)


async def test_tool_call_stream_streams_arguments_in_pieces(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "tools"
    events, _ = await stream(http)
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    calls: dict[int, dict[str, str]] = {}
    pieces = 0
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            pieces += 1
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            if call.function is not None:
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
    assert sorted(calls) == [0, 1]
    assert [(calls[i]["id"], calls[i]["name"]) for i in (0, 1)] == [
        (i, n) for i, n, _ in TOOL_CALLS
    ]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert json.loads(calls[1]["arguments"]) == {"zone": "CET"}
    assert pieces == 2 + sum(len(parts) for _, _, parts in TOOL_CALLS)  # as they came
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_incomplete_stream_finishes_with_length(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "incomplete"
    events, _ = await stream(http)
    assert events[-1] == "[DONE]"
    assert ChatCompletionChunk.model_validate(events[-2]).choices[0].finish_reason == "length"


async def test_refusal_streams_as_refusal_deltas(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "refusal"
    events, _ = await stream(http)
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == REFUSAL


async def test_a_whole_answer_to_a_stream_request_becomes_one_chunk(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "whole_always"
    events, _ = await stream(http)
    assert events[-1] == "[DONE]"
    [chunk] = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunk.choices[0].delta.content == TEXT
    assert chunk.choices[0].finish_reason == "stop"
    assert chunk.usage is not None and chunk.usage.total_tokens == USAGE["total_tokens"]


async def test_a_cached_stream_replays_byte_for_byte(
    http: httpx.AsyncClient, fake: FakeResponses
) -> None:
    fake.scenario = "tools"
    _, first = await stream(http, temperature=0)
    _, second = await stream(http, temperature=0)
    assert first.headers["x-bt-cached"] == "MISS"
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.content == first.content
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("scenario", "code", "message"),
    [
        ("failed", "server_error", "The model failed to respond."),
        ("error_event", "server_error", "The server had an error"),
        ("cut", "upstream_stream_error", "ended early"),
    ],
)
async def test_a_broken_stream_ends_in_an_error_event_and_is_never_cached(
    http: httpx.AsyncClient, fake: FakeResponses, scenario: str, code: str, message: str
) -> None:
    fake.scenario = scenario
    for attempt in range(2):
        events, response = await stream(http, temperature=0)
        assert response.headers["x-bt-cached"] == "MISS"
        assert "[DONE]" not in events
        chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) in (
            "".join(TEXT_PIECES[:1]),
            "".join(TEXT_PIECES[:2]),
        )
        error = events[-1]["error"]
        assert error["code"] == code
        assert message in error["message"]
        assert len(fake.requests) == attempt + 1


async def test_sdk_raises_on_a_failed_stream(
    async_sdk: openai.AsyncOpenAI, fake: FakeResponses
) -> None:
    fake.scenario = "failed"
    chunks = await async_sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="failed to respond"):
        async for _ in chunks:
            pass


# -- the real openai SDK ------------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, CODEX])
def test_sync_sdk_whole_and_streamed(
    sync_sdk: openai.OpenAI, fake: FakeResponses, model: str
) -> None:
    completion = sync_sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi sdk"}], max_tokens=64
    )
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 64
    with sync_sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi sdk"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as chunks:
        received = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == TEXT
    assert received[-1].usage is not None and received[-1].usage.total_tokens == 123
    assert [r.path for r in fake.requests] == ["/v1/responses"] * 2
    assert fake.requests[0].headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert sent(fake, 0)["max_output_tokens"] == 64
    assert sent(fake, 1)["stream"] is True


@pytest.mark.parametrize("model", [MODEL, CODEX])
async def test_async_sdk_whole_and_streamed(
    async_sdk: openai.AsyncOpenAI, fake: FakeResponses, model: str
) -> None:
    completion = await async_sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi sdk"}]
    )
    assert completion.choices[0].message.content == TEXT
    chunks = await async_sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi sdk"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
    assert "".join(pieces) == TEXT
    assert [r.path for r in fake.requests] == ["/v1/responses"] * 2


async def test_sdk_tool_call_round_trip(async_sdk: openai.AsyncOpenAI, fake: FakeResponses) -> None:
    """Tool calls out, tool results back in: the second request carries them as
    function_call and function_call_output items with the same call ids."""
    fake.scenario = "tools"
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": name,
                "parameters": {"type": "object", "properties": {}},
            },
        }
        for _, name, _ in TOOL_CALLS
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]
    first = await async_sdk.chat.completions.create(model=CODEX, messages=messages, tools=tools)
    reply = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(reply.model_dump(exclude_none=True))
    for call in reply.tool_calls or []:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": f"ok {call.id}"})
    fake.scenario = "text"
    second = await async_sdk.chat.completions.create(model=CODEX, messages=messages, tools=tools)
    assert second.choices[0].message.content == TEXT
    items = sent(fake, 1)["input"]
    assert items[0] == {"type": "message", "role": "user", "content": "Weather and time in Paris?"}
    assert items[1:3] == [
        {
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": "".join(parts),
        }
        for call_id, name, parts in TOOL_CALLS
    ]
    assert items[3:] == [
        {"type": "function_call_output", "call_id": call_id, "output": f"ok {call_id}"}
        for call_id, _, _ in TOOL_CALLS
    ]


# -- Azure ----------------------------------------------------------------------------------


async def test_azure_sends_the_deployment_to_the_v1_responses_api(
    fake_url: str, fake: FakeResponses
) -> None:
    provider = AzureOpenAIProvider(
        endpoint=fake_url, api_key=SERVER_KEY, deployments={MODEL: "o3pro-eu"}, name="azure"
    )
    app = AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        whole = await client.post("/v1/proxy/auto", json=chat())
        streamed = await client.post("/v1/proxy/chat/completions", json=chat(stream=True))
    await app.aclose()
    assert ChatCompletion.model_validate(whole.json()).choices[0].message.content == TEXT
    assert data_events(streamed.text)[-1] == "[DONE]"
    for seen in fake.requests:
        assert (seen.path, seen.query) == ("/openai/v1/responses", "")
        assert seen.headers["api-key"] == SERVER_KEY
        assert "authorization" not in seen.headers
    assert sent(fake, 0)["model"] == "o3pro-eu"


# -- OpenAPI ------------------------------------------------------------------------------


def test_openapi_keeps_responses_models_out_of_completion_requests() -> None:
    """A schema-valid request never meets the 400 for a prompt sent to such a model."""
    schemas = openapi_document()["components"]["schemas"]

    def refused(request: str, model: str) -> bool:
        field = schemas[request]["properties"]["model"]
        return any(re.search(p["pattern"], model) for p in field["not"]["anyOf"])

    for model in ("o3-pro", "gpt-5.3-codex", "gpt-5.10", "gpt-5.4-mini", "gpt-5-codex"):
        assert refused("CompletionRequest", model)
        assert not refused("ChatRequest", model)
    for model in ("gpt-5.2", "gpt-5.1-mini", "gpt-5.1"):
        assert not refused("ChatRequest", model)
