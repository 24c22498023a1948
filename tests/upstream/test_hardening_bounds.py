"""Bounds on what a caller or an upstream can make the proxy hold: a request body that
trickles in, an answer or an SSE event that is too large (or a gzip bomb), an event that
never ends; and SSE events ended by CR or mixed line ends.

Everything goes through real servers on 127.0.0.1: the proxy under uvicorn, the
upstreams as small ASGI apps under uvicorn, the callers over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, Limits, OpenAIProvider
from asgi_autoproxy._sse import EventSplitter
from asgi_autoproxy.errors import ResponseTooLarge
from tests.conftest import CALLER_KEY, chat_body, inner_app
from tests.servers import read_request, serve

TRANSPORTS = ["httpx", "aiohttp"]
AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


# -- upstreams -------------------------------------------------------------------------


class Upstream:
    """An ASGI upstream that answers every request with ``answer(send)`` and counts them."""

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        self.requests += 1
        await self.answer(send)


def whole(body: bytes, *headers: tuple[bytes, bytes]) -> Callable[[Any], Any]:
    async def answer(send: Any) -> None:
        start = [(b"content-type", b"application/json"), *headers]
        start.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": body})

    return answer


def events(*chunks: bytes, pause: float = 0.0) -> Callable[[Any], Any]:
    """An SSE answer sent as ``chunks``, each its own write (``pause`` s apart)."""

    async def answer(send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if pause:
                await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": b""})

    return answer


def delta(text: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def data(text: str) -> bytes:
    return b"data: " + json.dumps(delta(text)).encode()


@cache
def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzipped: about 64 KiB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(64)) + packer.flush()


@contextmanager
def proxy_for(upstream: Upstream, **keywords: Any) -> Iterator[tuple[str, Upstream]]:
    """The proxy (cache on) in front of ``upstream``, each under its own uvicorn."""
    with serve(upstream) as up:
        provider = OpenAIProvider(base_url=up.url + "/v1", name="bounded")
        app = AutoProxyMiddleware(inner_app(), providers=[provider], **keywords)
        with serve(app, lifespan="on") as server:
            yield server.url, upstream


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=url, headers=AUTH, timeout=20.0) as http:
        return http.post("/v1/proxy/auto", json=body)


def sse_data(text: str) -> list[str]:
    """Each event's joined ``data:`` lines, read the way the SSE spec says."""
    found: list[str] = []
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if lines:
                found.append("\n".join(lines))
            lines = []
        elif line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    return found


def cacheable(text: str, *, stream: bool = False) -> dict[str, Any]:
    return chat_body(text, temperature=0, stream=stream)


