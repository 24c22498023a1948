"""Who is calling: caller authentication, decided once at start-up.

Three modes, from the providers and keywords given to the middleware:

- *checked*: ``authenticate=``, ``api_keys=`` or ``credentials_secret=`` is set. Every
  served route needs a credential that maps to a caller id (a temporary credential maps
  to its issuer's); anything else is a 401. This also gates
  pass-through providers, which then receive that same token.
- *pass-through*: no provider holds a key of its own. The caller's key goes upstream
  and the upstream judges it; the proxy only tells callers apart by its hash.
- *anonymous*: a provider holds its own key and ``allow_anonymous=True`` says that
  anyone who can reach the proxy may spend it.

A provider key without either a check or ``allow_anonymous`` is refused at start-up:
failing closed is the point.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from asgi_autoproxy._asgi import Scope
from asgi_autoproxy._gate.credentials import Grant, TemporaryCredentials
from asgi_autoproxy.errors import ProxyError, unauthorized
from asgi_autoproxy.providers import capabilities
from asgi_autoproxy.providers.base import Provider

ANONYMOUS_CALLER = "anonymous"


def caller_identity(credential: str | None, *, authenticated: str | None = None) -> str:
    """What isolates a caller's cache entries: a hash of the authenticated caller id
    together with the credential it presented (two keys of one id do not share
    entries), else a hash of the credential (which itself is never kept)."""
    if authenticated is not None:
        bound = authenticated if credential is None else f"{authenticated}\x00{credential}"
        return "caller:" + hashlib.sha256(bound.encode()).hexdigest()
    if credential is None:
        return ANONYMOUS_CALLER
    return "key:" + hashlib.sha256(credential.encode()).hexdigest()


Authenticate = Callable[[str, Scope], str | Awaitable[str | None] | None]
"""``authenticate(token, scope)``, sync or async: a caller id, or None to refuse."""

AuthMode = Literal["checked", "pass-through", "anonymous"]

CLIENT_KEYS_VARIABLE = "AUTOPROXY_CLIENT_KEYS"


def client_keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``api_keys=`` from ``AUTOPROXY_CLIENT_KEYS`` (``os.environ`` unless ``environ`` is
    given), as the ``asgi-autoproxy`` command reads it: comma-separated keys callers may
    use, blanks around each ignored. None when it names no key."""
    env = os.environ if environ is None else environ
    return parse_client_keys(env.get(CLIENT_KEYS_VARIABLE))


def parse_client_keys(raw: str | None) -> dict[str, str] | None:
    """Comma-separated keys -> ``{key: caller id}``. Each caller id is ``client-`` and a
    short hash of its key, so ids stay stable when the list is reordered."""
    keys = [key.strip() for key in (raw or "").split(",") if key.strip()]
    if not keys:
        return None
    return {key: "client-" + hashlib.sha256(key.encode()).hexdigest()[:12] for key in keys}


class Caller:
    """The caller of one request, as far as the proxy knows it.

    ``id`` and ``cache_scope`` are hashes, worked out on first use: a request that
    needs neither before its upstream call (no cache, no rate limit) does not pay for
    them on the way to its first byte."""

    __slots__ = ("_authenticated", "_scope", "credential", "grant", "presented")

    def __init__(
        self,
        credential: str | None,
        *,
        authenticated: str | None = None,
        grant: Grant | None = None,
        presented: str | None = None,
    ) -> None:
        self.credential = credential
        """The presented token; providers without a key of their own forward it. None for
        a temporary credential, which never leaves the proxy."""
        self.presented = credential if presented is None else presented
        """What cache entries are bound to (their encryption key derives from it): the
        key as presented, or for a temporary credential a secret its issuer's tokens
        share (``TemporaryCredentials.entry_secret``); never forwarded."""
        self._authenticated = authenticated
        self._scope: str | None = None
        self.grant = grant
        """Set when the caller presented a temporary credential: its models and ``jti``."""

    def check_model(self, model: str) -> None:
        """A 403 when a temporary credential does not allow ``model``."""
        if self.grant is not None:
            self.grant.check_model(model)

    def allows(self, model: str) -> bool:
        return self.grant is None or self.grant.models is None or model in self.grant.models

    @property
    def id(self) -> str:
        """For logs, hooks and rate limits: the authenticated id, or a hash of the
        pass-through key, or ``anonymous``. Never the secret itself."""
        if self._authenticated is not None:
            return self._authenticated
        return self.cache_scope  # unchecked callers: the same hash

    @property
    def cache_scope(self) -> str:
        """What isolates this caller's cache entries from everyone else's."""
        if self._scope is None:
            if self._authenticated is not None:
                self._scope = caller_identity(self.presented, authenticated=self._authenticated)
            else:
                self._scope = caller_identity(self.presented)
        return self._scope


