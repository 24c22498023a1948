"""SSE through a real uvicorn server: no buffering, disconnects reach the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def proxy_url(_upstream_server: tuple[FakeUpstream, ServerThread]) -> Iterator[str]:
    """The middleware (pass-through keys) served by uvicorn, lifespan on."""
    provider = OpenAIProvider(base_url=_upstream_server[1].url + "/v1", name="fake")
    app = AutoProxyMiddleware(inner_app(), providers=[provider])
    with serve(app, lifespan="on") as server:
        yield server.url


@pytest.fixture
async def http(proxy_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=proxy_url,
        headers={"authorization": f"Bearer {CALLER_KEY}"},
        timeout=httpx.Timeout(10.0),
    ) as client:
        yield client


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any] | str:
    """The next SSE event's data: parsed JSON, or the raw text (``[DONE]``)."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            break
    if not data:
        raise EOFError("the stream ended")
    text = "\n".join(data)
    return text if text == "[DONE]" else dict(json.loads(text))


async def all_events(response: httpx.Response) -> list[dict[str, Any] | str]:
    lines = response.aiter_lines()
    events: list[dict[str, Any] | str] = []
    with anyio.fail_after(10):
        while True:
            try:
                events.append(await next_event(lines))
            except EOFError:
                return events


async def test_sse_headers_and_events_pass_through(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = chat_body("stream me", stream=True, fake={"chunks": 4})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        assert response.status_code == 200
        headers = response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache, no-transform"
        assert headers["x-accel-buffering"] == "no"
        assert "content-length" not in headers
        assert headers["x-upstream-request-id"] == "req_1"
        events = await all_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [
        "tok0 ",
        "tok1 ",
        "tok2 ",
        "tok3 ",
    ]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    [seen] = upstream.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.json["stream"] is True
    for _ in range(100):  # the upstream counts its stream done just after the last byte
        if upstream.completed_streams:
            break
        await anyio.sleep(0.01)
    assert upstream.completed_streams == 1


async def test_first_event_arrives_before_the_upstream_sends_the_second(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = chat_body(stream=True, fake={"chunks": 3, "gate": True})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        lines = response.aiter_lines()
        try:
            with anyio.fail_after(5):
                first = await next_event(lines)
            # The upstream is parked after its first chunk until the gate opens.
            assert upstream.chunks_sent == 1
            assert first["choices"][0]["delta"]["content"] == "tok0 "
        finally:
            upstream.open_gate()
        with anyio.fail_after(5):
            rest = [await next_event(lines) for _ in range(3)]
    assert rest[-1] == "[DONE]"
    assert upstream.chunks_sent == 3


async def test_a_sole_provider_s_headers_reach_the_caller_before_its_first_event(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # Nothing to fail over to, so nothing to wait for: the caller's SDK can get going.
    body = chat_body(stream=True, fake={"chunks": 2, "gate_before_first": True})
    try:
        with anyio.fail_after(5):
            async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
                assert response.status_code == 200
                assert response.headers["x-bt-used-endpoint"] == "fake"
                assert upstream.chunks_sent == 0  # the upstream is parked before its first
                upstream.open_gate()
                events = await all_events(response)
    finally:
        if upstream.chunks_sent == 0:
            upstream.open_gate()
    assert [e if e == "[DONE]" else e["object"] for e in events] == [
        "chat.completion.chunk",
        "chat.completion.chunk",
        "[DONE]",
    ]


async def test_with_a_fallback_headers_wait_for_the_first_event(
    _upstream_server: tuple[FakeUpstream, ServerThread], upstream: FakeUpstream
) -> None:
    # An error event in its place would still fail over, so the headers are held back.
    url = _upstream_server[1].url + "/v1"
    pair = [OpenAIProvider(base_url=url, name="first"), OpenAIProvider(base_url=url, name="next")]
    body = chat_body(stream=True, fake={"chunks": 2, "gate_before_first": True})
    with serve(AutoProxyMiddleware(inner_app(), providers=pair), lifespan="on") as server:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {CALLER_KEY}"}, timeout=10
        ) as client:
            got_headers = anyio.Event()

            async def request() -> list[dict[str, Any] | str]:
                async with client.stream("POST", "/v1/proxy/auto", json=body) as response:
                    got_headers.set()
                    return await all_events(response)

            async with anyio.create_task_group() as group:
                results: list[list[dict[str, Any] | str]] = []

                async def run() -> None:
                    results.append(await request())

                group.start_soon(run)
                assert await wait_for(lambda: upstream.parked)
                await anyio.sleep(0.2)
                assert not got_headers.is_set()  # held while the first event is awaited
                upstream.open_gate()
                with anyio.fail_after(5):
                    await got_headers.wait()
    assert results[0][-1] == "[DONE]" and len(results[0]) == 3


async def wait_for(condition: Any, within: float = 2.0) -> bool:
    """Poll ``condition`` until it holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await anyio.sleep(0.02)
    return bool(condition())


async def test_client_disconnect_closes_the_upstream_connection(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    requested = 100
    body = chat_body(stream=True, fake={"chunks": requested, "delay": 0.05})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        with anyio.fail_after(5):
            first = await next_event(response.aiter_lines())
        assert first["choices"][0]["delta"]["content"] == "tok0 "
    # Leaving the block unread closes the client's connection mid-stream.
    assert await wait_for(lambda: upstream.disconnects == 1), "upstream never saw the disconnect"
    assert upstream.chunks_sent < requested / 2
    assert upstream.completed_streams == 0


async def test_stream_without_done_ends_with_an_error_event(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = chat_body(stream=True, fake={"chunks": 3, "no_done": True})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        assert response.status_code == 200
        events = await all_events(response)
    assert len(events) == 4
    assert [e["choices"][0]["delta"]["content"] for e in events[:3]] == [
        "tok0 ",
        "tok1 ",
        "tok2 ",
    ]
    error = events[-1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "'fake'" in error["message"]
    assert "[DONE]" in error["message"]
    assert error["code"] == "upstream_stream_error"


@pytest.mark.parametrize("status", [400, 401, 429, 500])
async def test_upstream_error_status_on_a_stream_is_plain_json(
    http: httpx.AsyncClient, upstream: FakeUpstream, status: int
) -> None:
    body = chat_body(stream=True, fake={"status": status})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        await response.aread()
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == f"upstream says {status}"
    assert int(response.headers["content-length"]) == len(response.content)


async def test_upstream_error_event_mid_stream_is_forwarded(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = chat_body(stream=True, fake={"chunks": 5, "error_event_after": 2})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        assert response.status_code == 200
        events = await all_events(response)
    assert len(events) == 3
    assert [e["choices"][0]["delta"]["content"] for e in events[:2]] == [
        "tok0 ",
        "tok1 ",
    ]
    # The upstream's own error, not one the proxy added after it.
    assert events[2] == {"error": {"message": "overloaded mid-stream", "type": "server_error"}}


async def test_a_sole_provider_s_error_event_first_reaches_the_caller_uncached(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # No failover to try: the error streams through as the upstream sent it, and a
    # deterministic request asked again goes upstream again.
    body = chat_body(stream=True, temperature=0, fake={"chunks": 3, "error_event_after": 0})
    for _ in range(2):
        async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
            assert response.status_code == 200
            assert response.headers["x-bt-cached"] == "MISS"
            events = await all_events(response)
        assert events == [{"error": {"message": "overloaded mid-stream", "type": "server_error"}}]
    assert len(upstream.requests) == 2


async def test_completion_model_streams_from_completions(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say", "stream": True}
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await all_events(response)
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["tok0 ", "tok1 ", "tok2 "]
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert upstream.requests[0].path == "/v1/completions"


async def test_sibling_completions_route_streams(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = {"model": "my-local-model", "prompt": "Say", "stream": True, "fake": {"chunks": 2}}
    async with http.stream("POST", "/v1/proxy/completions", json=body) as response:
        events = await all_events(response)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["tok0 ", "tok1 "]
    assert events[-1] == "[DONE]"
    assert upstream.requests[0].path == "/v1/completions"


async def test_events_split_across_reads_are_relayed_whole(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """Many quick chunks: the client gets each event exactly once, none cut or merged wrong."""
    body = chat_body(stream=True, fake={"chunks": 200})
    async with http.stream("POST", "/v1/proxy/auto", json=body) as response:
        events = await all_events(response)
    assert events[-1] == "[DONE]"
    contents = [e["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == [f"tok{i} " for i in range(200)]
