"""The chat -> Anthropic translation, completed: reasoning, thinking, top_k, prompt
caching, documents, and a 400 naming any field that cannot be mapped.

Translated requests are checked against the ``anthropic`` SDK's request types; the
answers against the ``openai`` SDK's, through the proxy and a real fake Anthropic.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.providers.anthropic_request import to_messages_request
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_anthropic import SIGNATURE, THOUGHTS, FakeAnthropic
from tests.providers.test_anthropic import (
    MODEL,
    PNG,
    assert_valid_anthropic_request,
    chat,
    data_events,
)
from tests.servers import ServerThread, serve

pytestmark = pytest.mark.anyio

PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()


def translate(payload: dict[str, Any]) -> dict[str, Any]:
    body = to_messages_request(payload).body
    assert_valid_anthropic_request(body)
    return body


def refused(payload: dict[str, Any]) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        to_messages_request(payload)
    assert caught.value.status == 400
    return caught.value


# -- reasoning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget"),
    [
        ("minimal", None, 1024),
        ("low", None, 1024),  # 20% of the default 4096 is under Anthropic's minimum
        ("medium", None, 2048),
        ("high", None, 3276),
        ("low", 20_000, 4000),
        ("high", 20_000, 16_000),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(
    effort: str, max_tokens: int | None, budget: int
) -> None:
    extra = {} if max_tokens is None else {"max_completion_tokens": max_tokens}
    body = translate(chat(reasoning_effort=effort, **extra))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == (max_tokens or 4096)


def test_reasoning_effort_none_sends_no_thinking() -> None:
    assert "thinking" not in translate(chat(reasoning_effort="none", temperature=0))


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (chat(reasoning_effort="extreme"), "reasoning_effort"),
        (chat(reasoning_effort=3), "reasoning_effort"),
        # The budget must fit below max_tokens; nothing is raised behind the caller's back.
        (chat(reasoning_effort="low", max_completion_tokens=1000), "max_completion_tokens"),
        (chat(reasoning_effort="high", max_tokens=1024), "max_tokens"),
        (chat(reasoning_effort="low", thinking={"type": "disabled"}), "reasoning_effort"),
        (chat(thinking="on"), "thinking"),
        (chat(thinking={"budget_tokens": 2000}), "thinking"),
        # What Anthropic refuses beside thinking, named as the caller sent it.
        (chat(reasoning_effort="low", temperature=0), "temperature"),
        (chat(reasoning_effort="low", top_p=0.5), "top_p"),
        (chat(reasoning_effort="low", top_k=5), "top_k"),
        (
            chat(
                thinking={"type": "enabled", "budget_tokens": 2000},
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice="required",
            ),
            "tool_choice",
        ),
        (
            chat(reasoning_effort="medium", response_format={"type": "json_object"}),
            "response_format",
        ),
    ],
)
def test_reasoning_that_cannot_be_mapped_is_a_400_naming_the_field(
    payload: dict[str, Any], param: str
) -> None:
    assert refused(payload).param == param


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled", "budget_tokens": 2000},
        {"type": "disabled"},
        {"type": "adaptive"},
    ],
)
def test_thinking_passes_through(thinking: dict[str, Any]) -> None:
    body = translate(chat(thinking=thinking, temperature=1, top_p=0.95))
    assert body["thinking"] == thinking


def test_top_k_passes_through_and_must_be_a_count() -> None:
    assert translate(chat(top_k=40, temperature=0))["top_k"] == 40
    assert refused(chat(top_k=-1)).param == "top_k"
    assert refused(chat(top_k="many")).param == "top_k"


# -- prompt caching ---------------------------------------------------------------------


def test_cache_control_on_parts_passes_through() -> None:
    ephemeral = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    payload = {
        "model": MODEL,
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "A long manual.", "cache_control": hour},
                    {"type": "text", "text": "Be brief."},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:", "cache_control": ephemeral},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG}"},
                        "cache_control": ephemeral,
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "A cat.", "cache_control": ephemeral}],
            },
            {"role": "user", "content": "And now?"},
        ],
    }
    body = translate(payload)
    # A part that asks for caching keeps the system prompt as blocks.
    assert body["system"] == [
        {"type": "text", "text": "A long manual.", "cache_control": hour},
        {"type": "text", "text": "Be brief."},
    ]
    user, assistant, last = body["messages"]
    assert [block.get("cache_control") for block in user["content"]] == [ephemeral, ephemeral]
    assert assistant["content"] == [{"type": "text", "text": "A cat.", "cache_control": ephemeral}]
    assert last["content"] == [{"type": "text", "text": "And now?"}]


def test_cache_control_on_a_tool_result_passes_through() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": [{"type": "text", "text": "18 C", "cache_control": {"type": "ephemeral"}}],
        },
    ]
    body = translate({"model": MODEL, "messages": messages})
    [result] = body["messages"][2]["content"]
    assert result["content"] == [
        {"type": "text", "text": "18 C", "cache_control": {"type": "ephemeral"}}
    ]


def test_bad_cache_control_is_a_400_naming_the_part() -> None:
    part = {"type": "text", "text": "x", "cache_control": "yes"}
    assert refused(chat([part])).param == "messages[0].content[0].cache_control"


# -- documents -----------------------------------------------------------------------------


def test_pdf_file_part_becomes_a_document_block() -> None:
    part = {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"},
        "cache_control": {"type": "ephemeral"},
    }
    body = translate(chat([{"type": "text", "text": "Summarise"}, part]))
    assert body["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
        "cache_control": {"type": "ephemeral"},
    }


def test_plain_text_file_and_pdf_image_url_become_documents() -> None:
    text = base64.b64encode("Zürich notes".encode()).decode()
    parts = [
        {"type": "file", "file": {"file_data": f"data:text/plain;base64,{text}"}},
        {"type": "image_url", "image_url": {"url": f"data:application/pdf;base64,{PDF}"}},
    ]
    first, second = translate(chat(parts))["messages"][0]["content"]
    assert first == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Zürich notes"},
    }
    assert second["source"] == {"type": "base64", "media_type": "application/pdf", "data": PDF}


@pytest.mark.parametrize(
    ("file", "param"),
    [
        ({"file_id": "file-abc123"}, "messages[0].content[0].file.file_id"),
        ({"file_data": PDF}, "messages[0].content[0].file.file_data"),
        (
            {"file_data": "data:application/zip;base64,UEsDBA=="},
            "messages[0].content[0].file.file_data",
        ),
        ({"file_data": "data:text/plain;base64,//79"}, "messages[0].content[0].file.file_data"),
        ("report.pdf", "messages[0].content[0]"),
    ],
)
def test_documents_that_cannot_be_sent_are_400s(file: Any, param: str) -> None:
    assert refused(chat([{"type": "file", "file": file}])).param == param


# -- nothing is dropped in silence -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.1),
        ("logit_bias", {"50256": -100}),
        ("store", True),
        ("metadata", {"project": "x"}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("service_tier", "flex"),
        ("verbosity", "low"),
        ("a_field_nobody_knows", 1),
    ],
)
def test_a_field_that_cannot_be_mapped_is_a_400_naming_it(field: str, value: Any) -> None:
    error = refused(chat(**{field: value}))
    assert error.param == field
    assert error.code == "unsupported_parameter"
    assert field in error.message


def test_openai_defaults_and_nulls_ask_for_nothing() -> None:
    body = translate(
        chat(
            logprobs=False,
            top_logprobs=0,
            presence_penalty=0,
            frequency_penalty=0.0,
            logit_bias={},
            store=False,
            metadata={},
            modalities=["text"],
            service_tier="auto",
            audio=None,
            seed=3,
        )
    )
    assert set(body) == {"model", "max_tokens", "messages"}


# -- through the proxy, against a real fake Anthropic -------------------------------------


@pytest.fixture(scope="module")
def _anthropic() -> Iterator[tuple[FakeAnthropic, ServerThread]]:
    fake = FakeAnthropic()
    with serve(fake) as server:
        yield fake, server


@pytest.fixture
def fake(_anthropic: tuple[FakeAnthropic, ServerThread]) -> FakeAnthropic:
    _anthropic[0].reset()
    return _anthropic[0]


@pytest.fixture
async def proxy(
    _anthropic: tuple[FakeAnthropic, ServerThread],
) -> AsyncIterator[AutoProxyMiddleware]:
    provider = AnthropicProvider(api_key=SERVER_KEY, base_url=_anthropic[1].url, name="claude")
    app = AutoProxyMiddleware(inner_app(), providers=[provider], api_keys={CALLER_KEY: "t"})
    yield app
    await app.aclose()


@pytest.fixture
async def http(proxy: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    ) as client:
        yield client


async def test_thinking_answer_has_reasoning_content(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "thinking"
    response = await http.post("/v1/proxy/auto", json=chat(reasoning_effort="medium"))
    assert response.status_code == 200, response.text
    message = ChatCompletion.model_validate(response.json()).choices[0].message
    assert message.content == "Hello from Claude."
    assert message.model_extra == {"reasoning_content": "".join(THOUGHTS)}
    assert SIGNATURE not in response.text
    [seen] = fake.requests
    assert seen.json["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert_valid_anthropic_request(seen.json)


async def test_thinking_stream_has_reasoning_content_deltas(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.scenario = "thinking"
    payload = chat(stream=True, thinking={"type": "enabled", "budget_tokens": 1500})
    response = await http.post("/v1/proxy/auto", json=payload)
    assert response.status_code == 200
    events = data_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    deltas = [c.choices[0].delta for c in chunks]
    thoughts = [d.model_extra.get("reasoning_content") for d in deltas if d.model_extra]
    assert thoughts == THOUGHTS
    assert "".join(d.content or "" for d in deltas) == "Hello from Claude."
    assert SIGNATURE not in response.text
    assert fake.requests[0].json["thinking"] == {"type": "enabled", "budget_tokens": 1500}


async def test_sdk_reads_reasoning_content(proxy: AutoProxyMiddleware, fake: FakeAnthropic) -> None:
    fake.scenario = "thinking"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy)) as client:
        sdk = openai.AsyncOpenAI(
            api_key=CALLER_KEY, base_url="http://t/v1/proxy", http_client=client, max_retries=0
        )
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], reasoning_effort="low"
        )
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True
            )
    extra = completion.choices[0].message.model_extra or {}
    assert extra["reasoning_content"] == "".join(THOUGHTS)
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "logprobs"
    assert len(fake.requests) == 1  # the refused request never went upstream


async def test_pdf_and_cache_control_reach_anthropic(
    http: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    part = {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "r.pdf"},
        "cache_control": {"type": "ephemeral"},
    }
    response = await http.post("/v1/proxy/auto", json=chat([part], top_k=3))
    assert response.status_code == 200, response.text
    sent = fake.requests[0].json
    assert sent["top_k"] == 3
    assert sent["messages"][0]["content"][0]["type"] == "document"
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert_valid_anthropic_request(sent)
