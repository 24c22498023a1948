"""OpenAI Responses answers -> OpenAI chat answers: whole responses, stream events, failures.

A response's ``output`` is a list of items: ``message`` items carry ``output_text`` (and
``refusal``) parts, ``function_call`` items are tool calls, and ``reasoning`` items have no
chat counterpart (their token count survives in the usage). A stream is named events,
with no ``[DONE]``: ``response.completed`` (or ``response.incomplete``) ends it well,
``response.failed`` and ``error`` end it badly, and a stream that stops before either is
broken.
"""

from __future__ import annotations

from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._sse import DONE_EVENT, error_event
from asgi_autoproxy.errors import error_dict


def usage(responses_usage: Any) -> dict[str, Any] | None:
    """Chat usage for a Responses ``usage``; reasoning, cached and cache-write tokens
    carried over."""
    if not isinstance(responses_usage, dict):
        return None
    prompt = _count(responses_usage.get("input_tokens"))
    completion = _count(responses_usage.get("output_tokens"))
    total = _count(responses_usage.get("total_tokens")) or prompt + completion
    input_details = responses_usage.get("input_tokens_details") or {}
    prompt_details = {"cached_tokens": _count(input_details.get("cached_tokens"))}
    if "cache_write_tokens" in input_details:
        prompt_details["cache_write_tokens"] = _count(input_details["cache_write_tokens"])
    reasoning = _count((responses_usage.get("output_tokens_details") or {}).get("reasoning_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason(response: dict[str, Any], *, made_tool_calls: bool) -> str:
    if made_tool_calls:
        return "tool_calls"
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "stop"


def failure(response: dict[str, Any]) -> dict[str, Any] | None:
    """An OpenAI error body for a response that did not finish (``failed``, or still
    running); None for a completed or incomplete one."""
    status = response.get("status")
    if status in ("completed", "incomplete", None):
        return None
    error = response.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return error_dict(
            error["message"], type="upstream_error", code=code if isinstance(code, str) else None
        )
    return error_dict(
        f"The Responses API answered with a response whose status is {status!r}.",
        type="upstream_error",
        code="upstream_response_not_completed",
    )


def chat_completion(response: dict[str, Any], *, model: str) -> bytes:
    """A ``chat.completion`` body for a whole (completed or incomplete) response."""
    texts: list[str] = []
    refusals: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for item in _items(response.get("output")):
        kind = item.get("type")
        if kind == "message":
            for part in _items(item.get("content")):
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
        elif kind == "function_call":
            tool_calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {
                        "name": item.get("name"),
                        "arguments": item.get("arguments") or "",
                    },
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) or None,
        "refusal": "".join(refusals) or None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    completion: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": _created(response),
        "model": response.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(response, made_tool_calls=bool(tool_calls)),
                "logprobs": None,
            }
        ],
    }
    translated_usage = usage(response.get("usage"))
    if translated_usage is not None:
        completion["usage"] = translated_usage
    return _json.dumps(completion)


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _created(response: dict[str, Any]) -> int:
    created = response.get("created_at")
    return int(created) if isinstance(created, (int, float)) else 0


class StreamTranslator:
    """Turns Responses stream events, one at a time, into ``chat.completion.chunk`` SSE.

    ``feed`` returns the SSE bytes to send (possibly none). ``finished`` turns true after
    ``response.completed`` or ``response.incomplete`` (last chunks and ``[DONE]`` sent),
    or after ``response.failed`` or ``error`` (an error event sent, and no ``[DONE]``).
    With ``include_usage`` the usage comes in a chunk of its own with no choices, as
    chat sends it; otherwise it rides on the last chunk, for the proxy's records.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self._id = ""
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._tools: dict[Any, int] = {}  # output_index -> chat tool call index
        self._arguments: dict[int, str] = {}  # chat tool call index -> arguments sent
        self.finished = False

    def feed(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "response.created":
            response = event.get("response") or {}
            self._id = str(response.get("id") or "")
            self._model = str(response.get("model") or self._model)
            self._created = _created(response) or self._created
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "response.output_text.delta":
            return self._chunk({"content": str(event.get("delta") or "")})
        if kind == "response.refusal.delta":
            return self._chunk({"refusal": str(event.get("delta") or "")})
        if kind == "response.output_item.added":
            return self._tool_call_start(event.get("output_index"), event.get("item") or {})
        if kind == "response.function_call_arguments.delta":
            return self._arguments_delta(event.get("output_index"), event.get("delta"))
        if kind == "response.function_call_arguments.done":
            return self._arguments_done(event.get("output_index"), event.get("arguments"))
        if kind in ("response.completed", "response.incomplete"):
            return self._finish(event.get("response") or {})
        if kind == "response.failed":
            self.finished = True
            response = event.get("response") or {}
            return error_event(failure({**response, "status": "failed"}) or {})
        if kind == "error":
            self.finished = True
            return error_event(_error_event_body(event))
        return b""  # in_progress, *.done, reasoning summaries...: no chat chunk

    def _tool_call_start(self, output_index: Any, item: dict[str, Any]) -> bytes:
        if item.get("type") != "function_call" or output_index in self._tools:
            return b""
        position = len(self._tools)
        self._tools[output_index] = position
        arguments = str(item.get("arguments") or "")
        self._arguments[position] = arguments
        call = {
            "index": position,
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": arguments},
        }
        return self._chunk({"tool_calls": [call]})

    def _arguments_delta(self, output_index: Any, delta: Any) -> bytes:
        position = self._tools.get(output_index)
        if position is None or not isinstance(delta, str) or not delta:
            return b""
        self._arguments[position] += delta
        return self._chunk({"tool_calls": [{"index": position, "function": {"arguments": delta}}]})

    def _arguments_done(self, output_index: Any, arguments: Any) -> bytes:
        """The rest of the arguments, where the deltas did not carry them all."""
        position = self._tools.get(output_index)
        if position is None or not isinstance(arguments, str):
            return b""
        sent = self._arguments[position]
        if not arguments.startswith(sent) or arguments == sent:
            return b""
        return self._arguments_delta(output_index, arguments[len(sent) :])

    def _finish(self, response: dict[str, Any]) -> bytes:
        self.finished = True
        reason = finish_reason(response, made_tool_calls=bool(self._tools))
        final_usage = usage(response.get("usage"))
        if self._include_usage:
            last = self._chunk({}, finish_reason=reason)
            if final_usage is not None:
                last += self._chunk(None, usage=final_usage)
            return last + DONE_EVENT
        return self._chunk({}, finish_reason=reason, usage=final_usage) + DONE_EVENT

    def _chunk(
        self,
        delta: dict[str, Any] | None,
        *,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> bytes:
        """One chunk; ``delta=None`` makes the choice-less usage chunk."""
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _json.dumps(chunk) + b"\n\n"


def _error_event_body(event: dict[str, Any]) -> dict[str, Any]:
    """The body of an ``error`` stream event, OpenAI-shaped: its message, code and param
    at the top level (some servers nest them under ``error``, with a ``type``)."""
    nested = event.get("error")
    source = nested if isinstance(nested, dict) else event
    message, code, param = source.get("message"), source.get("code"), source.get("param")
    kind = source.get("type") if source is nested else None
    return error_dict(
        message if isinstance(message, str) else "The Responses stream reported an error.",
        type=kind if isinstance(kind, str) and kind else "upstream_error",
        code=code if isinstance(code, str) else None,
        param=param if isinstance(param, str) else None,
    )
