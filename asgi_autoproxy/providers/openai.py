"""A provider for any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, Groq..."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from .base import ENDPOINT_PATHS, Endpoint, ModelPatterns, UpstreamRequest, UpstreamResponse


class OpenAIProvider:
    """Forwards the caller's JSON body, unchanged, to ``{base_url}/chat/completions`` or
    ``{base_url}/completions``.

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
        endpoints: Sequence[Endpoint] = ("chat", "completion"),
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._patterns = ModelPatterns(models)
        # Host and port only: credentials in the URL must never become a visible name.
        userinfo, at, host = parts.netloc.rpartition("@")
        self._userinfo = userinfo + at
        self._name = name or host
        self._endpoints = frozenset(endpoints)
        self._urls = {
            ep: httpx.URL(f"{self.base_url}/{path}") for ep, path in ENDPOINT_PATHS.items()
        }
        self._static_headers = {k.lower(): v for k, v in (headers or {}).items()}

    def __repr__(self) -> str:
        # The key stays out of reprs, and so out of logs and tracebacks.
        key = "server-side" if self._api_key else "pass-through"
        shown = self.base_url.replace(self._userinfo, "") if self._userinfo else self.base_url
        return f"OpenAIProvider(name={self._name!r}, base_url={shown!r}, key={key})"

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

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never reach a caller; the middleware scrubs it from bodies."""
        return (self._api_key,) if self._api_key else ()

    def serves(self, model: str) -> bool:
        return self._patterns(model)

    def auth_headers(self, credential: str | None) -> dict[str, str]:
        key = self._api_key or credential
        return {"authorization": f"Bearer {key}"} if key else {}

    async def send(self, request: UpstreamRequest, client: httpx.AsyncClient) -> UpstreamResponse:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
            "x-request-id": request.request_id,
            **self._static_headers,
            **self.auth_headers(request.credential),
        }
        upstream = client.build_request(
            "POST", self._urls[request.endpoint], content=request.body, headers=headers
        )
        response = await client.send(upstream, stream=True)
        return UpstreamResponse.from_httpx(response)
