"""Placeholder; replaced by the Redis work (AES-256-GCM sealing)."""

from __future__ import annotations


def seal(secret: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    raise NotImplementedError


def unseal(secret: bytes, sealed: bytes, *, aad: bytes = b"") -> bytes | None:
    raise NotImplementedError
