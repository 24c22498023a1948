"""RedisCache: a cache backend on Redis or Valkey, shared by every process pointed at it.

Redis is an optimisation here, never a dependency of a request. Every operation is
bounded by ``timeout``; a failure or a timeout is a miss or a skipped write, logged
without keys' material or values. After a few failures in a row the cache stops
asking Redis for ``retry_after`` seconds, then tries again, so a dead Redis costs
nothing and a revived one is used again without a restart.

Only basic commands are used (GET, SET with PX and NX, DEL, MGET, EVAL), so any
Redis 6+ or Valkey server works. ``redis`` is imported when a RedisCache is made,
so importing asgi_autoproxy never needs the ``redis`` extra.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import anyio

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisCache"]

logger = logging.getLogger("asgi_autoproxy.cache.redis")

T = TypeVar("T")

EXTRA_HINT = "pip install 'asgi_autoproxy[redis]'"

# Delete the lock only if it still holds our token: never free another holder's lock.
_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class _Unavailable(Exception):
    """Internal: the operation failed or was not tried; the caller degrades."""


class RedisCache:
    """A ``CacheBackend`` storing entries in Redis with native TTLs.

    ``encrypt`` (on by default) tells the cache layer to seal every value with
    AES-256-GCM before it reaches Redis. Connections come from a pool made lazily
    for each event loop (redis.asyncio connections cannot cross loops); call
    ``aclose()`` on shutdown, or use ``async with``. A ``client`` you pass in is
    used as is and left open for you to close.

    Counters: ``hits``, ``misses`` (for ``get``), ``errors`` (operations that failed
    or timed out) and ``skipped`` (operations not tried while backing off).
    """

    #: Consecutive failures before backing off for ``retry_after`` seconds.
    failures_before_backoff = 3

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "asgi_autoproxy:",
        encrypt: bool = True,
        timeout: float = 0.1,
        retry_after: float = 1.0,
        max_connections: int = 32,
        client: Redis | None = None,
    ) -> None:
        _require_extra(encrypt=encrypt)
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry_after < 0:
            raise ValueError(f"retry_after must be zero or more seconds, got {retry_after!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if client is not None and client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisCache needs a client made with decode_responses=False")
        if client is None:
            from redis.asyncio.connection import parse_url

            try:
                parse_url(url)
            except ValueError as exc:
                raise ValueError(
                    f"RedisCache url must look like redis://host:6379/0, rediss://... or "
                    f"unix:///path/redis.sock ({exc})"
                ) from None
        self.prefix = prefix
        self.encrypt = encrypt
        self.timeout = timeout
        self.retry_after = retry_after
        self.max_connections = max_connections
        #: Where the cache points, with any password left out: safe to log.
        self.location = _redact(url) if client is None else "a caller-provided client"
        self._url = url
        self._client = client
        self._clients: dict[asyncio.AbstractEventLoop, Redis] = {}
        self._failures = 0
        self._retry_at = 0.0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"RedisCache({self.location!r}, prefix={self.prefix!r}, encrypt={self.encrypt})"

    @property
    def available(self) -> bool:
        """False while backing off after failures; the cache is skipped meanwhile."""
        return self._failures < self.failures_before_backoff

    # --- CacheBackend ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        name = self.prefix + key
        try:
            value = await self._execute("get", lambda redis: redis.get(name))
        except _Unavailable:
            return None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        name, ttl_ms = self.prefix + key, max(1, math.ceil(ttl * 1000))
        try:
            await self._execute("set", lambda redis: redis.set(name, value, px=ttl_ms))
        except _Unavailable:
            return

    async def delete(self, key: str) -> None:
        name = self.prefix + key
        try:
            await self._execute("delete", lambda redis: redis.delete(name))
        except _Unavailable:
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
        name, token = self._lock_name(key), secrets.token_hex(16)
        try:
            acquired = await self._execute(
                "acquire_lock", lambda redis: redis.set(name, token, nx=True, px=ttl_ms)
            )
        except _Unavailable:
            return token
        return token if acquired else None

    async def release_lock(self, key: str, token: str) -> None:
        """Free the lock if ``token`` still holds it; a lock that expired is left alone."""
        name = self._lock_name(key)
        try:
            await self._execute(
                "release_lock", lambda redis: redis.eval(_RELEASE_LOCK, 1, name, token)
            )
        except _Unavailable:
            return

    async def wait_for(
        self, key: str, max_wait: float, *, poll_interval: float = 0.01
    ) -> bytes | None:
        """Wait at most ``max_wait`` seconds for the lock holder to store ``key``.

        Returns the stored value, or None as soon as the lock is gone with nothing
        stored (the holder failed or chose not to store), on a Redis failure, or at
        the deadline. None means: call upstream yourself.
        """
        name, lock_name = self.prefix + key, self._lock_name(key)
        deadline = time.monotonic() + max_wait
        delay = poll_interval
        while True:
            try:
                value, lock = await self._execute(
                    "wait_for", lambda redis: redis.mget([name, lock_name])
                )
            except _Unavailable:
                return None
            if value is not None:
                return _as_bytes(value)
            remaining = deadline - time.monotonic()
            if lock is None or remaining <= 0:
                return None
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    # --- Lifecycle ------------------------------------------------------------

    async def aclose(self) -> None:
        """Close this event loop's connections. A later call opens new ones."""
        if self._client is not None:
            return
        client = self._clients.pop(asyncio.get_running_loop(), None)
        for loop in [loop for loop in self._clients if loop.is_closed()]:
            del self._clients[loop]
        if client is not None:
            with anyio.move_on_after(max(self.timeout, 1.0)):
                await client.connection_pool.disconnect()

    async def __aenter__(self) -> RedisCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- Internals ------------------------------------------------------------

    def _lock_name(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    def _redis(self) -> Redis:
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._connect()
        return client

    def _connect(self) -> Redis:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self.max_connections,
            timeout=self.timeout,  # waiting for a free connection
            socket_connect_timeout=self.timeout,
            socket_timeout=max(self.timeout, 1.0),
            # One immediate retry replaces a connection Redis dropped (say, on restart).
            retry=Retry(NoBackoff(), 1),
        )
        return Redis(connection_pool=pool)

    async def _execute(self, op: str, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one command within ``timeout``; raise _Unavailable on any failure."""
        if not self.available and time.monotonic() < self._retry_at:
            self.skipped += 1
            raise _Unavailable
        try:
            with anyio.fail_after(self.timeout):
                result = await command(self._redis())
        except Exception as exc:
            self._failed(op, exc)
            raise _Unavailable from None
        if self._failures:
            if not self.available:
                logger.warning("Redis cache at %s is reachable again", self.location)
            self._failures = 0
        return result

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        self._failures += 1
        reason = (
            f"no answer within {self.timeout}s"
            if isinstance(exc, TimeoutError) and not str(exc)
            else f"{type(exc).__name__}: {exc}"
        )
        if self._failures == self.failures_before_backoff:
            logger.warning(
                "Redis cache at %s is failing (%s on %s); serving without it and retrying in %.1fs",
                self.location,
                reason,
                op,
                self.retry_after,
            )
        else:
            logger.debug("Redis cache %s at %s failed: %s", op, self.location, reason)
        if not self.available:
            self._retry_at = time.monotonic() + self.retry_after


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


def _redact(url: str) -> str:
    """The URL without user or password, for logs and reprs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path}"
