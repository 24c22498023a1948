"""``MemoryCache``: an in-process LRU with per-entry TTL, bounded by entries and bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TLRUCache

from asgi_autoproxy._cache.backends.base import Encodable

# Rough per-entry bookkeeping (dict slot, tuple, key string) counted against max_bytes.
_ENTRY_OVERHEAD = 200


@dataclass(slots=True)
class MemoryCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


# (value, ttl seconds, size in bytes)
_Slot = tuple[bytes | Encodable, float, int]


class _TLRU(TLRUCache[str, _Slot]):
    def __init__(self, max_bytes: int, timer: Callable[[], float]) -> None:
        super().__init__(max_bytes, _time_to_use, timer, _entry_size)
        self.evictions = 0

    def popitem(self) -> tuple[str, _Slot]:
        item = super().popitem()
        self.evictions += 1
        return item


def _time_to_use(key: str, value: _Slot, now: float) -> float:
    return now + value[1]


def _entry_size(value: _Slot) -> int:
    return value[2] + _ENTRY_OVERHEAD


class MemoryCache:
    """Least-recently-used entries go first once ``max_entries`` or ``max_bytes`` is hit;
    each entry also expires after its own TTL. An ``ObjectStore``: the middleware keeps
    its entries here as objects, never as bytes.

    ``timer`` is injectable so tests can move time without sleeping. A lock makes it
    safe from several threads as well as from concurrent tasks.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries <= 0 or max_bytes <= 0:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data = _TLRU(max_bytes, timer)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    async def get(self, key: str) -> bytes | None:
        found = self.get_object(key)
        if found is None or isinstance(found, bytes):
            return found
        return found.encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.set_object(key, value, len(value), ttl)

    def get_object(self, key: str) -> bytes | Encodable | None:
        """The value as stored: the middleware keeps decoded entries, skipping the bytes."""
        with self._lock:
            try:  # not .get(): cachetools' get checks the key and the clock twice
                found = self._data[key]
            except KeyError:  # absent or expired
                self._misses += 1
                return None
            self._hits += 1
            return found[0]

    def set_object(self, key: str, value: bytes | Encodable, size: int, ttl: float) -> None:
        """Store ``value`` as it is, counted as ``size`` bytes against ``max_bytes``."""
        if ttl <= 0:
            return
        with self._lock:
            try:
                self._data[key] = (value, float(ttl), size)
            except ValueError:  # a single value larger than max_bytes: not cached
                self._data.pop(key, None)
                return
            while len(self._data) > self.max_entries:
                self._data.popitem()

    async def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    @property
    def entry_count(self) -> int:
        """Entries held now, expired ones not yet dropped included: cheap enough to read
        on every request (``stats`` drops the expired ones first)."""
        with self._lock:
            return len(self._data)

    @property
    def stats(self) -> MemoryCacheStats:
        with self._lock:
            self._data.expire()
            return MemoryCacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._data.evictions,
                entries=len(self._data),
                bytes=int(self._data.currsize),
            )
