"""The middleware's advanced keywords, grouped: ``Limits`` and ``CacheOptions``.

``RetryPolicy``, ``Cooldown`` and ``RateLimit`` are grouped the same way, beside the code
that uses them. Each object is frozen and checks its values when made, so a wrong one
fails at start-up with a message naming the field.

Until the next release the flat keywords these replaced still work: ``moved_keywords``
turns them into objects, with a ``DeprecationWarning`` naming the new spelling.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from asgi_autoproxy._cache.coalescing import DEFAULT_MAX_LAG
from asgi_autoproxy._gate.limits import (
    DEFAULT_MAX_CONCURRENT_UPSTREAM,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_JSON_DEPTH,
)

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_REQUEST_READ_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_SIZE = 32 * 1024 * 1024
# Chat deltas are well under 1 KiB; the largest events seen carry a whole base64 image
# or audio clip, a few MB. 4 MiB leaves room for those and still caps what an event
# that never ends can cost each stream.
DEFAULT_MAX_EVENT_SIZE = 4 * 1024 * 1024
DEFAULT_STREAM_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_FOLLOWER_LAG = DEFAULT_MAX_LAG


def _positive(owner: str, name: str, value: float | None, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if value is None or not (value > 0 and math.isfinite(value)):
        allowed = "a positive number or None" if none_ok else "a positive number"
        raise ValueError(f"{owner}.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one request may cost: body and answer sizes, read and idle times, headers,
    JSON nesting, and upstream calls in flight. See the README for each field."""

    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    request_read_timeout: float | None = DEFAULT_REQUEST_READ_TIMEOUT
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    stream_idle_timeout: float | None = DEFAULT_STREAM_IDLE_TIMEOUT
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_concurrent_upstream: int | None = DEFAULT_MAX_CONCURRENT_UPSTREAM

    def __post_init__(self) -> None:
        for name in ("max_body_size", "max_response_size", "max_event_size"):
            _positive("Limits", name, getattr(self, name))
        for name in ("request_read_timeout", "stream_idle_timeout"):
            _positive("Limits", name, getattr(self, name), none_ok=True)
        for name in ("max_header_count", "max_header_bytes"):
            _positive("Limits", name, getattr(self, name))
        _positive("Limits", "max_concurrent_upstream", self.max_concurrent_upstream, none_ok=True)
        if not 1 <= self.max_json_depth <= 1000:
            raise ValueError(
                "Limits.max_json_depth must be between 1 and 1000 (orjson stops at 1024),"
                f" got {self.max_json_depth!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """How the cache is used (the backend itself is the ``cache=`` keyword)."""

    timeout: float = 0.1
    """Bound, in seconds, on each backend call; slower counts as a miss."""
    share_across_callers: bool = False
    clock: Callable[[], float] = field(default=time.time, compare=False)
    """Wall clock for entry ages; injectable for tests."""
    coalesce_timeout: float = 60.0
    max_follower_lag: int = DEFAULT_MAX_FOLLOWER_LAG

    def __post_init__(self) -> None:
        for name in ("timeout", "coalesce_timeout", "max_follower_lag"):
            _positive("CacheOptions", name, getattr(self, name))


class MovedKeywords(TypedDict, total=False):
    """The flat keywords that moved into ``limits=`` or ``cache_options=``."""

    max_body_size: int
    request_read_timeout: float | None
    max_response_size: int
    max_event_size: int
    stream_idle_timeout: float | None
    max_header_count: int
    max_header_bytes: int
    max_json_depth: int
    max_concurrent_upstream: int | None
    cache_timeout: float
    share_cache_across_callers: bool
    cache_clock: Callable[[], float]
    coalesce_timeout: float
    max_follower_lag: int


MOVED: Mapping[str, tuple[str, str]] = {
    **{name: ("limits", name) for name in Limits.__dataclass_fields__},
    "cache_timeout": ("cache_options", "timeout"),
    "share_cache_across_callers": ("cache_options", "share_across_callers"),
    "cache_clock": ("cache_options", "clock"),
    "coalesce_timeout": ("cache_options", "coalesce_timeout"),
    "max_follower_lag": ("cache_options", "max_follower_lag"),
}
"""Old keyword -> (the keyword of its object, its field there). Removed next release."""

_CLASSES: Mapping[str, type[Limits] | type[CacheOptions]] = {
    "limits": Limits,
    "cache_options": CacheOptions,
}


def moved_keywords(
    old: Mapping[str, Any], *, limits: Limits | None, cache_options: CacheOptions | None
) -> tuple[Limits, CacheOptions]:
    """``limits`` and ``cache_options`` with the old flat keywords in ``old`` applied.

    Each old keyword warns; one given beside its object's keyword is a TypeError, and
    so is a keyword this table does not know (as Python would say for any other)."""
    given: dict[str, Limits | CacheOptions | None] = {
        "limits": limits,
        "cache_options": cache_options,
    }
    for keyword, value in given.items():
        kind = _CLASSES[keyword]
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{keyword} must be a {kind.__name__}(...), got {value!r}")
    changes: dict[str, dict[str, Any]] = {"limits": {}, "cache_options": {}}
    for name, value in old.items():
        if name not in MOVED:
            raise TypeError(f"AutoProxyMiddleware() got an unexpected keyword argument {name!r}")
        keyword, field_name = MOVED[name]
        spelling = f"{keyword}={_CLASSES[keyword].__name__}({field_name}=...)"
        if given[keyword] is not None:
            raise TypeError(f"pass {name}= or {keyword}=, not both: use {spelling}")
        warnings.warn(
            f"{name}= is deprecated and will be removed in the next release; use {spelling}",
            DeprecationWarning,
            stacklevel=3,
        )
        changes[keyword][field_name] = value
    return (
        limits or Limits(**changes["limits"]),
        cache_options or CacheOptions(**changes["cache_options"]),
    )
