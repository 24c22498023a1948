"""Request parameters a model refuses, rewritten to the ones it takes.

OpenAI's reasoning models (o-series, ``gpt-5*``) reject ``max_tokens`` and any
non-default sampling parameter on chat completions. Which model needs what is data:
a ``ParamRule`` named by the model's catalog entry (``params``), applied here, in one
place, to every chat request before it goes upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ParamRule:
    rename: tuple[tuple[str, str], ...] = ()
    """``(old, new)``: ``old`` is sent as ``new``; a ``new`` the caller sent wins."""
    drop: tuple[str, ...] = ()
    """Parameters the model refuses; left out of the request."""
    keep_sampling_when: tuple[tuple[str, Any], ...] = ()
    """Fields that, all equal to these values, let the model take ``drop`` after all
    (``gpt-5.1`` with ``reasoning_effort: "none"`` takes ``temperature``)."""

    @classmethod
    def parse(cls, raw: Any, where: str) -> ParamRule:
        """From a catalog's JSON; a clear ValueError naming ``where`` otherwise."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object with rename, drop, keep_sampling_when")
        unknown = sorted(set(raw) - {"rename", "drop", "keep_sampling_when"})
        if unknown:
            raise ValueError(f"{where} has unknown fields {unknown}")
        rename = raw.get("rename") or {}
        drop = raw.get("drop") or []
        keep = raw.get("keep_sampling_when") or {}
        if not isinstance(rename, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in rename.items()
        ):
            raise ValueError(f"{where}.rename must map parameter names to parameter names")
        if not isinstance(drop, list) or not all(isinstance(name, str) for name in drop):
            raise ValueError(f"{where}.drop must be a list of parameter names")
        if not isinstance(keep, Mapping):
            raise ValueError(f"{where}.keep_sampling_when must be an object")
        return cls(tuple(rename.items()), tuple(drop), tuple(keep.items()))

    def apply(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """``payload`` as the model takes it; None when it already does (the common
        case, which then costs no copy)."""
        renamed = [(old, new) for old, new in self.rename if old in payload]
        dropped: list[str] = []
        if self.drop and not self._keeps_sampling(payload):
            dropped = [name for name in self.drop if name in payload]
        if not renamed and not dropped:
            return None
        rewritten = dict(payload)
        for old, new in renamed:
            value = rewritten.pop(old)
            rewritten.setdefault(new, value)
        for name in dropped:
            del rewritten[name]
        return rewritten

    def _keeps_sampling(self, payload: Mapping[str, Any]) -> bool:
        if not self.keep_sampling_when:
            return False
        return all(payload.get(name) == value for name, value in self.keep_sampling_when)