def _missing() -> ProxyError:
    return unauthorized(
        "Missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key')."
    )


def _unusable() -> ProxyError:
    return unauthorized(
        "The API key has characters no API key has (keys are printable ASCII); "
        "check that it was copied whole and unchanged."
    )


def _invalid() -> ProxyError:
    return unauthorized("Invalid API key. Check the key you were given for this proxy.")


class CallerAuth:
    """Turns a request's credential into a ``Caller`` or a 401."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        authenticate: Authenticate | None = None,
        api_keys: Mapping[str, str] | None = None,
        allow_anonymous: bool = False,
        credentials: TemporaryCredentials | None = None,
    ) -> None:
        if authenticate is not None and api_keys is not None:
            raise ValueError("pass either authenticate= or api_keys=, not both")
        if authenticate is not None and not callable(authenticate):
            raise TypeError("authenticate must be a callable (token, scope) -> caller id | None")
        self._authenticate = authenticate
        self._key_ids = None if api_keys is None else _digest_keys(api_keys)
        holds_key = [p.name for p in providers if not capabilities.needs_caller_credential(p)]
        self.credentials = credentials
        if credentials is not None and allow_anonymous:
            raise ValueError(
                "allow_anonymous=True serves everyone, so temporary credentials would restrict "
                "nobody; drop allow_anonymous or credentials_secret"
            )
        if credentials is not None and not holds_key:
            raise ValueError(
                "temporary credentials need a provider that holds its own API key: a token "
                "never goes upstream, so pass-through providers could not serve its caller"
            )
        self.mode: AuthMode
        if authenticate is not None or api_keys is not None or credentials is not None:
            self.mode = "checked"
        elif not holds_key:
            self.mode = "pass-through"
        elif allow_anonymous:
            self.mode = "anonymous"
        else:
            raise ValueError(
                f"provider(s) {holds_key} hold their own API key, so anyone who reaches this "
                "proxy would spend it. Pass api_keys={'<key for a caller>': '<caller id>'} or "
                "authenticate=<callable>, or allow_anonymous=True if the proxy is private."
            )

    async def identify(self, credential: str | None, scope: Scope) -> Caller:
        """The caller presenting ``credential`` (``RequestHeaders.credential``); raises a
        401 ``ProxyError`` when checking fails."""
        if credential is not None and not (credential.isascii() and credential.isprintable()):
            # It could never be sent upstream (HTTP header values are ASCII): refused here
            # on every route, in every mode, rather than failing later as a 500.
            raise _unusable()
        if (
            self.credentials is not None
            and credential is not None
            and self.credentials.is_ours(credential)
        ):
            # Checked here alone, never by api_keys or authenticate: it runs as its issuer,
            # and its token stays in the proxy (credential None: nothing to forward).
            grant = await self.credentials.check(credential)
            # Every token of one issuer reads the same entries: the issuer's scope.
            bound = self.credentials.entry_secret(grant.caller_id)
            return Caller(None, authenticated=grant.caller_id, grant=grant, presented=bound)
        if self.mode != "checked":
            return Caller(credential)
        if credential is None:
            raise _missing()
        caller_id = await self._check(credential, scope)
        if caller_id is None:
            raise _invalid()
        return Caller(credential, authenticated=caller_id)

    async def _check(self, token: str, scope: Scope) -> str | None:
        if self._key_ids is not None:
            # A dict lookup compares SHA-256 digests, never the keys: its timing says
            # nothing an attacker can turn back into a key.
            return self._key_ids.get(hashlib.sha256(token.encode()).digest())
        if self._authenticate is None:
            return None  # only temporary credentials are accepted
        result = self._authenticate(token, scope)
        if inspect.isawaitable(result):
            result = await result
        if result is None or result == "":
            return None
        if not isinstance(result, str):
            raise TypeError(
                f"authenticate returned {type(result).__name__}; return a caller id (str) "
                "or None to refuse"
            )
        return result


def _digest_keys(api_keys: Mapping[str, str]) -> dict[bytes, str]:
    if not isinstance(api_keys, Mapping):
        raise TypeError("api_keys must be a mapping of accepted key -> caller id")
    digests: dict[bytes, str] = {}
    for key, caller_id in api_keys.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ValueError(
                "api_keys: every key must be a non-empty string without surrounding spaces"
            )
        if not isinstance(caller_id, str) or not caller_id:
            raise ValueError("api_keys: every caller id must be a non-empty string")
        digests[hashlib.sha256(key.encode()).digest()] = caller_id
    if not digests:
        raise ValueError("api_keys is empty, so nobody could call the proxy; add a key")
    return digests
