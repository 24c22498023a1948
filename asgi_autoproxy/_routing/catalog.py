"""What the proxy knows about a model: its API flavour, wire format, price and the
parameters it refuses.

``/auto`` needs the flavour to pick an upstream API: chat, completion, or responses
for models only the Responses API serves (their chat requests are translated);
embedding models are refused there. The built-in knowledge is data: ``models.json``
in this package, in the format a user's own catalog file uses too (see the README).
Exact names win over glob patterns, and user entries win over the built-in ones, field
by field: a user entry that gives only a flavour keeps the built-in price.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, get_args

from asgi_autoproxy._routing.params import ParamRule
from asgi_autoproxy._routing.pricing import Price

ModelFlavor = Literal["chat", "completion", "responses", "embedding"]
FLAVORS: frozenset[str] = frozenset(get_args(ModelFlavor))
_ENTRY_FIELDS = frozenset({"flavor", "format", "price", "params"})
_PRICE_FIELDS = frozenset({"input", "output", "cached_input"})


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One catalog entry. ``given`` names the optional fields it sets (``null``
    included), so that a user entry without a price falls back to the built-in one."""

    flavor: ModelFlavor
    format: str | None = None
    """The wire format the model speaks natively: openai, anthropic, google..."""
    price: Price | None = None
    params: ParamRule | None = None
    given: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model as the catalog resolved it, all layers and patterns considered."""

    flavor: ModelFlavor
    format: str | None
    price: Price | None
    params: ParamRule | None


# -- reading catalogs --------------------------------------------------------------------


def _entry(raw: Any, where: str, rules: Mapping[str, ParamRule]) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"flavor": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a flavour {sorted(FLAVORS)} or an object")
    unknown = sorted(set(raw) - _ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; use {sorted(_ENTRY_FIELDS)}")
    flavor = raw.get("flavor")
    if flavor not in FLAVORS:
        raise ValueError(f"{where} is {flavor!r}; use one of {sorted(FLAVORS)}")
    wire = raw.get("format")
    if wire is not None and not isinstance(wire, str):
        raise ValueError(f"{where}.format must be a string such as 'openai' or 'anthropic'")
    price = None if raw.get("price") is None else _price(raw["price"], f"{where}.price")
    params = raw.get("params")
    rule: ParamRule | None = None
    if isinstance(params, str):
        if params not in rules:
            raise ValueError(f"{where}.params names {params!r}, which no param_rules defines")
        rule = rules[params]
    elif params is not None:
        rule = ParamRule.parse(params, f"{where}.params")
    given = frozenset(name for name in ("format", "price", "params") if name in raw)
    return ModelEntry(flavor, wire, price, rule, given)


def _price(raw: Any, where: str) -> Price:
    if not isinstance(raw, Mapping) or not {"input", "output"} <= set(raw):
        raise ValueError(f"{where} must be an object with 'input' and 'output' (USD per 1M)")
    unknown = sorted(set(raw) - _PRICE_FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; use {sorted(_PRICE_FIELDS)}")
    for name, value in raw.items():
        if value is None and name == "cached_input":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}.{name} must be a number of dollars, 0 or more")
    return Price(
        input=float(raw["input"]),
        output=float(raw["output"]),
        cached_input=None if raw.get("cached_input") is None else float(raw["cached_input"]),
    )


def parse_catalog(
    document: Any, where: str, base_rules: Mapping[str, ParamRule] | None = None
) -> tuple[dict[str, ModelEntry], dict[str, ParamRule]]:
    """Entries and parameter rules from a catalog document: ``{"models": {...},
    "param_rules": {...}}``. ``base_rules`` (the built-in ones) may be named too."""
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), Mapping):
        raise ValueError(f'{where} must be a JSON object with a "models" object')
    unknown = sorted(set(document) - {"models", "param_rules"})
    if unknown:
        raise ValueError(f'{where} has unknown fields {unknown}; use "models", "param_rules"')
    raw_rules = document.get("param_rules") or {}
    if not isinstance(raw_rules, Mapping):
        raise ValueError(f"{where}.param_rules must be an object of named rules")
    rules = dict(base_rules or {})
    for name, raw in raw_rules.items():
        rules[name] = ParamRule.parse(raw, f"{where}.param_rules[{name!r}]")
    entries = {
        name: _entry(raw, f"{where}.models[{name!r}]", rules)
        for name, raw in document["models"].items()
    }
    return entries, rules


def _load_builtin() -> tuple[dict[str, ModelEntry], dict[str, ParamRule]]:
    text = resources.files(__package__).joinpath("models.json").read_text("utf-8")
    return parse_catalog(json.loads(text), "asgi_autoproxy/_routing/models.json")


_BUILTIN_ENTRIES, _BUILTIN_RULES = _load_builtin()

BUILTIN_CATALOG: Mapping[str, ModelFlavor] = {
    name: entry.flavor for name, entry in _BUILTIN_ENTRIES.items()
}
"""Each built-in name or glob and its flavour, in lookup order (``models.json``)."""

CatalogSource = Mapping[str, Any] | str | os.PathLike[str]
"""``model_catalog=``: a mapping of names to flavours or entries, or a JSON file's path."""


