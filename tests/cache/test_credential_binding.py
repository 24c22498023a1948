"""Encryption bound to the credential: a full Redis dump, with every caller id and every
prompt, opens nothing; only the credential (or, for shared entries, the server secret) does.

The thief here knows the code, the endpoint, the provider names, every caller id, every
prompt and the request bodies byte for byte, and tries every way the entry key could be
made from them: the caller id or its hash as the cache scope, no credential, the caller id
in place of the credential, no server secret.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, RedisCache
from asgi_autoproxy._cache import crypto
from asgi_autoproxy._cache.keys import SHARED_CALLER, entry_key
from asgi_autoproxy._gate.auth import ANONYMOUS_CALLER, caller_identity
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer

OTHER_KEY = "sk-other-caller-key-778899"
THIRD_KEY = "sk-third-key-of-team-bob-445566"
API_KEYS = {CALLER_KEY: "alice", OTHER_KEY: "bob", THIRD_KEY: "bob"}
pytestmark = pytest.mark.anyio

PROMPTS = ["the Zanzibar question", "what is 6 x 7", "a private matter"]


def _dump(server: RedisServer, prefix: str) -> dict[bytes, bytes]:
    with redis.Redis.from_url(server.url) as raw:
        return {
            key: raw.get(key) or b""
            for key in raw.scan_iter(match=f"{prefix}*")
            if b":lock:" not in key
        }


def _guesses(body: dict[str, Any], secrets: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """Every (name, secret) a thief can make from what it knows."""
    ids = [*set(API_KEYS.values()), ANONYMOUS_CALLER, SHARED_CALLER]
    scopes = [
        *ids,
        *(caller_identity(None, authenticated=i) for i in ids),
        *(caller_identity(i) for i in ids),
    ]
    credentials: list[str | None] = [None, *ids]
    for scope, credential, secret in itertools.product(scopes, credentials, secrets):
        key = entry_key(
            endpoint="chat",
            providers="fake",
            caller=scope,
            payload=body,
            credential=credential,
            server_secret=secret,
        )
        yield key.key, key.secret


def _opened(dump: dict[bytes, bytes], guesses: Iterator[tuple[str, bytes]]) -> int:
    opened = 0
    for name, secret in guesses:
        for stored_name, value in dump.items():
            # Try every secret on every value: the names need not match for a thief.
            if crypto.unseal(secret, value, aad=name.encode()) is not None:
                opened += 1
            if stored_name.decode().endswith("{" + name + "}"):
                opened += 1  # even finding an entry's name tells which prompt was asked
    return opened


async def _ask(app: AutoProxyMiddleware, key: str | None, prompt: str) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body(prompt, temperature=0))
    assert response.status_code == 200
    return response


async def test_a_dump_with_every_caller_id_and_prompt_decrypts_nothing(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer
) -> None:
    prefix = "bound:"
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        api_keys=API_KEYS,
        cache=RedisCache(server.url, prefix=prefix, timeout=2),
    )
    for key, prompt in itertools.product(API_KEYS, PROMPTS):
        assert (await _ask(app, key, prompt)).headers["x-bt-cached"] == "MISS"
    dump = _dump(server, prefix)
    assert len(dump) == len(API_KEYS) * len(PROMPTS)  # two keys of "bob": two entries
    for prompt in PROMPTS:
        assert _opened(dump, _guesses(chat_body(prompt, temperature=0), [b""])) == 0

    # The control: with the credential itself, each caller's entries do open.
    for credential, caller_id in API_KEYS.items():
        for prompt in PROMPTS:
            key = entry_key(
                endpoint="chat",
                providers="fake",
                caller=caller_identity(credential, authenticated=caller_id),
                payload=chat_body(prompt, temperature=0),
                credential=credential,
            )
            stored = dump[f"{prefix}{{{key.key}}}".encode()]
            assert crypto.unseal(key.secret, stored, aad=key.key.encode()) is not None


@pytest.mark.parametrize("mode", ["shared", "anonymous"])
async def test_shared_entries_need_the_server_secret(
    make_proxy: MakeProxy, upstream: FakeUpstream, server: RedisServer, mode: str
) -> None:
    """Where entries are shared no credential protects them: the server's secret does."""
    prefix, secret = f"salted-{mode}:", "a-server-side-secret-9f8e7d"
    options: dict[str, Any] = (
        {"api_keys": API_KEYS, "cache_options": CacheOptions(share_across_callers=True)}
        if mode == "shared"
        else {"allow_anonymous": True}
    )
    app = make_proxy(
        provider={"api_key": SERVER_KEY},
        cache=RedisCache(server.url, prefix=prefix, timeout=2, server_secret=secret),
        **options,
    )
    callers = list(API_KEYS) if mode == "shared" else [None]
    for prompt in PROMPTS:
        first = await _ask(app, callers[0], prompt)
        again = await _ask(app, callers[-1], prompt)
        assert (first.headers["x-bt-cached"], again.headers["x-bt-cached"]) == ("MISS", "HIT")
    dump = _dump(server, prefix)
    assert len(dump) == len(PROMPTS)
    for prompt in PROMPTS:
        body = chat_body(prompt, temperature=0)
        assert _opened(dump, _guesses(body, [b"", b"guess", b"secret"])) == 0
        # With the server's secret, as the proxy itself reads them, they open.
        assert _opened(dump, _guesses(body, [secret.encode()])) == 2


def test_the_server_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASGI_AUTOPROXY_CACHE_SECRET", "from-env")
    assert RedisCache().server_secret == b"from-env"
    assert RedisCache(server_secret="given").server_secret == b"given"
    monkeypatch.delenv("ASGI_AUTOPROXY_CACHE_SECRET")
    assert RedisCache().server_secret is None
