"""What a model costs: prices per million tokens, and the cost of one answer's usage.

The catalog holds a ``Price`` per model where one is published; the request record
and spend budgets ask it for ``cost``. A model without a price costs ``None``
(unknown), never 0, so that a budget never treats an unpriced model as free.
"""

from __future__ import annotations

from dataclasses import dataclass

_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    """For prompt tokens read from the provider's prompt cache; None: same as ``input``."""

    def cost(
        self,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
    ) -> float | None:
        """Dollars for one answer's usage; None when the usage is not known."""
        if input_tokens is None and output_tokens is None:
            return None
        cached = min(cached_input_tokens or 0, input_tokens or 0)
        fresh = (input_tokens or 0) - cached
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = fresh * self.input + cached * cached_rate + (output_tokens or 0) * self.output
        return total / _MILLION
