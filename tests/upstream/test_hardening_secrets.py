"""Hardening: keys stay out of what the caller, the cache and the logs get.

- a provider key an upstream echoes in a passed header is scrubbed, live and on replay;
- a value the caller sent in a header (a pasted key) is never echoed back or logged;
- a key that is not printable ASCII is a 401, not a 500, on every route and transport;
- in pass-through mode every route, ``/models`` included, asks for the caller's key;
- an upstream error without an OpenAI body names what was called, never a key or query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import (
    AnthropicProvider,
    AutoProxyMiddleware,
    AzureOpenAIProvider,
    OpenAIProvider,
)
from asgi_autoproxy import _json as fast_json
from asgi_autoproxy.providers.base import Endpoint, UpstreamRequest, UpstreamResponse
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.faults import empty_chat_answer
from tests.servers import ServerThread, read_request, serve

pytestmark = pytest.mark.anyio

PASTED = "sk-live-PASTED-SECRET"
ROUTES = [
    ("POST", "/v1/proxy/auto"),
    ("POST", "/v1/proxy/chat/completions"),
    ("POST", "/v1/proxy/completions"),
    ("GET", "/v1/proxy/models"),
]


def asgi_client(app: Any, headers: Any = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers, timeout=30
    )


def route_body(path: str, **extra: Any) -> dict[str, Any]:
    if path.endswith("/proxy/completions"):
        return {"model": "gpt-3.5-turbo-instruct", "prompt": "p", **extra}
    return chat_body(**extra)


async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if method == "GET":
        return await client.get(path, **kwargs)
    return await client.post(path, json=route_body(path), **kwargs)


def everything_sent(response: httpx.Response) -> str:
    return response.text + repr(response.headers.raw)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Log messages and every field a handler could print (``extra=``, arguments)."""
    return caplog.text + "".join(
        record.getMessage() + repr(record.args) + repr(vars(record)) for record in caplog.records
    )


# -- 7. a provider key echoed in a passed header -------------------------------------------


