"""The extension points are small: a provider is ``name``, ``serves`` and ``send``, a cache
backend ``get`` and ``set``. Everything else is an optional capability with a default, and
an object that lacks a required member is refused when the middleware is built."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis

from asgi_autoproxy import (
    AutoProxyMiddleware,
    MemoryCache,
    OpenAIProvider,
    UpstreamRequest,
    UpstreamResponse,
    openapi_document,
)
from asgi_autoproxy._cache.backends.base import (
    CacheBackend,
    Closable,
    Encodable,
    EncryptedBackend,
    ObjectStore,
    SharedLockBackend,
)
from asgi_autoproxy._cache.store import ResponseCache
from asgi_autoproxy.providers import capabilities
from asgi_autoproxy.providers.capabilities import (
    ForwardsCallerKey,
    HoldsSecrets,
    ListsModels,
    ServesEndpoints,
)
from tests.conftest import CALLER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

HELD_KEY = "sk-minimal-held-key-0123456789"
AUTH = {"authorization": f"Bearer {CALLER_KEY}"}
PATHS = {"chat": "chat/completions", "completion": "completions"}
SCHEMA = schemathesis.openapi.from_dict(openapi_document())


class MinimalProvider:
    """Only what ``Provider`` requires: a name, ``serves`` and ``send``."""

    def __init__(self, base_url: str) -> None:
        self.name = "minimal"
        self.base_url = base_url

    def serves(self, model: str) -> bool:
        return model.startswith("gpt-")

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        upstream = client.build_request(
            "POST",
            f"{self.base_url}/{PATHS[request.endpoint]}",
            content=request.body,
            headers={"content-type": "application/json", "authorization": f"Bearer {HELD_KEY}"},
        )
        return UpstreamResponse.from_httpx(await client.send(upstream, stream=True))


class BytesProvider:
    """Answers from bytes, echoing its key in an error as careless upstreams do."""

    name = "bytes"

    def serves(self, model: str) -> bool:
        return True

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        error = {"error": {"message": f"Incorrect API key provided: {HELD_KEY}", "type": "x"}}
        return UpstreamResponse.from_bytes(
            401, json.dumps(error).encode(), [("content-type", "application/json")]
        )


class DictCache:
    """Only what ``CacheBackend`` requires: async ``get`` and ``set``."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.values[key] = value


def asgi(app: AutoProxyMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH)


# -- providers -------------------------------------------------------------------------------


def test_a_minimal_provider_has_no_optional_capability_and_gets_the_defaults() -> None:
    provider = MinimalProvider("http://upstream.invalid/v1")
    for capability in (ListsModels, ServesEndpoints, ForwardsCallerKey, HoldsSecrets):
        assert not isinstance(provider, capability), capability.__name__
    assert capabilities.listed_models(provider) == ()
    assert capabilities.endpoints(provider) == {"chat", "completion"}
    assert capabilities.needs_caller_credential(provider) is False
    assert capabilities.secrets(provider) == ()


def test_the_built_in_providers_keep_every_capability() -> None:
    provider = OpenAIProvider(
        base_url="http://upstream.invalid/v1", api_key=HELD_KEY, models=["gpt-4o", "o*"]
    )
    for capability in (ListsModels, ServesEndpoints, ForwardsCallerKey, HoldsSecrets):
        assert isinstance(provider, capability), capability.__name__
    assert capabilities.listed_models(provider) == ("gpt-4o", "o*")
    assert capabilities.secrets(provider) == (HELD_KEY,)
    assert capabilities.needs_caller_credential(provider) is False
    assert capabilities.needs_caller_credential(OpenAIProvider(base_url="http://u.invalid"))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_minimal_provider_answers_end_to_end_and_is_cached(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str, stream: bool
) -> None:
    proxy = make_proxy(providers=[MinimalProvider(upstream_url)], api_keys={CALLER_KEY: "al"})
    body = chat_body(temperature=0, stream=stream)
    async with asgi(proxy) as http:
        first = await http.post("/v1/proxy/auto", json=body)
        second = await http.post("/v1/proxy/auto", json=body)
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert response.headers["x-bt-used-endpoint"] == "minimal"
    assert [first.headers["x-bt-cached"], second.headers["x-bt-cached"]] == ["MISS", "HIT"]
    assert second.content == first.content
    assert upstream.calls == 1
    assert upstream.requests[0].headers["authorization"] == f"Bearer {HELD_KEY}"
    if not stream:
        SCHEMA["/v1/proxy/auto"]["POST"].validate_response(first)


