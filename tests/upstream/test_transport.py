"""The aiohttp-backed httpx transport, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy._http.clients import SharedClients, default_client_factory
from asgi_autoproxy._http.transport import AiohttpTransport
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import gzip_json_app, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fast() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=5.0) as client:
        yield client


async def test_non_streaming_answer(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    response = await fast.post(f"{upstream_url}/chat/completions", json=chat_body("hi"))
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.json()["choices"][0]["message"]["content"] == "echo #1: hi"
    assert response.headers["x-request-id"] == "req_1"
    assert response.headers["content-type"] == "application/json"
    [seen] = upstream.requests
    assert seen.json == chat_body("hi")
    assert seen.headers["content-length"] == str(len(seen.body))


async def test_request_headers_keep_repeated_values(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    headers = [("x-multi", "one"), ("x-multi", "two"), ("authorization", "Bearer k")]
    await fast.post(f"{upstream_url}/chat/completions", json=chat_body(), headers=headers)
    seen = upstream.requests[0].header_list
    assert [v for k, v in seen if k == "x-multi"] == ["one", "two"]
    assert ("authorization", "Bearer k") in seen


async def _repeated_headers_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"ok"
    headers = [
        (b"content-length", b"2"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-ratelimit-limit", b"5"),
    ]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_response_headers_keep_repeated_values(fast: httpx.AsyncClient) -> None:
    with serve(_repeated_headers_app) as server:
        response = await fast.get(server.url)
    assert response.status_code == 201
    assert response.reason_phrase == "Created"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-ratelimit-limit"] == "5"
    assert response.text == "ok"


async def test_compressed_body_is_decoded_once_by_httpx(fast: httpx.AsyncClient) -> None:
    """The transport hands over raw bytes; httpx decodes, as with its own transport."""
    with serve(gzip_json_app(b'{"compressed": true}')) as server:
        async with fast.stream("GET", server.url) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        decoded = await fast.get(server.url)
    assert gzip.decompress(raw) == b'{"compressed": true}'
    assert decoded.json() == {"compressed": True}


async def test_stream_chunks_arrive_one_by_one(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    """The first event reaches us while the upstream is still holding back the rest."""
    body = chat_body(stream=True, fake={"chunks": 4, "gate": True})
    async with fast.stream("POST", f"{upstream_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        received: list[bytes] = []
        async for chunk in response.aiter_bytes():
            received.append(chunk)
            if len(received) == 1:
                # The upstream holds tok1 back until the gate opens: tok0 came alone.
                assert b"tok0" in chunk and b"tok1" not in chunk
                upstream.open_gate()
    text = b"".join(received)
    assert [f"tok{i}".encode() in text for i in range(4)] == [True] * 4
    assert text.endswith(b"data: [DONE]\n\n")
    assert len(received) >= 2


async def test_closing_a_stream_early_drops_the_connection(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    body = chat_body(stream=True, fake={"chunks": 200, "delay": 0.01})
    async with fast.stream("POST", f"{upstream_url}/chat/completions", json=body) as response:
        async for _ in response.aiter_bytes():
            break
    with anyio.fail_after(5):
        # The upstream counts in its own thread: poll, bounded by fail_after.
        while upstream.disconnects == 0:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert upstream.chunks_sent < 200
    transport = fast._transport
    assert isinstance(transport, AiohttpTransport)
    assert transport.connection_counts() == (0, 0)  # dropped, not pooled
    # The pool stays usable afterwards.
    again = await fast.post(f"{upstream_url}/chat/completions", json=chat_body())
    assert again.status_code == 200
    assert transport.connection_counts() == (1, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_connect_error(fast: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1/chat/completions"
    with pytest.raises(httpx.ConnectError) as caught:
        await fast.post(url, json=chat_body())
    assert caught.value.request.url == url


async def test_read_timeout_comes_from_httpx_timeout(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await fast.post(
            f"{upstream_url}/chat/completions",
            json=chat_body(fake={"sleep": 1.0}),
            timeout=httpx.Timeout(5.0, read=0.2),
        )
    assert time.monotonic() - started < 0.9


async def test_read_timeout_between_stream_chunks(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    body = chat_body(stream=True, fake={"chunks": 3, "delay": 1.0})
    with pytest.raises(httpx.ReadTimeout):
        async with fast.stream(
            "POST", f"{upstream_url}/chat/completions", json=body, timeout=httpx.Timeout(0.2)
        ) as response:
            async for _ in response.aiter_bytes():
                pass


async def test_client_aclose_closes_the_aiohttp_session(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    transport = AiohttpTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.post(f"{upstream_url}/chat/completions", json=chat_body())).is_success
        session = transport._session
        assert session is not None and not session.closed
    assert session.closed


def test_default_client_uses_the_fast_transport_when_aiohttp_is_installed() -> None:
    timeout = httpx.Timeout(5.0)
    default = default_client_factory(timeout)()
    chosen = default_client_factory(timeout, "httpx")()
    assert isinstance(default._transport, AiohttpTransport)
    assert not isinstance(chosen._transport, AiohttpTransport)
    with pytest.raises(ValueError, match="transport must be"):
        default_client_factory(timeout, "curl")  # type: ignore[arg-type]


@pytest.mark.parametrize("choice", ["aiohttp", "httpx"])
async def test_middleware_works_on_either_transport(
    make_proxy: MakeProxy, upstream: FakeUpstream, choice: str
) -> None:
    app = make_proxy(http_transport=choice)
    clients: SharedClients = app._clients
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    ) as http:
        whole = await http.post("/v1/proxy/auto", json=chat_body("x"))
        streamed = await http.post("/v1/proxy/auto", json=chat_body(stream=True))
    assert isinstance(clients.get()._transport, AiohttpTransport) == (choice == "aiohttp")
    assert whole.json()["choices"][0]["message"]["content"] == "echo #1: x"
    assert streamed.text.endswith("data: [DONE]\n\n")
    await app.aclose()


@pytest.mark.parametrize("choice", ["aiohttp", "httpx"])
async def test_upstream_cookies_never_reach_the_next_caller(
    make_proxy: MakeProxy, upstream: FakeUpstream, choice: str
) -> None:
    """The fake upstream sets a cookie on every answer; the shared client must not keep it."""
    app = make_proxy(http_transport=choice)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        for key in ("sk-first-caller", "sk-second-caller"):
            response = await http.post(
                "/v1/proxy/auto", json=chat_body(), headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
    assert [r.headers.get("cookie") for r in upstream.requests] == [None, None]
    await app.aclose()


async def test_streamed_request_body_is_sent_whole(
    fast: httpx.AsyncClient, upstream: FakeUpstream, upstream_url: str
) -> None:
    raw = json.dumps(chat_body("in pieces")).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 7):
            yield raw[start : start + 7]

    response = await fast.post(f"{upstream_url}/chat/completions", content=pieces())
    assert response.status_code == 200
    assert upstream.requests[0].body == raw


@pytest.mark.parametrize(
    "reply",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nshort"],
    ids=["no-response", "truncated-body"],
)
async def test_dropped_connection_is_remote_protocol_error(
    fast: httpx.AsyncClient, reply: bytes
) -> None:
    async def answer_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await fast.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_waiting_for_a_pooled_connection_times_out(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    """With the only connection busy, the next request gives up after ``pool`` seconds."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
        held = chat_body(stream=True, fake={"chunks": 2, "gate": True})
        async with client.stream("POST", f"{upstream_url}/chat/completions", json=held) as first:
            stream = first.aiter_bytes()
            await stream.__anext__()
            assert transport.connection_counts() == (0, 1)
            started = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                await client.post(
                    f"{upstream_url}/chat/completions",
                    json=chat_body(),
                    timeout=httpx.Timeout(5.0, pool=0.2, connect=0.1),
                )
            assert time.monotonic() - started < 2
            upstream.open_gate()
            rest = b"".join([chunk async for chunk in stream])
        assert rest.endswith(b"data: [DONE]\n\n")
        # Once released, the connection serves the next request.
        assert (await client.post(f"{upstream_url}/chat/completions", json=chat_body())).is_success
