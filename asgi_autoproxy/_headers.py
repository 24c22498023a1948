"""Which headers cross the proxy, in each direction, and how the caller's credential is read."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Upstream headers worth passing to the caller. An allow-list, so that cookies, server
# banners, CORS headers and account details (openai-organization) never leak through.
_PASSED_EXACT = frozenset(
    {
        "content-type",
        "retry-after",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-model",
    }
)
_PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


# Passed headers that describe one upstream call rather than the answer: a cache hit
# would replay stale quota counts, timings and retry advice, so entries leave them out.
_PER_CALL_EXACT = frozenset({b"openai-processing-ms", b"retry-after"})
_PER_CALL_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")


def passed_to_caller(name: str) -> bool:
    """``name`` must already be lower-case."""
    return name in _PASSED_EXACT or name.startswith(_PASSED_PREFIXES)


def filter_upstream_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream headers the caller sees. The upstream's ``x-request-id`` comes back as
    ``x-upstream-request-id``: the caller's ``x-request-id`` is the proxy's own id."""
    passed: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "x-request-id":
            passed.append(("x-upstream-request-id", value))
        elif passed_to_caller(lower):
            passed.append((lower, value))
    return passed


# Names the proxy itself gives upstream headers it passes on.
_RENAMED_BY_PROXY = frozenset({"x-upstream-request-id", "x-bt-used-endpoint"})


def answer_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The allow-list, applied where an answer leaves the proxy, so that it holds for every
    provider, custom ones included; encoded. A value HTTP/1.1 cannot carry (outside
    latin-1, as a decoded non-ASCII header may be) is dropped, not a 500."""
    passed: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "x-request-id":
            lower = "x-upstream-request-id"
        elif lower not in _RENAMED_BY_PROXY and not passed_to_caller(lower):
            continue
        try:
            passed.append((lower.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            continue
    return passed


def replayed_on_hits(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The encoded answer headers a cache entry keeps: all but the per-call ones."""
    return tuple(
        (name, value)
        for name, value in headers
        if name not in _PER_CALL_EXACT and not name.startswith(_PER_CALL_PREFIXES)
    )


# How common provider keys start (OpenAI's and Anthropic's sk-, Google's AIza, Groq's
# gsk_, xAI's xai-, Hugging Face's hf_, AWS's AKIA...), and a JWT's eyJ (a temporary
# credential, or any bearer JWT). Compared in lower case.
_KEY_PREFIXES = (
    "sk-", "sk_", "rk_", "aiza", "akia", "gsk_", "xai-", "hf_", "pplx-", "r8_", "eyj",
)  # fmt: skip


def looks_like_key(value: str, credential: str | None) -> bool:
    """Whether a header value the proxy would echo is most likely a pasted key: the
    caller's own credential, or something shaped like a provider's key."""
    return value == credential or value.lower().startswith(_KEY_PREFIXES)


@dataclass(frozen=True, slots=True)
class CacheHeader:
    """A request header that shapes the cache plan: the cache rules read it, and the plan
    memo files plans under its value. Adding one here is enough for the memo and the
    OpenAPI description; the rules (``_cache/policy.py``) still have to act on it."""

    name: bytes
    """Lower-case, as ASGI servers hand header names over."""
    attribute: str
    """The ``RequestHeaders`` attribute holding its first value, decoded (``None`` if absent)."""
    description: str
    schema: Mapping[str, Any]
    """JSON Schema of the value, for the OpenAPI description."""


PLAN_HEADERS: tuple[CacheHeader, ...] = (
    CacheHeader(
        name=b"x-bt-endpoint-name",
        attribute="endpoint_name",
        description="Send the request to this provider only; its answers are cached apart.",
        schema={"type": "string"},
    ),
    CacheHeader(
        name=b"x-bt-use-cache",
        attribute="use_cache",
        description="auto caches only deterministic requests (temperature 0 or a seed).",
        schema={"type": "string", "enum": ["auto", "always", "never"]},
    ),
    CacheHeader(
        name=b"x-bt-cache-ttl",
        attribute="cache_ttl",
        description="Seconds to keep a cached answer (clamped to 1 s to 7 days).",
        schema={"type": "integer", "minimum": 1, "maximum": 604800},
    ),
    CacheHeader(
        name=b"cache-control",
        attribute="cache_control",
        description="no-cache skips the cache read, no-store the write; max-age=N caps the "
        "age of a cached answer served, and the TTL of one stored.",
        schema={"type": "string"},
    ),
)
"""The request headers that shape the cache plan, declared once: ``RequestHeaders``
parses them, the plan memo's digest and the OpenAPI description are built from here."""


FORWARDABLE: frozenset[bytes] = frozenset((b"anthropic-version", b"anthropic-beta"))
"""Caller headers a route may pass upstream as they are (a Route row names which); the
answer depends on them, so the cache key does too."""


