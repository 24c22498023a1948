"""Sending one request to one of several candidate providers.

The middleware hands over the providers that serve the model, in configured order,
and gets back the one that answered with its response. Load balancing, failover,
retries and cool-down live here, so the middleware stays plumbing.

Rules, in short:

- The order of attempts comes from ``load_balancing``: ``"ordered"`` (primary, then
  fallbacks), ``"round_robin"`` or ``"weighted"`` (weighted random, no repeats).
- Connection errors, timeouts, 429 and 5xx move on to the next provider; any other
  status (2xx, 3xx, other 4xx) is the answer. A failed response's body is read,
  bounded, and the connection released before the next attempt.
- After every provider failed, ``RetryPolicy.max_retries`` further passes follow, each
  after an exponential, jittered backoff, or the upstream's ``Retry-After`` up to a cap.
  No attempt starts after the policy's ``deadline``.
- A whole (non-streaming) answer is read here, so a connection lost mid-body fails over
  too; one past ``max_response_size`` does not, it is a 502 at once. A stream is
  returned after its first SSE data event: an upstream that answers
  200 and then at once an error event still fails over. Once the middleware starts
  relaying, nothing fails over any more: the caller may have seen bytes. With a sole
  provider and no retries there is nothing to fail over to, so a stream is returned as
  soon as its headers arrive: the caller gets them while the first event is read.
- A provider that fails ``Cooldown.after_failures`` times in a row is tried last for
  ``Cooldown.seconds``, so requests stop paying its timeout while healthy ones exist.
- An ``AttemptObserver`` passed to ``send`` hears of each attempt as it starts and ends
  (the request record, and a child span when tracing is on); nothing here knows more.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import anyio

from asgi_autoproxy._http.client_types import UpstreamClient
from asgi_autoproxy._http.errors import timeout_errors, transport_errors
from asgi_autoproxy._shared.state import SharedState
from asgi_autoproxy._sse import EventSplitter, event_data, is_error
from asgi_autoproxy._upstream.shared_health import ProviderHealth, SharedHealth
from asgi_autoproxy.errors import ProxyError, ResponseTooLarge, bad_request, upstream_too_large
from asgi_autoproxy.observability import AttemptOutcome
from asgi_autoproxy.providers.base import Provider, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("asgi_autoproxy")

LoadBalancing = Literal["ordered", "round_robin", "weighted"]
_LOAD_BALANCING: frozenset[str] = frozenset(get_args(LoadBalancing))

# A failed answer's body is kept for the caller if every provider fails; bigger ones are
# cut, since error bodies are small and the connection must be drained anyway.
_MAX_FAILED_BODY = 64 * 1024
# How far to read into a stream looking for its first data event.
_MAX_PEEK = 256 * 1024


class AttemptObserver(Protocol):
    """Hears of each upstream attempt (``observability.RequestTrace`` is one)."""

    def attempt_started(self, provider: str, request: UpstreamRequest) -> None: ...

    def attempt_ended(self, provider: str, status: int | None, outcome: AttemptOutcome) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When to try again after every candidate provider failed.

    ``max_retries`` counts extra passes over the providers. It defaults to 0 because the
    caller's SDK usually retries too, and retries on both sides multiply. Failover to
    another provider needs no retries and is always on.
    """

    max_retries: int = 0
    backoff: float = 0.5
    """Seconds before the first retry; doubles for each later one, with full jitter."""
    max_backoff: float = 8.0
    max_retry_after: float = 30.0
    """An upstream's ``Retry-After`` is honoured up to this many seconds."""
    deadline: float = 60.0
    """No new attempt starts this many seconds after the first one did."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("RetryPolicy.max_retries must be 0 or more")
        for name in ("backoff", "max_backoff", "max_retry_after", "deadline"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cooldown:
    """Set aside a provider that keeps failing, so requests stop paying its timeout.

    A cooled-down provider is still tried, last, when no other one is left. ``clock``
    is injectable so tests need no sleeping.
    """

    after_failures: int = 3
    seconds: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        if self.after_failures < 1:
            raise ValueError("Cooldown.after_failures must be 1 or more")
        if not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise ValueError("Cooldown.seconds must be a finite number >= 0")


@dataclass(slots=True)
class _Failure:
    provider: Provider
    reason: str
    outcome: AttemptOutcome
    response: UpstreamResponse | None = None
    timed_out: bool = False
    retry_after: float | None = None


class Dispatcher:
    """Picks, tries and, when needed, replaces the provider for each request."""

    def __init__(
        self,
        *,
        load_balancing: LoadBalancing = "ordered",
        weights: Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
        cooldown: Cooldown | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        provider_names: Sequence[str] | None = None,
        shared: SharedState | None = None,
    ) -> None:
        """``shared``: where cool-downs and round-robin turns are shared across instances
        (``_upstream/shared_health.py``); None keeps them in this process."""
        if load_balancing not in _LOAD_BALANCING:
            raise ValueError(
                f"load_balancing must be one of {sorted(_LOAD_BALANCING)}, got {load_balancing!r}"
            )
        self.load_balancing = load_balancing
        self.weights = dict(weights or {})
        for name, weight in self.weights.items():
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"weights[{name!r}] must be a finite number >= 0, got {weight}")
        if provider_names is not None:
            unknown = sorted(set(self.weights) - set(provider_names))
            if unknown:
                raise ValueError(
                    f"weights names unknown providers {unknown}; known: {sorted(provider_names)}"
                )
        self.retry = retry or RetryPolicy()
        self.cooldown = cooldown
        # Cool-down only ever reorders several providers; one alone has no one to yield to.
        self._sole_provider = provider_names is not None and len(provider_names) == 1
        self._sleep = sleep
        self._rng = rng or random.Random()
        policy = cooldown or Cooldown()
        after, seconds = policy.after_failures, policy.seconds if cooldown is not None else 0.0
        self.health: ProviderHealth = (
            ProviderHealth(after_failures=after, seconds=seconds, clock=policy.clock)
            if shared is None
            else SharedHealth(shared, after_failures=after, seconds=seconds, clock=policy.clock)
        )

    # -- public -------------------------------------------------------------------------

    async def send(
        self,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        client: UpstreamClient,
        observer: AttemptObserver | None = None,
    ) -> tuple[Provider, UpstreamResponse]:
        if request.endpoint_name is not None:
            candidates = [_pinned(candidates, request)]
        policy = self.retry
        started = time.monotonic()
        last: _Failure | None = None
        tried: list[str] = []
        peek = not (self._sole_provider and policy.max_retries == 0)
        if self.cooldown is not None and len(candidates) > 1:
            await self.health.refresh([p.name for p in candidates])
        for attempt_round in range(policy.max_retries + 1):
            if attempt_round:
                delay = self._delay(attempt_round, last)
                if time.monotonic() + delay - started > policy.deadline:
                    break
                await self._sleep(delay)
            for provider in await self._order(candidates):
                if (attempt_round or tried) and time.monotonic() - started > policy.deadline:
                    break
                if observer is not None:
                    observer.attempt_started(provider.name, request)
                try:
                    outcome = await self._attempt(provider, request, client, peek=peek)
                except BaseException as exc:
                    if observer is not None:
                        observer.attempt_ended(provider.name, None, _raised(exc))
                    raise
                if observer is not None:
                    _observe_outcome(observer, provider, outcome)
                if isinstance(outcome, UpstreamResponse):
                    await self.health.succeeded(provider.name)
                    return provider, outcome
                await self._failed(provider)
                tried.append(f"{provider.name!r} ({outcome.reason})")
                logger.warning(
                    "provider %r failed for request %s: %s",
                    provider.name,
                    request.request_id,
                    outcome.reason,
                )
                last = outcome
        assert last is not None, "at least one attempt always runs"
        if last.response is not None:
            # The caller gets the last upstream's own error, status and body.
            return last.provider, last.response
        raise _all_failed(tried, timed_out=last.timed_out)

    # -- one attempt --------------------------------------------------------------------

    async def _attempt(
        self,
        provider: Provider,
        request: UpstreamRequest,
        client: UpstreamClient,
        *,
        peek: bool,
    ) -> UpstreamResponse | _Failure:
        """The provider's usable answer, or why it failed in a way worth failing over;
        ``peek`` reads a stream up to its first data event, so that one can."""
        response: UpstreamResponse | None = None
        try:
            response = await provider.send(request, client)
            if _should_fail_over(response.status):
                return await _failed_response(provider, response)
            if request.stream and response.status == 200 and response.is_event_stream:
                return await _peeked(provider, response) if peek else response
            body = await response.read(request.max_response_size)
            await response.aclose()
            return UpstreamResponse.from_bytes(
                response.status, body, response.headers, called=response.called
            )
        except ResponseTooLarge as exceeded:
            # Not a failure to fail over from: the same request would likely get the same.
            await _close_quietly(response)
            raise upstream_too_large(provider.name, exceeded) from None
        except timeout_errors():
            await _close_quietly(response)
            return _Failure(provider, "timed out", "timeout", timed_out=True)
        except transport_errors() as exc:
            await _close_quietly(response)
            return _Failure(provider, f"connection failed: {type(exc).__name__}", "connect_error")
        except BaseException:
            await _close_quietly(response)
            raise

    # -- ordering and health --------------------------------------------------------------

    async def _order(self, candidates: Sequence[Provider]) -> list[Provider]:
        if len(candidates) == 1:
            return list(candidates)
        if self.load_balancing == "round_robin":
            turn = await self.health.turn(tuple(p.name for p in candidates))
            ordered = [*candidates[turn:], *candidates[:turn]]
        elif self.load_balancing == "weighted":
            ordered = self._weighted_order(candidates)
        else:
            ordered = list(candidates)
        if self.cooldown is None:
            return ordered
        now = self.cooldown.clock()
        healthy = [p for p in ordered if not self._cooling(p, now)]
        if len(healthy) == len(ordered):
            return ordered
        return healthy + [p for p in ordered if self._cooling(p, now)]

    def _weighted_order(self, candidates: Sequence[Provider]) -> list[Provider]:
        """A weighted random permutation: each next pick is proportional to weight.

        Providers with weight 0 are stand-bys: only tried after all the others.
        """

        def sort_key(provider: Provider) -> float:
            weight = self.weights.get(provider.name, 1.0)
            if weight == 0:
                return -math.inf
            # Efraimidis-Spirakis: the largest u**(1/w) wins; logs keep it stable.
            return math.log(self._rng.random() or 1e-300) / weight

        return sorted(candidates, key=sort_key, reverse=True)

    def _cooling(self, provider: Provider, now: float) -> bool:
        return self.health.cooling(provider.name, now)

    async def _failed(self, provider: Provider) -> None:
        if self.cooldown is None:
            return
        if await self.health.failed(provider.name):
            logger.warning(
                "provider %r cooled down for %.0f s after repeated failures",
                provider.name,
                self.cooldown.seconds,
            )

    def _delay(self, attempt_round: int, last: _Failure | None) -> float:
        policy = self.retry
        ceiling = min(policy.max_backoff, policy.backoff * 2 ** (attempt_round - 1))
        delay = self._rng.uniform(0, ceiling)
        if last is not None and last.retry_after is not None:
            delay = max(delay, min(last.retry_after, policy.max_retry_after))
        return delay


def _raised(exc: BaseException) -> AttemptOutcome:
    if isinstance(exc, ProxyError):
        return "too_large" if exc.code == "upstream_response_too_large" else "error"
    return "cancelled" if not isinstance(exc, Exception) else "error"


def _observe_outcome(
    observer: AttemptObserver, provider: Provider, outcome: UpstreamResponse | _Failure
) -> None:
    if isinstance(outcome, UpstreamResponse):
        observer.attempt_ended(provider.name, outcome.status, "ok")
    else:
        status = None if outcome.response is None else outcome.response.status
        observer.attempt_ended(provider.name, status, outcome.outcome)


def _should_fail_over(status: int) -> bool:
    return status == 429 or status >= 500


def _pinned(candidates: Sequence[Provider], request: UpstreamRequest) -> Provider:
    for provider in candidates:
        if provider.name == request.endpoint_name:
            return provider
    names = ", ".join(repr(p.name) for p in candidates)
    # The header's value is not echoed: callers do paste keys into the wrong header.
    raise bad_request(
        f"x-bt-endpoint-name names no provider that serves model {request.model!r} on the "
        f"{request.endpoint} endpoint; it must be one of: {names}.",
        code="unknown_endpoint_name",
    )


async def _failed_response(provider: Provider, response: UpstreamResponse) -> _Failure:
    """Drain (bounded) and close a 429/5xx answer, keeping it for the caller."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.chunks:
            if size < _MAX_FAILED_BODY:
                parts.append(chunk)
            size += len(chunk)
            if size >= _MAX_FAILED_BODY:
                break
    except transport_errors():
        pass  # the status already says it failed
    finally:
        await response.aclose()
    body = b"".join(parts)[:_MAX_FAILED_BODY]
    kept = UpstreamResponse.from_bytes(
        response.status, body, response.headers, called=response.called
    )
    return _Failure(
        provider,
        f"HTTP {response.status}",
        "error_status",
        response=kept,
        retry_after=_retry_after(response.headers),
    )


