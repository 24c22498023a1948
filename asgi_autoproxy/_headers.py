"""Which headers cross the proxy, in each direction, and how the caller's credential is read."""

from __future__ import annotations

from collections.abc import Iterable

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
# gsk_, xAI's xai-, Hugging Face's hf_, AWS's AKIA...). Compared in lower case.
_KEY_PREFIXES = ("sk-", "sk_", "rk_", "aiza", "akia", "gsk_", "xai-", "hf_", "pplx-", "r8_")


def looks_like_key(value: str, credential: str | None) -> bool:
    """Whether a header value the proxy would echo is most likely a pasted key: the
    caller's own credential, or something shaped like a provider's key."""
    return value == credential or value.lower().startswith(_KEY_PREFIXES)


class RequestHeaders:
    """The request headers the proxy reads, gathered in one pass: a cache hit is cheap
    enough that scanning the headers once per question showed up in profiles.

    Where a header repeats, the first value counts, except for the credential:
    the first ``Authorization: Bearer`` token, else the last ``x-api-key``.
    """

    __slots__ = (
        "cache_control",
        "cache_ttl",
        "content_length",
        "count",
        "credential",
        "endpoint_name",
        "request_id",
        "size",
        "use_cache",
    )

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        count = size = 0
        bearer: str | None = None
        api_key: bytes | None = None
        self.content_length: bytes | None = None
        self.request_id: str | None = None
        self.endpoint_name: str | None = None
        self.use_cache: str | None = None
        self.cache_ttl: str | None = None
        self.cache_control: str | None = None
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
                if self.content_length is None:
                    self.content_length = value
            elif name == b"x-request-id":
                if self.request_id is None:
                    self.request_id = value.decode("latin-1")
            elif name == b"x-bt-endpoint-name":
                if self.endpoint_name is None:
                    self.endpoint_name = value.decode("latin-1")
            elif name == b"x-bt-use-cache":
                if self.use_cache is None:
                    self.use_cache = value.decode("latin-1")
            elif name == b"x-bt-cache-ttl":
                if self.cache_ttl is None:
                    self.cache_ttl = value.decode("latin-1")
            elif self.cache_control is None:  # cache-control
                self.cache_control = value.decode("latin-1")
        # For the 431 limits: how many headers, and their names' and values' bytes.
        self.count = count
        self.size = size
        if bearer is None and api_key is not None:
            bearer = api_key.decode("latin-1").strip() or None
        self.credential = bearer


_READ = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"content-length",
        b"x-request-id",
        b"x-bt-endpoint-name",
        b"x-bt-use-cache",
        b"x-bt-cache-ttl",
        b"cache-control",
    }
)


def _bearer_token(value: bytes) -> str | None:
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
