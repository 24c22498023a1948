"""Chat <-> Responses translation, for the models only ``/responses`` serves.

Pure functions, no server: every translated body is checked against the ``openai`` SDK's
``ResponseCreateParams`` types, every refusal is a 400 that names the field, and every
translated answer parses as the SDK's ``ChatCompletion`` or ``ChatCompletionChunk``.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)

from asgi_autoproxy import ModelCatalog
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.providers.responses_request import to_responses_request
from asgi_autoproxy.providers.responses_response import (
    StreamTranslator,
    chat_completion,
    failure,
    finish_reason,
)
from tests.sdk_types import materialize

MODEL = "o3-pro"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

_STREAMING = pydantic.TypeAdapter(ResponseCreateParamsStreaming)
_WHOLE = pydantic.TypeAdapter(ResponseCreateParamsNonStreaming)


def assert_valid_responses_request(body: dict[str, Any]) -> None:
    """Valid per the SDK's types, with nothing the types do not know (they drop extras)."""
    adapter = _STREAMING if body.get("stream") else _WHOLE
    assert materialize(adapter.validate_python(body)) == body


def chat(content: Any = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def translate(payload: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    body = to_responses_request(payload, model=model).body
    assert_valid_responses_request(body)
    return body


WEATHER_TOOL = {
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
}


def test_full_conversation_translates_to_a_valid_responses_request() -> None:
    payload = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? See the map."},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/m.png"}},
                    {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
                    {"type": "file", "file": {"file_id": "file-abc"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "14:05"}],
            },
            {"role": "user", "content": "Summarise."},
        ],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_completion_tokens": 300,
        "reasoning_effort": "high",
        "temperature": 1,
        "top_p": 0.9,
        "seed": 7,
        "n": 1,
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "user": "user-42",
        "metadata": {"team": "search"},
        "prompt_cache_key": "k1",
        "safety_identifier": "hash-42",
        "service_tier": "flex",
        "verbosity": "low",
        "store": None,
    }
    body = translate(payload)
    assert body == {
        "model": MODEL,
        "input": [
            {"type": "message", "role": "system", "content": "Be brief."},
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Use metric units."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather in Paris? See the map."},
                    {"type": "input_image", "image_url": PNG, "detail": "low"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/m.png",
                        "detail": "auto",
                    },
                    {"type": "input_file", "file_data": "JVBERi0=", "filename": "a.pdf"},
                    {"type": "input_file", "file_id": "file-abc"},
                ],
            },
            {"type": "message", "role": "assistant", "content": "Let me look."},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C, cloudy"},
            {"type": "function_call_output", "call_id": "call_2", "output": "14:05"},
            {"type": "message", "role": "user", "content": "Summarise."},
        ],
        "store": False,
        "temperature": 1,
        "top_p": 0.9,
        "metadata": {"team": "search"},
        "parallel_tool_calls": False,
        "prompt_cache_key": "k1",
        "safety_identifier": "hash-42",
        "service_tier": "flex",
        "user": "user-42",
        "max_output_tokens": 300,
        "reasoning": {"effort": "high"},
        "text": {"verbosity": "low"},
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                "strict": False,
                "description": "Weather for a city",
            },
            {
                "type": "function",
                "name": "get_time",
                "parameters": {"type": "object", "properties": {}},
                "strict": False,
            },
        ],
        "tool_choice": {"type": "function", "name": "get_weather"},
    }


def test_stream_request_keeps_stream_and_reads_include_usage() -> None:
    options = {"include_usage": True, "include_obfuscation": False}
    translated = to_responses_request(chat(stream=True, stream_options=options), model=MODEL)
    assert translated.include_usage is True
    assert translated.body["stream"] is True
    assert translated.body["stream_options"] == {"include_obfuscation": False}
    assert_valid_responses_request(translated.body)
    plain = to_responses_request(chat(stream=True), model=MODEL)
    assert plain.include_usage is False and "stream_options" not in plain.body