# -- 13 and 15: splitting SSE events ----------------------------------------------------


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_splitting_an_event_that_never_ends_is_linear(line_end: bytes) -> None:
    """16 MiB in 4 KiB reads, no blank line anywhere, against the same bytes cut into
    4 KiB events: the same order of time, where a quadratic splitter takes minutes."""
    line = b"data: " + b"x" * 1000 + line_end
    read = line * (4096 // len(line))
    reads = (16 << 20) // len(read)
    ended = read[: -len(line_end)] + line_end * 2  # the same size, ending an event

    def split(chunk: bytes, budget: float) -> float:
        splitter = EventSplitter()
        started = time.perf_counter()
        for count in range(reads):
            splitter.feed(chunk)
            if count % 256 == 0 and time.perf_counter() - started > budget:
                pytest.fail(f"{count} of {reads} reads took over {budget:.2f} s")
        return time.perf_counter() - started

    baseline = min(split(ended, 60.0) for _ in range(3))
    endless = split(read, 10 * baseline + 0.5)
    assert endless < 10 * baseline + 0.5, (endless, baseline)


def test_the_splitter_stops_at_the_event_bound() -> None:
    splitter = EventSplitter(max_event_size=100)
    assert splitter.feed(b"data: 1\n\ndata: ") == [b"data: 1\n\n"]
    with pytest.raises(ResponseTooLarge) as raised:
        for _ in range(10):
            splitter.feed(b"x" * 30)
    assert raised.value.limit == 100
    assert raised.value.what == "event"
    with pytest.raises(ResponseTooLarge):  # ended within one read, still too large
        EventSplitter(max_event_size=100).feed(b"data: " + b"x" * 200 + b"\n\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_events_ended_by_cr_or_mixed_line_ends_all_reach_the_caller(transport: str) -> None:
    # One event in two data lines, which join into valid JSON again; were the CRLF after
    # the first cut in two counted as two line ends, the first half would go alone.
    text = json.dumps(delta("split")).encode()
    half = text.index(b", ") + 1
    chunks = [
        data("cr") + b"\r\r",  # CR line ends only
        data("lf-crlf") + b"\n\r\n",  # LF, then a CRLF blank line
        data("crlf-lf") + b"\r\n\n",
        data("crlf") + b"\r\n\r\n",
        b"data: " + text[:half] + b"\r",  # a CRLF cut between two writes
        b"\ndata: " + text[half:] + b"\r",
        b"\n\r",
        b"\n" + data("cr-crlf") + b"\r\r\n",
        b"data: [DONE]\r\r",
    ]
    upstream = Upstream(events(*chunks, pause=0.02))
    with proxy_for(upstream, http_transport=transport, cache=None) as (url, _):
        response = post(url, chat_body(stream=True))
    assert response.status_code == 200
    found = sse_data(response.text)
    assert found[-1] == "[DONE]", found
    texts = [json.loads(one)["choices"][0]["delta"]["content"] for one in found[:-1]]
    assert texts == ["cr", "lf-crlf", "crlf-lf", "crlf", "split", "cr-crlf"]
    # Every data line arrives byte for byte.
    for sent in [*(data(name) for name in ("cr", "crlf", "cr-crlf")), text[:half], text[half:]]:
        assert sent.decode() in response.text


def test_a_crlf_cut_between_two_reads_is_one_line_end() -> None:
    splitter = EventSplitter()
    fed = [b"data: a\r", b"\n", b"data: b\r", b"\n\r", b"", b"\ndata: c\r\r"]
    assert [event for chunk in fed for event in splitter.feed(chunk)] == [
        b"data: a\ndata: b\n\n",
        b"data: c\n\n",
    ]
    assert splitter.pending == b""


# -- 12: answers too large, gzip bombs -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_whole_answer_over_the_bound_is_a_502_and_not_cached(transport: str) -> None:
    big = json.dumps({"id": "c1", "pad": "x" * 300_000}).encode()
    upstream = Upstream(whole(big))
    keywords = {"http_transport": transport, "limits": Limits(max_response_size=256 * 1024)}
    with proxy_for(upstream, **keywords) as (url, _):
        first = post(url, cacheable("big"))
        again = post(url, cacheable("big"))
        upstream.answer = whole(b'{"id": "small", "choices": []}')  # small: cached as usual
        small = [post(url, cacheable("small")) for _ in range(2)]
    for response in (first, again):
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_response_too_large"
        assert error["type"] == "upstream_error"
        assert str(256 * 1024) in error["message"]
    assert [r.headers["x-bt-cached"] for r in small] == ["MISS", "HIT"]
    assert upstream.requests == 3  # both big ones went upstream: nothing was cached


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_gzip_bomb_is_refused_without_inflating_it(transport: str) -> None:
    bomb = gzip_bomb()
    upstream = Upstream(whole(bomb, (b"content-encoding", b"gzip")))
    keywords = {"http_transport": transport, "limits": Limits(max_response_size=1 << 20)}
    with proxy_for(upstream, **keywords) as (url, _):
        post(url, chat_body("warm-up"))  # connections and imports, outside the count
        tracemalloc.start()
        try:
            started = time.monotonic()
            response = post(url, cacheable("bomb"))
            took = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        again = post(url, cacheable("bomb"))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_response_too_large"
    # Inflating it whole would take 64 MiB at least; a bounded read, the bound and a piece.
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert took < 10, took
    assert again.status_code == 502
    assert upstream.requests == 3


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_answers_inflated_by_the_proxy_itself_arrive_whole(encoding: str) -> None:
    """httpx's transport: gzip and deflate are inflated a piece at a time (decoding.py),
    which must give back exactly what httpx would have."""
    answer = json.dumps({"id": "c1", "pad": "abc" * 100_000}).encode()
    wbits = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS, "raw-deflate": -15}
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits[encoding])
    packed = packer.compress(answer) + packer.flush()
    name = encoding.removeprefix("raw-").encode()
    upstream = Upstream(whole(packed, (b"content-encoding", name)))
    with proxy_for(upstream, http_transport="httpx", cache=None) as (url, _):
        response = post(url, chat_body())
    assert response.status_code == 200
    assert response.content == answer


