"""The shared ``httpx.AsyncClient``: one per event loop, made on first use.

Lazy creation is what makes the middleware work under Django, whose ASGI handler
never sends lifespan events; lifespan shutdown still closes it where one runs.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.lowlevel
import httpx

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)


def default_client_factory(timeout: httpx.Timeout) -> Callable[[], httpx.AsyncClient]:
    def make() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=timeout, limits=DEFAULT_LIMITS, follow_redirects=False, trust_env=False
        )

    return make


class SharedClients:
    """Hands out the event loop's client; closes the ones it made, never an injected one."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        factory: Callable[[], httpx.AsyncClient],
    ) -> None:
        self._injected = client
        self._factory = factory
        self._by_loop: dict[object, httpx.AsyncClient] = {}

    def get(self) -> httpx.AsyncClient:
        if self._injected is not None:
            return self._injected
        token = anyio.lowlevel.current_token()
        client = self._by_loop.get(token)
        if client is None or client.is_closed:
            client = self._factory()
            self._by_loop[token] = client
        return client

    async def aclose(self) -> None:
        """Close this loop's client; forget clients of loops that are gone."""
        if self._injected is not None:
            return
        token = anyio.lowlevel.current_token()
        client = self._by_loop.pop(token, None)
        if client is not None:
            await client.aclose()
        self._by_loop = {t: c for t, c in self._by_loop.items() if not c.is_closed}
