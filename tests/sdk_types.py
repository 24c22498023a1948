"""Checking a translated body against an SDK's request types."""

from __future__ import annotations

from typing import Any


def materialize(value: Any) -> Any:
    """Validated TypedDicts hold lazy iterators for Iterable fields; walking them validates."""
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ValidatorIterator":
        return [materialize(v) for v in value]
    return value
