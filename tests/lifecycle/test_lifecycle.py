"""The shared upstream client: lazy, one per event loop, reused, closed at shutdown.

Connection reuse is read off the upstream: each request records the TCP port it came
from, so one kept-alive connection shows as one port.
"""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AutoProxyMiddleware
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {CALLER_KEY}"}


def made_clients(app: AutoProxyMiddleware) -> list[httpx.AsyncClient]:
    """The clients the middleware made itself (its only internal state worth checking)."""
    return list(app._clients._by_loop.values())


def ports(upstream: FakeUpstream) -> list[int]:
    return [r.client[1] for r in upstream.requests if r.client is not None]


async def post_some(app: AutoProxyMiddleware, count: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
        for i in range(count):
            response = await http.post("/v1/proxy/auto", json=chat_body(f"n{i}"))
            assert response.status_code == 200


async def test_client_is_lazy_reused_and_closed_at_shutdown(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    async with LifespanManager(app) as manager:
        # Startup alone opens nothing: no client before the first proxied request.
        assert made_clients(app) == []
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/")).status_code == 200
            assert made_clients(app) == []
            for i in range(5):
                response = await http.post("/v1/proxy/auto", json=chat_body(f"n{i}"), headers=AUTH)
                assert response.status_code == 200
        [shared] = made_clients(app)
        assert not shared.is_closed
    assert shared.is_closed
    assert made_clients(app) == []
    # Five requests, one kept-alive upstream connection.
    assert len(ports(upstream)) == 5
    assert len(set(ports(upstream))) == 1


async def test_a_new_client_after_shutdown_when_requests_keep_coming(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy()
    async with LifespanManager(app):
        await post_some(app, 2)
    await post_some(app, 2)
    [second] = made_clients(app)
    assert not second.is_closed
    first_port, _, second_port, _ = ports(upstream)
    assert first_port != second_port
    await app.aclose()
    assert second.is_closed


async def test_one_client_per_event_loop(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    """The same middleware served by uvicorn (its own thread and loop) and called here."""
    app = make_proxy()
    with serve(app, lifespan="on") as server:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as remote:
            for i in range(3):
                response = await remote.post("/v1/proxy/auto", json=chat_body(f"r{i}"))
                assert response.status_code == 200
        await post_some(app, 3)
        server_client, local_client = made_clients(app)
        assert server_client is not local_client
        assert not server_client.is_closed and not local_client.is_closed
    # uvicorn's lifespan shutdown closed its loop's client and left ours alone.
    assert server_client.is_closed
    assert not local_client.is_closed
    assert made_clients(app) == [local_client]
    server_ports, local_ports = ports(upstream)[:3], ports(upstream)[3:]
    assert len(set(server_ports)) == 1 and len(set(local_ports)) == 1
    assert set(server_ports) != set(local_ports)
    await app.aclose()
    assert local_client.is_closed


async def test_concurrent_requests_share_the_client(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    import anyio

    app = make_proxy()
    async with LifespanManager(app):
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(post_some, app, 2)
        assert len(made_clients(app)) == 1
    assert upstream.calls == 16
    # Concurrent requests need several connections, but far fewer than requests.
    assert len(set(ports(upstream))) <= 8


async def test_injected_client_is_used_and_left_open(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(headers={"x-injected": "yes"}) as injected:
        app = make_proxy(http_client=injected)
        async with LifespanManager(app):
            await post_some(app, 2)
        assert upstream.requests[0].headers["x-injected"] == "yes"
        assert len(set(ports(upstream))) == 1
        assert made_clients(app) == []
        # Lifespan shutdown and aclose both leave the user's client alone.
        assert not injected.is_closed
        await app.aclose()
        assert not injected.is_closed
        # Closed for good (issue 19: no use after aclose()), the user's client untouched.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as h:
            late = await h.post("/v1/proxy/auto", json=chat_body("late"))
        assert late.status_code == 503
        assert upstream.calls == 2
        assert not injected.is_closed


async def test_works_without_any_lifespan(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    """As under Django, whose ASGI handler never sends lifespan events."""

    async def django_like(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")

    app = make_proxy(app=django_like)
    await post_some(app, 3)
    [shared] = made_clients(app)
    assert upstream.calls == 3
    assert len(set(ports(upstream))) == 1
    await app.aclose()
    assert shared.is_closed


async def test_timeout_is_configurable(make_proxy: MakeProxy, upstream: FakeUpstream) -> None:
    slow = chat_body(fake={"sleep": 0.5})
    patient = make_proxy(timeout=5.0)
    impatient = make_proxy(timeout=httpx.Timeout(5.0, read=0.1))
    for app in (patient, impatient):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as h:
            response = await h.post("/v1/proxy/auto", json=slow)
        assert response.status_code == (200 if app is patient else 504)
        await app.aclose()


async def test_read_timeout_mid_stream_ends_with_an_error_event(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(timeout=httpx.Timeout(5.0, read=0.2))
    body = chat_body(stream=True, fake={"chunks": 3, "delay": 1.0})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
        response = await http.post("/v1/proxy/auto", json=body)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) == 2
    assert '"tok0 "' in events[0]
    assert "read timeout" in events[1] and '"upstream_stream_error"' in events[1]
    await app.aclose()
