"""AzureOpenAIProvider on the routes beside chat: embeddings per deployment, responses on
Azure's v1 API (the deployment named in the body), and no moderations."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, AzureOpenAIProvider, OpenAIProvider
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


async def call(
    providers: list[Any], path: str, body: dict[str, Any]
) -> tuple[httpx.Response, httpx.Response]:
    """The same request twice, so the second shows whether the first was cached."""
    app = AutoProxyMiddleware(inner_app(), providers=providers, api_keys={CALLER_KEY: "me"})
    headers = {"authorization": f"Bearer {CALLER_KEY}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        first = await http.post(path, content=json.dumps(body), headers=headers)
        second = await http.post(path, content=json.dumps(body), headers=headers)
    await app.aclose()
    return first, second


def azure(endpoint: str, **options: Any) -> AzureOpenAIProvider:
    return AzureOpenAIProvider(
        endpoint=endpoint,
        api_key=SERVER_KEY,
        deployments={"text-embedding-3-small": "embed-prod", "gpt-4.1-mini": "mini-prod"},
        name="azure",
        **options,
    )


async def test_embeddings_go_to_the_deployment(upstream: FakeUpstream, upstream_url: str) -> None:
    provider = azure(upstream_url.removesuffix("/v1"))
    body = {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"}
    first, second = await call([provider], "/v1/proxy/embeddings", body)
    assert first.status_code == 200 and first.json()["data"][0]["embedding"]
    assert second.headers["x-bt-cached"] == "HIT"
    [seen] = upstream.requests
    assert seen.path == "/openai/deployments/embed-prod/embeddings"
    assert seen.query == "api-version=2024-10-21"
    assert seen.headers["api-key"] == SERVER_KEY
    assert "authorization" not in seen.headers
    assert seen.json == body  # forwarded unchanged


async def test_responses_go_to_the_v1_api_with_the_deployment_as_model(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    provider = azure(upstream_url.removesuffix("/v1"))
    body = {"model": "gpt-4.1-mini", "input": "hi", "seed": 4, "stream": True}
    first, second = await call([provider], "/v1/proxy/responses", body)
    assert first.status_code == 200
    assert b"event: response.completed" in first.content
    assert second.headers["x-bt-cached"] == "HIT" and second.content == first.content
    [seen] = upstream.requests
    assert (seen.path, seen.query) == ("/openai/v1/responses", "")
    assert seen.headers["api-key"] == SERVER_KEY
    assert seen.json == {"model": "mini-prod", "input": "hi", "stream": True}  # no seed


async def test_unmapped_model_is_its_own_deployment(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    provider = azure(upstream_url.removesuffix("/v1"), models=["*"])
    body = {"model": "gpt-5-mini", "input": "hi"}
    first, _ = await call([provider], "/v1/proxy/responses", body)
    assert first.status_code == 200
    assert upstream.requests[0].body == json.dumps(body).encode()  # the bytes, unchanged


async def test_azure_serves_no_moderations(upstream: FakeUpstream, upstream_url: str) -> None:
    endpoint = upstream_url.removesuffix("/v1")
    body = {"model": "omni-moderation-latest", "input": "x"}
    first, _ = await call([azure(endpoint, models=["*"])], "/v1/proxy/moderations", body)
    assert first.status_code == 400
    assert first.json()["error"]["code"] == "endpoint_not_supported"
    assert upstream.calls == 0
    # Beside an OpenAI provider, that one answers.
    openai = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="openai")
    first, _ = await call([azure(endpoint, models=["*"]), openai], "/v1/proxy/moderations", body)
    assert first.status_code == 200 and first.headers["x-bt-used-endpoint"] == "openai"
    assert upstream.requests[0].path == "/v1/moderations"


def test_openai_provider_refuses_endpoints_it_cannot_reach() -> None:
    with pytest.raises(ValueError, match="messages"):
        OpenAIProvider(endpoints=("chat", "messages"))
