"""Sealing cached values at rest: AES-256-GCM under a per-entry secret.

Every entry has a pseudorandom key (``entry_prk``), made with HKDF-Extract (RFC 5869,
SHA-256) from the request's digest and the caller's credential, salted with the
server's secret where one is set. Two HKDF-Expand outputs of it, under distinct
labels, are the entry's name in the store (``derive_key``, safe to reveal) and the
secret that seals it (``derive_secret``, never shown to the store). Knowing a name
says nothing about its secret, and neither can be worked out without the credential
(or, for entries shared across callers, the server's secret when one is set).

Sealed format, version 1::

    0x01 | nonce (12 bytes, random) | ciphertext | GCM tag (16 bytes)

The version byte is authenticated along with the caller's ``aad``, so a sealed
value cannot be replayed under another format or context. ``cryptography`` is
imported on first use, so the key helpers work without the ``redis`` extra: HKDF is
built on the standard library's HMAC, which the tests check against
``cryptography``'s own.
"""

from __future__ import annotations

import hmac
import os
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "SECRET_SIZE",
    "derive_key",
    "derive_secret",
    "entry_prk",
    "hkdf_expand",
    "hkdf_extract",
    "seal",
    "unseal",
]

SECRET_SIZE = 32
FORMAT_V1 = b"\x01"
NONCE_SIZE = 12
TAG_SIZE = 16
_HASH = "sha256"
_HASH_SIZE = 32

# A distinct label per purpose (neither a prefix of the other): knowing an entry's key
# says nothing about its secret.
_KEY_LABEL = b"asgi_autoproxy/cache/key/v2"
_SECRET_LABEL = b"asgi_autoproxy/cache/secret/v2"
_NO_CREDENTIAL = b"\x00"
_CREDENTIAL = b"\x01"


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256; an empty salt is HashLen zero bytes."""
    return hmac.digest(salt or bytes(_HASH_SIZE), ikm, _HASH)


def hkdf_expand(prk: bytes, info: bytes, length: int = SECRET_SIZE) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256, for outputs of at most one block."""
    if not 0 < length <= _HASH_SIZE:
        raise ValueError(f"length must be between 1 and {_HASH_SIZE}, got {length}")
    return hmac.digest(prk, info + b"\x01", _HASH)[:length]


def entry_prk(digest: bytes, credential: str | None, *, server_secret: bytes = b"") -> bytes:
    """The entry's pseudorandom key: the request ``digest`` with the caller's
    ``credential`` (None where entries are shared), salted with ``server_secret``."""
    if credential is None:
        material = digest + _NO_CREDENTIAL
    else:
        # The digest has a fixed size, so digest + marker + credential parses one way.
        material = digest + _CREDENTIAL + credential.encode()
    return hkdf_extract(server_secret, material)


def derive_key(prk: bytes) -> str:
    """The entry's name in the store: hex, safe to reveal."""
    return hkdf_expand(prk, _KEY_LABEL).hex()


def derive_secret(prk: bytes) -> bytes:
    """The entry's 32-byte encryption secret, independent of ``derive_key``."""
    return hkdf_expand(prk, _SECRET_LABEL)


def seal(secret: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext`` with a fresh random nonce."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}")
    nonce = os.urandom(NONCE_SIZE)
    return FORMAT_V1 + nonce + _aesgcm_class()(secret).encrypt(nonce, plaintext, FORMAT_V1 + aad)


def unseal(secret: bytes, sealed: bytes, *, aad: bytes = b"") -> bytes | None:
    """The plaintext, or None when ``sealed`` is tampered, truncated or not ours.

    Never raises on bad input: an unreadable entry is simply a cache miss.
    """
    if len(secret) != SECRET_SIZE or len(sealed) < 1 + NONCE_SIZE + TAG_SIZE:
        return None
    if sealed[:1] != FORMAT_V1:
        return None
    aead = _aesgcm_class()(secret)
    from cryptography.exceptions import InvalidTag

    nonce = sealed[1 : 1 + NONCE_SIZE]
    try:
        return aead.decrypt(nonce, sealed[1 + NONCE_SIZE :], FORMAT_V1 + aad)
    except InvalidTag:
        return None


@cache
def _aesgcm_class() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "Encrypting cached values needs the 'cryptography' package: "
            "pip install 'asgi_autoproxy[redis]'"
        ) from exc
    return AESGCM