class RequestHeaders:
    """The request headers the proxy reads, gathered in one pass: a cache hit is cheap
    enough that scanning the headers once per question showed up in profiles.

    Where a header repeats, the first value counts, except for the credential:
    the first ``Authorization: Bearer`` token, else the last ``x-api-key``.

    ``plan`` holds the values of ``PLAN_HEADERS``, in the table's order; each one is also
    readable by its ``attribute`` (a property over ``plan``, added below from the table).
    ``forwardable``: the ``FORWARDABLE`` headers sent, as (name, value) pairs, in order.
    """

    __slots__ = (
        "content_length",
        "count",
        "credential",
        "forwardable",
        "plan",
        "request_id",
        "size",
        "trace_context",
    )

    # Typed views of ``plan``, for mypy; the properties themselves come from the table.
    # A header added to the table without its line here fails type checking where used.
    endpoint_name: str | None
    use_cache: str | None
    cache_ttl: str | None
    cache_control: str | None

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        count = size = 0
        bearer: str | None = None
        api_key: bytes | None = None
        content_length: bytes | None = None
        request_id: str | None = None
        trace: list[tuple[str, str]] | None = None
        plan: list[str | None] | None = None  # made at the first plan header: most send none
        forwardable: list[tuple[str, str]] | None = None
        for name, value in raw:
            count += 1
            size += len(name) + len(value)
            if name not in _READ:
                continue
            if name == b"authorization":
                if bearer is None:
                    bearer = _bearer_token(value)
            elif name == b"x-api-key":
                api_key = value
            elif name == b"content-length":
                if content_length is None:
                    content_length = value
            elif name == b"x-request-id":
                if request_id is None:
                    request_id = value.decode("latin-1")
            elif name in _TRACE_CONTEXT:
                trace = _trace_header(trace, name, value)
            elif name in FORWARDABLE:
                if forwardable is None:
                    forwardable = []
                forwardable.append((name.decode("ascii"), value.decode("latin-1")))
            else:  # one of PLAN_HEADERS
                if plan is None:
                    plan = _NO_PLAN_LIST.copy()
                slot = _PLAN_SLOTS[name]
                if plan[slot] is None:
                    plan[slot] = value.decode("latin-1")
        self.plan = _NO_PLAN if plan is None else tuple(plan)
        self.forwardable: tuple[tuple[str, str], ...] = (
            () if forwardable is None else tuple(forwardable)
        )
        self.content_length = content_length
        self.request_id = request_id
        self.trace_context: tuple[tuple[str, str], ...] = (
            () if trace is None or all(n != "traceparent" for n, _ in trace) else tuple(trace)
        )
        """The caller's W3C ``traceparent`` and ``tracestate``, when well-formed."""
        # For the 431 limits: how many headers, and their names' and values' bytes.
        self.count = count
        self.size = size
        if bearer is None and api_key is not None:
            bearer = api_key.decode("latin-1").strip() or None
        self.credential = bearer


def _plan_value(index: int) -> property:
    return property(lambda headers: headers.plan[index])


for _index, _header in enumerate(PLAN_HEADERS):
    setattr(RequestHeaders, _header.attribute, _plan_value(_index))
del _index, _header

_NO_PLAN: tuple[str | None, ...] = (None,) * len(PLAN_HEADERS)
_NO_PLAN_LIST: list[str | None] = list(_NO_PLAN)
_PLAN_SLOTS = {header.name: index for index, header in enumerate(PLAN_HEADERS)}
_TRACE_CONTEXT = frozenset({b"traceparent", b"tracestate"})
_READ = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"content-length",
        b"x-request-id",
        *_TRACE_CONTEXT,
        *_PLAN_SLOTS,
        *FORWARDABLE,
    }
)
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; tracestate is
# bounded (32 members of at most 256 bytes) and printable; it means nothing alone.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_MAX_TRACESTATE = 512


def _trace_header(
    found: list[tuple[str, str]] | None, name: bytes, value: bytes
) -> list[tuple[str, str]] | None:
    """Keeps the first well-formed ``traceparent`` and ``tracestate``; the rest are not
    passed upstream, so a caller cannot smuggle other bytes through them."""
    if found is not None and any(n == name.decode() for n, _ in found):
        return found
    value = value.strip()
    if name == b"traceparent":
        if not _TRACEPARENT.fullmatch(value) or value.startswith(b"ff"):
            return found
    elif len(value) > _MAX_TRACESTATE or not all(0x20 <= c < 0x7F for c in value):
        return found
    pair = (name.decode(), value.decode("ascii"))
    return [pair] if found is None else [*found, pair]


def _bearer_token(value: bytes) -> str | None:
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# Generated ids: random per process, then a counter: unique without a syscall each.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(given: str | None, credential: str | None) -> str:
    """The caller's id when usable, else a new one. The id is echoed, logged and sent
    upstream, so one that looks like a key (pasted into the wrong header) is replaced."""
    if given is not None and _REQUEST_ID.fullmatch(given) and not looks_like_key(given, credential):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"
