"""Traces and metrics, read from each request's ``observability.RequestTrace``.

Off by default, and then nothing here is imported beyond this module: the middleware
holds ``None`` and the request path pays one ``is None``. Turned on, ``Telemetry``
opens an OpenTelemetry span when a request starts (``otel.py``), hears of each upstream
attempt through the trace's listener, and at the end hands the ``RequestRecord`` to the
span and to the Prometheus figures (``prometheus.py``). The pipeline itself knows
nothing of either.
"""

from __future__ import annotations

from asgi_autoproxy._telemetry.hub import (
    Telemetry,
    TelemetryOptions,
    build_telemetry,
    log_startup,
)

__all__ = ["Telemetry", "TelemetryOptions", "build_telemetry", "log_startup"]
