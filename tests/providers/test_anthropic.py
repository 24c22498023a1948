"""AnthropicProvider: OpenAI chat in, Anthropic Messages upstream, OpenAI chat out.

Translated requests are checked against the ``anthropic`` SDK's request types, and
translated answers and chunks are parsed with the ``openai`` SDK's types.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, RetryPolicy
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.providers.anthropic_request import JSON_TOOL_NAME, to_messages_request
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_anthropic import MESSAGE_ID, TOOL_CALLS, FakeAnthropic, _events, _message
from tests.sdk_types import materialize
from tests.servers import ServerThread, serve_fleet

pytestmark = pytest.mark.anyio

MODEL = "claude-sonnet-4-5"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)
# The pinned API version (2023-06-01) takes these; the installed SDK's types, made for
# a newer version, no longer list them, so they are checked apart.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")

_STREAMING = pydantic.TypeAdapter(MessageCreateParamsStreaming)
_WHOLE = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)
_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def assert_valid_anthropic_request(body: dict[str, Any]) -> None:
    """Valid per the SDK's types, with nothing the types do not know (they drop extras)."""
    checked = {k: v for k, v in body.items() if k not in SAMPLING_FIELDS}
    adapter = _STREAMING if body.get("stream") else _WHOLE
    assert materialize(adapter.validate_python(checked)) == checked


def chat(content: Any = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


# -- servers and clients ----------------------------------------------------------------


@pytest.fixture(scope="module")
def _anthropic_servers() -> Iterator[list[tuple[FakeAnthropic, ServerThread]]]:
    with serve_fleet(FakeAnthropic, 2) as fleet:
        yield fleet


@pytest.fixture
def fakes(_anthropic_servers: list[tuple[FakeAnthropic, ServerThread]]) -> list[FakeAnthropic]:
    for fake, _ in _anthropic_servers:
        fake.reset()
    return [fake for fake, _ in _anthropic_servers]


@pytest.fixture
def fake(fakes: list[FakeAnthropic]) -> FakeAnthropic:
    return fakes[0]


@pytest.fixture
def anthropic_urls(_anthropic_servers: list[tuple[FakeAnthropic, ServerThread]]) -> list[str]:
    return [server.url for _, server in _anthropic_servers]


@pytest.fixture
async def proxy(anthropic_urls: list[str]) -> AsyncIterator[AutoProxyMiddleware]:
    provider = AnthropicProvider(api_key=SERVER_KEY, base_url=anthropic_urls[0], name="claude")
    app = AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)
    yield app
    await app.aclose()


