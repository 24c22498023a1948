"""A provider for Azure OpenAI: per-deployment URLs, ``api-version`` and the ``api-key`` header."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import httpx

from asgi_autoproxy import _json
from asgi_autoproxy.errors import bad_request
from asgi_autoproxy.providers import chat_via_responses
from asgi_autoproxy.providers.base import (
    ENDPOINT_PATHS,
    Endpoint,
    HTTPProvider,
    UpstreamRequest,
    UpstreamResponse,
)

DEFAULT_API_VERSION = "2024-10-21"
# Azure deployment names: letters, digits, '-', '_' and '.'. Checked because the name
# becomes a URL path segment and, by default, comes from the caller's model name.
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


AZURE_ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completion", "embeddings", "responses")
"""What Azure OpenAI serves: no moderations (its content filter runs on every call)."""


class AzureOpenAIProvider(HTTPProvider):
    """Forwards the caller's body, unchanged, to
    ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`` (or
    ``/completions``, ``/embeddings``). Responses go to Azure's v1 API,
    ``{endpoint}/openai/v1/responses``, which names the deployment in the body's
    ``model``: a mapped model's name is replaced there by its deployment's.

    ``deployments`` maps model names to deployment names; a model not in it goes to the
    deployment of the same name. ``models`` defaults to the mapping's keys, or to every
    model when there is no mapping. With ``api_key=None`` the caller's key goes upstream.

    Chat requests for a model the catalog marks ``responses`` go, translated, to the
    resource's v1 Responses API, ``{endpoint}/openai/v1/responses``, which takes the
    deployment name as the body's ``model`` and no ``api-version``.
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
        endpoints: Sequence[Endpoint] = AZURE_ENDPOINTS,
    ) -> None:
        super().__init__(
            url=endpoint,
            api_key=api_key,
            models=tuple(deployments or {}) or ("*",) if models is None else models,
            name=name,
            headers=headers,
            endpoints=chat_via_responses.with_responses(endpoints),
            url_hint="the resource's absolute URL, e.g. 'https://my-resource.openai.azure.com'",
        )
        if not api_version:
            raise ValueError("api_version must be set, e.g. '2024-10-21'")
        self.endpoint = endpoint.rstrip("/")
        self._api_version = api_version
        self._deployments = dict(deployments or {})
        for model, deployment in self._deployments.items():
            if not _DEPLOYMENT.fullmatch(deployment):
                raise ValueError(f"deployments[{model!r}] = {deployment!r} is not a valid name")

    _url_keyword = "endpoint"

    def _deployment(self, model: str) -> str:
        deployment = self._deployments.get(model, model)
        if not _DEPLOYMENT.fullmatch(deployment):
            raise bad_request(
                f"Model {model!r} cannot name an Azure deployment; configure "
                "AzureOpenAIProvider(deployments={...}) for it.",
                param="model",
            )
        return deployment

    def url(self, model: str, endpoint: Endpoint) -> httpx.URL:
        deployment = self._deployment(model)
        if endpoint in ("responses", "chat_via_responses"):
            return httpx.URL(f"{self.endpoint}/openai/v1/responses")
        if endpoint not in ENDPOINT_PATHS:
            raise bad_request(f"Azure OpenAI does not serve the {endpoint} endpoint.")
        return httpx.URL(
            f"{self.endpoint}/openai/deployments/{deployment}/{ENDPOINT_PATHS[endpoint]}",
            params={"api-version": self._api_version},
        )

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        headers = self.base_headers(request)
        key = self.key_for(request.credential)
        if key:
            headers["api-key"] = key
        url = self.url(request.model, request.endpoint)
        if request.endpoint == "chat_via_responses":

            async def post(body: bytes) -> UpstreamResponse:
                return await self.post(client, url, headers, body)

            model = self._deployment(request.model)
            return await chat_via_responses.send(post, request, model=model)
        body = request.body
        if request.endpoint == "responses":
            deployment = self._deployment(request.model)
            if deployment != request.model:  # the v1 API reads the deployment from the body
                body = _json.dumps({**request.payload, "model": deployment})
        return await self.post(client, url, headers, body)
