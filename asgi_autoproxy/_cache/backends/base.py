"""The contract for cache storage: an async bytes store with per-entry TTL, ``get`` and
``set``. Anything more is an optional capability, a protocol of its own checked with
``isinstance`` once, when the middleware is built."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from asgi_autoproxy._protocols import what_it_lacks

_REQUIRED = ("get", "set")


@runtime_checkable
class CacheBackend(Protocol):
    """Where cached responses live. Implement these two methods to add a store.

    Keys are opaque hex strings (hashes, never secrets) and values opaque bytes. A
    backend may raise or be slow: the middleware bounds each call with a timeout and
    treats a failure as a miss or a skipped write, so a request is never lost to it.

    Optional: ``encrypt`` (``EncryptedBackend``), ``server_secret``
    (``ServerSecretBackend``), ``aclose`` (``Closable``), the locks of
    ``SharedLockBackend``.
    """

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        ...


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


@runtime_checkable
class StreamBackend(Protocol):
    """A ``SharedLockBackend`` that can also relay a stream to other processes as it
    comes (``RedisCache`` does, on Redis Streams): the lock holder appends, the others
    read."""

    async def stream_leader(self, key: str) -> str | None: ...

    async def keep_lock(self, key: str, token: str, ttl_ms: int) -> bool: ...

    async def stream_append(
        self, key: str, token: str, items: list[bytes], ttl_ms: int
    ) -> bool: ...

    async def stream_read(
        self, key: str, token: str, after: bytes, block_ms: int
    ) -> list[tuple[bytes, bytes]] | None: ...


@runtime_checkable
class EncryptedBackend(Protocol):
    """A backend whose ``encrypt`` is True gets values sealed with AES-256-GCM under a key
    derived from the request and the caller's credential, which it never sees."""

    encrypt: bool


@runtime_checkable
class ServerSecretBackend(Protocol):
    """A backend with a ``server_secret``: mixed (as HKDF's salt) into every entry's name
    and encryption secret, so that entries shared across callers, which no credential
    protects, cannot be opened from a dump without it."""

    server_secret: bytes | None


@runtime_checkable
class Closable(Protocol):
    """A backend that holds something to let go of (a Redis pool, say); the middleware
    calls ``aclose`` once, at shutdown."""

    async def aclose(self) -> None: ...


class Encodable(Protocol):
    """A value kept as an object in memory, turned into bytes only if asked for bytes."""

    def encode(self) -> bytes: ...


@runtime_checkable
class ObjectStore(Protocol):
    """A store in this process that never blocks nor fails (``MemoryCache``).

    The middleware keeps its entries as objects, with no bytes in between and no timeout
    around the calls: a cache hit costs a dictionary lookup. Unless it also encrypts.
    """

    def get_object(self, key: str) -> object | None:
        """The value as stored (the object ``set_object`` was given), or None."""
        ...

    def set_object(self, key: str, value: Encodable, size: int, ttl: float) -> None:
        """Keep ``value`` itself for ``ttl`` seconds, counted as ``size`` bytes."""
        ...


def require_backend(backend: object) -> CacheBackend:
    """``backend`` itself; a ``TypeError`` naming what it lacks when it is no ``CacheBackend``."""
    if isinstance(backend, CacheBackend):
        return backend
    lacks = what_it_lacks(backend, _REQUIRED)
    raise TypeError(
        f"cache={backend!r} does not implement CacheBackend "
        f"(async get(key), async set(key, value, ttl)): {lacks}"
    )
