"""What a provider may offer beyond ``Provider``'s ``name``, ``serves`` and ``send``.

Each optional member is a capability of its own, a one-member protocol checked with
``isinstance``; a provider without it gets the default written here. The middleware reads
them once, when it is built, through the functions below and nowhere else.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from asgi_autoproxy._protocols import what_it_lacks
from asgi_autoproxy.providers.base import Endpoint, Provider

_REQUIRED = ("name", "serves", "send")
ALL_ENDPOINTS: frozenset[Endpoint] = frozenset(("chat", "completion"))


@runtime_checkable
class ListsModels(Protocol):
    """Names or glob patterns of the models served; ``/models`` lists the literal ones.

    Without it ``/models`` still lists the catalog's models that ``serves`` accepts.
    """

    @property
    def models(self) -> Sequence[str]: ...


@runtime_checkable
class ServesEndpoints(Protocol):
    """The endpoints the provider can serve; without it, chat and completion."""

    @property
    def endpoints(self) -> Collection[Endpoint]: ...


@runtime_checkable
class ForwardsCallerKey(Protocol):
    """True when the caller's own key is sent upstream (the provider holds none), so a
    request without one is refused with 401. Without it, False: the provider holds its
    own key, and the middleware asks for ``api_keys``, ``authenticate`` or
    ``allow_anonymous``, as for any provider with a server-side key."""

    @property
    def needs_caller_credential(self) -> bool: ...


@runtime_checkable
class HoldsSecrets(Protocol):
    """Strings that must never reach a caller (the provider's own keys): scrubbed from
    bodies, stream events and headers. Without it, none."""

    @property
    def secrets(self) -> Sequence[str]: ...


def require_provider(provider: object) -> Provider:
    """``provider`` itself; a ``TypeError`` naming what it lacks when it is no ``Provider``."""
    if isinstance(provider, Provider):
        return provider
    lacks = what_it_lacks(provider, _REQUIRED)
    raise TypeError(
        f"{provider!r} does not implement the Provider protocol "
        f"(name, serves(model), async send(request, client)): {lacks}"
    )


def listed_models(provider: Provider) -> tuple[str, ...]:
    if not isinstance(provider, ListsModels):
        return ()
    models = provider.models
    if isinstance(models, str):
        raise TypeError(f"{provider.name}.models must be a sequence of patterns, not a string")
    return tuple(models)


def endpoints(provider: Provider) -> frozenset[Endpoint]:
    if not isinstance(provider, ServesEndpoints):
        return ALL_ENDPOINTS
    served = provider.endpoints
    if isinstance(served, str):
        raise TypeError(f"{provider.name}.endpoints must be a collection, e.g. {{'chat'}}")
    return frozenset(served)


def needs_caller_credential(provider: Provider) -> bool:
    return isinstance(provider, ForwardsCallerKey) and bool(provider.needs_caller_credential)


def secrets(provider: Provider) -> tuple[str, ...]:
    if not isinstance(provider, HoldsSecrets):
        return ()
    held = provider.secrets
    if isinstance(held, str):  # one key, not its characters: those would scrub nothing
        return (held,)
    return tuple(s for s in held if isinstance(s, str))
