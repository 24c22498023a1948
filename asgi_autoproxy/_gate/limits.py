"""Limits on what one request, one caller and the whole middleware may use.

Each limit answers with its own status and a message that says what to change:
431 for headers, 400 for JSON nested too deep, 429 (with ``Retry-After``) for a
caller over its rate, 503 (with ``Retry-After``) when the middleware already has as
many upstream calls open as it allows. Nothing here queues: a refused request costs
the proxy almost nothing.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgi_autoproxy._gate.budgets import LimitStorage, check_storage
from asgi_autoproxy._headers import RequestHeaders
from asgi_autoproxy.errors import ProxyError, bad_request

if TYPE_CHECKING:
    from asgi_autoproxy._gate.shared_limits import CallerLimits

DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_CONCURRENT_UPSTREAM = 512
"""Matches the default HTTP client's connection pool, so the pool never queues."""


# -- headers --------------------------------------------------------------------------


def check_header_size(count: int, size: int, max_count: int, max_bytes: int) -> None:
    """Raise 431 when the request has more than ``max_count`` headers or more than
    ``max_bytes`` of header names and values together (``RequestHeaders`` counts them)."""
    if count > max_count:
        raise ProxyError(
            431,
            f"The request has {count} headers; this proxy accepts at most {max_count}.",
            code="request_header_fields_too_large",
        )
    if size > max_bytes:
        raise ProxyError(
            431,
            f"The request's headers take {size} bytes; this proxy accepts at most {max_bytes}.",
            code="request_header_fields_too_large",
        )


# -- JSON nesting ---------------------------------------------------------------------


def too_deep(limit: int) -> ProxyError:
    return bad_request(
        f"Request body is nested deeper than the proxy's limit of {limit} levels.",
        code="json_too_deep",
    )


_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def check_json_depth(body: bytes, payload: Any, limit: int) -> None:
    """Raise 400 when ``payload`` (parsed from ``body``) nests deeper than ``limit``.

    Half the brackets in the raw bytes bound the depth from above (brackets inside
    strings only add to it), so most bodies stop at one C-speed ``translate``. The
    rest are walked one level at a time, containers only, stopping past the limit.
    """
    if len(body.translate(None, _NOT_BRACKET)) // 2 <= limit:
        return
    level: list[Any] = [payload]
    for _ in range(limit):
        deeper: list[Any] = []
        for value in level:
            children = value.values() if type(value) is dict else value
            deeper.extend([c for c in children if type(c) is dict or type(c) is list])
        if not deeper:
            return
        level = deeper
    raise too_deep(limit)


def exceeds_parser_depth(error: Exception) -> bool:
    """orjson refuses nesting past 1024 levels on its own; tell that apart from bad JSON."""
    return "depth limit" in str(error) or "recursion" in str(error)


# -- concurrent upstream calls --------------------------------------------------------


class UpstreamSlots:
    """A cap on upstream calls open at once. Acquiring never waits: a full middleware
    answers 503 at once instead of holding requests (and their bodies) in memory."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("max_concurrent_upstream must be at least 1, or None for no cap")
        self.limit = limit
        self.in_use = 0

    def hold(self) -> UpstreamSlots:
        """``with slots.hold():`` takes a slot for the block, or raises the 503 at once.

        A plain class, not a generator context manager: it runs on every upstream call.
        """
        if self.limit is not None and self.in_use >= self.limit:
            raise ProxyError(
                503,
                f"The proxy already has {self.limit} upstream requests open. Retry shortly.",
                type="server_error",
                code="upstream_capacity",
                headers=[("retry-after", "1")],
            )
        self.in_use += 1
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self.in_use -= 1


# -- per-caller rate limit ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket per caller id: ``burst`` requests at once, refilled at
    ``requests_per_second``. At most ``max_callers`` buckets are kept; the least
    recently seen caller's is dropped first (it comes back full)."""

    requests_per_second: float
    burst: int = 1
    max_callers: int = 10_000
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    storage: LimitStorage = "auto"
    """Where the buckets live: ``auto`` (Redis when the middleware has shared state, else
    this process), ``memory`` or ``redis``."""

    def __post_init__(self) -> None:
        check_storage("RateLimit", self.storage)
        if not (self.requests_per_second > 0 and math.isfinite(self.requests_per_second)):
            raise ValueError("RateLimit.requests_per_second must be a positive number")
        if self.burst < 1:
            raise ValueError("RateLimit.burst must be at least 1")
        if self.max_callers < 1:
            raise ValueError("RateLimit.max_callers must be at least 1")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, caller_id: str) -> None:
        """Spend one token of ``caller_id``'s bucket, or raise 429 saying when to retry."""
        limit = self.limit
        now = limit.clock()
        bucket = self._buckets.get(caller_id)
        if bucket is None:
            bucket = _Bucket(float(limit.burst), now)
            self._buckets[caller_id] = bucket
            if len(self._buckets) > limit.max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller_id)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(limit.burst, bucket.tokens + elapsed * limit.requests_per_second)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        raise rate_exceeded(limit, (1 - bucket.tokens) / limit.requests_per_second)


def rate_exceeded(limit: RateLimit, wait: float) -> ProxyError:
    """The 429 of a caller over ``limit``, who may retry in ``wait`` seconds."""
    return ProxyError(
        429,
        f"Rate limit reached: at most {limit.requests_per_second:g} requests per second "
        f"(bursts of {limit.burst}) per caller. Retry after {max(1, math.ceil(wait))} s.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers=[("retry-after", str(max(1, math.ceil(wait))))],
    )


# -- all of them, configured once -----------------------------------------------------


class RequestLimits:
    """The limits one middleware enforces, validated at start-up."""

    def __init__(
        self,
        *,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        max_concurrent_upstream: int | None = DEFAULT_MAX_CONCURRENT_UPSTREAM,
        rate_limit: RateLimit | None = None,
        callers: CallerLimits | None = None,
    ) -> None:
        """``callers``: the per-caller limits (rate, tokens, spend), shared or not; made
        from ``rate_limit`` alone, per process, when not given."""
        if max_header_count < 1 or max_header_bytes < 1:
            raise ValueError("max_header_count and max_header_bytes must be positive")
        if not 1 <= max_json_depth <= 1000:
            raise ValueError("max_json_depth must be between 1 and 1000 (orjson stops at 1024)")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError("rate_limit must be a RateLimit(requests_per_second=..., burst=...)")
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes
        self.max_json_depth = max_json_depth
        self.upstream = UpstreamSlots(max_concurrent_upstream)
        if callers is None and rate_limit is not None:
            from asgi_autoproxy._gate.shared_limits import CallerLimits

            callers = CallerLimits(rate=rate_limit)
        self.callers = callers

    def check_headers(self, headers: RequestHeaders) -> None:
        check_header_size(headers.count, headers.size, self.max_header_count, self.max_header_bytes)
