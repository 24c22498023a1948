"""The cache's pure parts: the policy's shortcut for requests without cache headers,
entry keys that must not change under stored entries, and the entry byte format."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from asgi_autoproxy import _json
from asgi_autoproxy._cache import keys
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.policy import decide

PAYLOADS: list[dict[str, Any]] = [
    {"model": "m"},
    {"model": "m", "temperature": 0},
    {"model": "m", "temperature": 0.0},
    {"model": "m", "temperature": 0.7},
    {"model": "m", "temperature": False},
    {"model": "m", "seed": 0, "temperature": 1},
    {"model": "m", "seed": None},
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("ttl", [1, 3600, 604800])
def test_no_cache_headers_decide_as_the_spelled_out_defaults(
    payload: dict[str, Any], ttl: int
) -> None:
    shortcut = decide(payload, use_cache=None, cache_ttl=None, cache_control=None, default_ttl=ttl)
    spelled = decide(
        payload, use_cache="auto", cache_ttl=str(ttl), cache_control="", default_ttl=ttl
    )
    assert shortcut == spelled


# Keys name entries already stored (in Redis, say): a change must come with a new
# KEY_VERSION, never by accident. Values from the key derivation as first released.
KNOWN_KEYS = {
    "blake3": "50d783f88dae86996992e0826205d6059944a0b3f5f7161aacd3ba4dd66b3a76",
    "sha256": "1e2382c057c9cc5295a981838690c98536405b12c5fbcbb9a8eee7e18dc75a70",
}


@pytest.mark.parametrize("hash_name", ["blake3", "sha256"])
def test_entry_keys_do_not_change(monkeypatch: pytest.MonkeyPatch, hash_name: str) -> None:
    if hash_name == "blake3":
        blake3 = pytest.importorskip("blake3")
        monkeypatch.setattr(keys, "new_hash", blake3.blake3)
    else:
        monkeypatch.setattr(keys, "new_hash", hashlib.sha256)
    monkeypatch.setattr(keys, "_HASH_NAME", hash_name)
    payload = {
        "model": "gpt-4o-mini",
        "stream": False,
        "temperature": 0,
        "messages": [{"role": "user", "content": "héllo"}],
    }
    key = keys.entry_key(
        endpoint="chat", providers="openai,backup", caller="key:abc", payload=payload
    )
    assert key.key == KNOWN_KEYS[hash_name]


def test_a_decoded_entry_has_its_headers_encoded_as_sent() -> None:
    headers = ((b"content-type", b"application/json"), (b"x-caf\xe9", b"caf\xe9 ok"))
    entry = CachedResponse(200, headers, (b'{"a":', b"1}"), False, 12.5)
    decoded = CachedResponse.decode(entry.encode())
    assert decoded == entry
    assert decoded is not None and decoded.headers == headers


def test_entries_stored_before_headers_were_kept_encoded_still_decode() -> None:
    # The byte format did not change: headers are JSON strings, read back as latin-1.
    header = _json.dumps(
        {
            "f": 1,
            "s": 200,
            "h": [["content-type", "application/json"]],
            "st": False,
            "t": 5.0,
            "l": [2],
        }
    )
    decoded = CachedResponse.decode(len(header).to_bytes(4, "big") + header + b"{}")
    assert decoded == CachedResponse(
        200, ((b"content-type", b"application/json"),), (b"{}",), False, 5.0
    )


@pytest.mark.parametrize("bad_headers", [[[1, 2]], [["a"]], [["ok", "\u20ac"]], "xy"])
def test_an_entry_with_unusable_headers_is_a_miss(bad_headers: Any) -> None:
    header = _json.dumps({"f": 1, "s": 200, "h": bad_headers, "st": False, "t": 5.0, "l": [0]})
    assert CachedResponse.decode(len(header).to_bytes(4, "big") + header) is None