# -- 12 and 13: SSE events too large, or never ending through the proxy ---------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_event_over_the_bound_ends_the_stream_and_is_not_cached(transport: str) -> None:
    huge = data("y" * 100_000) + b"\n\n"
    upstream = Upstream(
        events(data("one") + b"\n\n", huge[:40_000], huge[40_000:], b"data: [DONE]\n\n")
    )
    keywords = {"http_transport": transport, "limits": Limits(max_event_size=64 * 1024)}
    with proxy_for(upstream, **keywords) as (url, _):
        first = post(url, cacheable("huge", stream=True))
        again = post(url, cacheable("huge", stream=True))
    for response in (first, again):
        assert response.status_code == 200
        found = sse_data(response.text)
        assert json.loads(found[0]) == delta("one")
        assert "[DONE]" not in found
        error = json.loads(found[-1])["error"]
        assert error["code"] == "upstream_response_too_large"
        assert str(64 * 1024) in error["message"]
    assert first.headers["x-bt-cached"] == again.headers["x-bt-cached"] == "MISS"
    assert upstream.requests == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_event_that_never_ends_is_cut_at_the_bound(transport: str) -> None:
    endless = [data("two")] + [b"z" * 65536] * 256  # 16 MiB, no blank line
    upstream = Upstream(events(data("one") + b"\n\n", *endless))
    keywords = {"http_transport": transport, "limits": Limits(max_event_size=256 * 1024)}
    with proxy_for(upstream, **keywords) as (url, _):
        started = time.monotonic()
        response = post(url, cacheable("endless", stream=True))
        took = time.monotonic() - started
    found = sse_data(response.text)
    assert json.loads(found[0]) == delta("one")
    assert json.loads(found[-1])["error"]["code"] == "upstream_response_too_large"
    assert len(response.content) < 64 * 1024  # nothing of the endless event got through
    assert took < 10, took


# -- 11: a request body that trickles in -----------------------------------------------


def read_answer(sock: socket.socket, trickle: bytes, every: float, give_up: float) -> bytes:
    """Send ``trickle`` a byte per ``every`` s until the proxy answers (or ``give_up`` s)."""
    sock.settimeout(every)
    received = b""
    deadline = time.monotonic() + give_up
    position = 0
    while time.monotonic() < deadline:
        if position < len(trickle):
            try:
                sock.sendall(trickle[position : position + 1])
            except OSError:
                break
            position += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
        if b"\r\n\r\n" in received:
            head, _, rest = received.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(rest) >= length[0]:
                break
    return received


@pytest.mark.parametrize("trickle", [True, False], ids=["trickled", "silent"])
def test_a_body_that_does_not_arrive_in_time_gets_a_408(trickle: bool) -> None:
    upstream = Upstream(whole(b"{}"))
    with proxy_for(upstream, limits=Limits(request_read_timeout=1.0)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/proxy/auto HTTP/1.1\r\nhost: proxy\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n"
                b"authorization: Bearer " + CALLER_KEY.encode() + b"\r\n\r\n"
            )
            started = time.monotonic()
            body = json.dumps(chat_body("x" * 900)).encode() if trickle else b""
            answer = read_answer(sock, body, every=0.2, give_up=6.0)
            took = time.monotonic() - started
            sock.settimeout(2.0)
            try:
                closed = sock.recv(1) == b""  # the proxy hung up: the rest is never read
            except TimeoutError:
                closed = False
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(payload)["error"]
    assert error["code"] == "request_timeout"
    assert set(error) == {"message", "type", "param", "code"}
    assert 0.9 <= took <= 2.5, took
    assert closed
    assert upstream.requests == 0


def test_request_read_timeout_must_be_positive_or_none() -> None:
    provider = OpenAIProvider(base_url="http://127.0.0.1:9/v1")
    AutoProxyMiddleware(inner_app(), providers=[provider], limits=Limits(request_read_timeout=None))
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="request_read_timeout"):
            AutoProxyMiddleware(
                inner_app(), providers=[provider], limits=Limits(request_read_timeout=bad)
            )
