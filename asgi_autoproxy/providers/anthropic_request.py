"""OpenAI chat request -> Anthropic Messages request.

Anthropic differs in ways that matter: ``system`` is a top-level field, ``max_tokens``
is required, roles must alternate (so same-role neighbours are merged), tool calls and
tool results are content blocks, and there is no ``response_format`` (a forced tool
stands in for it). OpenAI-only fields (``seed``, ``logprobs``, penalties...) are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy.errors import ProxyError, bad_request

DEFAULT_MAX_TOKENS = 4096
JSON_TOOL_NAME = "json_response"
"""The forced tool that carries a ``response_format`` JSON answer."""

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
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
    body: dict[str, Any] = {
        "model": payload["model"],
        "max_tokens": _max_tokens(payload, default_max_tokens),
        "messages": turns,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p"):
        value = payload.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(f"Field '{name}' must be a number.", param=name)
            body[name] = value
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
    return MessagesRequest(body, JSON_TOOL_NAME if json_tool is not None else None)


# -- messages ---------------------------------------------------------------------------


def _conversation(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and user/assistant turns with same-role neighbours merged."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request("Each message must be an object.", param=param)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_texts(content, param))
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


def _texts(content: Any, param: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request("Only text parts are allowed here.", param=f"{param}.content")
            if part.get("text"):
                texts.append(str(part["text"]))
        return texts
    raise bad_request("Message content must be a string or a list.", param=f"{param}.content")


def _user_blocks(content: Any, param: str) -> list[Block]:
    if isinstance(content, list):
        blocks: list[Block] = []
        for number, part in enumerate(content):
            part_param = f"{param}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if part.get("text"):
                    blocks.append({"type": "text", "text": str(part["text"])})
            elif kind == "image_url":
                blocks.append(_image(part.get("image_url"), part_param))
            else:
                raise bad_request(
                    f"Content part type {kind!r} is not supported for Anthropic models; "
                    "use text or image_url.",
                    param=part_param,
                )
        return blocks
    return [{"type": "text", "text": text} for text in _texts(content, param)]


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
        for part in content:
            text = part.get("text") or part.get("refusal") if isinstance(part, dict) else None
            if text:
                blocks.append({"type": "text", "text": str(text)})
    else:
        blocks.extend({"type": "text", "text": t} for t in _texts(content, param))
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
    texts = _texts(message.get("content"), param)
    block: Block = {"type": "tool_result", "tool_use_id": tool_call_id}
    if texts:
        block["content"] = [{"type": "text", "text": t} for t in texts]
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
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("Field 'tools' must be a list.", param="tools")
    converted: list[Block] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise bad_request(
                "Only function tools can be sent to Anthropic models.", param=f"tools[{index}]"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("A function tool needs a 'name'.", param=f"tools[{index}]")
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
