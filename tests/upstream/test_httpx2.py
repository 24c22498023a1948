"""An ``httpx2.AsyncClient`` as ``http_client=``, and providers that use httpx2: the same
answers as with httpx, every upstream fault a clear 502/504 (never a 500), and the
middleware never closes the client it was given."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import httpx2
import pytest

from asgi_autoproxy import AutoProxyMiddleware, UpstreamRequest, UpstreamResponse
from asgi_autoproxy.providers.base import HTTPProvider
from tests.conftest import CALLER_KEY, MakeProxy, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.fault_upstream import FaultUpstream, refused_url
from tests.faults import (
    FAST_TIMEOUT,
    asgi_client,
    check_outcome,
    expected,
    fault_body,
    faulty_proxy,
)
from tests.upstream.test_faults import CASES, assert_nothing_cached

pytestmark = pytest.mark.anyio


def fast_httpx2_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(
            connect=FAST_TIMEOUT.connect,
            read=FAST_TIMEOUT.read,
            write=FAST_TIMEOUT.write,
            pool=FAST_TIMEOUT.pool,
        )
    )


@pytest.fixture
async def own_client() -> AsyncIterator[httpx2.AsyncClient]:
    async with fast_httpx2_client() as client:
        yield client


async def test_httpx2_client_carries_whole_and_streamed_answers(
    make_proxy: MakeProxy, upstream: FakeUpstream, own_client: httpx2.AsyncClient
) -> None:
    proxy = make_proxy(http_client=own_client)
    async with asgi_client(proxy) as http:
        whole = await http.post("/v1/proxy/auto", json=chat_body("two"))
        streamed = await http.post("/v1/proxy/auto", json=chat_body("three", stream=True))
        completion = await http.post(
            "/v1/proxy/auto", json={"model": "gpt-3.5-turbo-instruct", "prompt": "Say"}
        )
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"] == "echo #1: two"
    events = [e for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert (
        "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
        == "tok0 tok1 tok2 "
    )
    assert completion.status_code == 200, completion.text
    assert [r.path for r in upstream.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/completions",
    ]
    assert all(r.headers["authorization"] == f"Bearer {CALLER_KEY}" for r in upstream.requests)
    await proxy.aclose()
    assert not own_client.is_closed, "the app's own client is the app's to close"


@pytest.mark.parametrize(("kind", "stream"), CASES)
async def test_every_upstream_fault_through_httpx2_gets_a_clear_answer(
    fault_upstream: FaultUpstream, kind: str, stream: bool
) -> None:
    async with fast_httpx2_client() as own:
        proxy = faulty_proxy(fault_upstream.url, http_client=own)
        try:
            async with asgi_client(proxy) as http:
                response = await http.post(
                    "/v1/proxy/auto", json=fault_body(kind, stream), headers={"x-request-id": kind}
                )
            check_outcome(response, expected(kind, stream))
            assert_nothing_cached(proxy)
        finally:
            await proxy.aclose()


class Httpx2Provider(HTTPProvider):
    """A provider of the app's own that makes its call with httpx2, whatever client the
    middleware hands it, and lets httpx2's errors out as they are."""

    def __init__(self, url: str, client: httpx2.AsyncClient) -> None:
        super().__init__(
            url=url,
            api_key="sk-own",
            models=["*"],
            name="own",
            headers=None,
            endpoints=("chat",),
        )
        self._url = url
        self._client = client

    async def send(
        self, request: UpstreamRequest, client: httpx.AsyncClient | httpx2.AsyncClient
    ) -> UpstreamResponse:
        headers = {**self.base_headers(request), "authorization": "Bearer sk-own"}
        return await self.post(self._client, f"{self._url}/chat/completions", headers, request.body)


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("refused", 502, "upstream_unreachable"), ("slow_headers", 504, "upstream_timeout")],
)
async def test_httpx2_errors_from_a_custom_provider_become_502_and_504(
    fault_upstream: FaultUpstream, kind: str, status: int, code: str
) -> None:
    url = refused_url() if kind == "refused" else fault_upstream.url
    async with fast_httpx2_client() as own:
        proxy = AutoProxyMiddleware(
            inner_app(), providers=[Httpx2Provider(url, own)], allow_anonymous=True
        )
        try:
            async with asgi_client(proxy) as http:
                response = await http.post("/v1/proxy/auto", json=fault_body(kind, False))
        finally:
            await proxy.aclose()
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "sk-own" not in response.text
