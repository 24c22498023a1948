"""Everything the middleware does not serve reaches the wrapped app untouched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


class InnerApp:
    """A Starlette app with routes, its own streaming, a websocket and a lifespan."""

    def __init__(self) -> None:
        self.lifespan_events: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/", self.home),
                Route("/echo", self.echo, methods=["POST", "PUT"]),
                Route("/stream", self.stream),
                Route("/v1/proxy/autox", self.named),
                Route("/v1/proxy/auto/x", self.named, methods=["GET", "POST"]),
                Route("/v1/proxy/audio/speech", self.named, methods=["POST"]),
                Route("/v1/proxy/anthropic", self.named, methods=["POST"]),
                Route("/v1/proxy/anthropic/v1/messages/count_tokens", self.named, methods=["POST"]),
                WebSocketRoute("/ws", self.websocket),
            ],
            lifespan=self.lifespan,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[dict[str, Any]]:
        self.lifespan_events.append("startup")
        yield {"greeting": "hello from lifespan"}
        self.lifespan_events.append("shutdown")

    async def home(self, request: Request) -> Response:
        return PlainTextResponse(request.state.greeting, headers={"x-inner": "1"})

    async def echo(self, request: Request) -> Response:
        body = await request.body()
        return Response(
            body,
            status_code=201,
            media_type=request.headers.get("content-type"),
            headers={"x-method": request.method},
        )

    async def stream(self, request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"part{i};".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    async def named(self, request: Request) -> Response:
        return JSONResponse({"inner": request.url.path, "method": request.method})

    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=1000)
                return
            await websocket.send_text(f"echo:{text}")


@pytest.fixture
def inner() -> InnerApp:
    return InnerApp()


@pytest.fixture
def proxied(inner: InnerApp, upstream_url: str) -> AutoProxyMiddleware:
    provider = OpenAIProvider(base_url=upstream_url, name="fake")
    return AutoProxyMiddleware(inner.app, providers=[provider])


@pytest.fixture
async def http(proxied: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(proxied) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_plain_route_and_lifespan_state(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert response.text == "hello from lifespan"
    assert response.headers["x-inner"] == "1"
    # The proxy adds nothing to responses it does not make.
    assert "x-request-id" not in response.headers


async def test_request_body_and_methods_reach_the_inner_app(http: httpx.AsyncClient) -> None:
    raw = b'{"model": "gpt-4o", "messages": []}'
    for method in ("POST", "PUT"):
        response = await http.request(
            method, "/echo", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 201
        assert response.content == raw
        assert response.headers["x-method"] == method


async def test_unknown_paths_get_the_inner_apps_404(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    for path in ("/nowhere", "/v1/proxy", "/v1/proxy/", "/v1/proxy/auto/", "/v1/proxy/chat"):
        response = await http.post(path, json=chat_body(), headers=AUTH)
        assert response.status_code == 404, path
        assert response.text == "Not Found"
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/proxy/autox",
        "/v1/proxy/auto/x",
        "/v1/proxy/audio/speech",  # an OpenAI route the proxy does not serve
        "/v1/proxy/anthropic/v1/messages/count_tokens",
        "/v1/proxy/anthropic",
    ],
)
async def test_near_miss_paths_go_to_the_inner_app(
    http: httpx.AsyncClient, upstream: FakeUpstream, path: str
) -> None:
    method = "GET" if path.endswith("autox") else "POST"
    response = await http.request(method, path, json=chat_body(), headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"inner": path, "method": method}
    assert upstream.calls == 0


async def test_proxy_route_still_served_next_to_the_inner_app(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    response = await http.post("/v1/proxy/auto", json=chat_body(), headers=AUTH)
    assert response.status_code == 200
    assert upstream.requests[0].path == "/v1/chat/completions"


async def test_inner_streaming_response_is_not_buffered(proxied: AutoProxyMiddleware) -> None:
    """Each chunk the inner app sends leaves the middleware as its own message, unchanged."""
    direct = await _collect(proxied.app, "/stream")
    through = await _collect(proxied, "/stream")
    assert through == direct
    bodies = [m["body"] for m in through if m["type"] == "http.response.body" and m["body"]]
    assert bodies == [b"part0;", b"part1;", b"part2;"]


async def _collect(app: Any, path: str) -> list[dict[str, Any]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {"greeting": "unused"},
    }
    messages: list[dict[str, Any]] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(dict(message))

    with anyio.fail_after(5):
        await app(scope, receive, send)
    return messages


def test_websocket_passes_through(proxied: AutoProxyMiddleware) -> None:
    with TestClient(proxied) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("one")
        assert ws.receive_text() == "echo:one"
        ws.send_text("two")
        assert ws.receive_text() == "echo:two"
        ws.send_text("bye")
        closed = ws.receive()
    assert closed == {"type": "websocket.close", "code": 1000, "reason": ""}


def test_websocket_on_a_proxy_path_goes_to_the_inner_app(proxied: AutoProxyMiddleware) -> None:
    """The proxy serves only HTTP; a websocket on its path is the inner app's to refuse."""
    from starlette.websockets import WebSocketDisconnect

    with (
        TestClient(proxied) as client,
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/v1/proxy/auto"),
    ):
        pass


