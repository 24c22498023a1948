"""Coalescing: identical cacheable requests in flight share one upstream call.

The first request (the leader) calls upstream and publishes what it receives into
a ``Flight``; the others (followers) read from it, live for streams. The upstream
call outlives the leader's own client as long as a follower still listens.

A shared stream is read ahead of its fastest client only, and each client (the
leader's too) takes the events at its own pace: a client that stops reading holds
back nobody, and once it is more than ``max_lag`` bytes behind the fastest it is
dropped, so that its stalled socket ties up nothing for ever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio

from asgi_autoproxy.errors import ProxyError

FlightState = Literal["pending", "streaming", "complete", "broken", "failed", "abandoned"]

DEFAULT_MAX_LAG = 4 * 1024 * 1024


def _ignore() -> None:
    return None


class Listener:
    """One client of a flight, the leader's or a follower's, until it leaves."""

    __slots__ = ("_flight", "listening", "stop", "taken")

    def __init__(self, flight: Flight) -> None:
        self._flight = flight
        self.listening = True
        self.taken = 0
        """Bytes of the stream taken to send to the client: sent, or being sent."""
        self.stop: Callable[[], None] = _ignore
        """Cuts short the sending of the stream to a client that is dropped."""

    def leave(self) -> None:
        """The client is gone, done or dropped; the last to leave stops the upstream call."""
        if self.listening:
            self.listening = False
            self._flight._left(self)


class Flight:
    def __init__(self, max_lag: int = DEFAULT_MAX_LAG) -> None:
        self.state: FlightState = "pending"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        """Encoded, as ASGI sends them."""
        self.stream = False
        self.parts: list[bytes] = []
        self.size = 0
        """Bytes in ``parts``."""
        self.error: ProxyError | None = None
        self.broken_tail = b""
        """For a stream that broke: the error event that ends it."""
        self.max_lag = max_lag
        self._listeners = 0
        self._seats: set[Listener] = set()
        """Listeners being sent the stream: the ones that pace its reading."""
        self._abandon: Callable[[], None] | None = None
        self._changed = anyio.Event()
        self._moved: anyio.Event | None = None
        self.leader = self.listen()
        """The leader's client; the upstream call outlives it while a follower listens."""

    # -- leader side --------------------------------------------------------------------

    def on_abandon(self, cancel: Callable[[], None]) -> None:
        """``cancel`` stops the upstream call once neither leader nor followers listen."""
        self._abandon = cancel

    def start(self, status: int, headers: list[tuple[bytes, bytes]], *, stream: bool) -> None:
        self.status, self.headers, self.stream = status, headers, stream
        self._move("streaming" if stream else "pending")

    def publish(self, part: bytes) -> None:
        self.parts.append(part)
        self.size += len(part)
        self._notify()

    async def pace(self, read_ahead: int) -> None:
        """Drop the clients more than ``max_lag`` bytes behind the fastest one, then wait
        while even the fastest is more than ``read_ahead`` bytes behind the stream."""
        while self._seats:
            fastest = max(seat.taken for seat in self._seats)
            for seat in [s for s in self._seats if fastest - s.taken > self.max_lag]:
                seat.leave()
                seat.stop()
            if self.size - fastest <= read_ahead:
                return
            self._moved = moved = anyio.Event()
            await moved.wait()

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

    # -- every client's side ------------------------------------------------------------

    def listen(self) -> Listener:
        """A client joins: the leader's with the flight, then each follower's."""
        self._listeners += 1
        return Listener(self)

    def sit(self, listener: Listener, stop: Callable[[], None]) -> None:
        """``listener`` is about to be sent the stream; ``stop`` cuts that short."""
        if listener.listening:
            listener.stop = stop
            self._seats.add(listener)

    def took(self, listener: Listener, size: int) -> None:
        listener.taken += size
        self._stir()

    @property
    def done(self) -> bool:
        return self.state in ("complete", "broken", "failed", "abandoned")

    @property
    def started(self) -> bool:
        return self.stream or self.done

    async def changed(self) -> None:
        await self._changed.wait()

    def _left(self, listener: Listener) -> None:
        self._listeners -= 1
        self._seats.discard(listener)
        self._stir()
        if self._listeners == 0 and not self.done and self._abandon:
            self._abandon()

    def _stir(self) -> None:
        """A client moved on or left: the reader may be waiting for that (``pace``)."""
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    def _move(self, state: FlightState) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