def _user_entries(extra: CatalogSource) -> dict[str, ModelEntry]:
    if isinstance(extra, (str, os.PathLike)):
        path = os.fspath(extra)
        try:
            with open(path, encoding="utf-8") as file:
                document = json.load(file)
        except OSError as error:
            raise ValueError(f"model_catalog file {path!r} cannot be read: {error}") from None
        except ValueError as error:
            raise ValueError(f"model_catalog file {path!r} is not valid JSON: {error}") from None
        return parse_catalog(document, path, _BUILTIN_RULES)[0]
    if not isinstance(extra, Mapping):
        raise TypeError(
            "model_catalog must be a mapping of model names to flavours, or a JSON file's path"
        )
    return {
        name: _entry(raw, f"model_catalog[{name!r}]", _BUILTIN_RULES) for name, raw in extra.items()
    }


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


_Layer = tuple[dict[str, ModelEntry], list[tuple[str, ModelEntry]]]


class ModelCatalog:
    """Looks up what the catalog knows of a model; ``None`` means nothing."""

    def __init__(self, extra: CatalogSource | None = None, *, include_builtin: bool = True) -> None:
        layers: list[Mapping[str, ModelEntry]] = []
        if extra is not None:
            layers.append(_user_entries(extra))
        if include_builtin:
            layers.append(_BUILTIN_ENTRIES)
        # Each layer: exact names first, then globs in order; earlier layers win.
        self._layers: list[_Layer] = []
        for layer in layers:
            exact = {name: e for name, e in layer.items() if not _is_glob(name)}
            globs = [(name, e) for name, e in layer.items() if _is_glob(name)]
            self._layers.append((exact, globs))
        self._memo: dict[str, ModelInfo | None] = {}

    def info(self, model: str) -> ModelInfo | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = self._resolve(model)
        if len(self._memo) < 4096:  # bounded: model names come from callers
            self._memo[model] = found
        return found

    def _matches(self, model: str) -> list[ModelEntry]:
        found: list[ModelEntry] = []
        for exact, globs in self._layers:
            if model in exact:
                found.append(exact[model])
            found.extend(e for pattern, e in globs if fnmatch.fnmatchcase(model, pattern))
        return found

    def _resolve(self, model: str) -> ModelInfo | None:
        matches = self._matches(model)
        if not matches:
            return None

        def first(field: str) -> Any:
            for entry in matches:
                if field in entry.given:
                    return getattr(entry, field)
            return None

        return ModelInfo(matches[0].flavor, first("format"), first("price"), first("params"))

    def flavor(self, model: str) -> ModelFlavor | None:
        found = self.info(model)
        return None if found is None else found.flavor

    def price(self, model: str) -> Price | None:
        """What ``model`` costs, where the catalog knows; None otherwise."""
        found = self.info(model)
        return None if found is None else found.price

    def params(self, model: str) -> ParamRule | None:
        """The parameter rewriting ``model`` needs on chat completions, if any."""
        found = self.info(model)
        return None if found is None else found.params

    def known_models(self) -> list[str]:
        """Exact (non-glob) names of every flavour, user entries first, for ``GET /models``."""
        names: dict[str, None] = {}
        for exact, _ in self._layers:
            for name in exact:
                names.setdefault(name)
        return list(names)
