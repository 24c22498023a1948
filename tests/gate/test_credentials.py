"""Temporary credentials: ``POST /v1/proxy/credentials`` and its tokens as Bearer keys.

Run against the real fake upstream over HTTP, with tokens as a hostile page would
present them: expired, for another model, tampered, re-signed, ``alg: none``, cut short,
huge, revoked. Each is refused with the right status and an OpenAI-shaped error, never a
500 and never an upstream call; a good one runs as its issuer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import jwt
import openai
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import (
    AutoProxyMiddleware,
    MemoryCache,
    OpenAIProvider,
    RateLimit,
    RedisCache,
    RequestRecord,
)
from asgi_autoproxy._gate.credentials import KEY_ID, TemporaryCredentials
from tests.conftest import CALLER_KEY, SERVER_KEY, Clock, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import running_redis

pytestmark = pytest.mark.anyio

SECRET = "test-credentials-secret-0123456789-abcdefghij"
BOB_KEY = "sk-bob-secret-key-0123456789"
CREDENTIALS = "/v1/proxy/credentials"
CHAT = "/v1/proxy/chat/completions"


def paid(upstream_url: str) -> OpenAIProvider:
    return OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="paid")


@pytest.fixture
def build(make_proxy: MakeProxy, upstream_url: str) -> MakeProxy:
    def make(**kwargs: Any) -> AutoProxyMiddleware:
        kwargs.setdefault("providers", [paid(upstream_url)])
        kwargs.setdefault("api_keys", {CALLER_KEY: "alice", BOB_KEY: "bob"})
        kwargs.setdefault("credentials_secret", SECRET)
        return make_proxy(**kwargs)

    return make


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
async def proxy(build: MakeProxy) -> AsyncIterator[AutoProxyMiddleware]:
    app = build()
    async with LifespanManager(app):
        yield app


async def issue(app: Any, key: str = CALLER_KEY, **body: Any) -> str:
    async with http(app) as client:
        response = await client.post(CREDENTIALS, json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"key"}
    token: str = response.json()["key"]
    return token


def claims(token: str) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_iat": False}
    )
    return found


def forged(payload: dict[str, Any], *, key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": KEY_ID})


def good_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "asgi_autoproxy",
        "sub": "alice",
        "models": None,
        "iat": now,
        "exp": now + 600,
        "jti": "jti-good",
    }
    return {**base, **changes}


def hs512(payload: dict[str, Any]) -> str:
    """Signed by hand: PyJWT warns (an error here) that SECRET is short for SHA-512."""
    head = b64(json.dumps({"alg": "HS512", "typ": "JWT", "kid": KEY_ID}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha512).digest()
    return f"{head}.{body}.{b64(mac)}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


# -- issuing -------------------------------------------------------------------------


async def test_issued_token_carries_caller_models_expiry_and_jti(
    proxy: AutoProxyMiddleware,
) -> None:
    before = int(time.time())
    token = await issue(proxy, model="gpt-4o-mini", ttl_seconds=60)
    found = claims(token)
    assert found["sub"] == "alice"
    assert found["models"] == ["gpt-4o-mini"]
    assert before + 60 <= found["exp"] <= int(time.time()) + 61  # rounded up, never down
    assert isinstance(found["jti"], str) and len(found["jti"]) >= 16
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    # Each one is its own credential.
    assert claims(await issue(proxy, model="gpt-4o-mini"))["jti"] != found["jti"]


@pytest.mark.parametrize(
    ("body", "models", "ttl"),
    [
        ({}, None, 600),
        ({"model": None}, None, 600),
        (
            {"model": ["gpt-4o-mini", "gpt-4o"], "ttl_seconds": 86400},
            ["gpt-4o-mini", "gpt-4o"],
            86400,
        ),
        ({"model": "gpt-4o", "ttl_seconds": 1, "logging": {"project": "x"}}, ["gpt-4o"], 1),
        ({"ttl_seconds": 30.0}, None, 30),
    ],
)
async def test_body_shapes(
    proxy: AutoProxyMiddleware, body: dict[str, Any], models: list[str] | None, ttl: int
) -> None:
    found = claims(await issue(proxy, **body))
    assert found["models"] == models
    assert found["exp"] - found["iat"] == ttl


async def test_empty_body_means_the_defaults(proxy: AutoProxyMiddleware) -> None:
    async with http(proxy) as client:
        response = await client.post(CREDENTIALS, headers=bearer(CALLER_KEY))
    assert response.status_code == 200
    assert claims(response.json()["key"])["models"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"ttl_seconds": 86401}, "ttl_seconds"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -5}, "ttl_seconds"),
        ({"ttl_seconds": "600"}, "ttl_seconds"),
        ({"ttl_seconds": True}, "ttl_seconds"),
        ({"ttl_seconds": 1.5}, "ttl_seconds"),
        ({"ttl_seconds": 10**30}, "ttl_seconds"),
        ({"model": []}, "model"),
        ({"model": 5}, "model"),
        ({"model": ["ok", 3]}, "model"),
        ({"model": [""]}, "model"),
        ({"model": "x" * 257}, "model"),
        ({"model": [f"m{i}" for i in range(33)]}, "model"),
        ({"model": {"name": "gpt-4o"}}, "model"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    proxy: AutoProxyMiddleware, body: dict[str, Any], param: str
) -> None:
    async with http(proxy) as client:
        response = await client.post(CREDENTIALS, json=body, headers=bearer(CALLER_KEY))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("raw", [b"[]", b"null", b"{", b'{"model": 1, "model": 2}', b"\xff"])
async def test_malformed_json_gets_400(proxy: AutoProxyMiddleware, raw: bytes) -> None:
    async with http(proxy) as client:
        response = await client.post(CREDENTIALS, content=raw, headers=bearer(CALLER_KEY))
    refused(response, 400, "invalid_json")


async def test_issuing_needs_a_long_lived_key(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    async with http(proxy) as client:
        missing = await client.post(CREDENTIALS, json={})
        wrong = await client.post(CREDENTIALS, json={}, headers=bearer("sk-not-a-key-000000"))
        get = await client.get(CREDENTIALS, headers=bearer(CALLER_KEY))
    refused(missing, 401, "invalid_api_key")
    refused(wrong, 401, "invalid_api_key")
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    token = await issue(proxy)
    async with http(proxy) as client:
        renewed = await client.post(CREDENTIALS, json={"ttl_seconds": 86400}, headers=bearer(token))
    refused(renewed, 403, "credential_not_allowed")
    assert upstream.calls == 0


async def test_route_is_off_without_a_secret(
    make_proxy: MakeProxy, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASGI_AUTOPROXY_CREDENTIALS_SECRET", raising=False)
    app = make_proxy(providers=[paid(upstream_url)], api_keys={CALLER_KEY: "alice"})
    async with http(app) as client:
        response = await client.post(CREDENTIALS, json={}, headers=bearer(CALLER_KEY))
    assert response.status_code == 404
    assert response.text != "" and "key" not in response.text
    with pytest.raises(RuntimeError, match="credentials_secret"):
        app.issue_credential("alice")


async def test_secret_from_the_environment(
    make_proxy: MakeProxy, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASGI_AUTOPROXY_CREDENTIALS_SECRET", SECRET)
    app = make_proxy(providers=[paid(upstream_url)], api_keys={CALLER_KEY: "alice"})
    assert claims(await issue(app))["sub"] == "alice"


def test_start_up_refusals(upstream_url: str) -> None:
    inner = object()

    def make(**kwargs: Any) -> None:
        kwargs.setdefault("providers", [paid(upstream_url)])
        AutoProxyMiddleware(inner, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="at least 32 characters"):
        make(api_keys={CALLER_KEY: "a"}, credentials_secret="short")
    with pytest.raises(ValueError, match="allow_anonymous"):
        make(allow_anonymous=True, credentials_secret=SECRET)
    with pytest.raises(ValueError, match="pass-through"):
        make(providers=[OpenAIProvider(base_url=upstream_url)], credentials_secret=SECRET)
    with pytest.raises(ValueError, match="needs credentials_secret"):
        make(api_keys={CALLER_KEY: "a"}, credentials_denylist=True)
    with pytest.raises(ValueError, match="pass a cache"):
        make(
            api_keys={CALLER_KEY: "a"},
            credentials_secret=SECRET,
            credentials_denylist=True,
            cache=None,
        )


# -- using a token -------------------------------------------------------------------


async def test_token_runs_as_its_issuer_and_never_goes_upstream(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    token = await issue(proxy, model="gpt-4o-mini")
    async with http(proxy) as client:
        response = await client.post(CHAT, json=chat_body("hi"), headers=bearer(token))
        streamed = await client.post(
            "/v1/proxy/auto", json=chat_body("hi", stream=True), headers=bearer(token)
        )
        models = await client.get("/v1/proxy/models", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert models.status_code == 200
    for recorded in upstream.requests:
        assert recorded.headers["authorization"] == f"Bearer {SERVER_KEY}"
        assert token not in repr(recorded.header_list) and token.encode() not in recorded.body


async def test_only_only_named_models_with_403_naming_them(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    token = await issue(proxy, model=["gpt-4o-mini", "gpt-4o"])
    async with http(proxy) as client:
        for path in ("/v1/proxy/auto", CHAT):
            response = await client.post(path, json=chat_body(model="o3"), headers=bearer(token))
            error = refused(response, 403, "model_not_allowed")
            assert error["type"] == "permission_error" and error["param"] == "model"
            assert "'gpt-4o-mini'" in error["message"] and "'gpt-4o'" in error["message"]
        completion = await client.post(
            "/v1/proxy/completions",
            json={"model": "gpt-3.5-turbo-instruct", "prompt": "x"},
            headers=bearer(token),
        )
        refused(completion, 403, "model_not_allowed")
    assert upstream.calls == 0


async def test_a_remembered_cache_plan_does_not_skip_the_model_check(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    """Two tokens of one issuer share its cache scope: the one limited to another model
    must not get the other's answer from the cache (nor its remembered plan)."""
    any_model = await issue(proxy)
    only_mini = await issue(proxy, model="gpt-4o-mini")
    body = chat_body("remembered plan", model="gpt-4o", temperature=0)
    async with http(proxy) as client:
        first = await client.post(CHAT, json=body, headers=bearer(any_model))
        second = await client.post(CHAT, json=body, headers=bearer(any_model))
        other = await client.post(CHAT, json=body, headers=bearer(only_mini))
    assert first.headers["x-bt-cached"] == "MISS" and second.headers["x-bt-cached"] == "HIT"
    refused(other, 403, "model_not_allowed")
    assert "x-bt-cached" not in other.headers


