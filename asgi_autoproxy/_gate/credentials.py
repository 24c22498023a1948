"""Temporary credentials: short-lived signed tokens a page can hold instead of a real key.

A caller who holds a long-lived key asks ``POST {prefix}/credentials`` for a token (a JWT,
HS256 under the server's secret) naming its caller id, the models it may use, when it
expires (``exp``) and its own id (``jti``). The token is then a Bearer key on every
route, checked here with no network call: the signature (PyJWT compares it with
``hmac.compare_digest``), the expiry, and optionally a denylist of revoked ``jti``s kept
in the cache backend. The request then runs as the issuing caller.

HS256 rather than EdDSA: a check costs 68 µs against 256 µs (3.7x less, measured with
``bench/credentials_verify.py``), and issuer and verifier are the same process, so a
public key buys nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import anyio

from asgi_autoproxy.errors import ProxyError, bad_request

logger = logging.getLogger("asgi_autoproxy")

SECRET_VARIABLE = "ASGI_AUTOPROXY_CREDENTIALS_SECRET"
DEFAULT_TTL = 600
MAX_TTL = 86_400
MIN_SECRET_LENGTH = 32
MAX_MODELS = 32
MAX_MODEL_LENGTH = 256
# Our tokens stay well under this (32 models of 256 characters); anything longer is
# refused before it is decoded at all.
MAX_TOKEN_LENGTH = 16_384
KEY_ID = "asgi_autoproxy/v1"
"""The ``kid`` in each token's header: tells our tokens from other bearer tokens (an
``authenticate=`` hook's own JWTs) without checking a signature."""
ISSUER = "asgi_autoproxy"
_ALGORITHM = "HS256"
_DENYLIST_LABEL = b"asgi_autoproxy/revoked-credential/v1\n"
_T = TypeVar("_T")


def secret_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``credentials_secret`` from ``ASGI_AUTOPROXY_CREDENTIALS_SECRET``; None when unset."""
    value = (os.environ if environ is None else environ).get(SECRET_VARIABLE, "").strip()
    return value or None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows: who it runs as, which models, until when."""

    caller_id: str
    models: tuple[str, ...] | None
    """None: any model."""
    jti: str
    expires_at: int

    def check_model(self, model: str) -> None:
        """A 403 naming the allowed models when ``model`` is not one of them."""
        if self.models is None or model in self.models:
            return
        allowed = ", ".join(repr(name) for name in self.models)
        shown = model if len(model) <= 100 else model[:100] + "..."
        raise ProxyError(
            403,
            f"This temporary credential may only be used for {allowed}, not {shown!r}. "
            "Ask for a credential that names this model.",
            type="permission_error",
            code="model_not_allowed",
            param="model",
        )


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """A ``/credentials`` body, checked."""

    models: tuple[str, ...] | None
    ttl_seconds: int


def parse_credential_request(payload: Mapping[str, Any]) -> CredentialRequest:
    """Braintrust's shape: ``model`` (a name, a list, or null for any), ``ttl_seconds``
    (default 600, at most 86,400); ``logging`` and other fields are accepted and ignored."""
    model = payload.get("model")
    models: tuple[str, ...] | None
    if model is None:
        models = None
    elif isinstance(model, str):
        models = (_model_name(model),)
    elif isinstance(model, list):
        if not model:
            raise bad_request(
                "Field 'model' is an empty list, which allows nothing; name a model, or "
                "send null for any.",
                param="model",
            )
        if len(model) > MAX_MODELS:
            raise bad_request(f"Field 'model' names more than {MAX_MODELS} models.", param="model")
        models = tuple(dict.fromkeys(_model_name(name) for name in model))
    else:
        raise bad_request(
            "Field 'model' must be a model name, a list of names, or null for any model.",
            param="model",
        )
    ttl = payload.get("ttl_seconds", DEFAULT_TTL)
    if ttl is None:
        ttl = DEFAULT_TTL
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL:
        raise bad_request(
            f"Field 'ttl_seconds' must be a whole number of seconds from 1 to {MAX_TTL} "
            f"(default {DEFAULT_TTL}).",
            param="ttl_seconds",
        )
    return CredentialRequest(models, ttl)


