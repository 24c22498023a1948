"""When to read and write the cache, and for how long: Braintrust's rules.

``auto`` caches only deterministic requests (``temperature == 0`` or a non-null
``seed``), or, on a route whose answers do not vary (embeddings, moderations), every
request; the ``x-bt-use-cache`` header can force ``always`` or ``never``. Request
``Cache-Control`` refines it: ``no-cache``/``max-age=0`` skip the read, ``no-store``
skips the write, ``max-age=N`` accepts only entries at most N seconds old.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from asgi_autoproxy.errors import bad_request

CacheMode = Literal["auto", "always", "never"]
CacheRule = Literal["deterministic", "always"]
"""What ``auto`` caches on a route: deterministic requests only, or every request."""
CACHE_MODES: tuple[CacheMode, ...] = ("auto", "always", "never")
MIN_TTL = 1
MAX_TTL = 7 * 24 * 3600
DEFAULT_TTL = MAX_TTL


@dataclass(frozen=True, slots=True)
class CacheDecision:
    read: bool
    write: bool
    ttl: int
    max_age: float | None = None
    """Only entries at most this many seconds old may be served."""


NO_CACHE = CacheDecision(read=False, write=False, ttl=DEFAULT_TTL)


def is_deterministic(payload: Mapping[str, Any]) -> bool:
    temperature = payload.get("temperature")
    zero_temperature = (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature == 0
    )
    return zero_temperature or payload.get("seed") is not None


def decide(
    payload: Mapping[str, Any],
    *,
    use_cache: str | None,
    cache_ttl: str | None,
    cache_control: str | None,
    default_ttl: int,
    rule: CacheRule = "deterministic",
) -> CacheDecision:
    """The decision for one request; raises a 400 ``ProxyError`` for bad header values."""
    cached = rule == "always" or is_deterministic(payload)
    if use_cache is None and cache_ttl is None and cache_control is None:
        # Most requests send no cache headers: the same answer as below, made once.
        return _without_headers(default_ttl, cached)
    mode = (use_cache or "auto").strip().lower()
    if mode not in CACHE_MODES:
        raise bad_request(
            # The value is not echoed: callers do paste keys into the wrong header.
            f"Invalid x-bt-use-cache value; allowed values are {', '.join(CACHE_MODES)}.",
            param="x-bt-use-cache",
        )
    ttl = default_ttl if cache_ttl is None else _parse_ttl(cache_ttl)
    if mode == "never" or (mode == "auto" and not cached):
        return CacheDecision(read=False, write=False, ttl=ttl)
    read, write, max_age = True, True, None
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-cache":
            read = False
        elif name == "no-store":
            write = False
        elif name == "max-age":
            seconds = _parse_seconds(value.strip().strip('"'))
            if seconds is None:
                continue  # RFC 9111: an invalid max-age is ignored
            if seconds == 0:
                read = False
            else:
                max_age = float(seconds)
    return CacheDecision(read=read, write=write, ttl=ttl, max_age=max_age)


@lru_cache(maxsize=64)
def _without_headers(ttl: int, cached: bool) -> CacheDecision:
    return CacheDecision(read=cached, write=cached, ttl=ttl)


def _parse_seconds(text: str) -> int | None:
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    return int(text) if text.isascii() and text.isdigit() else None


def _parse_ttl(text: str) -> int:
    try:
        seconds = int(float(text.strip()))
    except (ValueError, OverflowError):  # OverflowError: "inf"
        raise bad_request(
            "Invalid x-bt-cache-ttl value; send a whole number of seconds.",
            param="x-bt-cache-ttl",
        ) from None
    return min(max(seconds, MIN_TTL), MAX_TTL)
