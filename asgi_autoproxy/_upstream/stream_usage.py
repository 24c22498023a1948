"""Token usage on streams: ask the upstream for it where the caller did not.

OpenAI-compatible upstreams report a stream's usage only when the request says
``stream_options.include_usage``; they then send one more chunk, with ``choices: []``,
before ``[DONE]``. The proxy asks for it so that records, metrics and costs have the
figures, and leaves that chunk out of what the caller (and the cache) gets
(``answer_checks.StreamAudit(strip_usage=True)``). Only the body sent upstream changes:
the parsed payload, and so the cache key, stays the caller's.
"""

from __future__ import annotations

from typing import Any

from asgi_autoproxy import _json

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def body_asking_for_usage(payload: dict[str, Any], body: bytes) -> bytes | None:
    """``body`` with ``stream_options.include_usage`` set, or None where nothing needs to
    change: not a stream, or the caller asked for usage (or said no) itself."""
    if payload.get("stream") is not True:
        return None
    options = payload.get("stream_options")
    if options is None and "stream_options" not in payload:
        # The common case: splice the field in after the opening brace, so the rest of
        # the body goes upstream byte for byte (and without a second serialisation).
        start = body.find(b"{")
        return body[: start + 1] + _INCLUDE_USAGE + body[start + 1 :]
    if not isinstance(options, dict) or "include_usage" in options:
        return None  # the caller's choice, or a value the upstream will judge
    return _json.dumps({**payload, "stream_options": {**options, "include_usage": True}})
