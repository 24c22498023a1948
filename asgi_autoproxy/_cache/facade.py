"""The cache as the pipeline sees it: plan, look up, coalesce, and store through a tee.

``CachedAnswers.find`` answers one question for a cacheable request: is there an entry
(a hit), an identical request already calling upstream (a flight to follow, in this
process, or an entry another process just stored), or must this request call upstream
itself (it leads)? A leader gets a ``Tee``: the relay passes the answer through it on
its way to the caller, and the tee stores it once it has ended whole. The relay never
writes the cache itself, and only the façade knows flights and cross-process locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from asgi_autoproxy._cache import remote_streams
from asgi_autoproxy._cache.backends.base import StreamBackend
from asgi_autoproxy._cache.coalescing import Flight
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.keys import SHARED_CALLER, EntryKey, entry_key
from asgi_autoproxy._cache.policy import CacheDecision, CacheRule, decide
from asgi_autoproxy._cache.remembered_plans import PlanMemo, RequestDigest, request_digest
from asgi_autoproxy._cache.store import CacheStats, ResponseCache
from asgi_autoproxy._headers import RequestHeaders, replayed_on_hits
from asgi_autoproxy.providers.base import Endpoint


@dataclass(slots=True)
class CachePlan:
    """Whether and where one request reads and writes the cache."""

    decision: CacheDecision
    key: EntryKey
    model: str
    endpoint: Endpoint


class Tee:
    """The leader's answer on its way to the caller, shared with followers as it comes
    (its ``flight``) and stored once it ended whole."""

    __slots__ = ("_cache", "_claim", "_flights", "flight", "plan", "remote")

    def __init__(
        self,
        cache: ResponseCache,
        plan: CachePlan,
        flight: Flight,
        claim: str,
        flights: dict[str, Flight],
        remote: bool = False,
    ) -> None:
        self._cache = cache
        self.remote = remote
        """Whether other processes follow this stream (``_cache/remote_streams.py``)."""
        self._claim = claim
        """The cross-process lock's token ("" when none is held)."""
        self._flights = flights
        self.plan = plan
        self.flight = flight

    @property
    def shared(self) -> bool:
        """Whether followers can join: the flight is the one registered for its entry."""
        return self._flights.get(self.plan.key.key) is self.flight

    def start(self, status: int, headers: list[tuple[bytes, bytes]], *, stream: bool) -> None:
        self.flight.start(status, headers, stream=stream)

    def publish(self, part: bytes) -> None:
        self.flight.publish(part)

    async def finish(self, *, storable: bool) -> bool:
        """The answer ended whole: store it when it is ``storable`` (a 2xx that is a
        real answer, a stream that ended as it should) and the plan writes, then let
        the followers finish. Returns whether it was stored."""
        flight, plan = self.flight, self.plan
        stored = storable and plan.decision.write
        if stored:
            # Before the flight ends: its end ends the caller's answer too, and a caller
            # that read it all and asks again must find the entry.
            entry = CachedResponse(
                flight.status,
                replayed_on_hits(flight.headers),
                tuple(flight.parts),
                flight.stream,
                self._cache.clock(),
            )
            await self._cache.put(plan.key, entry, plan.decision.ttl)
        flight.complete()
        return stored

    def break_stream(self, tail: bytes) -> None:
        """The stream broke: followers get ``tail`` (its error event); nothing is stored."""
        self.flight.break_stream(tail)

    @property
    def claim(self) -> str:
        return self._claim

    async def release(self) -> None:
        """Let other processes call upstream again (they will find the entry, if any)."""
        if self._claim:
            claim, self._claim = self._claim, ""
            with anyio.CancelScope(shield=True):
                await self._cache.release(self.plan.key, claim)


@dataclass(frozen=True, slots=True)
class Hit:
    entry: CachedResponse


Found = Hit | Flight | Tee
"""What ``find`` found: an entry, a flight to follow, or the lead."""


