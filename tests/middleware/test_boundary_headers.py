"""The response-header allow-list holds where the answer leaves the proxy, for every
provider: a custom provider's cookies, banners and stray headers never reach the caller,
and a header value HTTP/1.1 cannot carry is dropped instead of failing the request."""

from __future__ import annotations

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, MemoryCache
from asgi_autoproxy.providers.base import Endpoint, UpstreamRequest, UpstreamResponse
from tests.conftest import CALLER_KEY, chat_body, inner_app
from tests.faults import empty_chat_answer
from tests.servers import serve

_STRAY = [
    ("set-cookie", "session=abc; Path=/"),
    ("server", "secret-banner/1.0"),
    ("openai-organization", "org-private"),
    ("access-control-allow-origin", "*"),
    ("x-internal-debug", "1"),
]
_PASSED = [("x-ratelimit-remaining-requests", "41"), ("openai-model", "gpt-4o-mini")]


class StrayHeaderProvider:
    """A custom provider that hands back whatever headers it likes, as third parties do."""

    name = "custom"
    models = ("*",)
    endpoints: frozenset[Endpoint] = frozenset({"chat", "completion"})
    needs_caller_credential = False

    def serves(self, model: str) -> bool:
        return True

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        # Decoded as httpx decodes a UTF-8 header: outside latin-1, so not sendable as is.
        headers = [*_STRAY, *_PASSED, ("request-id", "req-\u2603"), ("x-request-id", "up-7")]
        return empty_chat_answer(request.stream, headers)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_custom_providers_headers_pass_the_allow_list_live_and_on_replay(stream: bool) -> None:
    app = AutoProxyMiddleware(
        inner_app(),
        providers=[StrayHeaderProvider()],
        api_keys={CALLER_KEY: "alice"},
        cache=MemoryCache(),
    )
    body = chat_body(temperature=0, stream=stream)
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        auth = {"authorization": f"Bearer {CALLER_KEY}"}
        live = client.post("/v1/proxy/auto", json=body, headers=auth)
        replayed = client.post("/v1/proxy/auto", json=body, headers=auth)
    assert [live.headers["x-bt-cached"], replayed.headers["x-bt-cached"]] == ["MISS", "HIT"]
    for response in (live, replayed):
        assert response.status_code == 200, response.text
        for name, value in _STRAY:  # uvicorn adds its own `server`: check the values
            assert value not in response.headers.get_list(name), name
        assert response.headers["x-bt-used-endpoint"] == "custom"
        assert "request-id" not in response.headers  # not sendable: dropped, not a 500
    assert live.headers["x-upstream-request-id"] == "up-7"
    for name, value in _PASSED:
        assert live.headers[name] == value
    assert replayed.headers["openai-model"] == "gpt-4o-mini"
