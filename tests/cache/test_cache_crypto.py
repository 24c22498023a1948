"""Sealing cached values: AES-256-GCM that refuses anything it did not seal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_autoproxy._cache.crypto import (
    FORMAT_V1,
    NONCE_SIZE,
    SECRET_SIZE,
    TAG_SIZE,
    derive_key,
    derive_secret,
    entry_prk,
    hkdf_expand,
    hkdf_extract,
    seal,
    unseal,
)

SECRET = derive_secret(entry_prk(bytes(32), "sk-caller-secret"))
PLAINTEXT = b'{"choices":[{"message":{"content":"a private answer"}}]}'


def test_roundtrip_and_layout() -> None:
    sealed = seal(SECRET, PLAINTEXT)
    assert unseal(SECRET, sealed) == PLAINTEXT
    assert sealed[:1] == FORMAT_V1
    assert len(sealed) == 1 + NONCE_SIZE + len(PLAINTEXT) + TAG_SIZE
    assert PLAINTEXT not in sealed


def test_every_seal_uses_a_fresh_nonce() -> None:
    sealed = {seal(SECRET, PLAINTEXT) for _ in range(50)}
    assert len(sealed) == 50
    assert len({s[1 : 1 + NONCE_SIZE] for s in sealed}) == 50


def test_empty_plaintext_roundtrips() -> None:
    assert unseal(SECRET, seal(SECRET, b"")) == b""


def test_any_flipped_bit_is_refused() -> None:
    sealed = seal(SECRET, PLAINTEXT)
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= bit
            assert unseal(SECRET, bytes(tampered)) is None, f"byte {i} bit {bit:#x}"


def test_wrong_secret_is_refused() -> None:
    sealed = seal(SECRET, PLAINTEXT)
    assert unseal(derive_secret(entry_prk(bytes(32), "sk-other-caller")), sealed) is None
    assert unseal(bytes(SECRET_SIZE), sealed) is None


def test_truncated_or_extended_input_is_refused() -> None:
    sealed = seal(SECRET, PLAINTEXT)
    for length in range(len(sealed)):
        assert unseal(SECRET, sealed[:length]) is None
    assert unseal(SECRET, sealed + b"\x00") is None


def test_unknown_format_version_is_refused() -> None:
    sealed = seal(SECRET, PLAINTEXT)
    assert unseal(SECRET, b"\x02" + sealed[1:]) is None
    assert unseal(SECRET, PLAINTEXT) is None  # a plaintext entry from an unencrypted cache


def test_associated_data_must_match() -> None:
    sealed = seal(SECRET, PLAINTEXT, aad=b"chat")
    assert unseal(SECRET, sealed, aad=b"chat") == PLAINTEXT
    assert unseal(SECRET, sealed, aad=b"completion") is None
    assert unseal(SECRET, sealed) is None


def test_bad_secret_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"short", PLAINTEXT)
    assert unseal(b"short", seal(SECRET, PLAINTEXT)) is None


def test_key_and_secret_are_independent_and_deterministic() -> None:
    material = entry_prk(bytes(32), "sk-caller")
    key, secret = derive_key(material), derive_secret(material)
    assert key == derive_key(material) and secret == derive_secret(material)
    assert len(key) == 64 and int(key, 16) >= 0
    assert len(secret) == SECRET_SIZE
    assert bytes.fromhex(key) != secret
    assert derive_key(material + b"x") != key
    assert derive_secret(material + b"x") != secret


@given(st.binary(max_size=64), st.binary(max_size=256), st.binary(max_size=64))
def test_hkdf_is_rfc5869_as_cryptography_computes_it(salt: bytes, ikm: bytes, info: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    theirs = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(ikm)
    assert hkdf_expand(hkdf_extract(salt, ikm), info) == theirs


def test_the_credential_and_the_server_secret_each_change_the_key_and_secret() -> None:
    digest = bytes(range(32))
    variants = [
        entry_prk(digest, None),
        entry_prk(digest, ""),
        entry_prk(digest, "sk-a"),
        entry_prk(digest, "sk-b"),
        entry_prk(digest, None, server_secret=b"s1"),
        entry_prk(digest, None, server_secret=b"s2"),
        entry_prk(digest, "sk-a", server_secret=b"s1"),
    ]
    assert len({derive_key(p) for p in variants}) == len(variants)
    assert len({derive_secret(p) for p in variants}) == len(variants)


@given(st.binary(max_size=4096), st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_roundtrip_property(plaintext: bytes, secret: bytes, aad: bytes) -> None:
    assert unseal(secret, seal(secret, plaintext, aad=aad), aad=aad) == plaintext


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(blob: bytes) -> None:
    assert unseal(SECRET, blob) is None
