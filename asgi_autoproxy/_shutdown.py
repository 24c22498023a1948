"""Graceful shutdown: requests in flight get a grace period, then are cut cleanly.

The middleware runs each request through ``InFlightRequests.run``. On shutdown it
waits for them up to ``shutdown_grace`` seconds, cancels the rest (they end with a
503 or a final SSE error event), then closes its HTTP client and the cache backend.
The drain starts when the server begins to shut down, where the server says so (the
``asgi-autoproxy`` command does), else at lifespan shutdown or ``aclose()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import anyio

from asgi_autoproxy._cache.backends.base import Closable
from asgi_autoproxy._call import Call, send_error
from asgi_autoproxy._cancel import current_asyncio_task
from asgi_autoproxy.errors import server_shutting_down

logger = logging.getLogger("asgi_autoproxy")

# How long cut requests get to send their last words (a 503 or an error event).
_CUT_WAIT = 5.0


class InFlightRequests:
    """On asyncio a request is tracked by its task, which drain cancels: ``run`` costs
    4.3 µs per request where an anyio cancel scope kept in a set costs 8.5
    (``bench/devices.py``, 2026-12-02, noise 3.1), on every cache hit. Other event
    loops get a scope."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        """Tasks drain cancelled, so their CancelledError is told from anyone else's."""
        self._scopes: set[anyio.CancelScope] = set()
        self._emptied: anyio.Event | None = None
        self._draining: anyio.Event | None = None
        """Set when the drain under way ends: a second drain waits for the first."""

    def __len__(self) -> int:
        return len(self._tasks) + len(self._scopes)

    async def run(self, request: Awaitable[None]) -> bool:
        """Await one request; True when shutdown cut it short."""
        task = current_asyncio_task()
        if task is None:
            return await self._run_in_scope(request)
        self._tasks.add(task)
        try:
            await request
        except asyncio.CancelledError:
            if task not in self._cut or task.uncancel() > 0:
                raise  # not ours, or someone else cancelled the task as well
            return True
        finally:
            self._tasks.discard(task)
            self._cut.discard(task)
            self._note_finished()
        return False

    async def _run_in_scope(self, request: Awaitable[None]) -> bool:
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await request
        finally:
            self._scopes.discard(scope)
            self._note_finished()
        return scope.cancelled_caught

    def _note_finished(self) -> None:
        if self._emptied is not None and not self._tasks and not self._scopes:
            self._emptied.set()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for requests in flight, then cut the rest.

        Returns how many were cut. A drain called while another runs (a server's at the
        start of shutdown, then lifespan shutdown's) waits for that one and returns 0.
        """
        if self._draining is not None:
            await self._draining.wait()
            return 0
        if not len(self):
            return 0
        self._draining = draining = anyio.Event()
        self._emptied = anyio.Event()
        try:
            with anyio.move_on_after(grace):
                await self._emptied.wait()
            cut = len(self)
            if cut:
                logger.warning(
                    "shutting down: cutting %d request(s) still running after %g s", cut, grace
                )
                for task in list(self._tasks):
                    self._cut.add(task)  # marked first, so run() knows the cancel is ours
                    task.cancel()
                for scope in list(self._scopes):
                    scope.cancel()
                with anyio.move_on_after(_CUT_WAIT):
                    await self._emptied.wait()
            return cut
        finally:
            draining.set()
            self._emptied = self._draining = None


async def close_backend(backend: object) -> None:
    """Close a cache backend that has ``aclose()`` (``Closable``: a Redis pool, say); log a
    failure."""
    if not isinstance(backend, Closable):
        return
    try:
        await backend.aclose()
    except Exception:
        logger.exception("closing the cache backend %s failed", type(backend).__name__)


LAST_WORDS_WAIT = 1.0
"""How long a request cancelled from outside may take to send its 503 or error event."""


async def cut_short(call: Call) -> None:
    """Tell a caller whose request was cut at shutdown: a 503, or an error event that
    ends its stream; nothing when its answer already went out whole."""
    if call.trace.completed:
        return
    error = server_shutting_down()
    call.trace.error = error.code
    if call.trace.streaming:
        await call.end_stream(call.dialect.error_event(error))
    elif not call.started:
        await send_error(call, error)
