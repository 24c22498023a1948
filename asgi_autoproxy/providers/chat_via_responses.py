"""Chat requests for the models only the Responses API serves, as OpenAI-compatible
providers (``OpenAIProvider``, ``AzureOpenAIProvider``) send them.

The router picks the ``chat_via_responses`` endpoint for such a model; the provider then
posts the translated request to its ``/responses`` URL through ``send`` here, and gets
back a chat answer: a ``chat.completion``, or ``chat.completion.chunk`` events ending in
``[DONE]``. Everything else about the call (URL, key header, failover) is the provider's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from asgi_autoproxy import _json
from asgi_autoproxy.errors import error_dict
from asgi_autoproxy.providers._translated_stream import (
    completion_as_stream,
    translated_stream,
)
from asgi_autoproxy.providers.base import Endpoint, UpstreamRequest, UpstreamResponse
from asgi_autoproxy.providers.responses_request import to_responses_request
from asgi_autoproxy.providers.responses_response import (
    StreamTranslator,
    chat_completion,
    failure,
)

_JSON = ("content-type", "application/json")


def with_responses(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """``endpoints``, plus ``chat_via_responses`` where chat is served: a provider that
    serves chat serves the Responses-only models' chat requests too."""
    served = tuple(endpoints)
    if "chat" in served and "chat_via_responses" not in served:
        served += ("chat_via_responses",)
    return served


async def send(
    post: Callable[[bytes], Awaitable[UpstreamResponse]],
    request: UpstreamRequest,
    *,
    model: str,
) -> UpstreamResponse:
    """Translate ``request``, ``post`` it to ``/responses`` and translate the answer back.

    ``model`` is the name the upstream knows (an Azure deployment's). Errors are
    OpenAI-shaped already on both APIs: they go back as they came.
    """
    translated = to_responses_request(request.payload, model=model)
    answer = await post(_json.dumps(translated.body))
    if not 200 <= answer.status < 300:
        return answer
    passed = [(k, v) for k, v in answer.headers if k != "content-type"]
    created = int(time.time())
    if request.stream and answer.is_event_stream:
        translator = StreamTranslator(
            model=request.model, created=created, include_usage=translated.include_usage
        )
        return translated_stream(answer, translator, request.max_event_size)
    try:
        raw = await answer.read(request.max_response_size)
    finally:
        await answer.aclose()
    called = answer.called
    try:
        response = _json.loads(raw)
    except _json.JSONDecodeError:
        response = None
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        error = error_dict(
            "The Responses API answered with a body that is not a response object.",
            type="upstream_error",
            code="upstream_invalid_response",
        )
        return UpstreamResponse.from_bytes(502, _json.dumps(error), [*passed, _JSON], called=called)
    failed = failure(response)
    if failed is not None:
        return UpstreamResponse.from_bytes(
            502, _json.dumps(failed), [*passed, _JSON], called=called
        )
    body = chat_completion(response, model=request.model)
    if request.stream:
        # Asked for a stream, got a whole response: answer as a one-chunk stream.
        return completion_as_stream(body, passed, called=called)
    return UpstreamResponse.from_bytes(200, body, [*passed, _JSON], called=called)
