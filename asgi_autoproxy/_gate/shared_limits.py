"""``CallerLimits``: the rate limit, token limit and spend budget of each caller id, kept
in Redis when the middleware has shared state, so that they hold across instances.

With Redis, admitting a request is one atomic Lua script (a GCRA for the rate; a check
of the token bucket and of the period's spend), and charging an answer is another: burst
2 means 2, whichever instances the requests reach. Redis time drives the rate and
token arithmetic, so instances' clocks need not agree. Every key of one caller carries
the same hash tag, so each script touches one Redis Cluster slot.

A Redis that fails or is slow (``RedisLink`` bounds every command) never fails a
request: the per-process books answer instead until it is back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

from asgi_autoproxy._gate.budgets import (
    TOKEN_WINDOW,
    SpendBooks,
    SpendBudget,
    TokenBooks,
    TokenLimit,
    budget_spent,
    tokens_exhausted,
    unpriced,
)
from asgi_autoproxy._gate.limits import RateLimit, TokenBuckets, rate_exceeded
from asgi_autoproxy._shared.redis_link import Script, Unavailable
from asgi_autoproxy._shared.state import SharedState, short_hash
from asgi_autoproxy.observability import TokenUsage

logger = logging.getLogger("asgi_autoproxy.shared")

_MICROS = 1_000_000

# KEYS: rate, tokens, spend. ARGV: rate interval (µs, 0: no rate limit), burst, token
# window (µs, 0: no token limit), budget (dollars, -1: none). Returns {0, 0} when admitted,
# else {which, µs to wait}: 1 rate, 2 tokens, 3 spend. Only an admitted request is counted.
_ADMIT = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[3])
if window > 0 then
  local full_at = tonumber(redis.call('GET', KEYS[2]) or '0')
  if full_at - now >= window then return {2, full_at - now - window} end
end
local budget = tonumber(ARGV[4])
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
  if spent >= budget then return {3, 0} end
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local burst = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local allow_at = tat + interval - burst * interval
  if allow_at > now then return {1, allow_at - now} end
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return {0, 0}
""")

# KEYS: tokens, spend. ARGV: token time (µs the tokens take to refill, 0: none), dollars
# (0: none), the spend key's life (ms).
_CHARGE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
if cost > 0 then
  local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
  if full_at < now then full_at = now end
  full_at = full_at + cost
  redis.call('SET', KEYS[1], string.format('%.0f', full_at),
             'PX', math.ceil((full_at - now) / 1000) + 1)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 0
