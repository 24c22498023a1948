"""The routes the proxy serves, one row each.

The middleware matches a request's path against the table ``route_table`` builds and
reads everything else from the row: the method, how the body is read and validated,
which upstream API the model is sent to, what the cache rules are, which fields and
headers reach the upstream, the API the answer speaks (its ``Dialect``: how a stream
ends, where usage is, how errors are written), and whether the proxy answers by itself.
Adding a route means adding a row here, not a branch in the middleware or pipeline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._cache.policy import CacheRule
from asgi_autoproxy._gate.auth import Caller
from asgi_autoproxy._gate.credentials import TemporaryCredentials, parse_credential_request
from asgi_autoproxy._gate.limits import check_json_depth, exceeds_parser_depth, too_deep
from asgi_autoproxy._headers import FORWARDABLE, RequestHeaders
from asgi_autoproxy._routing.model_router import ModelRouter
from asgi_autoproxy._upstream.dialects import ANTHROPIC, OPENAI, RESPONSES, Dialect
from asgi_autoproxy.errors import ProxyError, bad_request
from asgi_autoproxy.providers.base import Endpoint

ChooseEndpoint = Callable[[ModelRouter, str, Mapping[str, Any]], Endpoint]
"""Which upstream API serves a request: from the router, the model and the payload."""
ParsePayload = Callable[[bytes, int], dict[str, Any]]
"""The request body, validated: from its bytes and the JSON depth limit."""
LocalAnswer = Callable[[ModelRouter], dict[str, Any]]
"""A JSON answer the proxy gives by itself, with no upstream call."""
ParamAnswer = Callable[[ModelRouter, str], dict[str, Any]]
"""A ``LocalAnswer`` for a path-parameter row: also given the path's last part."""
LocalReply = Callable[[dict[str, Any], Caller], dict[str, Any]]
"""A JSON answer the proxy gives by itself to a parsed body, knowing who asked."""


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
    cache_rule: CacheRule = "deterministic"
    """What is cached without cache headers: deterministic requests, or ``always``
    (embeddings and moderations, whose answers do not vary)."""
    server_state: tuple[str, ...] = ()
    """Body fields that, when set (not null or false), make the answer depend on state
    kept upstream (``previous_response_id``): such requests are never cached."""
    upstream_omits: tuple[str, ...] = ()
    """Body fields the proxy reads but the upstream API lacks (the Responses API's
    ``seed``, which only enables caching): left out of the body sent upstream."""
    passed_headers: frozenset[str] = frozenset()
    """Caller headers sent upstream as they are (a subset of ``_headers.FORWARDABLE``)."""
    dialect: Dialect = OPENAI
    """The API the answer speaks: how its stream ends, where usage is, error shapes."""
    answer: LocalAnswer | None = None
    """Set where the proxy answers by itself, before any body is read (``/models``)."""
    reply: LocalReply | None = None
    """Set where the proxy answers the parsed body by itself (``/credentials``)."""
    answer_for: ParamAnswer | None = None
    """Set on a path-parameter row (``/models/{id}``): ``suffix`` ends in ``/`` and
    matches as a prefix, and the rest of the path is handed to this."""

    def bound(self, parameter: str) -> Route:
        """This path-parameter row with its parameter filled in, as a plain row."""
        assert self.answer_for is not None
        answer_for = self.answer_for
        return dataclasses.replace(
            self, answer=lambda router: answer_for(router, parameter), answer_for=None
        )

    def __post_init__(self) -> None:
        unknown = {name.encode() for name in self.passed_headers} - FORWARDABLE
        if unknown:
            raise ValueError(f"route {self.name}: headers {sorted(unknown)} are not forwardable")


