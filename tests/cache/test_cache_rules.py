"""The cache's pure parts: the policy's shortcut for requests without cache headers,
entry keys that must not change under stored entries, and the entry byte format."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from asgi_autoproxy import _json
from asgi_autoproxy._cache import keys
from asgi_autoproxy._cache.entry import CachedResponse
from asgi_autoproxy._cache.policy import decide
from tests.processes import REPO_ROOT, child_env

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
# KEY_VERSION, never by accident. Values from the key derivation as first released (v2).
KEY_PAYLOAD = {
    "model": "gpt-4o-mini",
    "stream": False,
    "temperature": 0,
    "messages": [{"role": "user", "content": "héllo"}],
}
KNOWN_KEY = "33704513451728a107c8bbfbff265383a19c3a7fed7e2ede1e43530b6c16cc56"
KNOWN_SECRET = "56759ba76b1137e554d62a0ce9a4a43e9cf5fe4a2d6a7282a34343963f924466"
KNOWN_SHARED_KEY = "aac8a86635e500a82ec04b54bbc79fe59dfa209103cf22661202e79f2a9afb35"
_PRINT_KEYS = (
    "from asgi_autoproxy._cache import keys\n"
    f"payload = {KEY_PAYLOAD!r}\n"
    "k = keys.entry_key(endpoint='chat', providers='openai,backup', caller='key:abc',"
    " payload=payload, credential='sk-caller')\n"
    "s = keys.entry_key(endpoint='chat', providers='openai,backup', caller='shared',"
    " payload=payload, server_secret=b'server')\n"
    "print(k.key, k.secret.hex(), s.key)\n"
)


def test_entry_keys_do_not_change() -> None:
    key = keys.entry_key(
        endpoint="chat",
        providers="openai,backup",
        caller="key:abc",
        payload=KEY_PAYLOAD,
        credential="sk-caller",
    )
    assert (key.key, key.secret.hex()) == (KNOWN_KEY, KNOWN_SECRET)
    shared = keys.entry_key(
        endpoint="chat",
        providers="openai,backup",
        caller="shared",
        payload=KEY_PAYLOAD,
        server_secret=b"server",
    )
    assert shared.key == KNOWN_SHARED_KEY


@pytest.mark.parametrize("blake3", ["installed", "absent"])
def test_keys_are_the_same_with_and_without_the_fast_extra(blake3: str) -> None:
    """Instances with and without blake3 share one cache: the same name, the same secret."""
    if blake3 == "installed":
        pytest.importorskip("blake3")
        code = "import blake3\n" + _PRINT_KEYS
    else:
        code = "import sys; sys.modules['blake3'] = None\n" + _PRINT_KEYS
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [KNOWN_KEY, KNOWN_SECRET, KNOWN_SHARED_KEY]


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