def _model_name(name: object) -> str:
    # ASCII blanks only, as for a request's model: the OpenAPI pattern says the same.
    if not isinstance(name, str) or not name.strip(" \t\r\n") or len(name) > MAX_MODEL_LENGTH:
        raise bad_request(
            f"Every model in 'model' must be a non-empty string of at most "
            f"{MAX_MODEL_LENGTH} characters.",
            param="model",
        )
    return name


class DenylistStore(Protocol):
    """The cache backend's two methods the denylist uses."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...


def _invalid() -> ProxyError:
    return ProxyError(
        401,
        "Invalid temporary credential: its signature does not check out, or it is not a "
        "credential this proxy issued. Ask for a new one.",
        type="authentication_error",
        code="invalid_api_key",
        headers=[("www-authenticate", "Bearer")],
    )


def _expired(expires_at: int) -> ProxyError:
    when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ProxyError(
        401,
        f"This temporary credential expired at {when}. Ask for a new one.",
        type="authentication_error",
        code="credential_expired",
        headers=[("www-authenticate", 'Bearer error="invalid_token"')],
    )


def _revoked() -> ProxyError:
    return ProxyError(
        401,
        "This temporary credential was revoked. Ask for a new one.",
        type="authentication_error",
        code="credential_revoked",
        headers=[("www-authenticate", 'Bearer error="invalid_token"')],
    )


def _denylist_unavailable() -> ProxyError:
    return ProxyError(
        503,
        "The proxy could not check whether this temporary credential was revoked (its "
        "cache backend did not answer); retry shortly.",
        type="server_error",
        code="credential_check_unavailable",
        headers=[("retry-after", "1")],
    )


class TemporaryCredentials:
    """Issues and checks the tokens; built once, at start-up."""

    def __init__(
        self,
        secret: str,
        *,
        denylist: DenylistStore | None = None,
        denylist_timeout: float | None = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(secret, str) or len(secret.strip()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"credentials_secret must be a string of at least {MIN_SECRET_LENGTH} "
                "characters (HS256 needs a key at least as long as its hash); make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        try:
            import jwt
        except ImportError:  # pragma: no cover - the test extra installs it
            raise ImportError(
                "temporary credentials need PyJWT: pip install 'asgi_autoproxy[credentials]'"
            ) from None
        self._jwt = jwt
        self._key = secret.encode()
        self._denylist = denylist
        self._denylist_timeout = denylist_timeout
        self._clock = clock

    @property
    def revocable(self) -> bool:
        return self._denylist is not None

    def entry_secret(self, caller_id: str) -> str:
        """What binds the cache entries of ``caller_id``'s temporary credentials: one
        value for all of them (they run in their issuer's cache scope), derived from
        the server secret, so that a cache dump and the caller id open nothing."""
        return hmac.new(self._key, b"cache-entries\0" + caller_id.encode(), "sha256").hexdigest()

    def issue(self, caller_id: str, *, models: tuple[str, ...] | None, ttl_seconds: int) -> str:
        # Rounded up: a token lasts at least ``ttl_seconds``, never a fraction less.
        now = math.ceil(self._clock())
        claims = {
            "iss": ISSUER,
            "sub": caller_id,
            "models": None if models is None else list(models),
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_urlsafe(16),
        }
        return self._jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": KEY_ID})

    def is_ours(self, token: str) -> bool:
        """Whether ``token`` claims to be one of ours (its header's ``kid``): such a token
        is checked here and nowhere else. Cheap, and nothing is trusted from it."""
        if not token.startswith("eyJ") or token.count(".") != 2:
            return False
        head = token.partition(".")[0]
        if len(head) > 1024:
            return False
        try:
            header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
            return False
        return isinstance(header, dict) and header.get("kid") == KEY_ID

    def decode(self, token: str, *, check_expiry: bool = True) -> Grant:
        """The grant of a genuine token; a 401 ``ProxyError`` for anything else."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid()
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],  # never "none", never one the token names
                issuer=ISSUER,
                options={
                    "require": ["exp", "iat", "jti", "sub", "iss"],
                    # Both against the injectable clock, below; an ``iat`` a little ahead
                    # (another instance's clock) is no reason to refuse.
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except (self._jwt.PyJWTError, ValueError, TypeError):
            raise _invalid() from None
        grant = _grant(claims)
        if grant is None:
            raise _invalid()
        if check_expiry and grant.expires_at <= self._clock():
            raise _expired(grant.expires_at)
        return grant

    async def check(self, token: str) -> Grant:
        """``decode``, then the denylist where there is one."""
        grant = self.decode(token)
        if self._denylist is not None and await self._is_revoked(grant.jti):
            raise _revoked()
        return grant

    async def revoke(self, token_or_jti: str) -> str:
        """Put a token (or a bare ``jti``) on the denylist until it would expire anyway;
        returns the ``jti``."""
        if self._denylist is None:
            raise RuntimeError(
                "revoking needs the denylist: pass credentials_denylist=True (and a cache)"
            )
        if self.is_ours(token_or_jti):
            try:
                grant = self.decode(token_or_jti, check_expiry=False)
            except ProxyError:
                raise ValueError(
                    "not a credential this proxy issued: its signature does not check out"
                ) from None
            jti, ttl = grant.jti, grant.expires_at - self._clock()
            if ttl <= 0:
                return jti  # already useless
        else:
            if not token_or_jti or len(token_or_jti) > 256:
                raise ValueError("pass a token this proxy issued, or its jti")
            jti, ttl = token_or_jti, float(MAX_TTL)
        await self._bounded(self._denylist.set(_denylist_key(jti), b"1", ttl + 1))
        return jti

    async def _is_revoked(self, jti: str) -> bool:
        assert self._denylist is not None
        try:
            found = await self._bounded(self._denylist.get(_denylist_key(jti)))
        except Exception as exc:
            # Fail closed: the denylist was asked for so that a revoked token stops working.
            logger.warning("credential denylist lookup failed (%s)", type(exc).__name__)
            raise _denylist_unavailable() from None
        return found is not None

    async def _bounded(self, work: Awaitable[_T]) -> _T:
        if self._denylist_timeout is None:
            return await work
        with anyio.fail_after(self._denylist_timeout):
            return await work


def _grant(claims: Mapping[str, Any]) -> Grant | None:
    caller_id, jti, exp = claims.get("sub"), claims.get("jti"), claims.get("exp")
    models = claims.get("models")
    if not isinstance(caller_id, str) or not caller_id:
        return None
    if not isinstance(jti, str) or not jti or not isinstance(exp, int) or isinstance(exp, bool):
        return None
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            return None
        models = tuple(models)
    return Grant(caller_id, models, jti, exp)


def _denylist_key(jti: str) -> str:
    """A hex hash, as cache keys are: the backend never sees the ``jti`` itself."""
    return hashlib.sha256(_DENYLIST_LABEL + jti.encode()).hexdigest()


def from_settings(
    secret: str | None, *, denylist: bool, store: DenylistStore | None, timeout: float
) -> TemporaryCredentials | None:
    """From ``credentials_secret=`` (else its environment variable) and
    ``credentials_denylist=``; None, the route off, without a secret."""
    if secret is None:
        secret = secret_from_env()
    if secret is None:
        if denylist:
            raise ValueError("credentials_denylist=True needs credentials_secret= (or its env var)")
        return None
    if denylist and store is None:
        raise ValueError("credentials_denylist=True keeps the denylist in the cache: pass a cache")
    return TemporaryCredentials(
        secret, denylist=store if denylist else None, denylist_timeout=timeout
    )
