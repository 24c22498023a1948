"""OpenAI chat request -> Anthropic Messages request.

Anthropic differs in ways that matter: ``system`` is a top-level field, ``max_tokens``
is required, roles must alternate (so same-role neighbours are merged), tool calls and
tool results are content blocks, and there is no ``response_format`` (a forced tool
stands in for it). ``reasoning_effort`` becomes a thinking budget; ``thinking``,
``top_k`` and parts' ``cache_control`` pass through; PDF and text ``file`` parts become
document blocks.

A field that cannot be mapped is a 400 naming it, never a silent drop: OpenAI-only
fields are accepted only at their defaults (``logprobs: false``, penalties of 0...).
``seed`` is the one exception: it asks the proxy's cache for a stable answer, and
Anthropic has no seed to send it to.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy.errors import ProxyError, bad_request
from asgi_autoproxy.providers._chat_tools import function_tools

DEFAULT_MAX_TOKENS = 4096
JSON_TOOL_NAME = "json_response"
"""The forced tool that carries a ``response_format`` JSON answer."""

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DOCUMENT_TYPES = ("application/pdf", "text/plain")

MIN_THINKING_BUDGET = 1024
"""Anthropic's smallest thinking budget."""
EFFORT_BUDGET_SHARE = {"minimal": 0.0, "low": 0.2, "medium": 0.5, "high": 0.8}
"""``reasoning_effort`` -> the share of ``max_tokens`` given to thinking (at least
``MIN_THINKING_BUDGET``); ``"none"`` sends no thinking at all."""

# Fields mapped below, each to its Anthropic counterpart (``seed`` and
# ``stream_options`` to the proxy itself: its cache, and usage on the last chunk).
_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "user",
        "n",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "thinking",
        "seed",
    }
)
# OpenAI fields that ask for nothing at these values (their defaults): accepted, not sent.
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "store": (False,),
    "metadata": ({},),
    "modalities": (["text"],),
    "service_tier": ("auto",),
}
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)

Block = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    body: dict[str, Any]
    """The Anthropic Messages API request body."""
    json_tool: str | None
    """Set when ``response_format`` became a forced tool: its input is the answer."""


