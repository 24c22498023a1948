"""An OpenAPI 3.1 description of the routes the middleware serves.

``/auto`` is described the way Braintrust's API reference describes its own
``POST /v1/proxy/auto`` (operation ``proxyauto``, tag ``Proxy``, bearer auth), so
clients and tools built for one read the other. The routes beside it (chat, completions,
embeddings, moderations, responses, the native Anthropic route, models) follow. Request
bodies are described loosely on purpose: the proxy forwards fields it does not know.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from asgi_autoproxy._headers import PLAN_HEADERS
from asgi_autoproxy._routing.catalog import BUILTIN_CATALOG

_JSON = "application/json"
_SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *headers: str, schema: str = "Error") -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": _ref(schema)}},
    }
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _request_headers(endpoint_names: Sequence[str] | None) -> list[dict[str, Any]]:
    """The proxy routes' header parameters: those that shape the cache plan, from the one
    table that also drives their parsing and the plan memo, then ``x-request-id``."""
    cache_headers = []
    for header in PLAN_HEADERS:
        schema = copy.deepcopy(dict(header.schema))
        if header.name == b"x-bt-endpoint-name" and endpoint_names is not None:
            schema["enum"] = list(endpoint_names)
        cache_headers.append(
            {
                "name": header.name.decode("ascii"),
                "in": "header",
                "required": False,
                "description": header.description,
                "schema": schema,
            }
        )
    return [
        *cache_headers,
        {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "description": "Kept as the request id when it is 1-128 of [A-Za-z0-9._:-].",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        },
    ]


def _proxy_responses(*, stream: bool = True, errors: str = "Error") -> dict[str, Any]:
    """A proxied route's answers: JSON, or events where the API streams; ``errors``: the
    schema of its error bodies (Anthropic's envelope on the Anthropic route)."""
    content: dict[str, Any] = {_JSON: {"schema": {"type": "object"}}}
    if stream:
        # Before OpenAPI 3.2 an event-stream's schema describes each event.
        content[_SSE] = {"schema": _ref("ServerSentEvent")}
    return {
        "200": {
            "description": "The provider's answer: a JSON object"
            + (
                ", or Server-Sent Events when the request asked for `stream: true`."
                if stream
                else "."
            ),
            "headers": {
                "x-bt-cached": {"$ref": "#/components/headers/x-bt-cached"},
                "x-request-id": {"$ref": "#/components/headers/x-request-id"},
            },
            "content": content,
        },
        "400": _error(
            "Malformed body, unknown model, nesting too deep, or a cache or "
            "x-bt-endpoint-name header value the proxy does not accept.",
            schema=errors,
        ),
        "401": _error(
            "Missing or invalid API key, or an expired, revoked or tampered temporary credential.",
            "www-authenticate",
            schema=errors,
        ),
        "403": _error("A temporary credential used for a model it does not name.", schema=errors),
        "405": _error("Wrong method for this route.", schema=errors),
        "408": _error("The body did not arrive within the proxy's time limit.", schema=errors),
        "413": _error("Body larger than the proxy's limit.", schema=errors),
        "429": _error(
            "Caller over its rate limit, or the provider's.", "retry-after", schema=errors
        ),
        "431": _error("Too many or too large request headers.", schema=errors),
        "503": _error(
            "The proxy has too many upstream requests open.", "retry-after", schema=errors
        ),
        "4XX": _error("The provider refused the request; its status is passed on.", schema=errors),
        "5XX": _error(
            "The provider failed, could not be reached or did not answer in time.", schema=errors
        ),
    }


def _post(
    operation: str,
    summary: str,
    request: str,
    parameters: list[dict[str, Any]],
    *,
    description: str | None = None,
    stream: bool = True,
    errors: str = "Error",
) -> dict[str, Any]:
    post: dict[str, Any] = {
        "tags": ["Proxy"],
        "operationId": operation,
        "summary": summary,
        "parameters": parameters,
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        "responses": _proxy_responses(stream=stream, errors=errors),
    }
    if description is not None:
        post["description"] = description
    return {"post": post}


def _anthropic_headers() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            # Printable ASCII: an HTTP header value upstream can carry nothing else.
            "schema": {"type": "string", "pattern": "^[ -~]*$"},
        }
        for name, description in (
            ("anthropic-version", "Sent upstream as it is (default 2023-06-01)."),
            ("anthropic-beta", "Sent upstream as it is; part of the cache key."),
        )
    ]


