"""Relay: an answer on its way to the caller, whole or as Server-Sent Events.

Four sources: an upstream answer read whole, an upstream stream, a flight led by an
identical request (followers), and a cache entry (hits). An upstream answer passes
through the cache's ``Tee``, which shares it with followers and stores it once it has
ended whole; nothing here writes the cache. Every answer's headers leave through
``answer_headers`` below: the one place where the allow-list applies to every
provider's answer, custom ones' too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import anyio

from asgi_autoproxy import _json
from asgi_autoproxy._cache.coalescing import Flight, Listener
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.facade import Tee
from asgi_autoproxy._call import Call, send_error
from asgi_autoproxy._cancel import TaskCancelScope, along
from asgi_autoproxy._headers import answer_headers
from asgi_autoproxy._http.errors import timeout_errors, transport_errors
from asgi_autoproxy._idle_timeout import idle_limit
from asgi_autoproxy._sse import EventSplitter
from asgi_autoproxy._upstream.answer_checks import StreamAudit, is_answer, json_answer
from asgi_autoproxy._upstream.redact import scrub, scrub_headers
from asgi_autoproxy.errors import (
    ProxyError,
    ResponseTooLarge,
    client_too_slow,
    upstream_stream_broken,
    upstream_timeout,
    upstream_too_large,
    upstream_unreachable,
)
from asgi_autoproxy.providers.base import Provider, UpstreamResponse

logger = logging.getLogger("asgi_autoproxy")

HIT = (b"x-bt-cached", b"HIT")
MISS = (b"x-bt-cached", b"MISS")
# How far a shared stream is read ahead of its fastest client: a little, so that reading
# the upstream and writing to the clients overlap, yet the upstream still waits for them.
_READ_AHEAD = 64 * 1024
# How long a client dropped as too slow gets to take its error event before it is cut.
_DROPPED_GRACE = 5.0


class Relay:
    """Writes answers to callers; built once by the middleware from its limits."""

    def __init__(
        self,
        *,
        secrets: tuple[bytes, ...],
        max_event_size: int,
        stream_idle_timeout: float | None,
    ) -> None:
        self._secrets = secrets
        self._max_event_size = max_event_size
        self._stream_idle_timeout = stream_idle_timeout

    async def upstream(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        tee: Tee | None,
        *,
        stream: bool,
        strip_usage: bool = False,
    ) -> None:
        """An upstream answer: streamed when asked for and the upstream streams, else whole.
        ``strip_usage``: leave out the usage chunk the proxy asked for (stream_usage.py)."""
        if stream and response.status == 200 and response.is_event_stream:
            await self._stream(call, provider, response, tee, strip_usage)
        else:
            await self._whole(call, provider, response, tee)

    # -- whole answers ------------------------------------------------------------------

    async def _whole(
        self, call: Call, provider: Provider, response: UpstreamResponse, tee: Tee | None
    ) -> None:
        try:
            body = await response.read()
        except timeout_errors():
            raise upstream_timeout(provider.name) from None
        except transport_errors():
            raise upstream_unreachable(provider.name) from None
        body = scrub(body, self._secrets)
        status = response.status
        headers = response.headers
        call.trace.provider, call.trace.cache = provider.name, "MISS" if tee else None
        answer: dict[str, Any] | None = None
        if 200 <= status < 300:
            answer = json_answer(provider.name, body)
            call.trace.answered(answer, call.dialect.usage(answer))
        if status >= 400 and not _is_openai_error(body):
            body = call.dialect.error_body(
                self._unshaped_error(provider, response, call.request_id)
            )
            headers = [(k, v) for k, v in headers if k != "content-type"]
            headers.append(("content-type", "application/json"))
        encoded = self.answer_headers(headers)
        cache_headers: list[tuple[bytes, bytes]] = []
        if tee is not None:
            tee.start(status, encoded, stream=False)
            tee.publish(body)
            storable = answer is not None and is_answer(tee.plan.endpoint, answer)
            if await tee.finish(storable=storable):
                max_age = f"max-age={tee.plan.decision.ttl}".encode()
                cache_headers = [(b"cache-control", max_age), (b"age", b"0")]
        await call.respond(status, body, [*encoded, *cache_headers, MISS])

    def _unshaped_error(
        self, provider: Provider, response: UpstreamResponse, request_id: str
    ) -> ProxyError:
        """The error to answer for an error answer without an error body (a wrong base URL's 404
        page, a gateway's 502), naming what was called: the status alone does not say
        that the URL is wrong. Logged too, as the request log line only has the status."""
        status = response.status
        # ``called`` has no userinfo or query; scrubbed too, for a key in the path.
        called = scrub(response.called.encode(), self._secrets).decode()
        where = f" for {called}" if called else ""
        hint = ""
        if status == 404 and called:
            hint = " Check the provider's base URL (does it need /v1?)."
        logger.warning(
            "provider %r answered HTTP %s%s without an OpenAI-style error body (request %s)",
            provider.name,
            status,
            where,
            request_id,
        )
        return ProxyError(
            status,
            f"Provider {provider.name!r} answered HTTP {status}{where} without an "
            f"OpenAI-style error body.{hint}",
            type="upstream_error",
            code=f"upstream_{status}",
        )

    # -- streams ------------------------------------------------------------------------

    async def _stream(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        tee: Tee | None,
        strip_usage: bool,
    ) -> None:
        headers = self.answer_headers((k, v) for k, v in response.headers if k != "content-type")
        if tee is not None:
            tee.start(200, headers, stream=True)
        await call.start_stream([*headers, MISS])
        call.trace.provider, call.trace.cache = provider.name, "MISS" if tee else None
        if tee is None or not tee.shared:
            # Nobody can join: the caller's socket paces the upstream, as for any proxy.
            tail = await self._read_stream(
                call, provider, response, tee, shared=False, strip_usage=strip_usage
            )
            await call.end_stream(tail)
            return
        # Followers may join: the caller's client takes the stream from the flight at its
        # own pace, like theirs (send_flight), so that its socket holds back nobody else.
        flight = tee.flight
        async with along(lambda: self.send_flight(call, flight, flight.leader)):
            await self._read_stream(
                call, provider, response, tee, shared=True, strip_usage=strip_usage
            )

    async def _read_stream(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        tee: Tee | None,
        *,
        shared: bool,
        strip_usage: bool = False,
    ) -> bytes:
        """Relay the upstream's events to ``call``, or into a ``shared`` flight. Returns
        the error event that ends a broken stream, else b""."""
        splitter = EventSplitter(self._max_event_size)
        # How the stream ends, malformed events, token usage (and the chunk we asked for).
        audit = StreamAudit(call.dialect, strip_usage=strip_usage)
        broken: str | None = None
        too_large: ResponseTooLarge | None = None
        async with idle_limit(self._stream_idle_timeout) as idle:
            try:
                idle.waiting()
                async for chunk in response.chunks:
                    idle.arrived()
                    try:
                        found = splitter.feed(chunk)
                    except ResponseTooLarge as exceeded:  # relay the events before it
                        found, too_large = exceeded.events, exceeded
                    events = audit.accept(found)
                    if events and self._secrets:  # whole events: a key never straddles two
                        events = [scrub(event, self._secrets) for event in events]
                    if events:
                        if tee is not None:
                            for event in events:
                                tee.publish(event)
                        if shared:
                            assert tee is not None
                            await tee.flight.pace(_READ_AHEAD)
                        else:
                            await call.emit(events[0] if len(events) == 1 else b"".join(events))
                    if audit.malformed:
                        broken = "it sent an event that is not valid JSON"
                        break
                    if too_large is not None:
                        break
                    idle.waiting()
            except ResponseTooLarge as exceeded:  # from a provider's own splitter
                too_large = exceeded
            except timeout_errors():
                broken = "no data arrived within the read timeout"
            except transport_errors():
                broken = "the connection was lost"
        if idle.expired:
            broken = f"no data arrived for {idle.seconds:g} s"
        if too_large is not None:
            broken = f"it sent an event larger than {too_large.limit} bytes"
        trace = call.trace
        trace.usage, trace.response_model = audit.usage, audit.model
        trace.finish_reason = audit.finish_reason
        if broken is None and not audit.finished:
            broken = f"it closed before sending {call.dialect.ending}"
        if broken is None:
            if tee is not None:
                await tee.finish(storable=not audit.failed)
            return b""
        logger.warning(
            "stream from provider %r broke for request %s: %s",
            provider.name,
            call.request_id,
            broken,
        )
        error = (
            upstream_stream_broken(provider.name, broken)
            if too_large is None
            else upstream_too_large(provider.name, too_large)
        )
        call.trace.error = error.code
        tail = call.dialect.error_event(error)
        if tee is not None:
            tee.break_stream(tail)
        return tail

    # -- followers ----------------------------------------------------------------------

    async def follow(self, call: Call, flight: Flight, listener: Listener) -> bool:
        """Answer from a leader's flight; False when the leader gave up and the caller
        must look again."""
        while not flight.started:
            await flight.changed()
        if flight.state == "abandoned":
            return False
        call.trace.cache = "COALESCED"
        if flight.state == "failed":  # an error is never a hit
            assert flight.error is not None
            await send_error(call, flight.error, label=MISS)
            return True
        if not flight.stream:
            label = MISS if flight.status >= 400 else HIT
            await call.respond(flight.status, b"".join(flight.parts), [*flight.headers, label])
            return True
        await call.start_stream([*flight.headers, HIT])
        await self.send_flight(call, flight, listener)
        return True

    async def send_flight(self, call: Call, flight: Flight, listener: Listener) -> None:
        """Send a streamed flight to one client (the leader's or a follower's) at that
        client's own pace, then end it; ``Flight.pace`` drops a client too far behind."""
        sent = 0
        async with TaskCancelScope() as dropped:
            flight.sit(listener, dropped.cancel)
            while call.connected:
                if sent < len(flight.parts):
                    pending = flight.parts[sent:]
                    sent += len(pending)
                    data = pending[0] if len(pending) == 1 else b"".join(pending)
                    flight.took(listener, len(data))
                    await call.emit(data)
                elif flight.done:
                    break
                else:
                    await flight.changed()
        listener.leave()
        if dropped.cancelled:
            error = client_too_slow(flight.max_lag)
            call.trace.error = error.code
            # The event waits for the client to read; past the grace it is cut (the
            # server closes a connection whose response did not end).
            with anyio.move_on_after(_DROPPED_GRACE):
                await call.end_stream(call.dialect.error_event(error))
            # Nothing more goes out, a shutdown's last words included: the leader's task
            # may read on for the followers long after its own client was dropped.
            call.connected = False
            return
        tail = flight.broken_tail
        if flight.state in ("failed", "abandoned") and not tail:
            tail = call.dialect.error_event(
                upstream_stream_broken("coalesced", "the request it joined was abandoned")
            )
        await call.end_stream(tail)

    # -- hits ---------------------------------------------------------------------------

    async def hit(self, call: Call, entry: CachedResponse, age: float) -> None:
        stored: Sequence[tuple[bytes, bytes]] = entry.headers
        if not entry.scrubbed and self._secrets:
            # Written by a version that did not scrub headers; entries written since were
            # scrubbed on the live path, so a hit on them costs nothing here.
            stored = scrub_headers(list(stored), self._secrets)
        headers = [*stored, HIT, (b"age", str(int(age)).encode())]
        call.trace.cache = "HIT"
        if not entry.stream:
            await call.respond(entry.status, entry.body, headers)
            return
        await call.start_stream(headers)
        for event in entry.parts:
            await call.emit(event)
        await call.end_stream(b"")

    def answer_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        """An upstream answer's headers, encoded, as the caller, followers and the cache
        get them: this is where every provider's answer leaves the proxy (custom ones'
        too): the allow-list applies here, and a key echoed in a passed header
        (``x-request-id``...) is scrubbed here."""
        encoded = answer_headers(headers)
        if self._secrets:  # none in pass-through mode: nothing to search for
            encoded = scrub_headers(encoded, self._secrets)
        return encoded


def _is_openai_error(body: bytes) -> bool:
    try:
        parsed = _json.loads(body)
    except _json.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), (dict, str))
