"""Which API flavour a model speaks: chat, completion, embedding or responses.

``/auto`` needs this to pick between ``chat/completions`` and ``completions``, and to
know the models that only the Responses API serves (their chat requests are translated).
Exact names win over glob patterns, and user entries win over the built-in ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Literal, get_args

from asgi_autoproxy._routing.pricing import Price

ModelFlavor = Literal["chat", "completion", "embedding", "responses"]
FLAVORS: frozenset[str] = frozenset(get_args(ModelFlavor))

BUILTIN_CATALOG: Mapping[str, ModelFlavor] = {
    # Embedding models: never valid for /auto. Listed first because globs are tried in
    # order, and `gemini-*` below would otherwise claim `gemini-embedding-001`.
    "text-embedding-*": "embedding",
    "text-similarity-*": "embedding",
    "embed-*": "embedding",
    "*-embedding-*": "embedding",
    "gemini-embedding-*": "embedding",
    # OpenAI completion models: the only ones the legacy /completions endpoint still serves.
    "gpt-3.5-turbo-instruct": "completion",
    "gpt-3.5-turbo-instruct-*": "completion",
    "davinci-002": "completion",
    "babbage-002": "completion",
    "text-davinci-*": "completion",
    # OpenAI models served only by the Responses API: chat requests for them are
    # translated. Before the chat globs below, which would claim them.
    "o1-pro*": "responses",
    "o3-pro*": "responses",
    "gpt-5-pro*": "responses",
    "gpt-5*-codex*": "responses",
    "gpt-5.[3-9]": "responses",  # gpt-5.3 and newer
    "gpt-5.[3-9][!0-9]*": "responses",
    "gpt-5.[1-9][0-9]*": "responses",  # gpt-5.10 and on
    # OpenAI chat models.
    "gpt-3.5-turbo": "chat",
    "gpt-3.5-turbo-*": "chat",
    "gpt-4": "chat",
    "gpt-4-*": "chat",
    "gpt-4o": "chat",
    "gpt-4o-*": "chat",
    "gpt-4.1": "chat",
    "gpt-4.1-*": "chat",
    "gpt-4.5-*": "chat",
    "gpt-5": "chat",
    "gpt-5-*": "chat",
    "gpt-5.*": "chat",
    "chatgpt-*": "chat",
    "o1": "chat",
    "o1-*": "chat",
    "o3": "chat",
    "o3-*": "chat",
    "o4-mini": "chat",
    "o4-mini-*": "chat",
    # Other vendors' chat models.
    "claude-*": "chat",
    "gemini-*": "chat",
    "mistral-*": "chat",
    "open-mistral-*": "chat",
    "llama-*": "chat",
    "grok-*": "chat",
    "deepseek-chat": "chat",
    "deepseek-reasoner": "chat",
}


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


class ModelCatalog:
    """Looks up a model's flavour; ``None`` means the catalog does not know it."""

    def __init__(
        self,
        extra: Mapping[str, str] | None = None,
        *,
        include_builtin: bool = True,
    ) -> None:
        layers: list[Mapping[str, str]] = []
        if extra:
            for name, flavor in extra.items():
                if flavor not in FLAVORS:
                    raise ValueError(
                        f"model_catalog[{name!r}] is {flavor!r}; use one of {sorted(FLAVORS)}"
                    )
            layers.append(extra)
        if include_builtin:
            layers.append(BUILTIN_CATALOG)
        # Each layer: exact names first, then globs in order; earlier layers win.
        self._layers: list[tuple[dict[str, ModelFlavor], list[tuple[str, ModelFlavor]]]] = []
        for layer in layers:
            exact: dict[str, ModelFlavor] = {}
            globs: list[tuple[str, ModelFlavor]] = []
            for name, flavor in layer.items():
                typed: ModelFlavor = flavor  # type: ignore[assignment]
                if _is_glob(name):
                    globs.append((name, typed))
                else:
                    exact[name] = typed
            self._layers.append((exact, globs))
        self._memo: dict[str, ModelFlavor | None] = {}
        self._prices: dict[str, Price] = {}

    def flavor(self, model: str) -> ModelFlavor | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._memo) < 4096:  # bounded: model names come from callers
            self._memo[model] = found
        return found

    def _lookup(self, model: str) -> ModelFlavor | None:
        for exact, globs in self._layers:
            if model in exact:
                return exact[model]
            for pattern, flavor in globs:
                if fnmatch.fnmatchcase(model, pattern):
                    return flavor
        return None

    def price(self, model: str) -> Price | None:
        """What ``model`` costs, where the catalog knows; None otherwise."""
        return self._prices.get(model)

    def known_models(self) -> list[str]:
        """Exact (non-glob) chat, completion and responses model names, for ``GET /models``."""
        names: dict[str, None] = {}
        for exact, _ in self._layers:
            for name, flavor in exact.items():
                if flavor != "embedding":
                    names.setdefault(name)
        return list(names)