def openapi_document(
    path: str = "/v1/proxy/auto",
    *,
    sibling_routes: bool = True,
    endpoint_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    credentials: bool = False,
) -> dict[str, Any]:
    """The description for a middleware built with the same ``path`` and
    ``sibling_routes``; serve it or feed it to an API tester. ``endpoint_names``: the
    providers' names, the values ``x-bt-endpoint-name`` accepts (any other is a 400),
    for every route, or by upstream endpoint (``{"chat": [...], "messages": [...]}``)
    where providers serve different ones; without them, any string. ``credentials``:
    describe ``POST {prefix}/credentials`` too (a middleware with a
    ``credentials_secret``)."""
    from asgi_autoproxy import __version__

    def headers_for(*endpoints: str) -> list[dict[str, Any]]:
        if endpoint_names is None or not isinstance(endpoint_names, Mapping):
            return _request_headers(endpoint_names)
        names = {n: None for e in endpoints for n in endpoint_names.get(e, ())}
        return _request_headers(list(names))

    parameters = headers_for("chat", "completion")

    prefix = path.rsplit("/", 1)[0]
    paths: dict[str, Any] = {
        path: {
            "post": {
                "tags": ["Proxy"],
                "operationId": "proxyauto",
                "summary": "Send a request to chat/completions or completions, chosen by model",
                "description": "The model decides which endpoint serves the request; models "
                "the proxy does not know go by the body's shape (`messages` or `prompt`). "
                "Deterministic requests (temperature 0 or a seed) are cached.",
                "parameters": parameters,
                "requestBody": {
                    "description": "A chat/completions or completions body, depending on "
                    "the model.",
                    "required": True,
                    "content": {_JSON: {"schema": _ref("AutoRequest")}},
                },
                "responses": _proxy_responses(),
            }
        }
    }
    if sibling_routes:
        paths[f"{prefix}/chat/completions"] = {
            "post": {
                "tags": ["Proxy"],
                "operationId": "proxychatcompletions",
                "summary": "Send a chat/completions request",
                "parameters": headers_for("chat"),
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("ChatRequest")}},
                },
                "responses": _proxy_responses(),
            }
        }
        paths[f"{prefix}/completions"] = {
            "post": {
                "tags": ["Proxy"],
                "operationId": "proxycompletions",
                "summary": "Send a legacy completions request",
                "parameters": headers_for("completion"),
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("CompletionRequest")}},
                },
                "responses": _proxy_responses(),
            }
        }
        paths[f"{prefix}/embeddings"] = _post(
            "proxyembeddings",
            "Send an embeddings request",
            "EmbeddingsRequest",
            headers_for("embeddings"),
            description="Cached whatever the temperature, unless `x-bt-use-cache: never` or "
            "`Cache-Control: no-store` says otherwise.",
            stream=False,
        )
        paths[f"{prefix}/moderations"] = _post(
            "proxymoderations",
            "Send a moderations request",
            "ModerationsRequest",
            headers_for("moderations"),
            description="Cached like embeddings.",
            stream=False,
        )
        paths[f"{prefix}/responses"] = _post(
            "proxyresponses",
            "Send a Responses API request",
            "ResponsesRequest",
            headers_for("responses"),
            description="Streams relay the API's named events. Cached like chat (temperature "
            "0 or a `seed`, which is not sent upstream); never with `previous_response_id`, "
            "`conversation` or `store: true`.",
        )
        anthropic = headers_for("messages") + _anthropic_headers()
        for suffix, operation in (
            ("/anthropic/v1/messages", "proxyanthropicmessages"),
            ("/anthropic/messages", "proxyanthropicmessagesshort"),
        ):
            paths[prefix + suffix] = _post(
                operation,
                "Send an Anthropic Messages request, as it is",
                "AnthropicMessagesRequest",
                anthropic,
                description="For the `anthropic` SDK with `base_url` ending in `/anthropic`. "
                "Answers, events and errors are Anthropic's; the key may come as `x-api-key` "
                "or `Authorization: Bearer`.",
                errors="AnthropicError",
            )
        paths[f"{prefix}/models"] = {
            "get": {
                "tags": ["Proxy"],
                "operationId": "proxymodels",
                "summary": "List the models the proxy can route",
                "responses": {
                    "200": {
                        "description": "The model list, in OpenAI's shape.",
                        "content": {_JSON: {"schema": _ref("ModelList")}},
                    },
                    "401": _error("Missing or invalid API key.", "www-authenticate"),
                    "405": _error("Wrong method for this route."),
                    "429": _error("Caller over its rate limit.", "retry-after"),
                    "431": _error("Too many or too large request headers."),
                },
            }
        }
        paths[f"{prefix}/models/{{model}}"] = {
            "get": {
                "tags": ["Proxy"],
                "operationId": "proxymodel",
                "summary": "Describe one model the proxy can route",
                "description": "A model some configured provider serves and the catalog "
                "knows, or lists by name; any other is a 404 in OpenAI's shape.",
                "parameters": [
                    {
                        "name": "model",
                        "in": "path",
                        "required": True,
                        "description": "The model's name; it may contain `/`.",
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The model, in OpenAI's shape.",
                        "content": {_JSON: {"schema": _ref("Model")}},
                    },
                    "401": _error("Missing or invalid API key.", "www-authenticate"),
                    "404": _error("No configured provider serves this model."),
                    "405": _error("Wrong method for this route."),
                    "429": _error("Caller over its rate limit.", "retry-after"),
                    "431": _error("Too many or too large request headers."),
                },
            }
        }
    if credentials:
        paths[f"{prefix}/credentials"] = _credentials_operation()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "asgi_autoproxy",
            "version": __version__,
            "description": "OpenAI-compatible routes served by AutoProxyMiddleware.",
        },
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
        "paths": paths,
        "components": _components(),
    }


