"""What the proxy checks in an upstream's answer before relaying or caching it.

A 2xx JSON answer must be a JSON object, and each SSE event must carry JSON (or
``[DONE]``): anything else is an upstream fault, answered as one and never cached.
A 2xx object that is not an answer for its endpoint (upstreams do send 200 with an
error object) is relayed as it is, but never cached. Token usage is read on the way,
for the observability record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._sse import event_data, event_name
from asgi_autoproxy.errors import upstream_invalid_response
from asgi_autoproxy.observability import TokenUsage

# What a 2xx answer must hold to be cached, by endpoint: a field and its type. A new
# route adds its row (embeddings, say: ("data", list)); an endpoint without one is never
# cached.
ANSWER_FIELDS: Mapping[str, tuple[str, type]] = {
    "chat": ("choices", list),
    "completion": ("choices", list),
    "chat_via_responses": ("choices", list),  # translated to chat by the provider
}


def json_answer(provider: str, body: bytes) -> dict[str, Any]:
    """A 2xx JSON answer, parsed; raises a 502 when the body is not a JSON object."""
    try:
        payload = _json.loads(body)
    except _json.JSONDecodeError:
        raise upstream_invalid_response(provider, "a 2xx body that is not valid JSON") from None
    if not isinstance(payload, dict):
        raise upstream_invalid_response(provider, "a 2xx body that is not a JSON object")
    return payload


def is_answer(endpoint: str, answer: Mapping[str, Any]) -> bool:
    """Whether a 2xx JSON object answers ``endpoint``: fit to cache, unlike an error."""
    rule = ANSWER_FIELDS.get(endpoint)
    if rule is None or answer.get("error") is not None:
        return False
    name, kind = rule
    return isinstance(answer.get(name), kind)


class StreamAudit:
    """Follows one upstream SSE stream, event by event.

    ``accept`` returns the events fit to relay and stops at the first malformed one;
    afterwards ``finished`` (``[DONE]`` or an error event arrived), ``failed`` (an
    error event arrived), ``malformed`` and ``usage`` tell how the stream went.
    """

    __slots__ = ("failed", "finished", "malformed", "usage")

    def __init__(self) -> None:
        self.finished = False
        self.failed = False
        self.malformed = False
        self.usage: TokenUsage | None = None

    def accept(self, events: list[bytes]) -> list[bytes]:
        for index, event in enumerate(events):
            # Fast path, nearly every event: one ``data: {...}`` line.
            if event.startswith(b"data: {") and event.find(b"\n") == len(event) - 2:
                try:
                    payload = _json.loads(event[6:-2])  # a dict: the data starts with "{"
                except _json.JSONDecodeError:
                    self.malformed = True
                    return events[:index]
                if "usage" in payload or "error" in payload:
                    self._note(payload)
            elif not self._check(event):
                self.malformed = True
                return events[:index]
        return events

    def _check(self, event: bytes) -> bool:
        data = event_data(event)
        if not data:
            return True  # a comment or keep-alive: no data to check
        if event_name(event) == b"error":
            self.finished = self.failed = True
            return True
        if data.strip() == b"[DONE]":
            self.finished = True
            return True
        try:
            payload: Any = _json.loads(data)
        except _json.JSONDecodeError:
            return False
        if not isinstance(payload, dict):
            return False
        self._note(payload)
        return True

    def _note(self, payload: dict[str, Any]) -> None:
        if payload.get("error") is not None:
            self.finished = self.failed = True
        elif "usage" in payload:
            usage = TokenUsage.parse(payload["usage"])
            if usage is not None:
                self.usage = usage
