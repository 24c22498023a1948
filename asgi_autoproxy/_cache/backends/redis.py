"""RedisCache: a cache backend on Redis or Valkey, shared by every process pointed at it.

Redis is an optimisation here, never a dependency of a request. Every operation is
bounded by ``timeout``; a failure or a timeout is a miss or a skipped write, logged
without keys' material or values. After a few failures in a row the cache stops
asking Redis for ``retry_after`` seconds, then tries again, so a dead Redis costs
nothing and a revived one is used again without a restart (``_shared/redis_link.py``).

Only basic commands are used (GET, SET with PX and NX, DEL, MGET, EVAL), so any
Redis 6+ or Valkey server works, a Redis Cluster too: an entry's key, its lock and its
stream carry the same hash tag, so they live in one slot and MGET or a script over
them never meets ``CROSSSLOT``. ``redis`` is imported when a RedisCache is made, so
importing asgi_autoproxy never needs the ``redis`` extra.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from typing import TYPE_CHECKING

import anyio

from asgi_autoproxy._shared.redis_link import EXTRA_HINT, RedisLink, Unavailable, hash_tag

if TYPE_CHECKING:
    from asgi_autoproxy._shared.redis_link import Client

__all__ = ["SECRET_VARIABLE", "RedisCache"]

logger = logging.getLogger("asgi_autoproxy.cache.redis")

SECRET_VARIABLE = "ASGI_AUTOPROXY_CACHE_SECRET"
"""The environment variable ``RedisCache`` reads its ``server_secret`` from when not given."""

# Delete the lock only if it still holds our token: never free another holder's lock.
_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


# Extend the lock only while it still holds our token.
_KEEP_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class RedisCache:
    """A ``CacheBackend`` storing entries in Redis with native TTLs.

    ``encrypt`` (on by default) tells the cache layer to seal every value with
    AES-256-GCM before it reaches Redis. ``server_secret`` (or the
    ``ASGI_AUTOPROXY_CACHE_SECRET`` environment variable) is mixed into every entry's
    name and secret: it is what protects entries shared across callers. Connections
    come from a pool made lazily for each event loop (redis.asyncio connections cannot
    cross loops); call ``aclose()`` on shutdown, or use ``async with``. A ``client``
    you pass in (``Redis``, ``RedisCluster``, Sentinel's ``master_for``) is used as is
    and left open for you to close.

    Counters: ``hits``, ``misses`` (for ``get``), ``errors`` (operations that failed
    or timed out) and ``skipped`` (operations not tried while backing off).
    """

    #: Consecutive failures before backing off for ``retry_after`` seconds.
    failures_before_backoff = RedisLink.failures_before_backoff

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "asgi_autoproxy:",
        encrypt: bool = True,
        server_secret: str | bytes | None = None,
        timeout: float = 0.1,
        retry_after: float = 1.0,
        max_connections: int = 32,
        client: Client | None = None,
    ) -> None:
        _require_extra(encrypt=encrypt)
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                "RedisCache prefix must not contain '{' or '}': the cache tags each "
                "entry's keys with its own hash tag, so that a cluster keeps them together"
            )
        self.link = RedisLink(
            None if client is not None else url,
            client=client,
            timeout=timeout,
            retry_after=retry_after,
            max_connections=max_connections,
            what="RedisCache",
            log=logger,
        )
        if server_secret is None:
            server_secret = os.environ.get(SECRET_VARIABLE) or None
        self.server_secret: bytes | None = (
            server_secret.encode() if isinstance(server_secret, str) else server_secret
        )
        self.prefix = prefix
        self.encrypt = encrypt
        self.timeout = timeout
        self.retry_after = retry_after
        self.max_connections = max_connections
        #: Where the cache points, with any password left out: safe to log.
        self.location = self.link.location
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"RedisCache({self.location!r}, prefix={self.prefix!r}, encrypt={self.encrypt})"

    @property
    def available(self) -> bool:
        """False while backing off after failures; the cache is skipped meanwhile."""
        return self.link.available

    @property
    def errors(self) -> int:
        return self.link.errors

    @property
    def skipped(self) -> int:
        return self.link.skipped

    # --- CacheBackend ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        name = self.entry_name(key)
        try:
            value = await self.link.run("get", lambda redis: redis.get(name))
        except Unavailable:
            return None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        name, ttl_ms = self.entry_name(key), max(1, math.ceil(ttl * 1000))
        try:
            await self.link.run("set", lambda redis: redis.set(name, value, px=ttl_ms))
        except Unavailable:
            return

    async def delete(self, key: str) -> None:
        name = self.entry_name(key)
        try:
            await self.link.run("delete", lambda redis: redis.delete(name))
        except Unavailable:
            return

    # --- Coalescing across instances -----------------------------------------

    async def acquire_lock(self, key: str, ttl_ms: int) -> str | None:
        """Claim the right to fill ``key`` for ``ttl_ms`` milliseconds.

        Returns a token for ``release_lock`` when this caller should call upstream,
        or None when another instance holds the lock (then ``wait_for`` the value).
        When Redis fails nobody can coordinate, so the caller gets a token and goes
        ahead alone rather than waiting on nothing.
        """
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be at least 1, got {ttl_ms!r}")
        name, token = self.lock_name(key), secrets.token_hex(16)
        try:
            acquired = await self.link.run(
                "acquire_lock", lambda redis: redis.set(name, token, nx=True, px=ttl_ms)
            )
        except Unavailable:
            return token
        return token if acquired else None

    async def release_lock(self, key: str, token: str) -> None:
        """Free the lock if ``token`` still holds it; a lock that expired is left alone."""
        name = self.lock_name(key)
        try:
            await self.link.run(
                "release_lock",
                lambda redis: redis.eval(_RELEASE_LOCK, 1, name, token),
            )
        except Unavailable:
            return

    async def wait_for(
        self, key: str, max_wait: float, *, poll_interval: float = 0.01
    ) -> bytes | None:
        """Wait at most ``max_wait`` seconds for the lock holder to store ``key``.

        Returns the stored value, or None as soon as the lock is gone with nothing
        stored (the holder failed or chose not to store), on a Redis failure, or at
        the deadline. None means: call upstream yourself.
        """
        name, lock_name = self.entry_name(key), self.lock_name(key)
        deadline = time.monotonic() + max_wait
        delay = poll_interval
        while True:
            try:
                # One slot (the hash tag): a cluster serves this MGET from one node.
                value, lock = await self.link.run(
                    "wait_for", lambda redis: redis.mget([name, lock_name])
                )
            except Unavailable:
                return None
            if value is not None:
                return _as_bytes(value)
            remaining = deadline - time.monotonic()
            if lock is None or remaining <= 0:
                return None
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    # --- Streams across instances ---------------------------------------------

    async def stream_leader(self, key: str) -> str | None:
        """The token of the instance leading ``key`` (its lock's value), or None."""
        name = self.lock_name(key)
        try:
            token = await self.link.run("stream_leader", lambda redis: redis.get(name))
        except Unavailable:
            return None
        return None if token is None else _as_bytes(token).decode()

    async def keep_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """Extend the lock while ``token`` holds it: the leader's heartbeat."""
        name = self.lock_name(key)
        try:
            kept = await self.link.run(
                "keep_lock", lambda redis: redis.eval(_KEEP_LOCK, 1, name, token, ttl_ms)
            )
        except Unavailable:
            return False
        return bool(kept)

    async def stream_append(self, key: str, token: str, items: list[bytes], ttl_ms: int) -> bool:
        """Append ``items`` to the leader's stream of ``key``; False when Redis failed."""
        name = self.stream_name(key, token)

        async def append(redis: Client) -> None:
            pipe = redis.pipeline(transaction=False)
            for item in items:
                pipe.xadd(name, {b"d": item})
            pipe.pexpire(name, ttl_ms)
            await pipe.execute()

        try:
            await self.link.run("stream_append", append)
        except Unavailable:
            return False
        return True

    async def stream_read(
        self, key: str, token: str, after: bytes, block_ms: int
    ) -> list[tuple[bytes, bytes]] | None:
        """Items after ``after`` (an entry id; ``0-0`` for all), waiting up to
        ``block_ms`` for one; None when Redis failed."""
        name = self.stream_name(key, token)

        async def read(redis: Client) -> object:
            return await redis.xread({name: after}, count=512, block=block_ms)

        try:
            found = await self.link.run("stream_read", read, wait=block_ms / 1000)
        except Unavailable:
            return None
        items: list[tuple[bytes, bytes]] = []
        for _stream, entries in found or []:  # type: ignore[attr-defined]
            for entry_id, fields in entries:
                items.append((_as_bytes(entry_id), _as_bytes(fields[b"d"])))
        return items

    # --- Names ----------------------------------------------------------------

    def entry_name(self, key: str) -> str:
        return self.prefix + hash_tag(key)

    def lock_name(self, key: str) -> str:
        return f"{self.prefix}lock:{hash_tag(key)}"

    def stream_name(self, key: str, token: str = "") -> str:
        return f"{self.prefix}stream:{hash_tag(key)}{token}"

    # --- Lifecycle ------------------------------------------------------------

    async def aclose(self) -> None:
        """Close this event loop's connections. A later call opens new ones."""
        await self.link.aclose()

    async def __aenter__(self) -> RedisCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _require_extra(*, encrypt: bool) -> None:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"RedisCache needs the 'redis' package: {EXTRA_HINT}") from exc
    if encrypt:
        try:
            import cryptography  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"RedisCache(encrypt=True) needs the 'cryptography' package: {EXTRA_HINT}"
            ) from exc


def _as_bytes(value: bytes | str) -> bytes:
    # Only a caller's client could decode replies, and __init__ refuses those.
    return value if isinstance(value, bytes) else value.encode()
