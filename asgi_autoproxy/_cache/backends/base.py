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


@runtime_checkable
class SharedLockBackend(Protocol):
    """A backend that can also coalesce across processes (``RedisCache`` does).

    One instance claims a key and calls upstream; the others wait for the value
    it stores, and call upstream themselves if it never comes.
    """

    async def acquire_lock(self, key: str, ttl_ms: int) -> str | None:
        """A token when this caller should call upstream; None when another holds it."""
        ...

    async def release_lock(self, key: str, token: str) -> None: ...

    async def wait_for(self, key: str, max_wait: float) -> bytes | None:
        """The stored value once it appears, or None when the holder gave up or time ran out."""
        ...