async def test_a_minimal_provider_serves_both_endpoints_by_default(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    proxy = make_proxy(providers=[MinimalProvider(upstream_url)], api_keys={CALLER_KEY: "al"})
    async with asgi(proxy) as http:
        chat = await http.post("/v1/proxy/chat/completions", json=chat_body())
        legacy = await http.post(
            "/v1/proxy/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
        )
    assert chat.status_code == legacy.status_code == 200, (chat.text, legacy.text)
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions", "/v1/completions"]


async def test_models_and_openapi_cope_with_a_minimal_provider(
    make_proxy: MakeProxy, upstream_url: str
) -> None:
    proxy = make_proxy(providers=[MinimalProvider(upstream_url)], api_keys={CALLER_KEY: "al"})
    async with asgi(proxy) as http:
        response = await http.get("/v1/proxy/models")
    assert response.status_code == 200, response.text
    SCHEMA["/v1/proxy/models"]["GET"].validate_response(response)
    listed = {m["id"]: m["owned_by"] for m in response.json()["data"]}
    # No ``models`` to list: the catalog's models it serves are listed, and only those.
    assert listed.get("gpt-4o") == "minimal"
    assert listed and all(name.startswith("gpt-") for name in listed)


def test_a_minimal_provider_holds_its_own_key_by_default() -> None:
    """Without ``needs_caller_credential`` nothing is forwarded, so the proxy spends the
    provider's key: it asks who may, as for any built-in provider with a key."""
    with pytest.raises(ValueError, match=r"\['minimal'\] hold their own API key"):
        AutoProxyMiddleware(inner_app(), providers=[MinimalProvider("http://u.invalid/v1")])


async def test_each_optional_provider_capability_is_honoured(
    make_proxy: MakeProxy, upstream_url: str
) -> None:
    class ChatOnly(MinimalProvider):
        endpoints = frozenset({"chat"})

    class Forwarding(MinimalProvider):
        needs_caller_credential = True

    class Secretive(BytesProvider):
        secrets = HELD_KEY  # one string, not a list: still the whole key

    chat_only = make_proxy(providers=[ChatOnly(upstream_url)], api_keys={CALLER_KEY: "al"})
    forwarding = make_proxy(providers=[Forwarding(upstream_url)])  # pass-through: no api_keys
    secretive = make_proxy(providers=[Secretive()], api_keys={CALLER_KEY: "al"})
    async with asgi(chat_only) as http:
        legacy = await http.post("/v1/proxy/completions", json={"model": "gpt-x", "prompt": "a"})
    async with asgi(forwarding) as http:
        keyless = await http.post("/v1/proxy/auto", json=chat_body(), headers={"authorization": ""})
    async with asgi(secretive) as http:
        echoed = await http.post("/v1/proxy/auto", json=chat_body())
    assert legacy.status_code == 400
    assert legacy.json()["error"]["code"] == "endpoint_not_supported"
    assert keyless.status_code == 401
    assert echoed.status_code == 401
    assert HELD_KEY not in echoed.text
    assert "[redacted]" in echoed.text


class NoSend:
    name = "half"

    def serves(self, model: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("provider", "lacks"),
    [(NoSend(), "it lacks send"), (object(), "it lacks name, serves, send")],
    ids=["no-send", "nothing"],
)
def test_a_provider_missing_a_required_member_is_refused_naming_it(
    provider: object, lacks: str
) -> None:
    with pytest.raises(TypeError, match=f"does not implement the Provider protocol.*: {lacks}$"):
        AutoProxyMiddleware(inner_app(), providers=[provider], allow_anonymous=True)


# -- cache backends --------------------------------------------------------------------------


async def test_a_get_set_backend_caches(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    cache = DictCache()
    assert isinstance(cache, CacheBackend)
    for capability in (SharedLockBackend, EncryptedBackend, Closable, ObjectStore):
        assert not isinstance(cache, capability), capability.__name__
    proxy = make_proxy(cache=cache)
    body = chat_body(temperature=0)
    async with asgi(proxy) as http:
        first = await http.post("/v1/proxy/auto", json=body)
        second = await http.post("/v1/proxy/auto", json=body)
    assert [first.headers["x-bt-cached"], second.headers["x-bt-cached"]] == ["MISS", "HIT"]
    assert second.content == first.content
    assert upstream.calls == 1
    (stored,) = cache.values.values()
    assert first.json()["id"].encode() in stored  # plaintext: it did not ask for encryption
    assert ResponseCache(cache, timeout=1.5).timeout == 1.5  # may block: bounded


async def test_a_backend_that_asks_for_encryption_stores_only_sealed_values(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    class Sealed(DictCache):
        encrypt = True

    cache = Sealed()
    assert isinstance(cache, EncryptedBackend)
    proxy = make_proxy(cache=cache)
    body = chat_body(temperature=0)
    async with asgi(proxy) as http:
        first = await http.post("/v1/proxy/auto", json=body)
        second = await http.post("/v1/proxy/auto", json=body)
    assert second.headers["x-bt-cached"] == "HIT"
    (stored,) = cache.values.values()
    assert first.json()["id"].encode() not in stored


async def test_a_closable_backend_is_closed_with_the_middleware(make_proxy: MakeProxy) -> None:
    class Pooled(DictCache):
        closed = 0

        async def aclose(self) -> None:
            self.closed += 1

    cache = Pooled()
    proxy = make_proxy(cache=cache)
    await proxy.aclose()
    assert cache.closed == 1
    await make_proxy(cache=DictCache()).aclose()  # nothing to close: fine


async def test_any_object_store_keeps_objects_without_a_timeout(make_proxy: MakeProxy) -> None:
    """The fast in-process path belongs to the capability, not to ``MemoryCache``."""

    class InProcess(DictCache):
        def __init__(self) -> None:
            super().__init__()
            self.objects: dict[str, object] = {}

        def get_object(self, key: str) -> object | None:
            return self.objects.get(key)

        def set_object(self, key: str, value: Encodable, size: int, ttl: float) -> None:
            self.objects[key] = value

    assert ResponseCache(MemoryCache(), timeout=1.5).timeout is None
    cache = InProcess()
    assert ResponseCache(cache, timeout=1.5).timeout is None
    proxy = make_proxy(cache=cache)
    body = chat_body(temperature=0)
    async with asgi(proxy) as http:
        await http.post("/v1/proxy/auto", json=body)
        second = await http.post("/v1/proxy/auto", json=body)
    assert second.headers["x-bt-cached"] == "HIT"
    assert cache.values == {}  # no bytes written
    (kept,) = cache.objects.values()
    assert not isinstance(kept, bytes)


class NoSet:
    async def get(self, key: str) -> bytes | None:
        return None


@pytest.mark.parametrize(
    ("cache", "lacks"),
    [(NoSet(), "it lacks set"), ("redis://localhost", "it lacks get, set")],
    ids=["no-set", "a-url"],
)
def test_a_backend_missing_a_required_member_is_refused_naming_it(cache: Any, lacks: str) -> None:
    with pytest.raises(TypeError, match=f"does not implement CacheBackend.*: {lacks}$"):
        AutoProxyMiddleware(
            inner_app(), providers=[OpenAIProvider(base_url="http://u.invalid")], cache=cache
        )
