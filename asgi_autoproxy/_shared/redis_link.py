"""``RedisLink``: one Redis, Redis Cluster, Sentinel-managed or Valkey server, reached with
bounded commands that never fail a request.

Every command is bounded by ``timeout``; a failure or a timeout raises ``Unavailable``,
which callers turn into their per-process fallback. After a few failures in a row the
link stops asking for ``retry_after`` seconds, then tries again, so a dead or paused
Redis costs nothing per request and a revived one is used again without a restart.

URLs: ``redis://``, ``rediss://`` (TLS), ``unix://``, ``valkey://`` and ``valkeys://``
(the same protocol), each optionally ``+cluster`` (``redis+cluster://host:port``: any
node of a Redis Cluster), and ``redis+sentinel://host:port[,host:port...]/service[/db]``
(Sentinel finds the master of ``service``). A client made by the caller
(``redis.asyncio.Redis``, ``RedisCluster``, or Sentinel's ``master_for``) is used as is.
``redis`` is imported only when a link is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    Client = Redis | RedisCluster
else:
    Client = Any

__all__ = ["EXTRA_HINT", "RedisLink", "Script", "Unavailable", "hash_tag", "redact_url"]

logger = logging.getLogger("asgi_autoproxy.redis")

T = TypeVar("T")

EXTRA_HINT = "pip install 'asgi_autoproxy[redis]'"
_SCHEMES = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
URL_HELP = (
    "use redis://host:6379/0, rediss://... (TLS), unix:///path/redis.sock, valkey://..., "
    "redis+cluster://host:port (any node of a cluster) or "
    "redis+sentinel://host:26379[,host:port]/service_name[/db]"
)


class Unavailable(Exception):
    """The command failed, timed out or was not tried (backing off); degrade."""


def hash_tag(name: str) -> str:
    """``{name}``: Redis Cluster places every key that carries the same tag in one slot,
    so one entry's value, lock and stream can be read and written together."""
    return "{" + name + "}"


