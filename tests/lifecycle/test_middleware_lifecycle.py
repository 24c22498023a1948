"""The middleware's explicit lifecycle: ``async with`` or ``aclose()``, and no use after."""

from __future__ import annotations

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, chat_body, inner_app
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


def _client(app: AutoProxyMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    )


async def test_a_closed_middleware_answers_503_and_calls_nobody(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    proxy = AutoProxyMiddleware(inner_app(), providers=[OpenAIProvider(base_url=upstream_url)])
    async with proxy, _client(proxy) as client:
        served = await client.post("/v1/proxy/auto", json=chat_body())
    assert served.status_code == 200
    assert proxy.closed
    calls = upstream.calls
    async with _client(proxy) as client:
        late = await client.post("/v1/proxy/auto", json=chat_body())
        home = await client.get("/")
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "server_shutting_down"
    assert upstream.calls == calls  # no client reopened, nothing sent upstream
    assert home.status_code == 200  # the wrapped app is not the proxy's to close
    await proxy.aclose()  # a second close does nothing
    with pytest.raises(RuntimeError, match="make a new one"):
        async with proxy:
            pass
