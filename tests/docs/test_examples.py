"""Each example app, run against the real fake upstream: the proxy works and the app's own
routes still answer."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import CALLER_KEY, SERVER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT, free_port, run_server

EXAMPLES = REPO_ROOT / "examples"
# Example name -> what its own "/" route answers with.
IN_PROCESS = {
    "starlette_app": "Hello from the Starlette app",
    "fastapi_app": "Hello from the FastAPI",
}


def load_example(name: str) -> Any:
    """Import the example's file afresh, so it reads the environment the test just set."""
    spec = importlib.util.spec_from_file_location(
        f"_example_{uuid.uuid4().hex}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(IN_PROCESS))
async def test_example_proxies_caller_key_and_keeps_its_routes(
    name: str, upstream: FakeUpstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    app = load_example(name)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://example",
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        ) as http,
    ):
        chat = await http.post("/v1/proxy/auto", json=chat_body("from " + name))
        completion = await http.post(
            "/v1/proxy/auto", json={"model": "gpt-3.5-turbo-instruct", "prompt": "Say"}
        )
        home = await http.get("/")
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == f"echo #1: from {name}"
    assert completion.status_code == 200, completion.text
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions", "/v1/completions"]
    assert all(r.headers["authorization"] == f"Bearer {CALLER_KEY}" for r in upstream.requests)
    assert home.status_code == 200
    assert IN_PROCESS[name] in home.text


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(IN_PROCESS))
async def test_example_sends_server_key_from_env(
    name: str, upstream: FakeUpstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_url)
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    monkeypatch.setenv("AUTOPROXY_CLIENT_KEYS", CALLER_KEY)
    app = load_example(name)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://example"
        ) as http,
    ):
        refused = await http.post("/v1/proxy/auto", json=chat_body())
        response = await http.post(
            "/v1/proxy/auto", json=chat_body(), headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    assert refused.status_code == 401
    assert response.status_code == 200, response.text
    [seen] = upstream.requests
    assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"


def test_django_example_serves_proxy_and_views_without_lifespan(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    # A child process: Django's settings are global per process, and uvicorn shows what
    # really happens when Django refuses the lifespan scope.
    port = free_port()
    args = ["-m", "uvicorn", "proxysite.asgi:application", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--lifespan", "auto"]
    with (
        run_server(
            args,
            port=port,
            env={"OPENAI_BASE_URL": upstream_url},
            cwd=EXAMPLES / "django_project",
            log_path=tmp_path / "django.log",
        ) as server,
        httpx.Client(
            base_url=server.url, timeout=10, headers={"authorization": f"Bearer {CALLER_KEY}"}
        ) as http,
    ):
        home = http.get("/")
        chat = http.post("/v1/proxy/auto", json=chat_body("from django"))
        completion = http.post("/v1/proxy/auto", json={"model": "babbage-002", "prompt": "x"})
        with http.stream("POST", "/v1/proxy/auto", json=chat_body(stream=True)) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [line for line in streamed.iter_lines() if line]
    assert home.status_code == 200
    assert "Hello from the Django app" in home.text
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "echo #1: from django"
    assert completion.status_code == 200, completion.text
    assert [r.path for r in upstream.requests] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chat/completions",
    ]
    assert all(r.headers["authorization"] == f"Bearer {CALLER_KEY}" for r in upstream.requests)
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]] == [
        "tok0 ",
        "tok1 ",
        "tok2 ",
    ]
    # Django refused the lifespan scope, so no startup hook ran, and requests worked anyway.
    assert "ASGI 'lifespan' protocol appears unsupported" in server.log
    assert "Traceback" not in server.log


@pytest.mark.anyio
async def test_browser_example_hands_out_credentials_only_after_login(
    upstream: FakeUpstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/browser/app.py without a browser (tests/docs/test_browser.py drives one):
    its logged-in endpoint is the only way to a credential, and that one model only."""
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_url)
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    monkeypatch.setenv("ASGI_AUTOPROXY_CREDENTIALS_SECRET", "example-test-secret-" + "x" * 32)
    monkeypatch.delenv("AUTOPROXY_CLIENT_KEYS", raising=False)
    spec = importlib.util.spec_from_file_location(
        f"_example_{uuid.uuid4().hex}", EXAMPLES / "browser" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    async with (
        LifespanManager(module.app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://example"
        ) as http,
    ):
        page = await http.get("/")
        assert page.status_code == 200 and "{{" not in page.text
        assert (await http.post("/session/credential")).status_code == 401
        assert (await http.post("/login", content=b"[1]")).status_code == 400
        assert (await http.post("/login", json={"name": "ada"})).status_code == 204
        issued = await http.post("/session/credential")
        assert issued.status_code == 200
        headers = {"authorization": f"Bearer {issued.json()['key']}"}
        ok = await http.post("/v1/proxy/auto", json=chat_body(), headers=headers)
        other = await http.post("/v1/proxy/auto", json=chat_body(model="o3"), headers=headers)
        no_key = await http.post("/v1/proxy/auto", json=chat_body())
    assert ok.status_code == 200, ok.text
    assert other.status_code == 403
    assert no_key.status_code == 401
    assert upstream.calls == 1
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
