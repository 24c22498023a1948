"""The fuller request record: response model, finish reason, cached and reasoning tokens,
each attempt, the cost, and usage on streams (asked for, then left out of the answer)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, RequestRecord, TokenUsage
from asgi_autoproxy._routing.pricing import Price
from tests.conftest import CALLER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_responses import USAGE as RESPONSES_USAGE
from tests.fake_responses import FakeResponses
from tests.fake_upstream import FakeUpstream
from tests.processes import free_port
from tests.servers import ServerThread

pytestmark = pytest.mark.anyio

DETAILED_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 150},
}


@asynccontextmanager
async def recording(
    proxy_factory: MakeProxy, **kwargs: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, list[RequestRecord], AutoProxyMiddleware]]:
    records: list[RequestRecord] = []
    proxy = proxy_factory(on_request=records.append, **kwargs)
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        ) as http:
            yield http, records, proxy


def raw(body: dict[str, Any]) -> bytes:
    """A body as some client writes it (spaces and all), to check it goes on unchanged."""
    return json.dumps(body, indent=1).encode()


def priced(proxy: AutoProxyMiddleware, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prices for the test's models (the built-in catalog may have none yet)."""
    prices = {"gpt-4o-mini": Price(input=2.0, output=8.0, cached_input=0.5)}
    monkeypatch.setattr(proxy.router.catalog, "price", prices.get)


async def test_a_whole_answer_is_recorded_in_full(
    make_proxy: MakeProxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = {"response_model": "gpt-4o-mini-2024-07-18", "usage": DETAILED_USAGE}
    async with recording(make_proxy) as (http, records, proxy):
        priced(proxy, monkeypatch)
        response = await http.post("/v1/proxy/auto", json=chat_body("full", fake=fake))
    assert response.status_code == 200
    (record,) = records
    assert record.response_model == "gpt-4o-mini-2024-07-18"
    assert record.finish_reason == "stop"
    assert record.usage == TokenUsage(1000, 200, 1200, 400, 150)
    (attempt,) = record.attempts
    assert (attempt.provider, attempt.status, attempt.outcome) == ("fake", 200, "ok")
    assert 0 < attempt.duration_s <= record.latency_s
    # 600 fresh and 400 cached input tokens, 200 output.
    assert record.cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 200 * 8.0) / 1e6)
    fields = record.log_fields()
    assert fields["cached_prompt_tokens"] == 400 and fields["reasoning_tokens"] == 150
    assert fields["attempts"] == [
        {"provider": "fake", "status": 200, "duration_s": attempt.duration_s, "outcome": "ok"}
    ]


async def test_cost_is_unknown_without_a_price_and_for_a_hit(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    async with recording(make_proxy) as (http, records, _):
        body = {**chat_body("cost", temperature=0), "model": "my-org/unpriced-model"}
        await http.post("/v1/proxy/auto", json=body)
        await http.post("/v1/proxy/auto", json=body)
    miss, hit = records
    assert miss.cache == "MISS" and miss.cost is None  # no price: unknown, not free
    assert hit.cache == "HIT" and hit.cost is None and hit.attempts == ()


async def test_failover_records_each_attempt_in_order(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    down = OpenAIProvider(base_url=f"http://127.0.0.1:{free_port()}/v1", name="down")
    fake = OpenAIProvider(base_url=upstream_url, name="fake")
    async with recording(make_proxy, providers=[down, fake], cooldown=None) as (http, records, _):
        await http.post("/v1/proxy/auto", json=chat_body("over"))
    (record,) = records
    assert [(a.provider, a.status, a.outcome) for a in record.attempts] == [
        ("down", None, "connect_error"),
        ("fake", 200, "ok"),
    ]
    assert record.provider == "fake"


async def test_a_stream_reports_usage_the_proxy_asked_for_and_strips_its_chunk(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    body = chat_body("stream", stream=True, temperature=0, fake={"response_model": "m-1"})
    async with recording(make_proxy) as (http, records, _):
        first = await http.post("/v1/proxy/auto", json=body)
        again = await http.post("/v1/proxy/auto", json=body)
    # Upstream was asked for usage; the rest of the body went as the caller sent it.
    sent = upstream.requests[0].body
    assert sent.startswith(b'{"stream_options":{"include_usage":true},')
    assert json.loads(sent) == {**body, "stream_options": {"include_usage": True}}
    for response in (first, again):  # the live answer and the cached one
        chunks = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
        assert chunks and all(c["choices"] for c in chunks)
        assert not any("usage" in c for c in chunks)
        assert response.text.endswith("data: [DONE]\n\n")
    assert again.headers["x-bt-cached"] == "HIT"
    miss = records[0]
    assert miss.usage == TokenUsage(5, 3, 8)
    assert miss.response_model == "m-1"
    assert miss.finish_reason == "stop"
    assert miss.ttfb_s is not None and miss.time_to_first_chunk_s == miss.ttfb_s


@pytest.mark.parametrize("include", [True, False])
async def test_a_caller_that_chose_include_usage_gets_its_choice(
    make_proxy: MakeProxy, upstream: FakeUpstream, include: bool
) -> None:
    body = chat_body("mine", stream=True, stream_options={"include_usage": include})
    async with recording(make_proxy) as (http, records, _):
        response = await http.post("/v1/proxy/auto", content=raw(body))
    assert upstream.requests[0].body == raw(body)  # byte for byte
    chunks = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    usage_chunks = [c for c in chunks if c["choices"] == []]
    assert len(usage_chunks) == (1 if include else 0)
    assert (records[0].usage is not None) is include


async def test_other_stream_options_are_kept_when_usage_is_added(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    body = chat_body("keep", stream=True, stream_options={"include_obfuscation": False})
    async with recording(make_proxy) as (http, records, _):
        await http.post("/v1/proxy/auto", json=body)
    assert upstream.requests[0].json["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert records[0].usage == TokenUsage(5, 3, 8)


async def test_stream_usage_false_sends_the_body_unchanged(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    body = chat_body("plain", stream=True)
    async with recording(make_proxy, stream_usage=False) as (http, records, _):
        await http.post("/v1/proxy/auto", content=raw(body))
    assert upstream.requests[0].body == raw(body)
    assert records[0].usage is None


async def test_a_translated_responses_stream_reports_usage_without_the_extra_chunk() -> None:
    fake = FakeResponses()
    server = ServerThread(fake)
    server.start()
    records: list[RequestRecord] = []
    try:
        provider = OpenAIProvider(base_url=server.url + "/v1", api_key="sk-server-0123", name="oa")
        proxy = AutoProxyMiddleware(
            inner_app(), providers=[provider], allow_anonymous=True, on_request=records.append
        )
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body = {
                "model": "o3-pro",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
            response = await http.post("/v1/proxy/chat/completions", json=body)
        await proxy.aclose()
    finally:
        server.stop()
    chunks = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    assert chunks and all(c["choices"] for c in chunks)  # the usage chunk was the proxy's
    (record,) = records
    assert record.usage is not None
    assert record.usage.total_tokens == RESPONSES_USAGE["total_tokens"]
    assert record.usage.reasoning_tokens is not None
