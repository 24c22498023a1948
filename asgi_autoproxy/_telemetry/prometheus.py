"""Prometheus: the request figures in the text format, served at ``metrics_path``.

Metric names follow Prometheus' conventions, with the ``autoproxy_`` prefix:
``autoproxy_requests_total{route,model,provider,status,cache}``,
``autoproxy_tokens_total{model,type}``, ``autoproxy_request_duration_seconds``,
``autoproxy_time_to_first_chunk_seconds``,
``autoproxy_upstream_attempts_total{provider,outcome}`` and ``autoproxy_cache_entries``.

Under several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client's
multiprocess mode) each worker writes its figures to that directory and whichever
worker is scraped sums them all.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as missing:  # pragma: no cover - the extra's own message
    raise ImportError(
        "metrics_path needs prometheus-client: pip install 'asgi_autoproxy[prometheus]'"
    ) from missing

import anyio

from asgi_autoproxy._asgi import (
    JSON_CONTENT_TYPE,
    Receive,
    Scope,
    Send,
    encode_headers,
    send_response,
)
from asgi_autoproxy._headers import RequestHeaders
from asgi_autoproxy._telemetry.labels import ModelLabels, cache_status
from asgi_autoproxy.errors import ProxyError, unauthorized
from asgi_autoproxy.observability import RequestRecord

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class PrometheusMetrics:
    """The figures of one middleware, and its ``/metrics`` endpoint."""

    def __init__(self, *, token: str | None, cache_entries: Callable[[], int | None]) -> None:
        self._token = None if token is None else token.encode()
        self._cache_entries = cache_entries
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # A registry per middleware, so that two of them in one process do not clash.
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "autoproxy_requests",
            "Requests the proxy served, by route, model, provider, status and cache status.",
            ["route", "model", "provider", "status", "cache"],
            registry=registry,
        )
        self.tokens = Counter(
            "autoproxy_tokens",
            "Tokens the upstreams reported, by model and type (input, output).",
            ["model", "type"],
            registry=registry,
        )
        self.duration = Histogram(
            "autoproxy_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer.",
            ["route", "cache"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.first_chunk = Histogram(
            "autoproxy_time_to_first_chunk_seconds",
            "Seconds until a streamed answer's first chunk went to the caller.",
            ["route", "cache"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "autoproxy_upstream_attempts",
            "Upstream calls, by provider and outcome (ok, error_status, timeout, ...).",
            ["provider", "outcome"],
            registry=registry,
        )
        self.entries = Gauge(
            "autoproxy_cache_entries",
            "Entries in the response cache (memory backends; summed over live workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._models = ModelLabels()
        # Each label set's child, looked up once: ``labels()`` checks and converts its
        # values, and takes a lock, on every call.
        self._requests: dict[tuple[Any, ...], Any] = {}
        self._durations: dict[tuple[Any, ...], Any] = {}
        self._first_chunks: dict[tuple[Any, ...], Any] = {}
        self._tokens: dict[tuple[Any, ...], Any] = {}
        self._attempts: dict[tuple[Any, ...], Any] = {}

    def observe(self, record: RequestRecord) -> None:
        model = self._models(record.model)
        cache = cache_status(record)
        route = record.route
        status = record.status or 0
        _child(
            self._requests, self.requests, (route, model, record.provider or "none", status, cache)
        ).inc()
        _child(self._durations, self.duration, (route, cache)).observe(record.latency_s)
        if record.stream and record.ttfb_s is not None:
            _child(self._first_chunks, self.first_chunk, (route, cache)).observe(record.ttfb_s)
        usage = record.usage
        if usage is not None:
            if usage.prompt_tokens:
                _child(self._tokens, self.tokens, (model, "input")).inc(usage.prompt_tokens)
            if usage.completion_tokens:
                _child(self._tokens, self.tokens, (model, "output")).inc(usage.completion_tokens)
        for attempt in record.attempts:
            _child(self._attempts, self.attempts, (attempt.provider, attempt.outcome)).inc()
        self._read_entries()

    def _read_entries(self) -> None:
        # After every request: a worker that is not scraped must not report a stale size.
        entries = self._cache_entries()
        if entries is not None:
            self.entries.set(entries)

    def exposition(self) -> bytes:
        """The text format: this process's figures, or every worker's in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET metrics_path``: the exposition, behind ``metrics_token`` when one is set."""
        if scope["method"] not in ("GET", "HEAD"):
            await _error(
                send,
                ProxyError(
                    405,
                    f"Method {scope['method']} is not allowed here; use GET.",
                    code="method_not_allowed",
                    headers=[("allow", "GET")],
                ),
            )
            return
        if self._token is not None:
            given = RequestHeaders(scope["headers"]).credential
            # Compared in constant time; the caller's value is never echoed.
            if given is None or not hmac.compare_digest(given.encode(), self._token):
                await _error(
                    send,
                    unauthorized(
                        "This metrics endpoint needs its token: "
                        "send 'Authorization: Bearer <token>'."
                    ),
                )
                return
        self._read_entries()
        if self.multiprocess:  # reads one file per worker: off the event loop
            body = await anyio.to_thread.run_sync(self.exposition)
        else:
            body = self.exposition()
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"cache-control", b"no-store")]
        await send_response(send, 200, b"" if scope["method"] == "HEAD" else body, headers)


def _child(children: dict[tuple[Any, ...], Any], metric: Any, key: tuple[Any, ...]) -> Any:
    try:
        return children[key]
    except KeyError:
        child = children[key] = metric.labels(*(str(value) for value in key))
        return child


async def _error(send: Send, error: ProxyError) -> None:
    await send_response(
        send, error.status, error.to_body(), [JSON_CONTENT_TYPE, *encode_headers(error.headers)]
    )
