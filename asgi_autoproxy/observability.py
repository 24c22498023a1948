"""One record per proxied request, for the user's ``on_request`` hook and for logging.

The record says what was asked (route, model), who answered (provider, status,
cache, each upstream attempt), how long it took and what it cost (token usage, dollars
where the catalog has a price); never a key or a prompt. A hook that raises is logged
and ignored: observability must not break a request.

``RequestTrace`` is the per-request notebook the pipeline writes in; the record, the
OpenTelemetry span and the Prometheus figures (``_telemetry/``) are all read from it.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, Protocol

from asgi_autoproxy._routing.pricing import Price

CacheStatus = Literal["HIT", "MISS", "COALESCED"]
AttemptOutcome = Literal[
    "ok",
    "error_status",
    "error_event",
    "timeout",
    "connect_error",
    "too_large",
    "error",
    "cancelled",
]

request_logger = logging.getLogger("asgi_autoproxy.requests")
_hook_logger = logging.getLogger("asgi_autoproxy")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens as the upstream reported them (any may be missing)."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_prompt_tokens: int | None = None
    """Prompt tokens read from the provider's prompt cache (``prompt_tokens_details``)."""
    reasoning_tokens: int | None = None
    """Completion tokens spent on hidden reasoning (``completion_tokens_details``)."""

    @classmethod
    def parse(cls, usage: object) -> TokenUsage | None:
        """From an OpenAI ``usage`` object; None when there is none."""
        if not isinstance(usage, dict):
            return None
        found = cls(
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
            _count(usage.get("total_tokens")),
            _detail(usage, "prompt_tokens_details", "cached_tokens"),
            _detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
        if found == _NO_USAGE:
            return None
        return found


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: dict[str, Any], group: str, name: str) -> int | None:
    details = usage.get(group)
    return _count(details.get(name)) if isinstance(details, dict) else None


_NO_USAGE = TokenUsage(None, None, None)


class Attempt(NamedTuple):
    """One call to one upstream, in the order they were made (failover, retries).

    A named tuple: one is made per upstream call, and it is the cheapest to make."""

    provider: str
    status: int | None
    """The upstream's HTTP status; None when no answer came (timeout, connection)."""
    duration_s: float
    """Seconds until the answer's head (a stream's first data event) or the failure."""
    outcome: AttemptOutcome
    """ok (the answer used), error_status (429/5xx), error_event (a stream that began with
    an error), timeout, connect_error, too_large, error (the provider raised), or
    cancelled (the caller left)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request the proxy served (not the ones it passed on)."""

    request_id: str
    method: str
    route: str
    """Which of the proxy's routes: auto, chat, completion, models, credentials,
    embeddings, moderations, responses or anthropic."""
    endpoint: str | None
    """The upstream endpoint (chat, completion, chat_via_responses, embeddings,
    moderations, responses or messages) once the request was understood."""
    model: str | None
    provider: str | None
    """The provider that answered; None when none did (cache hit, refused, unreachable)."""
    status: int | None
    """The status sent to the caller; None when the caller left before any answer."""
    stream: bool
    """True when the answer went out as Server-Sent Events."""
    cache: CacheStatus | None
    """HIT, MISS, COALESCED (joined an identical request in flight); None when not cacheable."""
    latency_s: float
    ttfb_s: float | None
    """Seconds until the first event of a streamed answer reached the caller."""
    usage: TokenUsage | None
    """Tokens billed upstream for this request; None for hits, followers and when unreported."""
    error: str | None
    """The code of the error the proxy reported, in the status or in the stream."""
    client_disconnected: bool
    """The caller left before the whole answer was sent."""
    caller_id: str | None
    cost: float | None = None
    """US dollars billed upstream for this request, from ``usage`` and the catalog's
    price for the model; None when either is unknown (hits and followers included)."""
    credential_id: str | None = None
    """The ``jti`` of the temporary credential used, if one was (never the token itself)."""
    response_model: str | None = None
    """The model the upstream says answered (often a dated version of ``model``)."""
    finish_reason: str | None = None
    """Why the (first choice of the) answer ended: stop, length, tool_calls..."""
    attempts: tuple[Attempt, ...] = ()
    """Each upstream call made for this request; empty for hits and followers."""

    @property
    def time_to_first_chunk_s(self) -> float | None:
        """The same as ``ttfb_s``: for streams, when the first event went out."""
        return self.ttfb_s

    def log_fields(self) -> dict[str, Any]:
        """Flat fields for ``logging``'s ``extra=`` (names chosen not to clash with it)."""
        fields = asdict(self)
        usage = fields.pop("usage")
        for name in _USAGE_FIELDS:
            fields[name] = None if usage is None else usage[name]
        fields["cache_status"] = fields.pop("cache")
        fields["attempts"] = [
            {
                "provider": a.provider,
                "status": a.status,
                "duration_s": a.duration_s,
                "outcome": a.outcome,
            }
            for a in self.attempts
        ]
        return fields


