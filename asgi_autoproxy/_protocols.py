"""What a plug-in object lacks, for the ``TypeError`` that refuses it at start-up."""

from __future__ import annotations

from collections.abc import Iterable


def what_it_lacks(candidate: object, required: Iterable[str]) -> str:
    """``it lacks send, serves``; or, where every name is there, that one is None."""
    missing = [member for member in required if not hasattr(candidate, member)]
    return f"it lacks {', '.join(missing)}" if missing else "a required member is None"
