"""``SharedState``: where the state several instances share lives, chosen once.

The middleware's ``shared_state=`` keyword makes one: a Redis URL or client, the
``RedisCache``'s own link when ``cache=`` is one (the default), or ``None`` for state kept
per process. Each piece of state names its keys here, under one prefix, with the hash
tag that keeps the keys one script touches in one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from asgi_autoproxy._shared.redis_link import RedisLink, hash_tag

if TYPE_CHECKING:
    from asgi_autoproxy._shared.redis_link import Client

logger = logging.getLogger("asgi_autoproxy.shared")

DEFAULT_PREFIX = "asgi_autoproxy:"


class SharedState:
    """One Redis link and the prefix of every key of the shared state."""

    def __init__(self, link: RedisLink, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.link = link
        self.prefix = prefix + "state:"

    @classmethod
    def connect(cls, target: str | Client, *, prefix: str = DEFAULT_PREFIX) -> SharedState:
        """From ``shared_state=``: a Redis URL or a client made by the caller."""
        if isinstance(target, str):
            link = RedisLink(target, what="shared_state", log=logger)
        else:
            link = RedisLink(client=target, what="shared_state", log=logger)
        return cls(link, prefix=prefix)

    def __repr__(self) -> str:
        return f"SharedState({self.link.location!r})"

    def name(self, kind: str, tag: str, suffix: str = "") -> str:
        """``<prefix>state:<kind>:{<tag>}<suffix>``: keys with one ``tag`` share a slot."""
        return f"{self.prefix}{kind}:{hash_tag(tag)}{suffix}"


def short_hash(value: str) -> str:
    """A fixed-size tag for a caller id or a provider list: bounded key names, and caller
    ids are not spelled out in Redis."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]
