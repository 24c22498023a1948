"""JSON encode and decode, through orjson when the ``fast`` extra is installed."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _orjson = None  # type: ignore[assignment]

__all__ = ["JSONDecodeError", "canonical", "dumps", "loads"]

JSONDecodeError = (ValueError, UnicodeDecodeError)
"""What ``loads`` raises on bad input, whichever backend is active."""

if _orjson is not None:
    _SORTED = _orjson.OPT_SORT_KEYS

    def loads(data: bytes) -> Any:
        return _orjson.loads(data)

    def dumps(value: Any) -> bytes:
        return _orjson.dumps(value)

    def canonical(value: Any) -> bytes:
        """Sorted keys, no insignificant whitespace: equal JSON values give equal bytes."""
        return _orjson.dumps(value, option=_SORTED)

else:  # pragma: no cover

    def loads(data: bytes) -> Any:
        try:
            return json.loads(data)
        except RecursionError:  # orjson's own limit reads the same, so callers see one error
            raise ValueError("depth limit exceeded") from None

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def canonical(value: Any) -> bytes:
        """Sorted keys, no insignificant whitespace: equal JSON values give equal bytes."""
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