async def test_temporary_credentials_share_their_issuers_entries_among_themselves(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    """A token runs in its issuer's cache scope: every token of one issuer reads the
    same entries (bound to a secret derived from the server secret and the issuer id).
    Entries stay bound to the credential (issue 16), so the issuer's long-lived key,
    another credential, keeps its own, as a second key of one caller id does."""
    body = chat_body("scope of the issuer", temperature=0)
    alice_token = await issue(proxy)
    alice_second_token = await issue(proxy)
    bob_token = await issue(proxy, key=BOB_KEY)
    assert alice_token != alice_second_token
    async with http(proxy) as client:
        by_key = await client.post(CHAT, json=body, headers=bearer(CALLER_KEY))
        by_token = await client.post(CHAT, json=body, headers=bearer(alice_token))
        again = await client.post(CHAT, json=body, headers=bearer(alice_token))
        by_second = await client.post(CHAT, json=body, headers=bearer(alice_second_token))
        by_bob = await client.post(CHAT, json=body, headers=bearer(bob_token))
    assert by_key.headers["x-bt-cached"] == "MISS"
    assert by_token.headers["x-bt-cached"] == "MISS"
    assert again.headers["x-bt-cached"] == "HIT"
    assert by_second.headers["x-bt-cached"] == "HIT"  # another token of the same issuer
    assert by_second.content == by_token.content
    assert by_bob.headers["x-bt-cached"] == "MISS"  # another caller: its own entries
    assert upstream.calls == 3


async def test_rate_limit_is_the_issuers(build: MakeProxy, upstream: FakeUpstream) -> None:
    app = build(rate_limit=RateLimit(requests_per_second=0.001, burst=3))
    token = await issue(app)  # the first of alice's three
    bob_token = await issue(app, key=BOB_KEY)
    async with http(app) as client:
        assert (await client.post(CHAT, json=chat_body(), headers=bearer(token))).status_code == 200
        ok = await client.post(CHAT, json=chat_body(), headers=bearer(CALLER_KEY))
        assert ok.status_code == 200
        over = await client.post(CHAT, json=chat_body(), headers=bearer(token))
        bob = await client.post(CHAT, json=chat_body(), headers=bearer(bob_token))
    assert over.status_code == 429 and "retry-after" in over.headers
    assert bob.status_code == 200


async def test_expired_token_gets_401(proxy: AutoProxyMiddleware, upstream: FakeUpstream) -> None:
    past = int(time.time()) - 10
    token = forged(good_claims(iat=past - 600, exp=past))
    async with http(proxy) as client:
        response = await client.post(CHAT, json=chat_body(), headers=bearer(token))
    error = refused(response, 401, "credential_expired")
    assert "expired" in error["message"] and "new one" in error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert upstream.calls == 0


def test_expiry_follows_the_clock() -> None:
    clock = Clock(now=2_000_000_000.0)
    credentials = TemporaryCredentials(SECRET, clock=clock)
    token = credentials.issue("alice", models=None, ttl_seconds=60)
    assert credentials.decode(token).caller_id == "alice"
    clock.now += 59
    assert credentials.decode(token).expires_at == 2_000_000_060
    clock.now += 1
    with pytest.raises(Exception, match="expired") as caught:
        credentials.decode(token)
    assert getattr(caught.value, "status", None) == 401


def test_a_token_lasts_at_least_its_ttl() -> None:
    clock = Clock(now=2_000_000_000.9)
    credentials = TemporaryCredentials(SECRET, clock=clock)
    token = credentials.issue("alice", models=None, ttl_seconds=1)
    clock.now += 1.0  # a whole second later: still good, though the clock's second ended
    assert credentials.decode(token).caller_id == "alice"


def tampered_tokens(good: str) -> dict[str, str]:
    head, body, signature = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": KEY_ID}).encode())
    widened = b64(json.dumps({**payload, "sub": "bob", "models": None}).encode())
    return {
        "payload edited, old signature": f"{head}.{widened}.{signature}",
        "signature flipped": f"{head}.{body}.{flipped}",
        "alg none": f"{none_head}.{widened}.",
        "alg none with signature": f"{none_head}.{widened}.{signature}",
        "HS512 with the same secret": hs512(good_claims()),
        "HS256 with another secret": forged(good_claims(), key="another-secret-" + "x" * 40),
        "truncated in the signature": good[:-5],
        "truncated in the payload": good[: len(head) + 10],
        "no signature part": f"{head}.{body}",
        "huge": f"{head}.{b64(b'{' + b' ' * 15000 + b'}')}.{signature}",
        "huge claims": forged(good_claims(pad="x" * 20000)),
        "wrong issuer": forged(good_claims(iss="someone-else")),
        "no jti": forged({k: v for k, v in good_claims().items() if k != "jti"}),
        "sub not a string": forged(good_claims(sub=42)),
        "models not a list": forged(good_claims(models="gpt-4o")),
        "exp not a number": forged(good_claims(exp="tomorrow")),
        "header not json": f"eyJ{b64(b'garbage')}.{body}.{signature}",
    }


async def test_tampered_and_malformed_tokens_get_401(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    good = await issue(proxy, model="gpt-4o-mini")
    async with http(proxy) as client:
        for name, token in tampered_tokens(good).items():
            for path, method in (
                (CHAT, "POST"),
                ("/v1/proxy/models", "GET"),
                (CREDENTIALS, "POST"),
            ):
                response = await client.request(
                    method, path, json=chat_body(), headers=bearer(token)
                )
                assert response.status_code == 401, (name, path, response.text)
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
                assert token not in response.text
    assert upstream.calls == 0


async def test_real_openai_sdk_with_a_token(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream
) -> None:
    token = await issue(proxy, model="gpt-4o-mini")
    async with openai.AsyncOpenAI(
        base_url="http://t/v1/proxy",
        api_key=token,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy)),
        max_retries=0,
    ) as sdk:
        reply = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError, match="gpt-4o-mini"):
            await sdk.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )


