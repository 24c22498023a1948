"""Header hygiene in both directions, and no way for a caller to pick the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve

pytestmark = pytest.mark.anyio

# What the caller sends that must stay at the proxy.
HOSTILE_REQUEST_HEADERS = {
    "cookie": "session=caller-session-cookie",
    "x-bt-org-name": "caller-org",
    "x-bt-use-cache": "never",
    "connection": "keep-alive, x-caller-hop",
    "x-caller-hop": "hop-value",
    "keep-alive": "timeout=99",
    "te": "trailers",
    "trailer": "x-caller-trailer",
    "upgrade": "h2c",
    "proxy-authorization": "Basic caller-proxy-credential",
    "proxy-connection": "keep-alive",
    "x-forwarded-host": "forwarded.invalid",
    "x-forwarded-for": "10.9.8.7",
    "forwarded": "host=forwarded.invalid;proto=http",
    "origin": "https://caller-origin.invalid",
}
# What httpx itself puts on the proxy's own upstream request.
CLIENT_OWN = {"host", "accept-encoding", "connection", "user-agent", "content-length"}
PROXY_SENT = {"content-type", "accept", "x-request-id", "authorization"}

# What the upstream answers with that must stay at the proxy.
HOSTILE_RESPONSE_HEADERS = {
    "set-cookie": "upstream-session=1",
    "keep-alive": "timeout=5",
    "proxy-authenticate": "Basic",
    "upgrade": "h2c",
    "trailer": "x-upstream-trailer",
    "www-authenticate": "Basic realm=upstream",
    "access-control-allow-origin": "*",
    "x-upstream-private": "private-value",
}
CALLER_MAY_SEE = {
    "content-type",
    "content-length",
    "x-request-id",
    "x-upstream-request-id",
    "openai-processing-ms",
    "x-ratelimit-remaining-requests",
    "x-bt-cached",
    "x-bt-used-endpoint",
    "cache-control",
    "x-accel-buffering",
    "age",
}


def http(app: AutoProxyMiddleware, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    )


def assert_no_caller_values(seen_headers: list[tuple[str, str]], *secrets: str) -> None:
    text = repr(seen_headers)
    for value in (*HOSTILE_REQUEST_HEADERS.values(), *secrets):
        for part in value.split(", "):
            if part not in ("keep-alive",):  # httpx's own connection header says it too
                assert part not in text, part


# -- upstream direction ---------------------------------------------------------------


async def test_server_key_mode_forwards_nothing_of_the_callers(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    app = make_proxy(provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "alice"})
    headers = {
        **HOSTILE_REQUEST_HEADERS,
        "authorization": f"Bearer {CALLER_KEY}",
        "x-api-key": CALLER_KEY,
        "host": "host-header.invalid",
    }
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body(), headers=headers)
    assert response.status_code == 200
    [seen] = upstream.requests
    assert set(seen.headers) == CLIENT_OWN | PROXY_SENT
    assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert seen.headers["host"] == urlsplit(upstream_url).netloc
    assert seen.headers["content-length"] == str(len(seen.body))
    assert seen.headers["connection"] == "keep-alive"  # httpx's own, not the caller's
    assert_no_caller_values(seen.header_list, CALLER_KEY, "host-header.invalid")


async def test_pass_through_forwards_only_the_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    async with http(app) as client:
        response = await client.post(
            "/v1/proxy/auto",
            json=chat_body(),
            headers={**HOSTILE_REQUEST_HEADERS, "x-api-key": CALLER_KEY},
        )
    assert response.status_code == 200
    [seen] = upstream.requests
    assert set(seen.headers) == CLIENT_OWN | PROXY_SENT
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert "x-api-key" not in seen.headers
    assert_no_caller_values(seen.header_list)


async def test_caller_content_length_is_never_reused(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """The upstream's content-length is the body's, whatever the caller declared."""
    app = make_proxy()
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    sent: list[dict[str, Any]] = []
    chunks = [raw[:10], raw[10:]]

    async def receive() -> dict[str, Any]:
        if not chunks:  # body sent; the proxy now only listens for a disconnect
            await anyio.sleep_forever()
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/proxy/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {CALLER_KEY}".encode()),
            (b"content-length", b"5"),  # a lie: the body is longer
            (b"transfer-encoding", b"chunked"),
        ],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    [seen] = upstream.requests
    assert seen.body == raw
    assert seen.headers["content-length"] == str(len(raw))
    assert "transfer-encoding" not in seen.headers
    await app.aclose()


# -- caller direction -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_cookies_and_hop_headers_never_reach_the_caller(
    make_proxy: MakeProxy, upstream: FakeUpstream, stream: bool
) -> None:
    app = make_proxy()
    body = chat_body(stream=stream, fake={"headers": HOSTILE_RESPONSE_HEADERS})
    async with http(app, authorization=f"Bearer {CALLER_KEY}") as client:
        response = await client.post("/v1/proxy/auto", json=body)
    assert response.status_code == 200
    names = set(response.headers.keys())
    assert names <= CALLER_MAY_SEE, names - CALLER_MAY_SEE
    assert not names & set(HOSTILE_RESPONSE_HEADERS)
    for value in HOSTILE_RESPONSE_HEADERS.values():
        assert value not in repr(response.headers.raw)


async def test_upstream_errors_drop_their_auth_challenge(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body(fake={"status": 401, "headers": HOSTILE_RESPONSE_HEADERS})
    async with http(app, authorization=f"Bearer {CALLER_KEY}") as client:
        response = await client.post("/v1/proxy/auto", json=body)
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers
    assert "set-cookie" not in response.headers


# -- nobody picks the upstream --------------------------------------------------------


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[FakeUpstream, ServerThread]]:
    """A second upstream that a hostile request would like the proxy to call."""
    fake = FakeUpstream()
    with serve(fake) as server:
        yield fake, server


def hostile_fields(url: str) -> dict[str, Any]:
    return {
        "base_url": url,
        "api_base": url,
        "baseURL": url,
        "url": url,
        "endpoint": url,
        "api_url": url,
        "host": urlsplit(url).netloc,
        "scheme": "http",
    }


@pytest.mark.parametrize(
    ("path", "extra", "upstream_path"),
    [
        (
            "/v1/proxy/auto",
            {"messages": [{"role": "user", "content": "x"}]},
            "/v1/chat/completions",
        ),
        ("/v1/proxy/chat/completions", {"messages": []}, "/v1/chat/completions"),
        ("/v1/proxy/completions", {"prompt": "x"}, "/v1/completions"),
    ],
)
@pytest.mark.parametrize("model_kind", ["absolute", "scheme-relative", "path"])
async def test_no_field_or_header_moves_the_upstream(
    make_proxy: MakeProxy,
    upstream: FakeUpstream,
    upstream_url: str,
    elsewhere: tuple[FakeUpstream, ServerThread],
    path: str,
    extra: dict[str, Any],
    upstream_path: str,
    model_kind: str,
) -> None:
    evil_fake, evil_server = elsewhere
    evil_fake.reset()
    evil = evil_server.url
    evil_netloc = urlsplit(evil).netloc
    model = {
        "absolute": f"{evil}/v1/x",
        "scheme-relative": f"//{evil_netloc}/x",
        "path": "../../../evil/x",
    }[model_kind]
    app = make_proxy(provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "alice"})
    headers = {
        "authorization": f"Bearer {CALLER_KEY}",
        "host": evil_netloc,
        "x-forwarded-host": evil_netloc,
        "x-forwarded-proto": "http",
        "forwarded": f"host={evil_netloc};proto=http",
        "x-bt-base-url": evil,
        "x-original-url": evil,
        "x-rewrite-url": evil,
        "origin": evil,
        "referer": evil,
    }
    body = {"model": model, **extra, **hostile_fields(evil)}
    async with http(app) as client:
        response = await client.post(
            f"{path}?base_url={evil}&url={evil}", json=body, headers=headers
        )
    assert response.status_code == 200
    [seen] = upstream.requests
    assert seen.path == upstream_path
    assert seen.query == ""
    assert seen.headers["host"] == urlsplit(upstream_url).netloc
    assert evil_fake.calls == 0
    await app.aclose()


async def test_paths_that_only_resemble_the_route_go_to_the_app(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    async with http(app, authorization=f"Bearer {CALLER_KEY}") as client:
        for path in ("/v1/proxy/auto/../../x", "/v1/proxy/autox", "/v1/proxy/auto/"):
            response = await client.post(path, json=chat_body())
            assert response.status_code in (404, 405), path
    assert upstream.calls == 0


async def test_an_endpoint_name_only_picks_among_configured_providers(
    make_proxy: MakeProxy,
    upstream: FakeUpstream,
    elsewhere: tuple[FakeUpstream, ServerThread],
) -> None:
    evil_fake, evil_server = elsewhere
    evil_fake.reset()
    app = make_proxy()
    async with http(app, authorization=f"Bearer {CALLER_KEY}") as client:
        response = await client.post(
            "/v1/proxy/auto", json=chat_body(), headers={"x-bt-endpoint-name": evil_server.url}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_endpoint_name"
    assert upstream.calls == 0
    assert evil_fake.calls == 0