def test_model_is_the_name_given_and_store_follows_the_caller() -> None:
    assert translate(chat(), model="my-deployment")["model"] == "my-deployment"
    assert translate(chat())["store"] is False  # chat's default, not the Responses one
    assert translate(chat(store=True))["store"] is True


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 60}, 60),
        ({"max_tokens": 50, "max_completion_tokens": 60}, 60),
    ],
)
def test_token_limits_become_max_output_tokens(fields: dict[str, Any], expected: int) -> None:
    body = translate(chat(**fields))
    assert body["max_output_tokens"] == expected
    assert "max_tokens" not in body and "max_completion_tokens" not in body


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "description": "The answer",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"answer": {"type": "integer"}},
                        "required": ["answer"],
                        "additionalProperties": False,
                    },
                },
            },
            {
                "type": "json_schema",
                "name": "answer",
                "description": "The answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}},
                    "required": ["answer"],
                    "additionalProperties": False,
                },
            },
        ),
    ],
)
def test_response_format_becomes_text_format(
    response_format: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = translate(chat(response_format=response_format))
    assert body["text"] == {"format": expected}
    assert "response_format" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "function", "name": "get_weather"},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
        ),
    ],
)
def test_tool_choice_maps(choice: Any, expected: Any) -> None:
    body = translate(chat(tools=[WEATHER_TOOL], tool_choice=choice))
    assert body["tool_choice"] == expected


def test_strict_function_tool_stays_strict() -> None:
    tool = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}  # type: ignore[dict-item]
    assert translate(chat(tools=[tool]))["tools"][0]["strict"] is True


def test_reasoning_effort_becomes_reasoning() -> None:
    assert translate(chat(reasoning_effort="low"))["reasoning"] == {"effort": "low"}


def test_seed_enables_caching_but_is_not_sent() -> None:
    assert "seed" not in translate(chat(seed=42))


def test_refusal_parts_of_an_assistant_message_become_its_text() -> None:
    payload = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            {"role": "user", "content": "Please?"},
        ],
    }
    assert translate(payload)["input"][1] == {
        "type": "message",
        "role": "assistant",
        "content": "No.",
    }


def _message_with(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "x", **fields}]}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (chat(stop="###"), "stop"),
        (chat(n=2), "n"),
        (chat(n=True), "n"),
        (chat(logprobs=True), "logprobs"),
        (chat(top_logprobs=2), "top_logprobs"),
        (chat(frequency_penalty=0.5), "frequency_penalty"),
        (chat(presence_penalty=-1), "presence_penalty"),
        (chat(logit_bias={"50256": -100}), "logit_bias"),
        (chat(modalities=["text", "audio"]), "modalities"),
        (chat(audio={"voice": "alloy", "format": "wav"}), "audio"),
        (chat(prediction={"type": "content", "content": "x"}), "prediction"),
        (chat(web_search_options={}), "web_search_options"),
        (chat(functions=[{"name": "f"}]), "functions"),
        (chat(function_call="auto"), "function_call"),
        (chat(some_vendor_flag=True), "some_vendor_flag"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens="10"), "max_completion_tokens"),
        (chat(reasoning_effort=3), "reasoning_effort"),
        (chat(store="yes"), "store"),
        (chat(stream=True, stream_options={"chunk_size": 4}), "stream_options.chunk_size"),
        (chat(tools=[{"type": "custom", "custom": {"name": "grep"}}]), "tools[0]"),
        (chat(tools=[{"type": "function", "function": {}}]), "tools[0]"),
        (chat(tools=[WEATHER_TOOL], tool_choice="sometimes"), "tool_choice"),
        (chat(response_format={"type": "xml"}), "response_format"),
        (chat(response_format={"type": "json_schema", "json_schema": {}}), "response_format"),
        (_message_with(name="alice"), "messages[0].name"),
        (chat([{"type": "video_url", "video_url": "x"}]), "messages[0].content[0]"),
        (chat([{"type": "image_url", "image_url": {"url": "x", "detail": "max"}}]), None),
        (
            chat([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]),
            "messages[0].content[0]",
        ),
        (chat([{"type": "file", "file": {"filename": "a.pdf"}}]), "messages[0].content[0]"),
        ({"model": MODEL, "messages": [{"role": "function", "content": "x"}]}, None),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, None),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "g"}}],
                    }
                ],
            },
            "messages[0].tool_calls[0]",
        ),
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
                                "function": {"name": "f", "arguments": {}},
                            }
                        ],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"model": MODEL, "messages": [{"role": "assistant", "audio": {"id": "a1"}}]},
            "messages[0].audio",
        ),
    ],
)
def test_untranslatable_requests_are_400s_that_name_the_field(
    payload: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(ProxyError) as caught:
        to_responses_request(payload, model=MODEL)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param
        if param.isidentifier():  # a top-level field: the message names it too
            assert param in caught.value.message


@pytest.mark.parametrize(
    "model",
    [
        "o1-pro",
        "o1-pro-2025-03-19",
        "o3-pro",
        "o3-pro-2025-06-10",
        "gpt-5-pro",
        "gpt-5-pro-2025-10-06",
        "gpt-5.3",
        "gpt-5.3-codex",
        "gpt-5.4-mini",
        "gpt-5.9",
        "gpt-5.10",
        "gpt-5.12-nano",
        "gpt-5-codex",
        "gpt-5.1-codex",
        "gpt-5.1-codex-mini",
    ],
)
def test_builtin_catalog_marks_responses_only_models(model: str) -> None:
    assert ModelCatalog().flavor(model) == "responses"


@pytest.mark.parametrize(
    "model",
    ["gpt-5", "gpt-5-mini", "gpt-5.1", "gpt-5.2", "gpt-5.2-chat-latest", "o3", "o3-mini", "o1"],
)
def test_other_gpt5_and_o_series_models_stay_chat(model: str) -> None:
    assert ModelCatalog().flavor(model) == "chat"


def test_users_can_override_a_responses_entry() -> None:
    catalog = ModelCatalog({"o3-pro": "chat", "my-agent": "responses"})
    assert catalog.flavor("o3-pro") == "chat"
    assert catalog.flavor("o3-pro-2025-06-10") == "responses"
    assert catalog.flavor("my-agent") == "responses"


# -- answers: the pure functions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "tools", "reason"),
    [
        ({"status": "completed"}, False, "stop"),
        ({"status": "completed"}, True, "tool_calls"),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
            False,
            "length",
        ),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
            False,
            "content_filter",
        ),
    ],
)
def test_finish_reasons(response: dict[str, Any], tools: bool, reason: str) -> None:
    assert finish_reason(response, made_tool_calls=tools) == reason