class EchoingUpstream:
    """An OpenAI-compatible upstream that echoes the bearer key it got in the headers it
    answers with: its request id, ``request-id``, ``openai-model`` and a rate-limit count.
    ``delay`` holds each answer back, so identical requests meet in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, headers = await read_request(scope, receive)
        self.calls += 1
        key = dict(headers).get("authorization", "").removeprefix("Bearer ")
        echoed = [
            (b"x-request-id", f"req-for-{key}".encode()),
            (b"request-id", key.encode()),
            (b"openai-model", key.encode()),
            (b"x-ratelimit-remaining-requests", key.encode()),
        ]
        if self.delay:
            await anyio.sleep(self.delay)
        payload = json.loads(body)
        message = {"role": "assistant", "content": "hi"}
        if payload.get("stream"):
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": payload["model"],
                "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}],
            }
            answer = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
            kind = b"text/event-stream"
        else:
            whole = {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": payload["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
            answer, kind = json.dumps(whole).encode(), b"application/json"
        start = [(b"content-type", kind), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": start + echoed})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def echoing() -> Iterator[tuple[EchoingUpstream, str]]:
    app = EchoingUpstream()
    with serve(app) as server:
        yield app, server.url + "/v1"


def keyed_proxy(make_proxy: MakeProxy, url: str, **kwargs: Any) -> AutoProxyMiddleware:
    provider = OpenAIProvider(base_url=url, api_key=SERVER_KEY, name="paid")
    return make_proxy(providers=[provider], api_keys={CALLER_KEY: "alice"}, **kwargs)


def assert_scrubbed(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert SERVER_KEY not in everything_sent(response)
    # The headers still come, with the key replaced: the caller keeps its request id.
    assert "req-for-[redacted]" in response.headers["x-upstream-request-id"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_key_echoed_in_passed_headers_is_scrubbed_live_and_on_replay(
    make_proxy: MakeProxy, echoing: tuple[EchoingUpstream, str], stream: bool
) -> None:
    upstream, url = echoing
    before = upstream.calls
    app = keyed_proxy(make_proxy, url)
    body = chat_body(temperature=0, stream=stream)
    async with asgi_client(app, {"authorization": f"Bearer {CALLER_KEY}"}) as client:
        live = await client.post("/v1/proxy/auto", json=body)
        replayed = await client.post("/v1/proxy/auto", json=body)
    assert (live.headers["x-bt-cached"], replayed.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert upstream.calls - before == 1
    assert live.headers["x-ratelimit-remaining-requests"] == "[redacted]"
    assert_scrubbed(live)
    assert_scrubbed(replayed)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_coalesced_followers_get_scrubbed_headers(
    make_proxy: MakeProxy, echoing: tuple[EchoingUpstream, str], stream: bool
) -> None:
    upstream, url = echoing
    upstream.delay = 0.5
    before = upstream.calls
    app = keyed_proxy(make_proxy, url)
    body = chat_body(temperature=0, stream=stream, content="coalesced")
    responses: list[httpx.Response] = []
    try:
        async with asgi_client(app, {"authorization": f"Bearer {CALLER_KEY}"}) as client:

            async def one() -> None:
                responses.append(await client.post("/v1/proxy/auto", json=body))

            async with anyio.create_task_group() as group:
                group.start_soon(one)
                group.start_soon(one)
    finally:
        upstream.delay = 0.0
    assert upstream.calls - before == 1
    assert sorted(r.headers["x-bt-cached"] for r in responses) == ["HIT", "MISS"]
    for response in responses:
        assert_scrubbed(response)


class HeaderEchoingProvider:
    """A custom provider: answers from bytes, with its key in a header it sets."""

    name = "custom"
    models = ("*",)
    endpoints: frozenset[Endpoint] = frozenset({"chat", "completion"})
    needs_caller_credential = False
    secrets = (SERVER_KEY,)

    def serves(self, model: str) -> bool:
        return True

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        headers = [("x-request-id", f"req-for-{SERVER_KEY}")]
        return empty_chat_answer(request.stream, headers)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_custom_providers_headers_are_scrubbed_too(
    make_proxy: MakeProxy, stream: bool
) -> None:
    app = make_proxy(providers=[HeaderEchoingProvider()], api_keys={CALLER_KEY: "alice"})
    body = chat_body(temperature=0, stream=stream)
    async with asgi_client(app, {"authorization": f"Bearer {CALLER_KEY}"}) as client:
        live = await client.post("/v1/proxy/auto", json=body)
        replayed = await client.post("/v1/proxy/auto", json=body)
    assert replayed.headers["x-bt-cached"] == "HIT"
    for response in (live, replayed):
        assert response.status_code == 200
        assert SERVER_KEY not in everything_sent(response)


class BytesBackend:
    """A cache backend that keeps bytes, as Redis does."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


def as_written_before_scrubbing(entry: bytes, secret: str) -> bytes:
    """``entry`` as an older version would have stored it: no scrub mark, and the
    upstream's echoed key still in its header values."""
    size = int.from_bytes(entry[:4], "big")
    header = json.loads(entry[4 : 4 + size])
    header.pop("r", None)
    header["h"] = [[k, v.replace("[redacted]", secret)] for k, v in header["h"]]
    assert any(secret in v for _, v in header["h"])
    encoded = fast_json.dumps(header)
    return len(encoded).to_bytes(4, "big") + encoded + entry[4 + size :]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_entries_stored_before_header_scrubbing_are_scrubbed_on_replay(
    make_proxy: MakeProxy, echoing: tuple[EchoingUpstream, str], stream: bool
) -> None:
    _, url = echoing
    backend = BytesBackend()
    app = keyed_proxy(make_proxy, url, cache=backend)
    body = chat_body(temperature=0, stream=stream, content="old entry")
    async with asgi_client(app, {"authorization": f"Bearer {CALLER_KEY}"}) as client:
        await client.post("/v1/proxy/auto", json=body)
        [(key, entry)] = backend.data.items()
        backend.data[key] = as_written_before_scrubbing(entry, SERVER_KEY)
        replayed = await client.post("/v1/proxy/auto", json=body)
    assert replayed.headers["x-bt-cached"] == "HIT"
    assert_scrubbed(replayed)


# -- 8. a header value echoed back -----------------------------------------------------------

