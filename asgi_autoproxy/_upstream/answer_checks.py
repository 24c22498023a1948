"""What the proxy checks in an upstream's answer before relaying or caching it.

A 2xx JSON answer must be a JSON object, and each SSE event must carry JSON (or
``[DONE]``): anything else is an upstream fault, answered as one and never cached. How a
stream ends, fails and reports usage depends on its API: the route's ``Dialect``.
A 2xx object that is not an answer for its endpoint (upstreams do send 200 with an
error object) is relayed as it is, but never cached. Token usage is read on the way,
for the observability record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._sse import event_data, event_name
from asgi_autoproxy._upstream.dialects import OPENAI, Dialect
from asgi_autoproxy.errors import upstream_invalid_response
from asgi_autoproxy.observability import TokenUsage

DONE = b"[DONE]"

# What a 2xx answer must hold to be cached, by endpoint: a field and its type. A new
# endpoint adds its row; an endpoint without one is never cached.
ANSWER_FIELDS: Mapping[str, tuple[str, type]] = {
    "chat": ("choices", list),
    "completion": ("choices", list),
    "chat_via_responses": ("choices", list),  # translated to chat by the provider
    "embeddings": ("data", list),
    "moderations": ("results", list),
    "responses": ("output", list),
    "messages": ("content", list),
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
    """Follows one upstream SSE stream, event by event, in its API's ``dialect``.

    ``accept`` returns the events fit to relay and stops at the first malformed one;
    afterwards ``finished`` (the stream's end or an error event arrived), ``failed`` (an
    error event arrived), ``malformed``, ``usage``, ``model`` and ``finish_reason`` tell
    how the stream went. With ``strip_usage`` the usage-only chunk (``choices: []``) that
    ``stream_options.include_usage`` adds is read and left out: the proxy asked for it,
    not the caller.
    """

    __slots__ = (
        "dialect",
        "failed",
        "finish_reason",
        "finished",
        "malformed",
        "model",
        "strip_usage",
        "usage",
    )

    def __init__(self, dialect: Dialect = OPENAI, *, strip_usage: bool = False) -> None:
        self.dialect = dialect
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

    def _look(self, payload: dict[str, Any], *, named: bool = False) -> bool:
        """Notes what a chunk says; True for a usage-only chunk to leave out. A ``named``
        event (the slow path: Anthropic's, the Responses API's) is read for usage
        wherever its dialect keeps it."""
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
        if named or "usage" in payload or "error" in payload:
            self._note(payload)
            return self.strip_usage and choices == [] and isinstance(payload.get("usage"), dict)
        return False

    def _check(self, event: bytes) -> bool | None:
        """None for a malformed event; else whether to leave it out."""
        data = event_data(event)
        if not data:
            return False  # a comment or keep-alive: no data to check
        dialect = self.dialect
        name = event_name(event)
        if name in dialect.failure_events:
            self.finished = self.failed = True
            return False
        stripped = data.strip()
        if dialect.end_data is not None and stripped == dialect.end_data:
            self.finished = True
            return False
        if stripped == DONE:  # some servers end other APIs' streams with chat's marker too
            return False
        try:
            payload: Any = _json.loads(data)
        except _json.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        drop = self._look(payload, named=True)
        if name in dialect.end_events:
            self.finished = True
        return drop

    def _note(self, payload: dict[str, Any]) -> None:
        if payload.get("error") is not None:
            self.finished = self.failed = True
            return
        usage = self.dialect.stream_usage(payload)
        if usage is not None:
            self.usage = _merged(self.usage, usage)


def _merged(before: TokenUsage | None, now: TokenUsage) -> TokenUsage:
    """``now``'s counts, with those it leaves out kept from ``before``."""
    if before is None:
        return now
    prompt = before.prompt_tokens if now.prompt_tokens is None else now.prompt_tokens
    completion = (
        before.completion_tokens if now.completion_tokens is None else now.completion_tokens
    )
    total = now.total_tokens
    if prompt is not None and completion is not None and now.prompt_tokens is None:
        total = prompt + completion  # the parts came apart: their sum, not a stale total
    elif total is None:
        total = before.total_tokens
    cached = now.cached_prompt_tokens
    reasoning = now.reasoning_tokens
    return TokenUsage(
        prompt,
        completion,
        total,
        before.cached_prompt_tokens if cached is None else cached,
        before.reasoning_tokens if reasoning is None else reasoning,
    )
