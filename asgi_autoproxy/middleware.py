"""``AutoProxyMiddleware``: the ASGI plumbing, and the middleware's lifecycle.

It matches the path against the route table (``_routes.py``), tracks the request for
graceful shutdown, and hands the pipeline (``_pipeline.py``) a request whose body it
reads within the limits; the pipeline answers through the request's ``Call``.
Everything the middleware does not serve goes to the wrapped app untouched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import anyio
import httpx

from asgi_autoproxy._asgi import ASGIApp, Message, Receive, Scope, Send, read_body, route_path
from asgi_autoproxy._assembly import assemble, shared_state_for
from asgi_autoproxy._cache.backends.base import CacheBackend
from asgi_autoproxy._cache.backends.memory import MemoryCache
from asgi_autoproxy._cache.policy import DEFAULT_TTL
from asgi_autoproxy._cache.store import CacheStats
from asgi_autoproxy._call import Call, send_error
from asgi_autoproxy._cors import CorsOrigin, CorsPolicy
from asgi_autoproxy._gate import credentials as temporary
from asgi_autoproxy._gate.auth import Authenticate
from asgi_autoproxy._gate.budgets import SpendBudget, TokenLimit
from asgi_autoproxy._gate.limits import RateLimit
from asgi_autoproxy._headers import RequestHeaders, request_id
from asgi_autoproxy._http.client_types import UpstreamClient
from asgi_autoproxy._http.clients import TransportChoice
from asgi_autoproxy._pipeline import ProxyRequest
from asgi_autoproxy._routes import Route
from asgi_autoproxy._routing.catalog import CatalogSource
from asgi_autoproxy._shutdown import LAST_WORDS_WAIT, InFlightRequests, close_backend, cut_short
from asgi_autoproxy._telemetry import TelemetryOptions, build_telemetry, log_startup
from asgi_autoproxy._upstream.dispatch import Cooldown, LoadBalancing, RetryPolicy
from asgi_autoproxy.config import CacheOptions, Limits, MovedKeywords, moved_keywords
from asgi_autoproxy.errors import ProxyError, server_shutting_down
from asgi_autoproxy.observability import RequestHook, RequestReporter
from asgi_autoproxy.providers.base import Provider

if TYPE_CHECKING:
    from asgi_autoproxy._shared.redis_link import Client

logger = logging.getLogger("asgi_autoproxy")

DEFAULT_SHUTDOWN_GRACE = 30.0


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
        model_catalog: CatalogSource | None = None,
        sibling_routes: bool = True,
        limits: Limits | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: UpstreamClient | None = None,
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
        token_limit: TokenLimit | None = None,
        spend_budget: SpendBudget | None = None,
        shared_state: str | Client | _Default | None = _DEFAULT,
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
        credentials_secret: str | None = None,
        credentials_denylist: bool = False,
        cors_origins: Sequence[CorsOrigin] | None = None,
        cors_allow_credentials: bool = False,
        **moved: Unpack[MovedKeywords],
    ) -> None:
        # Checked, with the flat keywords of the last release applied (config.py).
        limits, cache_options = moved_keywords(moved, limits=limits, cache_options=cache_options)
        if shutdown_grace < 0:
            raise ValueError("shutdown_grace must be zero or more seconds")
        backend = MemoryCache() if isinstance(cache, _Default) else cache
        # Limits and provider health: in Redis when there is one (by default the
        # RedisCache's own), else per process (_shared/state.py).
        self._shared = shared_state_for(
            None if isinstance(shared_state, _Default) else shared_state,
            backend,
            default=isinstance(shared_state, _Default),
        )
        self._credentials = temporary.from_settings(
            credentials_secret,
            denylist=credentials_denylist,
            store=backend,
            timeout=cache_options.timeout,
        )
        self._cors = (
            None
            if cors_origins is None
            else CorsPolicy(cors_origins, allow_credentials=cors_allow_credentials)
        )
        parts = assemble(
            providers=providers,
            path=path,
            model_catalog=model_catalog,
            sibling_routes=sibling_routes,
            limits=limits,
            timeout=timeout,
            http_client=http_client,
            cache=backend,
            cache_ttl=cache_ttl,
            cache_options=cache_options,
            load_balancing=load_balancing,
            weights=weights,
            retry=retry,
            cooldown=cooldown,
            authenticate=authenticate,
            api_keys=api_keys,
            allow_anonymous=allow_anonymous,
            rate_limit=rate_limit,
            http_transport=http_transport,
            token_limit=token_limit,
            spend_budget=spend_budget,
            shared_state=self._shared,
            stream_usage=stream_usage,
            credentials=self._credentials,
        )
        self.app = app
        self._pipeline = parts.pipeline
        self.router = parts.pipeline.router
        self._routes = parts.routes
        self._clients = parts.clients
        self._cache = parts.cache
        self.max_body_size = parts.max_body_size
        self._body_deadline = parts.body_deadline
        self._shutdown_grace = shutdown_grace
        self._in_flight = InFlightRequests()
        self._closed = False
        self._reporter = RequestReporter(on_request)
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
        self._metrics = None if self._telemetry is None else self._telemetry.prometheus
        self._metrics_path = None if self._metrics is None else metrics_path
        if self._metrics_path is not None and self._routes.get(self._metrics_path) is not None:
            raise ValueError(f"metrics_path {metrics_path!r} is one of the proxy's own routes")
        log_startup(path, self.router.providers, self.cache, self._telemetry)

    # -- ASGI entry point -------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = route_path(scope)
            route = self._routes.get(path)
            if route is not None:
                if self._cors is not None:  # a preflight is answered there and then
                    cors_send = await self._cors.gate(scope, route.method, send)
                    if cors_send is None:
                        return
                    send = cors_send
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
        return backend.entry_count if isinstance(backend, MemoryCache) else None

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
        if self._shared is not None:
            await self._shared.link.aclose()  # the cache's own link: closing twice is fine

    async def __aenter__(self) -> AutoProxyMiddleware:
        if self._closed:
            raise RuntimeError("This AutoProxyMiddleware was closed (aclose()); make a new one.")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def issue_credential(
        self, caller_id: str, *, model: str | Sequence[str] | None = None, ttl_seconds: int = 600
    ) -> str:
        """A temporary credential for ``caller_id``, as ``POST {prefix}/credentials``
        gives one, for an app that decides who its callers are itself (a logged-in
        page). ``model``: one name, several, or None for any."""
        if self._credentials is None:
            raise RuntimeError("temporary credentials are off: pass credentials_secret=")
        if not isinstance(caller_id, str) or not caller_id:
            raise ValueError("caller_id must be a non-empty string")
        listed = model if model is None or isinstance(model, str) else list(model)
        try:
            wanted = temporary.parse_credential_request(
                {"model": listed, "ttl_seconds": ttl_seconds}
            )
        except ProxyError as error:  # the route's 400, as the Python caller's ValueError
            raise ValueError(error.message) from None
        return self._credentials.issue(
            caller_id, models=wanted.models, ttl_seconds=wanted.ttl_seconds
        )

    async def revoke_credential(self, token_or_jti: str) -> str:
        """Refuse a temporary credential (the token, or its ``jti``) from now on, on every
        instance that shares the cache backend; returns the ``jti``. Needs
        ``credentials_denylist=True``."""
        if self._credentials is None:
            raise RuntimeError("temporary credentials are off: pass credentials_secret=")
        return await self._credentials.revoke(token_or_jti)

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
        call = Call(
            request_id=request_id(headers.request_id, headers.credential),
            send=send,
            dialect=route.dialect,
        )
        if self._closed:  # no new client, no upstream call: say so, in OpenAI's shape
            await send_error(call, server_shutting_down())
            return
        telemetry = self._telemetry
        if telemetry is not None:  # opens the request's span
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
            with anyio.move_on_after(LAST_WORDS_WAIT, shield=True):
                with contextlib.suppress(Exception):
                    await cut_short(call)
            raise
        if cut:
            await cut_short(call)
        if self._reporter.enabled or telemetry is not None:
            record = call.trace.record(
                request_id=call.request_id,
                method=scope["method"],
                route=route.name,
                caller_id=None if call.caller is None else call.caller.id,
                credential_id=_credential_id(call),
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

        await self._pipeline.serve(ProxyRequest(route, scope, headers, receive, body), call)


def _credential_id(call: Call) -> str | None:
    grant = None if call.caller is None else call.caller.grant
    return None if grant is None else grant.jti
