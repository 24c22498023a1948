"""OpenTelemetry's SDK with in-memory exporters, and ways to read what they hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


@dataclass
class Otel:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def keywords(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def requests(self) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.kind is SpanKind.SERVER]

    def attempts_of(self, request: ReadableSpan) -> list[ReadableSpan]:
        assert request.context is not None
        return sorted(
            (
                s
                for s in self.finished()
                if s.parent is not None and s.parent.span_id == request.context.span_id
            ),
            key=lambda s: s.start_time or 0,
        )

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


def make_otel() -> Otel:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return Otel(tracer_provider, MeterProvider(metric_readers=[reader]), spans, reader)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def with_attributes(points: Sequence[Any], **wanted: Any) -> list[Any]:
    """Data points whose attributes include ``wanted`` (dots written as ``__``)."""
    expected = {k.replace("__", "."): v for k, v in wanted.items()}
    return [p for p in points if all(p.attributes.get(k) == v for k, v in expected.items())]
