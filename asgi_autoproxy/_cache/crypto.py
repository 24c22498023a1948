"""Sealing cached values at rest: AES-256-GCM under a per-entry secret.

The cache layer derives two independent values from the same request material:
``derive_key`` names the entry (a hash the store may see) and ``derive_secret``
encrypts it (never shown to the store). Mixing the caller's credential into the
secret's material means a dump of the store is unreadable without both the
request and the credential.

Sealed format, version 1::

    0x01 | nonce (12 bytes, random) | ciphertext | GCM tag (16 bytes)

The version byte is authenticated along with the caller's ``aad``, so a sealed
value cannot be replayed under another format or context. ``cryptography`` is
imported on first use, so the key helpers work without the ``redis`` extra.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SECRET_SIZE", "derive_key", "derive_secret", "seal", "unseal"]

SECRET_SIZE = 32
FORMAT_V1 = b"\x01"
NONCE_SIZE = 12
TAG_SIZE = 16

# A distinct label per purpose (neither a prefix of the other): knowing an entry's key
# says nothing about its secret.
_KEY_LABEL = b"asgi_autoproxy/cache/key/v1"
_SECRET_LABEL = b"asgi_autoproxy/cache/secret/v1"


def derive_key(material: bytes) -> str:
    """The entry's name in the store: a hex hash of ``material``, safe to reveal."""
    return hashlib.sha256(_KEY_LABEL + material).hexdigest()


def derive_secret(material: bytes) -> bytes:
    """The entry's 32-byte encryption secret, independent of ``derive_key``."""
    return hashlib.sha256(_SECRET_LABEL + material).digest()


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
