"""Caller authentication: fail-closed start-up, 401s, api_keys, authenticate, isolation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from asgi_autoproxy._asgi import Scope
from asgi_autoproxy._gate import auth
from asgi_autoproxy._gate.auth import caller_identity
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

OTHER_KEY = "sk-other-caller-key-778899"
ROUTES = [
    ("POST", "/v1/proxy/auto"),
    ("POST", "/v1/proxy/chat/completions"),
    ("POST", "/v1/proxy/completions"),
    ("GET", "/v1/proxy/models"),
]


def http(app: AutoProxyMiddleware, key: str | None = None) -> httpx.AsyncClient:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    )


@pytest.fixture
async def keyed(make_proxy: MakeProxy) -> AsyncIterator[AutoProxyMiddleware]:
    """A server-held provider key, two accepted caller keys."""
    yield make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys={CALLER_KEY: "alice", OTHER_KEY: "bob"},
    )


async def call_route(
    app: AutoProxyMiddleware, method: str, path: str, key: str | None, **kwargs: Any
) -> httpx.Response:
    body = chat_body() if "chat" in path or "auto" in path else {"model": "m", "prompt": "p"}
    async with http(app, key) as client:
        if method == "GET":
            return await client.get(path, **kwargs)
        return await client.post(path, json=body, **kwargs)


# -- start-up ------------------------------------------------------------------------


def test_server_key_without_auth_refuses_to_start(upstream_url: str) -> None:
    provider = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="paid")
    with pytest.raises(ValueError, match=r"api_keys=.*authenticate=.*allow_anonymous=True"):
        AutoProxyMiddleware(inner_app(), providers=[provider])


def test_one_keyed_provider_among_pass_through_is_enough_to_refuse(upstream_url: str) -> None:
    providers = [
        OpenAIProvider(base_url=upstream_url, name="free"),
        OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="paid"),
    ]
    with pytest.raises(ValueError, match="'paid'"):
        AutoProxyMiddleware(inner_app(), providers=providers)


def test_the_refusal_never_shows_the_key(upstream_url: str) -> None:
    provider = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY)
    with pytest.raises(ValueError) as info:
        AutoProxyMiddleware(inner_app(), providers=[provider])
    assert SERVER_KEY not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_keys": {}}, "empty"),
        ({"api_keys": {"": "x"}}, "non-empty"),
        ({"api_keys": {" k ": "x"}}, "spaces"),
        ({"api_keys": {"k": ""}}, "caller id"),
        ({"api_keys": {"k": "a"}, "authenticate": lambda t, s: t}, "not both"),
    ],
)
def test_bad_auth_options_fail_at_start(
    upstream_url: str, kwargs: dict[str, Any], message: str
) -> None:
    provider = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY)
    with pytest.raises(ValueError, match=message):
        AutoProxyMiddleware(inner_app(), providers=[provider], **kwargs)


def test_api_keys_must_be_a_mapping(upstream_url: str) -> None:
    provider = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY)
    with pytest.raises(TypeError, match="mapping"):
        AutoProxyMiddleware(inner_app(), providers=[provider], api_keys=[CALLER_KEY])  # type: ignore[arg-type]


async def test_allow_anonymous_serves_without_a_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(provider={"api_key": SERVER_KEY}, allow_anonymous=True)
    async with http(app) as client:
        response = await client.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"


# -- 401s ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("key", [None, "sk-wrong", CALLER_KEY + "x", CALLER_KEY[:-1]])
async def test_every_route_refuses_missing_or_wrong_keys(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream, method: str, path: str, key: str | None
) -> None:
    response = await call_route(keyed, method, path, key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    if key is not None:
        assert key not in response.text
    assert upstream.calls == 0


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_serves_a_valid_key(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream, method: str, path: str
) -> None:
    response = await call_route(keyed, method, path, CALLER_KEY)
    assert response.status_code == 200


async def test_x_api_key_header_is_checked_too(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    async with http(keyed) as client:
        good = await client.post(
            "/v1/proxy/auto", json=chat_body(), headers={"x-api-key": OTHER_KEY}
        )
        bad = await client.post("/v1/proxy/auto", json=chat_body(), headers={"x-api-key": "nope"})
    assert (good.status_code, bad.status_code) == (200, 401)


async def test_other_auth_schemes_are_not_keys(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    async with http(keyed) as client:
        response = await client.post(
            "/v1/proxy/auto", json=chat_body(), headers={"authorization": f"Basic {CALLER_KEY}"}
        )
    assert response.status_code == 401


async def test_unauthenticated_body_is_never_read(keyed: AutoProxyMiddleware) -> None:
    """A 401 comes before the body: strangers cannot make the proxy buffer megabytes."""
    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/proxy/auto",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    await keyed(scope, receive, send)
    assert sent[0]["status"] == 401
    assert received == []


# -- authenticate= ------------------------------------------------------------------


async def test_sync_authenticate_gets_token_and_scope(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    seen: list[tuple[str, str]] = []

    def authenticate(token: str, scope: Scope) -> str | None:
        seen.append((token, scope["path"]))
        return "carol" if token == CALLER_KEY else None

    app = make_proxy(provider={"api_key": SERVER_KEY}, authenticate=authenticate)
    ok = await call_route(app, "POST", "/v1/proxy/auto", CALLER_KEY)
    refused = await call_route(app, "POST", "/v1/proxy/auto", OTHER_KEY)
    assert (ok.status_code, refused.status_code) == (200, 401)
    assert seen == [(CALLER_KEY, "/v1/proxy/auto"), (OTHER_KEY, "/v1/proxy/auto")]


async def test_async_authenticate(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    async def authenticate(token: str, scope: Scope) -> str | None:
        return "dave" if token == OTHER_KEY else ""  # "" refuses like None

    app = make_proxy(provider={"api_key": SERVER_KEY}, authenticate=authenticate)
    ok = await call_route(app, "POST", "/v1/proxy/auto", OTHER_KEY)
    refused = await call_route(app, "POST", "/v1/proxy/auto", CALLER_KEY)
    assert (ok.status_code, refused.status_code) == (200, 401)


async def test_authenticate_returning_a_non_string_fails_closed(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(provider={"api_key": SERVER_KEY}, authenticate=lambda t, s: True)
    response = await call_route(app, "POST", "/v1/proxy/auto", CALLER_KEY)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert upstream.calls == 0


async def test_authenticate_also_gates_pass_through_providers(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """With no provider key, authenticate still applies, and the token it accepted is the
    one forwarded upstream."""
    app = make_proxy(authenticate=lambda token, scope: "erin" if token == CALLER_KEY else None)
    refused = await call_route(app, "POST", "/v1/proxy/auto", OTHER_KEY)
    ok = await call_route(app, "POST", "/v1/proxy/auto", CALLER_KEY)
    assert (refused.status_code, ok.status_code) == (401, 200)
    [seen] = upstream.requests
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"


async def test_pass_through_without_checks_leaves_judging_to_upstream(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    models = await call_route(app, "GET", "/v1/proxy/models", None)
    no_key = await call_route(app, "POST", "/v1/proxy/auto", None)
    any_key = await call_route(app, "POST", "/v1/proxy/auto", "whatever-key")
    # /models asks for the key too: without one it would list the configuration to anyone.
    assert (models.status_code, no_key.status_code, any_key.status_code) == (401, 401, 200)
    assert upstream.requests[0].headers["authorization"] == "Bearer whatever-key"


async def test_a_request_with_no_cache_rate_limit_or_hook_hashes_no_caller(
    make_proxy: MakeProxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's hash sits on the way to the upstream call; nothing here needs it.
    hashed: list[str | None] = []

    def counted(credential: str | None, **kwargs: Any) -> str:
        hashed.append(credential)
        return caller_identity(credential, **kwargs)

    monkeypatch.setattr(auth, "caller_identity", counted)
    app = make_proxy(cache=None)
    streamed = await call_route(app, "POST", "/v1/proxy/auto", "some-key")
    assert streamed.status_code == 200 and upstream.calls == 1
    assert hashed == []
    cached = make_proxy()  # the default memory cache files entries per caller
    assert (await call_route(cached, "POST", "/v1/proxy/auto", "some-key")).status_code == 200
    assert hashed == ["some-key"]


# -- identity and the cache -----------------------------------------------------------


async def test_authenticated_callers_do_not_share_cache_entries(
    keyed: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    body = chat_body(temperature=0)
    async with http(keyed, CALLER_KEY) as alice, http(keyed, OTHER_KEY) as bob:
        first = await alice.post("/v1/proxy/auto", json=body)
        other = await bob.post("/v1/proxy/auto", json=body)
        again = await alice.post("/v1/proxy/auto", json=body)
    assert [r.headers["x-bt-cached"] for r in (first, other, again)] == ["MISS", "MISS", "HIT"]
    assert upstream.calls == 2


async def test_keys_of_one_caller_id_do_not_share_cache_entries(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    """Entries are bound to the credential (their encryption key derives from it), so
    two keys of one caller id each have their own, in this process as in Redis."""
    app = make_proxy(
        provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "team", OTHER_KEY: "team"}
    )
    body = chat_body(temperature=0)
    async with http(app, CALLER_KEY) as old_key, http(app, OTHER_KEY) as new_key:
        first = await old_key.post("/v1/proxy/auto", json=body)
        other = await new_key.post("/v1/proxy/auto", json=body)
        again = await new_key.post("/v1/proxy/auto", json=body)
    labels = [r.headers["x-bt-cached"] for r in (first, other, again)]
    assert labels == ["MISS", "MISS", "HIT"]
    assert upstream.calls == 2


class DictBackend:
    """A plain dict store, to look at exactly what a backend receives."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.entries[key] = value

    async def delete(self, key: str) -> None:
        self.entries.pop(key, None)


async def test_backends_never_see_secrets_or_caller_ids(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    backend = DictBackend()
    app = make_proxy(
        provider={"api_key": SERVER_KEY}, api_keys={CALLER_KEY: "alice-id"}, cache=backend
    )
    async with http(app, CALLER_KEY) as client:
        first = await client.post("/v1/proxy/auto", json=chat_body(temperature=0))
        second = await client.post("/v1/proxy/auto", json=chat_body(temperature=0))
    assert second.headers["x-bt-cached"] == "HIT" and second.content == first.content
    [(key, value)] = backend.entries.items()
    for secret in (CALLER_KEY, SERVER_KEY, "alice-id"):
        assert secret not in key
        assert secret.encode() not in value