_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
)


class TraceListener(Protocol):
    """Told of a request's upstream attempts as they happen (``_telemetry/`` makes a
    child span of each, and puts its trace context on the upstream request)."""

    def attempt_started(self, provider: str, request: Any) -> None: ...

    def attempt_ended(self, attempt: Attempt) -> None: ...

    def answered(self, answer: dict[str, Any]) -> None:
        """A whole 2xx answer arrived (for ``capture_content``)."""
        ...


class RequestTrace:
    """Mutable per-request notes, turned into a ``RequestRecord`` when the request ends."""

    __slots__ = (
        "_attempt_at",
        "attempts",
        "cache",
        "completed",
        "endpoint",
        "error",
        "finish_reason",
        "first_byte_at",
        "listener",
        "model",
        "price",
        "provider",
        "response_model",
        "started_at",
        "status",
        "streaming",
        "usage",
    )

    def __init__(self) -> None:
        self.started_at = time.perf_counter()
        self.first_byte_at: float | None = None
        self.endpoint: str | None = None
        self.model: str | None = None
        self.price: Price | None = None
        """The model's price, where the catalog knows it: gives the record its cost."""
        self.provider: str | None = None
        self.status: int | None = None
        self.streaming = False
        self.completed = False
        """The whole answer reached the caller (its last body message was sent)."""
        self.cache: CacheStatus | None = None
        self.usage: TokenUsage | None = None
        self.error: str | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self.attempts: list[Attempt] | None = None
        self._attempt_at = 0.0
        self.listener: TraceListener | None = None
        """Set by ``_telemetry`` when tracing is on; None costs nothing."""

    # -- written by the pipeline and the dispatcher --------------------------------------

    def answered(self, answer: dict[str, Any], usage: TokenUsage | None) -> None:
        """Notes a whole 2xx JSON answer: its ``usage`` (as its API reports it), model and
        finish reason."""
        self.usage = usage
        if self.listener is not None:
            self.listener.answered(answer)
        model = answer.get("model")
        if isinstance(model, str):
            self.response_model = model
        choices = answer.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = reason

    def attempt_started(self, provider: str, request: Any) -> None:
        self._attempt_at = time.perf_counter()
        if self.listener is not None:
            self.listener.attempt_started(provider, request)

    def attempt_ended(self, provider: str, status: int | None, outcome: AttemptOutcome) -> None:
        attempt = Attempt(provider, status, time.perf_counter() - self._attempt_at, outcome)
        if self.attempts is None:
            self.attempts = [attempt]
        else:
            self.attempts.append(attempt)
        if self.listener is not None:
            self.listener.attempt_ended(attempt)

    def record(
        self,
        *,
        request_id: str,
        method: str,
        route: str,
        caller_id: str | None,
        credential_id: str | None = None,
    ) -> RequestRecord:
        now = time.perf_counter()
        first = self.first_byte_at
        return RequestRecord(
            request_id=request_id,
            method=method,
            route=route,
            endpoint=self.endpoint,
            model=self.model,
            provider=self.provider,
            status=self.status,
            stream=self.streaming,
            cache=self.cache,
            latency_s=now - self.started_at,
            ttfb_s=None if first is None or not self.streaming else first - self.started_at,
            usage=self.usage,
            error=self.error,
            client_disconnected=not self.completed,
            caller_id=caller_id,
            credential_id=credential_id,
            cost=self._cost(),
            response_model=self.response_model,
            finish_reason=self.finish_reason,
            attempts=() if self.attempts is None else tuple(self.attempts),
        )

    def _cost(self) -> float | None:
        usage, price = self.usage, self.price
        if usage is None or price is None:
            return None
        return price.cost(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cached_input_tokens=usage.cached_prompt_tokens,
        )


RequestHook = Callable[[RequestRecord], "Awaitable[None] | None"]


class RequestReporter:
    """Sends each record to the hook and to the ``asgi_autoproxy.requests`` logger."""

    def __init__(self, hook: RequestHook | None) -> None:
        if hook is not None and not callable(hook):
            raise TypeError(f"on_request must be a callable taking a RequestRecord, got {hook!r}")
        self._hook = hook

    @property
    def enabled(self) -> bool:
        """False when nobody listens, so the record is never built."""
        return self._hook is not None or request_logger.isEnabledFor(logging.INFO)

    async def report(self, record: RequestRecord) -> None:
        if request_logger.isEnabledFor(logging.INFO):
            request_logger.info(
                "%s %s model=%s provider=%s status=%s cache=%s %.1f ms",
                record.method,
                record.route,
                record.model,
                record.provider,
                record.status,
                record.cache,
                record.latency_s * 1000,
                extra=record.log_fields(),
            )
        if self._hook is None:
            return
        try:
            result = self._hook(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _hook_logger.exception(
                "on_request hook failed for request %s; the request itself was served",
                record.request_id,
            )