async def test_lifespan_startup_and_shutdown_reach_the_inner_app(
    inner: InnerApp, proxied: AutoProxyMiddleware
) -> None:
    async with LifespanManager(proxied):
        assert inner.lifespan_events == ["startup"]
    assert inner.lifespan_events == ["startup", "shutdown"]


async def test_lifespan_startup_failure_is_reported(upstream_url: str) -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("database is down")
        yield

    app = AutoProxyMiddleware(
        Starlette(lifespan=broken), providers=[OpenAIProvider(base_url=upstream_url)]
    )
    with pytest.raises(RuntimeError, match="database is down"):
        async with LifespanManager(app):
            pass


# -- under a mount or root_path -------------------------------------------------------


@pytest.fixture
async def mounted(inner: InnerApp, upstream_url: str) -> AsyncIterator[Starlette]:
    provider = OpenAIProvider(base_url=upstream_url, name="fake")
    proxy = AutoProxyMiddleware(inner.app, providers=[provider])
    yield Starlette(
        routes=[
            Mount("/api", app=proxy),
            Route("/", lambda request: PlainTextResponse("outer")),
        ]
    )
    # Starlette sends no lifespan into a mount, so nothing closed the client yet.
    await proxy.aclose()


async def test_mounted_middleware_serves_under_the_mount(
    mounted: Starlette, upstream: FakeUpstream
) -> None:
    transport = httpx.ASGITransport(app=mounted)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
        auto = await http.post("/api/v1/proxy/auto", json=chat_body())
        models = await http.get("/api/v1/proxy/models")
        unmounted = await http.post("/v1/proxy/auto", json=chat_body())
        inner_route = await http.get("/api/v1/proxy/autox")
        outer = await http.get("/")
    assert auto.status_code == 200
    assert auto.json()["object"] == "chat.completion"
    assert models.status_code == 200 and models.json()["object"] == "list"
    assert unmounted.status_code == 404
    assert inner_route.json() == {"inner": "/api/v1/proxy/autox", "method": "GET"}
    assert outer.text == "outer"
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"]


async def test_root_path_from_the_server_is_honoured(
    proxied: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    transport = httpx.ASGITransport(app=proxied, root_path="/gateway")
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
        served = await http.post("/gateway/v1/proxy/auto", json=chat_body())
        wrong_method = await http.get("/gateway/v1/proxy/auto")
        near_miss = await http.post("/gateway/v1/proxy/autox", json=chat_body())
    assert served.status_code == 200
    assert wrong_method.status_code == 405
    assert near_miss.status_code == 405  # the inner app's GET-only route, not the proxy
    assert near_miss.headers["content-type"].startswith("text/plain")
    assert upstream.calls == 1
    await proxied.aclose()


def test_custom_path_moves_the_sibling_routes(upstream_url: str, upstream: FakeUpstream) -> None:
    inner = InnerApp()
    app = AutoProxyMiddleware(
        inner.app, providers=[OpenAIProvider(base_url=upstream_url)], path="/llm/auto"
    )
    with TestClient(app, headers=AUTH) as client:
        auto = client.post("/llm/auto", json=chat_body())
        chat = client.post("/llm/chat/completions", json=chat_body())
        default = client.post("/v1/proxy/auto", json=chat_body())
    assert auto.status_code == 200 and chat.status_code == 200
    assert default.status_code == 404
    assert upstream.calls == 2


def test_sibling_routes_can_be_turned_off(upstream_url: str, upstream: FakeUpstream) -> None:
    inner = InnerApp()
    app = AutoProxyMiddleware(
        inner.app, providers=[OpenAIProvider(base_url=upstream_url)], sibling_routes=False
    )
    with TestClient(app, headers=AUTH) as client:
        auto = client.post("/v1/proxy/auto", json=chat_body())
        chat = client.post("/v1/proxy/chat/completions", json=chat_body())
        models = client.get("/v1/proxy/models")
    assert auto.status_code == 200
    assert chat.status_code == 404 and models.status_code == 404
    assert upstream.calls == 1
