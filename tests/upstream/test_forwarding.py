"""What reaches the upstream, and what comes back, for non-streaming calls."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


async def test_auto_routes_chat_model_to_chat_completions(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    response = await client.post("/v1/proxy/auto", json=chat_body("hi there"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo #1: hi there"
    [seen] = upstream.requests
    assert seen.method == "POST"
    assert seen.path == "/v1/chat/completions"


@pytest.mark.parametrize("model", ["gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"])
async def test_auto_routes_completion_models_to_completions(
    client: httpx.AsyncClient, upstream: FakeUpstream, model: str
) -> None:
    response = await client.post("/v1/proxy/auto", json={"model": model, "prompt": "Say"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "echo #1: Say"
    assert upstream.requests[0].path == "/v1/completions"


async def test_body_goes_upstream_byte_for_byte(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    raw = (
        b'{ "model": "gpt-4o",  "messages": [{"role": "user", "content": "x"}],'
        b' "vendor_flag": {"keep": [1, 2.50, null]}, "top_k": 3 }'
    )
    response = await client.post(
        "/v1/proxy/auto", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream.requests[0].body == raw


async def test_pass_through_forwards_caller_key(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    await client.post("/v1/proxy/auto", json=chat_body())
    seen = upstream.requests[0]
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert seen.headers["content-type"] == "application/json"


async def test_server_key_replaces_caller_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "alice"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post(
            "/v1/proxy/auto",
            json=chat_body(),
            headers={"authorization": f"Bearer {CALLER_KEY}", "cookie": "session=1"},
        )
    assert response.status_code == 200
    seen = upstream.requests[0]
    assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert CALLER_KEY not in json.dumps(seen.header_list)
    assert "cookie" not in seen.headers
    await app.aclose()


async def test_x_api_key_is_accepted_as_caller_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post(
            "/v1/proxy/auto", json=chat_body(), headers={"x-api-key": CALLER_KEY}
        )
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {CALLER_KEY}"
    await app.aclose()


async def test_useful_upstream_headers_pass_and_others_do_not(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    response = await client.post("/v1/proxy/auto", json=chat_body())
    headers = response.headers
    assert headers["x-upstream-request-id"] == "req_1"
    assert headers["openai-processing-ms"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(response.content)
    for hidden in ("set-cookie", "openai-organization", "server", "transfer-encoding"):
        assert hidden not in headers
    # The proxy's own request id, distinct from the upstream's.
    assert len(headers["x-request-id"]) == 32
    assert upstream.requests[0].headers["x-request-id"] == headers["x-request-id"]


async def test_caller_request_id_is_kept(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await client.post(
        "/v1/proxy/auto", json=chat_body(), headers={"x-request-id": "trace-42"}
    )
    assert response.headers["x-request-id"] == "trace-42"
    assert upstream.requests[0].headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_upstream_error_status_and_body_come_back(
    client: httpx.AsyncClient, upstream: FakeUpstream, status: int
) -> None:
    response = await client.post("/v1/proxy/auto", json=chat_body(fake={"status": status}))
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"upstream says {status}"


async def test_upstream_error_without_json_is_wrapped(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = chat_body(fake={"status": 502, "body": "<html>bad gateway</html>"})
    response = await client.post("/v1/proxy/auto", json=body)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "'fake'" in error["message"]
    assert error["code"] == "upstream_502"


async def test_unreachable_upstream_is_502_naming_provider(make_proxy: MakeProxy) -> None:
    from asgi_autoproxy import OpenAIProvider

    provider = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key=SERVER_KEY, name="dead")
    app = make_proxy(providers=[provider], allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 502
    assert "'dead'" in response.json()["error"]["message"]
    assert SERVER_KEY not in response.text
    await app.aclose()


async def test_slow_upstream_is_504(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(timeout=0.2)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post(
            "/v1/proxy/auto",
            json=chat_body(fake={"sleep": 1.0}),
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    await app.aclose()


async def test_sibling_routes_fix_the_endpoint(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    chat = await client.post("/v1/proxy/chat/completions", json=chat_body())
    completion = await client.post(
        "/v1/proxy/completions", json={"model": "my-local-model", "prompt": "p"}
    )
    assert chat.status_code == 200 and completion.status_code == 200
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions", "/v1/completions"]


async def test_models_route_lists_catalog_models(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/proxy/models")
    assert response.status_code == 200
    body = response.json()
    ids = {m["id"] for m in body["data"]}
    assert body["object"] == "list"
    # Every flavour the catalog knows, by exact name: chat, completion, responses, embedding.
    assert {"gpt-4o", "gpt-3.5-turbo-instruct", "davinci-002", "o3-pro"} <= ids
    assert {"text-embedding-3-small", "mistral-embed"} <= ids
    assert not any("*" in i for i in ids)


def test_default_provider_name_never_shows_url_credentials() -> None:
    from asgi_autoproxy import OpenAIProvider

    provider = OpenAIProvider(base_url="https://user:hunter2@llm.example:8443/v1")
    assert provider.name == "llm.example:8443"
    assert "hunter2" not in repr(provider)


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
def test_built_in_providers_hide_keys_and_offer_them_for_scrubbing(kind: str) -> None:
    from asgi_autoproxy import AnthropicProvider, AzureOpenAIProvider, OpenAIProvider

    url = "https://user:hunter2@llm.example"
    provider = {
        "openai": lambda: OpenAIProvider(base_url=url, api_key=SERVER_KEY),
        "azure": lambda: AzureOpenAIProvider(endpoint=url, api_key=SERVER_KEY),
        "anthropic": lambda: AnthropicProvider(base_url=url, api_key=SERVER_KEY),
    }[kind]()
    assert provider.name == "llm.example"
    assert SERVER_KEY not in repr(provider) and "hunter2" not in repr(provider)
    assert provider.secrets == (SERVER_KEY,)
    assert not provider.needs_caller_credential
