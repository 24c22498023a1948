"""Parameters a model refuses are rewritten as its catalog entry says, before the
request goes upstream; the cache still keys on what the caller sent."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AzureOpenAIProvider
from asgi_autoproxy._routing.params import ParamRule
from tests.conftest import CALLER_KEY, MakeProxy
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

SAMPLING = {
    "temperature": 0,
    "top_p": 0.5,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
}


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def post(app: Any, path: str, payload: dict[str, Any]) -> httpx.Response:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            return await http.post(
                path, json=payload, headers={"authorization": f"Bearer {CALLER_KEY}"}
            )


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-nano"])
@pytest.mark.parametrize("path", ["/v1/proxy/auto", "/v1/proxy/chat/completions"])
async def test_reasoning_models_get_max_completion_tokens_and_no_sampling(
    make_proxy: MakeProxy, upstream: FakeUpstream, model: str, path: str
) -> None:
    response = await post(
        make_proxy(cache=None), path, body(model, max_tokens=50, seed=7, **SAMPLING)
    )
    assert response.status_code == 200, response.text
    sent = upstream.requests[0].json
    assert sent == body(model, max_completion_tokens=50, seed=7)


async def test_other_models_go_byte_for_byte(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    raw = json.dumps(body("gpt-4o", max_tokens=50, **SAMPLING), indent=3).encode()
    app = make_proxy(cache=None)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            response = await http.post(
                "/v1/proxy/chat/completions",
                content=raw,
                headers={"authorization": f"Bearer {CALLER_KEY}"},
            )
    assert response.status_code == 200
    assert upstream.requests[0].body == raw


async def test_a_caller_max_completion_tokens_wins_over_max_tokens(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    payload = body("o3", max_tokens=50, max_completion_tokens=80)
    assert (await post(make_proxy(cache=None), "/v1/proxy/auto", payload)).status_code == 200
    assert upstream.requests[0].json == body("o3", max_completion_tokens=80)


async def test_gpt5_with_no_reasoning_keeps_its_temperature(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    payload = body("gpt-5.1", reasoning_effort="none", temperature=0.3, max_tokens=9)
    assert (await post(make_proxy(cache=None), "/v1/proxy/auto", payload)).status_code == 200
    assert upstream.requests[0].json == body(
        "gpt-5.1", reasoning_effort="none", temperature=0.3, max_completion_tokens=9
    )


async def test_completions_are_never_rewritten(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    payload = {"model": "o3", "prompt": "Say", "max_tokens": 5, "temperature": 0}
    response = await post(make_proxy(cache=None), "/v1/proxy/completions", payload)
    assert response.status_code == 200
    assert upstream.requests[0].json == payload


async def test_a_user_catalog_rule_applies_and_can_switch_the_builtin_one_off(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(
        cache=None,
        model_catalog={
            "house-model": {"flavor": "chat", "params": {"drop": ["top_k"]}},
            "o3": {"flavor": "chat", "params": None},
        },
    )
    await post(app, "/v1/proxy/auto", body("house-model", top_k=5, temperature=0.2))
    await post(app, "/v1/proxy/auto", body("o3", max_tokens=5, temperature=0))
    assert upstream.requests[0].json == body("house-model", temperature=0.2)
    assert upstream.requests[1].json == body("o3", max_tokens=5, temperature=0)


async def test_the_cache_keys_on_what_the_caller_sent(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """temperature 0 asks for caching; the rewrite drops it upstream, yet the entry
    belongs to the caller's own request: asked again, it is a hit."""
    app = make_proxy()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"authorization": f"Bearer {CALLER_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", headers=headers
        ) as http:
            payload = body("o3", max_tokens=20, temperature=0)
            first = await http.post("/v1/proxy/auto", json=payload)
            again = await http.post("/v1/proxy/auto", json=payload)
            # A request that the rewrite makes identical upstream is still another entry.
            other = await http.post("/v1/proxy/auto", json=body("o3", max_tokens=20, seed=1))
    assert first.headers["x-bt-cached"] == "MISS"
    assert again.headers["x-bt-cached"] == "HIT"
    assert again.content == first.content
    assert other.headers["x-bt-cached"] == "MISS"
    assert [r.json for r in upstream.requests] == [
        body("o3", max_completion_tokens=20),
        body("o3", max_completion_tokens=20, seed=1),
    ]


async def test_rewriting_applies_to_azure_deployments_too(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    """The rule is the model's, not one provider's."""
    azure = AzureOpenAIProvider(endpoint=upstream_url.removesuffix("/v1"), name="azure")
    app = make_proxy(cache=None, providers=[azure])
    response = await post(app, "/v1/proxy/chat/completions", body("o4-mini", max_tokens=3))
    assert response.status_code == 200, response.text
    assert upstream.requests[0].path == "/openai/deployments/o4-mini/chat/completions"
    assert upstream.requests[0].json == body("o4-mini", max_completion_tokens=3)


def test_a_rule_leaves_a_payload_it_need_not_change_alone() -> None:
    rule = ParamRule(rename=(("max_tokens", "max_completion_tokens"),), drop=("temperature",))
    assert rule.apply({"model": "o3", "messages": []}) is None
    payload = {"model": "o3", "max_tokens": 1, "temperature": 1}
    assert rule.apply(payload) == {"model": "o3", "max_completion_tokens": 1}
    assert payload == {"model": "o3", "max_tokens": 1, "temperature": 1}  # not mutated
