"""asgi_autoproxy as the benchmark runs it, configured from the environment.

``BENCH_UPSTREAM``: upstream base URL. ``BENCH_CACHE=1``: the in-memory cache on
(otherwise off). ``BENCH_REDIS``: a ``RedisCache`` at that URL instead (and with it the
shared state). ``BENCH_RATE_LIMIT=1``: a per-caller rate limit, checked, never
reached. ``BENCH_GC_FREEZE=1``: start-up ends with ``freeze_startup_heap``, as in the
CLI. ``BENCH_TRANSPORT``: ``auto`` (default), ``aiohttp``, ``httpx``, or ``httpx-aiohttp``
(the ``httpx_aiohttp`` package's transport, for comparison).
``BENCH_TELEMETRY=1``: OpenTelemetry on (the SDK's tracer and meter providers, spans
through a batch processor to an exporter that drops them, metrics read by a periodic
reader) and Prometheus metrics at ``/metrics``: what telemetry costs a request.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import httpx

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, freeze_startup_heap
from asgi_autoproxy._asgi import serve_lifespan
from bench.loop_report import report_loop


def cache_supported() -> bool:
    return "cache" in inspect.signature(AutoProxyMiddleware.__init__).parameters


def start_up_with_freeze() -> None:
    report_loop()
    freeze_startup_heap()


async def not_found(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        freeze = os.environ.get("BENCH_GC_FREEZE") == "1"
        await serve_lifespan(receive, send, start_up_with_freeze if freeze else report_loop)
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"not found"})


def telemetry_options() -> dict[str, Any]:
    """OpenTelemetry's SDK with no-op exporters, and the Prometheus endpoint."""
    from collections.abc import Sequence

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **_: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
            return None

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=10_000)
    return {
        "tracer_provider": tracer_provider,
        "meter_provider": MeterProvider(metric_readers=[reader]),
        "metrics_path": "/metrics",
    }


def build() -> AutoProxyMiddleware:
    options: dict[str, Any] = {}
    if os.environ.get("BENCH_TELEMETRY") == "1":
        options.update(telemetry_options())
    if cache_supported():
        if os.environ.get("BENCH_CACHE") == "1":
            from asgi_autoproxy._cache.backends.memory import MemoryCache  # type: ignore[import-not-found]

            max_bytes = int(os.environ.get("BENCH_CACHE_MAX_BYTES", 256 * 1024 * 1024))
            options["cache"] = MemoryCache(max_bytes=max_bytes, max_entries=1_000_000)
        else:
            options["cache"] = None
    if os.environ.get("BENCH_REDIS"):  # bench/shared.py: the cache and limits in Redis
        from asgi_autoproxy import RedisCache

        options["cache"] = RedisCache(os.environ["BENCH_REDIS"], prefix="bench:")
    if os.environ.get("BENCH_RATE_LIMIT"):  # checked on every request, never reached
        from asgi_autoproxy import RateLimit

        options["rate_limit"] = RateLimit(requests_per_second=1e6, burst=10**9)
    transport = os.environ.get("BENCH_TRANSPORT", "auto")
    if transport == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        options["http_client"] = httpx.AsyncClient(
            transport=AiohttpTransport(limits=httpx.Limits(max_connections=512)), timeout=60
        )
    else:
        options["http_transport"] = transport
    provider = OpenAIProvider(base_url=os.environ["BENCH_UPSTREAM"], api_key="sk-bench")
    options["allow_anonymous"] = True  # a private loopback proxy, like the baseline
    # path="/v1/auto" puts the sibling chat route at /v1/chat/completions, like the others.
    return AutoProxyMiddleware(not_found, providers=[provider], path="/v1/auto", **options)


app = build()
