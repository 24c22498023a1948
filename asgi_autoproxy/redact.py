"""Keep provider keys out of what the caller receives.

An upstream may echo the key it was sent (``"Incorrect API key provided: sk-..."``).
Bodies from a provider that holds its own key are searched for it and every copy is
replaced before the caller, the cache or a log sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .providers.base import Provider

REDACTED = b"[redacted]"
_SHORTEST_SECRET = 8  # shorter strings would blank out ordinary words


def provider_secrets(provider: Provider) -> tuple[bytes, ...]:
    """The provider's own keys, from its optional ``secrets`` attribute."""
    secrets: Sequence[str] = getattr(provider, "secrets", ())
    return tuple(s.encode() for s in secrets if isinstance(s, str) and len(s) >= _SHORTEST_SECRET)


def scrub(body: bytes, secrets: Sequence[bytes]) -> bytes:
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, REDACTED)
    return body