class CachedAnswers:
    """The façade over the store, the remembered plans and coalescing."""

    def __init__(
        self,
        store: ResponseCache,
        *,
        default_ttl: int,
        share_across_callers: bool,
        coalesce_timeout: float,
        max_follower_lag: int,
    ) -> None:
        self.store = store
        self.plan_memo: PlanMemo[CachePlan] = PlanMemo()
        self._default_ttl = default_ttl
        self._share = share_across_callers
        self._coalesce_timeout = coalesce_timeout
        self._max_follower_lag = max_follower_lag
        self._flights: dict[str, Flight] = {}
        backend = store.backend
        self._streams = (
            backend if store.locks is not None and isinstance(backend, StreamBackend) else None
        )
        self._feeders: set[asyncio.Task[None]] = set()

    @property
    def stats(self) -> CacheStats:
        return self.store.stats

    def age(self, entry: CachedResponse) -> float:
        return self.store.age(entry)

    # -- planning -----------------------------------------------------------------------

    def scope_of(self, caller_scope: str) -> str:
        """Whose entries a caller reads: its own, or everyone's when they are shared."""
        return SHARED_CALLER if self._share else caller_scope

    def digest(
        self,
        route: str,
        caller_scope: str,
        has_key: bool,
        headers: RequestHeaders,
        body: bytes,
    ) -> RequestDigest:
        return request_digest(route, self.scope_of(caller_scope), has_key, headers, body)

    def plan(
        self,
        headers: RequestHeaders,
        *,
        rule: CacheRule = "deterministic",
        endpoint: Endpoint,
        model: str,
        payload: Mapping[str, Any],
        providers: Sequence[str],
        pinned: str | None,
        caller_scope: str,
        passed: tuple[tuple[str, str], ...] = (),
        credential: str | None = None,
    ) -> CachePlan | None:
        """The plan for a request, or None when it neither reads nor writes the cache.
        ``rule``: the route's (``_cache/policy.py``); ``passed``: the request headers
        sent upstream, which the key covers; ``credential``: the caller's token, which
        the entry's key and secret are bound to (HKDF, ``_cache/crypto.py``) unless
        entries are shared across callers."""
        decision = decide(
            payload,
            use_cache=headers.use_cache,
            cache_ttl=headers.cache_ttl,
            cache_control=headers.cache_control,
            default_ttl=self._default_ttl,
            rule=rule,
        )
        if not (decision.read or decision.write):
            return None
        key = entry_key(
            endpoint=endpoint,
            # A pinned provider answers alone, so it must not share the group's entries.
            providers=pinned or ",".join(providers),
            caller=self.scope_of(caller_scope),  # hashed only here, when needed
            payload=payload,
            headers=passed,
            credential=None if self._share else credential,
            server_secret=self.store.server_secret,
        )
        return CachePlan(decision, key, model, endpoint)

    # -- looking up ---------------------------------------------------------------------

    async def hit(self, plan: CachePlan) -> CachedResponse | None:
        return await self.store.get(plan.key, max_age=plan.decision.max_age)

    async def find(self, plan: CachePlan, *, stream: bool, looked_up: bool) -> Found:
        """An entry, an identical request's flight, or the lead (unless ``looked_up``
        already missed, the entry is looked up first). A flight that a follower found
        abandoned is gone from here by the time the follower asks again."""
        if not plan.decision.read:
            return self._tee(plan, claim="")
        if not looked_up:
            entry = await self.hit(plan)
            if entry is not None:
                return Hit(entry)
        flight = self._flights.get(plan.key.key)
        if flight is not None:
            self.store.stats.coalesced += 1
            return flight
        if stream and self._streams is not None:
            return await self._stream_across_processes(plan, self._streams)
        if self.store.locks is None or stream:
            # Streams without a stream backend skip the cross-process lock: waiting for
            # another process's whole stream would cost its time to first byte.
            return self._tee(plan, claim="")
        return await self._lead_across_processes(plan)

    def lead(self, plan: CachePlan) -> Tee:
        """The lead, without looking for anything first (followers kept finding flights
        that their leaders then abandoned)."""
        return self._tee(plan, claim="")

    async def _lead_across_processes(self, plan: CachePlan) -> Hit | Tee:
        """Let another process already calling upstream answer first."""
        claim = await self.store.claim(plan.key, self._coalesce_timeout)
        if claim is None:
            found = await self.store.wait_for_peer(
                plan.key, self._coalesce_timeout, max_age=plan.decision.max_age
            )
            if isinstance(found, CachedResponse):
                self.store.stats.coalesced += 1
                return Hit(found)
            claim = found  # the other process gave up: call upstream ("": without the lock)
        return self._tee(plan, claim=claim)

    async def _stream_across_processes(
        self, plan: CachePlan, streams: StreamBackend
    ) -> Flight | Tee:
        """Lead, publishing the stream for other processes, or follow the process that
        leads, live (``_cache/remote_streams.py``)."""
        key = plan.key
        claim = await self.store.claim(key, remote_streams.LOCK_TTL)
        if claim is not None:
            # "": nobody can coordinate (the backend failed), so go ahead alone.
            return self._tee(plan, claim=claim, remote=bool(claim))
        token = await streams.stream_leader(key.key)
        if token is None:  # the leader just let go: lead, alone
            return self._tee(plan, claim="")
        flight = Flight(self._max_follower_lag)
        self._flights[key.key] = flight

        def fed() -> None:
            if self._flights.get(key.key) is flight:
                del self._flights[key.key]

        feeder = asyncio.get_running_loop().create_task(
            remote_streams.feed(streams, key, token, flight, encrypt=self.store.encrypt, done=fed)
        )
        self._feeders.add(feeder)
        feeder.add_done_callback(self._feeders.discard)

        def stop() -> None:  # every caller here left: stop reading
            feeder.cancel()

        flight.on_abandon(stop)
        self.store.stats.coalesced += 1
        return flight

    def _tee(self, plan: CachePlan, *, claim: str, remote: bool = False) -> Tee:
        flight = Flight(self._max_follower_lag)
        return Tee(self.store, plan, flight, claim, self._flights, remote)

    @asynccontextmanager
    async def flying(self, tee: Tee) -> AsyncIterator[Flight]:
        """While the leader calls upstream, identical requests follow its flight (those
        of other processes too, for a ``remote`` stream); after, a flight that did not
        end is failed so that its followers retry or give up."""
        plan, flight = tee.plan, tee.flight
        registered = plan.decision.read
        if registered:
            self._flights[plan.key.key] = flight
        try:
            if tee.remote and self._streams is not None:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._publish, tee, self._streams)
                    yield flight
            else:
                yield flight
        finally:
            if registered and self._flights.get(plan.key.key) is flight:
                del self._flights[plan.key.key]

    async def _publish(self, tee: Tee, streams: StreamBackend) -> None:
        with anyio.CancelScope(shield=True):  # its last item tells followers how it ended
            await remote_streams.publish(
                streams, tee.plan.key, tee.claim, tee.flight, encrypt=self.store.encrypt
            )
