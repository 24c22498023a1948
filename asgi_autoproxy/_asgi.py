"""Small ASGI helpers: read a bounded request body, send whole responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from asgi_autoproxy._deadline import Deadline
from asgi_autoproxy.errors import ProxyError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class ClientDisconnected(Exception):
    """The caller went away; there is nobody left to answer."""


async def serve_lifespan(
    receive: Receive, send: Send, on_startup: Callable[[], None] | None = None
) -> None:
    """Answer a lifespan scope for an app with nothing to stop; ``on_startup`` runs last
    thing at start-up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def route_path(scope: Scope) -> str:
    """The path below ``root_path``, so a mounted app matches its own routes."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body is larger than the proxy's limit of {limit} bytes.",
        code="request_too_large",
    )


def body_timed_out(seconds: float) -> ProxyError:
    return ProxyError(
        408,
        f"The request body did not arrive within {seconds:g} s.",
        code="request_timeout",
        headers=[("connection", "close")],  # the rest of the body is never read
    )


async def read_body(
    receive: Receive, limit: int, content_length: bytes | None, deadline: Deadline | None = None
) -> bytes:
    """Read the whole body, refusing (413) as soon as it passes ``limit`` bytes, or at
    once when the request's ``content_length`` header says it will; and refusing (408)
    when it is not all in before the ``deadline``.

    The deadline is for the whole body, not each message: a client that trickles a
    byte at a time (slow-loris) must not hold a connection and a task for ever. The
    headers before it are the server's to time, and uvicorn does not: its
    ``--timeout-keep-alive`` only runs between requests (h11 at least caps headers at
    16 KiB; httptools, its default when installed, does not cap them at all). In front
    of untrusted clients, put a proxy that times them (nginx's ``client_header_timeout``).
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ProxyError(400, "Invalid Content-Length header.") from None
        if declared > limit:
            raise body_too_large(limit)
    if deadline is None:
        return await _read(receive, limit)
    body = await deadline.run(_read(receive, limit))
    if body is None:
        raise body_timed_out(deadline.seconds)
    return body


async def _read(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnected
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a whole response. ``headers`` must not hold content-length; it is added here."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