@pytest.fixture
async def http(proxy: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


@pytest.fixture
async def sdk(proxy: AutoProxyMiddleware) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real openai SDK, talking to the proxy in-process."""
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport) as client:
        yield openai.AsyncOpenAI(
            api_key=CALLER_KEY,
            base_url="http://t/v1/proxy",
            http_client=client,
            max_retries=0,
        )


def data_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


# -- request translation ----------------------------------------------------------------


def test_full_conversation_translates_to_a_valid_messages_request() -> None:
    payload = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather and time in Paris? See the map."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"zone": "CET"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
            {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
            {"role": "user", "content": "Summarise."},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            },
            {"type": "function", "function": {"name": "get_time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "stop": "###",
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,  # for the proxy's cache: Anthropic has no seed
        # OpenAI-only fields at their defaults ask for nothing (others are 400s).
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "stream_options": {"include_usage": True},
        "user": "user-42",
    }
    body = to_messages_request(payload).body
    assert body == {
        "model": MODEL,
        "max_tokens": 300,
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather and time in Paris? See the map."},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_time",
                        "input": {"zone": "CET"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": [{"type": "text", "text": "18 C, cloudy"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [{"type": "text", "text": "14:05"}],
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["###"],
        "metadata": {"user_id": "user-42"},
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }
    assert_valid_anthropic_request(body)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice_maps(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = to_messages_request(chat(tools=tools, tool_choice=choice)).body
    assert body["tool_choice"] == expected
    assert_valid_anthropic_request(body)


def test_max_tokens_defaults_and_carries_over() -> None:
    assert to_messages_request(chat()).body["max_tokens"] == 4096
    assert to_messages_request(chat(), default_max_tokens=99).body["max_tokens"] == 99
    assert to_messages_request(chat(max_tokens=12)).body["max_tokens"] == 12


def test_remote_image_url_becomes_a_url_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = to_messages_request(chat([part])).body
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    ]
    assert_valid_anthropic_request(body)


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "json_object"}, {"type": "object"}),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}},
                },
            },
            {"type": "object", "properties": {"answer": {"type": "integer"}}},
        ),
    ],
)
def test_response_format_becomes_a_forced_tool(
    response_format: dict[str, Any], schema: dict[str, Any]
) -> None:
    translated = to_messages_request(chat(response_format=response_format, stream=True))
    body = translated.body
    assert translated.json_tool == JSON_TOOL_NAME
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}
    assert body["tools"][0]["input_schema"] == schema
    assert body["stream"] is True
    assert_valid_anthropic_request(body)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (chat(n=2), "n"),
        (chat([{"type": "input_audio", "input_audio": {"data": "x"}}]), "messages[0].content[0]"),
        (chat([{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}]), None),
        (chat(max_tokens=0), "max_tokens"),
        (chat(stop=[1]), "stop"),
        (chat(tools=[{"type": "code_interpreter"}]), "tools[0]"),
        (chat(tool_choice="sometimes", tools=[]), "tool_choice"),
        ({"model": MODEL, "messages": [{"role": "function", "content": "x"}]}, None),
        ({"model": MODEL, "messages": [{"role": "system", "content": "only"}]}, "messages"),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{"},
                            }
                        ],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), None),
    ],
)
def test_untranslatable_requests_are_clear_400s(payload: dict[str, Any], param: str | None) -> None:
    with pytest.raises(ProxyError) as caught:
        to_messages_request(payload)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param


async def test_upstream_gets_messages_request_with_pinned_version_and_server_key(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    response = await http.post(
        "/v1/proxy/auto",
        json=chat(seed=1, temperature=0.5),
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    )
    assert response.status_code == 200
    [seen] = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == SERVER_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert CALLER_KEY not in json.dumps(seen.header_list)
    assert "authorization" not in seen.headers
    assert seen.json["temperature"] == 0.5 and "seed" not in seen.json
    assert_valid_anthropic_request(seen.json)


async def test_pass_through_sends_the_callers_key(
    anthropic_urls: list[str], fake: FakeAnthropic
) -> None:
    app = AutoProxyMiddleware(
        inner_app(), providers=[AnthropicProvider(base_url=anthropic_urls[0])]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        missing = await client.post("/v1/proxy/auto", json=chat())
        sent = await client.post("/v1/proxy/auto", json=chat(), headers={"x-api-key": CALLER_KEY})
    await app.aclose()
    assert missing.status_code == 401
    assert sent.status_code == 200
    assert fake.requests[0].headers["x-api-key"] == CALLER_KEY


async def test_completion_request_for_a_claude_model_is_a_clear_400(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    response = await http.post("/v1/proxy/completions", json={"model": MODEL, "prompt": "Hi"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "endpoint_not_supported"
    assert "chat/completions" in error["message"]
    assert fake.requests == []


# -- whole answers ----------------------------------------------------------------------


async def test_text_answer_is_a_chat_completion(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    response = await http.post("/v1/proxy/auto", json=chat())
    completion = ChatCompletion.model_validate(response.json())
    assert completion.id == MESSAGE_ID
    assert completion.model == MODEL
    assert completion.choices[0].message.content == "Hello from Claude."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (25, 12)
    assert completion.usage.total_tokens == 37
    assert response.headers["x-bt-used-endpoint"] == "claude"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert response.headers["content-type"] == "application/json"


async def test_tool_use_answer_has_tool_calls(http: httpx.AsyncClient, fake: FakeAnthropic) -> None:
    fake.scenario = "tools"
    response = await http.post("/v1/proxy/auto", json=chat())
    choice = ChatCompletion.model_validate(response.json()).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Hello from Claude."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [(i, n) for i, n, _ in TOOL_CALLS]  # type: ignore[union-attr]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris", "unit": "c"},
        {"zone": "CET"},
    ]


async def test_json_response_format_answers_as_content(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "json"
    response = await http.post("/v1/proxy/auto", json=chat(response_format={"type": "json_object"}))
    choice = ChatCompletion.model_validate(response.json()).choices[0]
    assert json.loads(choice.message.content or "") == {"answer": 42}
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls


async def test_cache_tokens_count_as_prompt_tokens(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "cache"
    response = await http.post("/v1/proxy/auto", json=chat())
    usage = ChatCompletion.model_validate(response.json()).usage
    assert usage is not None
    assert usage.prompt_tokens == 25 + 100 + 40
    assert usage.total_tokens == 165 + 12
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 100


@pytest.mark.parametrize(
    ("scenario", "reason"), [("stop_sequence", "stop"), ("max_tokens", "length")]
)
async def test_stop_reasons_map_to_finish_reasons(
    http: httpx.AsyncClient, fake: FakeAnthropic, scenario: str, reason: str
) -> None:
    fake.scenario = scenario
    response = await http.post("/v1/proxy/auto", json=chat())
    assert ChatCompletion.model_validate(response.json()).choices[0].finish_reason == reason


@pytest.mark.parametrize(
    ("scenario", "status", "kind", "code"),
    [
        ("overloaded", 529, "server_error", "overloaded_error"),
        ("invalid", 400, "invalid_request_error", "invalid_request_error"),
        ("rate_limited", 429, "rate_limit_error", "rate_limit_error"),
        ("html", 500, "upstream_error", "upstream_500"),
    ],
)
async def test_anthropic_errors_become_openai_errors_with_the_same_status(
    http: httpx.AsyncClient, fake: FakeAnthropic, scenario: str, status: int, kind: str, code: str
) -> None:
    fake.scenario = scenario
    response = await http.post("/v1/proxy/auto", json=chat())
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (kind, code)
    assert response.headers["content-type"] == "application/json"


async def test_sdk_raises_the_translated_error(
    sdk: openai.AsyncOpenAI, fake: FakeAnthropic
) -> None:
    fake.scenario = "invalid"
    with pytest.raises(openai.BadRequestError, match="roles must alternate"):
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


# -- streams ----------------------------------------------------------------------------


async def stream_chunks(http: httpx.AsyncClient, **extra: Any) -> tuple[list[Any], str]:
    response = await http.post("/v1/proxy/auto", json=chat(stream=True, **extra))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = data_events(response.text)
    parsed = [e if e == "[DONE]" else json.loads(e) for e in events]
    return parsed, response.text


async def test_text_stream_becomes_valid_chunks(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    events, _ = await stream_chunks(http)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == MESSAGE_ID and c.model == MODEL for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Hello from Claude."
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (25, 12)


async def test_tool_use_stream_streams_tool_call_arguments(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "tools"
    events, _ = await stream_chunks(http)
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
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
    # Argument pieces arrive as they came, not glued together at the end.
    assert sum(1 for c in chunks for t in c.choices[0].delta.tool_calls or []) >= 6
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_json_stream_arrives_as_content(http: httpx.AsyncClient, fake: FakeAnthropic) -> None:
    fake.scenario = "json"
    events, _ = await stream_chunks(http, response_format={"type": "json_object"})
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert json.loads(text) == {"answer": 42}
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_sdk_reads_the_translated_stream(
    sdk: openai.AsyncOpenAI, fake: FakeAnthropic
) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == "Hello from Claude."


async def test_error_in_the_middle_of_a_stream_reaches_the_client(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI, fake: FakeAnthropic
) -> None:
    fake.scenario = "error_mid_stream"
    events, _ = await stream_chunks(http)
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from"
    assert events[-1]["error"]["code"] == "overloaded_error"
    assert events[-1]["error"]["message"] == "Overloaded"
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for _ in stream:
            pass


async def test_stream_cut_before_message_stop_ends_in_an_error(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "cut"
    events, _ = await stream_chunks(http)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_stream_error"


async def test_overloaded_anthropic_fails_over_to_the_next_one(
    anthropic_urls: list[str], fakes: list[FakeAnthropic]
) -> None:
    fakes[0].scenario = "overloaded"
    providers = [
        AnthropicProvider(api_key=SERVER_KEY, base_url=url, name=name)
        for url, name in zip(anthropic_urls, ("primary", "backup"), strict=True)
    ]
    app = AutoProxyMiddleware(
        inner_app(), providers=providers, retry=RetryPolicy(max_retries=0), allow_anonymous=True
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.post("/v1/proxy/auto", json=chat(stream=True))
    await app.aclose()
    assert response.headers["x-bt-used-endpoint"] == "backup"
    assert data_events(response.text)[-1] == "[DONE]"
    assert [len(f.requests) for f in fakes] == [1, 1]


# -- the fake itself speaks Anthropic -----------------------------------------------------


@pytest.mark.parametrize(
    "scenario", ["text", "tools", "json", "cache", "error_mid_stream", "thinking"]
)
def test_fake_anthropic_answers_match_the_sdk_types(scenario: str) -> None:
    payload = to_messages_request(chat(response_format={"type": "json_object"})).body
    Message.model_validate(_message(payload, scenario))
    kinds = set()
    for event in _events(payload, scenario):
        kinds.add(event["type"])
        if event["type"] not in ("ping", "error"):
            _EVENT.validate_python(event)
    assert "ping" in kinds
