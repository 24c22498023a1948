"""``--log-format json``: one JSON object per log line, for log shippers.

A request's line (``asgi_autoproxy.requests``) carries its request id, caller id,
route, model, provider, status, cache status, duration and tokens as fields of their
own; any other line has the time, level, logger and message. Never a key or a prompt:
the request record holds neither.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# The request record's fields that go on a request's line, in this order.
_REQUEST_FIELDS = (
    "request_id",
    "caller_id",
    "method",
    "route",
    "endpoint",
    "model",
    "response_model",
    "provider",
    "status",
    "cache_status",
    "stream",
    "duration_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "finish_reason",
    "cost",
    "attempts",
    "credential_id",
    "error",
    "client_disconnected",
)


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON (used through ``logging.config``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        if "request_id" in fields and "latency_s" in fields:
            fields = {
                **fields,
                "duration_ms": round(fields["latency_s"] * 1000, 3),
                "ttfb_ms": None
                if fields.get("ttfb_s") is None
                else round(fields["ttfb_s"] * 1000, 3),
            }
            for name in _REQUEST_FIELDS:
                line[name] = fields.get(name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))
