"""``ResponseCache``: cached responses in and out of a backend, never failing a request.

Each backend call is bounded by a timeout; an error or timeout counts as a miss or
a skipped write and is logged (with the hashed key only). Values are sealed with
the entry's secret where the backend asks for encryption.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from asgi_autoproxy._cache import crypto
from asgi_autoproxy._cache.backends.base import (
    CacheBackend,
    EncryptedBackend,
    ObjectStore,
    ServerSecretBackend,
    SharedLockBackend,
    require_backend,
)
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.keys import EntryKey

logger = logging.getLogger("asgi_autoproxy.cache")

# What an entry's status, headers and bookkeeping roughly add to its body's size.
_ENTRY_HEADER_SIZE = 512


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    coalesced: int = 0
    errors: int = 0


class ResponseCache:
    def __init__(
        self,
        backend: CacheBackend,
        *,
        timeout: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = require_backend(backend)
        self.encrypt = isinstance(backend, EncryptedBackend) and bool(backend.encrypt)
        # An in-process cache cannot hang or fail, and needs no bytes: it keeps the objects.
        objects = backend if isinstance(backend, ObjectStore) else None
        self.timeout = None if objects is not None else timeout
        self._objects = None if self.encrypt else objects
        self.clock = clock
        self.stats = CacheStats()
        self.server_secret = (
            backend.server_secret or b"" if isinstance(backend, ServerSecretBackend) else b""
        )
        """Mixed into every entry's key and secret (HKDF's salt) where the backend has one."""
        self.locks = backend if isinstance(backend, SharedLockBackend) else None
        """Set where identical requests can be coalesced across processes too."""

    async def claim(self, key: EntryKey, seconds: float) -> str | None:
        """A token to release after calling upstream, or None: another process is on it."""
        assert self.locks is not None
        try:
            return await self.locks.acquire_lock(key.key, max(1, int(seconds * 1000)))
        except Exception as exc:
            self._failed("lock", key, exc)
            return ""  # nobody can coordinate: go ahead alone

    async def release(self, key: EntryKey, token: str) -> None:
        assert self.locks is not None
        if not token:
            return
        try:
            await self.locks.release_lock(key.key, token)
        except Exception as exc:
            self._failed("unlock", key, exc)

    async def wait_for_peer(
        self, key: EntryKey, seconds: float, *, max_age: float | None
    ) -> CachedResponse | str:
        """The entry another process is filling, or a token to call upstream with ("":
        without the lock) when it gave up or took too long.

        An entry older than ``max_age`` is one the other process is replacing (the request
        could not use it either): wait on for the new one while that process holds the
        lock, and take the lock once it lets go without storing one.
        """
        assert self.locks is not None
        deadline = time.monotonic() + seconds
        delay = 0.01
        while True:
            try:
                raw = await self.locks.wait_for(key.key, max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                self._failed("wait", key, exc)
                return ""
            entry = None if raw is None else self._open(key, raw)
            if entry is None:
                return ""
            if max_age is None or self.age(entry) <= max_age:
                return entry
            # Too old. wait_for answers at once while it is there, so poll, backing off,
            # and ask for the lock each time to learn whether the other process let go.
            token = await self.claim(key, seconds)
            if token is not None:
                return token
            if time.monotonic() + delay >= deadline:
                return ""
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def get(self, key: EntryKey, *, max_age: float | None) -> CachedResponse | None:
        entry: CachedResponse | None = None
        if self._objects is not None:
            found = self._objects.get_object(key.key)
            entry = found if isinstance(found, CachedResponse) else None
        else:
            try:
                if self.timeout is None:
                    raw = await self.backend.get(key.key)
                else:
                    with anyio.fail_after(self.timeout):
                        raw = await self.backend.get(key.key)
            except Exception as exc:
                self._failed("get", key, exc)
                raw = None
            entry = self._open(key, raw) if raw is not None else None
        if entry is not None and max_age is not None and self.age(entry) > max_age:
            entry = None
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    async def put(self, key: EntryKey, entry: CachedResponse, ttl: int) -> None:
        if self._objects is not None:
            # In-process: keep the object itself, no bytes in between, counted at its size.
            self._objects.set_object(key.key, entry, entry.size + _ENTRY_HEADER_SIZE, ttl)
            self.stats.writes += 1
            return
        value = entry.encode()
        if self.encrypt:
            value = crypto.seal(key.secret, value, aad=key.key.encode())
        try:
            if self.timeout is None:
                await self.backend.set(key.key, value, ttl)
            else:
                with anyio.fail_after(self.timeout):
                    await self.backend.set(key.key, value, ttl)
        except Exception as exc:
            self._failed("set", key, exc)
            return
        self.stats.writes += 1

    def age(self, entry: CachedResponse) -> float:
        return max(0.0, self.clock() - entry.stored_at)

    def _open(self, key: EntryKey, raw: bytes) -> CachedResponse | None:
        if self.encrypt:
            opened = crypto.unseal(key.secret, raw, aad=key.key.encode())
            if opened is None:
                return None
            raw = opened
        return CachedResponse.decode(raw)

    def _failed(self, operation: str, key: EntryKey, exc: Exception) -> None:
        self.stats.errors += 1
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        logger.warning(
            "cache %s failed for key %s…: %s; serving without cache",
            operation,
            key.key[:12],
            reason,
        )
