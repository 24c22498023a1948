"""AzureOpenAIProvider: deployment URLs, api-version and the api-key header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, AzureOpenAIProvider
from tests.conftest import CALLER_KEY, SERVER_KEY, chat_body, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def azure_endpoint(upstream_url: str) -> str:
    return upstream_url.removesuffix("/v1")


async def call(
    provider: AzureOpenAIProvider, path: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    app = AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post(path, json=body, headers=headers)
    await app.aclose()
    return response


@pytest.fixture
async def server_key_provider(azure_endpoint: str) -> AsyncIterator[AzureOpenAIProvider]:
    yield AzureOpenAIProvider(
        endpoint=azure_endpoint,
        api_key=SERVER_KEY,
        deployments={"gpt-4o-mini": "prod-4o-mini", "gpt-3.5-turbo-instruct": "instruct"},
        api_version="2024-06-01",
        name="azure",
    )


async def test_chat_goes_to_the_deployment_url_with_api_version_and_api_key(
    server_key_provider: AzureOpenAIProvider, upstream: FakeUpstream
) -> None:
    response = await call(
        server_key_provider,
        "/v1/proxy/auto",
        chat_body(),
        authorization=f"Bearer {CALLER_KEY}",
    )
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "azure"
    [seen] = upstream.requests
    assert seen.path == "/openai/deployments/prod-4o-mini/chat/completions"
    assert seen.query == "api-version=2024-06-01"
    assert seen.headers["api-key"] == SERVER_KEY
    assert "authorization" not in seen.headers
    assert CALLER_KEY not in str(seen.header_list)


async def test_completion_models_go_to_their_deployments_completions(
    server_key_provider: AzureOpenAIProvider, upstream: FakeUpstream
) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say"}
    response = await call(server_key_provider, "/v1/proxy/auto", body)
    assert response.status_code == 200
    assert upstream.requests[0].path == "/openai/deployments/instruct/completions"


async def test_models_default_to_the_mapping_keys(
    server_key_provider: AzureOpenAIProvider, upstream: FakeUpstream
) -> None:
    response = await call(server_key_provider, "/v1/proxy/auto", chat_body(model="gpt-4o"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_found"
    assert upstream.requests == []


async def test_without_mapping_the_deployment_is_the_model_name(
    azure_endpoint: str, upstream: FakeUpstream
) -> None:
    provider = AzureOpenAIProvider(endpoint=azure_endpoint)
    response = await call(
        provider, "/v1/proxy/auto", chat_body(model="gpt-4o"), **{"x-api-key": CALLER_KEY}
    )
    assert response.status_code == 200
    seen = upstream.requests[0]
    assert seen.path == "/openai/deployments/gpt-4o/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    # Pass-through: the caller's key goes upstream in Azure's header.
    assert seen.headers["api-key"] == CALLER_KEY


@pytest.mark.parametrize("model", ["../../admin", "a/b", "x?y=1", ".hidden", "a b"])
async def test_model_names_that_are_not_deployment_names_are_refused(
    azure_endpoint: str, upstream: FakeUpstream, model: str
) -> None:
    provider = AzureOpenAIProvider(endpoint=azure_endpoint, api_key=SERVER_KEY)
    body = chat_body(model=model)
    response = await call(provider, "/v1/proxy/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert upstream.requests == []


async def test_streams_pass_through(
    server_key_provider: AzureOpenAIProvider, upstream: FakeUpstream
) -> None:
    response = await call(server_key_provider, "/v1/proxy/auto", chat_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    assert upstream.requests[0].path.endswith("/prod-4o-mini/chat/completions")


def test_bad_configuration_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        AzureOpenAIProvider(endpoint="my-resource.openai.azure.com")
    with pytest.raises(ValueError, match="not a valid name"):
        AzureOpenAIProvider(endpoint="https://r.openai.azure.com", deployments={"m": "a/b"})
    provider = AzureOpenAIProvider(endpoint="https://r.openai.azure.com", api_key=SERVER_KEY)
    assert SERVER_KEY not in repr(provider)
