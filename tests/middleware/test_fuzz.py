"""Property-based fuzzing of every served route against the real fake upstream.

Random bytes, random JSON, wrong types in known fields, odd headers and odd methods.
Whatever comes in: never a 500, never a traceback, never a secret, never a hang, and
every error carries OpenAI's four fields (on the Anthropic route, inside Anthropic's
envelope).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, Limits, OpenAIProvider
from tests.conftest import CALLER_KEY, SERVER_KEY, MakeProxy
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROUTES = [
    "/v1/proxy/auto",
    "/v1/proxy/chat/completions",
    "/v1/proxy/completions",
    "/v1/proxy/models",
    "/v1/proxy/embeddings",
    "/v1/proxy/moderations",
    "/v1/proxy/responses",
    "/v1/proxy/anthropic/v1/messages",
    "/v1/proxy/anthropic/messages",
    "/v1/proxy/credentials",
]
CREDENTIALS_SECRET = "fuzz-credentials-secret-0123456789-abcdefgh"
SECRETS = (SERVER_KEY, CALLER_KEY, CREDENTIALS_SECRET)
AUTH = (b"authorization", f"Bearer {CALLER_KEY}".encode())


@pytest.fixture
async def proxy(
    make_proxy: MakeProxy, upstream_url: str, claude_url: str
) -> AsyncIterator[AutoProxyMiddleware]:
    provider = OpenAIProvider(base_url=upstream_url, api_key=SERVER_KEY, name="paid")
    claude = AnthropicProvider(base_url=claude_url, api_key=SERVER_KEY, name="claude")
    yield make_proxy(
        providers=[claude, provider],
        api_keys={CALLER_KEY: "fuzzer"},
        credentials_secret=CREDENTIALS_SECRET,
        limits=Limits(max_body_size=64 * 1024, max_json_depth=16),
        timeout=5,
    )


async def send(
    app: AutoProxyMiddleware,
    method: str,
    path: str,
    *,
    content: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with anyio.fail_after(15):  # never a hang
            request = client.build_request(method, path, content=content)
            request.headers = httpx.Headers([AUTH] if headers is None else headers)
            return await client.send(request)


def check(response: httpx.Response, *, method: str = "POST") -> None:
    assert response.status_code != 500, response.text
    assert response.status_code < 600
    text = response.text
    assert "Traceback" not in text
    for secret in SECRETS:
        assert secret not in text
        assert secret not in repr(response.headers.raw)
    if response.status_code >= 400 and method != "HEAD":  # HEAD answers carry no body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12).filter(lambda k: k != "fake"), inner, max_size=4)
    ),
    max_leaves=25,
)
models = st.sampled_from(
    [
        "gpt-4o-mini",
        "gpt-3.5-turbo-instruct",
        "o3-pro",  # served only by /responses: chat requests for it are translated
        "gpt-5.3-codex",
        "text-embedding-3-small",
        "omni-moderation-latest",
        "claude-sonnet-4-5",
        "http://evil.invalid/x",
        "",
        " ",
        "../../x",
        "\u0000",
        "x" * 300,
    ]
) | st.text(max_size=40)
known_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": models | json_values,
        "messages": json_values
        | st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "bogus"]) | json_values},
                optional={"content": json_values},
            ),
            max_size=3,
        ),
        "prompt": json_values,
        "input": json_values,
        "max_tokens": json_values,
        "previous_response_id": json_values,
        "store": json_values,
        "stream": st.booleans() | json_values,
        "temperature": st.sampled_from([0, 0.0, 1, -1, 1e308]) | json_values,
        "seed": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "n": json_values,
        "stream_options": json_values,
    },
)
header_names = st.sampled_from(
    [
        "x-bt-use-cache",
        "x-bt-cache-ttl",
        "cache-control",
        "content-type",
        "content-length",
        "x-request-id",
        "authorization",
        "x-api-key",
        "host",
        "cookie",
        "x-bt-org-name",
        "anthropic-version",
        "anthropic-beta",
        "connection",
        "transfer-encoding",
    ]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
odd_values = st.sampled_from(
    [
        "",
        " ",
        "inf",
        "-inf",
        "nan",
        "1e999",
        "\u00b2",
        "max-age=\u00b2",
        "max-age=99999999999999999999",
        "no-cache, no-store, max-age=-1",
        "always",
        "NEVER",
        "-1",
        "0",
        "Bearer",
        "Bearer ",
        "Basic " + CALLER_KEY,
        "bearer " + CALLER_KEY,
        "Bearer " + CALLER_KEY,
    ]
) | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
header_lists = st.lists(
    st.tuples(header_names.map(str.encode), odd_values.map(lambda v: v.encode("latin-1"))),
    max_size=12,
)


@FUZZ
@given(path=st.sampled_from(ROUTES), body=st.binary(max_size=2048))
async def test_random_bytes(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, path: str, body: bytes
) -> None:
    check(await send(proxy, "POST", path, content=body))


@FUZZ
@given(path=st.sampled_from(ROUTES), value=json_values)
async def test_random_json(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, path: str, value: Any
) -> None:
    check(await send(proxy, "POST", path, content=json.dumps(value).encode()))


@FUZZ
@given(path=st.sampled_from(ROUTES), payload=known_fields)
async def test_wrong_types_in_known_fields(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, path: str, payload: dict[str, Any]
) -> None:
    check(await send(proxy, "POST", path, content=json.dumps(payload).encode()))


@FUZZ
@given(
    path=st.sampled_from(ROUTES),
    headers=header_lists,
    keep_auth=st.booleans(),
    payload=known_fields,
)
async def test_odd_headers(
    proxy: AutoProxyMiddleware,
    upstream: FakeUpstream,
    path: str,
    headers: list[tuple[bytes, bytes]],
    keep_auth: bool,
    payload: dict[str, Any],
) -> None:
    sent = [AUTH, *headers] if keep_auth else headers
    body = json.dumps({"model": "gpt-4o-mini", "messages": [], **payload}).encode()
    response = await send(proxy, "POST", path, content=body, headers=sent)
    check(response)
    presented_any = any(name in (b"authorization", b"x-api-key") for name, _ in sent)
    if not presented_any:
        assert response.status_code in (401, 405, 431)


@FUZZ
@given(
    path=st.sampled_from(ROUTES),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
    body=st.binary(max_size=64),
)
async def test_odd_methods(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, path: str, method: str, body: bytes
) -> None:
    response = await send(proxy, method, path, content=body)
    check(response, method=method)
    expected = "GET" if path.endswith("/models") else "POST"  # /credentials: POST
    if method != expected:
        assert response.status_code == 405
        assert response.headers["allow"] == expected


@FUZZ
@given(path=st.sampled_from(ROUTES), token=odd_values)
async def test_only_the_right_key_gets_in(
    proxy: AutoProxyMiddleware,
    upstream: FakeUpstream,
    claude: FakeAnthropic,
    path: str,
    token: str,
) -> None:
    headers = [(b"authorization", token.encode("latin-1")), (b"x-api-key", token.encode("latin-1"))]
    method = "GET" if path.endswith("/models") else "POST"
    body = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()
    calls_before = upstream.calls, len(claude.requests)
    response = await send(proxy, method, path, content=body, headers=headers)
    check(response)
    scheme, _, rest = token.strip().partition(" ")
    valid = token.strip() == CALLER_KEY or (
        scheme.lower() == "bearer" and rest.strip() == CALLER_KEY
    )
    if not valid:
        assert response.status_code == 401
        assert (upstream.calls, len(claude.requests)) == calls_before


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_GOOD_CLAIMS = {
    "iss": "asgi_autoproxy",
    "sub": "fuzzer",
    "models": ["gpt-4o-mini"],
    "iat": 1_900_000_000,
    "exp": 4_000_000_000,
    "jti": "fuzz-jti",
}
headers_json = st.fixed_dictionaries(
    {
        "alg": st.sampled_from(["none", "None", "NONE", "HS512", "HS384", "RS256", "ES256"])
        | st.sampled_from(["EdDSA", "", "HS256 "])
        | json_values,
        "kid": st.just("asgi_autoproxy/v1") | json_values,
    },
    optional={"typ": json_values, "jku": st.just("http://evil.invalid/keys")},
)
claims_json = st.fixed_dictionaries(
    {}, optional={name: json_values | st.just(value) for name, value in _GOOD_CLAIMS.items()}
)


@st.composite
def malformed_tokens(draw: st.DrawFn) -> str:
    """Tokens a page could send: a good one mangled, or one forged without the secret."""
    header = _b64(json.dumps(draw(headers_json)).encode())
    payload = _b64(json.dumps(draw(claims_json)).encode())
    signature = draw(
        st.sampled_from(["", "AAAA", "c2lnbmF0dXJl"]) | st.binary(max_size=64).map(_b64)
    )
    token = f"{header}.{payload}.{signature}"
    kind = draw(st.sampled_from(["forged", "truncated", "flipped", "huge", "extra part"]))
    if kind == "truncated":
        token = token[: draw(st.integers(min_value=1, max_value=len(token) - 1))]
    elif kind == "flipped":
        at = draw(st.integers(min_value=0, max_value=len(token) - 1))
        token = token[:at] + draw(st.sampled_from("AZaz09-_.=+/!")) + token[at + 1 :]
    elif kind == "huge":
        token = f"{header}.{_b64(b'x' * draw(st.integers(12_000, 20_000)))}.{signature}"
    elif kind == "extra part":
        token += "." + signature
    return token


@FUZZ
@given(path=st.sampled_from(ROUTES), token=malformed_tokens())
async def test_malformed_temporary_credentials_get_401(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, path: str, token: str
) -> None:
    """Wrong algorithm, ``alg: none``, forged, truncated, flipped, huge: 401, never a
    500, never an upstream call, and the token is not echoed."""
    method = "GET" if path.endswith("/models") else "POST"
    body = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()
    calls_before = upstream.calls
    headers = [(b"authorization", f"Bearer {token}".encode())]
    response = await send(proxy, method, path, content=body, headers=headers)
    check(response)
    assert response.status_code == 401, response.text
    assert len(token) < 16 or token not in response.text
    assert upstream.calls == calls_before


@FUZZ
@given(payload=json_values | known_fields, ttl=json_values)
async def test_credential_requests(
    proxy: AutoProxyMiddleware, upstream: FakeUpstream, payload: Any, ttl: Any
) -> None:
    """Any body to /credentials: a key, or a 400 naming what is wrong; the key it gives
    works for just the models it names."""
    if isinstance(payload, dict):
        payload = {**payload, "ttl_seconds": ttl}
    response = await send(
        proxy, "POST", "/v1/proxy/credentials", content=json.dumps(payload).encode()
    )
    check(response)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        token = response.json()["key"]
        assert isinstance(token, str) and token.startswith("eyJ")