class RedisLink:
    """Per-event-loop clients for one Redis, with bounded, backed-off commands.

    Counters: ``errors`` (commands that failed or timed out) and ``skipped`` (commands
    not tried while backing off).
    """

    #: Consecutive failures before backing off for ``retry_after`` seconds.
    failures_before_backoff = 3

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Client | None = None,
        timeout: float = 0.1,
        retry_after: float = 1.0,
        max_connections: int = 32,
        what: str = "Redis",
        log: logging.Logger = logger,
    ) -> None:
        require_redis(what)
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry_after < 0:
            raise ValueError(f"retry_after must be zero or more seconds, got {retry_after!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if client is None and url is None:
            raise ValueError(f"{what} needs a url or a client")
        self.what = what
        self._log = log
        self.timeout = timeout
        self.retry_after = retry_after
        self.max_connections = max_connections
        self._client = client
        self._clients: dict[asyncio.AbstractEventLoop, Client] = {}
        self._helpers: dict[asyncio.AbstractEventLoop, list[Client]] = {}
        """Per loop: clients the link made beside the main one (Sentinel's)."""
        self._failures = 0
        self._retry_at = 0.0
        self.errors = 0
        self.skipped = 0
        if client is not None:
            if _decodes(client):
                raise ValueError(f"{what} needs a client made with decode_responses=False")
            self.cluster = _is_cluster(client)
            self.location = "a caller-provided client"
            self._target: _Target | None = None
        else:
            assert url is not None
            self._target = _parse(url, what)
            self.cluster = self._target.kind == "cluster"
            self.location = redact_url(url)

    def __repr__(self) -> str:
        return f"RedisLink({self.location!r})"

    @property
    def available(self) -> bool:
        """False while backing off after failures."""
        return self._failures < self.failures_before_backoff

    def client(self) -> Client:
        """This event loop's client (redis.asyncio clients cannot cross loops)."""
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            assert self._target is not None
            client, self._helpers[loop] = self._target.connect(self)
            self._clients[loop] = client
        return client

    async def run(
        self, op: str, command: Callable[[Client], Awaitable[T]], *, wait: float = 0.0
    ) -> T:
        """Run one command within ``timeout`` (plus ``wait``, for a command that blocks on
        purpose); raise ``Unavailable`` on any failure."""
        if not self.available and time.monotonic() < self._retry_at:
            self.skipped += 1
            raise Unavailable
        try:
            with anyio.fail_after(self.timeout + wait):
                result = await command(self.client())
        except Exception as exc:
            self._failed(op, exc)
            raise Unavailable from None
        if self._failures:
            if not self.available:
                self._log.warning("%s at %s is reachable again", self.what, self.location)
            self._failures = 0
        return result

    async def script(self, op: str, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua ``script`` (EVALSHA, loading it on first use) within ``timeout``."""

        async def run(redis: Client) -> Any:
            from redis.exceptions import NoScriptError

            try:
                return await redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await redis.eval(script.text, len(keys), *keys, *args)

        return await self.run(op, run)

    async def aclose(self) -> None:
        """Close this event loop's connections. A later command opens new ones."""
        if self._client is not None:
            return
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        helpers = self._helpers.pop(loop, [])
        for stale in [other for other in self._clients if other.is_closed()]:
            del self._clients[stale]
            self._helpers.pop(stale, None)
        if client is not None:
            with anyio.move_on_after(max(self.timeout, 1.0)):
                for each in (client, *helpers):
                    await _close(each)

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        self._failures += 1
        reason = (
            f"no answer within {self.timeout}s"
            if isinstance(exc, TimeoutError) and not str(exc)
            else f"{type(exc).__name__}: {exc}"
        )
        if self._failures == self.failures_before_backoff:
            self._log.warning(
                "%s at %s is failing (%s on %s); serving without it and retrying in %.1fs",
                self.what,
                self.location,
                reason,
                op,
                self.retry_after,
            )
        else:
            self._log.debug("%s %s at %s failed: %s", self.what, op, self.location, reason)
        if not self.available:
            self._retry_at = time.monotonic() + self.retry_after


class Script:
    """A Lua script and its SHA-1, the name Redis caches it under."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class _Target:
    """A parsed URL: how to make a client for it."""

    def __init__(self, kind: str, url: str, sentinels: list[tuple[str, int]], service: str):
        self.kind, self.url, self.sentinels, self.service = kind, url, sentinels, service

    def connect(self, link: RedisLink) -> tuple[Client, list[Client]]:
        from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "socket_connect_timeout": link.timeout,
            "socket_timeout": max(link.timeout, 1.0),
        }
        if self.kind == "cluster":
            cluster = RedisCluster.from_url(
                self.url, max_connections=link.max_connections, **options
            )
            return cluster, []
        if self.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel

            parts = urlsplit(self.url)
            auth: dict[str, Any] = {}
            if parts.username:
                auth["username"] = unquote(parts.username)
            if parts.password:
                auth["password"] = unquote(parts.password)
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                self.sentinels, sentinel_kwargs=options, **options
            )
            master: Client = sentinel.master_for(
                self.service,
                redis_class=Redis,
                db=int(parts.path.strip("/") or "0"),
                max_connections=link.max_connections,
                retry=Retry(NoBackoff(), 1),
                **auth,
            )
            return master, list(sentinel.sentinels)
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=link.max_connections,
            timeout=link.timeout,  # waiting for a free connection
            # One immediate retry replaces a connection Redis dropped (say, on restart).
            retry=Retry(NoBackoff(), 1),
            **options,
        )
        return Redis(connection_pool=pool), []


def _parse(url: str, what: str) -> _Target:
    scheme, _, rest = url.partition("://")
    base, _, variant = scheme.lower().partition("+")
    if not rest or variant not in ("", "cluster", "sentinel"):
        raise ValueError(f"{what} url {redact_url(url)!r} is not one it knows: {URL_HELP}")
    if base == "unix" and not variant:
        plain = url
    elif base in _SCHEMES:
        plain = f"{_SCHEMES[base]}://{rest}"
    else:
        raise ValueError(f"{what} url scheme {scheme!r} is not one it knows: {URL_HELP}")
    if variant == "sentinel":
        netloc, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        hosts = netloc.rpartition("@")[2]
        sentinels: list[tuple[str, int]] = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
            if not name or not port.isdigit():
                raise ValueError(f"{what} sentinel address {host!r} needs host:port: {URL_HELP}")
            sentinels.append((name, int(port)))
        if not service:
            raise ValueError(f"{what} sentinel url needs the service name: {URL_HELP}")
        userinfo = netloc.rpartition("@")[0]
        at = f"{userinfo}@" if userinfo else ""
        return _Target("sentinel", f"redis://{at}sentinel/{db or '0'}", sentinels, service)
    from redis.asyncio.connection import parse_url

    try:
        parse_url(plain)
    except ValueError as exc:
        raise ValueError(f"{what} url must look right ({exc}): {URL_HELP}") from None
    return _Target(variant or "single", plain, [], "")


def require_redis(what: str) -> None:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{what} needs the 'redis' package: {EXTRA_HINT}") from exc


def _is_cluster(client: Client) -> bool:
    from redis.asyncio import RedisCluster

    return isinstance(client, RedisCluster)


def _decodes(client: Client) -> bool:
    from redis.asyncio import RedisCluster

    if isinstance(client, RedisCluster):
        kwargs = client.get_connection_kwargs()
    else:
        kwargs = client.connection_pool.connection_kwargs
    return bool(kwargs.get("decode_responses"))


async def _close(client: Client) -> None:
    from redis.asyncio import RedisCluster

    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose()
        await client.connection_pool.disconnect()


def redact_url(url: str) -> str:
    """The URL without user or password, for logs and reprs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    hosts = parts.netloc.rpartition("@")[2]
    if "," in hosts or "+sentinel" in parts.scheme:
        return f"{parts.scheme}://{hosts}{parts.path}"
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.scheme}://{host}:{port}{parts.path}"
