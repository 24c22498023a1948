"""OpenAI-shaped errors: the exception the proxy raises and the JSON body it answers with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asgi_autoproxy import _json


class ProxyError(Exception):
    """An error the proxy answers with instead of a traceback.

    The message goes to the caller, so it must never contain a secret.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = tuple(headers)

    def to_dict(self) -> dict[str, Any]:
        return error_dict(self.message, type=self.type, code=self.code, param=self.param)

    def to_body(self) -> bytes:
        return _json.dumps(self.to_dict())


def error_dict(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def unauthorized(message: str) -> ProxyError:
    return ProxyError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers=[("www-authenticate", "Bearer")],
    )


def upstream_unreachable(provider: str) -> ProxyError:
    return ProxyError(
        502,
        f"Could not reach the upstream of provider {provider!r}. Try again later.",
        type="upstream_error",
        code="upstream_unreachable",
    )


def upstream_timeout(provider: str) -> ProxyError:
    return ProxyError(
        504,
        f"The upstream of provider {provider!r} did not answer in time.",
        type="upstream_error",
        code="upstream_timeout",
    )


def upstream_stream_broken(provider: str, reason: str) -> ProxyError:
    return ProxyError(
        502,
        f"The stream from provider {provider!r} ended early: {reason}.",
        type="upstream_error",
        code="upstream_stream_error",
    )


class ResponseTooLarge(Exception):
    """An upstream answer, or one SSE event of a stream, passed the proxy's size bound.

    Raised by ``UpstreamResponse.read`` and ``EventSplitter.feed`` as soon as the bound
    is passed, so that nothing past it is read or kept. ``events``: from ``feed``, the
    whole events that came before the oversized one in the same chunk.
    """

    def __init__(self, limit: int, what: str = "answer", events: list[bytes] | None = None) -> None:
        super().__init__(f"upstream {what} larger than {limit} bytes")
        self.limit = limit
        self.what = what
        self.events = events or []


def upstream_too_large(provider: str, exceeded: ResponseTooLarge) -> ProxyError:
    return ProxyError(
        502,
        f"Provider {provider!r} sent an {exceeded.what} larger than the proxy's limit of "
        f"{exceeded.limit} bytes.",
        type="upstream_error",
        code="upstream_response_too_large",
    )


def client_too_slow(max_lag: int) -> ProxyError:
    return ProxyError(
        503,
        "This stream was shared with identical requests and this client fell more than "
        f"{max_lag} bytes behind the fastest of them, so it was cut. Read faster or retry.",
        type="server_error",
        code="client_too_slow",
    )


def internal_error() -> ProxyError:
    return ProxyError(
        500,
        "The proxy hit an unexpected error. It has been logged; try again.",
        type="server_error",
        code="internal_error",
    )


def upstream_invalid_response(provider: str, what: str) -> ProxyError:
    return ProxyError(
        502,
        f"Provider {provider!r} sent an answer the proxy could not use: {what}.",
        type="upstream_error",
        code="upstream_invalid_response",
    )


def server_shutting_down() -> ProxyError:
    return ProxyError(
        503,
        "The server is shutting down and cut this request short; retry it.",
        type="server_error",
        code="server_shutting_down",
        headers=[("retry-after", "1")],
    )
