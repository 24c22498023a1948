"""What translating providers share: reading another API's SSE events into OpenAI chat
chunks, and answering a stream request whose upstream sent one whole answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from asgi_autoproxy import _json
from asgi_autoproxy._sse import DONE_EVENT, EventSplitter, event_data, event_name
from asgi_autoproxy.errors import ResponseTooLarge
from asgi_autoproxy.providers.base import UpstreamResponse

EVENT_STREAM = ("content-type", "text/event-stream")


class EventTranslator(Protocol):
    """Turns one upstream event (its JSON, with ``type`` set) into chunk SSE bytes."""

    @property
    def finished(self) -> bool:
        """True once the last chunk (or an error event) has been returned."""
        ...

    def feed(self, event: dict[str, Any]) -> bytes: ...


async def translated_events(
    chunks: AsyncIterator[bytes], translator: EventTranslator, max_event_size: int | None
) -> AsyncIterator[bytes]:
    """The upstream's events, translated; events that are not JSON objects are skipped.

    It stops at the translator's last event. A stream that ends before then simply ends:
    the relay sees no ``[DONE]`` and answers with its own error event.
    """
    splitter = EventSplitter(max_event_size)
    async for chunk in chunks:
        out: list[bytes] = []
        too_large: ResponseTooLarge | None = None
        try:
            found = splitter.feed(chunk)
        except ResponseTooLarge as exceeded:  # translate the events before it first
            found, too_large = exceeded.events, exceeded
        for event in found:
            data = event_data(event)
            if not data:
                continue
            try:
                parsed = _json.loads(data)
            except _json.JSONDecodeError:
                continue
            if not isinstance(parsed, dict):
                continue
            name = event_name(event)
            if name is not None and "type" not in parsed:
                parsed["type"] = name.decode("latin-1")
            out.append(translator.feed(parsed))
            if translator.finished:
                break
        if out:
            yield b"".join(out)
        if translator.finished:
            return
        if too_large is not None:
            raise too_large


def completion_as_stream(
    completion: bytes, headers: list[tuple[str, str]], *, called: str = ""
) -> UpstreamResponse:
    """A whole ``chat.completion`` as the stream the caller asked for: one chunk, then
    ``[DONE]``."""
    whole = _json.loads(completion)
    choice = whole["choices"][0]
    for position, call in enumerate(choice["message"].get("tool_calls", [])):
        call["index"] = position  # chunks' tool calls carry an index
    chunk = {
        **{k: whole[k] for k in ("id", "created", "model", "usage") if k in whole},
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": choice["message"],
                "finish_reason": choice["finish_reason"],
                "logprobs": None,
            }
        ],
    }
    body = b"data: " + _json.dumps(chunk) + b"\n\n" + DONE_EVENT
    return UpstreamResponse.from_bytes(200, body, [*headers, EVENT_STREAM], called=called)


def translated_stream(
    answer: UpstreamResponse, translator: EventTranslator, max_event_size: int | None
) -> UpstreamResponse:
    """An upstream stream as the chat chunks ``translator`` makes of its events."""
    passed = [(k, v) for k, v in answer.headers if k != "content-type"]
    return UpstreamResponse(
        status=200,
        headers=[*passed, EVENT_STREAM],
        chunks=translated_events(answer.chunks, translator, max_event_size),
        aclose=answer.aclose,
        called=answer.called,
    )
