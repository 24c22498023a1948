"""One request through the proxy: gate -> route -> cache -> dispatch -> relay.

The middleware matches the route, tracks the request for shutdown and hands over a way
to read the body; ``Pipeline.serve`` does the rest and answers through the ``Call``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from asgi_autoproxy import _json
from asgi_autoproxy._asgi import (
    ClientDisconnected,
    Receive,
    Scope,
)
from asgi_autoproxy._cache.coalescing import Flight, Listener
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.keys import SHARED_CALLER, EntryKey, entry_key
from asgi_autoproxy._cache.policy import CacheDecision, decide
from asgi_autoproxy._cache.remembered_plans import PlanMemo, request_digest
from asgi_autoproxy._cache.store import ResponseCache
from asgi_autoproxy._call import Call, ignore, send_error, send_json, watch_disconnect
from asgi_autoproxy._cancel import TaskCancelScope, along, beside
from asgi_autoproxy._gate.auth import Caller, CallerAuth
from asgi_autoproxy._gate.limits import (
    RequestLimits,
)
from asgi_autoproxy._headers import (
    RequestHeaders,
    answer_headers,
    replayed_on_hits,
)
from asgi_autoproxy._http.clients import (
    SharedClients,
)
from asgi_autoproxy._idle_timeout import idle_limit
from asgi_autoproxy._routes import Route
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy._sse import EventSplitter, error_event
from asgi_autoproxy._upstream.answer_checks import StreamAudit, is_answer, json_answer
from asgi_autoproxy._upstream.dispatch import Dispatcher
from asgi_autoproxy._upstream.redact import scrub, scrub_headers
from asgi_autoproxy._upstream.stream_usage import body_asking_for_usage
from asgi_autoproxy.errors import (
    ProxyError,
    ResponseTooLarge,
    client_too_slow,
    internal_error,
    unauthorized,
    upstream_stream_broken,
    upstream_timeout,
    upstream_too_large,
    upstream_unreachable,
)
from asgi_autoproxy.providers.base import Endpoint, Provider, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("asgi_autoproxy")

_HIT = (b"x-bt-cached", b"HIT")
_MISS = (b"x-bt-cached", b"MISS")
_MAX_FOLLOW_ATTEMPTS = 3
# How far a shared stream is read ahead of its fastest client: a little, so that reading
# the upstream and writing to the clients overlap, yet the upstream still waits for them.
_READ_AHEAD = 64 * 1024
# How long a client dropped as too slow gets to take its error event before it is cut.
_DROPPED_GRACE = 5.0


@dataclass(slots=True)
class _CachePlan:
    decision: CacheDecision
    key: EntryKey
    model: str
    endpoint: Endpoint


class Pipeline:
    """What serves a request, built once by the middleware from its keywords."""

    def __init__(
        self,
        *,
        router: ModelRouter,
        auth: CallerAuth,
        limits: RequestLimits,
        secrets: tuple[bytes, ...],
        cache: ResponseCache | None,
        cache_ttl: int,
        share_cache: bool,
        coalesce_timeout: float,
        max_follower_lag: int,
        dispatcher: Dispatcher,
        clients: SharedClients,
        max_response_size: int,
        max_event_size: int,
        stream_idle_timeout: float | None,
        stream_usage: bool = True,
    ) -> None:
        self.router = router
        self._auth = auth
        self._limits = limits
        # The models list asks for a key as the other routes do where some provider
        # needs the caller's own: it lists what this proxy is configured to reach.
        self._forwards_key = router.forwarding_key(router.providers)
        self._secrets = secrets
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._share_cache = share_cache
        self.plan_memo: PlanMemo[_CachePlan] | None = None if cache is None else PlanMemo()
        self._coalesce_timeout = coalesce_timeout
        self._max_follower_lag = max_follower_lag
        self._flights: dict[str, Flight] = {}
        self._dispatcher = dispatcher
        self._clients = clients
        self._max_response_size = max_response_size
        self._max_event_size = max_event_size
        self._stream_idle_timeout = stream_idle_timeout
        self._stream_usage = stream_usage

    async def serve(
        self,
        route: Route,
        call: Call,
        scope: Scope,
        headers: RequestHeaders,
        receive: Receive,
        read_body: Callable[[], Awaitable[bytes]],
    ) -> None:
        """Gate, route, cache, dispatch and relay one request; errors become answers."""
        try:
            if scope["method"] != route.method:
                raise ProxyError(
                    405,
                    f"Method {scope['method']} is not allowed here; use {route.method}.",
                    code="method_not_allowed",
                    headers=[("allow", route.method)],
                )
            self._limits.check_headers(headers)
            caller = await self._auth.identify(headers.credential, scope)
            call.caller = caller
            if self._limits.buckets is not None:
                self._limits.check_rate(caller.id)
            if route.answer is not None:
                if caller.credential is None and self._forwards_key is not None:
                    raise _missing_key(self._forwards_key)
                await send_json(call, 200, _json.dumps(route.answer(self.router)))
                return
            body = await read_body()
            digest = remembered = None
            if self.plan_memo is not None and route.cacheable:
                cache_caller = self._cache_caller(caller.cache_scope)
                has_key = caller.credential is not None
                digest = request_digest(route.name, cache_caller, has_key, headers, body)
                remembered = self.plan_memo.get(digest)
                if remembered is not None and await self._serve_cached(call, remembered):
                    return
            assert route.parse is not None and route.endpoint is not None
            payload = route.parse(body, self._limits.max_json_depth)
            model = payload["model"]
            endpoint: Endpoint = route.endpoint(self.router, model, payload)
            candidates = self.router.candidates(model, endpoint)
            credential = caller.credential
            if credential is None:
                forwards = self.router.forwarding_key(candidates)
                if forwards is not None:
                    raise _missing_key(forwards)
            # Usage on streams too (_upstream/stream_usage.py); the payload stays as sent.
            sent = body_asking_for_usage(payload, body) if self._stream_usage else None
            request = UpstreamRequest(
                endpoint=endpoint,
                model=model,
                payload=payload,
                body=body if sent is None else sent,
                stream=payload.get("stream") is True,
                credential=credential,
                request_id=call.request_id,
                endpoint_name=headers.endpoint_name,
                max_response_size=self._max_response_size,
                max_event_size=self._max_event_size,
                trace_context=headers.trace_context,
                usage_requested=sent is not None,
            )
            plan = (
                self._cache_plan(headers, request, candidates, caller) if route.cacheable else None
            )
            if digest is not None and plan is not None and plan.decision.read:
                assert self.plan_memo is not None
                self.plan_memo.put(digest, plan)
            # The remembered plan's entry was just looked up, and missed: no second look.
            looked_up = remembered is not None and plan is not None and remembered.key == plan.key
            await self._answer(call, candidates, request, plan, receive, looked_up=looked_up)
        except ClientDisconnected:
            return
        except ProxyError as error:
            await send_error(call, error)
        except Exception:
            logger.exception("unexpected error while proxying request %s", call.request_id)
            await send_error(call, internal_error())

    def _cache_plan(
        self,
        headers: RequestHeaders,
        request: UpstreamRequest,
        candidates: Sequence[Provider],
        caller: Caller,
    ) -> _CachePlan | None:
        if self._cache is None:
            return None
        decision = decide(
            request.payload,
            use_cache=headers.use_cache,
            cache_ttl=headers.cache_ttl,
            cache_control=headers.cache_control,
            default_ttl=self._cache_ttl,
        )
        if not (decision.read or decision.write):
            return None
        key = entry_key(
            endpoint=request.endpoint,
            # A pinned provider answers alone, so it must not share the group's entries.
            providers=request.endpoint_name or ",".join(p.name for p in candidates),
            caller=self._cache_caller(caller.cache_scope),  # hashed only here, when needed
            payload=request.payload,
        )
        return _CachePlan(decision, key, request.model, request.endpoint)

    def _cache_caller(self, caller_scope: str) -> str:
        """Whose entries a caller reads: its own, or everyone's when they are shared."""
        return SHARED_CALLER if self._share_cache else caller_scope

    async def _serve_cached(self, call: Call, plan: _CachePlan) -> bool:
        """Answer from ``plan``'s entry; False when it is not cached. A plan remembered
        for these very bytes (_cache/remembered_plans.py) gets here without any parsing."""
        assert self._cache is not None
        entry = await self._cache.get(plan.key, max_age=plan.decision.max_age)
        if entry is None:
            return False
        call.trace.model, call.trace.endpoint = plan.model, plan.endpoint
        await self._send_hit(call, entry)
        return True

    async def _answer(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        plan: _CachePlan | None,
        receive: Receive,
        *,
        looked_up: bool = False,
    ) -> None:
        """Serve from the cache (unless ``looked_up`` already missed), join an identical
        request in flight, or call upstream."""
        call.trace.model, call.trace.endpoint = request.model, request.endpoint
        if plan is not None and plan.decision.read:
            assert self._cache is not None
            if not looked_up and await self._serve_cached(call, plan):
                return
            for _ in range(_MAX_FOLLOW_ATTEMPTS):
                flight = self._flights.get(plan.key.key)
                if flight is None:
                    break
                if await self._follow(call, flight, receive):
                    return
            if self._cache.locks is not None and not request.stream:
                await self._lead_across_processes(call, candidates, request, plan, receive)
                return
        with self._limits.upstream.hold():  # 503 at once when the cap is reached
            await self._lead(call, candidates, request, plan, receive)

    async def _lead_across_processes(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        plan: _CachePlan,
        receive: Receive,
    ) -> None:
        """Like ``_lead``, but first let another process already calling upstream answer.

        Streams skip this: waiting for another process's whole stream would cost its
        time to first byte.
        """
        assert self._cache is not None
        token = await self._cache.claim(plan.key, self._coalesce_timeout)
        if token is None:
            found = await self._cache.wait_for_peer(
                plan.key, self._coalesce_timeout, max_age=plan.decision.max_age
            )
            if isinstance(found, CachedResponse):
                self._cache.stats.coalesced += 1
                await self._send_hit(call, found)
                return
            token = found  # the other process gave up: call upstream ("": without the lock)
        try:
            with self._limits.upstream.hold():
                await self._lead(call, candidates, request, plan, receive)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cache.release(plan.key, token)

    async def _lead(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        plan: _CachePlan | None,
        receive: Receive,
    ) -> None:
        """Call upstream and relay, stopping when nobody listens any more."""
        flight = Flight(self._max_follower_lag) if plan is not None else None
        registered = plan is not None and plan.decision.read and flight is not None
        if registered:
            assert plan is not None and flight is not None
            self._flights[plan.key.key] = flight
        failure: Exception | None = None
        try:
            async with TaskCancelScope() as scope:
                if flight is not None:
                    flight.on_abandon(scope.cancel)

                def caller_gone() -> None:
                    if flight is None:
                        scope.cancel()
                    else:  # the flight stops the call once no follower listens either
                        flight.leader.leave()

                call.on_gone = caller_gone
                async with beside(lambda: watch_disconnect(receive, call)):
                    try:
                        await self._exchange(call, candidates, request, plan, flight)
                    except Exception as exc:
                        # Kept outside any task group so callers see it bare.
                        failure = exc
        finally:
            if flight is not None and not flight.done:
                flight.fail(failure if isinstance(failure, ProxyError) else None)
            if registered:
                assert plan is not None
                if self._flights.get(plan.key.key) is flight:
                    del self._flights[plan.key.key]
        if not call.connected:
            logger.info("client disconnected from request %s", call.request_id)
            return
        if failure is not None:
            raise failure

    async def _exchange(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        plan: _CachePlan | None,
        flight: Flight | None,
    ) -> None:
        provider, response = await self._dispatcher.send(
            candidates, request, self._clients.get(), call.trace
        )
        response.headers.append(("x-bt-used-endpoint", provider.name))
        try:
            if request.stream and response.status == 200 and response.is_event_stream:
                await self._relay_stream(
                    call, provider, response, plan, flight, strip_usage=request.usage_requested
                )
            else:
                await self._relay_whole(call, provider, response, plan, flight)
        finally:
            # The exchange is over: a caller leaving now must not cut the close short
            # (the task's own cancel, unlike anyio's, goes through anyio's shield).
            call.on_gone = ignore
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _relay_whole(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        plan: _CachePlan | None,
        flight: Flight | None,
    ) -> None:
        try:
            body = await response.read()
        except httpx.TimeoutException:
            raise upstream_timeout(provider.name) from None
        except httpx.TransportError:
            raise upstream_unreachable(provider.name) from None
        body = scrub(body, self._secrets)
        status = response.status
        headers = response.headers
        call.trace.provider, call.trace.cache = provider.name, "MISS" if plan else None
        answer: dict[str, Any] | None = None
        if 200 <= status < 300:
            answer = json_answer(provider.name, body)
            call.trace.answered(answer)
        if status >= 400 and not _is_openai_error(body):
            body = self._unshaped_error(provider, response, call.request_id)
            headers = [(k, v) for k, v in headers if k != "content-type"]
            headers.append(("content-type", "application/json"))
        encoded = self._answer_headers(headers)
        cache_headers: list[tuple[bytes, bytes]] = []
        if (
            plan is not None
            and plan.decision.write
            and answer is not None
            and is_answer(plan.endpoint, answer)
        ):
            assert self._cache is not None
            stored = replayed_on_hits(encoded)
            entry = CachedResponse(status, stored, (body,), False, self._cache.clock())
            await self._cache.put(plan.key, entry, plan.decision.ttl)
            max_age = f"max-age={plan.decision.ttl}".encode()
            cache_headers = [(b"cache-control", max_age), (b"age", b"0")]
        if flight is not None:
            flight.start(status, encoded, stream=False)
            flight.publish(body)
            flight.complete()
        await call.respond(status, body, [*encoded, *cache_headers, _MISS])

    def _unshaped_error(
        self, provider: Provider, response: UpstreamResponse, request_id: str
    ) -> bytes:
        """An OpenAI-shaped body for an error answer without one (a wrong base URL's 404
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
        ).to_body()

    async def _relay_stream(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        plan: _CachePlan | None,
        flight: Flight | None,
        *,
        strip_usage: bool = False,
    ) -> None:
        headers = self._answer_headers((k, v) for k, v in response.headers if k != "content-type")
        if flight is not None:
            flight.start(200, headers, stream=True)
        await call.start_stream([*headers, _MISS])
        call.trace.provider, call.trace.cache = provider.name, "MISS" if plan else None
        if flight is None or plan is None or self._flights.get(plan.key.key) is not flight:
            # Nobody can join: the caller's socket paces the upstream, as for any proxy.
            tail = await self._read_stream(
                call, provider, response, plan, flight, shared=False, strip_usage=strip_usage
            )
            await call.end_stream(tail)
            return
        # Followers may join: the caller's client takes the stream from the flight at its
        # own pace, like theirs (_send_flight), so that its socket holds back nobody else.
        async with along(lambda: self._send_flight(call, flight, flight.leader)):
            await self._read_stream(
                call, provider, response, plan, flight, shared=True, strip_usage=strip_usage
            )

    async def _read_stream(
        self,
        call: Call,
        provider: Provider,
        response: UpstreamResponse,
        plan: _CachePlan | None,
        flight: Flight | None,
        *,
        shared: bool,
        strip_usage: bool = False,
    ) -> bytes:
        """Relay the upstream's events to ``call``, or into a ``shared`` flight; store a
        whole stream. Returns the error event that ends a broken stream, else b""."""
        splitter = EventSplitter(self._max_event_size)
        # How the stream ends, malformed events, token usage (and the chunk we asked for).
        audit = StreamAudit(strip_usage=strip_usage)
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
                        if flight is not None:
                            for event in events:
                                flight.publish(event)
                        if shared:
                            assert flight is not None
                            await flight.pace(_READ_AHEAD)
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
            except httpx.TimeoutException:
                broken = "no data arrived within the read timeout"
            except httpx.TransportError:
                broken = "the connection was lost"
        if idle.expired:
            broken = f"no data arrived for {idle.seconds:g} s"
        if too_large is not None:
            broken = f"it sent an event larger than {too_large.limit} bytes"
        trace = call.trace
        trace.usage, trace.response_model = audit.usage, audit.model
        trace.finish_reason = audit.finish_reason
        failed = audit.failed
        if broken is None and not audit.finished:
            broken = "it closed before sending [DONE]"
        tail = b""
        if broken is not None:
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
            tail = error_event(error.to_dict())
        if flight is not None:
            if plan is not None and plan.decision.write and broken is None and not failed:
                # Stored before the flight ends: its end ends the caller's stream too, and
                # a caller that read it all and asks again must find the entry.
                assert self._cache is not None
                stored = replayed_on_hits(flight.headers)
                entry = CachedResponse(200, stored, tuple(flight.parts), True, self._cache.clock())
                await self._cache.put(plan.key, entry, plan.decision.ttl)
            if broken is not None:
                flight.break_stream(tail)
            else:
                flight.complete()
        return tail

    async def _follow(self, call: Call, flight: Flight, receive: Receive) -> bool:
        """Answer from a leader's flight; False when the leader gave up and we must retry."""
        assert self._cache is not None
        self._cache.stats.coalesced += 1
        listener = flight.listen()
        served = True
        try:
            async with TaskCancelScope() as scope:
                call.on_gone = scope.cancel
                async with beside(lambda: watch_disconnect(receive, call)):
                    served = await self._consume(call, flight, listener)
        finally:
            listener.leave()
        return served

    async def _consume(self, call: Call, flight: Flight, listener: Listener) -> bool:
        while not flight.started:
            await flight.changed()
        if flight.state == "abandoned":
            return False
        call.trace.cache = "COALESCED"
        if flight.state == "failed":  # an error is never a hit
            assert flight.error is not None
            await send_error(call, flight.error, label=_MISS)
            return True
        if not flight.stream:
            label = _MISS if flight.status >= 400 else _HIT
            await call.respond(flight.status, b"".join(flight.parts), [*flight.headers, label])
            return True
        await call.start_stream([*flight.headers, _HIT])
        await self._send_flight(call, flight, listener)
        return True

    async def _send_flight(self, call: Call, flight: Flight, listener: Listener) -> None:
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
                await call.end_stream(error_event(error.to_dict()))
            # Nothing more goes out, a shutdown's last words included: the leader's task
            # may read on for the followers long after its own client was dropped.
            call.connected = False
            return
        tail = flight.broken_tail
        if flight.state in ("failed", "abandoned") and not tail:
            tail = error_event(
                upstream_stream_broken("coalesced", "the request it joined was abandoned").to_dict()
            )
        await call.end_stream(tail)

    async def _send_hit(self, call: Call, entry: CachedResponse) -> None:
        assert self._cache is not None
        stored: Sequence[tuple[bytes, bytes]] = entry.headers
        if not entry.scrubbed and self._secrets:
            # Written by a version that did not scrub headers; entries written since were
            # scrubbed on the live path, so a hit on them costs nothing here.
            stored = scrub_headers(list(stored), self._secrets)
        headers = [*stored, _HIT, (b"age", str(int(self._cache.age(entry))).encode())]
        call.trace.cache = "HIT"
        if not entry.stream:
            await call.respond(entry.status, entry.body, headers)
            return
        await call.start_stream(headers)
        for event in entry.parts:
            await call.emit(event)
        await call.end_stream(b"")

    # -- responses ----------------------------------------------------------------------

    def _answer_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        """An upstream answer's headers, encoded, as the caller, followers and the cache
        get them: this is where every provider's answer leaves the proxy (custom ones'
        too): the allow-list applies here, and a key echoed in a passed header
        (``x-request-id``...) is scrubbed here."""
        encoded = answer_headers(headers)
        if self._secrets:  # none in pass-through mode: nothing to search for
            encoded = scrub_headers(encoded, self._secrets)
        return encoded


def _missing_key(provider: Provider) -> ProxyError:
    return unauthorized(
        "Missing API key: send 'Authorization: Bearer <key>'; "
        f"provider {provider.name!r} forwards the caller's key."
    )


def _is_openai_error(body: bytes) -> bool:
    try:
        parsed = _json.loads(body)
    except _json.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), (dict, str))
