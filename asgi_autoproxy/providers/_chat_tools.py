"""A chat request's function tools, checked once for every translation that reads them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from asgi_autoproxy.errors import bad_request


def function_tools(tools: Any, target: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each tool's name and ``function``; a 400 naming the tool for anything else.
    ``target`` ends the message for a tool that is not a function ("Anthropic models")."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("Field 'tools' must be a list.", param="tools")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise bad_request(
                f"Only function tools can be sent to {target}.", param=f"tools[{index}]"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("A function tool needs a 'name'.", param=f"tools[{index}]")
        yield name, function
