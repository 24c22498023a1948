"""What spans and metrics call things: operation names, provider names, label values.

Shared by the OpenTelemetry and Prometheus sides, so that a request is labelled the
same in both, and kept free of either library so that importing it costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from asgi_autoproxy.observability import RequestRecord
from asgi_autoproxy.providers import AnthropicProvider, AzureOpenAIProvider, OpenAIProvider
from asgi_autoproxy.providers.base import Provider

# GenAI semantic conventions: gen_ai.operation.name by upstream endpoint (or route, for
# a request refused before its endpoint was known).
OPERATIONS = {
    "chat": "chat",
    "chat_via_responses": "chat",
    "completion": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
    "anthropic": "chat",
}
# gen_ai.provider.name for the built-in kinds; any other provider is named as configured.
_SYSTEMS: tuple[tuple[type, str], ...] = (
    (AzureOpenAIProvider, "azure.ai.openai"),
    (AnthropicProvider, "anthropic"),
    (OpenAIProvider, "openai"),
)
SKIPPED = "SKIPPED"
"""The cache status of a request the cache rules did not apply to."""
OTHER_MODEL = "other"
MAX_MODELS = 200
"""Distinct model label values kept before the rest become ``other``: model names come
from callers, and a label per name would let them grow the metrics without bound."""


def provider_systems(providers: Sequence[Provider]) -> dict[str, str]:
    """Provider name -> ``gen_ai.provider.name``."""
    systems: dict[str, str] = {}
    for provider in providers:
        systems[provider.name] = next(
            (system for kind, system in _SYSTEMS if isinstance(provider, kind)), provider.name
        )
    return systems


def operation(record: RequestRecord) -> str | None:
    return OPERATIONS.get(record.endpoint or record.route)


def cache_status(record: RequestRecord) -> str:
    return record.cache or SKIPPED


class ModelLabels:
    """Bounds the model names used as label values (see ``MAX_MODELS``)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, model: str | None) -> str:
        if model is None:
            return "none"
        if model in self._seen:
            return model
        if len(self._seen) >= MAX_MODELS:
            return OTHER_MODEL
        self._seen.add(model)
        return model
