"""Streams coalesced across processes, through the backend's streams (Redis Streams).

The process that holds an entry's lock leads. Beside its own flight it appends what the
flight receives to a stream named after its lock's token, each item sealed with the
entry's secret, and keeps the lock alive with a heartbeat (``LOCK_TTL``, renewed every
``HEARTBEAT``). A process that finds the lock held follows: a feeder reads that stream
into a local flight, which its callers (and any identical request in that process)
follow live, as they would a leader in their own process.

If the leader dies or stalls, its lock lapses within ``LOCK_TTL``. A follower that has
sent nothing yet abandons its flight and looks again: it then leads, making its own
upstream call, or follows whoever leads now. One that has already relayed part of the
stream ends it with an error event. Only the leader stores the entry, once its stream
ended whole, so nothing partial is ever cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from asgi_autoproxy import _json
from asgi_autoproxy._cache import crypto
from asgi_autoproxy._cache.backends.base import StreamBackend
from asgi_autoproxy._cache.coalescing import Flight
from asgi_autoproxy._cache.keys import EntryKey
from asgi_autoproxy._sse import error_event
from asgi_autoproxy.errors import upstream_stream_broken

logger = logging.getLogger("asgi_autoproxy.cache")

LOCK_TTL = 3.0
"""Seconds a leader's lock lives unless renewed: how soon followers notice it is gone."""
HEARTBEAT = 1.0
BLOCK_MS = 200
STREAM_TTL_MS = 60_000

_HEADERS, _EVENT, _DONE, _BROKEN, _FAILED = b"H", b"E", b"D", b"B", b"F"


class _Codec:
    """Items of one leader's stream, sealed with the entry's secret when the cache
    encrypts; the item's place in the stream is authenticated too."""

    def __init__(self, key: EntryKey, token: str, encrypt: bool) -> None:
        self._secret = key.secret if encrypt else None
        self._aad = f"{key.key}/{token}/".encode()

    def seal(self, seq: int, item: bytes) -> bytes:
        if self._secret is None:
            return item
        return crypto.seal(self._secret, item, aad=self._aad + str(seq).encode())

    def open(self, seq: int, sealed: bytes) -> bytes | None:
        if self._secret is None:
            return sealed
        return crypto.unseal(self._secret, sealed, aad=self._aad + str(seq).encode())


async def publish(
    store: StreamBackend, key: EntryKey, token: str, flight: Flight, *, encrypt: bool
) -> None:
    """The leader's side: append the flight to the stream as it comes, keep the lock
    alive, and end with how the flight ended. A failing backend stops the publishing
    (followers then see the lock lapse), never the leader's own answer."""
    codec = _Codec(key, token, encrypt)
    seq = sent = 0
    started = False
    beat = time.monotonic()
    while True:
        items: list[bytes] = []
        if not started and flight.started:
            started = True
            if flight.stream:
                headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in flight.headers]
                items.append(_HEADERS + _json.dumps({"s": flight.status, "h": headers}))
            else:  # not a stream after all (an error answer, say): followers call upstream
                items.append(_FAILED)
        final = flight.done or (started and not flight.stream)
        if started and flight.stream:
            fresh = flight.parts[sent:]
            sent += len(fresh)
            items.extend(_EVENT + part for part in fresh)
            if flight.state == "complete":
                items.append(_DONE)
            elif flight.state == "broken":
                items.append(_BROKEN + flight.broken_tail)
            elif flight.done:
                items.append(_FAILED)
        elif flight.done and not started:
            items.append(_FAILED)
        if items:
            sealed = [codec.seal(seq + i, item) for i, item in enumerate(items)]
            seq += len(items)
            if not await store.stream_append(key.key, token, sealed, STREAM_TTL_MS):
                return
            if final:
                return
            continue
        with anyio.move_on_after(HEARTBEAT):
            await flight.changed()
        if time.monotonic() - beat >= HEARTBEAT:
            beat = time.monotonic()
            if not await store.keep_lock(key.key, token, round(LOCK_TTL * 1000)):
                return


async def feed(
    store: StreamBackend,
    key: EntryKey,
    token: str,
    flight: Flight,
    *,
    encrypt: bool,
    done: Callable[[], None],
) -> None:
    """A follower's side: read the leader's stream into ``flight`` until it ends, or
    until the leader is gone (its lock lapsed or changed hands)."""
    codec = _Codec(key, token, encrypt)
    after, seq = b"0-0", 0
    quiet_since = time.monotonic()
    # The flight starts with the first event, not the headers: until something is sent,
    # a follower whose leader is gone can still make its own upstream call instead.
    head: tuple[int, list[tuple[bytes, bytes]]] | None = None
    try:
        while True:
            items = await store.stream_read(key.key, token, after, BLOCK_MS)
            if items is None:
                return
            for entry_id, sealed in items:
                after = entry_id
                item = codec.open(seq, sealed)
                seq += 1
                if item is None:
                    return  # not what the leader wrote: go it alone
                kind, data = item[:1], item[1:]
                if kind == _HEADERS:
                    parsed = _json.loads(data)
                    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in parsed["h"]]
                    head = (int(parsed["s"]), headers)
                    continue
                if head is None or kind == _FAILED:
                    return  # the leader got no stream: this follower makes its own call
                if not flight.started:
                    flight.start(*head, stream=True)
                if kind == _EVENT:
                    flight.publish(data)
                elif kind == _DONE:
                    flight.complete()
                    return
                elif kind == _BROKEN:
                    flight.break_stream(data)
                    return
                else:
                    return
            now = time.monotonic()
            if items:
                quiet_since = now
            elif now - quiet_since >= HEARTBEAT:
                quiet_since = now
                if await store.stream_leader(key.key) != token:
                    logger.warning(
                        "the process leading stream %s… is gone; its followers go on alone",
                        key.key[:12],
                    )
                    return
    finally:
        if not flight.done:
            if flight.parts:
                reason = "the process it joined stopped sending"
                flight.break_stream(
                    error_event(upstream_stream_broken("coalesced", reason).to_dict())
                )
            else:
                flight.fail(None)  # nothing sent yet: the follower looks again, then leads
        done()
