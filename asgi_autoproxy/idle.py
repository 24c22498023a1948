"""An idle timeout between the chunks of an upstream stream.

httpx's read timeout is long on purpose (a non-streamed answer may take minutes to
start), so streams get their own, shorter limit on silence. One watchdog task per
stream rather than a timer per chunk: marking a read costs only a clock read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .background import beside


class IdleWatch:
    __slots__ = ("expired", "seconds", "waiting_since")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.waiting_since: float | None = None
        self.expired = False

    def waiting(self) -> None:
        """About to wait for the upstream: the clock starts."""
        self.waiting_since = time.monotonic()

    def arrived(self) -> None:
        """Data came; sending it on to a slow caller does not count as upstream silence."""
        self.waiting_since = None

    async def _guard(self, seconds: float, scope: anyio.CancelScope) -> None:
        while True:
            since = self.waiting_since
            if since is None:
                await anyio.sleep(seconds)
                continue
            left = since + seconds - time.monotonic()
            if left <= 0:
                self.expired = True
                scope.cancel()
                return
            await anyio.sleep(left)


@asynccontextmanager
async def idle_limit(seconds: float | None) -> AsyncIterator[IdleWatch]:
    """The body is cancelled once the upstream stays silent ``seconds`` while awaited;
    ``expired`` then says so. ``None`` means no limit."""
    watch = IdleWatch(seconds)
    if seconds is None:
        yield watch
        return
    with anyio.CancelScope() as scope:
        async with beside(lambda: watch._guard(seconds, scope)):
            yield watch
