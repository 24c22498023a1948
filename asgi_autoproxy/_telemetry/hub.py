"""``Telemetry``: what the middleware calls at a request's start and end.

Built only when something is turned on; each side imports its library only then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgi_autoproxy._cache.backends.base import CacheBackend
from asgi_autoproxy._headers import RequestHeaders
from asgi_autoproxy.observability import RequestRecord, TraceListener
from asgi_autoproxy.providers.base import Provider

if TYPE_CHECKING:
    from asgi_autoproxy._telemetry.otel import OTelRequests
    from asgi_autoproxy._telemetry.prometheus import PrometheusMetrics

logger = logging.getLogger("asgi_autoproxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryOptions:
    """The middleware's telemetry keywords, checked and gathered."""

    opentelemetry: bool = False
    tracer_provider: Any = None
    meter_provider: Any = None
    capture_content: bool = False
    metrics_path: str | None = None
    metrics_token: str | None = None

    @property
    def wants_otel(self) -> bool:
        return (
            self.opentelemetry
            or self.tracer_provider is not None
            or self.meter_provider is not None
        )


class Telemetry:
    """Spans and metrics for each request; see the package docstring."""

    def __init__(self, otel: OTelRequests | None, prometheus: PrometheusMetrics | None) -> None:
        self.otel = otel
        self.prometheus = prometheus

    def start(self, method: str, route: str, headers: RequestHeaders) -> TraceListener | None:
        """Opens the request's span; the listener it returns goes on ``call.trace``."""
        if self.otel is None:
            return None
        try:
            return self.otel.start(method, route, headers)
        except Exception:  # a broken tracer must not break the request
            logger.exception("starting a span failed; this request goes untraced")
            return None

    def finish(self, listener: TraceListener | None, record: RequestRecord) -> None:
        # Observability must not break a request: a failing exporter is logged only.
        try:
            if self.otel is not None:
                self.otel.finish(listener, record)
            if self.prometheus is not None:
                self.prometheus.observe(record)
        except Exception:
            logger.exception("recording telemetry failed for request %s", record.request_id)

    def abandon(self, listener: TraceListener | None) -> None:
        """The request was cancelled from outside before it could be recorded."""
        if self.otel is not None and listener is not None:
            self.otel.abandon(listener)


def build_telemetry(
    options: TelemetryOptions,
    *,
    providers: Sequence[Provider],
    cache_entries: Callable[[], int | None],
) -> Telemetry | None:
    """None when everything is off, so that the request path pays nothing."""
    if options.metrics_path is not None:
        path = options.metrics_path
        if not path.startswith("/") or (path.endswith("/") and path != "/"):
            raise ValueError(f"metrics_path must start with '/' and not end with one, got {path!r}")
    if options.metrics_token is not None and options.metrics_path is None:
        raise ValueError("metrics_token guards metrics_path: set metrics_path='/metrics' too")
    if options.metrics_token == "":
        raise ValueError("metrics_token must not be empty; leave it None for an open endpoint")
    if options.capture_content and not options.wants_otel:
        raise ValueError(
            "capture_content puts prompts on OpenTelemetry spans: pass opentelemetry=True "
            "(or tracer_provider=) as well"
        )
    otel = prometheus = None
    if options.wants_otel:
        from asgi_autoproxy._telemetry.otel import OTelRequests

        otel = OTelRequests(options, providers)
    if options.metrics_path is not None:
        from asgi_autoproxy._telemetry.prometheus import PrometheusMetrics

        prometheus = PrometheusMetrics(token=options.metrics_token, cache_entries=cache_entries)
    if otel is None and prometheus is None:
        return None
    return Telemetry(otel, prometheus)


def log_startup(
    path: str,
    providers: Sequence[Provider],
    cache: CacheBackend | None,
    telemetry: Telemetry | None,
) -> None:
    """One line naming what an embedded proxy serves: its path, providers and cache."""
    if not logger.isEnabledFor(logging.INFO):
        return
    names = ", ".join(f"{p.name} ({type(p).__name__})" for p in providers)
    extras = []
    if telemetry is not None and telemetry.otel is not None:
        extras.append("; OpenTelemetry on")
    if telemetry is not None and telemetry.prometheus is not None:
        extras.append("; Prometheus metrics on")
    logger.info(
        "asgi_autoproxy serving POST %s; providers: %s; cache: %s%s",
        path,
        names,
        "off" if cache is None else type(cache).__name__,
        "".join(extras),
    )
