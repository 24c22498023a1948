"""OpenTelemetry: a span per request, a child span per upstream attempt, GenAI metrics.

Names follow OpenTelemetry's GenAI semantic conventions: the request span is
``{operation} {model}`` (``chat gpt-4o``, ``text_completion davinci-002``), with
``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model`` and ``gen_ai.usage.*``; the proxy's own facts carry the
``autoproxy.`` prefix (cache status, the endpoint used). The span continues the
caller's W3C ``traceparent``; each attempt's ``traceparent`` and ``tracestate`` go
upstream on its request. Prompts go on spans only with ``capture_content``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as missing:  # pragma: no cover - the extra's own message
    raise ImportError(
        "OpenTelemetry support needs opentelemetry-api: pip install 'asgi_autoproxy[otel]'"
    ) from missing

from asgi_autoproxy._headers import RequestHeaders
from asgi_autoproxy._telemetry.hub import TelemetryOptions
from asgi_autoproxy._telemetry.labels import (
    OPERATIONS,
    ModelLabels,
    cache_status,
    operation,
    provider_systems,
)
from asgi_autoproxy.observability import Attempt, RequestRecord, TraceListener
from asgi_autoproxy.providers.base import Provider

_W3C = TraceContextTextMapPropagator()
_SCOPE = "asgi_autoproxy"
# The conventions' advised buckets for these histograms.
_TOKEN_BUCKETS = [4**n for n in range(14)]
_SECONDS_BUCKETS = [0.01 * 2**n for n in range(14)]


class OTelRequests:
    """The tracer and instruments, made once per middleware."""

    def __init__(self, options: TelemetryOptions, providers: Sequence[Provider]) -> None:
        from asgi_autoproxy import __version__

        self.tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=options.tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=options.meter_provider)
        self.capture_content = options.capture_content
        self.systems = provider_systems(providers)
        self.models = ModelLabels()
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per upstream answer, by gen_ai.token.type.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Seconds from a request's arrival to the end of its answer.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Seconds until a streamed answer's first chunk went to the caller.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.requests = meter.create_counter(
            "autoproxy.requests",
            unit="{request}",
            description="Requests served, by route, model, provider, status and cache status.",
        )
        self.attempts = meter.create_counter(
            "autoproxy.upstream.attempts",
            unit="{attempt}",
            description="Upstream calls, by provider and outcome (failover, retries).",
        )

    def start(self, method: str, route: str, headers: RequestHeaders) -> RequestSpan:
        parent = None
        if headers.trace_context:
            parent = _W3C.extract(dict(headers.trace_context))
        span = self.tracer.start_span(
            OPERATIONS.get(route, route),  # renamed once the model is known
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"autoproxy.route": route, "http.request.method": method},
        )
        return RequestSpan(self, span)

    def finish(self, listener: TraceListener | None, record: RequestRecord) -> None:
        attributes: dict[str, Any] = {
            "autoproxy.route": record.route,
            "autoproxy.cache_status": cache_status(record),
        }
        op = operation(record)
        if op is not None:
            attributes["gen_ai.operation.name"] = op
        if record.model is not None:
            attributes["gen_ai.request.model"] = record.model
        if record.provider is not None:
            attributes["gen_ai.provider.name"] = self.systems.get(record.provider, record.provider)
            attributes["autoproxy.used_endpoint"] = record.provider
        if record.response_model is not None:
            attributes["gen_ai.response.model"] = record.response_model
        usage = record.usage
        if usage is not None:
            _put(attributes, "gen_ai.usage.input_tokens", usage.prompt_tokens)
            _put(attributes, "gen_ai.usage.output_tokens", usage.completion_tokens)
            _put(attributes, "gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
            _put(attributes, "gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
        error = record.error
        if error is None and record.status is not None and record.status >= 400:
            error = str(record.status)
        if isinstance(listener, RequestSpan):
            self._end_span(listener, record, attributes, error)
        self._measure(record, attributes, error)

    def _end_span(
        self,
        listener: RequestSpan,
        record: RequestRecord,
        attributes: dict[str, Any],
        error: str | None,
    ) -> None:
        span = listener.span
        if record.model is not None:
            span.update_name(
                f"{attributes.get('gen_ai.operation.name', record.route)} {record.model}"
            )
        span.set_attributes(attributes)
        span.set_attribute("autoproxy.request_id", record.request_id)
        span.set_attribute("gen_ai.request.stream", record.stream)
        if record.status is not None:
            span.set_attribute("http.response.status_code", record.status)
        if record.finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [record.finish_reason])
        if record.ttfb_s is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", record.ttfb_s)
        if record.cost_usd is not None:
            span.set_attribute("autoproxy.cost_usd", record.cost_usd)
        if record.client_disconnected:
            span.set_attribute("autoproxy.client_disconnected", True)
        if error is not None:
            span.set_attribute("error.type", error)
            if record.status is None or record.status >= 500 or record.error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def _measure(
        self, record: RequestRecord, attributes: dict[str, Any], error: str | None
    ) -> None:
        # Metric attributes stay low-cardinality: no request id, a bounded model set.
        common: dict[str, Any] = {
            k: v
            for k, v in attributes.items()
            if k
            in (
                "gen_ai.operation.name",
                "gen_ai.provider.name",
                "autoproxy.cache_status",
                "autoproxy.route",
            )
        }
        if record.model is not None:
            common["gen_ai.request.model"] = self.models(record.model)
        if record.response_model is not None:
            common["gen_ai.response.model"] = self.models(record.response_model)
        timed = dict(common)
        if error is not None:
            timed["error.type"] = error
        self.duration.record(record.latency_s, timed)
        if record.stream and record.ttfb_s is not None:
            self.first_chunk.record(record.ttfb_s, common)
        usage = record.usage
        if usage is not None:
            if usage.prompt_tokens is not None:
                self.token_usage.record(
                    usage.prompt_tokens, {**common, "gen_ai.token.type": "input"}
                )
            if usage.completion_tokens is not None:
                self.token_usage.record(
                    usage.completion_tokens, {**common, "gen_ai.token.type": "output"}
                )
        self.requests.add(
            1,
            {
                "autoproxy.route": record.route,
                "autoproxy.model": self.models(record.model),
                "autoproxy.provider": record.provider or "none",
                "autoproxy.status": record.status or 0,
                "autoproxy.cache_status": cache_status(record),
            },
        )

    def abandon(self, listener: TraceListener) -> None:
        if isinstance(listener, RequestSpan):
            listener.span.set_status(Status(StatusCode.ERROR, "cancelled"))
            listener.span.end()


class RequestSpan:
    """One request's span, and the child span of its upstream attempt in progress."""

    __slots__ = ("_attempt", "_content_done", "_owner", "_token", "span")

    def __init__(self, owner: OTelRequests, span: trace.Span) -> None:
        self._owner = owner
        self.span = span
        self._attempt: trace.Span | None = None
        self._token: object | None = None
        self._content_done = False

    def attempt_started(self, provider: str, request: Any) -> None:
        owner = self._owner
        op = OPERATIONS.get(request.endpoint, request.endpoint)
        child = owner.tracer.start_span(
            f"{op} {request.model}",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": owner.systems.get(provider, provider),
                "gen_ai.request.model": request.model,
                "autoproxy.used_endpoint": provider,
            },
        )
        self._attempt = child
        attempt_context = trace.set_span_in_context(child)
        # Current while the provider calls, so that an instrumented HTTP client (and
        # our own headers below) carry this attempt's context.
        self._token = otel_context.attach(attempt_context)
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=attempt_context)
        request.trace_context = tuple(carrier.items())
        if owner.capture_content and not self._content_done:
            self._content_done = True
            self.span.set_attribute("gen_ai.input.messages", _input_messages(request.payload))

    def attempt_ended(self, attempt: Attempt) -> None:
        child, token = self._attempt, self._token
        self._attempt = self._token = None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        self._owner.attempts.add(
            1, {"autoproxy.provider": attempt.provider, "autoproxy.outcome": attempt.outcome}
        )
        if child is None:
            return
        child.set_attribute("autoproxy.attempt.outcome", attempt.outcome)
        if attempt.status is not None:
            child.set_attribute("http.response.status_code", attempt.status)
        if attempt.outcome != "ok":
            child.set_attribute("error.type", attempt.outcome)
            child.set_status(Status(StatusCode.ERROR, attempt.outcome))
        child.end()


def _put(attributes: dict[str, Any], name: str, value: int | None) -> None:
    if value is not None:
        attributes[name] = value


def _input_messages(payload: dict[str, Any]) -> str:
    """The request's messages (or prompt) as JSON, for ``gen_ai.input.messages``."""
    found = payload.get("messages", payload.get("prompt"))
    try:
        return json.dumps(found, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(found)