def _credentials_operation() -> dict[str, Any]:
    from asgi_autoproxy._gate.credentials import DEFAULT_TTL, MAX_MODEL_LENGTH, MAX_MODELS, MAX_TTL

    name = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_MODEL_LENGTH,
        "pattern": "[^ \\t\\r\\n]",
    }
    return {
        "post": {
            "tags": ["Proxy"],
            "operationId": "proxycredentials",
            "summary": "Issue a temporary credential",
            "description": "A short-lived signed token (a JWT) for the calling caller, usable "
            "as a Bearer key on every route until it expires, for the models it names.",
            "requestBody": {
                "required": False,
                "content": {
                    _JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "model": {
                                    "anyOf": [
                                        name,
                                        {
                                            "type": "array",
                                            "items": name,
                                            "minItems": 1,
                                            "maxItems": MAX_MODELS,
                                        },
                                        {"type": "null"},
                                    ],
                                    "description": "One model, several, or null for any.",
                                },
                                "ttl_seconds": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": MAX_TTL,
                                    "default": DEFAULT_TTL,
                                },
                                "logging": {"description": "Accepted and ignored."},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The temporary credential.",
                    "headers": {"x-request-id": {"$ref": "#/components/headers/x-request-id"}},
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["key"],
                                "properties": {"key": {"type": "string"}},
                            }
                        }
                    },
                },
                "400": _error("Malformed body, or a model or ttl_seconds out of range."),
                "401": _error("Missing or invalid API key.", "www-authenticate"),
                "403": _error("A temporary credential cannot ask for another one."),
                "405": _error("Wrong method for this route."),
                "408": _error("The body did not arrive within the proxy's time limit."),
                "413": _error("Body larger than the proxy's limit."),
                "429": _error("Caller over its rate limit.", "retry-after"),
                "431": _error("Too many or too large request headers."),
                "503": _error(
                    "The revocation list could not be checked, or the proxy is shutting down.",
                    "retry-after",
                ),
            },
        }
    }


def _model(*refused: str) -> dict[str, Any]:
    """A model name; ``/auto`` refuses the built-in catalog's models of the ``refused``
    flavours for this body shape, so a schema-valid request never meets that 400."""
    names = [name for name, flavor in BUILTIN_CATALOG.items() if flavor in refused]
    globs = [name for name in names if any(ch in name for ch in "*?[")]
    # An exact name that a refused glob matches already needs no pattern of its own.
    kept = [n for n in names if n in globs or not any(fnmatch.fnmatchcase(n, g) for g in globs)]
    patterns = [_glob_pattern(name) for name in kept]
    return {
        "type": "string",
        "minLength": 1,
        "pattern": "[^ \\t\\r\\n]",
        "not": {"anyOf": [{"pattern": pattern} for pattern in patterns]},
    }


def _any_model() -> dict[str, Any]:
    """A model name on a route that sends every model to the providers serving it."""
    return {"type": "string", "minLength": 1, "pattern": "[^ \\t\\r\\n]"}