# header -> (the value the caller pastes, the status the proxy answers)
PASTED_HEADERS: dict[str, tuple[str, int]] = {
    "x-bt-endpoint-name": (PASTED, 400),
    "x-request-id": (PASTED, 200),
    "x-bt-use-cache": (PASTED, 400),
    "x-bt-cache-ttl": (PASTED, 400),
    "cache-control": (f"max-age={PASTED}, {PASTED}", 200),
    "authorization": (f"Bearer {PASTED}", 401),
    "x-api-key": (PASTED, 401),
}


@pytest.mark.parametrize("header", list(PASTED_HEADERS))
async def test_a_key_pasted_into_a_header_is_never_echoed_or_logged(
    make_proxy: MakeProxy,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    header: str,
) -> None:
    value, status = PASTED_HEADERS[header]
    caplog.set_level(logging.DEBUG)
    app = make_proxy(provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "alice"})
    # The pasted value replaces the caller's own key where it is a credential header.
    headers = (
        {}
        if header in ("authorization", "x-api-key")
        else {"authorization": f"Bearer {CALLER_KEY}"}
    )
    headers[header] = value
    async with asgi_client(app, headers) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body(temperature=0))
    assert response.status_code == status
    assert PASTED not in everything_sent(response)
    assert PASTED not in logged(caplog)
    for seen in upstream.requests:  # a request id goes upstream too
        assert PASTED not in repr(seen.header_list)


