"""Cache keys: versioned hashes of everything that makes two requests the same.

The key covers the endpoint, the providers that may answer, the caller, the request
headers passed upstream (``anthropic-beta``...) and the canonical JSON body, so key
order, whitespace and how a number is written (`0` or `0.0`) do not matter but callers
never share entries (unless told to). HKDF then binds that digest to the caller's
credential (and the server's secret, where set): the entry's name and the secret that
encrypts it both derive from the three together (``_cache/crypto.py``), so a dump of the
store plus caller ids and prompts opens nothing.

The digest is SHA-256 with or without the ``fast`` extra: instances with and without
blake3 installed share one cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asgi_autoproxy import _json
from asgi_autoproxy._cache.crypto import derive_key, derive_secret, entry_prk

KEY_VERSION = b"asgi_autoproxy/cache/v2"
_VERSION = KEY_VERSION.decode()
# One hash for every install: entry names must not depend on which extras are there.
_HASH_NAME = "sha256"
SHARED_CALLER = "shared"


@dataclass(slots=True)  # not frozen: that doubles its cost, and a hit makes one
class EntryKey:
    key: str
    """The backend key: a hex hash, safe to store and to log."""
    prk: bytes
    """HKDF's pseudorandom key for the entry (request, credential, server secret);
    never leaves the process."""

    @property
    def secret(self) -> bytes:
        """32 bytes that encrypt the entry; derived only where a backend encrypts."""
        return derive_secret(self.prk)


def entry_key(
    *,
    endpoint: str,
    providers: str,
    caller: str,
    payload: Mapping[str, Any],
    headers: tuple[tuple[str, str], ...] = (),
    credential: str | None = None,
    server_secret: bytes = b"",
) -> EntryKey:
    """``caller``: the cache scope (``SHARED_CALLER`` where entries are shared);
    ``headers``: request headers passed upstream, which may change the answer;
    ``credential``: the caller's token, None where entries are shared or none was sent."""
    body = payload
    if "stream" in body and not body["stream"]:
        # `"stream": false` and no `stream` ask for the same answer.
        body = {k: v for k, v in body.items() if k != "stream"}
    # One pass over the (possibly megabytes of) body; key and secret both derive from the
    # digest. The fields go first as a JSON array, so no two field lists hash alike. One
    # hash call over the joined bytes: each update() costs more than copying a small body.
    named: list[object] = [_VERSION, _HASH_NAME, endpoint, providers, caller]
    if headers:  # only where a route passes some: every other key stays as it was
        named.append([list(pair) for pair in headers])
    fields = _json.dumps(named)
    digest = hashlib.sha256(b"\n".join((fields, _canonical_numbers(body)))).digest()
    prk = entry_prk(digest, credential, server_secret=server_secret)
    return EntryKey(derive_key(prk), prk)


def _canonical_numbers(body: Mapping[str, Any]) -> bytes:
    """The canonical JSON of ``body``, with each float equal to an integer written as that
    integer: `0` and `0.0`, or `100` and `1e2`, ask the same (``true`` stays apart from
    `1`: a bool is no float). Integers are exact: the body was read by ``_json.strict``."""
    try:
        return _json.canonical(_whole_floats_as_ints(body))
    except RecursionError:  # nested past Python's limit: the exact body, a stricter key
        return _json.canonical(body)


_CHANGEABLE = frozenset((float, dict, list))


def _whole_floats_as_ints(value: Any) -> Any:
    """``value`` with whole floats as ints; containers are copied only on the way to one,
    so a body without any (most) costs a walk and no copy."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        items: Any = value.items()
    elif kind is list:
        items = enumerate(value)
    else:
        return value
    copy = None
    for name, item in items:
        if type(item) in _CHANGEABLE:
            new = _whole_floats_as_ints(item)
            if new is not item:
                if copy is None:
                    copy = kind(value)
                copy[name] = new
    return value if copy is None else copy
