"""Remembered cache plans: a request seen before goes to its cache entry unparsed.

Eval reruns send the same bytes again and again. The first time, the middleware parses
the body, routes it and derives the entry key (its "plan"). It then files that plan
under everything the plan was derived from: the route, the caller's cache scope, the
request headers that shape it (``PLAN_HEADERS``, and those a route may pass upstream,
``FORWARDABLE``, in ``_headers.py``) and a hash of the raw body. The next identical
request finds the plan by that digest and, when the entry is there, is answered without
being parsed. A request whose plan is not remembered, or whose entry is gone, takes the
full path, so nothing is served that the full path would refuse.

Authentication, rate limits, header limits and the body size limit run before the
lookup, as for any request. The caller's cache scope, and whether it sent a key, are
part of the digest, so one caller's plan never points another caller at its entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from asgi_autoproxy._headers import RequestHeaders

new_hash: Callable[[bytes], Any]
try:  # the `fast` extra: BLAKE3 hashes a 1 MB body about 4x faster than SHA-256 here.
    # Digests never leave the process, so installs with and without it need not agree.
    from blake3 import blake3

    new_hash = blake3
except ImportError:  # pragma: no cover - exercised when the extra is absent
    new_hash = hashlib.sha256

Plan = TypeVar("Plan")

DEFAULT_MAX_PLANS = 2048


RequestDigest = tuple[str, str, bool, tuple[str | None, ...], tuple[tuple[str, str], ...], bytes]


def request_digest(
    route: str, caller: str, with_credential: bool, headers: RequestHeaders, body: bytes
) -> RequestDigest:
    """What a plan depends on: the small fields as they are, the body hashed.

    ``with_credential``: whether the caller sent a key, which decides whether a provider
    that forwards callers' keys may answer; with shared entries, ``caller`` alone would
    not tell. A tuple, not one hash over everything: it saves serialising the fields and
    copying the body on every request. ``headers.plan``: the values of every header in
    ``PLAN_HEADERS``, the one table of the headers that shape a plan, so none is left out;
    ``headers.forwardable``: the headers a route may pass upstream (``anthropic-beta``),
    which change the entry key where it does.
    """
    plan, passed = headers.plan, headers.forwardable
    return (route, caller, with_credential, plan, passed, new_hash(body).digest())


class PlanMemo(Generic[Plan]):
    """At most ``max_plans`` plans; the oldest filed goes first when full."""

    def __init__(self, max_plans: int = DEFAULT_MAX_PLANS) -> None:
        if max_plans < 1:
            raise ValueError(f"max_plans must be at least 1, got {max_plans}")
        self.max_plans = max_plans
        self._plans: dict[RequestDigest, Plan] = {}
        self.found = 0
        """Lookups that found a plan (whether or not its entry was still cached)."""

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, digest: RequestDigest) -> Plan | None:
        plan = self._plans.get(digest)
        if plan is not None:
            self.found += 1
        return plan

    def put(self, digest: RequestDigest, plan: Plan) -> None:
        plans = self._plans
        if digest not in plans and len(plans) >= self.max_plans:
            del plans[next(iter(plans))]
        plans[digest] = plan
