"""The contract for cache storage: an async bytes store with per-entry TTL."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CacheBackend(Protocol):
    """Where cached responses live. Implement these three methods to add a store.

    Keys are opaque hex strings (hashes, never secrets) and values opaque bytes. A
    backend may raise or be slow: the middleware bounds each call with a timeout and
    treats a failure as a miss or a skipped write, so a request is never lost to it.

    A backend that sets ``encrypt = True`` gets values sealed with AES-256-GCM under a
    key derived from the request and the caller's credential, which it never sees.
    """

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        ...

    async def delete(self, key: str) -> None: ...
