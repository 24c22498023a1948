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
    error event arrived), ``malformed``, ``usage``, ``model`` and ``finish_reason`` tell
    how the stream went. With ``strip_usage`` the usage-only chunk (``choices: []``) that
    ``stream_options.include_usage`` adds is read and left out: the proxy asked for it,
    not the caller.
    """

    __slots__ = (
        "failed",
        "finish_reason",
        "finished",
        "malformed",
        "model",
        "strip_usage",
        "usage",
    )

    def __init__(self, *, strip_usage: bool = False) -> None:
        self.finished = False
        self.failed = False
        self.malformed = False
        self.usage: TokenUsage | None = None
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.strip_usage = strip_usage

    def accept(self, events: list[bytes]) -> list[bytes]:
        kept: list[bytes] | None = None  # a copy, made only once an event is left out
        for index, event in enumerate(events):
            # Fast path, nearly every event: one ``data: {...}`` line.
            if event.startswith(b"data: {") and event.find(b"\n") == len(event) - 2:
                try:
                    payload = _json.loads(event[6:-2])  # a dict: the data starts with "{"
                except _json.JSONDecodeError:
                    self.malformed = True
                    return events[:index] if kept is None else kept
                drop = self._look(payload)
            else:
                verdict = self._check(event)
                if verdict is None:
                    self.malformed = True
                    return events[:index] if kept is None else kept
                drop = verdict
            if drop:
                if kept is None:
                    kept = events[:index]
            elif kept is not None:
                kept.append(event)
        return events if kept is None else kept

    def _look(self, payload: dict[str, Any]) -> bool:
        """Notes what a chunk says; True for a usage-only chunk to leave out."""
        if self.model is None:
            model = payload.get("model")
            if isinstance(model, str):
                self.model = model
        choices = payload.get("choices")
        if choices and isinstance(choices, list):
            first = choices[0]
            if isinstance(first, dict):
                reason = first.get("finish_reason")
                if isinstance(reason, str):
                    self.finish_reason = reason
        if "usage" in payload or "error" in payload:
            self._note(payload)
            return self.strip_usage and choices == [] and isinstance(payload.get("usage"), dict)
        return False

    def _check(self, event: bytes) -> bool | None:
        """None for a malformed event; else whether to leave it out."""
        data = event_data(event)
        if not data:
            return False  # a comment or keep-alive: no data to check
        if event_name(event) == b"error":
            self.finished = self.failed = True
            return False
        if data.strip() == b"[DONE]":
            self.finished = True
            return False
        try:
            payload: Any = _json.loads(data)
        except _json.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        return self._look(payload)

    def _note(self, payload: dict[str, Any]) -> None:
        if payload.get("error") is not None:
            self.finished = self.failed = True
        elif "usage" in payload:
            usage = TokenUsage.parse(payload["usage"])
            if usage is not None:
                self.usage = usage