async def test_a_request_id_that_is_the_callers_own_key_is_replaced(
    make_proxy: MakeProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "team-key-without-a-known-prefix-42"
    app = make_proxy()  # pass-through: the key goes upstream, and nowhere else
    headers = {"authorization": f"Bearer {key}", "x-request-id": key}
    async with asgi_client(app, headers) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 200
    assert key not in everything_sent(response) and key not in logged(caplog)
    assert upstream.requests[0].headers["x-request-id"] == response.headers["x-request-id"]


async def test_an_unknown_endpoint_name_lists_the_configured_ones(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    headers = {"authorization": f"Bearer {CALLER_KEY}", "x-bt-endpoint-name": PASTED}
    async with asgi_client(app, headers) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (400, "unknown_endpoint_name")
    assert "x-bt-endpoint-name" in error["message"] and "'fake'" in error["message"]
    assert upstream.calls == 0


# -- 9. a key that is not printable ASCII ----------------------------------------------------


@pytest.fixture(scope="module", params=["httpx", "aiohttp"])
def passthrough_server(
    request: pytest.FixtureRequest, _upstream_server: tuple[FakeUpstream, ServerThread]
) -> Iterator[ServerThread]:
    """The proxy in pass-through mode under a real uvicorn, on the given transport."""
    upstream_url = _upstream_server[1].url + "/v1"
    app = AutoProxyMiddleware(
        inner_app(),
        providers=[OpenAIProvider(base_url=upstream_url, name="fake")],
        http_transport=request.param,
    )
    with serve(app, lifespan="on") as server:
        yield server


@pytest.fixture
async def real_http(passthrough_server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=passthrough_server.url, timeout=30) as client:
        yield client


NON_ASCII_KEYS = {"latin-1": "sk-é".encode("latin-1"), "utf-8": "sk-é".encode()}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("encoding", list(NON_ASCII_KEYS))
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_a_non_ascii_key_is_a_401_in_openai_shape(
    real_http: httpx.AsyncClient,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    encoding: str,
    header: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = NON_ASCII_KEYS[encoding]
    value = b"Bearer " + raw if header == "authorization" else raw
    response = await call(real_http, method, path, headers=[(header.encode(), value)])
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert "ASCII" in error["message"]
    assert raw not in response.content and raw.decode("latin-1") not in response.text
    assert "Traceback" not in caplog.text
    assert upstream.calls == 0


# -- 10. /models without a key in pass-through mode -----------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_asks_for_the_key_a_provider_forwards(
    real_http: httpx.AsyncClient, upstream: FakeUpstream, method: str, path: str
) -> None:
    without = await call(real_http, method, path)
    with_key = await call(
        real_http, method, path, headers={"authorization": f"Bearer {CALLER_KEY}"}
    )
    assert (without.status_code, with_key.status_code) == (401, 200)
    error = without.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert without.headers["www-authenticate"] == "Bearer"


# -- 19. an upstream error that does not say what was called --------------------------------


class NotFoundUpstream:
    """Answers every request with a plain-text 404, as a server does for a wrong path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        self.seen.append((scope["path"], scope["query_string"].decode()))
        body = b"404 page not found"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"18")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def not_found() -> Iterator[tuple[NotFoundUpstream, str]]:
    app = NotFoundUpstream()
    with serve(app) as server:
        yield app, server.url


class GeminiLikeProvider:
    """A custom provider that carries its key in the query string, through httpx."""

    name = "gemini-like"
    models = ("*",)
    endpoints: frozenset[Endpoint] = frozenset({"chat"})
    needs_caller_credential = False
    secrets = (SERVER_KEY,)

    def __init__(self, base: str) -> None:
        self.base = base

    def serves(self, model: str) -> bool:
        return True

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        url = f"{self.base}/v1beta/models/{request.model}:generate"
        upstream = client.build_request("POST", url, params={"key": SERVER_KEY}, content=b"{}")
        return UpstreamResponse.from_httpx(await client.send(upstream, stream=True))


QUERY_SECRET = "sk-query-secret-0123456789"


def providers_for(base: str) -> dict[str, tuple[Any, str]]:
    """Provider -> the call its 404 message must name."""
    host = base.removeprefix("http://")
    return {
        "openai-no-v1": (
            OpenAIProvider(base_url=f"{base}/nope", name="openai"),
            f"{base}/nope/chat/completions",
        ),
        "openai-query": (
            OpenAIProvider(base_url=f"{base}/nope?api-key={QUERY_SECRET}", name="openai"),
            f"{base}/nope",
        ),
        "openai-userinfo-and-query": (
            OpenAIProvider(
                base_url=f"http://user:hunter2@{host}/nope?api-key={QUERY_SECRET}", name="openai"
            ),
            f"{base}/nope",
        ),
        "azure": (
            AzureOpenAIProvider(endpoint=base, api_key=SERVER_KEY, name="azure"),
            f"{base}/openai/deployments/gpt-4o-mini/chat/completions",
        ),
        "anthropic": (
            AnthropicProvider(base_url=base, api_key=SERVER_KEY, name="claude", models=["*"]),
            f"{base}/v1/messages",
        ),
        "custom-httpx": (GeminiLikeProvider(base), f"{base}/v1beta/models/gpt-4o-mini:generate"),
    }


KINDS = ["openai-no-v1", "openai-query", "azure", "anthropic", "custom-httpx"]


@pytest.mark.parametrize(
    ("kind", "transport"),
    [
        *[(kind, transport) for kind in KINDS for transport in ("httpx", "aiohttp")],
        # Not over aiohttp: it refuses a URL's userinfo next to an Authorization header.
        ("openai-userinfo-and-query", "httpx"),
    ],
)
async def test_an_upstream_404_names_what_was_called_but_no_secret(
    make_proxy: MakeProxy,
    not_found: tuple[NotFoundUpstream, str],
    caplog: pytest.LogCaptureFixture,
    transport: str,
    kind: str,
) -> None:
    upstream, base = not_found
    provider, shown = providers_for(base)[kind]
    caplog.set_level(logging.DEBUG)
    app = make_proxy(providers=[provider], http_transport=transport, allow_anonymous=True)
    before = len(upstream.seen)
    async with asgi_client(app, {"authorization": f"Bearer {CALLER_KEY}"}) as client:
        response = await client.post("/v1/proxy/chat/completions", json=chat_body())
    assert len(upstream.seen) == before + 1  # it did reach the upstream
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_404")
    said = f"answered HTTP 404 for POST {shown} without an OpenAI-style error body"
    assert said in error["message"]
    assert "base URL (does it need /v1?)" in error["message"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"for POST {shown} " in message for message in warnings)
    for secret in (SERVER_KEY, CALLER_KEY, QUERY_SECRET, "hunter2", "api-version", "key="):
        assert secret not in everything_sent(response)
        assert secret not in "".join(warnings)