def to_messages_request(
    payload: Mapping[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> MessagesRequest:
    _refuse_unmapped(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Field 'messages' must be a non-empty list.", param="messages")
    n = payload.get("n")
    if n not in (None, 1):
        raise bad_request("Anthropic models return one choice: 'n' must be 1.", param="n")
    system, turns = _conversation(messages)
    if not turns:
        raise bad_request(
            "Anthropic needs at least one user or assistant message besides system ones.",
            param="messages",
        )
    max_tokens = _max_tokens(payload, default_max_tokens)
    body: dict[str, Any] = {"model": payload["model"], "max_tokens": max_tokens, "messages": turns}
    if system:
        # One string, unless a part asks for caching: then blocks that carry it.
        cached = any("cache_control" in block for block in system)
        body["system"] = system if cached else "\n\n".join(b["text"] for b in system)
    for name in ("temperature", "top_p"):
        value = payload.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(f"Field '{name}' must be a number.", param=name)
            body[name] = value
    top_k = payload.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise bad_request("Field 'top_k' must be a whole number, 0 or more.", param="top_k")
        body["top_k"] = top_k
    thinking = _thinking(payload, max_tokens)
    if thinking is not None:
        body["thinking"] = thinking
    stop = payload.get("stop")
    if stop is not None:
        body["stop_sequences"] = _stop_sequences(stop)
    user = payload.get("user")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    tools = _tools(payload.get("tools"))
    tool_choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    json_tool = _json_tool(payload.get("response_format"))
    if json_tool is not None:
        if tools:
            # The model may call the caller's tools or answer through the JSON tool.
            tool_choice = tool_choice or {"type": "any"}
        else:
            tool_choice = {"type": "tool", "name": JSON_TOOL_NAME}
        tools.append(json_tool)
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        elif payload.get("parallel_tool_calls") is False:
            body["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    if payload.get("stream") is True:
        body["stream"] = True
    if thinking is not None and thinking.get("type") != "disabled":
        _check_thinking_compatible(body, payload)
    return MessagesRequest(body, JSON_TOOL_NAME if json_tool is not None else None)


def _refuse_unmapped(payload: Mapping[str, Any]) -> None:
    for name, value in payload.items():
        if name in _MAPPED or value is None or value in _DEFAULTS.get(name, ()):
            continue
        raise bad_request(
            f"Field '{name}' cannot be sent to Anthropic models: it has no counterpart in "
            "Anthropic's Messages API. Remove it, or send it at its default.",
            param=name,
            code="unsupported_parameter",
        )


# -- reasoning ----------------------------------------------------------------------------


def _thinking(payload: Mapping[str, Any], max_tokens: int) -> dict[str, Any] | None:
    """Anthropic's ``thinking``: the caller's own, or a budget for ``reasoning_effort``."""
    effort = payload.get("reasoning_effort")
    thinking = payload.get("thinking")
    if thinking is not None:
        if effort is not None:
            raise bad_request(
                "Send either 'reasoning_effort' or 'thinking' to Anthropic models, not both.",
                param="reasoning_effort",
            )
        if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
            raise bad_request(
                "Field 'thinking' must be Anthropic's object, e.g. "
                '{"type": "enabled", "budget_tokens": 2048}.',
                param="thinking",
            )
        return dict(thinking)
    if effort is None or effort == "none":
        return None
    share = EFFORT_BUDGET_SHARE.get(effort) if isinstance(effort, str) else None
    if share is None:
        raise bad_request(
            f"reasoning_effort must be one of {['none', *EFFORT_BUDGET_SHARE]} for "
            "Anthropic models.",
            param="reasoning_effort",
        )
    budget = max(MIN_THINKING_BUDGET, int(max_tokens * share))
    if budget >= max_tokens:
        param = next((n for n in ("max_completion_tokens", "max_tokens") if n in payload), None)
        raise bad_request(
            f"reasoning_effort {effort!r} gives Anthropic a thinking budget of {budget} "
            f"tokens, which must be less than max_tokens ({max_tokens}): send a larger "
            "max_completion_tokens.",
            param=param or "reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _check_thinking_compatible(body: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    """What Anthropic refuses next to thinking, named here as the caller sent it."""
    reason = "thinking" if payload.get("thinking") is not None else "reasoning_effort"
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _with_thinking("temperature", reason, "leave it out or set it to 1")
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise _with_thinking("top_p", reason, "leave it out or set it to 0.95 or more")
    if "top_k" in body:
        raise _with_thinking("top_k", reason, "leave it out")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        # Forced by the caller's tool_choice, or by response_format's answer tool.
        if payload.get("tool_choice") is not None:
            raise _with_thinking("tool_choice", reason, "use 'auto' or 'none'")
        raise _with_thinking(
            "response_format", reason, "Anthropic cannot force the answer's shape then"
        )


def _with_thinking(param: str, reason: str, fix: str) -> ProxyError:
    return bad_request(
        f"Anthropic models do not take '{param}' as sent together with '{reason}': {fix}.",
        param=param,
    )


# -- messages ---------------------------------------------------------------------------


def _conversation(messages: list[Any]) -> tuple[list[Block], list[dict[str, Any]]]:
    """System text blocks, and user/assistant turns with same-role neighbours merged."""
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request("Each message must be an object.", param=param)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, param))
            continue
        if role == "user":
            blocks = _user_blocks(content, param)
        elif role == "assistant":
            blocks = _assistant_blocks(message, param)
        elif role == "tool":
            blocks = [_tool_result(message, param)]
            role = "user"
        else:
            raise bad_request(
                f"Message role {role!r} is not supported for Anthropic models; use system, "
                "developer, user, assistant or tool.",
                param=f"{param}.role",
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _text_blocks(content: Any, param: str) -> list[Block]:
    """Text blocks (with any ``cache_control``) from a string or a list of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        blocks = []
        for number, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request("Only text parts are allowed here.", param=f"{param}.content")
            if part.get("text"):
                block = {"type": "text", "text": str(part["text"])}
                blocks.append(_cached(block, part, f"{param}.content[{number}]"))
        return blocks
    raise bad_request("Message content must be a string or a list.", param=f"{param}.content")


def _cached(block: Block, part: Mapping[str, Any], param: str) -> Block:
    """``block`` with the part's ``cache_control``, passed through as Anthropic takes it."""
    control = part.get("cache_control")
    if control is None:
        return block
    if not isinstance(control, dict) or not isinstance(control.get("type"), str):
        raise bad_request(
            'cache_control must be an object such as {"type": "ephemeral"}.',
            param=f"{param}.cache_control",
        )
    block["cache_control"] = control
    return block


def _user_blocks(content: Any, param: str) -> list[Block]:
    if isinstance(content, list):
        blocks: list[Block] = []
        for number, part in enumerate(content):
            part_param = f"{param}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if part.get("text"):
                    block = {"type": "text", "text": str(part["text"])}
                    blocks.append(_cached(block, part, part_param))
            elif kind == "image_url":
                blocks.append(_cached(_image(part.get("image_url"), part_param), part, part_param))
            elif kind == "file":
                blocks.append(_cached(_document(part.get("file"), part_param), part, part_param))
            else:
                raise bad_request(
                    f"Content part type {kind!r} is not supported for Anthropic models; "
                    "use text, image_url or file.",
                    param=part_param,
                )
        return blocks
    return _text_blocks(content, param)


def _document(file: Any, param: str) -> Block:
    """An OpenAI ``file`` part (inline ``file_data``) as an Anthropic document block."""
    if not isinstance(file, dict):
        raise bad_request("A file part must hold a 'file' object.", param=param)
    if file.get("file_id") is not None:
        raise bad_request(
            "Anthropic models cannot read files stored with OpenAI: send the document "
            "inline as file_data (data:application/pdf;base64,...).",
            param=f"{param}.file.file_id",
        )
    data = file.get("file_data")
    match = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if match is None:
        raise bad_request(
            "file_data must be a base64 data URL (data:application/pdf;base64,...).",
            param=f"{param}.file.file_data",
        )
    block = _document_block(match["type"].lower(), match["data"], f"{param}.file.file_data")
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _document_block(media_type: str, data: str, param: str) -> Block:
    if media_type == "application/pdf":
        return {
            "type": "document",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise bad_request(
                "text/plain file_data must be base64 of UTF-8 text.", param=param
            ) from None
        return {
            "type": "document",
            "source": {"type": "text", "media_type": media_type, "data": text},
        }
    raise bad_request(
        f"Document type {media_type} is not supported for Anthropic models; use one of "
        f"{list(_DOCUMENT_TYPES)}.",
        param=param,
    )


def _image(image_url: Any, param: str) -> Block:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise bad_request("image_url must hold a 'url' string.", param=param)
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise bad_request(
            "Images must be http(s) URLs or base64 data URLs (data:image/png;base64,...).",
            param=param,
        )
    media_type = match["type"].lower()
    if media_type in _DOCUMENT_TYPES:  # a PDF sent as an "image" by some clients
        return _document_block(media_type, match["data"], param)
    if media_type not in _IMAGE_TYPES:
        raise bad_request(
            f"Image type {media_type} is not supported; use one of {sorted(_IMAGE_TYPES)}.",
            param=param,
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": match["data"]},
    }


def _assistant_blocks(message: dict[str, Any], param: str) -> list[Block]:
    content = message.get("content")
    blocks: list[Block] = []
    if isinstance(content, list):
        for number, part in enumerate(content):
            text = part.get("text") or part.get("refusal") if isinstance(part, dict) else None
            if text:
                block = {"type": "text", "text": str(text)}
                blocks.append(_cached(block, part, f"{param}.content[{number}]"))
    else:
        blocks.extend(_text_blocks(content, param))
    for number, call in enumerate(message.get("tool_calls") or []):
        blocks.append(_tool_use(call, f"{param}.tool_calls[{number}]"))
    return blocks


def _tool_use(call: Any, param: str) -> Block:
    function = call.get("function") if isinstance(call, dict) else None
    if (
        not isinstance(function, dict)
        or not isinstance(call.get("id"), str)
        or not isinstance(function.get("name"), str)
    ):
        raise bad_request("A tool call needs an 'id' and a function 'name'.", param=param)
    arguments = function.get("arguments") or "{}"
    try:
        parsed = _json.loads(arguments.encode()) if isinstance(arguments, str) else arguments
    except _json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise bad_request(
            "Tool call arguments must be a JSON object for Anthropic models.",
            param=f"{param}.function.arguments",
        )
    return {"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": parsed}


def _tool_result(message: dict[str, Any], param: str) -> Block:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise bad_request("A tool message needs a 'tool_call_id'.", param=f"{param}.tool_call_id")
    texts = _text_blocks(message.get("content"), param)
    block: Block = {"type": "tool_result", "tool_use_id": tool_call_id}
    if texts:
        block["content"] = texts
    return block


# -- other fields ---------------------------------------------------------------------


def _max_tokens(payload: Mapping[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"Field '{name}' must be a positive integer.", param=name)
        return value
    return default


def _stop_sequences(stop: Any) -> list[str]:
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise bad_request("Field 'stop' must be a string or a list of strings.", param="stop")
    return sequences


def _tools(tools: Any) -> list[Block]:
    converted: list[Block] = []
    for name, function in function_tools(tools, "Anthropic models"):
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        entry: Block = {"name": name, "input_schema": schema}
        if function.get("description"):
            entry["description"] = str(function["description"])
        converted.append(entry)
    return converted


def _tool_choice(choice: Any, parallel: Any) -> Block | None:
    converted: Block
    if choice is None:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice == "auto":
        converted = {"type": "auto"}
    elif choice == "required":
        converted = {"type": "any"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        converted = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request(
            "tool_choice must be 'auto', 'required', 'none' or "
            '{"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if parallel is False:
        converted["disable_parallel_tool_use"] = True
    return converted


def _json_tool(response_format: Any) -> Block | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {
            "name": JSON_TOOL_NAME,
            "description": "Answer with a JSON object.",
            "input_schema": {"type": "object"},
        }
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _schema_error()
        tool: Block = {"name": JSON_TOOL_NAME, "input_schema": schema}
        description = spec.get("description") if isinstance(spec, dict) else None
        tool["description"] = description or "Answer with JSON that matches this schema."
        return tool
    raise bad_request(
        "response_format type must be text, json_object or json_schema.",
        param="response_format",
    )


def _schema_error() -> ProxyError:
    return bad_request(
        "For Anthropic models response_format.json_schema.schema must be an object schema "
        '({"type": "object", ...}).',
        param="response_format",
    )