def _text_or_tokens() -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
        ]
    }


def _glob_pattern(glob: str) -> str:
    """A catalog glob (fnmatch: ``*``, ``?``, ``[0-9]``, ``[!0-9]``) as an ECMA-262 pattern."""
    out = ["^"]
    position = 0
    while position < len(glob):
        ch = glob[position]
        end = glob.find("]", position + 2) if ch == "[" else -1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif end != -1:
            inside = glob[position + 1 : end]
            negate = inside.startswith("!")
            body = inside[1:] if negate else inside
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            position = end
        else:
            out.append(_ecma_escape(ch))
        position += 1
    return "".join(out) + "$"


def _ecma_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\^$.|?*+()[]{}" else ch for ch in text)


def _components() -> dict[str, Any]:
    common = {
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "seed": {"type": "integer"},
        "max_tokens": {"type": "integer", "minimum": 1},
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "developer"]},
            "content": {"type": "string"},
        },
    }
    return {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        },
        "headers": {
            "x-bt-cached": {
                "description": "HIT when the answer came from the cache, else MISS.",
                "schema": {"type": "string", "enum": ["HIT", "MISS"]},
            },
            "x-request-id": {
                "description": "The proxy's id for this request.",
                "schema": {"type": "string"},
            },
            "retry-after": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "string"},
            },
            "www-authenticate": {
                "description": "Always `Bearer`.",
                "schema": {"type": "string"},
            },
        },
        "schemas": {
            "ChatRequest": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    **common,
                    "model": _model("embedding", "completion"),
                    "messages": {"type": "array", "minItems": 1, "items": message},
                },
            },
            "CompletionRequest": {
                "type": "object",
                "required": ["model", "prompt"],
                "properties": {
                    **common,
                    "model": _model("embedding", "chat", "responses"),
                    "prompt": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                },
            },
            "ServerSentEvent": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "description": "A JSON chunk, an error object, or [DONE] at the end.",
                    },
                    "event": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                },
            },
            "AutoRequest": {"anyOf": [_ref("ChatRequest"), _ref("CompletionRequest")]},
            "EmbeddingsRequest": {
                "type": "object",
                "required": ["model", "input"],
                "properties": {
                    "model": _any_model(),
                    "input": _text_or_tokens(),
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "dimensions": {"type": "integer", "minimum": 1},
                },
            },
            "ModerationsRequest": {
                "type": "object",
                "required": ["input"],
                "properties": {
                    "model": _any_model(),
                    "input": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                },
            },
            "ResponsesRequest": {
                "type": "object",
                "required": ["model", "input"],
                "properties": {
                    "model": _any_model(),
                    "input": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "object"}},
                        ]
                    },
                    "instructions": {"type": "string"},
                    "stream": {"type": "boolean"},
                    "temperature": common["temperature"],
                    "seed": {
                        "type": "integer",
                        "description": "Enables caching; not sent upstream.",
                    },
                    "max_output_tokens": {"type": "integer", "minimum": 16},
                    "previous_response_id": {"type": "string"},
                    "store": {"type": "boolean"},
                },
            },
            "AnthropicMessagesRequest": {
                "type": "object",
                "required": ["model", "max_tokens", "messages"],
                "properties": {
                    "model": _any_model(),
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "system": {"type": "string"},
                    "stream": {"type": "boolean"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"type": "string", "enum": ["user", "assistant"]},
                                "content": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "AnthropicError": {
                "type": "object",
                "required": ["type", "error"],
                "properties": {
                    "type": {"const": "error"},
                    "error": {
                        "type": "object",
                        "required": ["type", "message"],
                        "properties": {
                            "type": {"type": "string"},
                            "message": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "integer", "null"]},
                        },
                    },
                },
            },
            "ModelList": {
                "type": "object",
                "required": ["object", "data"],
                "properties": {
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": _ref("Model")},
                },
            },
            "Model": {
                "type": "object",
                "required": ["id", "object", "owned_by"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "anyOf": [
                            {
                                "type": "object",
                                "required": ["message"],
                                "properties": {
                                    "message": {"type": "string"},
                                    "type": {"type": ["string", "null"]},
                                    "param": {"type": ["string", "null"]},
                                    "code": {"type": ["string", "integer", "null"]},
                                },
                            },
                            {"type": "string"},
                        ]
                    }
                },
            },
        },
    }
