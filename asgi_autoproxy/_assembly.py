"""Builds the pipeline from the middleware's keywords, checking each at start-up.

Kept apart from the ASGI plumbing in ``middleware.py``: this runs once, and each part
it makes (auth, limits, cache, dispatch, clients, relay) lives in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from asgi_autoproxy._cache.backends.base import CacheBackend
from asgi_autoproxy._cache.backends.redis import RedisCache
from asgi_autoproxy._cache.facade import CachedAnswers
from asgi_autoproxy._cache.policy import MAX_TTL, MIN_TTL
from asgi_autoproxy._cache.store import ResponseCache
from asgi_autoproxy._deadline import Deadline
from asgi_autoproxy._gate.auth import Authenticate, CallerAuth
from asgi_autoproxy._gate.budgets import SpendBudget, TokenLimit
from asgi_autoproxy._gate.credentials import TemporaryCredentials
from asgi_autoproxy._gate.limits import RateLimit, RequestLimits
from asgi_autoproxy._gate.shared_limits import CallerLimits
from asgi_autoproxy._http.client_types import UpstreamClient
from asgi_autoproxy._http.clients import (
    DEFAULT_TIMEOUT,
    SharedClients,
    TransportChoice,
    default_client_factory,
)
from asgi_autoproxy._pipeline import Pipeline
from asgi_autoproxy._relay import Relay
from asgi_autoproxy._routes import RouteTable, route_table
from asgi_autoproxy._routing.catalog import CatalogSource
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy._routing.pricing import Price
from asgi_autoproxy._shared.state import SharedState
from asgi_autoproxy._upstream.dispatch import Cooldown, Dispatcher, LoadBalancing, RetryPolicy
from asgi_autoproxy._upstream.redact import provider_secrets
from asgi_autoproxy.config import CacheOptions, Limits
from asgi_autoproxy.providers.base import Provider

if TYPE_CHECKING:
    from asgi_autoproxy._shared.redis_link import Client


@dataclass(slots=True)
class Assembly:
    pipeline: Pipeline
    routes: RouteTable
    """Full path to the row that serves it."""
    clients: SharedClients
    cache: ResponseCache | None
    max_body_size: int
    body_deadline: Deadline | None


def assemble(
    *,
    providers: Sequence[Provider],
    path: str,
    model_catalog: CatalogSource | None,
    sibling_routes: bool,
    limits: Limits,
    timeout: float | httpx.Timeout | None,
    http_client: UpstreamClient | None,
    cache: CacheBackend | None,
    cache_ttl: int,
    cache_options: CacheOptions,
    load_balancing: LoadBalancing,
    weights: Mapping[str, float] | None,
    retry: RetryPolicy | None,
    cooldown: Cooldown | None,
    authenticate: Authenticate | None,
    api_keys: Mapping[str, str] | None,
    allow_anonymous: bool,
    rate_limit: RateLimit | None,
    http_transport: TransportChoice,
    token_limit: TokenLimit | None = None,
    spend_budget: SpendBudget | None = None,
    shared_state: SharedState | None = None,
    stream_usage: bool = True,
    credentials: TemporaryCredentials | None = None,
) -> Assembly:
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"path must start with '/' and not end with one, got {path!r}")
    if not MIN_TTL <= cache_ttl <= MAX_TTL:
        raise ValueError(f"cache_ttl must be between {MIN_TTL} and {MAX_TTL} seconds")
    router = ModelRouter(providers, model_catalog)
    auth = CallerAuth(
        router.providers,
        authenticate=authenticate,
        api_keys=api_keys,
        allow_anonymous=allow_anonymous,
        credentials=credentials,
    )
    request_limits = RequestLimits(
        max_header_count=limits.max_header_count,
        max_header_bytes=limits.max_header_bytes,
        max_json_depth=limits.max_json_depth,
        max_concurrent_upstream=limits.max_concurrent_upstream,
        # Rate, token and spend limits: in Redis when shared, else per process.
        callers=caller_limits(
            rate_limit, token_limit, spend_budget, shared_state, router.catalog.price
        ),
    )
    # Longest first, so a key that contains another is replaced whole.
    found = {s for p in router.providers for s in provider_secrets(p)}
    secrets = tuple(sorted(found, key=len, reverse=True))
    if timeout is None:
        client_timeout = DEFAULT_TIMEOUT
    elif isinstance(timeout, httpx.Timeout):
        client_timeout = timeout
    else:
        client_timeout = httpx.Timeout(timeout)
    store = (
        None
        if cache is None
        else ResponseCache(cache, timeout=cache_options.timeout, clock=cache_options.clock)
    )
    answers = (
        None
        if store is None
        else CachedAnswers(
            store,
            default_ttl=cache_ttl,
            share_across_callers=cache_options.share_across_callers,
            coalesce_timeout=cache_options.coalesce_timeout,
            max_follower_lag=cache_options.max_follower_lag,
        )
    )
    clients = SharedClients(
        client=http_client, factory=default_client_factory(client_timeout, http_transport)
    )
    pipeline = Pipeline(
        router=router,
        auth=auth,
        limits=request_limits,
        cache=answers,
        # Several providers for one model: balancing, failover, retries.
        dispatcher=Dispatcher(
            load_balancing=load_balancing,
            weights=weights,
            retry=retry,
            cooldown=cooldown,
            provider_names=[p.name for p in router.providers],
            shared=shared_state,  # cool-downs and round-robin turns across instances
        ),
        clients=clients,
        relay=Relay(
            secrets=secrets,
            max_event_size=limits.max_event_size,
            stream_idle_timeout=limits.stream_idle_timeout,
        ),
        max_response_size=limits.max_response_size,
        max_event_size=limits.max_event_size,
        stream_usage=stream_usage,
    )
    return Assembly(
        pipeline=pipeline,
        routes=route_table(path, siblings=sibling_routes, credentials=credentials),
        clients=clients,
        cache=store,
        max_body_size=limits.max_body_size,
        body_deadline=(
            None if limits.request_read_timeout is None else Deadline(limits.request_read_timeout)
        ),
    )


def shared_state_for(
    shared_state: str | Client | None, backend: CacheBackend | None, *, default: bool
) -> SharedState | None:
    """Where shared state lives: ``shared_state`` (a Redis URL or client, or None for
    per process), or by ``default`` the RedisCache's own Redis, when the cache is one."""
    if default:
        if isinstance(backend, RedisCache):
            return SharedState(backend.link, prefix=backend.prefix)
        return None
    if shared_state is None:
        return None
    return SharedState.connect(shared_state)


def caller_limits(
    rate: RateLimit | None,
    tokens: TokenLimit | None,
    spend: SpendBudget | None,
    shared: SharedState | None,
    price: Callable[[str], Price | None],
) -> CallerLimits | None:
    for keyword, value, kind in (
        ("token_limit", tokens, TokenLimit),
        ("spend_budget", spend, SpendBudget),
        ("rate_limit", rate, RateLimit),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{keyword} must be a {kind.__name__}(...), got {value!r}")
    if rate is None and tokens is None and spend is None:
        return None
    return CallerLimits(rate=rate, tokens=tokens, spend=spend, shared=shared, price=price)
