"""A provider for any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, Groq..."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from asgi_autoproxy.providers import chat_via_responses
from asgi_autoproxy.providers.base import (
    ENDPOINT_PATHS,
    OPENAI_ENDPOINTS,
    Endpoint,
    HTTPProvider,
    UpstreamRequest,
    UpstreamResponse,
)


class OpenAIProvider(HTTPProvider):
    """Forwards the caller's JSON body, unchanged, to ``{base_url}/chat/completions``,
    ``/completions``, ``/embeddings``, ``/moderations`` or ``/responses``; ``endpoints``
    narrows that for a server that lacks some (most local servers have no moderations).
    Chat requests for a model the catalog marks ``responses`` go to
    ``{base_url}/responses``, translated both ways.

    With ``api_key=None`` the caller's own bearer key goes upstream (pass-through);
    otherwise the server-side key does and the caller's never leaves the proxy.
    """

    def __init__(
        self,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        models: Sequence[str] = ("*",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        endpoints: Sequence[Endpoint] = OPENAI_ENDPOINTS,
    ) -> None:
        super().__init__(
            url=base_url,
            api_key=api_key,
            models=models,
            name=name,
            headers=headers,
            endpoints=chat_via_responses.with_responses(endpoints),
        )
        unknown = sorted(set(endpoints) - set(ENDPOINT_PATHS))
        if unknown:
            raise ValueError(
                f"endpoints {unknown} are not OpenAI's; use some of {OPENAI_ENDPOINTS}"
            )
        self.base_url = base_url.rstrip("/")
        # Percent-encoded once, as httpx would on every request.
        self._urls = {
            ep: str(httpx.URL(f"{self.base_url}/{path}")) for ep, path in ENDPOINT_PATHS.items()
        }

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        headers = self.base_headers(request)
        key = self.key_for(request.credential)
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = self._urls[request.endpoint]
        if request.endpoint == "chat_via_responses":

            async def post(body: bytes) -> UpstreamResponse:
                return await self.post(client, url, headers, body)

            return await chat_via_responses.send(post, request, model=request.model)
        return await self.post(client, url, headers, request.body)
