"""The ``asgi-autoproxy`` command, run for real as a child process against the fake upstream."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy.cli import build_app, build_parser
from tests.conftest import CALLER_KEY, SERVER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT, child_env, free_port, run_server


def test_cli_proxies_with_flags_and_passes_caller_key_through(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    port = free_port()
    args = ["-m", "asgi_autoproxy", "--port", str(port), "--openai-base-url", upstream_url]
    with run_server(args, port=port, log_path=tmp_path / "cli.log") as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post(
                "/v1/proxy/auto",
                json=chat_body("via cli"),
                headers={"authorization": f"Bearer {CALLER_KEY}"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "echo #1: via cli"
            [seen] = upstream.requests
            assert seen.path == "/v1/chat/completions"
            assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"
            assert seen.json == chat_body("via cli")

            assert http.get("/healthz").json() == {"status": "ok"}
            missing = http.get("/elsewhere")
            assert missing.status_code == 404
            assert "/v1/proxy/auto" in missing.json()["error"]["message"]
            keyless = http.post("/v1/proxy/auto", json=chat_body())
            assert keyless.status_code == 401
            assert upstream.calls == 1

        # The README's SDK usage, streaming, against the real command.
        sdk = openai.OpenAI(base_url=f"{server.url}/v1/proxy", api_key=CALLER_KEY, max_retries=0)
        with sdk:
            stream = sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == "tok0 tok1 tok2 "
    assert server.process.returncode is not None
    assert "proxying POST /v1/proxy/auto" in server.log
    assert "Traceback" not in server.log


def test_cli_reads_env_and_sends_server_key_upstream(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "OPENAI_API_KEY": SERVER_KEY,
        "AUTOPROXY_CLIENT_KEYS": CALLER_KEY,
        "OPENAI_BASE_URL": upstream_url,
        "AUTOPROXY_PORT": str(port),
        "AUTOPROXY_PATH": "/llm/auto",
        "AUTOPROXY_LOG_LEVEL": "debug",
    }
    with run_server(["-m", "asgi_autoproxy"], port=port, env=env, log_path=tmp_path / "c.log") as s:
        with httpx.Client(base_url=s.url, timeout=10) as http:
            with_caller_key = http.post(
                "/llm/auto",
                json={"model": "davinci-002", "prompt": "Say"},
                headers={"authorization": f"Bearer {CALLER_KEY}"},
            )
            chat = http.post(
                "/llm/auto", json=chat_body(), headers={"authorization": f"Bearer {CALLER_KEY}"}
            )
            without_key = http.post("/llm/auto", json=chat_body())
        assert with_caller_key.status_code == 200, with_caller_key.text
        assert chat.status_code == 200, chat.text
        assert without_key.status_code == 401, without_key.text
    first, second = upstream.requests
    assert first.path == "/v1/completions"
    assert second.path == "/v1/chat/completions"
    for seen in (first, second):
        assert seen.headers["authorization"] == f"Bearer {SERVER_KEY}"
        assert CALLER_KEY not in json.dumps(seen.header_list)
    assert "using OPENAI_API_KEY" in s.log
    assert SERVER_KEY not in s.log
    assert CALLER_KEY not in s.log


@pytest.mark.parametrize(
    ("args", "env", "loop_class"),
    [
        ([], {}, "asyncio.unix_events._UnixSelectorEventLoop"),
        (["--loop", "uvloop"], {}, "uvloop.Loop"),
        ([], {"AUTOPROXY_LOOP": "uvloop"}, "uvloop.Loop"),
    ],
)
def test_cli_runs_the_event_loop_it_is_asked_for(
    upstream_url: str, tmp_path: Path, args: list[str], env: dict[str, str], loop_class: str
) -> None:
    if loop_class.startswith("uvloop"):
        pytest.importorskip("uvloop")
    elif sys.platform == "win32":
        pytest.skip("the selector loop is the Unix default")
    port = free_port()
    command = ["-m", "asgi_autoproxy", "--port", str(port), "--openai-base-url", upstream_url]
    log_path = tmp_path / "loop.log"
    with run_server([*command, *args], port=port, env=env, log_path=log_path) as server:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert f"event loop: {loop_class}" in server.log


@pytest.mark.anyio
async def test_pass_through_flag_wins_over_server_key(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    environ = {"OPENAI_API_KEY": SERVER_KEY, "OPENAI_BASE_URL": upstream_url}
    args = build_parser(environ).parse_args(["--pass-through"])
    app = build_app(args, environ)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cli"
    ) as http:
        response = await http.post(
            "/v1/proxy/auto", json=chat_body(), headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    await app.aclose()
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == f"Bearer {CALLER_KEY}"


@pytest.mark.anyio
@pytest.mark.parametrize("flag", ["--gc-freeze", "--no-gc-freeze"])
async def test_gc_freeze_happens_at_the_end_of_start_up(
    upstream: FakeUpstream, upstream_url: str, flag: str
) -> None:
    environ = {"OPENAI_BASE_URL": upstream_url}
    args = build_parser(environ).parse_args([flag])
    app = build_app(args, environ)
    gc.unfreeze()
    try:
        async with LifespanManager(app):
            frozen = gc.get_freeze_count()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://cli"
            ) as http:
                response = await http.post(
                    "/v1/proxy/auto", json=chat_body(), headers={"authorization": "Bearer k"}
                )
    finally:
        gc.unfreeze()  # the rest of the test run collects as usual
    assert response.status_code == 200
    if flag == "--gc-freeze":
        assert frozen > 1000  # the modules, the app and its providers
    else:
        assert frozen == 0


def test_gc_freeze_is_on_unless_the_environment_turns_it_off() -> None:
    assert build_parser({}).parse_args([]).gc_freeze is True
    assert build_parser({"AUTOPROXY_NO_GC_FREEZE": "1"}).parse_args([]).gc_freeze is False
    assert build_parser({"AUTOPROXY_NO_GC_FREEZE": "1"}).parse_args(["--gc-freeze"]).gc_freeze


def test_flags_win_over_environment() -> None:
    environ = {
        "AUTOPROXY_HOST": "0.0.0.0",
        "AUTOPROXY_PORT": "9001",
        "AUTOPROXY_PATH": "/env/auto",
        "AUTOPROXY_PASS_THROUGH": "true",
        "AUTOPROXY_LOG_LEVEL": "WARNING",
        "OPENAI_BASE_URL": "http://env.invalid/v1",
    }
    from_env = build_parser(environ).parse_args([])
    assert (from_env.host, from_env.port, from_env.path) == ("0.0.0.0", 9001, "/env/auto")
    assert (from_env.pass_through, from_env.log_level) == (True, "warning")
    assert from_env.openai_base_url == "http://env.invalid/v1"
    from_flags = build_parser(environ).parse_args(
        ["--port", "9002", "--no-pass-through", "--openai-base-url", "http://flag.invalid/v1"]
    )
    assert (from_flags.port, from_flags.pass_through) == (9002, False)
    assert from_flags.openai_base_url == "http://flag.invalid/v1"


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_autoproxy", *args],
        cwd=REPO_ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_lists_flags_and_the_key_variable() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0, result.stderr
    flags = ("--host", "--port", "--openai-base-url", "--pass-through", "--path", "--log-level")
    for flag in flags:
        assert flag in result.stdout
    assert "OPENAI_API_KEY" in result.stdout
    assert "--api-key" not in result.stdout


def test_console_script_is_installed_and_answers_help() -> None:
    script = shutil.which("asgi-autoproxy", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("package not installed (pip install -e '.[test]' installs the script)")
    result = subprocess.run(
        [script, "--help"], env=child_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "usage: asgi-autoproxy" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--path", "no-slash"], None, "path must start with '/'"),
        (["--openai-base-url", "ftp://x"], None, "base_url must be an absolute http(s) URL"),
        ([], {"AUTOPROXY_PORT": "eighty"}, "not a port number"),
        ([], {"AUTOPROXY_PASS_THROUGH": "maybe"}, "AUTOPROXY_PASS_THROUGH"),
        (["--log-level", "loud"], None, "invalid choice"),
        ([], {"AUTOPROXY_LOG_LEVEL": "loud"}, "invalid choice: 'loud'"),
        (["--loop", "tokio"], None, "invalid choice"),
        ([], {"AUTOPROXY_LOOP": "tokio"}, "invalid choice: 'tokio'"),
    ],
)
def test_bad_settings_exit_2_with_a_message_not_a_traceback(
    args: list[str], env: dict[str, str] | None, message: str
) -> None:
    result = _run_cli(*args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
