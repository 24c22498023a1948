"""``AutoProxyMiddleware``: the ASGI plumbing.

Flow: match the path, read and validate the body, route the model to an endpoint
and provider, call upstream, and relay the answer (whole or as SSE). Everything
the middleware does not serve goes to the wrapped app untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx

from . import _json
from .asgi import (
    JSON_CONTENT_TYPE,
    ASGIApp,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    encode_headers,
    read_body,
    route_path,
    send_response,
)
from .clients import DEFAULT_TIMEOUT, SharedClients, TransportChoice, default_client_factory
from .dispatch import Dispatcher
from .errors import (
    ProxyError,
    bad_request,
    internal_error,
    unauthorized,
    upstream_stream_broken,
    upstream_timeout,
    upstream_unreachable,
)
from .headers import caller_credential, get_header
from .providers.base import Endpoint, Provider, UpstreamRequest, UpstreamResponse
from .routing import ModelRouter
from .sse import EventSplitter, error_event, is_done, is_error

logger = logging.getLogger("asgi_autoproxy")

RouteKind = Literal["auto", "chat", "completion", "models"]
_ROUTE_METHODS: dict[RouteKind, str] = {
    "auto": "POST",
    "chat": "POST",
    "completion": "POST",
    "models": "GET",
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024


@dataclass(slots=True)
class _Call:
    """Per-request state; never kept on the middleware."""

    request_id: str
    started: bool = False


class AutoProxyMiddleware:
    """Serve ``POST {path}`` (and sibling OpenAI routes) inside any ASGI app.

    ``providers`` are tried in order: the first whose model patterns match serves the
    request. See the README for every keyword.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        providers: Sequence[Provider],
        path: str = "/v1/proxy/auto",
        model_catalog: Mapping[str, str] | None = None,
        sibling_routes: bool = True,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
        http_transport: TransportChoice = "auto",
    ) -> None:
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"path must start with '/' and not end with one, got {path!r}")
        if max_body_size <= 0:
            raise ValueError("max_body_size must be a positive number of bytes")
        self.app = app
        self.router = ModelRouter(providers, model_catalog)
        self.max_body_size = max_body_size
        self._routes: dict[str, RouteKind] = {path: "auto"}
        if sibling_routes:
            prefix = path.rsplit("/", 1)[0]
            self._routes[f"{prefix}/chat/completions"] = "chat"
            self._routes[f"{prefix}/completions"] = "completion"
            self._routes[f"{prefix}/models"] = "models"
        if timeout is None:
            client_timeout = DEFAULT_TIMEOUT
        elif isinstance(timeout, httpx.Timeout):
            client_timeout = timeout
        else:
            client_timeout = httpx.Timeout(timeout)
        self._dispatcher = Dispatcher()
        self._clients = SharedClients(
            client=http_client, factory=default_client_factory(client_timeout, http_transport)
        )

    # -- ASGI entry point -------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = self._routes.get(route_path(scope))
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
        elif kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return lifespan_send

    async def aclose(self) -> None:
        """Close the HTTP client the middleware made (an injected one is left open)."""
        await self._clients.aclose()

    # -- one proxied request ------------------------------------------------------------

    async def _serve(self, route: RouteKind, scope: Scope, receive: Receive, send: Send) -> None:
        call = _Call(request_id=_request_id(scope))
        try:
            if scope["method"] != _ROUTE_METHODS[route]:
                raise ProxyError(
                    405,
                    f"Method {scope['method']} is not allowed here; use {_ROUTE_METHODS[route]}.",
                    code="method_not_allowed",
                    headers=[("allow", _ROUTE_METHODS[route])],
                )
            if route == "models":
                await self._send_json(call, send, 200, _json.dumps(self._models_body()))
                return
            body = await read_body(scope, receive, self.max_body_size)
            payload = _parse_payload(body)
            model = payload["model"]
            endpoint: Endpoint = (
                self.router.auto_endpoint(model, payload) if route == "auto" else route
            )
            candidates = self.router.candidates(model, endpoint)
            credential = caller_credential(scope["headers"])
            if credential is None and any(p.needs_caller_credential for p in candidates):
                raise unauthorized(
                    "Missing API key: send 'Authorization: Bearer <key>'; "
                    f"provider {candidates[0].name!r} forwards the caller's key."
                )
            request = UpstreamRequest(
                endpoint=endpoint,
                model=model,
                payload=payload,
                body=body,
                stream=payload.get("stream") is True,
                credential=credential,
                request_id=call.request_id,
            )
            await self._proxy(call, candidates, request, receive, send)
        except ClientDisconnected:
            return
        except ProxyError as error:
            await self._send_error(call, send, error)
        except Exception:
            logger.exception("unexpected error while proxying request %s", call.request_id)
            await self._send_error(call, send, internal_error())

    async def _proxy(
        self,
        call: _Call,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        receive: Receive,
        send: Send,
    ) -> None:
        """Call upstream and relay, abandoning both if the caller disconnects."""
        disconnected = False
        failure: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                nonlocal disconnected
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        disconnected = True
                        group.cancel_scope.cancel()
                        return

            group.start_soon(watch_disconnect)
            try:
                await self._exchange(call, candidates, request, send)
            except Exception as exc:
                # Raised outside the group so callers see it bare, not in an ExceptionGroup.
                failure = exc
            finally:
                group.cancel_scope.cancel()
        if disconnected:
            logger.info("client disconnected from request %s", call.request_id)
            return
        if failure is not None:
            raise failure

    async def _exchange(
        self, call: _Call, candidates: Sequence[Provider], request: UpstreamRequest, send: Send
    ) -> None:
        provider, response = await self._dispatcher.send(candidates, request, self._clients.get())
        try:
            if request.stream and response.status == 200 and response.is_event_stream:
                await self._relay_stream(call, provider, response, send)
            else:
                await self._relay_whole(call, provider, response, send)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _relay_whole(
        self, call: _Call, provider: Provider, response: UpstreamResponse, send: Send
    ) -> None:
        try:
            body = await response.read()
        except httpx.TimeoutException:
            raise upstream_timeout(provider.name) from None
        except httpx.TransportError:
            raise upstream_unreachable(provider.name) from None
        status = response.status
        headers = response.headers
        if status >= 400 and not _is_openai_error(body):
            body = ProxyError(
                status,
                f"Provider {provider.name!r} answered HTTP {status} without an OpenAI-style "
                "error body.",
                type="upstream_error",
                code=f"upstream_{status}",
            ).to_body()
            headers = [(k, v) for k, v in headers if k != "content-type"]
            headers.append(("content-type", "application/json"))
        call.started = True
        await send_response(send, status, body, self._response_headers(call, headers))

    async def _relay_stream(
        self, call: _Call, provider: Provider, response: UpstreamResponse, send: Send
    ) -> None:
        headers = list(_SSE_HEADERS)
        headers.extend(
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers
            if k != "content-type"
        )
        headers.append((b"x-request-id", call.request_id.encode()))
        call.started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        splitter = EventSplitter()
        finished = False  # [DONE] or an upstream error event ended the stream
        broken: str | None = None
        try:
            async for chunk in response.chunks:
                events = splitter.feed(chunk)
                if not events:
                    continue
                for event in events:
                    if is_done(event) or is_error(event):
                        finished = True
                await send(
                    {
                        "type": "http.response.body",
                        "body": events[0] if len(events) == 1 else b"".join(events),
                        "more_body": True,
                    }
                )
        except httpx.TimeoutException:
            broken = "no data arrived within the read timeout"
        except httpx.TransportError:
            broken = "the connection was lost"
        if broken is None and not finished:
            broken = "it closed before sending [DONE]"
        tail = b""
        if broken is not None:
            logger.warning(
                "stream from provider %r broke for request %s: %s",
                provider.name,
                call.request_id,
                broken,
            )
            tail = error_event(upstream_stream_broken(provider.name, broken).to_dict())
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- responses ----------------------------------------------------------------------

    def _response_headers(
        self, call: _Call, headers: Sequence[tuple[str, str]]
    ) -> list[tuple[bytes, bytes]]:
        encoded = encode_headers(headers)
        encoded.append((b"x-request-id", call.request_id.encode()))
        return encoded

    async def _send_json(self, call: _Call, send: Send, status: int, body: bytes) -> None:
        call.started = True
        await send_response(send, status, body, [JSON_CONTENT_TYPE, *self._id_header(call)])

    @staticmethod
    def _id_header(call: _Call) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", call.request_id.encode())]

    async def _send_error(self, call: _Call, send: Send, error: ProxyError) -> None:
        if call.started:
            # Too late for a status: the stream already ended or carries its own error.
            return
        headers = [JSON_CONTENT_TYPE, *encode_headers(error.headers), *self._id_header(call)]
        call.started = True
        await send_response(send, error.status, error.to_body(), headers)

    def _models_body(self) -> dict[str, Any]:
        now = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": now, "owned_by": owner}
                for model, owner in self.router.listed_models().items()
            ],
        }


def _request_id(scope: Scope) -> str:
    given = get_header(scope["headers"], b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _parse_payload(body: bytes) -> dict[str, Any]:
    if not body:
        raise bad_request("Request body is empty; send a JSON object with a 'model'.")
    try:
        payload = _json.loads(body)
    except _json.JSONDecodeError:
        raise bad_request("Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise bad_request("Missing required field 'model'.", param="model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("Field 'model' must be a non-empty string.", param="model")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("Field 'stream' must be true or false.", param="stream")
    return payload


def _is_openai_error(body: bytes) -> bool:
    try:
        parsed = _json.loads(body)
    except _json.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), (dict, str))