""")


class Price(Protocol):
    """What a spend budget needs of a catalog price (``_routing/pricing.Price``)."""

    def cost(
        self,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
    ) -> float | None: ...


class CallerLimits:
    """Admits a caller's request, and charges its answer, against each limit set."""

    def __init__(
        self,
        *,
        rate: RateLimit | None = None,
        tokens: TokenLimit | None = None,
        spend: SpendBudget | None = None,
        shared: SharedState | None = None,
        price: Callable[[str], Price | None] = lambda model: None,
    ) -> None:
        for limit in (rate, tokens, spend):
            if limit is not None and limit.storage == "redis" and shared is None:
                raise ValueError(
                    f"{type(limit).__name__}(storage='redis') needs shared state: pass "
                    "shared_state='redis://...' or cache=RedisCache(...)"
                )

        def in_redis(limit: RateLimit | TokenLimit | SpendBudget | None) -> bool:
            return limit is not None and shared is not None and limit.storage != "memory"

        self.rate, self.tokens, self.spend = rate, tokens, spend
        self._shared = shared
        self._rate_in_redis = in_redis(rate)
        self._tokens_in_redis = in_redis(tokens)
        self._spend_in_redis = in_redis(spend)
        self._uses_redis = self._rate_in_redis or self._tokens_in_redis or self._spend_in_redis
        # Per process: the books of limits kept here, and the fallback of those in Redis.
        self._buckets = None if rate is None else TokenBuckets(rate)
        self._token_books = None if tokens is None else TokenBooks(tokens)
        self._spend_books = None if spend is None else SpendBooks(spend)
        self._price = price
        self.fallbacks = 0
        """Admissions and charges answered per process because Redis was unreachable."""

    @property
    def charges(self) -> bool:
        """Whether answers are charged (a token limit or a spend budget is set)."""
        return self.tokens is not None or self.spend is not None

    # -- before the request -------------------------------------------------------------

    async def admit(self, caller_id: str) -> None:
        """Count the request against the rate, or raise the 429 of the limit it is over."""
        in_redis = False
        if self._uses_redis:
            in_redis = await self._admit_in_redis(caller_id)
        if not (in_redis and self._tokens_in_redis) and self._token_books is not None:
            self._token_books.check(caller_id)
        if not (in_redis and self._spend_in_redis) and self._spend_books is not None:
            self._spend_books.check(caller_id)
        if not (in_redis and self._rate_in_redis) and self._buckets is not None:
            self._buckets.take(caller_id)

    def check_model(self, model: str) -> None:
        """A spend budget needs the model's price: without one its cost is unknown."""
        if self.spend is not None and self._price(model) is None:
            raise unpriced(model)

    async def _admit_in_redis(self, caller_id: str) -> bool:
        """True when Redis answered (and admitted); raises its 429; False: Redis is away."""
        assert self._shared is not None
        rate = self.rate if self._rate_in_redis else None
        tokens = self.tokens if self._tokens_in_redis else None
        spend = self.spend if self._spend_in_redis else None
        keys, spend_ends = self._keys(caller_id)
        args = [
            0 if rate is None else round(_MICROS / rate.requests_per_second),
            0 if rate is None else rate.burst,
            0 if tokens is None else round(TOKEN_WINDOW * _MICROS),
            -1 if spend is None else repr(spend.dollars),
        ]
        try:
            which, wait = await self._shared.link.script("admit", _ADMIT, keys, args)
        except Unavailable:
            self.fallbacks += 1
            return False
        if which == 0:
            return True
        seconds = int(wait) / _MICROS
        if which == 1:
            assert rate is not None
            raise rate_exceeded(rate, seconds)
        if which == 2:
            assert tokens is not None
            raise tokens_exhausted(tokens.tokens_per_minute, seconds)
        assert spend is not None
        raise budget_spent(spend, spend_ends)

    # -- after the answer ---------------------------------------------------------------

    async def charge(self, caller_id: str, model: str, usage: TokenUsage | None) -> None:
        """Charge an answer's reported usage to the caller's token limit and budget."""
        if usage is None:
            return
        tokens = usage.total_tokens
        if tokens is None:
            tokens = (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)
        dollars = 0.0
        if self.spend is not None:
            price = self._price(model)
            cost = (
                None
                if price is None
                else price.cost(
                    input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
                )
            )
            dollars = cost or 0.0
        in_redis = False
        if self._tokens_in_redis or self._spend_in_redis:
            in_redis = await self._charge_in_redis(caller_id, tokens, dollars)
        if not (in_redis and self._tokens_in_redis) and self._token_books is not None:
            self._token_books.charge(caller_id, tokens)
        if not (in_redis and self._spend_in_redis) and self._spend_books is not None:
            self._spend_books.charge(caller_id, dollars)

    async def _charge_in_redis(self, caller_id: str, tokens: int, dollars: float) -> bool:
        assert self._shared is not None
        keys, spend_ends = self._keys(caller_id)
        token_time = 0
        if self._tokens_in_redis and self.tokens is not None and tokens > 0:
            token_time = round(tokens * TOKEN_WINDOW * _MICROS / self.tokens.tokens_per_minute)
        if not self._spend_in_redis or self.spend is None:
            dollars = 0.0
        life_ms = 0
        if self.spend is not None:
            # Kept a day past the period's end, so that every instance sees it end.
            life_ms = max(1, math.ceil((spend_ends - self.spend.clock() + 86400) * 1000))
        if token_time == 0 and dollars <= 0:
            return True
        args = [token_time, repr(dollars), life_ms]
        try:
            await self._shared.link.script("charge", _CHARGE, keys[1:], args)
        except Unavailable:
            self.fallbacks += 1
            return False
        return True

    def _keys(self, caller_id: str) -> tuple[list[str], float]:
        """The caller's rate, tokens and spend keys (one slot), and when the spend's
        period ends."""
        assert self._shared is not None
        tag = short_hash(caller_id)
        period, ends = (
            ("-", 0.0) if self.spend is None else self.spend.period_of(self.spend.clock())
        )
        name = self._shared.name
        keys = [name("limit", tag, ":rate"), name("limit", tag, ":tokens")]
        keys.append(name("limit", tag, f":spend:{period}"))
        return keys, ends
