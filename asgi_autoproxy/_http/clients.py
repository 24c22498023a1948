"""The shared ``httpx.AsyncClient``: one per event loop, made on first use.

Lazy creation is what makes the middleware work under Django, whose ASGI handler
never sends lifespan events; lifespan shutdown still closes it where one runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio.lowlevel
import httpx

from asgi_autoproxy._http.client_types import UpstreamClient

if TYPE_CHECKING:
    from asgi_autoproxy._http.transport import AiohttpTransport, DirectResponse

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)

TransportChoice = Literal["auto", "aiohttp", "httpx"]
"""Which transport the default client uses: ``"aiohttp"`` (fast; aiohttp is a base
dependency), ``"httpx"`` (httpx's own), or ``"auto"``: aiohttp when it is installed."""


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessAsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that never stores cookies from responses.

    The shared client serves every caller: a cookie one upstream answer sets (a CDN's
    session cookie, say) must not ride along on the next caller's request. Skipping
    the cookie jar also saves a fair share of httpx's per-request CPU.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._no_cookies: httpx.Cookies = _NoCookies()
        super().__init__(**kwargs)
        self.direct: DirectLane | None = None
        """Set on the clients this package makes over aiohttp (see ``direct_lane``)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        return None


class DirectLane:
    """The built-in providers' shortcut through a client this package made.

    httpx's request and response machinery costs about three times what the aiohttp
    transport underneath it does (bench/). For a client the middleware made itself (no auth,
    hooks, proxies or cookies to honour), the built-in providers post straight to the
    transport, with the same headers, timeouts and errors as through the client.
    Injected clients, and every custom provider, keep the whole httpx path.
    """

    def __init__(self, transport: AiohttpTransport, client: httpx.AsyncClient) -> None:
        self._transport = transport
        self._defaults = dict(client.headers.items())  # lower-case names
        self._timeout = client.timeout

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> DirectResponse:
        """``headers`` (lower-case names) override the client's defaults, as in httpx."""
        merged = {**self._defaults, **headers}
        return await self._transport.post(url, list(merged.items()), body, self._timeout)


def direct_lane(client: UpstreamClient) -> DirectLane | None:
    return client.direct if isinstance(client, CookielessAsyncClient) else None


def default_client_factory(
    timeout: httpx.Timeout, transport: TransportChoice = "auto"
) -> Callable[[], httpx.AsyncClient]:
    if transport not in ("auto", "aiohttp", "httpx"):
        raise ValueError(f"transport must be 'auto', 'aiohttp' or 'httpx', got {transport!r}")
    use_aiohttp = transport == "aiohttp" or (transport == "auto" and aiohttp_available())
    if use_aiohttp and not aiohttp_available():
        raise ValueError(
            "transport='aiohttp' needs aiohttp (a dependency of asgi_autoproxy: reinstall it), "
            "or pass transport='httpx'."
        )

    def make() -> httpx.AsyncClient:
        fast: AiohttpTransport | None = None
        if use_aiohttp:
            from asgi_autoproxy._http.transport import AiohttpTransport

            fast = AiohttpTransport(limits=DEFAULT_LIMITS)
        client = CookielessAsyncClient(
            timeout=timeout,
            limits=DEFAULT_LIMITS,
            follow_redirects=False,
            trust_env=False,
            transport=fast,
        )
        if fast is not None:
            client.direct = DirectLane(fast, client)
        return client

    return make


class SharedClients:
    """Hands out the event loop's client; closes the ones it made, never an injected one."""

    def __init__(
        self,
        *,
        client: UpstreamClient | None = None,
        factory: Callable[[], httpx.AsyncClient],
    ) -> None:
        self._injected = client
        self._factory = factory
        self._by_loop: dict[object, httpx.AsyncClient] = {}

    def get(self) -> UpstreamClient:
        if self._injected is not None:
            return self._injected
        token = _loop_token()
        client = self._by_loop.get(token)
        if client is None or client.is_closed:
            client = self._factory()
            self._by_loop[token] = client
        return client

    async def aclose(self) -> None:
        """Close this loop's client; forget clients of loops that are gone."""
        if self._injected is not None:
            return
        token = _loop_token()
        client = self._by_loop.pop(token, None)
        if client is not None:
            await client.aclose()
        self._by_loop = {t: c for t, c in self._by_loop.items() if not c.is_closed}


def _loop_token() -> object:
    # The running asyncio loop costs a tenth of anyio's token lookup; other loops use it.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token()
