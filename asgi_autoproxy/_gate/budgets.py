"""Per-caller token limits and spend budgets: their settings, their 429s, and the
per-process bookkeeping (``_gate/shared_limits.py`` keeps the same books in Redis).

Both are charged after the answer, from the usage it reports, so a caller may go over
by one answer; the next request is refused until the limit resets. Cache hits and
requests that joined another's upstream call cost nothing.

- Tokens per minute: a bucket of ``tokens_per_minute`` that refills continuously. A
  charge may take it below zero (an answer's size is known only at its end); a caller
  is refused while it is empty, and the 429 says when it is not any more.
- Dollars per UTC day or month: spent = the sum of ``Price.cost`` of the answers in the
  period. The 429 says when the period ends. A model without a price is refused while a
  budget is set: its cost is unknown, never taken as 0.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from asgi_autoproxy.errors import ProxyError

LimitStorage = Literal["auto", "memory", "redis"]
"""``auto``: in Redis when the middleware has shared state, else in this process;
``memory``: always in this process; ``redis``: in Redis (start-up fails without it)."""
STORAGES: frozenset[str] = frozenset(("auto", "memory", "redis"))
BudgetPeriod = Literal["day", "month"]
TOKEN_WINDOW = 60.0


def check_storage(owner: str, storage: str) -> None:
    if storage not in STORAGES:
        raise ValueError(f"{owner}.storage must be one of {sorted(STORAGES)}, got {storage!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLimit:
    """At most ``tokens_per_minute`` tokens (prompt and completion, as each answer reports
    them) per caller id, refilled continuously."""

    tokens_per_minute: int
    max_callers: int = 10_000
    storage: LimitStorage = "auto"
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.tokens_per_minute, int) and self.tokens_per_minute >= 1):
            raise ValueError("TokenLimit.tokens_per_minute must be a whole number >= 1")
        if self.max_callers < 1:
            raise ValueError("TokenLimit.max_callers must be at least 1")
        check_storage("TokenLimit", self.storage)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendBudget:
    """At most ``dollars`` US dollars per caller id per UTC ``period`` (``day`` or
    ``month``), priced from the catalog's ``Price`` of the requested model."""

    dollars: float
    period: BudgetPeriod = "day"
    max_callers: int = 10_000
    storage: LimitStorage = "auto"
    clock: Callable[[], float] = field(default=time.time, compare=False)
    """Wall-clock seconds since the epoch: periods are calendar days or months, in UTC."""

    def __post_init__(self) -> None:
        if not (self.dollars > 0 and math.isfinite(self.dollars)):
            raise ValueError("SpendBudget.dollars must be a positive number")
        if self.period not in ("day", "month"):
            raise ValueError(f"SpendBudget.period must be 'day' or 'month', got {self.period!r}")
        if self.max_callers < 1:
            raise ValueError("SpendBudget.max_callers must be at least 1")
        check_storage("SpendBudget", self.storage)

    def period_of(self, now: float) -> tuple[str, float]:
        """The period ``now`` falls in (``2026-12-02`` or ``2026-12``) and when it ends."""
        day = datetime.fromtimestamp(now, UTC)
        if self.period == "day":
            start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            return day.strftime("%Y-%m-%d"), start + 86400
        last = calendar.monthrange(day.year, day.month)[1]
        end = datetime(day.year, day.month, last, tzinfo=UTC).timestamp() + 86400
        return day.strftime("%Y-%m"), end


# -- the answers ----------------------------------------------------------------------


def _when(seconds: float, clock: Callable[[], float] = time.time) -> str:
    at = datetime.fromtimestamp(clock() + seconds, UTC).replace(microsecond=0)
    return at.isoformat().replace("+00:00", "Z")


def tokens_exhausted(limit: int, wait: float) -> ProxyError:
    seconds = max(1, math.ceil(wait))
    return ProxyError(
        429,
        f"Token limit reached: at most {limit} tokens per minute per caller. It resets "
        f"in {seconds} s (at {_when(seconds)}); retry then.",
        type="rate_limit_error",
        code="token_limit_exceeded",
        headers=[("retry-after", str(seconds))],
    )


def budget_spent(budget: SpendBudget, ends_at: float) -> ProxyError:
    seconds = max(1, math.ceil(ends_at - budget.clock()))
    reset = datetime.fromtimestamp(ends_at, UTC).isoformat().replace("+00:00", "Z")
    return ProxyError(
        429,
        f"Spend budget reached: at most ${budget.dollars:g} per {budget.period} (UTC) per "
        f"caller. It resets at {reset} (in {seconds} s).",
        type="insufficient_quota",
        code="spend_budget_exceeded",
        headers=[("retry-after", str(seconds))],
    )


def unpriced(model: str) -> ProxyError:
    return ProxyError(
        400,
        f"Model {model!r} has no price in the catalog, so the spend budget cannot count "
        "it; ask for a priced model, or give this model a price.",
        code="model_not_priced",
        param="model",
    )


# -- per-process books ----------------------------------------------------------------

V = TypeVar("V")


class BoundedBooks(Generic[V]):
    """At most ``size`` callers' entries; the least recently seen goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._books: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._books)

    def get(self, caller_id: str) -> V | None:
        found = self._books.get(caller_id)
        if found is not None:
            self._books.move_to_end(caller_id)
        return found

    def put(self, caller_id: str, value: V) -> None:
        self._books[caller_id] = value
        self._books.move_to_end(caller_id)
        if len(self._books) > self.size:
            self._books.popitem(last=False)


class TokenBooks:
    """Tokens per minute in this process: the time the caller's bucket is full again."""

    def __init__(self, limit: TokenLimit) -> None:
        self.limit = limit
        self._full_at: BoundedBooks[float] = BoundedBooks(limit.max_callers)

    def check(self, caller_id: str) -> None:
        full_at = self._full_at.get(caller_id)
        if full_at is None:
            return
        wait = full_at - self.limit.clock() - TOKEN_WINDOW
        if wait >= 0:
            raise tokens_exhausted(self.limit.tokens_per_minute, wait)

    def charge(self, caller_id: str, tokens: int) -> None:
        now = self.limit.clock()
        full_at = max(self._full_at.get(caller_id) or now, now)
        self._full_at.put(caller_id, full_at + tokens * TOKEN_WINDOW / self.limit.tokens_per_minute)


class SpendBooks:
    """Dollars spent this period in this process."""

    def __init__(self, budget: SpendBudget) -> None:
        self.budget = budget
        self._spent: BoundedBooks[tuple[str, float]] = BoundedBooks(budget.max_callers)

    def check(self, caller_id: str) -> None:
        period, ends_at = self.budget.period_of(self.budget.clock())
        found = self._spent.get(caller_id)
        if found is not None and found[0] == period and found[1] >= self.budget.dollars:
            raise budget_spent(self.budget, ends_at)

    def charge(self, caller_id: str, dollars: float) -> None:
        period, _ = self.budget.period_of(self.budget.clock())
        found = self._spent.get(caller_id)
        spent = found[1] if found is not None and found[0] == period else 0.0
        self._spent.put(caller_id, (period, spent + dollars))
