"""Every way a request can be wrong: an OpenAI-shaped error with the right status, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_autoproxy import AutoProxyMiddleware, Limits, OpenAIProvider
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is ``status`` with ``{"error": {message, type, param, code}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "Traceback" not in response.text
    return dict(error)


async def post_raw(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post(
        "/v1/proxy/auto", content=content, headers={"content-type": "application/json"}
    )


# -- the body -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"model": "gpt-4o",', b"\xff\xfe\x00", b"nul"],
    ids=["broken-object", "truncated", "not-utf8", "bare-word"],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream, content: bytes
) -> None:
    error = assert_openai_error(await post_raw(client, content), 400)
    assert error["code"] == "invalid_json"
    assert upstream.calls == 0


async def test_empty_body_is_400(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    error = assert_openai_error(await post_raw(client, b""), 400)
    assert "model" in error["message"]
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "payload",
    [[chat_body()], "gpt-4o", 42, None, True],
    ids=["array", "string", "number", "null", "bool"],
)
async def test_body_that_is_not_an_object_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream, payload: Any
) -> None:
    error = assert_openai_error(await post_raw(client, json.dumps(payload).encode()), 400)
    assert "JSON object" in error["message"]
    assert upstream.calls == 0


async def test_missing_model_is_400(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await client.post(
        "/v1/proxy/auto", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    error = assert_openai_error(response, 400)
    assert error["param"] == "model"
    assert "model" in error["message"]
    assert upstream.calls == 0


@pytest.mark.parametrize("model", [None, 4, 1.5, True, ["gpt-4o"], {"name": "gpt-4o"}])
async def test_non_string_model_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream, model: Any
) -> None:
    error = assert_openai_error(
        await client.post("/v1/proxy/auto", json=chat_body(model=model)), 400
    )
    assert error["param"] == "model"
    assert upstream.calls == 0


@pytest.mark.parametrize("model", ["", "   "])
async def test_empty_model_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream, model: str
) -> None:
    error = assert_openai_error(
        await client.post("/v1/proxy/auto", json=chat_body(model=model)), 400
    )
    assert error["param"] == "model"
    assert upstream.calls == 0


@pytest.mark.parametrize("stream", ["yes", 1, 0, [], {}])
async def test_stream_that_is_not_a_boolean_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream, stream: Any
) -> None:
    response = await client.post("/v1/proxy/auto", json=chat_body(stream=stream))
    error = assert_openai_error(response, 400)
    assert error["param"] == "stream"
    assert upstream.calls == 0


async def test_sibling_routes_validate_the_body_too(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    for path in ("/v1/proxy/chat/completions", "/v1/proxy/completions"):
        response = await client.post(path, content=b"[]")
        assert_openai_error(response, 400)
    assert upstream.calls == 0


# -- the size limit -------------------------------------------------------------------


async def test_declared_content_length_over_limit_is_413(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_body_size=1000))
    body = json.dumps(chat_body("x" * 2000)).encode()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/v1/proxy/auto", content=body, headers=AUTH)
        small = await http.post("/v1/proxy/auto", json=chat_body("x" * 100), headers=AUTH)
    error = assert_openai_error(response, 413)
    assert "1000 bytes" in error["message"]
    assert small.status_code == 200
    assert upstream.calls == 1
    await app.aclose()


async def test_streamed_body_without_length_over_limit_is_413(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_body_size=1000))

    async def chunked_body() -> AsyncIterator[bytes]:
        yield b'{"model": "gpt-4o", "messages": [], "pad": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        request = http.build_request("POST", "/v1/proxy/auto", content=chunked_body(), headers=AUTH)
        assert "content-length" not in request.headers
        response = await http.send(request)
    assert_openai_error(response, 413)
    assert upstream.calls == 0
    await app.aclose()


class CountingReceive:
    """An endless chunked request body that counts how many chunks were pulled."""

    def __init__(self, chunk_size: int, available: int) -> None:
        self.chunk = b"x" * chunk_size
        self.available = available
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        self.pulled += 1
        more = self.pulled < self.available
        return {"type": "http.request", "body": self.chunk, "more_body": more}


def http_scope(
    path: str = "/v1/proxy/auto", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [(b"authorization", f"Bearer {CALLER_KEY}".encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def call_app(
    app: AutoProxyMiddleware, scope: dict[str, Any], receive: Any
) -> tuple[int, dict[str, str], bytes]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    with anyio.fail_after(10):
        await app(scope, receive, send)
    start, *bodies = messages
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in bodies)


async def test_reading_stops_at_the_limit(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    app = make_proxy(limits=Limits(max_body_size=1000))
    receive = CountingReceive(chunk_size=100, available=1_000_000)
    status, _, body = await call_app(app, http_scope(), receive)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # 10 chunks make exactly the limit; the 11th passes it and nothing more is read.
    assert receive.pulled == 11
    assert upstream.calls == 0
    await app.aclose()


async def test_declared_length_over_limit_reads_nothing(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_body_size=1000))
    headers = [
        (b"authorization", f"Bearer {CALLER_KEY}".encode()),
        (b"content-length", b"5000"),
    ]
    receive = CountingReceive(chunk_size=100, available=50)
    status, _, _ = await call_app(app, http_scope(headers=headers), receive)
    assert status == 413
    assert receive.pulled == 0
    assert upstream.calls == 0
    await app.aclose()


async def test_invalid_content_length_is_400(make_proxy: MakeProxy) -> None:
    app = make_proxy()
    headers = [(b"content-length", b"lots")]
    status, _, body = await call_app(app, http_scope(headers=headers), CountingReceive(10, 1))
    assert status == 400
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    await app.aclose()


def test_max_body_size_must_be_positive(upstream_url: str) -> None:
    provider = OpenAIProvider(base_url=upstream_url)
    with pytest.raises(ValueError, match="max_body_size"):
        AutoProxyMiddleware(lambda *a: None, providers=[provider], limits=Limits(max_body_size=0))


# -- methods and credentials ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/proxy/auto", "POST"),
        ("PUT", "/v1/proxy/auto", "POST"),
        ("DELETE", "/v1/proxy/chat/completions", "POST"),
        ("GET", "/v1/proxy/completions", "POST"),
        ("POST", "/v1/proxy/models", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, upstream: FakeUpstream, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    error = assert_openai_error(response, 405)
    assert response.headers["allow"] == allow
    assert method in error["message"]
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer "}, {"authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "empty-bearer", "basic"],
)
async def test_missing_caller_key_for_pass_through_provider_is_401(
    make_proxy: MakeProxy, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    app = make_proxy()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body(), headers=headers)
    error = assert_openai_error(response, 401)
    assert error["type"] == "authentication_error"
    assert "'fake'" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert upstream.calls == 0
    await app.aclose()


async def test_server_key_provider_needs_no_caller_key(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(provider={"api_key": SERVER_KEY}, allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body())
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
    await app.aclose()


# -- routing --------------------------------------------------------------------------


def unsupported(model: str) -> str:
    return f"Unsupported model {model} (must be chat or completion for /auto endpoint)"


@pytest.mark.parametrize(
    "model", ["text-embedding-3-small", "text-embedding-ada-002", "gemini-embedding-001"]
)
async def test_embedding_model_is_unsupported_on_auto(
    client: httpx.AsyncClient, upstream: FakeUpstream, model: str
) -> None:
    for body in (chat_body(model=model), {"model": model, "prompt": "p"}, {"model": model}):
        error = assert_openai_error(await client.post("/v1/proxy/auto", json=body), 400)
        assert error["message"] == unsupported(model)
        assert error["param"] == "model"
    assert upstream.calls == 0


async def test_unknown_model_without_messages_or_prompt_is_unsupported(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    response = await client.post("/v1/proxy/auto", json={"model": "my-llm", "input": "hi"})
    error = assert_openai_error(response, 400)
    assert error["message"] == unsupported("my-llm")
    assert upstream.calls == 0


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            {"model": "my-llm", "messages": [{"role": "user", "content": "hi"}]},
            "/v1/chat/completions",
        ),
        ({"model": "my-llm", "prompt": "Once upon"}, "/v1/completions"),
    ],
    ids=["messages-to-chat", "prompt-to-completions"],
)
async def test_unknown_model_is_routed_by_payload_shape(
    client: httpx.AsyncClient, upstream: FakeUpstream, body: dict[str, Any], path: str
) -> None:
    response = await client.post("/v1/proxy/auto", json=body)
    assert response.status_code == 200
    [seen] = upstream.requests
    assert seen.path == path
    assert seen.json == body


async def test_catalog_model_with_the_wrong_field_is_400(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    response = await client.post("/v1/proxy/auto", json={"model": "gpt-4o", "prompt": "hi"})
    error = assert_openai_error(response, 400)
    assert error["param"] == "messages"
    assert "gpt-4o" in error["message"]
    assert upstream.calls == 0


async def test_no_matching_provider_is_400_naming_the_model(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str
) -> None:
    providers = [
        OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, models=["gpt-*"], name="gpt"),
        OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, models=["llama*"], name="local"),
    ]
    app = make_proxy(providers=providers, allow_anonymous=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body(model="claude-3-5-haiku"))
        served = await http.post("/v1/proxy/auto", json=chat_body(model="gpt-4o"))
    error = assert_openai_error(response, 400)
    assert "claude-3-5-haiku" in error["message"]
    assert error["param"] == "model"
    assert served.status_code == 200
    assert upstream.calls == 1
    await app.aclose()


async def test_user_catalog_decides_the_endpoint(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(
        model_catalog={
            "acme-writer": "completion",
            "acme-chat-*": "chat",
            "gpt-4o-mini": "completion",
        }
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=AUTH
    ) as http:
        # Both fields present: only the catalog can decide.
        both = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
        writer = await http.post("/v1/proxy/auto", json={"model": "acme-writer", **both})
        chat = await http.post("/v1/proxy/auto", json={"model": "acme-chat-7b", **both})
        # A user entry overrides the built-in one.
        overridden = await http.post("/v1/proxy/auto", json={"model": "gpt-4o-mini", "prompt": "p"})
        builtin = await http.post("/v1/proxy/auto", json={"model": "gpt-4o", **both})
    assert [r.status_code for r in (writer, chat, overridden, builtin)] == [200] * 4
    assert [r.path for r in upstream.requests] == [
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chat/completions",
    ]
    await app.aclose()


async def test_user_catalog_can_mark_a_model_as_embedding(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(model_catalog={"acme-embed": "embedding"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=AUTH
    ) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body(model="acme-embed"))
    assert assert_openai_error(response, 400)["message"] == unsupported("acme-embed")
    assert upstream.calls == 0
    await app.aclose()


def test_bad_catalog_flavor_fails_at_start(upstream_url: str) -> None:
    provider = OpenAIProvider(base_url=upstream_url)
    with pytest.raises(ValueError, match="acme"):
        AutoProxyMiddleware(
            lambda *a: None,
            providers=[provider],
            model_catalog={"acme": "image"},
        )


# -- no input produces a 500 ----------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_messages = st.lists(
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=20)}),
    min_size=1,
    max_size=2,
)
_request_objects = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o", "davinci-002", "my-llm", "text-embedding-3-small", ""])
        | _json_scalars,
        "messages": _messages,
        "prompt": st.text(max_size=20),
        "stream": st.booleans() | _json_scalars,
        "temperature": _json_values,
    },
)
_bodies = (
    st.binary(max_size=64)
    | _json_values.map(lambda v: json.dumps(v).encode())
    | _request_objects.map(lambda v: json.dumps(v).encode())
)


@settings(
    max_examples=60,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=_bodies, path=st.sampled_from(["/v1/proxy/auto", "/v1/proxy/chat/completions"]))
def test_no_body_makes_a_500(upstream_url: str, body: bytes, path: str) -> None:
    async def post() -> httpx.Response:
        app = AutoProxyMiddleware(
            inner_app(), providers=[OpenAIProvider(base_url=upstream_url, name="fake")]
        )
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await http.post(path, content=body, headers=AUTH)
        finally:
            await app.aclose()

    response = anyio.run(post)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)
