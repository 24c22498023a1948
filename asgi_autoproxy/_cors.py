"""CORS for the proxy's own routes, so a page on another origin can call them.

Only the proxy's routes are touched: the middleware asks ``CorsPolicy.gate`` about a
request it serves, and everything else reaches the host app as before, where the app's
own CORS policy (if any) rules. A preflight is answered here; an actual request gets the
``Access-Control-*`` headers on its answer, whole or streamed, since they are added to
the response's start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from asgi_autoproxy._asgi import JSON_CONTENT_TYPE, Message, Scope, Send, send_response
from asgi_autoproxy._headers import PLAN_HEADERS
from asgi_autoproxy.errors import ProxyError

CorsOrigin = str | re.Pattern[str]
"""An exact origin (``https://app.example.com``), ``*``, or a compiled regex matched whole."""

EXPOSED = b"x-bt-cached, x-request-id, x-bt-used-endpoint"
"""The proxy's answer headers a page may read (besides CORS-safelisted ones)."""
_ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "x-api-key",
        "x-request-id",
        "accept",
        "accept-language",
        "content-language",
        *(header.name.decode("ascii") for header in PLAN_HEADERS),
    }
)
_MAX_AGE = b"600"
_ORIGIN_SHAPE = re.compile(r"[a-z][a-z0-9+.\-]*://[^/\s?#]+")


class CorsPolicy:
    """Which origins may call the proxy's routes from a browser; checked at start-up."""

    def __init__(self, origins: Sequence[CorsOrigin], *, allow_credentials: bool = False) -> None:
        if isinstance(origins, str | re.Pattern) or not isinstance(origins, Sequence):
            raise TypeError(
                "cors_origins must be a list of origins, e.g. ['https://app.example.com']"
            )
        if not origins:
            raise ValueError("cors_origins is empty; name an origin, or leave it None (off)")
        exact: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        for origin in origins:
            if isinstance(origin, re.Pattern):
                patterns.append(origin)
            elif isinstance(origin, str) and (origin == "*" or _ORIGIN_SHAPE.fullmatch(origin)):
                exact.add(origin)
            else:
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin. Write scheme://host[:port] "
                    "in lower case, without a path or trailing slash, or '*', or pass "
                    "re.compile(...) for a pattern."
                )
        self.any = "*" in exact
        if self.any and allow_credentials:
            raise ValueError(
                "cors_origins=['*'] with cors_allow_credentials=True is refused: browsers "
                "ignore '*' on credentialed requests, and answering every origin by name "
                "instead would let any site spend the user's session. Name the origins."
            )
        self._exact = frozenset(exact)
        self._patterns = tuple(patterns)
        self._credentials = allow_credentials

    def allowed(self, origin: str) -> bool:
        return (
            self.any
            or origin in self._exact
            or any(pattern.fullmatch(origin) for pattern in self._patterns)
        )

    async def gate(self, scope: Scope, method: str, send: Send) -> Send | None:
        """None when this was a preflight and it has been answered; else the ``send`` to
        answer the request with, adding the CORS headers where the origin is allowed."""
        origin = requested = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                requested = value.decode("latin-1")
        if origin is None:
            return send  # not a cross-origin browser request: nothing to say
        if scope["method"] == "OPTIONS" and requested is not None:
            await self._preflight(scope, origin, requested, method, send)
            return None
        if not self.allowed(origin):
            return send  # answered without CORS headers: the browser keeps it from the page
        added = self._headers(origin)
        added.append((b"access-control-expose-headers", EXPOSED))

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        return cors_send

    def _headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", b"*" if self.any else origin.encode("latin-1"))]
        if not self.any:
            headers.append((b"vary", b"Origin"))
        if self._credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    async def _preflight(
        self, scope: Scope, origin: str, requested: str, method: str, send: Send
    ) -> None:
        if not self.allowed(origin):
            await _refuse(send, 403, "This origin may not call the proxy from a browser.")
            return
        if requested != method:
            await _refuse(send, 405, f"Only {method} is served here.")
            return
        asked = _requested_headers(scope)
        if not asked <= _ALLOWED_HEADERS:
            allowed = ", ".join(sorted(_ALLOWED_HEADERS))
            await _refuse(send, 400, f"A requested header is not accepted; allowed: {allowed}.")
            return
        headers = self._headers(origin)
        headers += [
            (b"access-control-allow-methods", method.encode("ascii")),
            (b"access-control-max-age", _MAX_AGE),
        ]
        if asked:
            headers.append((b"access-control-allow-headers", ", ".join(sorted(asked)).encode()))
        await send_response(send, 200, b"", headers)


def _requested_headers(scope: Scope) -> set[str]:
    names: set[str] = set()
    for name, value in scope["headers"]:
        if name == b"access-control-request-headers":
            names.update(
                part.strip().lower() for part in value.decode("latin-1").split(",") if part.strip()
            )
    return names


async def _refuse(send: Send, status: int, message: str) -> None:
    """A failed preflight: no CORS headers, so the browser refuses the request."""
    error = ProxyError(status, f"CORS preflight refused: {message}", code="cors_refused")
    await send_response(send, status, error.to_body(), [JSON_CONTENT_TYPE, (b"vary", b"Origin")])
