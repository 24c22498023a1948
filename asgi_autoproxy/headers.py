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


def caller_credential(scope_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The caller's API key from ``Authorization: Bearer`` or, failing that, ``x-api-key``."""
    api_key: str | None = None
    for raw_name, raw_value in scope_headers:
        if raw_name == b"authorization":
            scheme, _, token = raw_value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return token
        elif raw_name == b"x-api-key":
            api_key = raw_value.decode("latin-1").strip() or None
    return api_key


def get_header(scope_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """First value of header ``name`` (lower-case bytes), decoded."""
    for raw_name, raw_value in scope_headers:
        if raw_name == name:
            return raw_value.decode("latin-1")
    return None
