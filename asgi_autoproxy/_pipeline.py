"""One request through the proxy: gate -> route -> cache -> dispatch -> relay.

The middleware matches the route, tracks the request for shutdown and hands over a
``ProxyRequest``; ``Pipeline.serve`` does the rest, and its answer goes back through the
request's ``Call``: from the cache (``_cache/facade.py``), from an identical request in
flight, or from upstream (``_upstream/dispatch.py``), relayed by ``_relay.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass

import anyio

from asgi_autoproxy import _json
from asgi_autoproxy._asgi import ClientDisconnected, Receive, Scope
from asgi_autoproxy._cache.coalescing import Flight
from asgi_autoproxy._cache.facade import CachedAnswers, CachePlan, Hit, Tee
from asgi_autoproxy._call import Call, ignore, send_error, send_json, watch_disconnect
from asgi_autoproxy._cancel import TaskCancelScope, beside
from asgi_autoproxy._gate.auth import CallerAuth
from asgi_autoproxy._gate.limits import RequestLimits
from asgi_autoproxy._headers import RequestHeaders
from asgi_autoproxy._http.clients import SharedClients
from asgi_autoproxy._relay import Relay
from asgi_autoproxy._routes import Route, depends_on_server_state, passed_headers, upstream_body
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy._upstream.dispatch import Dispatcher
from asgi_autoproxy._upstream.stream_usage import body_asking_for_usage
from asgi_autoproxy.errors import ProxyError, internal_error, unauthorized
from asgi_autoproxy.providers.base import Endpoint, Provider, UpstreamRequest

logger = logging.getLogger("asgi_autoproxy")

_MAX_FOLLOW_ATTEMPTS = 3
# Endpoints whose streams report usage only when asked (stream_options.include_usage).
_ASKS_USAGE = frozenset({"chat", "completion"})


@dataclass(slots=True)
class ProxyRequest:
    """One request to a proxy route, as the middleware hands it over."""

    route: Route
    scope: Scope
    headers: RequestHeaders
    receive: Receive
    read_body: Callable[[], Awaitable[bytes]]
    """Reads the body within the limits; called once the gate has let the caller in."""


class Pipeline:
    """What serves a request, built once by the middleware from its keywords."""

    def __init__(
        self,
        *,
        router: ModelRouter,
        auth: CallerAuth,
        limits: RequestLimits,
        cache: CachedAnswers | None,
        dispatcher: Dispatcher,
        clients: SharedClients,
        relay: Relay,
        max_response_size: int,
        max_event_size: int,
        stream_usage: bool = True,
    ) -> None:
        self.router = router
        self._auth = auth
        self._limits = limits
        # The models list asks for a key as the other routes do where some provider
        # needs the caller's own: it lists what this proxy is configured to reach.
        self._forwards_key = router.forwarding_key(router.providers)
        self.cache = cache
        self._dispatcher = dispatcher
        self._clients = clients
        self._relay = relay
        self._max_response_size = max_response_size
        self._max_event_size = max_event_size
        self._stream_usage = stream_usage

    async def serve(self, request: ProxyRequest, call: Call) -> None:
        """Gate, route, cache, dispatch and relay one request; errors become answers."""
        route, headers = request.route, request.headers
        try:
            method = request.scope["method"]
            if method != route.method:
                raise ProxyError(
                    405,
                    f"Method {method} is not allowed here; use {route.method}.",
                    code="method_not_allowed",
                    headers=[("allow", route.method)],
                )
            # -- gate
            self._limits.check_headers(headers)
            caller = await self._auth.identify(headers.credential, request.scope)
            call.caller = caller
            callers = self._limits.callers
            if callers is not None:  # rate, tokens, spend: in Redis when shared
                await callers.admit(caller.id)
            if route.answer is not None:
                if caller.credential is None and self._forwards_key is not None:
                    raise _missing_key(self._forwards_key)
                await send_json(call, 200, _json.dumps(route.answer(self.router)))
                return
            body = await request.read_body()
            if route.reply is not None:  # answered here, from the parsed body (/credentials)
                assert route.parse is not None
                reply = route.reply(route.parse(body, self._limits.max_json_depth), caller)
                await send_json(call, 200, _json.dumps(reply))
                return
            # -- cache, first by the plan remembered for these very bytes (no parsing)
            cache = self.cache if route.cacheable else None
            digest = remembered = None
            if cache is not None:
                has_key = caller.credential is not None
                digest = cache.digest(route.name, caller.cache_scope, has_key, headers, body)
                remembered = cache.plan_memo.get(digest)
                # A token's models hold on hits too: a plan remembered for another caller
                # of the same issuer is no way around them.
                if remembered is not None and caller.allows(remembered.model):
                    entry = await cache.hit(remembered)
                    if entry is not None:
                        call.trace.model = remembered.model
                        call.trace.endpoint = remembered.endpoint
                        await self._relay.hit(call, entry, cache.age(entry))
                        return
            # -- route
            assert route.parse is not None and route.endpoint is not None
            payload = route.parse(body, self._limits.max_json_depth)
            model = payload["model"]
            caller.check_model(model)  # a temporary credential's models: 403 for others
            if callers is not None:
                callers.check_model(model)
            endpoint: Endpoint = route.endpoint(self.router, model, payload)
            sent, body = upstream_body(route, payload, body)
            candidates = self.router.candidates(model, endpoint)
            credential = caller.credential
            if credential is None:
                forwards = self.router.forwarding_key(candidates)
                if forwards is not None:
                    raise _missing_key(forwards)
            upstream = UpstreamRequest(
                endpoint=endpoint,
                model=model,
                payload=sent,
                body=body,
                stream=payload.get("stream") is True,
                credential=credential,
                request_id=call.request_id,
                endpoint_name=headers.endpoint_name,
                max_response_size=self._max_response_size,
                max_event_size=self._max_event_size,
                headers=passed_headers(route, headers),
                trace_context=headers.trace_context,
            )
            plan = None
            if cache is not None and not depends_on_server_state(route, payload):
                plan = cache.plan(
                    headers,
                    rule=route.cache_rule,
                    endpoint=endpoint,
                    model=model,
                    # The caller's: a seed the upstream never sees still tells two apart.
                    payload=payload,
                    passed=upstream.headers,
                    providers=[p.name for p in candidates],
                    pinned=headers.endpoint_name,
                    caller_scope=caller.cache_scope,
                    credential=caller.presented,
                )
                if digest is not None and plan is not None and plan.decision.read:
                    cache.plan_memo.put(digest, plan)
            # The remembered plan's entry was just looked up, and missed: no second look.
            looked_up = remembered is not None and plan is not None and remembered.key == plan.key
            # After the plan: entries are keyed on what the caller sent (_routing/params.py).
            upstream = self.router.rewrite(upstream)
            if self._stream_usage and endpoint in _ASKS_USAGE:
                # Usage on streams too (_upstream/stream_usage.py): only the bytes sent change.
                with_usage = body_asking_for_usage(upstream.payload, upstream.body)
                if with_usage is not None:
                    upstream.body, upstream.usage_requested = with_usage, True
            await self._answer(call, candidates, upstream, plan, request.receive, looked_up)
            if callers is not None and callers.charges and call.trace.cache in (None, "MISS"):
                # Charged after the answer, from the usage it reported; hits cost nothing.
                await callers.charge(caller.id, model, call.trace.usage)
        except ClientDisconnected:
            return
        except ProxyError as error:
            await send_error(call, error)
        except Exception:
            logger.exception("unexpected error while proxying request %s", call.request_id)
            await send_error(call, internal_error())

    async def _answer(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        plan: CachePlan | None,
        receive: Receive,
        looked_up: bool,
    ) -> None:
        """Serve from the cache, join an identical request in flight, or call upstream."""
        call.trace.model, call.trace.endpoint = request.model, request.endpoint
        call.trace.price = self.router.catalog.price(request.model)
        tee: Tee | None = None
        if plan is not None:
            cache = self.cache
            assert cache is not None
            for _ in range(_MAX_FOLLOW_ATTEMPTS):
                found = await cache.find(plan, stream=request.stream, looked_up=looked_up)
                looked_up = True  # a follower that must look again goes to the flights
                if isinstance(found, Hit):
                    await self._relay.hit(call, found.entry, cache.age(found.entry))
                    return
                if isinstance(found, Tee):
                    tee = found
                    break
                if await self._follow(call, found, receive):
                    return
            else:
                tee = cache.lead(plan)
        try:
            with self._limits.upstream.hold():  # 503 at once when the cap is reached
                await self._lead(call, candidates, request, tee, receive)
        finally:
            if tee is not None:
                await tee.release()

    async def _lead(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        tee: Tee | None,
        receive: Receive,
    ) -> None:
        """Call upstream and relay, stopping when nobody listens any more."""
        failure: Exception | None = None
        async with self._flying(tee) as flight:
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
                            await self._exchange(call, candidates, request, tee)
                        except Exception as exc:
                            # Kept outside any task group so callers see it bare.
                            failure = exc
            finally:
                if flight is not None and not flight.done:
                    flight.fail(failure if isinstance(failure, ProxyError) else None)
        if not call.connected:
            logger.info("client disconnected from request %s", call.request_id)
            return
        if failure is not None:
            raise failure

    def _flying(self, tee: Tee | None) -> AbstractAsyncContextManager[Flight | None]:
        if tee is None:
            return nullcontext()
        assert self.cache is not None
        return self.cache.flying(tee)

    async def _exchange(
        self,
        call: Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        tee: Tee | None,
    ) -> None:
        provider, response = await self._dispatcher.send(
            candidates, request, self._clients.get(), call.trace
        )
        response.headers.append(("x-bt-used-endpoint", provider.name))
        try:
            await self._relay.upstream(
                call,
                provider,
                response,
                tee,
                stream=request.stream,
                strip_usage=request.usage_requested,
            )
        finally:
            # The exchange is over: a caller leaving now must not cut the close short
            # (the task's own cancel, unlike anyio's, goes through anyio's shield).
            call.on_gone = ignore
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _follow(self, call: Call, flight: Flight, receive: Receive) -> bool:
        """Answer from a leader's flight; False when the leader gave up and we must retry."""
        listener = flight.listen()
        served = True
        try:
            async with TaskCancelScope() as scope:
                call.on_gone = scope.cancel
                async with beside(lambda: watch_disconnect(receive, call)):
                    served = await self._relay.follow(call, flight, listener)
        finally:
            listener.leave()
        return served


def _missing_key(provider: Provider) -> ProxyError:
    return unauthorized(
        "Missing API key: send 'Authorization: Bearer <key>'; "
        f"provider {provider.name!r} forwards the caller's key."
    )