async def test_issue_credential_in_process(proxy: AutoProxyMiddleware) -> None:
    token = proxy.issue_credential("user-7", model=["gpt-4o-mini"], ttl_seconds=120)
    found = claims(token)
    assert (found["sub"], found["models"], found["exp"] - found["iat"]) == (
        "user-7",
        ["gpt-4o-mini"],
        120,
    )
    async with http(proxy) as client:
        response = await client.post(CHAT, json=chat_body(), headers=bearer(token))
    assert response.status_code == 200
    with pytest.raises(ValueError, match="ttl_seconds"):
        proxy.issue_credential("user-7", ttl_seconds=86401)
    with pytest.raises(ValueError, match="model"):
        proxy.issue_credential("user-7", model=[])
    with pytest.raises(ValueError, match="caller_id"):
        proxy.issue_credential("")


# -- secrets stay secret -------------------------------------------------------------


async def test_token_never_in_logs_or_records(
    build: MakeProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    records: list[RequestRecord] = []
    app = build(on_request=records.append)
    caplog.set_level(logging.DEBUG)
    token = await issue(app, model="gpt-4o-mini")
    past = int(time.time()) - 1
    expired = forged(good_claims(exp=past, iat=past - 5))
    async with http(app) as client:
        await client.post(CHAT, json=chat_body(), headers=bearer(token))
        await client.post(CHAT, json=chat_body(stream=True), headers=bearer(token))
        await client.post(CHAT, json=chat_body(model="o3"), headers=bearer(token))
        await client.post(CHAT, json=chat_body(), headers=bearer(expired))
        await client.post(CHAT, json=chat_body(), headers=bearer(token[:-3]))
        # A token pasted into x-request-id is not echoed either.
        echoed = await client.post(
            CHAT, json=chat_body(), headers={**bearer(token), "x-request-id": token[:100]}
        )
    assert token[:100] not in echoed.headers.get("x-request-id", "")
    jti = claims(token)["jti"]
    used = [r for r in records if r.credential_id is not None]
    assert {r.credential_id for r in used} == {jti}
    assert {r.caller_id for r in used} == {"alice"}
    assert [r.status for r in used] == [200, 200, 403, 200]
    text = " ".join([repr(records), *(r.getMessage() + repr(r.__dict__) for r in caplog.records)])
    for secret in (token, token[:-3], expired, SECRET, SERVER_KEY, CALLER_KEY):
        assert secret not in text


# -- revocation ----------------------------------------------------------------------


async def test_revoked_token_gets_401_others_still_work(
    build: MakeProxy, upstream: FakeUpstream
) -> None:
    app = build(credentials_denylist=True)
    revoked, kept = await issue(app), await issue(app)
    jti = await app.revoke_credential(revoked)
    assert jti == claims(revoked)["jti"]
    async with http(app) as client:
        refused(
            await client.post(CHAT, json=chat_body(), headers=bearer(revoked)),
            401,
            "credential_revoked",
        )
        ok = await client.post(CHAT, json=chat_body(), headers=bearer(kept))
        assert ok.status_code == 200
        await app.revoke_credential(claims(kept)["jti"])  # by jti alone
        refused(
            await client.post(CHAT, json=chat_body(), headers=bearer(kept)),
            401,
            "credential_revoked",
        )
    with pytest.raises(ValueError, match="signature"):
        await app.revoke_credential(forged(good_claims(), key="another-secret-" + "y" * 40))


async def test_revoking_needs_the_denylist(proxy: AutoProxyMiddleware) -> None:
    with pytest.raises(RuntimeError, match="credentials_denylist=True"):
        await proxy.revoke_credential(await issue(proxy))


class BrokenStore(MemoryCache):
    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("store down")


async def test_denylist_that_cannot_answer_fails_closed(
    build: MakeProxy, upstream: FakeUpstream
) -> None:
    app = build(credentials_denylist=True, cache=BrokenStore())
    token = await issue(app)
    async with http(app) as client:
        response = await client.post(CHAT, json=chat_body(), headers=bearer(token))
        by_key = await client.post(CHAT, json=chat_body(), headers=bearer(CALLER_KEY))
    refused(response, 503, "credential_check_unavailable")
    assert response.headers["retry-after"] == "1"
    assert by_key.status_code == 200  # long-lived keys never ask the denylist
    assert upstream.calls == 1


async def test_revocation_holds_across_instances_through_redis(
    upstream_url: str, upstream: FakeUpstream
) -> None:
    with running_redis() as server:
        apps = [
            AutoProxyMiddleware(
                object(),  # type: ignore[arg-type]
                providers=[paid(upstream_url)],
                api_keys={CALLER_KEY: "alice"},
                credentials_secret=SECRET,
                credentials_denylist=True,
                cache=RedisCache(server.url, timeout=2),
            )
            for _ in range(2)
        ]
        try:
            token = apps[0].issue_credential("alice")
            async with http(apps[1]) as client:
                before = await client.post(CHAT, json=chat_body(), headers=bearer(token))
                assert before.status_code == 200, before.text
                await apps[0].revoke_credential(token)
                after = await client.post(CHAT, json=chat_body(), headers=bearer(token))
            refused(after, 401, "credential_revoked")
            # Redis saw a hash, never the token nor its jti.
            raw = server_dump(server.url)
            assert token not in raw and claims(token)["jti"] not in raw
        finally:
            with anyio.CancelScope(shield=True):
                for app in apps:
                    await app.aclose()


def server_dump(url: str) -> str:
    import redis

    with redis.Redis.from_url(url) as client:
        return repr([(key, client.get(key)) for key in client.scan_iter()])