@pytest.mark.parametrize("status", ["failed", "in_progress", "queued", "cancelled"])
def test_unfinished_responses_are_failures(status: str) -> None:
    error = failure({"status": status, "error": None})
    assert error is not None and error["error"]["type"] == "upstream_error"
    assert failure({"status": "completed"}) is None
    assert failure({"status": "incomplete"}) is None


def test_answer_without_usage_has_none_and_validates() -> None:
    body = json.loads(
        chat_completion({"id": "r", "status": "completed", "output": []}, model=MODEL)
    )
    completion = ChatCompletion.model_validate(body)
    assert completion.usage is None and completion.model == MODEL
    assert completion.choices[0].message.content is None


def _chunks(translator: StreamTranslator, *events: dict[str, Any]) -> list[Any]:
    text = b"".join(translator.feed(e) for e in events).decode()
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in text.split("\n")
        if line.startswith("data: ")
    ]


def test_arguments_sent_only_in_the_done_event_still_arrive() -> None:
    translator = StreamTranslator(model=MODEL, created=1, include_usage=False)
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}
    chunks = _chunks(
        translator,
        {"type": "response.created", "response": {"id": "r1", "model": MODEL}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"a"'},
        {
            "type": "response.function_call_arguments.done",
            "output_index": 0,
            "arguments": '{"a": 1}',
        },
        {"type": "response.completed", "response": {"status": "completed"}},
    )
    assert chunks[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks[:-1]]
    arguments = "".join(
        (t.function.arguments or "") if t.function else ""
        for c in parsed
        for t in c.choices[0].delta.tool_calls or []
    )
    assert arguments == '{"a": 1}'
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert translator.finished


@pytest.mark.parametrize(
    ("event", "code", "kind"),
    [
        (
            {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down"},
            "rate_limit_exceeded",
            "upstream_error",
        ),
        (
            {
                "type": "error",
                "error": {"type": "server_error", "code": "boom", "message": "Slow down"},
            },
            "boom",
            "server_error",
        ),
    ],
)
def test_error_events_become_openai_error_events(
    event: dict[str, Any], code: str, kind: str
) -> None:
    translator = StreamTranslator(model=MODEL, created=1, include_usage=False)
    [error] = _chunks(translator, event)
    assert error["error"]["code"] == code
    assert error["error"]["type"] == kind
    assert error["error"]["message"] == "Slow down"
    assert translator.finished
