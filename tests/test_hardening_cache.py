"""Cache hardening: what may be cached, what a key is made of, and how fresh a served
entry must be. Every test drives the middleware against a real HTTP upstream on
127.0.0.1 (the shared fake upstream, or a scripted one served by uvicorn here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, read_request

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


async def post(
    app: AutoProxyMiddleware,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/proxy/auto",
) -> httpx.Response:
    sent = {**AUTH, "content-type": "application/json", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as http:
        return await http.post(path, content=content, headers=sent)


# -- 1. only a valid answer for its route is cached ----------------------------------------


class ScriptedUpstream:
    """Answers every request with ``status`` and the JSON ``answer``, counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = 200
        self.answer: Any = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        self.calls += 1
        body = json.dumps(self.answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def _scripted_server() -> Iterator[tuple[ScriptedUpstream, ServerThread]]:
    app = ScriptedUpstream()
    server = ServerThread(app)
    server.start()
    yield app, server
    server.stop()


@pytest.fixture
def scripted(_scripted_server: tuple[ScriptedUpstream, ServerThread]) -> ScriptedUpstream:
    app = _scripted_server[0]
    app.calls, app.status, app.answer = 0, 200, {}
    return app


@pytest.fixture
def scripted_proxy(
    make_proxy: MakeProxy, _scripted_server: tuple[ScriptedUpstream, ServerThread]
) -> AutoProxyMiddleware:
    url = _scripted_server[1].url + "/v1"
    return make_proxy(providers=[OpenAIProvider(base_url=url, name="scripted")])


CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}
COMPLETION_ANSWER = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "hi"}]}
NOT_ANSWERS = [
    {"error": {"message": "overloaded"}},
    {"error": "overloaded"},
    {"choices": "not a list"},
    {"id": "chatcmpl-1", "object": "chat.completion"},
    {**CHAT_ANSWER, "error": {"message": "overloaded"}},
]


@pytest.mark.parametrize("answer", NOT_ANSWERS)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/proxy/auto", chat_body(temperature=0)),
        ("/v1/proxy/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "seed": 1}),
    ],
)
async def test_a_200_that_is_not_an_answer_is_relayed_but_never_cached(
    scripted_proxy: AutoProxyMiddleware,
    scripted: ScriptedUpstream,
    answer: dict[str, Any],
    path: str,
    body: dict[str, Any],
) -> None:
    scripted.answer = answer
    first = await post(scripted_proxy, body, path=path)
    second = await post(scripted_proxy, body, path=path)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == answer
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "MISS")
    assert "cache-control" not in first.headers  # the max-age of a write that never happened
    assert scripted.calls == 2


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/v1/proxy/auto", chat_body(temperature=0), CHAT_ANSWER),
        ("/v1/proxy/completions", {"model": "m", "prompt": "hi", "seed": 1}, COMPLETION_ANSWER),
    ],
)
async def test_a_valid_answer_is_still_cached(
    scripted_proxy: AutoProxyMiddleware,
    scripted: ScriptedUpstream,
    path: str,
    body: dict[str, Any],
    answer: dict[str, Any],
) -> None:
    scripted.answer = answer
    first = await post(scripted_proxy, body, path=path)
    second = await post(scripted_proxy, body, path=path)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.json() == answer
    assert scripted.calls == 1


async def test_a_stream_carrying_an_error_event_is_never_cached(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    body = chat_body("stream, then fail", temperature=0, stream=True, fake={"error_event_after": 1})
    for _ in range(2):
        response = await post(app, body)
        assert response.status_code == 200
        assert response.headers["x-bt-cached"] == "MISS"
        assert b"overloaded mid-stream" in response.content
    assert upstream.calls == 2