async def _peeked(provider: Provider, response: UpstreamResponse) -> UpstreamResponse | _Failure:
    """Read up to the first SSE data event; an error there still allows failover."""
    splitter = EventSplitter()
    buffered: list[bytes] = []
    size = 0
    chunks = response.chunks
    async for chunk in chunks:
        buffered.append(chunk)
        size += len(chunk)
        first = next((e for e in splitter.feed(chunk) if event_data(e)), None)
        if first is not None:
            if is_error(first):
                await response.aclose()
                failure = UpstreamResponse.from_bytes(
                    200, b"".join(buffered), response.headers, called=response.called
                )
                return _Failure(
                    provider, "error event before any data", "error_event", response=failure
                )
            break
        if size > _MAX_PEEK:
            break
    return UpstreamResponse(
        status=response.status,
        headers=response.headers,
        chunks=_replay(buffered, chunks),
        aclose=response.aclose,
        called=response.called,
    )


async def _replay(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield b"".join(head)
    async for chunk in rest:
        yield chunk


async def _close_quietly(response: UpstreamResponse | None) -> None:
    if response is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await response.aclose()
        except Exception:  # closing a broken connection may fail; it is gone either way
            logger.debug("closing a failed upstream response raised", exc_info=True)


def _retry_after(headers: Sequence[tuple[str, str]]) -> float | None:
    for name, value in headers:
        if name != "retry-after":
            continue
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def _all_failed(tried: list[str], *, timed_out: bool) -> ProxyError:
    summary = "; ".join(tried)
    if timed_out:
        return ProxyError(
            504,
            f"No upstream answered in time. Tried: {summary}.",
            type="upstream_error",
            code="upstream_timeout",
        )
    return ProxyError(
        502,
        f"Could not reach any upstream. Tried: {summary}. Try again later.",
        type="upstream_error",
        code="upstream_unreachable",
    )
