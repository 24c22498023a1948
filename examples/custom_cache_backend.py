"""A custom cache backend: entries in a SQLite file, so they survive restarts.

Run: OPENAI_API_KEY=sk-... AUTOPROXY_CLIENT_KEYS=k1 uvicorn examples.custom_cache_backend:app
Any class with async ``get`` and ``set`` is a ``CacheBackend``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import anyio.to_thread
from starlette.applications import Starlette

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, OpenAIProvider, client_keys_from_env


class SQLiteCache:
    """Keys are hashes and values opaque bytes; expiry is checked on read."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB, expires REAL)"
            )

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM cache WHERE key = ? AND expires > ?", (key, time.time())
            ).fetchone()
        return None if row is None else bytes(row[0])

    def _set(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, value, time.time() + ttl)
            )

    # Blocking SQLite calls run in a worker thread so the event loop never waits on disk.
    async def get(self, key: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self._get, key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await anyio.to_thread.run_sync(self._set, key, value, ttl)


app = AutoProxyMiddleware(
    Starlette(),
    # With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS.
    api_keys=client_keys_from_env(),
    providers=[
        OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("OPENAI_API_KEY") or None,
        )
    ],
    cache=SQLiteCache(os.environ.get("AUTOPROXY_CACHE_DB", "autoproxy-cache.sqlite3")),
    cache_options=CacheOptions(timeout=1.0),
)
