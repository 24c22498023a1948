"""A provider for Azure OpenAI: per-deployment URLs, ``api-version`` and the ``api-key`` header."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from ..errors import bad_request
from .base import ENDPOINT_PATHS, Endpoint, ModelPatterns, UpstreamRequest, UpstreamResponse

DEFAULT_API_VERSION = "2024-10-21"
# Azure deployment names: letters, digits, '-', '_' and '.'. Checked because the name
# becomes a URL path segment and, by default, comes from the caller's model name.
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AzureOpenAIProvider:
    """Forwards the caller's body, unchanged, to
    ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...``.

    ``deployments`` maps model names to deployment names; a model not in it goes to the
    deployment of the same name. ``models`` defaults to the mapping's keys, or to every
    model when there is no mapping. With ``api_key=None`` the caller's key goes upstream.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        deployments: Mapping[str, str] | None = None,
        models: Sequence[str] | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        endpoints: Sequence[Endpoint] = ("chat", "completion"),
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "endpoint must be the resource's absolute URL, e.g. "
                f"'https://my-resource.openai.azure.com', got {endpoint!r}"
            )
        if not api_version:
            raise ValueError("api_version must be set, e.g. '2024-10-21'")
        self.endpoint = endpoint.rstrip("/")
        self._api_key = api_key or None
        self._api_version = api_version
        self._deployments = dict(deployments or {})
        for model, deployment in self._deployments.items():
            if not _DEPLOYMENT.fullmatch(deployment):
                raise ValueError(f"deployments[{model!r}] = {deployment!r} is not a valid name")
        if models is None:
            models = tuple(self._deployments) or ("*",)
        self._patterns = ModelPatterns(models)
        self._name = name or parts.netloc
        self._endpoints = frozenset(endpoints)
        self._static_headers = {k.lower(): v for k, v in (headers or {}).items()}

    def __repr__(self) -> str:
        key = "server-side" if self._api_key else "pass-through"
        return f"AzureOpenAIProvider(name={self._name!r}, endpoint={self.endpoint!r}, key={key})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def models(self) -> Sequence[str]:
        return self._patterns.patterns

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        return self._endpoints

    @property
    def needs_caller_credential(self) -> bool:
        return self._api_key is None

    def serves(self, model: str) -> bool:
        return self._patterns(model)

    def url(self, model: str, endpoint: Endpoint) -> httpx.URL:
        deployment = self._deployments.get(model, model)
        if not _DEPLOYMENT.fullmatch(deployment):
            raise bad_request(
                f"Model {model!r} cannot name an Azure deployment; configure "
                "AzureOpenAIProvider(deployments={...}) for it.",
                param="model",
            )
        return httpx.URL(
            f"{self.endpoint}/openai/deployments/{deployment}/{ENDPOINT_PATHS[endpoint]}",
            params={"api-version": self._api_version},
        )

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
            "x-request-id": request.request_id,
            **self._static_headers,
        }
        key = self._api_key or request.credential
        if key:
            headers["api-key"] = key
        upstream = client.build_request(
            "POST", self.url(request.model, request.endpoint), content=request.body, headers=headers
        )
        response = await client.send(upstream, stream=True)
        return UpstreamResponse.from_httpx(response)
