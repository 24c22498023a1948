"""A provider for Anthropic's Messages API, behind an OpenAI chat interface."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import httpx

from asgi_autoproxy import _json
from asgi_autoproxy._http.client_types import UpstreamClient
from asgi_autoproxy.providers._translated_stream import (
    completion_as_stream,
    translated_stream,
)
from asgi_autoproxy.providers.anthropic_request import DEFAULT_MAX_TOKENS, to_messages_request
from asgi_autoproxy.providers.anthropic_response import (
    StreamTranslator,
    chat_completion,
    openai_error,
    translated_error,
)
from asgi_autoproxy.providers.base import HTTPProvider, UpstreamRequest, UpstreamResponse

ANTHROPIC_VERSION = "2023-06-01"
"""Pinned: newer API versions drop ``temperature`` and ``top_p``, which callers send."""

_JSON = ("content-type", "application/json")


class AnthropicProvider(HTTPProvider):
    """Serves OpenAI chat requests from ``{base_url}/v1/messages``, translating both ways,
    and Anthropic Messages requests (the native ``messages`` endpoint) as they are.

    A completion-flavour request routed here gets a 400. With ``api_key=None`` the
    caller's own key goes upstream as ``x-api-key``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "https://api.anthropic.com",
        models: Sequence[str] = ("claude-*",),
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        anthropic_version: str = ANTHROPIC_VERSION,
    ) -> None:
        super().__init__(
            url=base_url,
            api_key=api_key,
            models=models,
            name=name,
            headers=headers,
            endpoints=("chat", "messages"),
        )
        if default_max_tokens < 1:
            raise ValueError("default_max_tokens must be a positive number of tokens")
        self.base_url = base_url.rstrip("/")
        self._url = str(httpx.URL(f"{self.base_url}/v1/messages"))
        self._default_max_tokens = default_max_tokens
        self._version = anthropic_version

    async def send(self, request: UpstreamRequest, client: UpstreamClient) -> UpstreamResponse:
        if request.endpoint == "messages":
            return await self._send_native(request, client)
        translated = to_messages_request(
            request.payload, default_max_tokens=self._default_max_tokens
        )
        headers = self.base_headers(request)
        headers["anthropic-version"] = self._version
        key = self.key_for(request.credential)
        if key:
            headers["x-api-key"] = key
        answer = await self.post(client, self._url, headers, _json.dumps(translated.body))
        passed = [(k, v) for k, v in answer.headers if k != "content-type"]
        created = int(time.time())
        if answer.status == 200 and request.stream and answer.is_event_stream:
            translator = StreamTranslator(
                model=request.model, json_tool=translated.json_tool, created=created
            )
            return translated_stream(answer, translator, request.max_event_size)
        try:
            raw = await answer.read(request.max_response_size)
        finally:
            await answer.aclose()
        called = answer.called
        if answer.status != 200:
            error = translated_error(raw)
            if error is None and answer.status >= 400:
                # Not Anthropic's error (a wrong path's 404 page, a gateway's): passed on
                # as it came, for the middleware to word, naming what was called.
                return UpstreamResponse.from_bytes(answer.status, raw, passed, called=called)
            error = error or openai_error(answer.status, raw)
            return UpstreamResponse.from_bytes(
                answer.status, _json.dumps(error), [*passed, _JSON], called=called
            )
        try:
            message = _json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not a message object")
            body = chat_completion(message, json_tool=translated.json_tool, created=created)
        except (*_json.JSONDecodeError, AttributeError, TypeError):
            error = openai_error(502, b"")
            error["error"]["message"] = "Anthropic answered with a body that is not a message."
            return UpstreamResponse.from_bytes(
                502, _json.dumps(error), [*passed, _JSON], called=called
            )
        if request.stream:
            # Asked for a stream, got a whole message: answer as a one-chunk stream.
            return completion_as_stream(body, passed, called=called)
        return UpstreamResponse.from_bytes(200, body, [*passed, _JSON], called=called)

    async def _send_native(
        self, request: UpstreamRequest, client: UpstreamClient
    ) -> UpstreamResponse:
        """The caller's Messages body, byte for byte, and Anthropic's answer as it comes;
        the caller's ``anthropic-version`` and ``anthropic-beta`` go along."""
        headers = self.base_headers(request)
        headers["anthropic-version"] = self._version
        headers.update(request.headers)
        key = self.key_for(request.credential)
        if key:
            headers["x-api-key"] = key
        return await self.post(client, self._url, headers, request.body)
