"""Coalescing: identical cacheable requests in flight share one upstream call.

The first request (the leader) calls upstream and publishes what it receives into
a ``Flight``; the others (followers) read from it, live for streams. The upstream
call outlives the leader's own client as long as a follower still listens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio

from ..errors import ProxyError

FlightState = Literal["pending", "streaming", "complete", "broken", "failed", "abandoned"]


class Flight:
    def __init__(self) -> None:
        self.state: FlightState = "pending"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        """Encoded, as ASGI sends them."""
        self.stream = False
        self.parts: list[bytes] = []
        self.error: ProxyError | None = None
        self.broken_tail = b""
        """For a stream that broke: the error event that ends it."""
        self.followers = 0
        self.leader_gone = False
        self._abandon: Callable[[], None] | None = None
        self._changed = anyio.Event()

    # -- leader side --------------------------------------------------------------------

    def on_abandon(self, cancel: Callable[[], None]) -> None:
        """``cancel`` stops the upstream call once neither leader nor followers listen."""
        self._abandon = cancel

    def leader_left(self) -> bool:
        """Mark the leader's client gone; True when the upstream call should stop."""
        self.leader_gone = True
        return self.followers == 0

    def start(self, status: int, headers: list[tuple[bytes, bytes]], *, stream: bool) -> None:
        self.status, self.headers, self.stream = status, headers, stream
        self._move("streaming" if stream else "pending")

    def publish(self, part: bytes) -> None:
        self.parts.append(part)
        self._notify()

    def complete(self) -> None:
        self._move("complete")

    def break_stream(self, tail: bytes) -> None:
        self.broken_tail = tail
        self._move("broken")

    def fail(self, error: ProxyError | None) -> None:
        """Failed before any answer: followers get ``error``, or retry when it is None."""
        if self.state in ("pending", "streaming"):
            self.error = error
            self._move("failed" if error is not None else "abandoned")

    # -- follower side ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state in ("complete", "broken", "failed", "abandoned")

    @property
    def started(self) -> bool:
        return self.stream or self.done

    async def changed(self) -> None:
        await self._changed.wait()

    def follower_left(self) -> None:
        self.followers -= 1
        if self.followers == 0 and self.leader_gone and not self.done and self._abandon:
            self._abandon()

    def _move(self, state: FlightState) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
