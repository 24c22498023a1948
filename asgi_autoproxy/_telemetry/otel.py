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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
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
# The counters' attributes, in the order of their keys in ``OTelRequests._counts``.
_REQUEST_KEYS = (
    "autoproxy.route",
    "autoproxy.model",
    "autoproxy.provider",
    "autoproxy.status",
    "autoproxy.cache_status",
)
_ATTEMPT_KEYS = ("autoproxy.provider", "autoproxy.outcome")


class OTelRequests:
    """The tracer and instruments, made once per middleware.

    Kept cheap per request: the SDK's cost is mostly per call and per attribute, so each
    span gets its attributes in one call, and the two counters are observable, counted
    in a dict here and read by the SDK only when it collects.
    """

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
        self.request_counts: dict[tuple[Any, ...], int] = {}
        self.attempt_counts: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "autoproxy.requests",
            callbacks=[_observe(self.request_counts, _REQUEST_KEYS)],
            unit="{request}",
            description="Requests served, by route, model, provider, status and cache status.",
        )
        meter.create_observable_counter(
            "autoproxy.upstream.attempts",
            callbacks=[_observe(self.attempt_counts, _ATTEMPT_KEYS)],
            unit="{attempt}",
            description="Upstream calls, by provider and outcome (failover, retries).",
        )

    def start(self, method: str, route: str, headers: RequestHeaders) -> RequestSpan:
        parent = None
        if headers.trace_context:
            parent = _W3C.extract(dict(headers.trace_context))
        # Named by the route for now; renamed, and given its attributes, at the end.
        span = self.tracer.start_span(OPERATIONS.get(route, route), parent, SpanKind.SERVER)
        return RequestSpan(self, span, method)

    def finish(self, listener: TraceListener | None, record: RequestRecord) -> None:
        op = operation(record)
        cache = cache_status(record)
        provider = record.provider
        system = None if provider is None else self.systems.get(provider, provider)
        error = record.error
        if error is None and record.status is not None and record.status >= 400:
            error = str(record.status)
        if isinstance(listener, RequestSpan):
            self._end_span(listener, record, op, system, cache, error)
        # Metric attributes stay low-cardinality: no request id, a bounded set of models.
        # The histograms carry the conventions' attributes only (the SDK's cost grows
        # with each); route and cache status are the counter's.
        model = self.models(record.model)
        common: dict[str, Any] = {}
        if op is not None:
            common["gen_ai.operation.name"] = op
        if system is not None:
            common["gen_ai.provider.name"] = system
        if record.model is not None:
            common["gen_ai.request.model"] = model
        if record.response_model is not None:
            common["gen_ai.response.model"] = self.models(record.response_model)
        if error is not None:
            self.duration.record(record.latency_s, {**common, "error.type": error})
        else:
            self.duration.record(record.latency_s, common)
        if record.stream and record.ttfb_s is not None:
            self.first_chunk.record(record.ttfb_s, common)
        usage = record.usage
        if usage is not None:
            if usage.prompt_tokens is not None:
                common["gen_ai.token.type"] = "input"
                self.token_usage.record(usage.prompt_tokens, common)
            if usage.completion_tokens is not None:
                # A new dict: the SDK may keep the one it was given.
                self.token_usage.record(
                    usage.completion_tokens, {**common, "gen_ai.token.type": "output"}
                )
        key = (record.route, model, provider or "none", record.status or 0, cache)
        counts = self.request_counts
        counts[key] = counts.get(key, 0) + 1

    def _end_span(
        self,
        listener: RequestSpan,
        record: RequestRecord,
        op: str | None,
        system: str | None,
        cache: str,
        error: str | None,
    ) -> None:
        span = listener.span
        attributes: dict[str, Any] = {
            "autoproxy.route": record.route,
            "autoproxy.cache_status": cache,
            "autoproxy.request_id": record.request_id,
            "http.request.method": listener.method,
            "gen_ai.request.stream": record.stream,
        }
        if op is not None:
            attributes["gen_ai.operation.name"] = op
        if record.model is not None:
            attributes["gen_ai.request.model"] = record.model
            span.update_name(f"{op or record.route} {record.model}")
        if system is not None:
            attributes["gen_ai.provider.name"] = system
            attributes["autoproxy.used_endpoint"] = record.provider
        if record.response_model is not None:
            attributes["gen_ai.response.model"] = record.response_model
        usage = record.usage
        if usage is not None:
            _put(attributes, "gen_ai.usage.input_tokens", usage.prompt_tokens)
            _put(attributes, "gen_ai.usage.output_tokens", usage.completion_tokens)
            _put(attributes, "gen_ai.usage.cache_read.input_tokens", usage.cached_prompt_tokens)
            _put(attributes, "gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
        if record.status is not None:
            attributes["http.response.status_code"] = record.status
        if record.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (record.finish_reason,)
        if record.ttfb_s is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = record.ttfb_s
        if record.cost is not None:
            attributes["autoproxy.cost_usd"] = record.cost
        if record.client_disconnected:
            attributes["autoproxy.client_disconnected"] = True
        if listener.content is not None:
            attributes["gen_ai.input.messages"] = listener.content
        if listener.output is not None:
            attributes["gen_ai.output.messages"] = listener.output
        if error is not None:
            attributes["error.type"] = error
            if record.status is None or record.status >= 500 or record.error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.set_attributes(attributes)
        span.end()

    def abandon(self, listener: TraceListener) -> None:
        if isinstance(listener, RequestSpan):
            listener.span.set_status(Status(StatusCode.ERROR, "cancelled"))
            listener.span.end()


def _observe(
    counts: dict[Any, int], names: tuple[str, ...]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        # Runs in the reader's thread: a copy is atomic, iterating the live dict is not.
        return [
            Observation(count, dict(zip(names, key, strict=True)))
            for key, count in counts.copy().items()
        ]

    return callback


class RequestSpan:
    """One request's span, and the child span of its upstream attempt in progress."""

    __slots__ = ("_attempt", "_owner", "_token", "content", "method", "output", "span")

    def __init__(self, owner: OTelRequests, span: trace.Span, method: str) -> None:
        self._owner = owner
        self.span = span
        self.method = method
        self._attempt: trace.Span | None = None
        self._token: object | None = None
        self.content: str | None = None
        """The prompt, with ``capture_content`` only."""
        self.output: str | None = None
        """A whole answer's choices, with ``capture_content`` only."""

    def attempt_started(self, provider: str, request: Any) -> None:
        owner = self._owner
        op = OPERATIONS.get(request.endpoint, request.endpoint)
        parent = trace.set_span_in_context(self.span)
        child = owner.tracer.start_span(
            f"{op} {request.model}",
            parent,
            SpanKind.CLIENT,
            {
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": owner.systems.get(provider, provider),
                "gen_ai.request.model": request.model,
                "autoproxy.used_endpoint": provider,
            },
        )
        self._attempt = child
        # Current while the provider calls, so that an instrumented HTTP client carries
        # this attempt's context too.
        self._token = otel_context.attach(trace.set_span_in_context(child, parent))
        ids = child.get_span_context()
        traceparent = f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"
        state = ids.trace_state
        request.trace_context = (
            (("traceparent", traceparent), ("tracestate", state.to_header()))
            if state
            else (("traceparent", traceparent),)
        )
        if owner.capture_content and self.content is None:
            self.content = _input_messages(request.payload)

    def answered(self, answer: dict[str, Any]) -> None:
        if self._owner.capture_content:
            self.output = _json_text(answer.get("choices", answer.get("output")))

    def attempt_ended(self, attempt: Attempt) -> None:
        child, token = self._attempt, self._token
        self._attempt = self._token = None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        counts = self._owner.attempt_counts
        key = (attempt.provider, attempt.outcome)
        counts[key] = counts.get(key, 0) + 1
        if child is None:
            return
        attributes: dict[str, Any] = {"autoproxy.attempt.outcome": attempt.outcome}
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        if attempt.outcome != "ok":
            attributes["error.type"] = attempt.outcome
            child.set_status(Status(StatusCode.ERROR, attempt.outcome))
        child.set_attributes(attributes)
        child.end()


def _put(attributes: dict[str, Any], name: str, value: int | None) -> None:
    if value is not None:
        attributes[name] = value


def _input_messages(payload: dict[str, Any]) -> str:
    """The request's messages (or prompt, or input) as JSON, for ``gen_ai.input.messages``."""
    return _json_text(payload.get("messages", payload.get("prompt", payload.get("input"))))


def _json_text(found: object) -> str:
    try:
        return json.dumps(found, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(found)
