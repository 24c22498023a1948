"""The routes the proxy serves, one row each.

The middleware matches a request's path against the table ``route_table`` builds and
reads everything else from the row: the method, how the body is read and validated,
which upstream API the model is sent to, and whether the proxy answers by itself.
Adding a route means adding a row here, not a branch in the middleware.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._gate.limits import check_json_depth, exceeds_parser_depth, too_deep
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy.errors import bad_request
from asgi_autoproxy.providers.base import Endpoint

ChooseEndpoint = Callable[[ModelRouter, str, Mapping[str, Any]], Endpoint]
"""Which upstream API serves a request: from the router, the model and the payload."""
ParsePayload = Callable[[bytes, int], dict[str, Any]]
"""The request body, validated: from its bytes and the JSON depth limit."""
LocalAnswer = Callable[[ModelRouter], dict[str, Any]]
"""A JSON answer the proxy gives by itself, with no upstream call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    """Shown in request records and logs; part of a remembered cache plan's digest."""
    suffix: str
    """The path below the proxy's prefix, e.g. ``/chat/completions``."""
    method: str
    parse: ParsePayload | None = None
    """How the body is read and validated; None for a route that reads no body."""
    endpoint: ChooseEndpoint | None = None
    """Which upstream API the model is sent to."""
    cacheable: bool = True
    """Whether the cache rules apply (deterministic requests, or the caller's headers)."""
    answer: LocalAnswer | None = None
    """Set where the proxy answers by itself (``/models``)."""


def parse_openai_payload(body: bytes, max_depth: int) -> dict[str, Any]:
    """An OpenAI request body: a JSON object with a string ``model``, each key once."""
    if not body:
        raise bad_request("Request body is empty; send a JSON object with a 'model'.")
    try:
        parsed = _json.loads(body)
        if isinstance(parsed, dict):
            check_json_depth(body, parsed, max_depth)
            # Exact integers, and no repeated key: the parse keeps the last of one, and
            # the cache key with it, while the raw body goes upstream. (The plan memo only
            # files plans for bodies that get past this.)
            parsed = _json.strict(body, parsed)
    except _json.DuplicateKeyError:
        raise bad_request(
            "Request body has a duplicate key in one of its JSON objects; send each key once.",
            code="invalid_json",
        ) from None
    except _json.JSONDecodeError as error:
        if exceeds_parser_depth(error):
            raise too_deep(max_depth) from None
        raise bad_request("Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(parsed, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    payload: dict[str, Any] = parsed
    model = payload.get("model")
    if model is None:
        raise bad_request("Missing required field 'model'.", param="model")
    # ASCII blanks only: the OpenAPI pattern must mean the same in every regex dialect.
    if not isinstance(model, str) or not model.strip(" \t\r\n"):
        raise bad_request("Field 'model' must be a non-empty string.", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("Field 'stream' must be true or false.", param="stream")
    return payload


def _by_model(router: ModelRouter, model: str, payload: Mapping[str, Any]) -> Endpoint:
    return router.auto_endpoint(model, payload)


def _chat(router: ModelRouter, model: str, payload: Mapping[str, Any]) -> Endpoint:
    return router.chat_endpoint(model)


def _always(endpoint: Endpoint) -> ChooseEndpoint:
    def choose(router: ModelRouter, model: str, payload: Mapping[str, Any]) -> Endpoint:
        return endpoint

    return choose


def _model_list(router: ModelRouter) -> dict[str, Any]:
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": now, "owned_by": owner}
            for model, owner in router.listed_models().items()
        ],
    }


AUTO = Route(
    name="auto", suffix="/auto", method="POST", parse=parse_openai_payload, endpoint=_by_model
)
"""Served at the configured ``path`` itself, whatever its last segment."""
SIBLINGS = (
    Route(
        name="chat",
        suffix="/chat/completions",
        method="POST",
        parse=parse_openai_payload,
        endpoint=_chat,
    ),
    Route(
        name="completion",
        suffix="/completions",
        method="POST",
        parse=parse_openai_payload,
        endpoint=_always("completion"),
    ),
    Route(name="models", suffix="/models", method="GET", cacheable=False, answer=_model_list),
)
"""Served beside ``/auto``, under its prefix, unless ``sibling_routes=False``."""


def route_table(path: str, *, siblings: bool) -> dict[str, Route]:
    """Full path to row; ``path`` is where ``/auto`` is served."""
    table = {path: AUTO}
    if siblings:
        prefix = path.rsplit("/", 1)[0]
        table.update({prefix + route.suffix: route for route in SIBLINGS})
    return table
