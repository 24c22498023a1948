"""JSON encode and decode, through orjson when the ``fast`` extra is installed."""

from __future__ import annotations

import json
import math
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _orjson = None  # type: ignore[assignment]

__all__ = ["DuplicateKeyError", "JSONDecodeError", "canonical", "dumps", "loads", "strict"]

JSONDecodeError = (ValueError, UnicodeDecodeError)
"""What ``loads`` raises on bad input, whichever backend is active."""


def _std_dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    # ensure_ascii=False, as orjson: characters (colons included) are written as they are.
    text = json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


if _orjson is not None:
    _SORTED = _orjson.OPT_SORT_KEYS

    def loads(data: bytes) -> Any:
        return _orjson.loads(data)

    def dumps(value: Any) -> bytes:
        try:
            return _orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, say (see strict)
            return _std_dumps(value)

    def canonical(value: Any) -> bytes:
        """Sorted keys, no insignificant whitespace: equal JSON values give equal bytes."""
        try:
            return _orjson.dumps(value, option=_SORTED)
        except TypeError:  # as in dumps
            return _std_dumps(value, sort_keys=True)

else:  # pragma: no cover

    def loads(data: bytes) -> Any:
        try:
            return json.loads(data)
        except RecursionError:  # orjson's own limit reads the same, so callers see one error
            raise ValueError("depth limit exceeded") from None

    def dumps(value: Any) -> bytes:
        return _std_dumps(value)

    def canonical(value: Any) -> bytes:
        """Sorted keys, no insignificant whitespace: equal JSON values give equal bytes."""
        return _std_dumps(value, sort_keys=True)


class DuplicateKeyError(ValueError):
    """An object in the JSON text has the same key twice."""


def strict(data: bytes, value: Any) -> Any:
    """``value``, which ``loads(data)`` returned, held to what orjson lets pass.

    Raises DuplicateKeyError where an object repeats a key: parsers keep the last one
    without a word, so such a body could mean one thing to the proxy (and its cache key)
    and another to an upstream that keeps the first. Returns ``data`` read again by the
    standard library where orjson may have rounded an integer past 64 bits to a float
    (2**64 and 2**64 + 1 alike); otherwise ``value`` itself.
    """
    dumped = dumps(value)
    if dumped == data:  # compact JSON, as the OpenAI SDK and httpx write it: nothing lost
        return value
    if _drops_members(data, dumped):
        raise DuplicateKeyError("an object repeats a key")
    # Such a float is written with an exponent ("1.8446744073709552e+19"); memchr first.
    if _orjson is not None and b"+" in dumped and b"e+" in dumped:
        return _std_loads_strict(data)
    return value


def _drops_members(data: bytes, dumped: bytes) -> bool:
    """Whether parsing ``data`` dropped an object member, ``dumped`` being its result.

    Outside strings a colon only ends a key, and ``dumps`` writes the colons in strings
    as they are. So without duplicates ``data`` has as many colons as ``dumped`` (fewer
    where it writes some as ``\\u003a``), and each member dropped takes one with it.
    """
    raw, parsed = _count_colons(data), _count_colons(dumped)
    if raw > parsed:
        return True
    if raw == parsed and (b"\\" not in data or _ESCAPED_COLON not in data):
        return False
    # Escaped colons could stand in for the dropped ones: the standard library decides.
    try:
        json.loads(data, object_pairs_hook=_unique)
    except _Duplicate:
        return True
    except (RecursionError, ValueError):  # cannot tell: refuse rather than guess
        return True
    return False


_ESCAPED_COLON = b"\\u003"  # \u003a or \u003A (or another character, which is harmless)
_SPARSE_FROM = 64 * 1024


def _count_colons(data: bytes) -> int:
    """``data.count(b":")``, quicker in long texts with few colons (long prompts).

    count() tests every byte (about 0.6 ns each); find() skips to the next colon with
    memchr, far faster per byte but a Python call per colon. So a long text is hopped
    through until its colons prove dense, and the rest counted.
    """
    if len(data) < _SPARSE_FROM:
        return data.count(b":")
    found, at = 0, data.find(b":")
    while at >= 0:
        found += 1
        if found >= 32 and at < found * 256:  # a colon in every 256 bytes: count() wins
            return found + data.count(b":", at + 1)
        at = data.find(b":", at + 1)
    return found


class _Duplicate(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Duplicate
    return found


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError("number is infinity when parsed as double")
    return number


def _std_loads_strict(data: bytes) -> Any:
    """The standard library, refusing what orjson refuses (NaN, Infinity, 1e400)."""
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:  # as orjson's depth limit
        raise ValueError("depth limit exceeded") from None
