"""OpenAI chat request -> OpenAI Responses request, for the models only ``/responses`` serves.

The Responses API takes ``input`` items instead of ``messages``. System and developer
messages stay input items with their role, so their place in the conversation is kept;
an assistant's tool calls become ``function_call`` items and ``tool`` messages
``function_call_output`` items. Tools are flat (no nested ``function``), the output limit
is ``max_output_tokens``, structured output goes in ``text.format`` and reasoning effort in
``reasoning.effort``. A chat field with no Responses counterpart is refused with a 400
that names it: dropping it would change the answer without telling the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy.errors import ProxyError, bad_request
from asgi_autoproxy.providers._chat_tools import function_tools

Item = dict[str, Any]

# Same name, same meaning, in both APIs: copied when set.
_SAME_FIELDS = (
    "temperature",
    "top_p",
    "metadata",
    "parallel_tool_calls",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "service_tier",
    "user",
    "moderation",
)
# Fields this module maps to another shape, or reads itself (``seed`` only makes the
# request cacheable: the Responses API has no seed, so it is not sent).
_MAPPED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "reasoning_effort",
        "response_format",
        "verbosity",
        "tools",
        "tool_choice",
        "store",
    }
)
# Chat fields the Responses API has no counterpart for: accepted only at their default
# value, which asks for nothing (``False`` for logprobs, ``0`` for a penalty...).
_ONLY_DEFAULT: Mapping[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "stop": (),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "functions": (),
    "function_call": (),
}
_MESSAGE_KEYS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "developer": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    body: dict[str, Any]
    """The Responses API request body."""
    include_usage: bool
    """The caller asked for a usage chunk at the end of the stream (``stream_options``)."""


def to_responses_request(payload: Mapping[str, Any], *, model: str) -> ResponsesRequest:
    """The Responses request for chat ``payload``; ``model`` is the name to send upstream
    (an Azure deployment's, say). Raises a 400 ``ProxyError`` for what cannot be mapped."""
    _refuse_unmappable(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Field 'messages' must be a non-empty list.", param="messages")
    # ``store`` defaults to true on the Responses API and to false on chat: sent either
    # way, so that a chat caller's answer is kept upstream only when the caller asked.
    body: dict[str, Any] = {
        "model": model,
        "input": _input_items(messages),
        "store": _flag(payload, "store"),
    }
    for name in _SAME_FIELDS:
        if payload.get(name) is not None:
            body[name] = payload[name]
    limit = _max_output_tokens(payload)
    if limit is not None:
        body["max_output_tokens"] = limit
    effort = payload.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise bad_request(
                "Field 'reasoning_effort' must be a string.", param="reasoning_effort"
            )
        body["reasoning"] = {"effort": effort}
    text = _text_config(payload.get("response_format"), payload.get("verbosity"))
    if text:
        body["text"] = text
    tools = _tools(payload.get("tools"))
    if tools:
        body["tools"] = tools
    if payload.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(payload["tool_choice"])
    include_usage = False
    if payload.get("stream") is True:
        body["stream"] = True
        include_usage, options = _stream_options(payload.get("stream_options"))
        if options:
            body["stream_options"] = options
    return ResponsesRequest(body, include_usage)


def _refuse_unmappable(payload: Mapping[str, Any]) -> None:
    for name, value in payload.items():
        if name in _MAPPED_FIELDS or name in _SAME_FIELDS or value is None:
            continue
        allowed = _ONLY_DEFAULT.get(name)
        # ``True == 1``: a bool counts as a default only where the default is one.
        if allowed is not None and any(
            value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed
        ):
            continue
        raise bad_request(
            f"Field {name!r} cannot be sent to {payload.get('model')!r}: the model is served "
            "only by the Responses API, which has no counterpart for it. Remove it"
            + (" or send its default." if allowed else "."),
            param=name,
            code="unsupported_parameter",
        )


def _flag(payload: Mapping[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"Field {name!r} must be true or false.", param=name)
    return value


# -- messages ---------------------------------------------------------------------------


def _input_items(messages: list[Any]) -> list[Item]:
    items: list[Item] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request("Each message must be an object.", param=param)
        role = message.get("role")
        keys = _MESSAGE_KEYS.get(role) if isinstance(role, str) else None
        if keys is None:
            raise bad_request(
                f"Message role {role!r} cannot be sent to a model served only by the "
                "Responses API; use system, developer, user, assistant or tool.",
                param=f"{param}.role",
            )
        for key, value in message.items():
            if key not in keys and value is not None:
                raise bad_request(
                    f"Field {key!r} of a {role} message has no counterpart in the Responses "
                    "API; remove it.",
                    param=f"{param}.{key}",
                    code="unsupported_parameter",
                )
        content = message.get("content")
        if role in ("system", "developer"):
            items.append(_message(role, _instruction_content(content, param)))
        elif role == "user":
            items.append(_message(role, _user_content(content, param)))
        elif role == "assistant":
            items.extend(_assistant_items(message, param))
        else:
            items.append(_tool_output(message, param))
    return items


def _message(role: str, content: str | list[Item]) -> Item:
    return {"type": "message", "role": role, "content": content}


def _texts(content: Any, param: str, kinds: tuple[str, ...] = ("text",)) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in kinds:
                raise bad_request(
                    f"Content part type {kind!r} is not allowed here; use text.",
                    param=f"{param}.content[{number}]",
                )
            text = part.get(kind)
            if not isinstance(text, str):
                raise bad_request(
                    f"A {kind} part needs a {kind!r} string.", param=f"{param}.content[{number}]"
                )
            texts.append(text)
        return texts
    raise bad_request("Message content must be a string or a list.", param=f"{param}.content")


def _instruction_content(content: Any, param: str) -> str | list[Item]:
    if isinstance(content, str):
        return content
    return [{"type": "input_text", "text": text} for text in _texts(content, param)]


def _user_content(content: Any, param: str) -> str | list[Item]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("Message content must be a string or a list.", param=f"{param}.content")
    return [_user_part(part, f"{param}.content[{n}]") for n, part in enumerate(content)]


def _user_part(part: Any, param: str) -> Item:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise bad_request("A text part needs a 'text' string.", param=param)
        return {"type": "input_text", "text": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        detail = (image.get("detail") if isinstance(image, dict) else None) or "auto"
        if not isinstance(url, str) or detail not in _IMAGE_DETAILS:
            raise bad_request(
                "image_url must hold a 'url' string and, optionally, a 'detail' of auto, low "
                "or high.",
                param=param,
            )
        return {"type": "input_image", "image_url": url, "detail": detail}
    if kind == "file":
        file = part.get("file")
        if not isinstance(file, dict) or not any(
            isinstance(file.get(k), str) for k in ("file_data", "file_id")
        ):
            raise bad_request("A file part needs a 'file_data' or 'file_id' string.", param=param)
        converted: Item = {"type": "input_file"}
        for key in ("file_data", "file_id", "filename"):
            if isinstance(file.get(key), str):
                converted[key] = file[key]
        return converted
    raise bad_request(
        f"Content part type {kind!r} cannot be sent to a model served only by the Responses "
        "API, which takes no audio input; use text, image_url or file.",
        param=param,
    )


def _assistant_items(message: dict[str, Any], param: str) -> list[Item]:
    items: list[Item] = []
    content = message.get("content")
    texts = [] if content is None else _texts(content, param, ("text", "refusal"))
    if isinstance(message.get("refusal"), str):
        texts.append(message["refusal"])
    if any(texts):
        items.append(_message("assistant", "".join(texts)))
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise bad_request("Field 'tool_calls' must be a list.", param=f"{param}.tool_calls")
    for number, call in enumerate(calls or []):
        items.append(_function_call(call, f"{param}.tool_calls[{number}]"))
    return items


def _function_call(call: Any, param: str) -> Item:
    function = call.get("function") if isinstance(call, dict) else None
    if (
        not isinstance(function, dict)
        or call.get("type", "function") != "function"
        or not isinstance(call.get("id"), str)
        or not isinstance(function.get("name"), str)
    ):
        raise bad_request(
            "A tool call needs type 'function', an 'id' and a function 'name'.", param=param
        )
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        raise bad_request(
            "Tool call arguments must be a JSON string.", param=f"{param}.function.arguments"
        )
    return {
        "type": "function_call",
        "call_id": call["id"],
        "name": function["name"],
        "arguments": arguments,
    }


def _tool_output(message: dict[str, Any], param: str) -> Item:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise bad_request("A tool message needs a 'tool_call_id'.", param=f"{param}.tool_call_id")
    output = "".join(_texts(message.get("content"), param))
    return {"type": "function_call_output", "call_id": call_id, "output": output}


# -- other fields ---------------------------------------------------------------------


def _max_output_tokens(payload: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"Field '{name}' must be a positive integer.", param=name)
        return value
    return None


def _text_config(response_format: Any, verbosity: Any) -> Item:
    text: Item = {}
    if response_format is not None:
        text["format"] = _text_format(response_format)
    if verbosity is not None:
        if not isinstance(verbosity, str):
            raise bad_request("Field 'verbosity' must be a string.", param="verbosity")
        text["verbosity"] = verbosity
    return text


def _text_format(response_format: Any) -> Item:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _format_error("response_format.json_schema needs a 'name' string.")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise _format_error("response_format.json_schema.schema must be an object.")
        converted: Item = {"type": "json_schema", "name": spec["name"], "schema": schema}
        for key in ("description", "strict"):
            if spec.get(key) is not None:
                converted[key] = spec[key]
        return converted
    raise _format_error("response_format type must be text, json_object or json_schema.")


def _format_error(message: str) -> ProxyError:
    return bad_request(message, param="response_format")


def _tools(tools: Any) -> list[Item]:
    converted: list[Item] = []
    for name, function in function_tools(tools, "a model served only by the Responses API"):
        # Chat functions are lax unless asked; Responses ones are strict unless told.
        entry: Item = {
            "type": "function",
            "name": name,
            "parameters": function.get("parameters") or {"type": "object", "properties": {}},
            "strict": function.get("strict") is True,
        }
        if function.get("description") is not None:
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"type": "function", "name": function["name"]}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        tools = allowed.get("tools") if isinstance(allowed, dict) else None
        if isinstance(tools, list) and allowed.get("mode") in ("auto", "required"):
            names = [
                t["function"]["name"]
                for t in tools
                if isinstance(t, dict)
                and t.get("type") == "function"
                and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str)
            ]
            if len(names) == len(tools):
                return {
                    "type": "allowed_tools",
                    "mode": allowed["mode"],
                    "tools": [{"type": "function", "name": n} for n in names],
                }
    raise bad_request(
        "tool_choice must be 'auto', 'required', 'none', "
        '{"type": "function", "function": {"name": ...}} or function allowed_tools.',
        param="tool_choice",
    )


def _stream_options(options: Any) -> tuple[bool, Item]:
    """Whether the caller wants usage at the end, and the options to send upstream."""
    if options is None:
        return False, {}
    if not isinstance(options, dict):
        raise bad_request("Field 'stream_options' must be an object.", param="stream_options")
    upstream: Item = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in ("include_usage", "include_obfuscation") or not isinstance(value, bool):
            raise bad_request(
                f"stream_options.{key} cannot be sent to a model served only by the Responses "
                "API; use include_usage or include_obfuscation (true or false).",
                param=f"stream_options.{key}",
            )
        if key == "include_obfuscation":
            upstream[key] = value
    return options.get("include_usage") is True, upstream
