from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.fault_upstream import FaultUpstream
from tests.redis_cluster import RedisCluster, running_cluster
from tests.redis_server import RedisServer, running_redis
from tests.servers import ServerThread

SERVER_KEY = "sk-server-secret-0123456789"
CALLER_KEY = "sk-caller-secret-abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[tuple[FakeUpstream, ServerThread]]:
    fake = FakeUpstream()
    server = ServerThread(fake)
    server.start()
    yield fake, server
    server.stop()


@pytest.fixture
def upstream(_upstream_server: tuple[FakeUpstream, ServerThread]) -> FakeUpstream:
    fake, _ = _upstream_server
    fake.reset()
    return fake


@pytest.fixture
def upstream_url(_upstream_server: tuple[FakeUpstream, ServerThread]) -> str:
    return _upstream_server[1].url + "/v1"


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[tuple[FakeAnthropic, ServerThread]]:
    fake = FakeAnthropic()
    server = ServerThread(fake)
    server.start()
    yield fake, server
    server.stop()


@pytest.fixture
def claude(_anthropic_server: tuple[FakeAnthropic, ServerThread]) -> FakeAnthropic:
    """The fake Anthropic Messages API (tests/fake_anthropic.py), one for the session."""
    fake = _anthropic_server[0]
    fake.reset()
    return fake


@pytest.fixture
def claude_url(_anthropic_server: tuple[FakeAnthropic, ServerThread]) -> str:
    return _anthropic_server[1].url


@pytest.fixture(scope="session")
def _fault_upstream_server() -> Iterator[FaultUpstream]:
    upstream = FaultUpstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def fault_upstream(_fault_upstream_server: FaultUpstream) -> FaultUpstream:
    """The fault-injecting upstream (tests/fault_upstream.py), one for the session; each
    test starts with its exchanges and outcomes cleared (connection counts run on)."""
    _fault_upstream_server.reset()
    return _fault_upstream_server


def inner_app() -> Starlette:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("inner app")

    return Starlette(routes=[Route("/", home)])


MakeProxy = Callable[..., AutoProxyMiddleware]


@pytest.fixture
async def make_proxy(upstream_url: str) -> AsyncIterator[MakeProxy]:
    """Build the middleware around a small app; keywords override the defaults.

    Every middleware built is closed when the test ends, in the test's event loop.
    """
    made: list[AutoProxyMiddleware] = []

    def make(**kwargs: Any) -> AutoProxyMiddleware:
        provider_kwargs = kwargs.pop("provider", {})
        providers = kwargs.pop(
            "providers",
            [OpenAIProvider(base_url=upstream_url, name="fake", **provider_kwargs)],
        )
        app = kwargs.pop("app", None) or inner_app()
        proxy = AutoProxyMiddleware(app, providers=providers, **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.aclose()


@pytest.fixture
async def client(make_proxy: MakeProxy) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the middleware (pass-through keys), with lifespan running."""
    app = make_proxy()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        ) as http:
            yield http


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


class Clock:
    """A clock the test moves by hand: set or add to ``now``."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Real Redis for the tests that share state: started once per test module that asks.
@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running_redis() as running:
        yield running


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with running_cluster() as running:
        yield running


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis server, or a cluster's URL (its fixture starts only when asked for)."""
    if request.param == "redis":
        return str(request.getfixturevalue("server").url)
    return str(request.getfixturevalue("cluster").url)
