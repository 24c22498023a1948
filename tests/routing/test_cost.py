"""Each answered request's cost in its ``RequestRecord``, from usage and the catalog."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import RequestRecord, TokenUsage
from tests.conftest import CALLER_KEY, MakeProxy
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

USAGE = {
    "prompt_tokens": 1_000_000,
    "completion_tokens": 200_000,
    "total_tokens": 1_200_000,
    "prompt_tokens_details": {"cached_tokens": 400_000},
}


async def ask(app: Any, *payloads: dict[str, Any]) -> list[httpx.Response]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"authorization": f"Bearer {CALLER_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", headers=headers
        ) as http:
            return [await http.post("/v1/proxy/auto", json=p) for p in payloads]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_cost_from_usage_and_price_with_cached_prompt_tokens(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    records: list[RequestRecord] = []
    app = make_proxy(on_request=records.append)
    first, hit = await ask(app, *[chat("gpt-4o", temperature=0, fake={"usage": USAGE})] * 2)
    assert first.status_code == hit.status_code == 200
    assert hit.headers["x-bt-cached"] == "HIT"
    answered, replayed = records
    assert answered.usage == TokenUsage(1_000_000, 200_000, 1_200_000, 400_000)
    # gpt-4o: $2.50 in, $1.25 cached in, $10 out per million tokens.
    assert answered.cost == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.2 * 10)
    assert replayed.cost is None and replayed.usage is None  # nothing billed upstream
    assert answered.log_fields()["cost"] == answered.cost


async def test_cost_of_a_stream(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    records: list[RequestRecord] = []
    app = make_proxy(on_request=records.append, cache=None)
    usage = {"prompt_tokens": 2_000_000, "completion_tokens": 1_000_000, "total_tokens": 3}
    [response] = await ask(app, chat("gpt-4o-mini", stream=True, fake={"usage": usage}))
    assert response.status_code == 200
    [record] = records
    assert record.stream and record.cost == pytest.approx(2 * 0.15 + 1 * 0.6)


async def test_cost_is_unknown_without_a_price_or_usage(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    records: list[RequestRecord] = []
    app = make_proxy(
        on_request=records.append,
        cache=None,
        model_catalog={"house-priced": {"flavor": "chat", "price": {"input": 3, "output": 4}}},
    )
    await ask(
        app,
        chat("claude-opus-4-7", fake={"usage": USAGE}),  # known, price unpublished
        chat("no-such-model", fake={"usage": USAGE}),
        chat("house-priced", fake={"usage": {"total_tokens": 5}}),  # no token split
        chat("house-priced", fake={"usage": USAGE}),
        chat("gpt-4o", fake={"status": 500}),
    )
    assert [r.cost for r in records[:3]] == [None, None, None]
    assert records[3].cost == pytest.approx(3.0 + 0.8)  # no cached rate: all at input
    assert records[4].status == 500 and records[4].cost is None
