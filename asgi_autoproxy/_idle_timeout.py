"""An idle timeout between the chunks of an upstream stream.

httpx's read timeout is long on purpose (a non-streamed answer may take minutes to
start), so streams get their own, shorter limit on silence.

On asyncio each wait arms one loop timer, and its expiry stops the stream through a
``TaskCancelScope``. Elsewhere (trio) a watchdog task checks the clock under an anyio
cancel scope. The set-up sits between the upstream's headers and the first byte the
caller sees, so it is kept to a couple of objects. Over a 20-chunk stream it costs
115 µs where a per-chunk ``anyio.move_on_after`` costs 233 (``bench/devices.py``,
2026-12-02, noise 80 µs).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import anyio

from asgi_autoproxy._cancel import TaskCancelScope, beside, on_asyncio


class IdleWatch:
    """``async with idle_limit(seconds) as idle:``. Call ``waiting()`` before each wait
    for the upstream and ``arrived()`` when data came. When the upstream stays silent
    ``seconds`` while awaited, the block is stopped and ``expired`` says so."""

    __slots__ = ("_scope", "_timer", "_watchdog", "expired", "seconds", "waiting_since")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.waiting_since: float | None = None
        self.expired = False
        self._scope: TaskCancelScope | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: beside | None = None

    async def __aenter__(self) -> IdleWatch:
        seconds = self.seconds
        if seconds is None:
            return self
        self._scope = scope = TaskCancelScope()
        await scope.__aenter__()
        if not on_asyncio():
            self._watchdog = beside(lambda: self._guard(seconds))
            await self._watchdog.__aenter__()
        return self

    def waiting(self) -> None:
        """About to wait for the upstream: the clock starts."""
        if self._scope is None or self.seconds is None:
            return
        if self._watchdog is not None:
            self.waiting_since = time.monotonic()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + self.seconds, self._expire)

    def arrived(self) -> None:
        """Data came; sending it on to a slow caller does not count as upstream silence."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting_since = None

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        assert self._scope is not None
        self._scope.cancel()

    async def _guard(self, seconds: float) -> None:
        while True:
            since = self.waiting_since
            if since is None:
                await anyio.sleep(seconds)
                continue
            left = since + seconds - time.monotonic()
            if left <= 0:
                self._expire()
                return
            await anyio.sleep(left)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        scope = self._scope
        if scope is None:
            return False
        self.arrived()  # nothing may fire once the body is done
        if self._watchdog is not None:
            try:
                if await self._watchdog.__aexit__(exc_type, exc, traceback):
                    exc_type = exc = traceback = None
            except BaseException as raised:  # as nested ``async with`` blocks would
                if await scope.__aexit__(type(raised), raised, raised.__traceback__):
                    return True
                raise
        return await scope.__aexit__(exc_type, exc, traceback)


def idle_limit(seconds: float | None) -> IdleWatch:
    """The guard for one stream; ``None`` means no limit."""
    return IdleWatch(seconds)
