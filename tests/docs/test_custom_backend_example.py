"""The custom-backend example works as a cache, and its entries survive a new middleware."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


def load_example(monkeypatch: pytest.MonkeyPatch, upstream_url: str, db: Path) -> object:
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AUTOPROXY_CACHE_DB", str(db))
    sys.modules.pop("examples.custom_cache_backend", None)
    return importlib.import_module("examples.custom_cache_backend").app


async def ask(app: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.post(
            "/v1/proxy/auto",
            json=chat_body(temperature=0),
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        )


async def test_sqlite_backend_caches_across_instances(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    db = tmp_path / "cache.sqlite3"
    first_app = load_example(monkeypatch, upstream_url, db)
    first = await ask(first_app)
    await first_app.aclose()  # type: ignore[attr-defined]
    second_app = load_example(monkeypatch, upstream_url, db)
    second = await ask(second_app)
    await second_app.aclose()  # type: ignore[attr-defined]
    assert first.headers["x-bt-cached"] == "MISS"
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.content == first.content
    assert upstream.calls == 1
    assert db.stat().st_size > 0