def parse_openai_payload(
    body: bytes, max_depth: int, *, default_model: str | None = None
) -> dict[str, Any]:
    """An OpenAI request body: a JSON object with a string ``model``, each key once.
    Without a ``model``, ``default_model`` is set in the parsed payload (not the body)."""
    if not body:
        raise bad_request("Request body is empty; send a JSON object with a 'model'.")
    payload = _json_object(body, max_depth)
    model = payload.get("model")
    if model is None and default_model is not None and "model" not in payload:
        payload["model"] = model = default_model
    if model is None:
        raise bad_request("Missing required field 'model'.", param="model")
    # ASCII blanks only: the OpenAPI pattern must mean the same in every regex dialect.
    if not isinstance(model, str) or not model.strip(" \t\r\n"):
        raise bad_request("Field 'model' must be a non-empty string.", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("Field 'stream' must be true or false.", param="stream")
    return payload


def with_default_model(model: str) -> ParsePayload:
    """``parse_openai_payload`` for an API whose ``model`` is optional (moderations): a
    body without one is routed, and cached, under the model the upstream defaults to."""

    def parse(body: bytes, max_depth: int) -> dict[str, Any]:
        return parse_openai_payload(body, max_depth, default_model=model)

    return parse


def _json_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """A JSON object, each key once, no deeper than ``max_depth``; else a 400."""
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
    return payload


def _credentials_body(body: bytes, max_depth: int) -> dict[str, Any]:
    """A ``/credentials`` body: a JSON object; empty means every default."""
    return _json_object(body, max_depth) if body.strip() else {}


def _issue_with(credentials: TemporaryCredentials) -> LocalReply:
    def issue(payload: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if caller.grant is not None:
            # Else a token could renew itself for ever, or widen its own models.
            raise ProxyError(
                403,
                "A temporary credential cannot ask for credentials; use a long-lived key.",
                type="permission_error",
                code="credential_not_allowed",
            )
        wanted = parse_credential_request(payload)
        token = credentials.issue(caller.id, models=wanted.models, ttl_seconds=wanted.ttl_seconds)
        return {"key": token}

    return issue


def credentials_route(credentials: TemporaryCredentials) -> Route:
    """``POST {prefix}/credentials``: a temporary credential for the calling caller."""
    return Route(
        name="credentials",
        suffix="/credentials",
        method="POST",
        parse=_credentials_body,
        cacheable=False,
        reply=_issue_with(credentials),
    )


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


def _model_object(router: ModelRouter, model: str) -> dict[str, Any]:
    """One model, as OpenAI's ``GET /models/{model}`` answers; 404 in OpenAI's shape
    for a model no configured provider serves or the catalog does not know."""
    owner = router.listed_models().get(model)
    if owner is None and router.catalog.flavor(model) is not None:
        owner = next((p.name for p in router.providers if p.serves(model)), None)
    if owner is None:
        raise ProxyError(
            404,
            f"The model '{model[:200]}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return {"id": model, "object": "model", "created": int(time.time()), "owned_by": owner}


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
    Route(name="model", suffix="/models/", method="GET", cacheable=False, answer_for=_model_object),
    Route(
        name="embeddings",
        suffix="/embeddings",
        method="POST",
        parse=parse_openai_payload,
        endpoint=_always("embeddings"),
        cache_rule="always",
    ),
    Route(
        name="moderations",
        suffix="/moderations",
        method="POST",
        parse=with_default_model("omni-moderation-latest"),
        endpoint=_always("moderations"),
        cache_rule="always",
    ),
    Route(
        name="responses",
        suffix="/responses",
        method="POST",
        parse=parse_openai_payload,
        endpoint=_always("responses"),
        # `background`: the answer is a placeholder for work done upstream.
        server_state=("previous_response_id", "conversation", "store", "background"),
        upstream_omits=("seed",),
        dialect=RESPONSES,
    ),
    *(
        Route(
            name="anthropic",
            suffix=suffix,
            method="POST",
            parse=parse_openai_payload,
            endpoint=_always("messages"),
            passed_headers=frozenset(("anthropic-version", "anthropic-beta")),
            dialect=ANTHROPIC,
        )
        # The anthropic SDK appends /v1/messages to its base URL; both spellings work.
        for suffix in ("/anthropic/v1/messages", "/anthropic/messages")
    ),
)
"""Served beside ``/auto``, under its prefix, unless ``sibling_routes=False``."""


class RouteTable:
    """Full path to row: exact paths first, then path-parameter rows by prefix."""

    __slots__ = ("_exact", "_prefixed")

    def __init__(self, rows: Mapping[str, Route]) -> None:
        self._exact = {path: r for path, r in rows.items() if r.answer_for is None}
        self._prefixed = tuple((path, r) for path, r in rows.items() if r.answer_for is not None)

    def get(self, path: str) -> Route | None:
        route = self._exact.get(path)
        if route is not None or not self._prefixed:
            return route
        for prefix, row in self._prefixed:
            if path.startswith(prefix) and len(path) > len(prefix):
                return row.bound(path[len(prefix) :])
        return None


def route_table(
    path: str, *, siblings: bool, credentials: TemporaryCredentials | None = None
) -> RouteTable:
    """The routes served; ``path`` is where ``/auto`` is served. ``/credentials`` is served
    wherever there is a secret to sign with, sibling routes or not."""
    rows = {path: AUTO}
    prefix = path.rsplit("/", 1)[0]
    if siblings:
        rows.update({prefix + route.suffix: route for route in SIBLINGS})
    if credentials is not None:
        row = credentials_route(credentials)
        rows[prefix + row.suffix] = row
    return RouteTable(rows)


def upstream_body(
    route: Route, payload: dict[str, Any], body: bytes
) -> tuple[dict[str, Any], bytes]:
    """The payload and body to send upstream: the caller's bytes as they came, unless the
    row omits a field the body has; then the payload without it, serialised again."""
    omits = route.upstream_omits
    if not omits or not any(name in payload for name in omits):
        return payload, body
    sent = {name: value for name, value in payload.items() if name not in omits}
    return sent, _json.dumps(sent)


def depends_on_server_state(route: Route, payload: Mapping[str, Any]) -> bool:
    """Whether the answer depends on state kept upstream: never cached, then."""
    return any(payload.get(name) not in (None, False) for name in route.server_state)


def passed_headers(route: Route, headers: RequestHeaders) -> tuple[tuple[str, str], ...]:
    """The caller's headers this route sends upstream, each once (the first), checked:
    an HTTP header value upstream must be printable ASCII."""
    if not route.passed_headers or not headers.forwardable:
        return ()
    passed: dict[str, str] = {}
    for name, value in headers.forwardable:
        if name in route.passed_headers and name not in passed:
            if not (value.isascii() and value.isprintable()):
                raise bad_request(f"Header {name!r} must be printable ASCII.", param=name)
            passed[name] = value.strip()
    return tuple(passed.items())
