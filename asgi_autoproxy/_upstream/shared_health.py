"""Provider health, the dispatcher's memory: failures in a row, cool-downs and
round-robin turns, kept per process or shared through Redis.

``ProviderHealth`` keeps them in this process. ``SharedHealth`` keeps the same in Redis
so that a provider that fails on one instance is cooled on all, and round-robin turns go
round across instances. Reading Redis on every request would add a round trip to each,
so the cool-downs are mirrored here and refreshed at most every ``refresh`` seconds (one
script for all providers); failures, which are rare, are written at once. While Redis is
unreachable the mirror carries on per process, and it resumes by itself: nothing here
ever fails a request. Every key carries one hash tag, so a script touches one slot of a
Redis Cluster.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asgi_autoproxy._shared.redis_link import Script, Unavailable
from asgi_autoproxy._shared.state import SharedState, short_hash

logger = logging.getLogger("asgi_autoproxy")

DEFAULT_REFRESH = 0.1
_HEALTH_TAG = "health"

# KEYS: the failure counter, the cool-down key. ARGV: failures before cooling, cool-down
# (ms). Returns 1 when this failure cooled the provider down.
_FAILED = Script("""
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), 1000) * 2)
if failures >= tonumber(ARGV[1]) then
  if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
  redis.call('SET', KEYS[1], tonumber(ARGV[1]) - 1, 'KEEPTTL')
  return 1
end
return 0
""")

# KEYS: every provider's cool-down key. Returns each one's milliseconds left (<= 0: none).
_COOLING = Script("""
local left = {}
for i, key in ipairs(KEYS) do left[i] = redis.call('PTTL', key) end
return left
""")


@dataclass(slots=True)
class _Health:
    failures: int = 0
    cooled_until: float = 0.0


class ProviderHealth:
    """Per process: each provider's failures in a row and cool-down, and turns."""

    def __init__(self, *, after_failures: int, seconds: float, clock: Callable[[], float]) -> None:
        self.after_failures = after_failures
        self.seconds = seconds
        self.clock = clock
        self._health: dict[str, _Health] = {}
        self._turns: dict[tuple[str, ...], int] = {}

    async def refresh(self, names: Sequence[str]) -> None:
        """Bring the cool-downs of ``names`` up to date (shared health only)."""

    def cooling(self, name: str, now: float) -> bool:
        health = self._health.get(name)
        return health is not None and health.cooled_until > now

    async def turn(self, names: tuple[str, ...]) -> int:
        """Whose turn it is among ``names`` (round robin)."""
        return self._next_turn(names)

    def _next_turn(self, names: tuple[str, ...]) -> int:
        turn = self._turns.get(names, 0)
        self._turns[names] = (turn + 1) % len(names)
        return turn

    async def succeeded(self, name: str) -> None:
        self._health.pop(name, None)

    async def failed(self, name: str) -> bool:
        """Count a failure; True when it cooled the provider down."""
        return self._count_failure(name)

    def _count_failure(self, name: str) -> bool:
        health = self._health.setdefault(name, _Health())
        health.failures += 1
        if health.failures < self.after_failures:
            return False
        health.cooled_until = self.clock() + self.seconds
        # One more failure after the pause cools it down again at once.
        health.failures = self.after_failures - 1
        return True

    def _cool(self, name: str, seconds: float) -> None:
        health = self._health.setdefault(name, _Health())
        health.cooled_until = self.clock() + seconds


class SharedHealth(ProviderHealth):
    """Health kept in Redis, mirrored here; per process while Redis is unreachable."""

    def __init__(
        self,
        shared: SharedState,
        *,
        after_failures: int,
        seconds: float,
        clock: Callable[[], float],
        refresh: float = DEFAULT_REFRESH,
    ) -> None:
        super().__init__(after_failures=after_failures, seconds=seconds, clock=clock)
        self._shared = shared
        self.refresh_every = refresh
        self._refreshed_at = -math.inf
        self.fallbacks = 0
        """Operations answered per process because Redis was unreachable."""

    def _name(self, kind: str, provider: str) -> str:
        return self._shared.name(_HEALTH_TAG, _HEALTH_TAG, f":{kind}:{short_hash(provider)}")

    async def refresh(self, names: Sequence[str]) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < self.refresh_every:
            return
        self._refreshed_at = now
        keys = [self._name("cool", name) for name in names]
        try:
            left = await self._shared.link.script("health", _COOLING, keys, [])
        except Unavailable:
            self.fallbacks += 1
            return  # the mirror stands as it is
        for name, ms in zip(names, left, strict=True):
            milliseconds = int(ms)
            if milliseconds > 0:
                self._cool(name, milliseconds / 1000)
            else:
                health = self._health.get(name)
                if health is not None:
                    health.cooled_until = 0.0

    async def turn(self, names: tuple[str, ...]) -> int:
        key = self._shared.name(_HEALTH_TAG, _HEALTH_TAG, f":turn:{short_hash(','.join(names))}")
        try:
            counted = await self._shared.link.run("turn", lambda redis: redis.incr(key))
        except Unavailable:
            self.fallbacks += 1
            return self._next_turn(names)
        return (int(counted) - 1) % len(names)

    async def succeeded(self, name: str) -> None:
        health = self._health.pop(name, None)
        if health is None or not health.failures:
            return  # nothing this instance counted: no round trip on the usual path
        key = self._name("fail", name)
        try:
            await self._shared.link.run("succeeded", lambda redis: redis.delete(key))
        except Unavailable:
            self.fallbacks += 1

    async def failed(self, name: str) -> bool:
        cooled = self._count_failure(name)
        keys = [self._name("fail", name), self._name("cool", name)]
        args = [self.after_failures, max(0, round(self.seconds * 1000))]
        try:
            shared_cooled = await self._shared.link.script("failed", _FAILED, keys, args)
        except Unavailable:
            self.fallbacks += 1
            return cooled
        if shared_cooled and not cooled:
            self._cool(name, self.seconds)  # others' failures and this one reached the count
        return cooled or bool(shared_cooled)
