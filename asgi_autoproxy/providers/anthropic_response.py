"""Anthropic Messages answers -> OpenAI chat answers: whole messages, stream events, errors.

Thinking blocks become ``reasoning_content``, on the message and in stream deltas, as
DeepSeek and other OpenAI-compatible servers send reasoning; their signatures, and
redacted thinking, have no OpenAI counterpart.
"""

from __future__ import annotations

from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._sse import DONE_EVENT, error_event
from asgi_autoproxy.errors import error_dict

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error types whose OpenAI counterpart has another name.
_ERROR_TYPES = {
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "request_too_large": "invalid_request_error",
    "billing_error": "insufficient_quota",
}


def finish_reason(stop_reason: Any, *, made_tool_calls: bool) -> str:
    reason = _FINISH_REASONS.get(stop_reason, "stop")
    if reason == "tool_calls" and not made_tool_calls:
        return "stop"  # only the response_format tool was used: that is a plain answer
    return reason


def usage(anthropic_usage: Any) -> dict[str, Any]:
    """OpenAI usage; cache reads and writes count as prompt tokens, as OpenAI counts them."""
    u = anthropic_usage if isinstance(anthropic_usage, dict) else {}
    cache_read = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cache_read + (u.get("cache_creation_input_tokens") or 0)
    completion = u.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def chat_completion(message: dict[str, Any], *, json_tool: str | None, created: int) -> bytes:
    """A ``chat.completion`` body for a whole Anthropic message."""
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thoughts.append(block.get("thinking", ""))
        elif kind == "tool_use" and block.get("name") == json_tool:
            texts.append(_json.dumps(block.get("input", {})).decode())
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": _json.dumps(block.get("input", {})).decode(),
                    },
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thoughts:
        reply["reasoning_content"] = "".join(thoughts)
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return _json.dumps(
        {
            "id": message.get("id"),
            "object": "chat.completion",
            "created": created,
            "model": message.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": reply,
                    "finish_reason": finish_reason(
                        message.get("stop_reason"), made_tool_calls=bool(tool_calls)
                    ),
                    "logprobs": None,
                }
            ],
            "usage": usage(message.get("usage")),
        }
    )


def translated_error(body: bytes) -> dict[str, Any] | None:
    """An OpenAI-shaped error for Anthropic's ``{"type": "error", "error": {...}}``; None
    when ``body`` is not one."""
    try:
        parsed = _json.loads(body)
    except _json.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = str(error.get("type") or "api_error")
        return error_dict(error["message"], type=_ERROR_TYPES.get(kind, kind), code=kind)
    return None


def openai_error(status: int, body: bytes) -> dict[str, Any]:
    """``translated_error``, or a generic one when ``body`` is not Anthropic's error."""
    error = translated_error(body)
    if error is not None:
        return error
    return error_dict(
        f"Anthropic answered HTTP {status} without an error body.",
        type="upstream_error",
        code=f"upstream_{status}",
    )


class StreamTranslator:
    """Turns Anthropic stream events, one at a time, into ``chat.completion.chunk`` SSE.

    ``feed`` returns the SSE bytes to send (possibly none). ``finished`` turns true after
    ``message_stop`` (final chunk and ``[DONE]`` sent) or an ``error`` event.
    """

    def __init__(self, *, model: str, json_tool: str | None, created: int) -> None:
        self._id = ""
        self._model = model
        self._json_tool = json_tool
        self._created = created
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self._json_blocks: set[int] = set()
        self._usage: dict[str, Any] = {}
        self._stop_reason: Any = None
        self.finished = False

    def feed(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = str(message.get("id") or "")
            self._model = str(message.get("model") or self._model)
            self._merge_usage(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(event.get("index"), event.get("delta") or {})
        if kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason")
            self._merge_usage(event.get("usage"))
            return b""
        if kind == "message_stop":
            self.finished = True
            reason = finish_reason(self._stop_reason, made_tool_calls=bool(self._tool_index))
            return self._chunk({}, finish_reason=reason, usage=usage(self._usage)) + DONE_EVENT
        if kind == "error":
            self.finished = True
            return error_event(openai_error(200, _json.dumps(event)))
        return b""  # ping, content_block_stop and events added later carry nothing for us

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        if kind == "thinking" and block.get("thinking"):
            return self._chunk({"reasoning_content": block["thinking"]})
        if kind != "tool_use":
            return b""
        if block.get("name") == self._json_tool:
            self._json_blocks.add(index)
            return b""
        position = len(self._tool_index)
        self._tool_index[index] = position
        call = {
            "index": position,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return self._chunk({"tool_calls": [call]})

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta":
            return self._chunk({"content": delta.get("text", "")})
        if kind == "thinking_delta":
            return self._chunk({"reasoning_content": delta.get("thinking", "")})
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return b""  # signatures and citations have no OpenAI chunk
        if index in self._json_blocks:
            return self._chunk({"content": delta["partial_json"]})
        position = self._tool_index.get(index)
        if position is None:
            return b""
        call = {"index": position, "function": {"arguments": delta["partial_json"]}}
        return self._chunk({"tool_calls": [call]})

    def _merge_usage(self, update: Any) -> None:
        if isinstance(update, dict):
            self._usage.update({k: v for k, v in update.items() if v is not None})

    def _chunk(
        self,
        delta: dict[str, Any],
        *,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            ],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _json.dumps(chunk) + b"\n\n"
