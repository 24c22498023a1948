"""The built-in providers' direct lane: what the upstream and the caller see must not
depend on whether a request went through it or through httpx's whole client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from asgi_autoproxy._http.clients import default_client_factory, direct_lane
from asgi_autoproxy._http.transport import AiohttpTransport
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import gzip_json_app, serve

pytestmark = pytest.mark.anyio
TRANSPORTS = ["aiohttp", "httpx"]


def caller(app: AutoProxyMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    )


def proxy_to(base_url: str, transport: Any) -> AutoProxyMiddleware:
    """A proxy without a cache whose proxied routes never reach the inner app."""
    return AutoProxyMiddleware(
        _never_called,
        providers=[OpenAIProvider(base_url=base_url)],
        http_transport=transport,
        cache=None,
    )


def test_only_clients_the_middleware_made_on_aiohttp_have_a_lane() -> None:
    timeout = httpx.Timeout(5.0)
    assert direct_lane(default_client_factory(timeout, "aiohttp")()) is not None
    assert direct_lane(default_client_factory(timeout, "httpx")()) is None
    injected = httpx.AsyncClient(transport=AiohttpTransport())
    assert direct_lane(injected) is None


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_sees_the_same_request_either_way(
    make_proxy: MakeProxy, upstream: FakeUpstream, stream: bool
) -> None:
    seen: dict[str, tuple[list[tuple[str, str]], bytes]] = {}
    for choice in TRANSPORTS:
        app = make_proxy(http_transport=choice)
        async with caller(app) as http:
            response = await http.post(
                "/v1/proxy/auto",
                json=chat_body("same", stream=stream),
                headers={"x-request-id": "fixed-id"},
            )
        assert response.status_code == 200
        request = upstream.requests[-1]
        seen[choice] = (sorted(request.header_list), request.body)
    assert seen["aiohttp"] == seen["httpx"]
    headers = dict(seen["aiohttp"][0])
    assert headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert headers["user-agent"].startswith("python-httpx/")


@pytest.mark.parametrize("choice", TRANSPORTS)
async def test_caller_sees_the_same_answer_either_way(
    make_proxy: MakeProxy, upstream: FakeUpstream, choice: str
) -> None:
    app = make_proxy(http_transport=choice, cache=None)
    async with caller(app) as http:
        whole = await http.post("/v1/proxy/auto", json=chat_body("hi"))
        streamed = await http.post("/v1/proxy/auto", json=chat_body(stream=True))
    assert whole.json()["choices"][0]["message"]["content"] == "echo #1: hi"
    assert whole.headers["x-upstream-request-id"] == "req_1"
    assert "set-cookie" not in whole.headers
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.count("data: ") == 4
    assert streamed.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("choice", TRANSPORTS)
async def test_compressed_answers_reach_the_caller_decoded(choice: str) -> None:
    answer = b'{"id": "c1", "object": "chat.completion", "choices": []}'
    with serve(gzip_json_app(answer)) as server:
        app = proxy_to(server.url, choice)
        async with caller(app) as http:
            response = await http.post("/v1/proxy/auto", json=chat_body())
        await app.aclose()
    assert response.status_code == 200
    assert response.json() == {"id": "c1", "object": "chat.completion", "choices": []}
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize("choice", TRANSPORTS)
async def test_the_clients_timeout_bounds_the_lane_too(
    make_proxy: MakeProxy, upstream: FakeUpstream, choice: str
) -> None:
    app = make_proxy(http_transport=choice, timeout=0.3, cache=None)
    async with caller(app) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body(fake={"sleep": 2}))
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("choice", TRANSPORTS)
async def test_unreachable_upstream_is_a_502_either_way(choice: str) -> None:
    app = proxy_to("http://127.0.0.1:9/v1", choice)
    async with caller(app) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body())
    await app.aclose()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"


async def test_an_injected_client_keeps_its_own_behaviour(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """No lane for injected clients: their hooks and headers apply to every request."""
    hooked: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        hooked.append(request.url.path)

    injected = httpx.AsyncClient(
        transport=AiohttpTransport(),
        headers={"x-team": "evals"},
        event_hooks={"request": [on_request]},
    )
    app = make_proxy(http_client=injected, cache=None)
    async with caller(app) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body())
    await injected.aclose()
    assert response.status_code == 200
    assert hooked == ["/v1/chat/completions"]
    assert upstream.requests[-1].headers["x-team"] == "evals"


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the proxy route must not reach the inner app")
