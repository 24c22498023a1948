"""Secrets never show up in logs, error messages or bodies, on any error path."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, Limits, OpenAIProvider, RateLimit
from asgi_autoproxy._asgi import Scope
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

SECOND_SERVER_KEY = "sk-second-provider-key-4455667788"
SECRETS = (SERVER_KEY, SECOND_SERVER_KEY, CALLER_KEY)


class BrokenBackend:
    """A cache backend whose every call fails."""

    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("cache server refused the connection")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        raise ConnectionError("cache server refused the connection")

    async def delete(self, key: str) -> None:
        raise ConnectionError("cache server refused the connection")


def http(app: AutoProxyMiddleware, key: str | None = CALLER_KEY) -> httpx.AsyncClient:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers, timeout=30
    )


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
async def keyed(make_proxy: MakeProxy, upstream_url: str) -> AsyncIterator[AutoProxyMiddleware]:
    providers = [
        OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="paid", models=["gpt-*"]),
        OpenAIProvider(base_url=upstream_url, api_key=SECOND_SERVER_KEY, name="other"),
    ]
    yield make_proxy(
        providers=providers,
        api_keys={CALLER_KEY: "alice"},
        limits=Limits(max_body_size=4096, max_header_count=30, max_json_depth=10),
        timeout=0.3,
        cache=BrokenBackend(),
        cache_options=CacheOptions(timeout=0.2),
    )


Step = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def post(body: Any, **kwargs: Any) -> Step:
    async def step(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/proxy/auto", json=body, **kwargs)

    return step


ERROR_PATHS: dict[str, tuple[Step, int]] = {
    "bad json": (
        lambda c: c.post(
            "/v1/proxy/auto", content=b"{nope", headers={"content-type": "application/json"}
        ),
        400,
    ),
    "json too deep": (post(chat_body(x=json.loads("[" * 12 + "]" * 12))), 400),
    "unknown model shape": (post({"model": "gpt-x"}), 400),
    "wrong method": (lambda c: c.get("/v1/proxy/auto"), 405),
    "too large": (post(chat_body("x" * 5000)), 413),
    "too many headers": (post(chat_body(), headers={f"x-h{i}": "v" for i in range(40)}), 431),
    "upstream 401 echoing its key": (post(chat_body(fake={"status": 401, "echo_auth": True})), 401),
    "upstream 429": (post(chat_body(fake={"status": 429, "echo_auth": True})), 429),
    "upstream 500": (post(chat_body(fake={"status": 500, "echo_auth": True})), 500),
    "second provider echoing": (
        post({"model": "llama", "prompt": "p", "fake": {"status": 403, "echo_auth": True}}),
        403,
    ),
    "upstream 200 echoing in plain text": (
        post(chat_body(fake={"body": f"here it is: {SERVER_KEY}!"})),
        502,  # a 2xx that is not a JSON object is an invalid answer
    ),
    "upstream 200 echoing in JSON": (
        post(chat_body(fake={"body": json.dumps({"object": "chat.completion", "x": SERVER_KEY})})),
        200,
    ),
    "upstream non-json error": (post(chat_body(fake={"status": 502, "body": SERVER_KEY})), 502),
    "timeout": (post(chat_body(fake={"sleep": 1.0})), 504),
    "broken stream": (post(chat_body(stream=True, fake={"no_done": True})), 200),
    "error event echoing its key": (
        post(chat_body(stream=True, fake={"error_event_after": 1, "echo_auth": True})),
        200,
    ),
    "failing cache backend": (post(chat_body(temperature=0)), 200),
}


@pytest.mark.parametrize("path", list(ERROR_PATHS))
async def test_error_paths_keep_secrets_out_of_logs_and_bodies(
    keyed: AutoProxyMiddleware,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    step, status = ERROR_PATHS[path]
    caplog.set_level(logging.DEBUG)
    async with http(keyed) as client:
        response = await step(client)
    assert response.status_code == status
    assert_clean(response.text)
    assert_clean(repr(response.headers.raw))
    assert_clean(caplog.text)
    for record in caplog.records:
        assert_clean(record.getMessage())
        assert_clean(repr(record.args))


async def test_echoed_provider_keys_are_redacted(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    async with http(keyed) as client:
        whole = await client.post(
            "/v1/proxy/auto", json=chat_body(fake={"status": 401, "echo_auth": True})
        )
        streamed = await client.post(
            "/v1/proxy/auto",
            json=chat_body(stream=True, fake={"error_event_after": 1, "echo_auth": True}),
        )
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert whole.json()["error"]["message"] == "upstream says 401; bad key: Bearer [redacted]"
    assert "key was Bearer [redacted]" in streamed.text


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("sk-wrong", 401), (SERVER_KEY, 401), (SECOND_SERVER_KEY, 401)],
)
async def test_refused_keys_never_come_back_or_get_logged(
    keyed: AutoProxyMiddleware,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    key: str | None,
    status: int,
) -> None:
    """Even a caller who presents the provider's own key is refused, silently."""
    caplog.set_level(logging.DEBUG)
    async with http(keyed, key) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == status
    assert_clean(response.text)
    assert_clean(caplog.text)
    assert upstream.calls == 0


async def test_rate_limit_and_capacity_errors_keep_secrets_out(
    make_proxy: MakeProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys={CALLER_KEY: "alice"},
        rate_limit=RateLimit(requests_per_second=0.001, burst=2),
        limits=Limits(max_concurrent_upstream=1),
    )
    async with http(app) as client:
        statuses: list[int] = []

        async def hold() -> None:
            body = chat_body(stream=True, fake={"gate": True, "chunks": 2})
            statuses.append((await client.post("/v1/proxy/auto", json=body)).status_code)

        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            for _ in range(1000):
                if upstream.chunks_sent:
                    break
                await anyio.sleep(0.01)
            busy = await client.post("/v1/proxy/auto", json=chat_body())
            upstream.open_gate()
        limited = await client.post("/v1/proxy/auto", json=chat_body())
    assert (busy.status_code, limited.status_code, statuses) == (503, 429, [200])
    for response in (busy, limited):
        assert_clean(response.text)
    assert_clean(caplog.text)


async def test_unreachable_upstream_keeps_secrets_out(
    make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key=SERVER_KEY, name="dead")
    app = make_proxy(providers=[dead], api_keys={CALLER_KEY: "alice"})
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 502
    assert_clean(response.text)
    assert_clean(caplog.text)


async def test_crashing_authenticate_is_a_logged_500_without_the_token(
    make_proxy: MakeProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(token: str, scope: Scope) -> str | None:
        raise RuntimeError("user store unavailable")

    caplog.set_level(logging.DEBUG)
    app = make_proxy(provider={"api_key": SERVER_KEY}, authenticate=authenticate)
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 500
    assert "Traceback" not in response.text
    assert "user store unavailable" in caplog.text  # logged for the operator
    assert_clean(response.text)
    assert_clean(caplog.text)
    assert upstream.calls == 0


def test_provider_repr_hides_the_key() -> None:
    provider = OpenAIProvider(api_key=SERVER_KEY)
    assert SERVER_KEY not in repr(provider)
    assert SERVER_KEY not in str(vars(provider).get("_static_headers"))
