"""``asgi-autoproxy --config gateway.toml``: the docs' example file (docs/cli.md), run for real
against the fake upstreams; every bad value stopping start-up with one line; flags and
variables winning over the file; ``check-config``; ``/readyz``; JSON logs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from asgi_autoproxy._gateway import load_gateway
from asgi_autoproxy.cli import (
    Readiness,
    apply_file_settings,
    build_gateway_app,
    build_parser,
    given_settings,
    main,
    standalone_app,
)
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT, free_port, run_server
from tests.servers import ServerThread

# The docs page that shows the example gateway file (docs/cli.md, "The gateway file").
README = (REPO_ROOT / "docs" / "cli.md").read_text()
KEYS = {
    "OPENAI_API_KEY": "sk-openai-server-0123456789",
    "AZURE_OPENAI_API_KEY": "azure-server-key-0123456789",
    "ANTHROPIC_API_KEY": "sk-ant-server-0123456789",
    "GATEWAY_CLIENT_KEYS": "bob=key-bob-0123456789",
    "METRICS_TOKEN": "metrics-0123456789",
}
ALICE = "key-alice-0123456789"


def readme_gateway_file() -> str:
    [block] = re.findall(r"```toml\n(# gateway\.toml\n.*?)```", README, re.DOTALL)
    return block


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's file as written, with its keys file, and its variables set."""
    path = tmp_path / "gateway.toml"
    path.write_text(readme_gateway_file())
    (tmp_path / "client_keys.txt").write_text(f"# callers\nalice={ALICE}\n")
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    for name in ("AUTOPROXY_PORT", "AUTOPROXY_HOST", "AUTOPROXY_CONFIG", "AUTOPROXY_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    server = ServerThread(fake)
    server.start()
    yield fake, server.url
    server.stop()


def test_check_config_accepts_the_readme_example(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(example)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{example}: OK: POST /v1/proxy/auto; providers: openai (openai), ")
    assert "claude (anthropic)" in out and "cache: memory" in out
    for secret in KEYS.values():
        assert secret not in out


@pytest.mark.slow
def test_the_readme_example_runs_a_whole_gateway(
    example: Path,
    tmp_path: Path,
    upstream: FakeUpstream,
    upstream_url: str,
    anthropic_server: tuple[FakeAnthropic, str],
) -> None:
    anthropic, anthropic_url = anthropic_server
    anthropic.reset()
    port = free_port()
    text = example.read_text()
    text = text.replace('"https://api.openai.com/v1"', f'"{upstream_url}"')
    text = text.replace(
        '"https://my-resource.openai.azure.com"', f'"{upstream_url.removesuffix("/v1")}"'
    )
    text = text.replace('"https://api.anthropic.com"', f'"{anthropic_url}"')
    text = text.replace("port = 8000", f"port = {port}").replace('"0.0.0.0"', '"127.0.0.1"')
    example.write_text(text)
    args = ["-m", "asgi_autoproxy", "--config", str(example)]
    with run_server(args, port=port, env=KEYS, log_path=tmp_path / "gw.log") as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").json() == {"status": "ready"}
            alice = {"authorization": f"Bearer {ALICE}"}
            bob = {"authorization": f"Bearer {KEYS['GATEWAY_CLIENT_KEYS'].split('=')[1]}"}
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            used = set()
            for _ in range(8):
                answer = http.post("/v1/proxy/auto", json=chat, headers=alice)
                assert answer.status_code == 200, answer.text
                used.add(answer.headers["x-bt-used-endpoint"])
            assert used <= {"openai", "azure"} and used  # weighted between the two
            claude = {**chat, "model": "claude-3-5-haiku-latest", "max_tokens": 10}
            answer = http.post("/v1/proxy/chat/completions", json=claude, headers=bob)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-bt-used-endpoint"] == "claude"
            stranger = http.post("/v1/proxy/auto", json=chat, headers={"authorization": "Bearer x"})
            assert stranger.status_code == 401
            preflight = http.options(
                "/v1/proxy/auto",
                headers={
                    "origin": "https://app.example.com",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, content-type",
                },
            )
            assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
            assert http.get("/metrics").status_code == 401
            metrics = http.get(
                "/metrics", headers={"authorization": f"Bearer {KEYS['METRICS_TOKEN']}"}
            )
            assert metrics.status_code == 200
            assert 'autoproxy_requests_total{cache="SKIPPED",model="claude-3-5-haiku-latest"' in (
                metrics.text
            )
        # The server keys went upstream; the callers' keys did not.
        sent = [
            r.headers.get("authorization") or r.headers.get("api-key") for r in upstream.requests
        ]
        assert set(sent) <= {f"Bearer {KEYS['OPENAI_API_KEY']}", KEYS["AZURE_OPENAI_API_KEY"]}
        assert anthropic.requests[0].headers["x-api-key"] == KEYS["ANTHROPIC_API_KEY"]
    lines = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "asgi_autoproxy.requests"]
    assert len(requests) == 10
    first = requests[0]
    assert first["caller_id"] == "alice" and first["route"] == "auto"
    assert first["model"] == "gpt-4o-mini" and first["status"] == 200
    assert first["cache_status"] is None and first["prompt_tokens"] == 5
    assert first["duration_ms"] > 0 and first["request_id"]
    assert {line["caller_id"] for line in requests} == {"alice", "bob", None}  # None: refused
    assert requests[-1]["status"] == 401
    for secret in (*KEYS.values(), ALICE):
        assert secret.split("=")[-1] not in server.log


BAD_FILES = [
    ('[[providers]]\nkind = "azur"\n', "providers[0].kind = 'azur': must be one of openai"),
    ('[[providers]]\nkind = "openai"\nbase_ur = "x"\n', "providers[0].base_ur = 'x': unknown key"),
    ("[server]\nport = 70000\n" + '[[providers]]\nkind = "openai"\n', "server.port = 70000"),
    (
        '[server]\nport = "80"\n[[providers]]\nkind = "openai"\n',
        "server.port = '80': must be a whole",
    ),
    ("[server]\n", "providers = None: add at least one [[providers]] table"),
    (
        '[[providers]]\nkind = "openai"\napi_key_env = "NOT_SET_ANYWHERE"\n',
        "providers[0].api_key_env = 'NOT_SET_ANYWHERE': the environment variable "
        "NOT_SET_ANYWHERE is not set",
    ),
    (
        '[[providers]]\nkind = "openai"\nbase_url = "ftp://x"\n',
        "providers[0].kind = 'openai': base_url",
    ),
    (
        '[[providers]]\nkind = "openai"\n[[providers]]\nkind = "openai"\n',
        "provider names must be unique",
    ),
    (
        '[[providers]]\nkind = "openai"\n[routing]\nload_balancing = "random"\n',
        "routing.load_balancing = 'random': must be one of ordered, round_robin, weighted",
    ),
    (
        '[[providers]]\nkind = "openai"\n[limits]\nmax_body_size = -1\n',
        "limits = {'max_body_size': -1}",
    ),
    ('[[providers]]\nkind = "openai"\n[cache]\nbackend = "disk"\n', "cache.backend = 'disk'"),
    ('[[providers]]\nkind = "openai"\n[caching]\n', "caching = {}: unknown section"),
    (
        '[[providers]]\nkind = "openai"\n[cors]\norigins = "*"\n',
        "cors.origins = '*': must be a list",
    ),
    ("[[providers]\n", "not valid TOML: Expected ']]'"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_a_bad_file_stops_start_up_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: str,
    message: str,
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "gateway.toml"
    path.write_text(content)
    for command in (["check-config", str(path)], ["--config", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one line
        assert err.startswith(f"asgi-autoproxy: error: {path}"), err
        assert message in err
        assert "Traceback" not in err


def test_a_key_in_a_bad_keys_file_is_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys.txt").write_text("alice=fine-key-000\nsk-naked-secret-key-123\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[[providers]]\nkind = "openai"\n[auth]\nclient_keys_file = "keys.txt"\n')
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "auth.client_keys_file (line 2) = (not shown): write each caller as id=key" in err
    assert "sk-naked-secret-key-123" not in err and "fine-key-000" not in err


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_single_upstream_flags_do_not_mix_with_a_file(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(example), "--openai-base-url", "http://x/v1"]) == 2
    assert "--openai-base-url = 'http://x/v1': not used with --config" in capsys.readouterr().err


def settings(argv: list[str], environ: dict[str, str], path: Path) -> Any:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    gateway = load_gateway(path, environ)
    apply_file_settings(args, gateway, given_settings(parser, argv, environ))
    return args


def test_flags_and_variables_win_over_the_file(example: Path) -> None:
    env = dict(KEYS)
    from_file = settings(["--config", str(example)], env, example)
    assert (from_file.port, from_file.host, from_file.log_format) == (8000, "0.0.0.0", "json")
    from_env = settings(
        [], {**env, "AUTOPROXY_PORT": "9100", "AUTOPROXY_LOG_FORMAT": "text"}, example
    )
    assert (from_env.port, from_env.host, from_env.log_format) == (9100, "0.0.0.0", "text")
    from_flag = settings(
        ["--port", "9200", "--shutdown-grace", "5"], {**env, "AUTOPROXY_PORT": "9100"}, example
    )
    assert (from_flag.port, from_flag.shutdown_grace) == (9200, 5.0)


@pytest.mark.anyio
async def test_cors_origins_from_the_file(example: Path, upstream_url: str) -> None:
    text = readme_gateway_file().replace('"https://api.openai.com/v1"', f'"{upstream_url}"')
    example.write_text(text)  # noqa: ASYNC240 - a small file, before anything runs
    parser = build_parser(dict(KEYS))
    args = parser.parse_args(["--config", str(example)])
    gateway = load_gateway(example, KEYS)
    apply_file_settings(args, gateway, set())
    proxy = build_gateway_app(args, gateway, set())
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
            allowed = await http.options("/v1/proxy/auto", headers=headers)
            other = await http.options(
                "/v1/proxy/auto", headers={**headers, "origin": "https://evil.example"}
            )
    await proxy.aclose()
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.anyio
async def test_readyz_is_503_while_starting_and_draining() -> None:
    readiness = Readiness()
    app = standalone_app("/v1/proxy/auto", readiness=readiness)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        starting = await http.get("/readyz")
        async with LifespanManager(app):
            ready = await http.get("/readyz")
            readiness.draining = True
            draining = await http.get("/readyz")
            alive = await http.get("/healthz")
    assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert (draining.status_code, draining.json()) == (503, {"status": "draining"})
    assert alive.status_code == 200  # liveness stays up while draining


@pytest.mark.slow
def test_readyz_stays_200_with_redis_down(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    port, dead = free_port(), free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[server]\nport = {port}\n[[providers]]\nkind = "openai"\nbase_url = "{upstream_url}"\n'
        f'[cache]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{dead}/0"\n'
    )
    args = ["-m", "asgi_autoproxy", "--config", str(path)]
    log_path = tmp_path / "redis-down.log"
    with (
        run_server(args, port=port, log_path=log_path) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        assert http.get("/readyz").status_code == 200
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        answer = http.post(
            "/v1/proxy/auto",
            json={**body, "temperature": 0},
            headers={"authorization": "Bearer k"},
        )
        assert answer.status_code == 200  # served without its cache
        assert http.get("/readyz").status_code == 200


def test_embedded_start_up_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_autoproxy")
    AutoProxyMiddleware(
        standalone_app("/p"),
        providers=[OpenAIProvider(base_url="http://127.0.0.1:9/v1", name="up")],
        path="/llm/auto",
    )
    lines = [r.getMessage() for r in caplog.records if "serving" in r.getMessage()]
    assert lines == [
        "asgi_autoproxy serving POST /llm/auto; providers: up (OpenAIProvider); cache: MemoryCache"
    ]
