"""How each API's answers read and how the proxy speaks in them: one ``Dialect`` a route.

A route relays its upstream's answer as it came, so the proxy must know, for the API the
caller speaks: where a whole answer reports token usage; how its stream ends (chat's
``data: [DONE]``, the Responses API's ``response.completed``, Anthropic's
``message_stop``), how it fails, and where it reports usage; and how to write the proxy's
own errors, whole and as a final stream event, so the caller's SDK raises on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._sse import error_event
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.observability import TokenUsage

ReadUsage = Callable[[Mapping[str, Any]], TokenUsage | None]
"""Token usage from a whole answer, or from one stream event's JSON data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    name: str
    end_data: bytes | None = None
    """Data that ends a stream (``[DONE]``), when the API sends one."""
    end_events: frozenset[bytes] = frozenset()
    """Event names that end a stream whole (``response.completed``, ``message_stop``)."""
    failure_events: frozenset[bytes] = frozenset((b"error",))
    """Event names that end a stream as a failure: relayed, never cached."""
    ending: str
    """The end a cut stream lacked, for the error that says so."""
    usage: ReadUsage
    """Usage in a whole answer."""
    stream_usage: ReadUsage
    """Usage in one stream event's data. Merged with the reports before it: a count an
    event leaves out keeps its earlier value (Anthropic reports input and output apart)."""
    error_body: Callable[[ProxyError], bytes]
    """The proxy's own error, as a whole answer's body."""
    error_event: Callable[[ProxyError], bytes]
    """The proxy's own error, as the event that ends a broken stream."""


def _openai_usage(answer: Mapping[str, Any]) -> TokenUsage | None:
    return TokenUsage.parse(answer.get("usage"))


def _openai_event(error: ProxyError) -> bytes:
    return error_event(error.to_dict())


OPENAI = Dialect(
    name="openai",
    end_data=b"[DONE]",
    ending="[DONE]",
    usage=_openai_usage,
    stream_usage=_openai_usage,
    error_body=ProxyError.to_body,
    error_event=_openai_event,
)
"""Chat and completions (streams end with ``[DONE]``), embeddings and moderations."""


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_output(usage: object, *, extra_input: tuple[str, ...] = ()) -> TokenUsage | None:
    """``input_tokens``/``output_tokens`` usage (Responses, Anthropic) as prompt and
    completion tokens; ``extra_input``: more input counts to add (Anthropic's cache)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("input_tokens"))
    for name in extra_input:
        more = _count(usage.get(name))
        if more is not None:
            prompt = more + (prompt or 0)
    completion = _count(usage.get("output_tokens"))
    total = _count(usage.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    if prompt is None and completion is None and total is None:
        return None
    return TokenUsage(prompt, completion, total)


def _responses_usage(answer: Mapping[str, Any]) -> TokenUsage | None:
    return _input_output(answer.get("usage"))


def _responses_stream_usage(event: Mapping[str, Any]) -> TokenUsage | None:
    # The final event (response.completed, .incomplete, .failed) carries the response.
    response = event.get("response")
    return _input_output(response.get("usage")) if isinstance(response, Mapping) else None


def _responses_event(error: ProxyError) -> bytes:
    """The Responses API's ``error`` event, with OpenAI's ``error`` object beside its own
    fields: a typed client reads ``code`` and ``message``, the ``openai`` SDK raises."""
    data = {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": error.param,
        **error.to_dict(),
    }
    return b"event: error\ndata: " + _json.dumps(data) + b"\n\n"


RESPONSES = Dialect(
    name="responses",
    end_events=frozenset((b"response.completed", b"response.incomplete")),
    failure_events=frozenset((b"error", b"response.failed")),
    ending="response.completed",
    usage=_responses_usage,
    stream_usage=_responses_stream_usage,
    error_body=ProxyError.to_body,
    error_event=_responses_event,
)
"""OpenAI's Responses API: named events, no ``[DONE]``."""

_ANTHROPIC_CACHE = ("cache_read_input_tokens", "cache_creation_input_tokens")


def _anthropic_usage(answer: Mapping[str, Any]) -> TokenUsage | None:
    return _input_output(answer.get("usage"), extra_input=_ANTHROPIC_CACHE)


def _anthropic_stream_usage(event: Mapping[str, Any]) -> TokenUsage | None:
    # message_start carries the input (and a first output count); message_delta the
    # output so far, and, in newer API versions, the input again.
    message = event.get("message")
    usage = message.get("usage") if isinstance(message, Mapping) else event.get("usage")
    return _input_output(usage, extra_input=_ANTHROPIC_CACHE)


# The error types Anthropic's API and SDK know, by status; other statuses by class.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(error: ProxyError) -> dict[str, Any]:
    """Anthropic's error envelope, keeping OpenAI's ``param`` and ``code`` inside: the
    ``anthropic`` SDK reads ``error.type`` and ``error.message``, and nothing is lost."""
    kind = _ANTHROPIC_TYPES.get(error.status)
    if kind is None:
        kind = "invalid_request_error" if error.status < 500 else "api_error"
    inner = {"type": kind, "message": error.message, "param": error.param, "code": error.code}
    return {"type": "error", "error": inner}


def _anthropic_body(error: ProxyError) -> bytes:
    return _json.dumps(anthropic_error(error))


def _anthropic_event(error: ProxyError) -> bytes:
    """Anthropic's ``error`` event: the ``anthropic`` SDK ignores events without a name."""
    return b"event: error\ndata: " + _anthropic_body(error) + b"\n\n"


ANTHROPIC = Dialect(
    name="anthropic",
    end_events=frozenset((b"message_stop",)),
    ending="message_stop",
    usage=_anthropic_usage,
    stream_usage=_anthropic_stream_usage,
    error_body=_anthropic_body,
    error_event=_anthropic_event,
)
"""Anthropic's Messages API: named events ending with ``message_stop``."""
