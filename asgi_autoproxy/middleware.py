"""``AutoProxyMiddleware``: the ASGI plumbing.

Flow: match the path, read and validate the body, route the model to an endpoint
and provider, call upstream, and relay the answer (whole or as SSE). Everything
the middleware does not serve goes to the wrapped app untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import anyio
import httpx

from asgi_autoproxy._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    route_path,
)
from asgi_autoproxy._cache.backends.base import CacheBackend
from asgi_autoproxy._cache.backends.memory import MemoryCache
from asgi_autoproxy._cache.policy import DEFAULT_TTL, MAX_TTL, MIN_TTL
from asgi_autoproxy._cache.store import CacheStats, ResponseCache
from asgi_autoproxy._call import Call, send_error
from asgi_autoproxy._deadline import Deadline
from asgi_autoproxy._gate.auth import Authenticate, CallerAuth
from asgi_autoproxy._gate.limits import RateLimit, RequestLimits
from asgi_autoproxy._headers import (
    RequestHeaders,
    looks_like_key,
)
from asgi_autoproxy._http.clients import (
    DEFAULT_TIMEOUT,
    SharedClients,
    TransportChoice,
    default_client_factory,
)
from asgi_autoproxy._pipeline import Pipeline
from asgi_autoproxy._routes import Route, route_table
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy._shutdown import InFlightRequests, close_backend
from asgi_autoproxy._sse import error_event
from asgi_autoproxy._telemetry import Telemetry, TelemetryOptions, build_telemetry
from asgi_autoproxy._telemetry.cost import request_cost
from asgi_autoproxy._upstream.dispatch import Cooldown, Dispatcher, LoadBalancing, RetryPolicy
from asgi_autoproxy._upstream.redact import provider_secrets
from asgi_autoproxy.config import CacheOptions, Limits, MovedKeywords, moved_keywords
from asgi_autoproxy.errors import (
    server_shutting_down,
)
from asgi_autoproxy.observability import RequestHook, RequestReporter
from asgi_autoproxy.providers.base import Provider

logger = logging.getLogger("asgi_autoproxy")

# Generated ids: random per process, then a counter: unique without a syscall each.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
DEFAULT_SHUTDOWN_GRACE = 30.0
_LAST_WORDS_WAIT = 1.0
"""How long a request cancelled from outside may take to send its 503 or error event."""


class _Default:
    """Marks a keyword left at its default (where None means "off")."""


_DEFAULT = _Default()


class AutoProxyMiddleware:
    """Serve ``POST {path}`` (and sibling OpenAI routes) inside any ASGI app.

    Every provider whose model patterns match is a candidate; ``load_balancing`` orders
    them and the rest serve as fallbacks. See the README for every keyword.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        providers: Sequence[Provider],
        path: str = "/v1/proxy/auto",
        model_catalog: Mapping[str, str] | None = None,
        sibling_routes: bool = True,
        limits: Limits | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
        cache: CacheBackend | _Default | None = _DEFAULT,
        cache_ttl: int = DEFAULT_TTL,
        cache_options: CacheOptions | None = None,
        load_balancing: LoadBalancing = "ordered",
        weights: Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
        cooldown: Cooldown | None = Cooldown(),  # noqa: B008 - frozen, safe to share
        authenticate: Authenticate | None = None,
        api_keys: Mapping[str, str] | None = None,
        allow_anonymous: bool = False,
        rate_limit: RateLimit | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        on_request: RequestHook | None = None,
        http_transport: TransportChoice = "auto",
        stream_usage: bool = True,
        opentelemetry: bool = False,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        capture_content: bool = False,
        metrics_path: str | None = None,
        metrics_token: str | None = None,
        **moved: Unpack[MovedKeywords],
    ) -> None:
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"path must start with '/' and not end with one, got {path!r}")
        # Checked, with the flat keywords of the last release applied (config.py).
        limits, cache_options = moved_keywords(moved, limits=limits, cache_options=cache_options)
        self.app = app
        self.router = ModelRouter(providers, model_catalog)
        self.max_body_size = limits.max_body_size
        self._body_deadline = (
            None if limits.request_read_timeout is None else Deadline(limits.request_read_timeout)
        )
        # Auth and limits live in their own modules; both validate here, at start-up.
        auth = CallerAuth(
            self.router.providers,
            authenticate=authenticate,
            api_keys=api_keys,
            allow_anonymous=allow_anonymous,
        )
        request_limits = RequestLimits(
            max_header_count=limits.max_header_count,
            max_header_bytes=limits.max_header_bytes,
            max_json_depth=limits.max_json_depth,
            max_concurrent_upstream=limits.max_concurrent_upstream,
            rate_limit=rate_limit,
        )
        # Longest first, so a key that contains another is replaced whole.
        found = {s for p in self.router.providers for s in provider_secrets(p)}
        secrets = tuple(sorted(found, key=len, reverse=True))
        self._routes = route_table(path, siblings=sibling_routes)
        if timeout is None:
            client_timeout = DEFAULT_TIMEOUT
        elif isinstance(timeout, httpx.Timeout):
            client_timeout = timeout
        else:
            client_timeout = httpx.Timeout(timeout)
        if not MIN_TTL <= cache_ttl <= MAX_TTL:
            raise ValueError(f"cache_ttl must be between {MIN_TTL} and {MAX_TTL} seconds")
        backend = MemoryCache() if isinstance(cache, _Default) else cache
        self._cache = (
            None
            if backend is None
            else ResponseCache(backend, timeout=cache_options.timeout, clock=cache_options.clock)
        )
        # Several providers for one model: balancing, failover, retries (_upstream/dispatch.py).
        dispatcher = Dispatcher(
            load_balancing=load_balancing,
            weights=weights,
            retry=retry,
            cooldown=cooldown,
            provider_names=[p.name for p in self.router.providers],
        )
        self._clients = SharedClients(
            client=http_client, factory=default_client_factory(client_timeout, http_transport)
        )
        # Fault tolerance and observability (see _shutdown.py, _idle_timeout.py, observability.py).
        if shutdown_grace < 0:
            raise ValueError("shutdown_grace must be zero or more seconds")
        self._shutdown_grace = shutdown_grace
        self._in_flight = InFlightRequests()
        self._closed = False
        self._reporter = RequestReporter(on_request)
        self._pipeline = Pipeline(
            router=self.router,
            auth=auth,
            limits=request_limits,
            secrets=secrets,
            cache=self._cache,
            cache_ttl=cache_ttl,
            share_cache=cache_options.share_across_callers,
            coalesce_timeout=cache_options.coalesce_timeout,
            max_follower_lag=cache_options.max_follower_lag,
            dispatcher=dispatcher,
            clients=self._clients,
            max_response_size=limits.max_response_size,
            max_event_size=limits.max_event_size,
            stream_idle_timeout=limits.stream_idle_timeout,
            stream_usage=stream_usage,
        )
        # Traces and metrics (_telemetry/): None unless turned on, and then not imported.
        self._telemetry = build_telemetry(
            TelemetryOptions(
                opentelemetry=opentelemetry,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                capture_content=capture_content,
                metrics_path=metrics_path,
                metrics_token=metrics_token,
            ),
            providers=self.router.providers,
            cache_entries=self._cache_entries,
        )
        prometheus = None if self._telemetry is None else self._telemetry.prometheus
        self._metrics_path = None if prometheus is None else metrics_path
        self._metrics = prometheus
        _startup_line(path, self.router.providers, backend, self._telemetry)

    # -- ASGI entry point -------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = route_path(scope)
            route = self._routes.get(path)
            if route is not None:
                await self._handle(route, scope, receive, send)
                return
            if path == self._metrics_path and self._metrics is not None:
                await self._metrics.serve(scope, receive, send)
                return
        elif kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # The server may start the app again (test clients do): release, not close.
                await self._release()
            await send(message)

        return lifespan_send

    @property
    def cache_stats(self) -> CacheStats | None:
        """Hits, misses, writes, coalesced waits and backend errors; None without a cache."""
        return None if self._cache is None else self._cache.stats

    @property
    def cache(self) -> CacheBackend | None:
        return None if self._cache is None else self._cache.backend

    def _cache_entries(self) -> int | None:
        """Entries in the cache, where the backend can say cheaply (memory)."""
        backend = self.cache
        return backend.stats.entries if isinstance(backend, MemoryCache) else None

    async def drain(self) -> int:
        """Give requests in flight ``shutdown_grace`` seconds, then cut the rest: a 503
        ``server_shutting_down``, or a final SSE error event for a stream. Returns how
        many were cut.

        Call it as soon as your server begins to shut down: uvicorn, for one, sends the
        lifespan shutdown (which calls it through ``aclose``) only once every connection
        has closed, which a never-ending stream never does. The ``asgi-autoproxy``
        command calls it then. A second call while one runs waits for that one."""
        return await self._in_flight.drain(self._shutdown_grace)

    async def aclose(self) -> None:
        """Shut down: ``drain()``, then close the HTTP client the middleware made (an
        injected one is left open) and the cache backend, when it has ``aclose()``.

        Once closed, the middleware answers its routes with a 503
        ``server_shutting_down`` instead of opening a new client; a second call does
        nothing. Other routes still reach the wrapped app. (A lifespan shutdown only
        releases the client and backend: the server may start the app again.)"""
        if self._closed:
            return
        await self._release()
        self._closed = True

    async def _release(self) -> None:
        await self.drain()
        await self._clients.aclose()
        if self._cache is not None:
            await close_backend(self._cache.backend)

    async def __aenter__(self) -> AutoProxyMiddleware:
        if self._closed:
            raise RuntimeError("This AutoProxyMiddleware was closed (aclose()); make a new one.")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` has finished."""
        return self._closed

    @property
    def requests_in_flight(self) -> int:
        return len(self._in_flight)

    # -- one proxied request ------------------------------------------------------------

    async def _handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """One request, tracked for graceful shutdown and reported once it ends."""
        headers = RequestHeaders(scope["headers"])
        call = Call(request_id=_request_id(headers.request_id, headers.credential), send=send)
        if self._closed:  # no new client, no upstream call: say so, in OpenAI's shape
            await send_error(call, server_shutting_down())
            return
        telemetry = self._telemetry
        if telemetry is not None:
            call.trace.listener = telemetry.start(scope["method"], route.name, headers)
        try:
            cut = await self._in_flight.run(self._serve(route, call, scope, headers, receive))
        except anyio.get_cancelled_exc_class():
            if telemetry is not None:
                telemetry.abandon(call.trace.listener)
            # Cancelled by someone else: most often the server giving up at shutdown
            # (uvicorn past --timeout-graceful-shutdown), which would answer a bare
            # text/plain 500 or end a stream without a word. Say so first (best effort,
            # briefly: a caller that has gone gets nothing), then let the cancel go on.
            with anyio.move_on_after(_LAST_WORDS_WAIT, shield=True):
                with contextlib.suppress(Exception):
                    await self._cut_short(call)
            raise
        if cut:
            await self._cut_short(call)
        if self._reporter.enabled or telemetry is not None:
            record = call.trace.record(
                request_id=call.request_id,
                method=scope["method"],
                route=route.name,
                caller_id=None if call.caller is None else call.caller.id,
                cost_usd=request_cost(call.trace, self.router.catalog),
            )
            if telemetry is not None:
                telemetry.finish(call.trace.listener, record)
            await self._reporter.report(record)

    async def _serve(
        self, route: Route, call: Call, scope: Scope, headers: RequestHeaders, receive: Receive
    ) -> None:
        async def body() -> bytes:
            """Read here, within the limits, once the pipeline has let the caller in."""
            return await read_body(
                receive, self.max_body_size, headers.content_length, self._body_deadline
            )

        await self._pipeline.serve(route, call, scope, headers, receive, body)

    async def _cut_short(self, call: Call) -> None:
        if call.trace.completed:
            return  # the answer went out whole before the cut
        error = server_shutting_down()
        call.trace.error = error.code
        if call.trace.streaming:
            await call.end_stream(error_event(error.to_dict()))
        elif not call.started:
            await send_error(call, error)


def _startup_line(
    path: str,
    providers: Sequence[Provider],
    cache: CacheBackend | None,
    telemetry: Telemetry | None,
) -> None:
    """One line naming what this proxy serves, for whoever embeds it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    names = ", ".join(f"{p.name} ({type(p).__name__})" for p in providers)
    extras = []
    if telemetry is not None:
        if telemetry.otel is not None:
            extras.append("OpenTelemetry on")
        if telemetry.prometheus is not None:
            extras.append("Prometheus metrics on")
    logger.info(
        "asgi_autoproxy serving POST %s; providers: %s; cache: %s%s",
        path,
        names,
        "off" if cache is None else type(cache).__name__,
        "".join(f"; {extra}" for extra in extras),
    )


def _request_id(given: str | None, credential: str | None) -> str:
    """The caller's id when usable, else a new one. The id is echoed, logged and sent
    upstream, so one that looks like a key (pasted into the wrong header) is replaced."""
    if given is not None and _REQUEST_ID.fullmatch(given) and not looks_like_key(given, credential):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"
