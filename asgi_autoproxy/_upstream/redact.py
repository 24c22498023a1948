"""Keep provider keys out of what the caller receives.

An upstream may echo the key it was sent (``"Incorrect API key provided: sk-..."``),
in its body or in a header it passes on (``x-request-id``, ``x-ratelimit-*``). Bodies,
stream events and header values from a provider that holds its own key are searched
for it and every copy is replaced before the caller, the cache or a log sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

from asgi_autoproxy.providers import capabilities
from asgi_autoproxy.providers.base import Provider

REDACTED = b"[redacted]"
_SHORTEST_SECRET = 8  # shorter strings would blank out ordinary words


def provider_secrets(provider: Provider) -> tuple[bytes, ...]:
    """The provider's own keys, from its optional ``secrets`` (``HoldsSecrets``)."""
    held = capabilities.secrets(provider)
    return tuple(s.encode() for s in held if len(s) >= _SHORTEST_SECRET)


def scrub(body: bytes, secrets: Sequence[bytes]) -> bytes:
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, REDACTED)
    return body


def scrub_headers(
    headers: list[tuple[bytes, bytes]], secrets: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` (encoded, as ASGI sends them) with every secret in a value replaced;
    ``headers`` itself when no value holds one."""
    # One search of all values at once: a third of the cost of scrubbing each, on every
    # miss of a keyed proxy. The newline (never in a value) keeps matches within one.
    values = b"\n".join([value for _, value in headers])
    for secret in secrets:
        if secret in values:
            return [(name, scrub(value, secrets)) for name, value in headers]
    return headers
