"""Where a request goes: which endpoint (chat, completion, or chat through the Responses
API for the models only it serves) and which providers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._routing.catalog import CatalogSource, ModelCatalog
from asgi_autoproxy.errors import bad_request
from asgi_autoproxy.providers import capabilities
from asgi_autoproxy.providers.base import Endpoint, Provider, UpstreamRequest


def unsupported_model(model: str) -> Exception:
    return bad_request(
        f"Unsupported model {model} (must be chat or completion for /auto endpoint)",
        param="model",
        code="model_not_supported",
    )


# Where a request for a model served only elsewhere may go instead.
_OTHER_ENDPOINT = {
    "completion": "chat/completions with `messages`",
    "chat": "completions with a `prompt`",
}


class ModelRouter:
    def __init__(self, providers: Sequence[Provider], catalog: CatalogSource | None = None) -> None:
        if isinstance(providers, (str, bytes)) or not providers:
            raise ValueError("providers must be a non-empty list, e.g. [OpenAIProvider(...)]")
        providers = [capabilities.require_provider(p) for p in providers]
        names = [p.name for p in providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"provider names must be unique; pass name=... to tell {duplicates} apart"
            )
        self.providers: tuple[Provider, ...] = tuple(providers)
        self.catalog = ModelCatalog(catalog)
        # Optional capabilities, read once: the request path looks them up, never probes.
        self._served = tuple((p, capabilities.endpoints(p)) for p in self.providers)
        self._listed = tuple((p, capabilities.listed_models(p)) for p in self.providers)
        self._forwarding = frozenset(
            id(p) for p in self.providers if capabilities.needs_caller_credential(p)
        )

    def auto_endpoint(self, model: str, payload: Mapping[str, Any]) -> Endpoint:
        """The catalog decides; for unknown models the payload's shape does."""
        flavor = self.catalog.flavor(model)
        if flavor == "embedding":
            raise unsupported_model(model)
        if flavor is None:
            if "messages" in payload:
                return "chat"
            if "prompt" in payload:
                return "completion"
            raise unsupported_model(model)
        field = "prompt" if flavor == "completion" else "messages"
        if field not in payload:
            raise bad_request(
                f"{model} is a {flavor} model: send `{field}` in the request body.", param=field
            )
        return "chat_via_responses" if flavor == "responses" else flavor

    def chat_endpoint(self, model: str) -> Endpoint:
        """For ``/chat/completions``: chat, translated to the Responses API for the models
        that only it serves."""
        return "chat_via_responses" if self.catalog.flavor(model) == "responses" else "chat"

    def rewrite(self, request: UpstreamRequest) -> UpstreamRequest:
        """``request`` with the parameters its model refuses on chat completions
        rewritten, as the model's catalog entry says (``_routing/params.py``); the same
        request when there is nothing to do."""
        if request.endpoint != "chat":
            return request
        rule = self.catalog.params(request.model)
        rewritten = None if rule is None else rule.apply(request.payload)
        if rewritten is None:
            return request
        return dataclasses.replace(request, payload=rewritten, body=_json.dumps(rewritten))

    def candidates(self, model: str, endpoint: Endpoint) -> list[Provider]:
        """Providers that serve ``model`` on ``endpoint``, in configured order."""
        found = [p for p, served in self._served if endpoint in served and p.serves(model)]
        if not found and endpoint == "chat_via_responses":
            raise bad_request(
                f"Model {model!r} is served only by the Responses API (catalog flavour "
                "'responses'), and no configured OpenAIProvider or AzureOpenAIProvider that "
                "serves chat serves it. If your upstream answers it as chat, set "
                f"model_catalog={{{model!r}: 'chat'}}.",
                param="model",
                code="endpoint_not_supported",
            )
        if not found:
            elsewhere = sorted({p.name for p in self.providers if p.serves(model)})
            if elsewhere:
                hint = _OTHER_ENDPOINT.get(endpoint)
                raise bad_request(
                    f"Model {model!r} is served by {elsewhere}, which do not support the "
                    f"{endpoint} endpoint" + (f"; send the request to {hint}." if hint else "."),
                    param="model",
                    code="endpoint_not_supported",
                )
            raise bad_request(
                f"No provider is configured for model {model!r} on the {endpoint} endpoint.",
                param="model",
                code="model_not_found",
            )
        return found

    def forwarding_key(self, providers: Sequence[Provider]) -> Provider | None:
        """The first of ``providers`` that sends the caller's own key upstream, if any."""
        for provider in providers:
            if id(provider) in self._forwarding:
                return provider
        return None

    def listed_models(self) -> dict[str, str]:
        """Models to show on ``GET /models`` (name to provider): literal patterns, then
        catalog names that some provider serves."""
        names: dict[str, str] = {}
        for provider, patterns in self._listed:
            for pattern in patterns:
                if not any(ch in pattern for ch in "*?["):
                    names.setdefault(pattern, provider.name)
        for model in self.catalog.known_models():
            for provider in self.providers:
                if provider.serves(model):
                    names.setdefault(model, provider.name)
                    break
        return names
