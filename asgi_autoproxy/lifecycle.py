"""Graceful shutdown: requests in flight get a grace period, then are cut cleanly.

Each request the proxy serves runs inside a cancel scope registered here. On
shutdown the middleware waits for them up to ``shutdown_grace`` seconds, cancels
the rest (they end with a 503 or a final SSE error event), then closes its HTTP
client and the cache backend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

logger = logging.getLogger("asgi_autoproxy")

# How long cut requests get to send their last words (a 503 or an error event).
_CUT_WAIT = 5.0


class InFlightRequests:
    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self._emptied: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._scopes)

    @contextmanager
    def track(self) -> Iterator[anyio.CancelScope]:
        """Run one request; the scope's ``cancelled_caught`` says shutdown cut it."""
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
            if not self._scopes and self._emptied is not None:
                self._emptied.set()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for requests in flight, then cut the rest.

        Returns how many were cut.
        """
        if not self._scopes:
            return 0
        self._emptied = anyio.Event()
        try:
            with anyio.move_on_after(grace):
                await self._emptied.wait()
            cut = len(self._scopes)
            if cut:
                logger.warning(
                    "shutting down: cutting %d request(s) still running after %g s", cut, grace
                )
                for scope in list(self._scopes):
                    scope.cancel()
                with anyio.move_on_after(_CUT_WAIT):
                    await self._emptied.wait()
            return cut
        finally:
            self._emptied = None


async def close_backend(backend: object) -> None:
    """Close a cache backend that has ``aclose()`` (a Redis pool, say); log a failure."""
    aclose = getattr(backend, "aclose", None)
    if not callable(aclose):
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing the cache backend %s failed", type(backend).__name__)
