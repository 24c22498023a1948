"""The command line: server-held keys need client keys or --allow-anonymous."""

from __future__ import annotations

import httpx
import pytest

from asgi_autoproxy.cli import build_app, build_parser, main
from tests.conftest import CALLER_KEY, SERVER_KEY, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, upstream_url: str) -> pytest.MonkeyPatch:
    for name in ("OPENAI_API_KEY", "AUTOPROXY_CLIENT_KEYS", "AUTOPROXY_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_url)
    return monkeypatch


async def post(app: object, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        return await c.post("/v1/proxy/auto", json=chat_body())


def test_server_key_without_client_keys_exits_with_advice(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("OPENAI_API_KEY", SERVER_KEY)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "AUTOPROXY_CLIENT_KEYS" in err and "--allow-anonymous" in err
    assert SERVER_KEY not in err


async def test_client_keys_from_env_are_required(
    env: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    env.setenv("OPENAI_API_KEY", SERVER_KEY)
    env.setenv("AUTOPROXY_CLIENT_KEYS", f" {CALLER_KEY} , sk-second ,")
    app = build_app(build_parser().parse_args([]))
    refused = await post(app, "sk-unknown")
    served = await post(app, CALLER_KEY)
    also = await post(app, "sk-second")
    assert (refused.status_code, served.status_code, also.status_code) == (401, 200, 200)
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
    await app.aclose()


async def test_allow_anonymous_flag(env: pytest.MonkeyPatch, upstream: FakeUpstream) -> None:
    env.setenv("OPENAI_API_KEY", SERVER_KEY)
    app = build_app(build_parser().parse_args(["--allow-anonymous"]))
    assert (await post(app, None)).status_code == 200
    await app.aclose()


async def test_pass_through_needs_neither(env: pytest.MonkeyPatch, upstream: FakeUpstream) -> None:
    app = build_app(build_parser().parse_args([]))
    response = await post(app, CALLER_KEY)
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {CALLER_KEY}"
    await app.aclose()
