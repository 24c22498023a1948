"""Built-in CORS (``cors_origins=``): preflights and answer headers on the proxy's routes
only, streams included; the host app's routes keep their own policy."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

pytestmark = pytest.mark.anyio

PAGE = "https://app.example.com"
AUTO = "/v1/proxy/auto"


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def preflight_headers(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    sent = {"origin": origin, "access-control-request-method": method}
    if headers:
        sent["access-control-request-headers"] = headers
    return sent


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def test_preflight_from_an_allowed_origin(make_proxy: MakeProxy) -> None:
    app = make_proxy(cors_origins=[PAGE])
    async with http(app) as client:
        response = await client.options(
            AUTO,
            headers=preflight_headers(PAGE, headers="Authorization, content-type, x-bt-use-cache"),
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-methods"] == "POST"
    allowed = response.headers["access-control-allow-headers"]
    assert set(allowed.split(", ")) == {"authorization", "content-type", "x-bt-use-cache"}
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


async def test_preflight_for_models_asks_for_get(make_proxy: MakeProxy) -> None:
    app = make_proxy(cors_origins=[PAGE])
    async with http(app) as client:
        ok = await client.options("/v1/proxy/models", headers=preflight_headers(PAGE, "GET"))
        wrong = await client.options("/v1/proxy/models", headers=preflight_headers(PAGE, "POST"))
    assert ok.status_code == 200 and ok.headers["access-control-allow-methods"] == "GET"
    assert wrong.status_code == 405 and not cors_headers(wrong)


@pytest.mark.parametrize(
    ("origin", "headers", "status"),
    [
        ("https://evil.example.com", "", 403),
        ("https://app.example.com.evil.com", "", 403),
        ("http://app.example.com", "", 403),  # another scheme is another origin
        ("null", "", 403),
        (PAGE, "authorization, x-custom-thing", 400),
        (PAGE, "cookie", 400),
    ],
)
async def test_refused_preflights_carry_no_cors_headers(
    make_proxy: MakeProxy, upstream: FakeUpstream, origin: str, headers: str, status: int
) -> None:
    app = make_proxy(cors_origins=[PAGE])
    async with http(app) as client:
        response = await client.options(AUTO, headers=preflight_headers(origin, headers=headers))
    assert response.status_code == status
    assert not cors_headers(response)
    assert response.json()["error"]["code"] == "cors_refused"
    assert "x-custom-thing" not in response.text  # the page's header names are not echoed
    assert upstream.calls == 0


async def test_answers_carry_cors_headers_and_expose_the_proxy_headers(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(cors_origins=[PAGE])
    headers = {"origin": PAGE, "authorization": f"Bearer {CALLER_KEY}"}
    async with http(app) as client:
        whole = await client.post(AUTO, json=chat_body(temperature=0), headers=headers)
        hit = await client.post(AUTO, json=chat_body(temperature=0), headers=headers)
        error = await client.post(AUTO, content=b"{", headers=headers)
        models = await client.get("/v1/proxy/models", headers=headers)
    for response in (whole, hit, error, models):
        assert response.headers["access-control-allow-origin"] == PAGE
        exposed = response.headers["access-control-expose-headers"].split(", ")
        assert {"x-bt-cached", "x-request-id", "x-bt-used-endpoint"} <= set(exposed)
        assert response.headers["vary"] == "Origin"
    assert hit.headers["x-bt-cached"] == "HIT"
    assert error.status_code == 400


async def test_streams_carry_cors_headers_over_a_real_socket(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(cors_origins=[re.compile(r"https://[a-z]+\.example\.com")])
    headers = {"origin": PAGE, "authorization": f"Bearer {CALLER_KEY}"}
    with serve(app, lifespan="on") as server:  # its shutdown closes the client it made
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = chat_body(stream=True, fake={"chunks": 4, "delay": 0.01})
            async with client.stream("POST", AUTO, json=body, headers=headers) as response:
                assert response.headers["access-control-allow-origin"] == PAGE
                assert "x-bt-used-endpoint" in response.headers["access-control-expose-headers"]
                assert response.headers["content-type"].startswith("text/event-stream")
                text = (await response.aread()).decode()
    assert text.count("data: ") == 5 and text.endswith("data: [DONE]\n\n")


async def test_a_disallowed_origin_gets_the_answer_without_cors_headers(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """Served (a script outside a browser can send any Origin), but without the headers
    a browser needs to hand it to the page."""
    app = make_proxy(cors_origins=[PAGE])
    headers = {"origin": "https://evil.example.com", "authorization": f"Bearer {CALLER_KEY}"}
    async with http(app) as client:
        response = await client.post(AUTO, json=chat_body(), headers=headers)
    assert response.status_code == 200
    assert not cors_headers(response)


async def test_star_and_credentials(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    star = make_proxy(cors_origins=["*"])
    named = make_proxy(cors_origins=[PAGE], cors_allow_credentials=True)
    headers = {"origin": PAGE, "authorization": f"Bearer {CALLER_KEY}"}
    async with http(star) as client:
        response = await client.post(AUTO, json=chat_body(), headers=headers)
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    async with http(named) as client:
        response = await client.post(AUTO, json=chat_body(), headers=headers)
        pre = await client.options(AUTO, headers=preflight_headers(PAGE))
    for answer in (response, pre):
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert answer.headers["access-control-allow-credentials"] == "true"


def test_start_up_refusals(upstream_url: str) -> None:
    def make(**kwargs: Any) -> None:
        AutoProxyMiddleware(
            Starlette(), providers=[OpenAIProvider(base_url=upstream_url)], **kwargs
        )

    with pytest.raises(ValueError, match="browsers ignore '\\*' on credentialed"):
        make(cors_origins=["*"], cors_allow_credentials=True)
    for bad in ("https://app.example.com/", "app.example.com", "https://app.example.com/x", ""):
        with pytest.raises(ValueError, match="is not an origin"):
            make(cors_origins=[bad])
    with pytest.raises(TypeError, match="list of origins"):
        make(cors_origins=PAGE)
    with pytest.raises(ValueError, match="empty"):
        make(cors_origins=[])


async def test_off_by_default_options_is_405(make_proxy: MakeProxy) -> None:
    app = make_proxy()
    async with http(app) as client:
        response = await client.options(AUTO, headers=preflight_headers(PAGE))
        post = await client.post(
            AUTO,
            json=chat_body(),
            headers={"origin": PAGE, "authorization": f"Bearer {CALLER_KEY}"},
        )
    assert response.status_code == 405
    assert not cors_headers(response) and not cors_headers(post)


def host_app() -> Starlette:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("host app")

    return Starlette(
        routes=[Route("/", home, methods=["GET", "POST"])],
        middleware=[
            Middleware(CORSMiddleware, allow_origins=["https://other.example.com"]),
        ],
    )


async def test_host_app_routes_keep_their_own_policy(make_proxy: MakeProxy) -> None:
    """The proxy's origins say nothing about the app's routes, and the app's CORS
    middleware (inside the proxy) says nothing about the proxy's."""
    app = make_proxy(app=host_app(), cors_origins=[PAGE])
    async with http(app) as client:
        ours = await client.options("/", headers=preflight_headers(PAGE))
        theirs = await client.options("/", headers=preflight_headers("https://other.example.com"))
        get = await client.get("/", headers={"origin": PAGE})
        proxy_for_theirs = await client.options(
            AUTO, headers=preflight_headers("https://other.example.com")
        )
    assert ours.status_code == 400  # Starlette's CORSMiddleware refusing PAGE
    assert "access-control-allow-origin" not in ours.headers
    assert theirs.headers["access-control-allow-origin"] == "https://other.example.com"
    assert get.text == "host app" and "access-control-allow-origin" not in get.headers
    assert proxy_for_theirs.status_code == 403


async def test_app_cors_middleware_wrapped_outside_also_works(
    upstream_url: str, upstream: FakeUpstream
) -> None:
    """The other ordering the README describes: Starlette's CORSMiddleware outside the
    proxy answers the proxy's preflights too, and exposes what it is told to."""
    proxy = AutoProxyMiddleware(
        Starlette(), providers=[OpenAIProvider(base_url=upstream_url)], timeout=5
    )
    outside = CORSMiddleware(
        proxy,
        allow_origins=[PAGE],
        allow_headers=["authorization", "content-type"],
        allow_methods=["POST"],
        expose_headers=["x-bt-cached", "x-request-id", "x-bt-used-endpoint"],
    )
    try:
        async with http(outside) as client:
            pre = await client.options(
                AUTO, headers=preflight_headers(PAGE, headers="authorization, content-type")
            )
            answer = await client.post(
                AUTO,
                json=chat_body(),
                headers={"origin": PAGE, "authorization": f"Bearer {CALLER_KEY}"},
            )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == PAGE
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert "x-bt-cached" in answer.headers["access-control-expose-headers"]
    finally:
        await proxy.aclose()
